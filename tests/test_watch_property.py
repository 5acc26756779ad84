"""Watch end to end below the network: a real MvccStore on RocksDB, the WatchHub, and a harness that
plays the shell (feeds ``on_revisions`` from ``store.watch_events``, serves ``ReadHistory`` from
``store.history``) and the clients (decode every response, reassemble fragments).

A seeded random workload (puts, deletes, multi-op txns, compactions) runs against the store and
against an independent model of etcd's revision rules; random watchers come and go on random
streams (any start revision, compacted ones included, filters, prev_kv, fragments, progress),
streams block and drain, history reads are answered late and out of order. Checked all along:
storage's events equal the model's; every watcher's stream is a prefix of the model's history
from its start (so ordered, unique, no gap, correct prev_kv), whole revisions per response
(atomic), every header.revision and progress response is a true bookmark, version == 1 iff
create; a restarted watcher continues exactly where the old one stopped; and at the end every
live watcher has everything. The seed is in the test id and in every assertion message.

Also here: storage's side of watch (``watch_events`` and ``history``) against etcd 3.4.23 facts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import actors.storage.mvcc as mvcc
from actors import errors
from actors.errors import EtcdError
from actors.proto import kv_pb2
from actors.proto import rpc_pb2 as R
from actors.protocol import Method
from actors.storage.backend import Backend
from actors.storage.keyindex import prefix_end
from actors.storage.mvcc import MvccStore
from actors.storage.validate import check_message
from actors.watch.hub import ReadHistory, Send, WatchHub

Event = kv_pb2.Event
KV = kv_pb2.KeyValue
Op = R.RequestOp
PUT, DELETE = Event.PUT, Event.DELETE

KEYS = [b"a", b"a1", b"a2", b"b", b"b1", b"c", b"d", b"\xff"]
RANGES = [
    (b"a", b""),
    (b"b1", b""),
    (b"zz", b""),  # never written
    (b"a", prefix_end(b"a")),
    (b"a1", b"c"),
    (b"b", b"\0"),
    (b"", b"\0"),
    (b"\xff", b"\0"),
    (b"c", b"a"),  # refused: empty range
]


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    start = start or b"\0"
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


# -- the model: etcd's revision rules, written independently of MvccStore ----------------------


class Model:
    def __init__(self) -> None:
        self.state: dict[bytes, KV] = {}
        self.revision = 1
        self.compact = -1
        self.log: dict[int, list[Event]] = {}

    def write(self, ops: list[tuple]) -> None:
        """Apply one write transaction's changes: ("put", k, v) / ("del", key, range_end)."""
        rev = self.revision + 1
        before = dict(self.state)
        events = []
        for op in ops:
            if op[0] == "put":
                _, key, value = op
                cur = self.state.get(key)
                kv = KV(
                    key=key,
                    create_revision=cur.create_revision if cur else rev,
                    mod_revision=rev,
                    version=cur.version + 1 if cur else 1,
                    value=value,
                )
                self.state[key] = kv
                ev = Event(type=PUT, kv=kv)
                if kv.create_revision != rev and key in before:  # etcd: none for a create
                    ev.prev_kv.CopyFrom(before[key])
                events.append(ev)
            else:
                _, key, end = op
                for k in sorted(k for k in self.state if in_range(k, key, end)):
                    del self.state[k]
                    ev = Event(type=DELETE, kv=KV(key=k, mod_revision=rev))
                    if k in before:
                        ev.prev_kv.CopyFrom(before[k])
                    events.append(ev)
        if events:
            self.revision = rev
            self.log[rev] = events

    def expected(self, w: Watcher, upto: int) -> list[Event]:
        """The events watcher ``w`` must get, from its start to ``upto``."""
        out = []
        for rev in range(max(w.start, 2), upto + 1):
            events = self.log.get(rev, ())
            if rev in w.lenient:  # read at exactly the compact revision: what compaction kept
                last = {ev.kv.key: i for i, ev in enumerate(events)}
                events = [
                    Event(type=PUT, kv=ev.kv)
                    for i, ev in enumerate(events)
                    if ev.type == PUT and last[ev.kv.key] == i
                ]
            for ev in events:
                if not in_range(ev.kv.key, w.key, w.range_end):
                    continue
                if (ev.type == PUT and w.noput) or (ev.type == DELETE and w.nodelete):
                    continue
                if not w.prev_kv and ev.HasField("prev_kv"):
                    ev = Event(type=ev.type, kv=ev.kv)
                out.append(ev)
        return out


