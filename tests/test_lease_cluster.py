"""Leases on a three-member cairn cluster, driven by etcdctl and raw gRPC (issue 5's checks).

Only the leader's lease clock renews and expires leases; a follower forwards keep-alives (and
TimeToLive) to it over the peer link. Checked here on real processes:

- service registration: keys on a 5 s lease stay while ``etcdctl lease keep-alive`` keeps them,
  through a client that only knows a FOLLOWER and through a client that knows every member, also
  across a kill -9 of the leader; once the keep-alives stop every key is gone within TTL + 1 s of
  its lease's last acknowledged keep-alive, and an ``etcdctl watch`` sees exactly one delete per
  key, a lease's keys all in one revision;
- 1,000 leases with a key each, renewed together so they expire together: every key is deleted
  on every member, the cluster keeps serving, LeaseLeases is empty everywhere afterwards;
- TimeToLive and keep-alive through a follower answer from the leader's clock (remaining TTL
  counts down; unknown leases as etcd: TTL 0 / -1).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from servers import ETCDCTL_BIN, Cluster, Server

from actors.proto import rpc_pb2, rpc_pb2_grpc

TTL = 5


class Etcdctl:
    """A long-running etcdctl (keep-alive, watch) whose stdout lines are recorded with arrival times."""

    def __init__(self, endpoints: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        self.proc = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={endpoints}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def matching(self, text: str) -> list[float]:
        return [t for t, line in self.lines if text in line]

    def stop(self) -> None:
        """Stop it by pid (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.thread.join(10)

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster("cairn", 3, tmp_path) as c:
        yield c


def grant(member: Server, ttl: int) -> str:
    """Grant through etcdctl; the lease id in etcdctl's hex."""
    out = member.etcdctl("lease", "grant", str(ttl)).stdout  # "lease 694d... granted with TTL(5s)"
    return out.split()[1]


def count(member: Server, prefix: str) -> int:
    """Keys under ``prefix`` as ``member`` itself has them (serializable: no leader needed)."""
    out = member.etcdctl("get", "--prefix", prefix, "--keys-only", "--consistency=s", "-w", "json").stdout
    return json.loads(out).get("count", 0)


def deletes(watch: Etcdctl) -> list[tuple[int, str]]:
    """(mod revision, key) of every DELETE event ``etcdctl watch -w json`` printed."""
    out = []
    for _, line in watch.lines:
        if not line.startswith("{"):
            continue
        for ev in json.loads(line).get("Events") or ():
            if ev.get("type") == 1:
                out.append((ev["kv"]["mod_revision"], base64.b64decode(ev["kv"]["key"]).decode()))
    return out


@pytest.mark.timeout(180)
def test_service_registration_through_followers_and_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower, other = [m for m in cluster.members if m is not leader]
    services = {
        # kept alive by a client that only knows one follower: every keep-alive is forwarded
        "follower-only": (follower.endpoint, ["/services/api/10.0.0.1", "/services/api/10.0.0.2"]),
        # kept alive by a client that knows every member (it may sit on the leader that dies)
        "any-member": (cluster.endpoints, ["/services/db/10.0.1.1", "/services/db/10.0.1.2"]),
    }
    leases = {}
    for name, (_, keys) in services.items():
        lease_id = leases[name] = grant(follower, TTL)
        for key in keys:
            follower.etcdctl("put", f"--lease={lease_id}", key, "up")
    watch = Etcdctl(other.endpoint, "watch", "--prefix", "/services/", "-w", "json")
    keepers = {
        name: Etcdctl(endpoints, "lease", "keep-alive", leases[name])
        for name, (endpoints, _) in services.items()
    }
    try:
        time.sleep(2 * TTL)  # two TTLs: only the keep-alives keep the keys
        assert count(follower, "/services/") == 4
        killed_at = time.monotonic()
        leader.kill9()
        cluster.leader(timeout=20, among=[follower, other])
        time.sleep(TTL + 2)  # past a whole TTL after the kill: renewed by the new leader's clock
        assert count(follower, "/services/") == 4
        assert count(other, "/services/") == 4
        for name, keeper in keepers.items():
            acks = keeper.matching(f"lease {leases[name]} keepalived with TTL({TTL})")
            assert [t for t in acks if t > killed_at], (
                f"{name}: no keep-alive acked since the kill\n" + keeper.output()
            )
            assert keeper.proc.poll() is None, keeper.output()
        for keeper in keepers.values():
            keeper.stop()
        last_ack = {name: max(keepers[name].matching("keepalived")) for name in services}
        gone_at: dict[str, float] = {}
        deadline = time.monotonic() + TTL + 15
        while len(gone_at) < len(services) and time.monotonic() < deadline:
            seen = {key for _, key in deletes(watch)}
            for name, (_, keys) in services.items():
                if name not in gone_at and set(keys) <= seen:
                    gone_at[name] = time.monotonic()
            time.sleep(0.05)
        assert count(follower, "/services/") == 0
        for name in services:
            assert name in gone_at, f"{name}: keys never deleted\n{watch.output()}"
            late = gone_at[name] - last_ack[name]
            assert late <= TTL + 1.0, f"{name}: keys gone {late:.2f}s after the last keep-alive (TTL {TTL}s)"
        events = deletes(watch)
        assert sorted(key for _, key in events) == sorted(k for _, keys in services.values() for k in keys)
        for _, keys in services.values():
            assert len({rev for rev, key in events if key in keys}) == 1, events
        for lease_id in leases.values():
            assert "already expired" in follower.etcdctl("lease", "timetolive", lease_id).stdout
    finally:
        for keeper in keepers.values():
            keeper.stop()
        watch.stop()


def test_lease_reads_through_a_follower_use_the_leaders_clock(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    lease_id = grant(leader, 30)
    follower.etcdctl("put", f"--lease={lease_id}", "k", "v")
    time.sleep(2.2)
    # a follower's own mirror of the lease knows only the TTL; the leader's clock has counted down
    out = follower.etcdctl("lease", "timetolive", "--keys", lease_id).stdout
    remaining = int(out.split("remaining(")[1].split("s)")[0])
    assert remaining <= 28 and "attached keys([k])" in out, out
    out = follower.etcdctl("lease", "keep-alive", "--once", lease_id).stdout
    assert out.strip() == f"lease {lease_id} keepalived with TTL(30)"
    out = follower.etcdctl("lease", "timetolive", lease_id).stdout
    assert int(out.split("remaining(")[1].split("s)")[0]) >= 28, out
    with grpc.insecure_channel(follower.endpoint) as channel:
        stub = rpc_pb2_grpc.LeaseStub(channel)
        unknown = stub.LeaseKeepAlive(iter([rpc_pb2.LeaseKeepAliveRequest(ID=0x1234)]), timeout=10)
        assert [(r.ID, r.TTL) for r in unknown] == [(0x1234, 0)]  # etcd: TTL 0 for an unknown lease
        ttl = stub.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=0x1234), timeout=10)
        assert (ttl.TTL, ttl.grantedTTL) == (-1, 0)


