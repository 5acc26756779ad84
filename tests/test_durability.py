"""Crash durability: kill -9 a cairn node under concurrent writers, restart it, lose nothing acknowledged.

Writers (threads, one gRPC channel each) stream puts of distinct keys with distinct values and record
every put the node acknowledged, with the revision from the response header.  The node is killed with
SIGKILL (the whole process group, as a power cut would) while they write, restarted on the same data dir,
and then:

* every acknowledged put reads back with its value, and with mod_revision == create_revision == the
  acknowledged revision (each key is written once, so it is version 1);
* no revision was acknowledged twice;
* every key in the store is one a writer sent (acknowledged or not: an unacknowledged put may or may
  not have reached the log), and the mod_revisions of all keys are exactly 2..R where R is the store's
  revision: no gap, no repeat, nothing lost or invented, since only puts of fresh keys ever ran;
* the next put gets revision R + 1.

The crash is repeated several times on one data dir; then only the core child is killed, and the
supervisor must restart it and serve again with nothing acknowledged lost.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from servers import Server, run_etcdctl

from actors.proto import rpc_pb2, rpc_pb2_grpc

WRITERS = 4
PREFIX = b"dur/"
CALL_TIMEOUT = 15.0  # generous: a loaded 2-core machine, and the core may be restarting under us


@dataclass
class Ledger:
    """What the writers sent and what the node acknowledged, across every round of one test."""

    acked: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # key -> (value, revision)
    sent: dict[bytes, bytes] = field(default_factory=dict)  # every key ever sent -> its value
    ack_revisions: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Writers:
    """WRITERS threads putting fresh keys until stopped; each put is recorded before and after it is sent."""

    def __init__(self, endpoint: str, ledger: Ledger, round_no: int) -> None:
        self.endpoint = endpoint
        self.ledger = ledger
        self.round = round_no
        self.stop_event = threading.Event()
        self.acks_this_round = [0] * WRITERS
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(w,), name=f"writer-{w}", daemon=True)
            for w in range(WRITERS)
        ]

    def start(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, writer: int) -> None:
        rng = random.Random(f"{self.round}-{writer}")
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            seq = 0
            while not self.stop_event.is_set():
                key = PREFIX + f"r{self.round}/w{writer}/{seq:06d}".encode()
                value = f"value-{self.round}-{writer}-{seq}-{rng.getrandbits(64):016x}".encode()
                seq += 1
                with self.ledger.lock:
                    self.ledger.sent[key] = value  # before sending: it may land even if we never hear back
                try:
                    resp = stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT)
                except grpc.RpcError as e:
                    if len(self.errors) < 20:
                        self.errors.append(f"{e.code()}: {e.details()}")
                    self.stop_event.wait(0.05)
                    continue
                with self.ledger.lock:
                    self.ledger.acked[key] = (value, resp.header.revision)
                    self.ledger.ack_revisions.append(resp.header.revision)
                self.acks_this_round[writer] += 1

    def wait_acks(self, per_writer: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while min(self.acks_this_round) < per_writer:
            assert time.monotonic() < deadline, (
                f"writers did not get {per_writer} acks each in {timeout}s: {self.acks_this_round}, "
                f"errors: {self.errors[:5]}"
            )
            time.sleep(0.02)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT + 10)
            assert not thread.is_alive(), f"{thread.name} is stuck in a call"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Server]:
    server = Server("cairn", tmp_path / "cairn", ready_timeout=60.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_all(endpoint: str) -> tuple[int, dict[bytes, tuple[bytes, int, int, int]]]:
    """(store revision, {key: (value, create_revision, mod_revision, version)}) of every key, linearizably."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        resp = stub.Range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=60)
    assert resp.count == len(resp.kvs) and not resp.more
    return resp.header.revision, {
        kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in resp.kvs
    }


