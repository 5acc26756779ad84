"""Watch in a three-member cairn cluster: a follower's watchers see every write, and survive its loss.

Every member runs its own watch hub fed by its own applied revisions, so a client may watch through
any member. Checked here:

- a raw gRPC Watch stream and an ``etcdctl watch --prefix`` opened on a FOLLOWER see every write made
  through the leader and through the other follower (puts, deletes, a multi-op txn), exactly once, in
  revision order;
- when that follower is stopped (SIGTERM) while writes go on, its watch stream ends with an error
  instead of hanging; a new stream on another member from (last revision received + 1) then gets
  exactly the events that followed: nothing lost, nothing repeated (what clientv3 does on failover).

etcdctl itself does not exit when its only endpoint goes away (with etcd 3.4 as with cairn it
retries forever), so the failover half uses a raw gRPC stream.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from servers import ETCDCTL_BIN, Cluster, Server

from actors.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

PREFIX = b"/w/"
PREFIX_END = b"/w0"

Event = tuple[int, str, bytes, bytes]  # (mod_revision, "PUT" | "DELETE", key, value)


class Watcher:
    """A raw gRPC Watch stream on PREFIX from `start_revision`, read by a thread."""

    def __init__(self, member: Server, start_revision: int) -> None:
        self.channel = grpc.insecure_channel(member.endpoint)
        self.done = threading.Event()
        self.responses = rpc_pb2_grpc.WatchStub(self.channel).Watch(self._requests(start_revision))
        self.events: list[Event] = []
        self.created = threading.Event()
        self.ended = threading.Event()
        self.end: tuple[grpc.StatusCode | None, str] = (None, "")
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _requests(self, start_revision: int) -> Iterator[rpc_pb2.WatchRequest]:
        create = rpc_pb2.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END, start_revision=start_revision)
        yield rpc_pb2.WatchRequest(create_request=create)
        self.done.wait()  # stay open, not half-closed

    def _read(self) -> None:
        try:
            for resp in self.responses:
                if resp.created:
                    self.created.set()
                for ev in resp.events:
                    kind = kv_pb2.Event.EventType.Name(ev.type)
                    self.events.append((ev.kv.mod_revision, kind, ev.kv.key, ev.kv.value))
            self.end = (grpc.StatusCode.OK, "stream ended without error")
        except grpc.RpcError as exc:
            self.end = (exc.code(), exc.details() or "")
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and not self.ended.is_set():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(self.events) >= count, f"watcher got {len(self.events)} of {count} events, end={self.end}"

    def close(self) -> None:
        self.done.set()
        self.responses.cancel()
        self.channel.close()


class Writer:
    """Writes through the given members in turn and records the events each write must produce."""

    def __init__(self, members: list[Server]) -> None:
        self.channels = [grpc.insecure_channel(m.endpoint) for m in members]
        self.stubs = [rpc_pb2_grpc.KVStub(c) for c in self.channels]
        self.expected: list[Event] = []
        self.n = 0

    def _kv(self) -> rpc_pb2_grpc.KVStub:
        self.n += 1
        return self.stubs[self.n % len(self.stubs)]

    def put(self, key: bytes, value: bytes) -> None:
        rev = self._kv().Put(rpc_pb2.PutRequest(key=key, value=value), timeout=10).header.revision
        self.expected.append((rev, "PUT", key, value))

    def delete(self, key: bytes) -> None:
        resp = self._kv().DeleteRange(rpc_pb2.DeleteRangeRequest(key=key), timeout=10)
        assert resp.deleted == 1
        self.expected.append((resp.header.revision, "DELETE", key, b""))

    def txn(self, puts: list[tuple[bytes, bytes]], delete: bytes) -> None:
        ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v)) for k, v in puts]
        ops.append(rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=delete)))
        rev = self._kv().Txn(rpc_pb2.TxnRequest(success=ops), timeout=10).header.revision
        self.expected += [(rev, "PUT", k, v) for k, v in puts]
        self.expected.append((rev, "DELETE", delete, b""))

    def step(self, i: int) -> None:
        """Write number i: mostly puts over ten keys, every fifth a delete of the key just put."""
        key = PREFIX + b"k%d" % (i % 10)
        if i % 5 == 4:
            self.delete(PREFIX + b"k%d" % ((i - 1) % 10))
        else:
            self.put(key, b"v%d" % i)

    def close(self) -> None:
        for c in self.channels:
            c.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster("cairn", 3, tmp_path) as c:
        yield c


def etcdctl_lines(events: list[Event]) -> list[str]:
    """What `etcdctl watch` prints for these events (simple format: type, key, value lines)."""
    out = []
    for _, kind, key, value in events:
        out += [kind, key.decode(), value.decode()]
    return out


@pytest.mark.timeout(180)
def test_follower_watch_sees_all_writes_and_resumes_elsewhere_after_its_member_stops(
    cluster: Cluster, tmp_path: Path
) -> None:
    leader = cluster.leader()
    f1, f2 = [m for m in cluster.members if m is not leader]
    with grpc.insecure_channel(leader.endpoint) as channel:
        start = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header.revision
    watcher = Watcher(f1, start + 1)
    resumed: Watcher | None = None
    writer = Writer([leader, f2])
    ctl_out = tmp_path / "etcdctl-watch.txt"
    with open(ctl_out, "wb") as out:
        ctl = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={f1.endpoint}", "watch", "--prefix", PREFIX.decode()],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, ETCDCTL_API="3"),
        )  # fmt: skip
    try:
        assert watcher.created.wait(10), f"no created response from the follower: {watcher.end}"
        time.sleep(1.0)  # etcdctl's watch is created too (it prints nothing until events come)

        # Phase 1: writes through the leader and the other follower; the follower's watchers see all.
        for i in range(40):
            writer.step(i)
        k0 = PREFIX + b"k0"  # put at i=30, still there
        writer.txn([(PREFIX + b"t1", b"a"), (PREFIX + b"t2", b"b")], delete=k0)
        phase1 = list(writer.expected)
        watcher.wait_for(len(phase1))
        time.sleep(0.3)  # nothing more may come
        assert watcher.events == phase1
        want_lines = etcdctl_lines(phase1)
        deadline = time.monotonic() + 10
        while len(ctl_out.read_text().splitlines()) < len(want_lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctl_out.read_text().splitlines() == want_lines
        ctl.terminate()
        ctl.wait(10)

        # Phase 2: writes go on while the watcher's member is stopped.
        stop_writing = threading.Event()
        errors: list[BaseException] = []

        def keep_writing() -> None:
            i = 40
            try:
                while not stop_writing.is_set():
                    writer.step(i)
                    i += 1
                    time.sleep(0.01)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=keep_writing)
        thread.start()
        time.sleep(0.5)
        sigterm_at = time.monotonic()
        code = f1.stop()
        stopped_in = time.monotonic() - sigterm_at
        assert watcher.ended.wait(15), "the watch stream is still open 15 s after its member was stopped"
        ended_in = watcher.ended_at - sigterm_at
        time.sleep(0.5)
        stop_writing.set()
        thread.join(20)
        assert not errors, errors[0]
        status, details = watcher.end
        print(
            f"\nfollower stopped in {stopped_in:.2f}s (exit code {code}); its watch stream ended "
            f"{ended_in:.2f}s after SIGTERM with {status}: {details}; "
            f"{len(watcher.events)} of {len(writer.expected)} events received before"
        )
        assert status not in (None, grpc.StatusCode.OK), "the stream must end with an error status"

        got = watcher.events
        assert got == writer.expected[: len(got)], "events before the stop: a gap, a repeat or disorder"
        assert len(got) >= len(phase1)

        # Resume on the other follower from the last revision received + 1.
        last_rev = got[-1][0]
        resumed = Watcher(f2, last_rev + 1)
        rest = writer.expected[len(got) :]
        assert all(ev[0] > last_rev for ev in rest), "a revision was split between the two streams"
        resumed.wait_for(len(rest))
        time.sleep(0.3)
        assert resumed.events == rest
        print(f"resumed on {f2.name} from revision {last_rev + 1}: {len(rest)} events, exactly the rest")
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        watcher.close()
        if resumed is not None:
            resumed.close()
        writer.close()