# -- the clients -------------------------------------------------------------------------------


@dataclass(eq=False)
class Watcher:
    stream: int
    key: bytes
    range_end: bytes
    start: int  # the first revision it wants (start_revision, or current + 1)
    noput: bool = False
    nodelete: bool = False
    prev_kv: bool = False
    fragment: bool = False
    progress_notify: bool = False
    asked_id: int = 0
    watch_id: int | None = None
    state: str = "creating"  # creating, live, refused, cancelling, canceled, compacted
    received: list[Event] = field(default_factory=list)
    lenient: set[int] = field(default_factory=set)
    chain: list[Event] = field(default_factory=list)  # what earlier watchers of its restart chain got
    chain_start: int = 0
    chain_lenient: set[int] = field(default_factory=set)


class Harness:
    def __init__(self, seed: int, path: Path) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        rng = self.rng
        self.backend = Backend(str(path))
        self.store = MvccStore(self.backend, lease_exists=lambda _: False)
        self.model = Model()
        self.hub = WatchHub(
            self.store.revision,
            cluster_id=9,
            member_id=8,
            raft_term=7,
            fragment_bytes=rng.choice([120, 300, 1 << 20]),
            history_limit=rng.choice([1, 2, 5, 1000]),
            max_reads=rng.choice([1, 2, 8]),
        )
        self.applied = 0
        self.streams: dict[int, list[Watcher]] = {s: [] for s in range(3)}
        self.pending: dict[int, list[Watcher]] = {s: [] for s in range(3)}  # creates awaiting "created"
        self.fragments: dict[tuple[int, int], list[Event]] = {}
        self.reads: list[ReadHistory] = []
        self.read_owner: dict[int, Watcher] = {}
        self.blocked: set[int] = set()
        self.stats = {"events": 0, "compacted": 0, "fragments": 0, "progress": 0, "restarts": 0, "lenient": 0}

    def fail(self, msg: str) -> str:
        return f"seed={self.seed}: {msg}"

    # -- shell -------------------------------------------------------------------------------

    def feed(self, outs) -> None:
        """Play the shell: sends go to the clients in order, reads are queued for storage."""
        for out in outs:
            if isinstance(out, ReadHistory):
                self.reads.append(out)
                owner = self.live_watcher(out.stream, out.watch_id)
                assert owner is not None, self.fail(f"read for a watcher the client does not know: {out}")
                # no gap: it has everything before the revision it reads from
                assert out.start_rev >= self.next_rev(owner), self.fail(f"read from a wrong revision {out}")
                self.check_bookmark(owner, out.start_rev - 1)
                self.read_owner[out.read_id] = owner
            else:
                assert isinstance(out, Send)
                self.receive(out.stream, R.WatchResponse.FromString(out.response))

    def serve_read(self, read: ReadHistory) -> None:
        store = self.store
        try:
            revisions, next_rev = store.history(
                read.key, read.range_end, read.start_rev, read.end_rev, read.limit
            )
        except EtcdError as exc:
            assert exc == errors.COMPACTED and read.start_rev < store.compact_revision, self.fail(str(read))
            self.feed(self.hub.on_history(read.read_id, [], 0, store.compact_revision))
            return
        assert read.start_rev <= next_rev <= read.end_rev + 1 or (read.start_rev > read.end_rev), self.fail(
            read
        )
        assert all(read.start_rev <= rev < next_rev for rev, _ in revisions), self.fail(read)
        if read.start_rev == store.compact_revision:
            owner = self.read_owner.get(read.read_id)
            if owner is not None:
                owner.lenient.add(read.start_rev)
                self.stats["lenient"] += 1
        self.feed(self.hub.on_history(read.read_id, revisions, next_rev))

    # -- clients ------------------------------------------------------------------------------

    def live_watcher(self, stream: int, watch_id: int) -> Watcher | None:
        for w in self.streams[stream]:
            if w.watch_id == watch_id and w.state in ("live", "cancelling"):
                return w
        return None

    def next_rev(self, w: Watcher) -> int:
        return w.received[-1].kv.mod_revision + 1 if w.received else w.start

    def receive(self, stream: int, r: R.WatchResponse) -> None:
        assert (r.header.cluster_id, r.header.member_id, r.header.raft_term) == (9, 8, 7), self.fail(str(r))
        if r.created:
            w = self.pending[stream].pop(0)
            if r.canceled:
                assert r.watch_id == -1 and r.cancel_reason, self.fail(str(r))
                in_use = any(
                    x.watch_id == w.asked_id
                    for x in self.streams[stream]
                    if x.state in ("live", "cancelling")
                )
                empty = w.range_end not in (b"", b"\0") and (w.key or b"\0") >= w.range_end
                want = (
                    "mvcc: watcher range is empty"
                    if empty
                    else "mvcc: duplicate watch ID provided on the WatchStream"
                )
                assert (empty or (w.asked_id and in_use)) and r.cancel_reason == want, self.fail(str(r))
                w.state = "refused"
                return
            assert not w.asked_id or r.watch_id == w.asked_id, self.fail(str(r))
            assert self.live_watcher(stream, r.watch_id) is None, self.fail(f"watch id {r.watch_id} reused")
            w.watch_id = r.watch_id
            w.state = "live"
            return
        if r.watch_id == -1:  # a progress response for the stream: a bookmark for every watcher
            assert not r.events and not r.canceled, self.fail(str(r))
            self.stats["progress"] += 1
            for w in self.streams[stream]:
                if w.state in ("live", "cancelling"):
                    self.check_bookmark(w, r.header.revision)
            return
        w = self.live_watcher(stream, r.watch_id)
        assert w is not None, self.fail(f"response for an unknown watcher: {r}")
        if r.canceled:
            assert not r.events, self.fail(str(r))
            if r.compact_revision:
                assert self.next_rev(w) < r.compact_revision, self.fail(f"needless compaction cancel {r}")
                assert r.header.revision == 0, self.fail(str(r))
                w.state = "compacted"
                self.stats["compacted"] += 1
            else:
                assert w.state == "cancelling", self.fail(str(r))
                w.state = "canceled"
            return
        if not r.events:
            assert w.progress_notify, self.fail(f"progress for a watcher that did not ask: {r}")
            self.check_bookmark(w, r.header.revision)
            self.stats["progress"] += 1
            return
        events = self.fragments.pop((stream, r.watch_id), []) + list(r.events)
        if r.fragment:
            assert w.fragment, self.fail("fragmented response for a watcher that did not ask")
            self.fragments[(stream, r.watch_id)] = events
            self.stats["fragments"] += 1
            return
        self.check_events(w, events, r.header.revision)

    def check_events(self, w: Watcher, events: list[Event], header_rev: int) -> None:
        model = self.model
        expected = model.expected(w, model.revision)
        n = len(w.received)
        got = expected[n : n + len(events)]
        assert events == got, self.fail(
            f"watcher {w.stream}/{w.watch_id} start {w.start} got {events} after {n} events, want {got}"
        )
        for ev in events:
            if ev.type == PUT:
                assert (ev.kv.version == 1) == (ev.kv.create_revision == ev.kv.mod_revision), self.fail(
                    str(ev)
                )
            else:
                assert ev.kv.version == 0 and ev.kv.create_revision == 0 and not ev.kv.value, self.fail(
                    str(ev)
                )
        w.received.extend(events)
        self.stats["events"] += len(events)
        last = events[-1].kv.mod_revision
        # atomic: the response ends at a revision boundary of what the watcher must get
        if len(w.received) < len(expected):
            assert expected[len(w.received)].kv.mod_revision > last, self.fail(
                "revision split across responses"
            )
        assert header_rev >= last, self.fail("header revision below the events'")
        self.check_bookmark(w, header_rev)

    def check_bookmark(self, w: Watcher, rev: int) -> None:
        """Everything the watcher must get up to ``rev`` has been received."""
        want = self.model.expected(w, rev)
        assert w.received[: len(want)] == want and len(w.received) >= len(want), self.fail(
            f"bookmark at {rev} for {w.stream}/{w.watch_id} but only {len(w.received)} of {len(want)} events"
        )

    # -- actions ------------------------------------------------------------------------------

    def write(self) -> None:
        rng, store, model = self.rng, self.store, self.model
        kind = rng.random()
        if kind < 0.45:
            key, value = rng.choice(KEYS), b"v%d" % rng.randrange(1000)
            req, method, changes = R.PutRequest(key=key, value=value), Method.PUT, [("put", key, value)]
        elif kind < 0.6:
            key, end = rng.choice([(k, b"") for k in KEYS] + [(b"a", b"b"), (b"b", b"\0"), (b"a1", b"c")])
            req, method, changes = (
                R.DeleteRangeRequest(key=key, range_end=end),
                Method.DELETE_RANGE,
                [("del", key, end)],
            )
        elif kind < 0.98:
            cmp_key = rng.choice(KEYS)
            have = model.state[cmp_key].version if cmp_key in model.state else 0
            want = have if rng.random() < 0.6 else have + 1
            branches = []
            for _ in range(2):
                ops, changes_ = [], []
                for _ in range(rng.randint(0, 4)):
                    r = rng.random()
                    key = rng.choice(KEYS)
                    if r < 0.55:
                        value = b"t%d" % rng.randrange(1000)
                        ops.append(Op(request_put=R.PutRequest(key=key, value=value)))
                        changes_.append(("put", key, value))
                    elif r < 0.85:
                        end = rng.choice([b"", b"\0", prefix_end(key)])
                        ops.append(Op(request_delete_range=R.DeleteRangeRequest(key=key, range_end=end)))
                        changes_.append(("del", key, end))
                    else:
                        ops.append(Op(request_range=R.RangeRequest(key=key)))
                branches.append((ops, changes_))
            cmp = R.Compare(key=cmp_key, target=R.Compare.VERSION, result=R.Compare.EQUAL, version=want)
            req = R.TxnRequest(compare=[cmp], success=branches[0][0], failure=branches[1][0])
            method, changes = Method.TXN, branches[0][1] if have == want else branches[1][1]
        else:
            if store.revision <= max(store.compact_revision, 1):
                return
            lo = max(store.compact_revision + 1, 1)
            rev = rng.randint(lo, max(lo, store.revision - rng.choice([0, 5, 20, 40])))
            store.apply(Method.COMPACT, R.CompactionRequest(revision=rev).SerializeToString())
            model.compact = rev
            return
        try:
            check_message(method, req)
        except EtcdError:
            return  # refused before the log (overlapping txn ops): neither side applies it
        store.apply(method, req.SerializeToString())
        model.write(changes)

    def commit(self) -> None:
        """End a batch: commit, hand the revisions to the hub, check them against the model."""
        self.applied += 1
        self.backend.commit(self.applied)
        drained, self.store.watch_events[:] = list(self.store.watch_events), []
        for rev, events in drained:
            assert [Event.FromString(e) for e in events] == self.model.log.get(rev), self.fail(
                f"storage rev {rev}"
            )
        assert self.store.revision == self.model.revision, self.fail("revision")
        self.feed(self.hub.on_revisions(drained))

    def create(self, stream: int, *, start: int | None = None, like: Watcher | None = None) -> Watcher:
        rng = self.rng
        if like is None:
            key, end = rng.choice(RANGES)
            filters = rng.choice([[], [], [], [R.WatchCreateRequest.NOPUT], [R.WatchCreateRequest.NODELETE]])
            w = Watcher(
                stream,
                key,
                end,
                0,
                noput=R.WatchCreateRequest.NOPUT in filters,
                nodelete=R.WatchCreateRequest.NODELETE in filters,
                prev_kv=rng.random() < 0.5,
                fragment=rng.random() < 0.3,
                progress_notify=rng.random() < 0.3,
                asked_id=rng.choice([0, 0, 0, 1, 2, 5]),
            )
        else:
            w = Watcher(
                stream,
                like.key,
                like.range_end,
                0,
                noput=like.noput,
                nodelete=like.nodelete,
                prev_kv=like.prev_kv,
                fragment=like.fragment,
                progress_notify=like.progress_notify,
            )
        if start is None:
            cur = self.hub.revision
            start = rng.choice([0, 0, rng.randint(max(1, self.store.compact_revision - 2), cur + 3)])
        w.start = start if start else self.hub.revision + 1
        w.chain_start = w.start
        filters = [
            f
            for f, on in ((R.WatchCreateRequest.NOPUT, w.noput), (R.WatchCreateRequest.NODELETE, w.nodelete))
            if on
        ]
        req = R.WatchCreateRequest(
            key=w.key,
            range_end=w.range_end,
            start_revision=start,
            filters=filters,
            prev_kv=w.prev_kv,
            fragment=w.fragment,
            progress_notify=w.progress_notify,
            watch_id=w.asked_id,
        )
        self.streams[stream].append(w)
        self.pending[stream].append(w)
        self.feed(self.hub.create(stream, req))
        return w

    def cancel(self, w: Watcher) -> None:
        w.state = "cancelling"
        self.feed(self.hub.cancel(w.stream, w.watch_id))
        assert w.state == "canceled", self.fail("no cancel confirmation")

    def restart(self, w: Watcher) -> None:
        """Cancel and watch again from the next revision, as a client resuming would."""
        self.cancel(w)
        new = self.create(w.stream, start=self.next_rev(w), like=w)
        if new.state == "live":
            new.chain = w.chain + w.received
            new.chain_start = w.chain_start
            new.chain_lenient = w.chain_lenient | w.lenient
            self.stats["restarts"] += 1

    def step(self) -> None:
        rng, hub = self.rng, self.hub
        for _ in range(rng.randint(1, 3)):
            self.write()
        self.commit()
        live = [w for ws in self.streams.values() for w in ws if w.state == "live"]
        r = rng.random()
        if r < 0.2 or not live:
            self.create(rng.randrange(3))
        elif r < 0.24:
            self.cancel(rng.choice(live))
        elif r < 0.32:
            self.restart(rng.choice(live))
        elif r < 0.36:
            w = rng.choice(
                [w for ws in self.streams.values() for w in ws if w.state == "compacted"] or [None]
            )
            if w is not None and w.state == "compacted":
                w.state = "gone"
                self.create(w.stream, start=self.store.compact_revision, like=w)  # clientv3's pattern
        for stream in sorted(self.blocked):
            if rng.random() < 0.3:
                self.blocked.discard(stream)
                self.feed(hub.stream_ready(stream))
        r = rng.random()
        stream = rng.randrange(3)
        if r < 0.08:
            self.blocked.add(stream)
            self.feed(hub.stream_blocked(stream))
        elif r < 0.16:
            self.feed(hub.progress(stream))
        elif r < 0.21:
            self.feed(hub.progress_tick())
        # storage answers some reads, in any order
        rng.shuffle(self.reads)
        for _ in range(rng.randint(0, len(self.reads))):
            self.serve_read(self.reads.pop())
        hub._audit()

    def quiesce(self) -> None:
        for stream in sorted(self.blocked):
            self.feed(self.hub.stream_ready(stream))
        self.blocked.clear()
        while self.reads:
            self.serve_read(self.reads.pop(0))
        self.hub._audit()
        assert not self.fragments, self.fail("unfinished fragments")
        model = self.model
        for ws in self.streams.values():
            for w in ws:
                if w.state == "live":
                    assert w.received == model.expected(w, model.revision), self.fail(
                        f"final {w.stream}/{w.watch_id}"
                    )
                    chain = Watcher(
                        w.stream,
                        w.key,
                        w.range_end,
                        w.chain_start,
                        noput=w.noput,
                        nodelete=w.nodelete,
                        prev_kv=w.prev_kv,
                        lenient=w.chain_lenient | w.lenient,
                    )
                    assert w.chain + w.received == model.expected(chain, model.revision), self.fail(
                        "restart chain"
                    )
                assert w.state not in ("creating", "cancelling"), self.fail(w.state)
        for stream in self.streams:  # every watcher synced: progress answers at once
            progress = self.hub.progress(stream)
            assert len(progress) == 1, self.fail("progress not answered after quiesce")
            self.feed(progress)


