"""Shared pytest fixtures: a fresh real etcd or a fresh cairn node per test, always stopped by pid.

Per-test time limits come from pyproject's `timeout` (pytest-timeout); a test that needs more says so
with `@pytest.mark.timeout(N)`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `import servers`

import servers
from servers import Server


def _serve(kind: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(kind, tmp_path / kind)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Server]:
    """A fresh single-member real etcd 3.4 on free ports, in the test's tmp dir."""
    yield from _serve("etcd", tmp_path)


@pytest.fixture
def cairn(tmp_path: Path) -> Iterator[Server]:
    """A fresh single-node cairn started with etcd's flags, on free ports, in the test's tmp dir."""
    yield from _serve("cairn", tmp_path)


@pytest.fixture(autouse=True)
def _stop_leftover_servers() -> Iterator[None]:
    """Safety net: stop (by pid) any Server started during this test and still running, even on failure.

    Servers that were already live when the test began (e.g. from a module- or session-scoped fixture,
    which pytest sets up before this function-scoped one) are left alone.
    """
    before = set(servers.LIVE_SERVERS)
    yield
    for server in list(servers.LIVE_SERVERS - before):
        server.stop(grace=5.0)
