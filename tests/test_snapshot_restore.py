"""Backup and restore with real clients: ``etcdctl snapshot save`` from a 3-member cairn cluster under
write load, ``cairnctl snapshot restore`` into a NEW 3-member cluster, and migration from a real etcd.

What is compared is what clients see: ``etcdctl get -w json`` (keys, values, create/mod revisions,
versions, leases, the header revision), ``--rev`` reads of history, and the leases.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from servers import Cluster, Server, run_etcdctl

from actors.proto import rpc_pb2, rpc_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def cairnctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "tools.cairnctl", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"cairnctl {args} failed ({result.returncode}): {result.stderr}")
    return result


def get_json(endpoint: str, *args: str) -> dict:
    return json.loads(run_etcdctl(endpoint, "get", "", "--prefix", "-w", "json", *args).stdout)


def kvs(answer: dict) -> list[dict]:
    """The kvs of a get answer (ids of members and clusters differ between clusters by design)."""
    return answer.get("kvs", [])


def leases(endpoint: str) -> dict[int, int]:
    """Lease id -> granted TTL, as ``etcdctl lease timetolive`` reports them."""
    listing = json.loads(run_etcdctl(endpoint, "lease", "list", "-w", "json").stdout)
    out = {}
    for lease in listing.get("leases") or []:
        ttl = json.loads(
            run_etcdctl(endpoint, "lease", "timetolive", f"{lease['id']:x}", "-w", "json").stdout
        )
        out[lease["id"]] = ttl["granted-ttl"]
    return out


def restore_members(snapshot: Path, cluster: Cluster, *extra: str) -> None:
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    for m in cluster.members:
        cairnctl(
            "snapshot", "restore", str(snapshot), "--data-dir", str(m.data_dir), "--name", m.name,
            "--initial-cluster", initial, "--initial-cluster-token", "test-cluster",
            "--initial-advertise-peer-urls", m.peer_url, *extra,
        )  # fmt: skip


def fill_history(endpoint: str) -> None:
    """Keys with several versions, deletes, and leases holding keys: the state a backup must keep."""
    ctl = lambda *a: run_etcdctl(endpoint, *a)  # noqa: E731
    long_lease = ctl("lease", "grant", "3600").stdout.split()[1]
    other_lease = ctl("lease", "grant", "1800").stdout.split()[1]
    for i in range(30):
        ctl("put", f"/app/k{i % 10}", f"value-{i}")
    ctl("put", "/app/leased-a", "a", "--lease", long_lease)
    ctl("put", "/app/leased-b", "b", "--lease", other_lease)
    ctl("del", "/app/k3")
    ctl("del", "/app/k5", "--prefix")
    ctl("put", "/app/k3", "back again")
    ctl("put", "/bin/\xe9t\xe9", "non-ascii")


class Writer(threading.Thread):
    """Puts as fast as one client can, until stopped: the write load a backup runs under."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.done = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            while not self.stop.is_set():
                try:
                    kv.Put(
                        rpc_pb2.PutRequest(key=b"/load/%d" % (self.done % 200), value=b"x" * 100), timeout=10
                    )
                    self.done += 1
                except grpc.RpcError as e:
                    self.errors.append(str(e.code()))