def _renew_all(endpoint: str, ids: list[int]) -> list[int]:
    """One keep-alive for each id over one stream; the TTLs answered."""
    with grpc.insecure_channel(endpoint) as channel:
        stream = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(
            iter([rpc_pb2.LeaseKeepAliveRequest(ID=i) for i in ids]), timeout=60
        )
        return [r.TTL for r in stream]


@pytest.mark.timeout(240)
def test_a_thousand_leases_expiring_together_on_a_cluster(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    n, ttl = 1000, 8
    channels = [grpc.insecure_channel(m.endpoint) for m in cluster.members]
    try:
        kvs = [rpc_pb2_grpc.KVStub(c) for c in channels]
        lease_stubs = [rpc_pb2_grpc.LeaseStub(c) for c in channels]

        def register(i: int) -> int:
            member = i % len(channels)  # through every member, the followers forward
            lease_id = lease_stubs[member].LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=30).ID
            put = rpc_pb2.PutRequest(key=b"/mass/%04d" % i, value=b"x", lease=lease_id)
            kvs[member].Put(put, timeout=30)
            return lease_id

        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(register, range(n)))
            # renew every lease in one burst (through a follower) so that all expire together
            chunks = [ids[i::10] for i in range(10)]
            ttls = [
                t for answer in pool.map(lambda c: _renew_all(follower.endpoint, c), chunks) for t in answer
            ]
        renewed_at = time.monotonic()
        assert ttls == [ttl] * n
        prefix = rpc_pb2.RangeRequest(key=b"/mass/", range_end=b"/mass0", count_only=True, serializable=True)
        assert all(kv.Range(prefix, timeout=10).count == n for kv in kvs)
        deadline = renewed_at + ttl + 30
        while any(kv.Range(prefix, timeout=10).count for kv in kvs) and time.monotonic() < deadline:
            kvs[0].Put(rpc_pb2.PutRequest(key=b"still", value=b"serving"), timeout=10)  # serving meanwhile
            time.sleep(0.2)
        assert [kv.Range(prefix, timeout=10).count for kv in kvs] == [0, 0, 0]
        for stub in lease_stubs:
            assert list(stub.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=10).leases) == []
        kvs[1].Put(rpc_pb2.PutRequest(key=b"still", value=b"serving"), timeout=10)
        assert kvs[2].Range(rpc_pb2.RangeRequest(key=b"still"), timeout=10).count == 1
    finally:
        for c in channels:
            c.close()
