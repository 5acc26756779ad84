"""One watch stream that never reads must not hurt the others, nor the node's memory, nor itself.

A raw gRPC client opens a Watch stream on a prefix, sends its create request and then does not read.
Three other streams (each on its own channel, read by its own thread) watch the same prefix while
100,000 puts go through as 1,000 Txns of 100 puts each (distinct keys, ~100-byte values) from several
writer threads. Checked:

- every reading watcher receives every event exactly once, in order: the sequence of (mod_revision,
  key) it gets equals the writes sorted by their txn's revision, keys in op order within a txn;
- the node's RSS (the supervisor and all its descendants, from /proc) stays under a bound ~3x above
  what a normal run of this test measures (the figures are printed);
- when the stalled client finally reads, it gets the very same sequence (the node dropped what it
  could not send and replays it from history), with no gap and no duplicate.

A sentinel put after the load marks the end: a watcher that sees it right after the last expected
event provably got nothing extra.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from servers import Server

from actors.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

N_TXNS = 1000
OPS_PER_TXN = 100
TOTAL = N_TXNS * OPS_PER_TXN
WRITERS = 8
READERS = 3
PREFIX = b"/stall/"
PREFIX_END = b"/stall0"
VALUE = b"v" * 100
SENTINEL = PREFIX + b"~end"
#: The node tree's RSS measured in this test: ~130 MB idle, ~220 MB peak (printed); the bound is ~3x that.
RSS_BOUND_MB = 700


def key(i: int) -> bytes:
    return PREFIX + b"k%07d" % i


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants, found through /proc/<pid>/task/*/children."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        task_dir = Path(f"/proc/{pid}/task")
        try:
            tasks = list(task_dir.iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return pids


def tree_rss_mb(root: int) -> float:
    """Sum of VmRSS over the process tree of `root`, in MiB."""
    total_kb = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024


class RssSampler(threading.Thread):
    """Samples the tree's RSS every 100 ms and keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self.stop.wait(0.1)


def watch_requests(start_revision: int, done: threading.Event) -> Iterator[rpc_pb2.WatchRequest]:
    """The create request, then nothing more: the stream stays open (not half-closed) until `done`."""
    create = rpc_pb2.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END, start_revision=start_revision)
    yield rpc_pb2.WatchRequest(create_request=create)
    done.wait()


class Reader:
    """One watch stream, read (eventually) by its own thread until the sentinel arrives."""

    def __init__(self, endpoint: str, start_revision: int, done: threading.Event, options=()) -> None:
        # etcd may send a watcher that fell behind everything it missed in one response (11 MB here).
        opts = [("grpc.max_receive_message_length", 2**31 - 1), *options]
        self.channel = grpc.insecure_channel(endpoint, options=opts)
        stub = rpc_pb2_grpc.WatchStub(self.channel)
        self.responses = stub.Watch(watch_requests(start_revision, done))
        self.events: list[tuple[int, bytes]] = []
        self.bad: list[str] = []
        self.created = threading.Event()
        self.finished = threading.Event()
        self.max_events_per_response = 0
        self.thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _read(self) -> None:
        put = kv_pb2.Event.PUT
        try:
            for resp in self.responses:
                if resp.created:
                    self.created.set()
                if resp.canceled:
                    self.bad.append(f"canceled: {resp.cancel_reason!r} compact={resp.compact_revision}")
                    return
                n = len(resp.events)
                self.max_events_per_response = max(self.max_events_per_response, n)
                for ev in resp.events:
                    kv = ev.kv
                    if kv.key == SENTINEL:
                        self.finished.set()
                        return
                    if ev.type != put or kv.value != VALUE or kv.version != 1:
                        self.bad.append(f"unexpected event {ev}")
                    self.events.append((kv.mod_revision, kv.key))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.bad.append(f"stream failed: {exc.code()} {exc.details()}")
        finally:
            self.created.set()
            self.finished.set()

    def close(self) -> None:
        self.responses.cancel()
        self.channel.close()


def write_all(endpoint: str) -> tuple[list[int], float]:
    """N_TXNS txns of OPS_PER_TXN puts from WRITERS threads; returns each txn's revision and the time."""
    revisions = [0] * N_TXNS
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        with grpc.insecure_channel(endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            try:
                for t in range(w, N_TXNS, WRITERS):
                    ops = [
                        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key(i), value=VALUE))
                        for i in range(t * OPS_PER_TXN, (t + 1) * OPS_PER_TXN)
                    ]
                    resp = kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30)
                    assert resp.succeeded
                    revisions[t] = resp.header.revision
            except BaseException as exc:
                errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return revisions, time.monotonic() - t0