@pytest.mark.parametrize("seed", range(16))
def test_random_workload(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mvcc, "HISTORY_SCAN_ROWS", random.Random(seed).choice([3, 10, 10_000]))
    h = Harness(seed, tmp_path / "kv")
    try:
        for _ in range(250):
            h.step()
        h.quiesce()
    finally:
        h.backend.close()
    assert h.stats["events"] > 50, h.fail(str(h.stats))


def test_the_harness_covers_every_path(tmp_path: Path) -> None:
    """Across a few seeds, every interesting path was taken at least once."""
    total: dict[str, int] = {}
    for seed in range(4):
        h = Harness(seed, tmp_path / f"kv{seed}")
        try:
            for _ in range(250):
                h.step()
            h.quiesce()
        finally:
            h.backend.close()
        for k, v in h.stats.items():
            total[k] = total.get(k, 0) + v
    assert all(total.values()), total


# -- storage's side ----------------------------------------------------------------------------


class Store:
    def __init__(self, path: Path) -> None:
        self.backend = Backend(str(path))
        self.store = MvccStore(self.backend, lease_exists=lambda _: False)
        self.index = 0

    def apply(self, method: Method, req) -> None:
        self.store.apply(method, req.SerializeToString())

    def put(self, key: bytes, value: bytes) -> None:
        self.apply(Method.PUT, R.PutRequest(key=key, value=value))

    def commit(self) -> None:
        self.index += 1
        self.backend.commit(self.index)

    def events(self) -> list[tuple[int, list[Event]]]:
        out = [(rev, [Event.FromString(e) for e in evs]) for rev, evs in self.store.watch_events]
        self.store.watch_events.clear()
        return out

    def history(self, *args) -> tuple[list[tuple[int, list[Event]]], int]:
        revs, next_rev = self.store.history(*args)
        return [(rev, [Event.FromString(e) for e in evs]) for rev, evs in revs], next_rev