def put(endpoint: str, key: bytes, value: bytes, timeout: float = 60.0) -> int:
    """Put, retrying while the node comes back; returns the acknowledged revision."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(endpoint) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        while True:
            try:
                return stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10).header.revision
            except grpc.RpcError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"put {key!r} still failing after {timeout}s: {e}") from e
                time.sleep(0.2)


def check_store(endpoint: str, ledger: Ledger, extra: dict[bytes, tuple[bytes, int]]) -> int:
    """Check the whole store against the ledger (and `extra`: probe puts made outside it); return R."""
    revision, store = read_all(endpoint)
    # no revision acknowledged twice
    assert len(ledger.ack_revisions) == len(set(ledger.ack_revisions)), "a revision was acknowledged twice"
    # every acknowledged put is there, with its value and revision
    lost = []
    for key, (value, rev) in ledger.acked.items():
        got = store.get(key)
        if got != (value, rev, rev, 1):
            lost.append((key, (value, rev), got))
    assert not lost, f"{len(lost)} acknowledged puts lost or changed, e.g. {lost[:5]}"
    for key, (value, rev) in extra.items():
        assert store.get(key) == (value, rev, rev, 1), f"probe {key!r}: {store.get(key)} != {(value, rev)}"
    # nothing in the store that nobody sent, and no unacknowledged key with a value it was never sent with
    for key, (value, create, mod, version) in store.items():
        expected = ledger.sent.get(key, extra.get(key, (None,))[0])
        assert expected is not None, f"key {key!r} in the store was never written"
        assert value == expected and version == 1 and create == mod, f"{key!r}: {store[key]}"
    # fresh keys only: the mod revisions are exactly 2..R (revision 1 is the empty store)
    mods = sorted(mod for _value, _create, mod, _version in store.values())
    assert mods == list(range(2, revision + 1)), (
        f"store revision {revision}, {len(mods)} keys: revisions have a gap or a repeat "
        f"(first missing {sorted(set(range(2, revision + 1)) - set(mods))[:5]}, "
        f"repeated {sorted({m for m in mods if mods.count(m) > 1})[:5]})"
    )
    assert revision >= max(ledger.ack_revisions, default=1)
    # and etcdctl sees the same count under the writers' prefix
    counted = json.loads(
        run_etcdctl(endpoint, "get", "--prefix", PREFIX.decode(), "--keys-only", "-w", "json").stdout
    )
    assert int(counted.get("count", 0)) == len(store)
    unacked = sum(1 for key in store if key not in ledger.acked and key not in extra)
    print(f"store revision {revision}: {len(ledger.acked)} acked puts, {unacked} unacked puts that landed")
    return revision


def probe(endpoint: str, extra: dict[bytes, tuple[bytes, int]], name: str, before: int) -> None:
    """The next put after a check must get exactly the next revision."""
    key, value = PREFIX + f"probe/{name}".encode(), f"probe-{name}".encode()
    rev = put(endpoint, key, value)
    assert rev == before + 1, f"first put after {name} got revision {rev}, expected {before + 1}"
    extra[key] = (value, rev)


def acked_in_round(ledger: Ledger, round_no: int) -> int:
    marker = f"r{round_no}/".encode()
    return sum(1 for key in ledger.acked if key.startswith(PREFIX + marker))


@pytest.mark.timeout(240)
def test_kill9_under_concurrent_writers_loses_no_acknowledged_put(node: Server) -> None:
    ledger = Ledger()
    extra: dict[bytes, tuple[bytes, int]] = {}
    rng = random.Random(1234)
    for round_no in range(4):
        writers = Writers(node.endpoint, ledger, round_no).start()
        try:
            writers.wait_acks(per_writer=40)
            time.sleep(rng.uniform(0.0, 0.5))  # land the crash at a varying point of the stream
            node.kill9()
        finally:
            writers.stop()
        assert acked_in_round(ledger, round_no) >= WRITERS * 40
        node.start()
        revision = check_store(node.endpoint, ledger, extra)
        probe(node.endpoint, extra, f"after-crash-{round_no}", revision)
    # one more clean look after the last probe: still consistent
    check_store(node.endpoint, ledger, extra)


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<pid>/task/*/children (no psutil)."""
    pids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir():
        try:
            pids.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def core_child(supervisor: int) -> int:
    """The pid of the supervisor's `python -m node.core` child."""
    for pid in child_pids(supervisor):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node.core" in cmdline:
            return pid
    raise AssertionError(f"no node.core child of supervisor {supervisor}: children {child_pids(supervisor)}")


@pytest.mark.timeout(240)
def test_kill9_of_core_child_is_restarted_by_supervisor(node: Server) -> None:
    ledger = Ledger()
    extra: dict[bytes, tuple[bytes, int]] = {}
    old_core = core_child(node.pid)
    writers = Writers(node.endpoint, ledger, 0).start()
    try:
        writers.wait_acks(per_writer=15)
        os.kill(old_core, 9)
        acks_at_kill = sum(writers.acks_this_round)
        # the supervisor brings a new core; the writers (still running, same channels) resume
        deadline = time.monotonic() + 90
        while sum(writers.acks_this_round) < acks_at_kill + WRITERS * 15:
            assert node.running, f"the supervisor died with its core child\n{node.log_tail()}"
            assert time.monotonic() < deadline, (
                f"service did not resume after the core was killed: {writers.acks_this_round}, "
                f"errors {writers.errors[:5]}\n{node.log_tail()}"
            )
            time.sleep(0.05)
    finally:
        writers.stop()
    new_core = core_child(node.pid)
    assert new_core != old_core
    assert node.running
    revision = check_store(node.endpoint, ledger, extra)
    probe(node.endpoint, extra, "after-core-kill", revision)
    # and the restarted core survives a full restart of the node on top of it
    node.kill9()
    node.start()
    revision = check_store(node.endpoint, ledger, extra)
    probe(node.endpoint, extra, "after-core-kill-and-crash", revision)