def expected_sequence(revisions: list[int]) -> list[tuple[int, bytes]]:
    assert len(set(revisions)) == N_TXNS, "every txn must have its own revision"
    out = []
    for t in sorted(range(N_TXNS), key=revisions.__getitem__):
        out.extend((revisions[t], key(i)) for i in range(t * OPS_PER_TXN, (t + 1) * OPS_PER_TXN))
    return out


def check_sequence(name: str, got: list[tuple[int, bytes]], want: list[tuple[int, bytes]]) -> None:
    if got == want:
        return
    dups = [k for k, n in Counter(k for _, k in got).items() if n > 1]
    missing = len({k for _, k in want} - {k for _, k in got})
    first = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
    )
    raise AssertionError(
        f"{name}: got {len(got)} events, want {len(want)}; {len(dups)} duplicates, {missing} missing; "
        f"first difference at #{first}: got {got[first : first + 3]} want {want[first : first + 3]}"
    )


@pytest.mark.timeout(300)
def test_stalled_stream_does_not_hold_back_others_and_catches_up(cairn: Server) -> None:
    run_stalled(cairn)


def run_stalled(server: Server) -> None:
    with grpc.insecure_channel(server.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        start_rev = kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=10).header.revision + 1
        done = threading.Event()
        # The stalled client: no BDP probing, so its receive window stays at 64 KiB and the server's
        # sends to it really block instead of piling up in this process's gRPC buffers.
        stalled = Reader(server.endpoint, start_rev, done, options=[("grpc.http2.bdp_probe", 0)])
        readers = [Reader(server.endpoint, start_rev, done) for _ in range(READERS)]
        try:
            for r in readers:
                r.start()
            for r in readers:
                assert r.created.wait(10) and not r.bad, r.bad
            time.sleep(0.5)  # the stalled create reaches the node (start_revision covers it anyway)
            rss_before = tree_rss_mb(server.pid)
            sampler = RssSampler(server.pid)
            sampler.start()

            revisions, write_s = write_all(server.endpoint)
            kv.Put(rpc_pb2.PutRequest(key=SENTINEL, value=b"end"), timeout=10)
            t_written = time.monotonic()
            for i, r in enumerate(readers):
                assert r.finished.wait(60), f"reader {i} got {len(r.events)} of {TOTAL} events"
            readers_s = time.monotonic() - t_written
            rss_loaded = tree_rss_mb(server.pid)
            sampler.stop.set()
            sampler.join()

            want = expected_sequence(revisions)
            for i, r in enumerate(readers):
                assert not r.bad, f"reader {i}: {r.bad[:3]}"
                check_sequence(f"reader {i}", r.events, want)

            t0 = time.monotonic()
            stalled.start()
            assert stalled.finished.wait(90), f"stalled stream got {len(stalled.events)} of {TOTAL} events"
            catch_up_s = time.monotonic() - t0
            assert not stalled.bad, stalled.bad[:3]
            check_sequence("stalled", stalled.events, want)
            print(
                f"\n{server.kind}: {TOTAL} puts in {write_s:.1f}s ({TOTAL / write_s:,.0f}/s); readers done "
                f"{readers_s:.1f}s after the last write; stalled stream caught up in {catch_up_s:.1f}s "
                f"(max {stalled.max_events_per_response} events/response; the live readers' max: "
                f"{max(r.max_events_per_response for r in readers)})\n"
                f"RSS of the node tree: {rss_before:.0f} MB before, peak {sampler.peak:.0f} MB, "
                f"{rss_loaded:.0f} MB after the load, {tree_rss_mb(server.pid):.0f} MB after the catch-up "
                f"(bound {RSS_BOUND_MB} MB)"
            )
            assert sampler.peak < RSS_BOUND_MB, f"node RSS peaked at {sampler.peak:.0f} MB"
        finally:
            done.set()
            for r in [stalled, *readers]:
                r.close()


if __name__ == "__main__":  # the same check against a real etcd: python tests/test_watch_stalled.py etcd
    import sys

    with Server(sys.argv[1] if len(sys.argv) > 1 else "etcd") as s:
        run_stalled(s)