@pytest.fixture
def s(tmp_path: Path):
    store = Store(tmp_path / "kv")
    yield store
    store.backend.close()


def test_watch_events_carry_prev_kv_as_etcd(s: Store) -> None:
    """etcd 3.4.23, checked: in a txn that puts q1 and deletes from "q" (etcd's overlap check lets a
    from-key delete through), both events of q1 carry the value at revision - 1; a put that
    re-creates a key deleted in the same txn is a create: no prev_kv."""
    s.put(b"q1", b"old")
    old = KV(key=b"q1", create_revision=2, mod_revision=2, version=1, value=b"old")
    s.apply(
        Method.TXN,
        R.TxnRequest(
            success=[
                Op(request_put=R.PutRequest(key=b"q1", value=b"new")),
                Op(request_delete_range=R.DeleteRangeRequest(key=b"q", range_end=b"\0")),
            ]
        ),
    )
    s.put(b"q2", b"x")
    s.apply(
        Method.TXN,
        R.TxnRequest(
            success=[
                Op(request_delete_range=R.DeleteRangeRequest(key=b"q", range_end=b"\0")),
                Op(request_put=R.PutRequest(key=b"q2", value=b"z")),
            ]
        ),
    )
    s.apply(Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"nothing"))  # no revision, no events
    got = s.events()
    x = KV(key=b"q2", create_revision=4, mod_revision=4, version=1, value=b"x")
    assert got == [
        (2, [Event(kv=old)]),
        (
            3,
            [
                Event(
                    kv=KV(key=b"q1", create_revision=2, mod_revision=3, version=2, value=b"new"), prev_kv=old
                ),
                Event(type=DELETE, kv=KV(key=b"q1", mod_revision=3), prev_kv=old),
            ],
        ),
        (4, [Event(kv=x)]),
        (
            5,
            [
                Event(type=DELETE, kv=KV(key=b"q2", mod_revision=5), prev_kv=x),
                Event(kv=KV(key=b"q2", create_revision=5, mod_revision=5, version=1, value=b"z")),
            ],
        ),
    ]
    s.commit()
    assert s.history(b"q", b"\0", 1, 5, 100) == (got, 6)


