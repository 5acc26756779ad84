"""LeaseTable: the replicated lease state, its etcd 3.4 rules and its persistence in the lease CF.

etcd facts pinned here were checked against a real etcd 3.4.23 (default timing): ``etcdctl lease
grant 1`` and ``grant 0`` answer TTL 2 (the minimum TTL, not an error), ``grant 9000000001``
answers "etcdserver: too large lease TTL", ``grant 9000000000`` is granted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import errors
from actors.errors import EtcdError
from actors.lease.table import (
    DEFAULT_MIN_TTL,
    MAX_LEASE_TTL,
    Lease,
    LeaseTable,
    lease_key,
    min_lease_ttl,
)
from actors.storage.backend import LEASE, Backend


class Node:
    """A Backend + LeaseTable, reopenable like a restarted process."""

    def __init__(self, path: Path, min_ttl: int = DEFAULT_MIN_TTL) -> None:
        self.path = path
        self.open(min_ttl)

    def open(self, min_ttl: int = DEFAULT_MIN_TTL) -> None:
        self.backend = Backend(str(self.path))
        self.table = LeaseTable(self.backend, min_ttl)

    def reopen(self, commit: int | None = None, min_ttl: int = DEFAULT_MIN_TTL) -> None:
        if commit is not None:
            self.backend.commit(commit)
        self.backend.close()
        self.open(min_ttl)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path / "db")
    yield n
    n.backend.close()


def error_of(fn, *args) -> EtcdError:
    with pytest.raises(EtcdError) as info:
        fn(*args)
    return info.value


def test_min_lease_ttl_is_etcds_formula() -> None:
    assert min_lease_ttl(100, 1000) == 2  # etcd's defaults: ceil(15 ticks * 100 ms)
    assert min_lease_ttl(50, 500) == 1  # 15 * 50 ms = 0.75 s -> 1
    assert min_lease_ttl(100, 5000) == 8  # 75 * 100 ms = 7.5 s -> 8
    assert min_lease_ttl(100, 1050) == 2  # ticks are whole: 10
    assert min_lease_ttl(100, 1000) == DEFAULT_MIN_TTL


def test_grant_raises_short_ttls_to_the_minimum(node: Node) -> None:
    assert node.table.grant(1, 1) == 2  # etcdctl lease grant 1 -> TTL 2 on etcd 3.4
    assert node.table.grant(2, 0) == 2
    assert node.table.grant(3, -5) == 2
    assert node.table.grant(4, 60) == 60
    assert node.table.grant(5, MAX_LEASE_TTL) == MAX_LEASE_TTL
    assert node.table.get(1) == Lease(1, 2, 0, set())
    assert node.table.ids() == [1, 2, 3, 4, 5] and len(node.table) == 5


def test_grant_errors_in_etcds_order(node: Node) -> None:
    node.table.grant(7, 10)
    assert error_of(node.table.grant, 0, 10) == errors.LEASE_NOT_FOUND
    assert error_of(node.table.grant, 8, MAX_LEASE_TTL + 1) == errors.LEASE_TTL_TOO_LARGE
    assert error_of(node.table.grant, 7, MAX_LEASE_TTL + 1) == errors.LEASE_TTL_TOO_LARGE  # TTL first
    assert error_of(node.table.grant, 7, 10) == errors.LEASE_EXIST
    assert node.table.get(7).ttl == 10 and node.table.ids() == [7]
    # every raise is a fresh instance, never the module's constant
    assert error_of(node.table.grant, 7, 10) is not errors.LEASE_EXIST


def test_attach_detach_and_revoke(node: Node) -> None:
    table = node.table
    table.grant(1, 10)
    table.grant(2, 10)
    table.attach(1, b"b")
    table.attach(1, b"a")
    table.attach(2, b"c")
    assert table.lease_of(b"a") == 1 and table.lease_of(b"c") == 2 and table.lease_of(b"z") == 0
    table.attach(2, b"a")  # a key holds one lease: moves
    assert table.get(1).keys == {b"b"} and table.get(2).keys == {b"a", b"c"}
    table.detach(1, b"a")  # not attached to 1: left alone
    assert table.lease_of(b"a") == 2
    table.detach(2, b"a")
    assert table.lease_of(b"a") == 0 and table.get(2).keys == {b"c"}
    assert error_of(table.attach, 9, b"x") == errors.LEASE_NOT_FOUND
    assert error_of(table.detach, 9, b"x") == errors.LEASE_NOT_FOUND
    table.attach(2, b"a")
    assert table.revoke(2) == [b"a", b"c"]  # sorted
    assert not table.exists(2) and 2 not in table and table.get(2) is None
    assert table.lease_of(b"a") == 0 and table.lease_of(b"c") == 0
    assert table.lease_of(b"b") == 1
    assert error_of(table.revoke, 2) == errors.LEASE_NOT_FOUND
    assert table.revoke(1) == [b"b"]
    assert table.ids() == []


def test_checkpoint_updates_known_leases_only(node: Node) -> None:
    node.table.grant(1, 100)
    assert node.table.checkpoint(1, 40) is True
    assert node.table.get(1).remaining_ttl == 40
    assert node.table.checkpoint(2, 40) is False  # revoked meanwhile: ignored, as etcd does
    assert node.table.ids() == [1]


def test_leases_persist_through_the_pending_batch(node: Node) -> None:
    table = node.table
    table.grant(1, 100)
    table.grant(2, 30)
    table.grant(3, 5)
    table.checkpoint(1, 42)
    table.attach(1, b"k")
    assert node.backend.get(LEASE, lease_key(1)) is None  # pending, not committed yet
    node.reopen(commit=10)
    table = node.table
    assert table.ids() == [1, 2, 3]
    assert table.get(1) == Lease(1, 100, 42, set())  # attachments come from the KV rows, not here
    assert table.get(2) == Lease(2, 30, 0, set())
    table.revoke(3)
    table.checkpoint(2, 7)
    node.reopen(commit=11)
    assert node.table.ids() == [1, 2] and node.table.get(2).remaining_ttl == 7
    node.table.grant(4, 10)
    node.table.revoke(1)
    node.reopen()  # never committed: lost
    assert node.table.ids() == [1, 2]


def test_a_larger_min_ttl_raises_stored_leases_on_open(node: Node) -> None:
    node.table.grant(1, 3)
    node.table.grant(2, 60)
    node.reopen(commit=1, min_ttl=8)
    assert node.table.get(1).ttl == 8 and node.table.get(2).ttl == 60


def test_lease_ids_are_signed_int64(node: Node) -> None:
    assert lease_key(1) == b"\0" * 7 + b"\1"
    ids = [-(2**63), -1, 1, 2**63 - 1]
    for lease_id in ids:
        node.table.grant(lease_id, 10)
    node.reopen(commit=1)
    assert node.table.ids() == ids
    assert [lease.id for lease in node.table] == ids
