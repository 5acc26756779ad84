"""Maintenance with real clients: defrag, endpoint hashkv and alarms, against etcd and in a cluster.

- etcdctl's defrag / hashkv / alarm output for a scripted history is compared with a real etcd's,
  step by step (the harness of test_etcdctl_differential): HashKV hashes the same rows the same way
  as etcd, so the hashes themselves must be equal, not just well-formed.
- a three-member cairn cluster: `endpoint hashkv` on all members shows one hash on every member; a
  NOSPACE alarm raised by one member is listed by all, survives a restart, and refuses puts on all
  until compact + `defrag` on every member + `alarm disarm`.
- defragmenting under a concurrent read/write load fails no request, keeps answering while it runs,
  and shrinks the database after a large delete + compaction.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from servers import Cluster, Server, run_etcdctl
from test_etcdctl_differential import Step, run_differential

from actors.proto import rpc_pb2 as R

# fmt: off
MAINTENANCE_SEQUENCE: list[Step] = [
    (("put", "a", "1"), None),
    (("put", "b", "2"), None),
    (("put", "a", "3"), None),
    (("endpoint", "hashkv"), None),
    (("endpoint", "hashkv", "-w", "json"), None),
    (("endpoint", "hashkv", "-w", "fields"), None),
    (("endpoint", "hashkv", "-w", "table"), None),
    (("del", "b"), None),
    (("txn",), "value(\"a\") = \"3\"\n\nput a 4\nput t 5\ndel nothing\n\nput a never\n\n"),
    (("put", "c/1", "x"), None),
    (("put", "c/2", "y"), None),
    (("del", "--prefix", "c/"), None),
    (("put", "c/1", "again"), None),                      # a second generation of c/1
    (("get", "a", "-w", "json"), None),
    (("endpoint", "hashkv"), None),
    (("endpoint", "hashkv", "--rev={rev-2}"), None),      # at a past revision
    (("endpoint", "hashkv", "--rev={rev+100}"), None),    # error: future revision
    (("compaction", "{rev-1}"), None),
    (("endpoint", "hashkv"), None),                       # only the rows a compaction keeps count
    (("endpoint", "hashkv", "--rev={rev-1}"), None),      # error: compacted (the compaction revision itself)
    (("endpoint", "hashkv", "--rev={rev}"), None),
    (("put", "d", "1"), None),
    (("put", "-w", "json", "b", "back"), None),
    (("compaction", "--physical", "{rev}"), None),
    (("endpoint", "hashkv"), None),
    (("defrag",), None),
    (("endpoint", "hashkv"), None),                       # a defrag moves no row
    (("alarm", "list"), None),
    (("alarm", "disarm"), None),
    (("alarm", "list", "-w", "json"), None),
    (("put", "after", "defrag"), None),
    (("endpoint", "hashkv", "-w", "json"), None),
]
# fmt: on


def test_etcdctl_defrag_hashkv_alarm_differential(etcd: Server, cairn: Server, tmp_path: Path) -> None:
    mismatches = run_differential(etcd, cairn, MAINTENANCE_SEQUENCE, transcript_dir=tmp_path)
    assert not mismatches, "\n\n".join(mismatches)
    # the harness compares; make sure what it compared were real hashes, not two equal errors
    transcript = (tmp_path / "candidate.cairn.txt").read_text()
    assert (
        transcript.count("<ENDPOINT>, ") >= 6
        and "Finished defragmenting etcd member[<ENDPOINT>]" in transcript
    )
    # the JSON gateway answers the same bodies (neither AlarmResponse nor DefragmentResponse has a header)
    for path, body in (
        ("/v3/maintenance/defragment", {}),
        ("/v3/maintenance/alarm", {"action": "GET"}),
        ("/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": "5", "alarm": "NOSPACE"}),
    ):
        assert _post(etcd, path, body) == _post(cairn, path, body), path


def _post(server: Server, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(server.client_url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read().decode()


def _serializable_revision(member: Server) -> int:
    out = member.etcdctl("get", "--consistency=s", "nothing", "-w", "json").stdout
    return json.loads(out)["header"]["revision"]


def _wait_applied(cluster: Cluster, revision: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_serializable_revision(m) >= revision for m in cluster.members):
        assert time.monotonic() < deadline, f"members did not reach revision {revision}"
        time.sleep(0.2)


def _hashes(cluster: Cluster, *args: str) -> list[str]:
    # every member named: until members publish their client URLs, `--cluster` finds only the first
    out = run_etcdctl(cluster.endpoints, "endpoint", "hashkv", *args).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3, out
    return [line.split(", ")[1] for line in lines]


def _alarm_lists(cluster: Cluster) -> list[str]:
    return [m.etcdctl("alarm", "list").stdout for m in cluster.members if m.running]


def _backend_hash(member: Server) -> int:
    with grpc.insecure_channel(member.endpoint) as channel:
        call = channel.unary_unary("/etcdserverpb.Maintenance/Hash")
        return R.HashResponse.FromString(call(R.HashRequest().SerializeToString(), timeout=10)).hash


def _member_id(member: Server) -> int:
    return json.loads(member.etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"][
        "member_id"
    ]


@pytest.mark.timeout(240)
def test_cluster_hashkv_defrag_and_nospace_alarm(tmp_path: Path) -> None:
    quota = 3 * 1024 * 1024
    big = "v" * 100_000
    with Cluster("cairn", 3, tmp_path, extra_args=["--quota-backend-bytes", str(quota)]) as cluster:
        first, second, third = cluster.members
        for i in range(20):
            cluster.members[i % 3].etcdctl("put", f"k{i}", f"value {i}")
        first.etcdctl("del", "k3")
        first.etcdctl("compaction", "5")
        revision = _serializable_revision(first)
        _wait_applied(cluster, revision)
        now = _hashes(cluster)
        assert len(set(now)) == 1, now
        past = _hashes(cluster, f"--rev={revision - 3}")
        assert len(set(past)) == 1 and past != now

        # one member passes its quota: its alarm stops puts on every member
        filler = third
        for i in range(200):
            result = filler.etcdctl("put", f"fill/{i:03d}", big, check=False)
            if result.returncode:
                assert "etcdserver: mvcc: database space exceeded" in result.stderr
                break
        else:
            pytest.fail("the quota was never reached")
        expected = f"memberID:{_member_id(filler)} alarm:NOSPACE \n"  # etcdctl prints the space too
        deadline = time.monotonic() + 20
        while _alarm_lists(cluster) != [expected] * 3:
            assert time.monotonic() < deadline, _alarm_lists(cluster)
            time.sleep(0.2)
        refused = first.etcdctl("put", "k", "v", check=False)
        assert refused.returncode and "etcdserver: mvcc: database space exceeded" in refused.stderr
        assert "value 1" in second.etcdctl("get", "k1").stdout  # reads still work

        second.stop()  # the alarm is replicated state: a restarted member still has it
        second.start()
        assert second.etcdctl("alarm", "list").stdout == expected

        first.etcdctl("del", "--prefix", "fill/")
        first.etcdctl("compaction", str(_serializable_revision(first)))
        out = run_etcdctl(cluster.endpoints, "defrag").stdout
        assert out.splitlines() == [
            f"Finished defragmenting etcd member[{m.endpoint}]" for m in cluster.members
        ]
        assert first.etcdctl("alarm", "disarm").stdout == expected
        assert second.etcdctl("put", "k", "v").stdout.strip() == "OK"
        assert _alarm_lists(cluster) == [""] * 3
        revision = _serializable_revision(second)
        _wait_applied(cluster, revision)
        after = _hashes(cluster)
        assert len(set(after)) == 1, after
        whole = {_backend_hash(m) for m in cluster.members}  # Maintenance.Hash: the whole backend
        assert len(whole) == 1, whole


def _status(stub: object) -> R.StatusResponse:
    return stub.Status(R.StatusRequest(), timeout=10)  # type: ignore[attr-defined]


class Load:
    """Client threads putting and ranging in a loop, each on its own channel; records every outcome."""

    def __init__(self, endpoint: str, workers: int = 4) -> None:
        self.endpoint = endpoint
        self.failures: list[str] = []
        self.done: list[float] = []  # completion time of each request answered
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(w,)) for w in range(workers)]
        for t in self.threads:
            t.start()

    def _work(self, worker: int) -> None:
        from actors.proto import rpc_pb2_grpc

        with grpc.insecure_channel(self.endpoint) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            i = 0
            while not self.stop.is_set():
                try:
                    if worker % 2:
                        stub.Put(R.PutRequest(key=b"load/%d/%d" % (worker, i), value=b"v"), timeout=20)
                    else:
                        stub.Range(R.RangeRequest(key=b"load/", range_end=b"load0", limit=5), timeout=20)
                    self.done.append(time.monotonic())
                except grpc.RpcError as e:
                    self.failures.append(f"worker {worker}: {e.code().name} {e.details()}")
                i += 1

    def answered_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.done if start < t < end)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.mark.timeout(240)
def test_defrag_under_load_fails_nothing_and_shrinks_the_database(cairn: Server) -> None:
    from actors.proto import rpc_pb2_grpc

    channel = grpc.insecure_channel(cairn.endpoint)
    kv, maintenance = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.MaintenanceStub(channel)
    for batch in range(150):  # 150 txns of 100 puts: 15,000 keys, 30 MB that does not compress
        puts = [
            R.PutRequest(key=b"bulk/%05d" % (batch * 100 + i), value=os.urandom(2000)) for i in range(100)
        ]
        kv.Txn(R.TxnRequest(success=[R.RequestOp(request_put=p) for p in puts]), timeout=30)
    load = Load(cairn.endpoint)

    def defragment() -> tuple[float, int]:
        """Seconds the Defragment call took, and the load's requests answered meanwhile."""
        start = time.monotonic()
        maintenance.Defragment(R.DefragmentRequest(), timeout=120)
        end = time.monotonic()
        return end - start, load.answered_between(start, end)

    try:
        time.sleep(0.5)
        full_run = defragment()  # rewrites 30 MB of live rows into SST files
        full = _status(maintenance).dbSize
        deleted = kv.DeleteRange(R.DeleteRangeRequest(key=b"bulk/", range_end=b"bulk0"), timeout=30)
        assert deleted.deleted == 15_000
        kv.Compact(R.CompactionRequest(revision=deleted.header.revision, physical=True), timeout=30)
        before = _status(maintenance).dbSize
        empty_run = defragment()
        after = _status(maintenance).dbSize
        time.sleep(0.5)
    finally:
        load.finish()
    print(
        f"defrag of the full db: {full_run[0]:.2f} s, {full_run[1]} requests answered meanwhile; "
        f"after delete + compaction: {empty_run[0]:.2f} s, {empty_run[1]} answered; "
        f"db size {full} bytes full, {before} after the delete + compaction, {after} after defrag"
    )
    assert not load.failures, load.failures[:5]
    assert full_run[1] > 0  # the member answered while it rewrote 30 MB (the second run is too short to tell)
    assert after < before / 50, (before, after)
    assert cairn.etcdctl("defrag").stdout == f"Finished defragmenting etcd member[{cairn.endpoint}]\n"
    with urllib.request.urlopen(f"{cairn.client_url}/metrics", timeout=10) as response:
        exported = response.read().decode()
    assert "etcd_disk_backend_defrag_duration_seconds_count 3.0" in exported
    channel.close()


def test_maintenance_requests_that_are_not_messages_are_refused(cairn: Server) -> None:
    with grpc.insecure_channel(cairn.endpoint) as channel:
        for method in ("Defragment", "Hash", "HashKV", "Alarm"):
            call = channel.unary_unary(f"/etcdserverpb.Maintenance/{method}")
            with pytest.raises(grpc.RpcError) as e:
                call(b"\xff\xff\xff", timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "is not a valid etcdserverpb." in e.value.details(), method
    assert cairn.etcdctl("alarm", "list").stdout == ""  # nothing was applied