def test_failed_txn_leaves_no_events(s: Store) -> None:
    s.put(b"k", b"v")
    s.events()
    with pytest.raises(EtcdError):  # ignore_value on a key the same txn deleted: refused at apply
        s.apply(
            Method.TXN,
            R.TxnRequest(
                success=[
                    Op(request_delete_range=R.DeleteRangeRequest(key=b"a", range_end=b"\0")),
                    Op(request_put=R.PutRequest(key=b"k", ignore_value=True)),
                ]
            ),
        )
    assert s.events() == []
    s.put(b"k", b"w")
    ((rev, (ev,)),) = s.events()
    assert ev.prev_kv.value == b"v" and rev == 3


def test_watch_events_can_be_switched_off(s: Store) -> None:
    s.store.watch_events = None
    s.put(b"k", b"v")
    assert s.store.watch_events is None
    s.store.watch_events = []
    s.put(b"k", b"w")
    assert len(s.store.watch_events) == 1


def test_history_limits_and_ranges(s: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(10):
        s.apply(
            Method.TXN,
            R.TxnRequest(
                success=[
                    Op(request_put=R.PutRequest(key=b"a%d" % i, value=b"x")),
                    Op(request_put=R.PutRequest(key=b"b", value=b"%d" % i)),
                ]
            ),
        )
    s.commit()  # revisions 2..11, two events each
    revs, nxt = s.history(b"a", b"b", 2, 11, 3)  # whole revisions, stops once >= 3 events
    assert [(rev, len(evs)) for rev, evs in revs] == [(2, 1), (3, 1), (4, 1)] and nxt == 5
    revs, nxt = s.history(b"b", b"", 2, 11, 3)
    assert [rev for rev, _ in revs] == [2, 3, 4] and nxt == 5
    assert all(ev.prev_kv.value == b"%d" % (rev - 3) for rev, (ev,) in revs[1:])
    revs, nxt = s.history(b"a", b"\0", 10, 11, 100)
    assert [(rev, len(evs)) for rev, evs in revs] == [(10, 2), (11, 2)] and nxt == 12
    assert s.history(b"zz", b"", 2, 11, 100) == ([], 12)
    assert s.history(b"b", b"", 9, 8, 100) == ([], 9)
    monkeypatch.setattr(mvcc, "HISTORY_SCAN_ROWS", 5)  # a scan budget: stops at a revision boundary
    revs, nxt = s.history(b"zz", b"", 2, 11, 100)
    assert revs == [] and nxt == 5
    revs, nxt = s.history(b"a", b"\0", 2, 11, 100)
    assert [rev for rev, _ in revs] == [2, 3, 4] and nxt == 5


def test_history_compaction_rule(s: Store) -> None:
    """etcd 3.4.23, checked: a watch from below the compact revision is cancelled; from the compact
    revision itself it is served with what compaction kept there (a deletion at exactly that
    revision is gone, and prev_kv too, revision - 1 being compacted)."""
    s.put(b"zz", b"1")  # 2
    s.put(b"foo", b"1")  # 3
    s.apply(Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"zz"))  # 4
    s.put(b"foo", b"2")  # 5
    s.put(b"foo", b"3")  # 6
    s.apply(Method.COMPACT, R.CompactionRequest(revision=5))
    s.commit()
    with pytest.raises(EtcdError) as exc:
        s.history(b"", b"\0", 4, 6, 100)
    assert exc.value == errors.COMPACTED
    revs, nxt = s.history(b"\0", b"\0", 5, 6, 100)
    assert nxt == 7
    assert [(rev, [(e.type, e.kv.key, e.HasField("prev_kv")) for e in evs]) for rev, evs in revs] == [
        (5, [(PUT, b"foo", False)]),
        (6, [(PUT, b"foo", True)]),
    ]
    s.apply(Method.COMPACT, R.CompactionRequest(revision=6))  # a tombstone AT the compact revision
    s.apply(Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"foo"))  # 7
    s.apply(Method.COMPACT, R.CompactionRequest(revision=7))
    s.commit()
    assert s.history(b"foo", b"", 7, 7, 100) == ([], 8)