def abandon_snapshot_stream(member: Server) -> None:
    """A client that goes away mid-stream: the member removes the checkpoint it was reading."""
    with grpc.insecure_channel(member.endpoint) as channel:
        stream = rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(rpc_pb2.SnapshotRequest())
        assert next(stream).blob[:8] == b"CAIRNSN1"
        stream.cancel()
    checkpoints = member.data_dir / "member" / "snapshots"
    deadline = time.monotonic() + 20
    while os.listdir(checkpoints):
        assert time.monotonic() < deadline, os.listdir(checkpoints)
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_save_under_load_restore_new_cluster(tmp_path: Path) -> None:
    source = Cluster("cairn", 3, tmp_path / "source").start()
    try:
        leader = source.leader()
        follower = next(m for m in source.members if m is not leader)
        fill_history(leader.endpoint)
        writer = Writer(leader.endpoint)
        writer.start()
        while writer.done < 50:
            writer.join(0.05)
        backup = tmp_path / "backup.db"
        saved = run_etcdctl(follower.endpoint, "snapshot", "save", str(backup))  # a follower, mid-load
        assert f"Snapshot saved at {backup}" in saved.stdout
        assert os.listdir(follower.data_dir / "member" / "snapshots") == []  # the checkpoint is gone
        abandon_snapshot_stream(leader)
        mine = tmp_path / "cairnctl-backup.db"
        saved = cairnctl("--endpoint", leader.endpoint, "snapshot", "save", str(mine))
        assert saved.stdout == f"Snapshot saved at {mine}\n" and "saving [" in saved.stderr
        assert json.loads(cairnctl("snapshot", "status", str(mine), "-w", "json").stdout)["revision"] > 0
        before = writer.done
        while writer.done < before + 50:  # writes go on after the snapshot was taken
            writer.join(0.05)
        writer.stop.set()
        writer.join()
        assert not writer.errors
        status = json.loads(cairnctl("snapshot", "status", str(backup), "-w", "json").stdout)
        revision = status["revision"]
        assert 0 < revision < get_json(leader.endpoint)["header"]["revision"]
        expected = get_json(leader.endpoint, f"--rev={revision}")
        assert status["totalKey"] == expected["count"]
        history = {rev: kvs(get_json(leader.endpoint, f"--rev={rev}")) for rev in (5, 20, 37)}
        expected_leases = leases(leader.endpoint)
        assert len(expected_leases) == 2
    finally:
        source.stop()

    target = Cluster("cairn", 3, tmp_path / "target")
    restore_members(backup, target)
    with target:
        restored = get_json(target.leader().endpoint)
        assert restored["header"]["revision"] == revision
        assert kvs(restored) == kvs(expected)
        for rev, old in history.items():
            assert kvs(get_json(target.members[0].endpoint, f"--rev={rev}")) == old
        for m in target.members:  # every member holds the same data
            assert kvs(get_json(m.endpoint, "--consistency=s")) == kvs(expected)
        assert leases(target.members[1].endpoint) == expected_leases
        # a fresh cluster: new membership, and writes carry on from the snapshot's revision
        members = run_etcdctl(target.endpoints, "member", "list").stdout
        assert all(m.peer_url in members for m in target.members)
        put = json.loads(run_etcdctl(target.members[2].endpoint, "put", "/after", "1", "-w", "json").stdout)
        assert put["header"]["revision"] == revision + 1

    # damaged copies are refused, and leave no data dir behind
    data = backup.read_bytes()
    bad = tmp_path / "bad.db"
    for damaged, why in ((data[: len(data) // 2], "truncated"), (data[:-1], "truncated")):
        bad.write_bytes(damaged)
        refused = cairnctl("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "x"), check=False)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
        assert not (tmp_path / "x").exists()
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x10
    bad.write_bytes(bytes(flipped))
    refused = cairnctl("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "x"), check=False)
    assert refused.returncode == 2 and "corrupt" in refused.stderr, refused.stderr
    assert not (tmp_path / "x").exists()
    assert cairnctl("snapshot", "status", str(bad), check=False).returncode == 2


def fill_etcd(endpoint: str) -> None:
    fill_history(endpoint)
    ctl = lambda *a: run_etcdctl(endpoint, *a)  # noqa: E731
    for i in range(20):
        ctl("put", f"/more/k{i % 4}", "v" * (i * 50))
    ctl("compact", "25")
    ctl("put", "/big", "B" * 20000)  # a value spanning overflow pages
    ctl("del", "/more/k1")
    lease = ctl("lease", "grant", "900").stdout.split()[1]
    ctl("put", "/more/k2", "leased", "--lease", lease)


@pytest.mark.timeout(180)
def test_migrate_from_real_etcd(etcd: Server, tmp_path: Path) -> None:
    fill_etcd(etcd.endpoint)
    current = get_json(etcd.endpoint)
    head = current["header"]["revision"]
    revisions = [25, 30, 41, head - 2, head - 1]
    expected_history = {rev: get_json(etcd.endpoint, f"--rev={rev}") for rev in revisions}
    compacted = run_etcdctl(etcd.endpoint, "get", "/app/k1", "--rev=24", check=False)
    assert compacted.returncode != 0
    expected_leases = leases(etcd.endpoint)
    backup = tmp_path / "etcd-backup.db"
    run_etcdctl(etcd.endpoint, "snapshot", "save", str(backup))
    also = tmp_path / "etcd-by-cairnctl.db"  # cairnctl saves from a real etcd too
    cairnctl("--endpoint", etcd.endpoint, "snapshot", "save", str(also))
    assert (
        cairnctl("snapshot", "status", str(also)).stdout == cairnctl("snapshot", "status", str(backup)).stdout
    )

    # cairnctl reads etcd's file exactly as etcdctl does
    for fmt in ("simple", "table", "json"):
        theirs = subprocess.run(
            ["etcdctl", "snapshot", "status", str(backup), "-w", fmt],
            capture_output=True, text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"},
        ).stdout  # fmt: skip
        assert cairnctl("snapshot", "status", str(backup), "-w", fmt).stdout == theirs

    cairn = Server("cairn", tmp_path / "cairn", name="m1")
    initial = f"m1={cairn.peer_url}"
    out = cairnctl(
        "snapshot", "restore", str(backup), "--data-dir", str(cairn.data_dir), "--name", "m1",
        "--initial-cluster", initial, "--initial-advertise-peer-urls", cairn.peer_url,
    )  # fmt: skip
    assert f"revision {head}" in out.stdout
    with cairn.start():
        restored = get_json(cairn.endpoint)
        assert restored["header"]["revision"] == head
        assert kvs(restored) == kvs(current)
        assert restored["count"] == current["count"]
        for rev, answer in expected_history.items():
            assert kvs(get_json(cairn.endpoint, f"--rev={rev}")) == kvs(answer), rev
        mine = run_etcdctl(cairn.endpoint, "get", "/app/k1", "--rev=24", check=False)
        last_line = lambda r: r.stderr.strip().splitlines()[-1]  # noqa: E731  (before: a log line with times)
        assert (mine.returncode, last_line(mine)) == (compacted.returncode, last_line(compacted))
        assert leases(cairn.endpoint) == expected_leases
    check_damaged_etcd_files(backup, tmp_path)


def test_restore_refuses_bad_flags_and_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a snapshot at all" * 100)
    cases = [
        ((str(junk), "--name", "a", "--initial-cluster", "b=http://127.0.0.1:1"),
         "couldn't find local name \"a\" in the initial cluster configuration"),
        ((str(junk), "--name", "a", "--initial-cluster", "a=http://127.0.0.1:1",
          "--initial-advertise-peer-urls", "http://127.0.0.1:2"),
         "--initial-cluster has a=http://127.0.0.1:1 but missing from --initial-advertise-peer-urls"),
        ((str(junk), "--initial-cluster", "default=http://localhost:2380,b=http://localhost:2380"),
         "has duplicate url"),
        ((str(tmp_path / "missing.db"),), "cannot read snapshot"),
        ((str(junk),), "is not a snapshot: neither cairn's format nor etcd's"),
    ]  # fmt: skip
    for args, message in cases:
        result = cairnctl("snapshot", "restore", *args, "--data-dir", str(tmp_path / "new"), check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert not (tmp_path / "new").exists()
    exists = cairnctl("snapshot", "restore", str(junk), "--data-dir", str(tmp_path), check=False)
    assert exists.returncode == 2 and f'data-dir "{tmp_path}" exists' in exists.stderr


def check_damaged_etcd_files(backup: Path, tmp_path: Path) -> None:
    """Damaged etcd files: refused by the sha256 check, and with --skip-hash-check by the bbolt reader
    with a clear error (never a traceback). Seeded: the seed is printed."""
    data = backup.read_bytes()
    bad = tmp_path / "bad-etcd.db"
    target = str(tmp_path / "never")
    for damaged, skip, message in (
        (data[:-100], (), "snapshot missing hash but --skip-hash-check=false"),
        (data[:-32] + bytes(32), (), "snapshot file is corrupt: expected sha256"),
        (data[: 2 * 4096], ("--skip-hash-check",), "bbolt file is"),  # the meta pages only
    ):
        bad.write_bytes(damaged)
        result = cairnctl("snapshot", "restore", str(bad), "--data-dir", target, *skip, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not os.path.exists(target)
        if "expected sha256" in message:  # status refuses it too (a file merely cut short may read fine)
            assert cairnctl("snapshot", "status", str(bad), check=False).returncode == 2

    from actors.storage.backend import Backend
    from tools.bbolt import BoltDB
    from tools.etcd_snapshot import import_etcd, status

    seed = random.randrange(1 << 32)
    print("bbolt damage seed", seed)
    rng = random.Random(seed)
    db_bytes = data[:-32]
    for i in range(60):
        damaged = bytearray(db_bytes)
        if i % 3 == 0:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(rng.randrange(1, 4)):
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        directory = tmp_path / f"fuzz{i}"
        try:
            db = BoltDB(bytes(damaged))
            status(db)
            backend = Backend(str(directory))
            try:
                import_etcd(db, backend)
            finally:
                backend.close()
        except ValueError:
            pass  # BoltError and friends: a clear refusal


AETCD_SNAPSHOT = """
import asyncio, sys
import aetcd

async def main(port, path):
    async with aetcd.Client(host="127.0.0.1", port=port, timeout=30) as c:
        await c.put(b"/py/a", b"1")
        with open(path, "wb") as f:
            await c.snapshot(f)

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def test_python_client_and_rest_snapshot(cairn: Server, tmp_path: Path) -> None:
    """aetcd's snapshot() (grpc.aio, its own protos: run in its own interpreter) and the JSON gateway's
    POST /v3/maintenance/snapshot (newline-delimited results, base64 blobs) both give a valid file."""
    path = tmp_path / "py.db"
    subprocess.run(
        [sys.executable, "-c", AETCD_SNAPSHOT, str(cairn.client_port), str(path)], check=True, timeout=60
    )
    status = json.loads(cairnctl("snapshot", "status", str(path), "-w", "json").stdout)
    assert (status["revision"], status["totalKey"]) == (2, 1)

    curl = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{cairn.client_url}/v3/maintenance/snapshot", "-d", "{}"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    results = [json.loads(line)["result"] for line in curl.stdout.splitlines()]
    assert int(results[0]["remaining_bytes"]) > 0 and "remaining_bytes" not in results[-1]
    rest = tmp_path / "rest.db"
    rest.write_bytes(b"".join(base64.b64decode(r["blob"]) for r in results))
    assert json.loads(cairnctl("snapshot", "status", str(rest), "-w", "json").stdout)["revision"] == 2
    assert os.listdir(cairn.data_dir / "member" / "snapshots") == []


def _snapshot_under_auth(server: Server, tmp_path: Path) -> list[tuple[int, str]]:
    setup = (
        ("user", "add", "root:rootpw"), ("role", "add", "root"), ("user", "grant-role", "root", "root"),
        ("user", "add", "svc:pw"), ("auth", "enable"),
    )  # fmt: skip
    for args in setup:
        server.etcdctl(*args)
    seen = []
    for who in ((), ("--user", "svc:pw"), ("--user", "root:rootpw")):
        target = tmp_path / f"{server.kind}-{len(seen)}.db"
        result = server.etcdctl(*who, "snapshot", "save", str(target), check=False)
        last = (result.stdout.strip() or result.stderr.strip()).splitlines()[-1]
        seen.append((result.returncode, last.replace(str(target), "FILE")))
    return seen


def test_snapshot_needs_root_once_auth_is_on(tmp_path: Path) -> None:
    """As etcd (IsAdminPermitted): no user -> "user name is empty", a user without the root role ->
    "permission denied", root -> saved. Same answers as a real etcd's, side by side."""
    with Server("etcd", tmp_path / "etcd") as etcd:
        expected = _snapshot_under_auth(etcd, tmp_path)
    with Server("cairn", tmp_path / "cairn") as cairn:
        got = _snapshot_under_auth(cairn, tmp_path)
    assert got == expected
    assert expected[2] == (0, "Snapshot saved at FILE")
