"""Three real cairn members on loopback, driven with etcdctl: agreement, failover, isolation."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import Cluster, Server, run_etcdctl


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster("cairn", 3, tmp_path) as c:
        yield c


def put(endpoints: str, key: str, value: str, timeout: str = "3s") -> bool:
    result = run_etcdctl(endpoints, f"--command-timeout={timeout}", "put", key, value, check=False)
    return result.returncode == 0


def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def test_members_agree_and_any_member_serves(cluster: Cluster) -> None:
    listing = run_etcdctl(cluster.endpoints, "member", "list").stdout.splitlines()
    assert sorted(line.split(", ")[2] for line in listing) == ["n1", "n2", "n3"]
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    assert put(follower.endpoint, "k", "from-follower")  # forwarded to the leader
    for member in cluster.members:  # linearizable reads on every member see it at once
        assert member.etcdctl("get", "k", "--print-value-only").stdout == "from-follower\n"
    indexes = {cluster.status(m)[2] for m in cluster.members}
    wait_for(
        lambda: len({cluster.status(m)[2] for m in cluster.members}) == 1, 5, f"same raft index {indexes}"
    )


def test_kill9_leader_new_leader_and_catch_up(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert put(cluster.endpoints, "before", "1")
    leader.kill9()
    rest = [m for m in cluster.members if m is not leader]
    endpoints = ",".join(m.endpoint for m in rest)
    took = wait_for(lambda: put(endpoints, "after", "2", timeout="1s"), 5, "a write after the leader died")
    assert cluster.leader(among=rest) is not leader
    for i in range(20):
        assert put(endpoints, f"more/{i}", str(i))
    leader.start()
    wait_for(
        lambda: leader.etcdctl("get", "more/19", "--consistency=s", "--print-value-only").stdout == "19\n",
        10,
        "the restarted member catching up",
    )
    assert leader.etcdctl("get", "before", "--print-value-only").stdout == "1\n"
    print(f"writes accepted again {took:.2f}s after kill -9 of the leader")


def test_isolated_leader_answers_no_write_and_no_linearizable_read(cluster: Cluster) -> None:
    leader = cluster.leader()
    assert put(leader.endpoint, "k", "v1")
    others: list[Server] = [m for m in cluster.members if m is not leader]
    for m in others:
        m._signal(signal.SIGSTOP)
    try:
        assert not put(leader.endpoint, "k", "v2", timeout="3s")
        read = leader.etcdctl("--command-timeout=3s", "get", "k", check=False)
        assert read.returncode != 0, read.stdout
        stale = leader.etcdctl("get", "k", "--consistency=s", "--print-value-only")
        assert stale.stdout in ("v1\n", "v2\n")  # serializable: local, possibly stale, never blocked
    finally:
        for m in others:
            m._signal(signal.SIGCONT)
    wait_for(lambda: put(cluster.endpoints, "k", "v3", timeout="1s"), 10, "writes after healing")
