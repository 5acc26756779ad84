"""A member kept down while the others compact their raft logs catches up through a snapshot.

With ``--snapshot-count 100`` the members keep only about 100-200 entries below their durably
applied index, so a member that misses 600 writes can no longer be sent the entries: the leader
streams it a checkpoint of its kv DB instead, and afterwards the log again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest
from servers import Cluster, Server

from actors.proto import rpc_pb2

pytestmark = pytest.mark.timeout(240)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.2)


def put_many(member: Server, prefix: str, count: int, size: int = 64) -> None:
    with grpc.insecure_channel(member.endpoint) as channel:
        put = channel.unary_unary("/etcdserverpb.KV/Put")
        for i in range(count):
            request = rpc_pb2.PutRequest(key=f"{prefix}{i:05d}".encode(), value=os.urandom(size))
            put(request.SerializeToString(), timeout=10)


def dump(member: Server) -> tuple[int, list]:
    """(revision, every key-value) as `etcdctl get --prefix -w json` shows them, served locally."""
    out = json.loads(member.etcdctl("get", "", "--prefix", "--consistency=s", "-w", "json").stdout)
    return out["header"]["revision"], out.get("kvs", [])


def log_events(member: Server, event: str) -> int:
    return member.log_path.read_text(errors="replace").count(f'"event":"{event}"')


def test_member_kept_down_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    with Cluster("cairn", 3, tmp_path, extra_args=["--snapshot-count", "100"]) as cluster:
        leader = cluster.leader()
        down = next(m for m in cluster.members if m is not leader)
        put_many(leader, "before/", 50)
        wait_for(lambda: dump(down) == dump(leader), 10, "the follower catching up normally")
        down.stop()
        put_many(leader, "while-down/", 600, size=8000)  # ~4.8 MB: a transfer of several chunks
        time.sleep(3)  # the storage actors sync once a second, then raft drops the old entries
        down.start(wait=False)
        wait_for(lambda: log_events(down, "raft_snapshot_installed") >= 1, 60, "a snapshot install")
        wait_for(lambda: dump(down) == dump(leader), 30, "identical data after the install")
        assert log_events(leader, "snapshot_sent") >= 1
        assert log_events(leader, "snapshot_send_failed") == 0

        put_many(leader, "after/", 20)  # the log goes on from the snapshot
        wait_for(lambda: dump(down) == dump(leader), 20, "entries after the snapshot")
        down.restart()  # and a restart after an install finds everything in place
        wait_for(lambda: dump(down) == dump(leader), 20, "the same data after a restart")
        revision, kvs = dump(down)
        assert len(kvs) == 670 and revision == 671
