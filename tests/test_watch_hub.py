"""WatchHub, the pure watch logic: one case per rule.

etcd 3.4.23 facts pinned here were checked against the real server over gRPC: a duplicate
watch_id answers ``created`` + ``canceled`` with watch_id -1 and "mvcc: duplicate watch ID provided
on the WatchStream"; key >= range_end the same with "mvcc: watcher range is empty"; a cancel of an
unknown id answers nothing; a progress request answers watch_id -1 and the current revision; a
start below the compact revision answers ``created`` and then canceled + compact_revision with
header.revision 0 (start == compact revision is served); auto ids count from 0 per stream.
"""

from __future__ import annotations

import random

import pytest

from actors.proto import kv_pb2
from actors.proto import rpc_pb2 as R
from actors.watch.hub import (
    ERR_DUPLICATE_ID,
    ERR_EMPTY_RANGE,
    ReadHistory,
    Send,
    WatchHub,
    _build,
    _Intervals,
)

Create = R.WatchCreateRequest
KV = kv_pb2.KeyValue
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


def put(
    key: bytes, rev: int, value: bytes = b"v", *, created: int | None = None, version: int = 1, prev=None
):
    """A serialized PUT event as storage hands it over (prev_kv filled when there is one)."""
    ev = kv_pb2.Event(
        type=PUT,
        kv=KV(key=key, create_revision=created or rev, mod_revision=rev, version=version, value=value),
    )
    if prev is not None:
        ev.prev_kv.CopyFrom(prev)
    return ev.SerializeToString()


def delete(key: bytes, rev: int, prev: KV | None = None) -> bytes:
    ev = kv_pb2.Event(type=DELETE, kv=KV(key=key, mod_revision=rev))
    if prev is not None:
        ev.prev_kv.CopyFrom(prev)
    return ev.SerializeToString()


def sends(outs) -> list[tuple[object, R.WatchResponse]]:
    return [(o.stream, R.WatchResponse.FromString(o.response)) for o in outs if isinstance(o, Send)]


def reads(outs) -> list[ReadHistory]:
    return [o for o in outs if isinstance(o, ReadHistory)]


def one(outs) -> R.WatchResponse:
    got = sends(outs)
    assert len(got) == 1, got
    return got[0][1]


def keys_revs(resp: R.WatchResponse) -> list[tuple[bytes, int]]:
    return [(e.kv.key, e.kv.mod_revision) for e in resp.events]


# -- create ------------------------------------------------------------------------------------


def test_created_response_and_auto_ids():
    hub = WatchHub(5, cluster_id=11, member_id=22, raft_term=3)
    r = one(hub.create("s", Create(key=b"a")))
    assert r.created and not r.canceled and r.watch_id == 0
    assert (r.header.cluster_id, r.header.member_id, r.header.revision, r.header.raft_term) == (11, 22, 5, 3)
    assert one(hub.create("s", Create(key=b"a", watch_id=2))).watch_id == 2
    assert one(hub.create("s", Create(key=b"a", watch_id=-5))).watch_id == -5  # etcd honours any id
    assert [one(hub.create("s", Create(key=b"a"))).watch_id for _ in range(3)] == [1, 3, 4]
    assert one(hub.create("other", Create(key=b"a"))).watch_id == 0  # ids are per stream


def test_duplicate_watch_id_is_refused_as_etcd_does():
    hub = WatchHub(5)
    hub.create("s", Create(key=b"a", watch_id=7))
    r = one(hub.create("s", Create(key=b"b", watch_id=7)))
    assert (r.watch_id, r.created, r.canceled, r.cancel_reason) == (-1, True, True, ERR_DUPLICATE_ID)
    assert r.header.revision == 5
    assert hub.watcher_count == 1


@pytest.mark.parametrize("key,end", [(b"b", b"a"), (b"b", b"b")])
def test_empty_range_is_refused(key, end):
    hub = WatchHub(5)
    r = one(hub.create("s", Create(key=key, range_end=end)))
    assert (r.watch_id, r.created, r.canceled, r.cancel_reason) == (-1, True, True, ERR_EMPTY_RANGE)
    assert hub.watcher_count == 0


def test_range_conventions():
    hub = WatchHub(1)
    ids = {}
    for name, req in {
        "one": Create(key=b"b"),
        "prefix": Create(key=b"b", range_end=b"c"),
        "from": Create(key=b"b", range_end=b"\0"),
        "all": Create(key=b"", range_end=b"\0"),
        "nul": Create(key=b""),  # an empty key watches b"\0"
    }.items():
        ids[one(hub.create("s", req)).watch_id] = name
    got = {}
    for i, key in enumerate([b"a", b"b", b"b1", b"c", b"\0", b"\xff"]):
        for _, r in sends(hub.on_revisions([(2 + i, [put(key, 2 + i)])])):
            got.setdefault(ids[r.watch_id], []).append(key)
    assert got == {
        "one": [b"b"],
        "prefix": [b"b", b"b1"],
        "from": [b"b", b"b1", b"c", b"\xff"],
        "all": [b"a", b"b", b"b1", b"c", b"\0", b"\xff"],
        "nul": [b"\0"],
    }


# -- live events -------------------------------------------------------------------------------


def test_one_response_per_watcher_per_batch_in_order():
    hub = WatchHub(1)
    hub.create("s", Create(key=b"a", range_end=b"b"))
    hub.create("s", Create(key=b"a2"))
    outs = hub.on_revisions(
        [(2, [put(b"a1", 2), put(b"a2", 2), put(b"zz", 2)]), (3, [put(b"x", 3)]), (4, [delete(b"a1", 4)])]
    )
    got = sends(outs)
    assert [(r.watch_id, keys_revs(r)) for _, r in got] == [
        (0, [(b"a1", 2), (b"a2", 2), (b"a1", 4)]),
        (1, [(b"a2", 2)]),
    ]
    assert all(r.header.revision == 4 for _, r in got)  # complete up to the hub's revision
    assert hub.revision == 4
    assert hub.on_revisions([(4, [put(b"a1", 4)]), (3, [put(b"a1", 3)])]) == []  # old revisions ignored


def test_filters_and_prev_kv():
    hub = WatchHub(1)
    old = KV(key=b"k", create_revision=1, mod_revision=1, version=1, value=b"0")
    w_plain = one(hub.create("s", Create(key=b"k"))).watch_id
    w_prev = one(hub.create("s", Create(key=b"k", prev_kv=True))).watch_id
    w_noput = one(hub.create("s", Create(key=b"k", filters=[Create.NOPUT]))).watch_id
    w_nodel = one(hub.create("s", Create(key=b"k", filters=[Create.NODELETE], prev_kv=True))).watch_id
    ev_put = put(b"k", 2, b"1", created=1, version=2, prev=old)
    new = KV(key=b"k", create_revision=1, mod_revision=2, version=2, value=b"1")
    got = {
        r.watch_id: r for _, r in sends(hub.on_revisions([(2, [ev_put]), (3, [delete(b"k", 3, prev=new)])]))
    }
    assert [e.type for e in got[w_plain].events] == [PUT, DELETE]
    assert not any(e.HasField("prev_kv") for e in got[w_plain].events)
    assert [e.prev_kv for e in got[w_prev].events] == [old, new]
    assert [e.type for e in got[w_noput].events] == [DELETE]
    assert not got[w_noput].events[0].HasField("prev_kv")
    assert [e.type for e in got[w_nodel].events] == [PUT] and got[w_nodel].events[0].prev_kv == old
    # everything filtered out: nothing is sent (etcd's watcher.send)
    assert sends(hub.on_revisions([(4, [delete(b"k", 4)])])) and all(
        r.watch_id != w_nodel for _, r in sends(hub.on_revisions([(5, [delete(b"k", 5)])]))
    )


def test_future_start_revision_waits():
    hub = WatchHub(3)
    wid = one(hub.create("s", Create(key=b"k", start_revision=6))).watch_id
    assert hub.on_revisions([(4, [put(b"k", 4)]), (5, [put(b"k", 5)])]) == []
    r = one(hub.on_revisions([(6, [put(b"k", 6)])]))
    assert r.watch_id == wid and keys_revs(r) == [(b"k", 6)]


def test_start_at_current_plus_one_is_live():
    hub = WatchHub(3)
    assert reads(hub.create("s", Create(key=b"k", start_revision=4))) == []
    assert keys_revs(one(hub.on_revisions([(4, [put(b"k", 4)])]))) == [(b"k", 4)]


# -- history -----------------------------------------------------------------------------------


def test_history_then_live_without_gap_or_duplicate():
    hub = WatchHub(10, history_limit=50)
    outs = hub.create("s", Create(key=b"k", start_revision=4))
    (created,) = sends(outs)
    assert created[1].created and created[1].header.revision == 10
    (read,) = reads(outs)
    assert (read.stream, read.watch_id, read.key, read.range_end) == ("s", 0, b"k", b"")
    assert (read.start_rev, read.end_rev, read.limit) == (4, 10, 50)
    # live revisions arrive while the read is in flight: skipped for this watcher ...
    assert hub.on_revisions([(11, [put(b"k", 11)]), (12, [put(b"x", 12)])]) == []
    # ... history up to 10 is sent, and the rest is read again
    outs = hub.on_history(read.read_id, [(4, [put(b"k", 4)]), (9, [put(b"k", 9)])], 11)
    r = one(outs)
    assert keys_revs(r) == [(b"k", 4), (b"k", 9)] and r.header.revision == 10
    (read2,) = reads(outs)
    assert (read2.start_rev, read2.end_rev) == (11, 12)
    r = one(hub.on_history(read2.read_id, [(11, [put(b"k", 11)])], 13))
    assert keys_revs(r) == [(b"k", 11)] and r.header.revision == 12
    # now live, from 13 on
    assert keys_revs(one(hub.on_revisions([(13, [put(b"k", 13)])]))) == [(b"k", 13)]
    hub._audit()


def test_partial_history_reads_on():
    hub = WatchHub(10)
    (read,) = reads(hub.create("s", Create(key=b"k", start_revision=2)))
    outs = hub.on_history(read.read_id, [(2, [put(b"k", 2)])], 3)  # storage stopped early
    assert one(outs).header.revision == 2
    (read2,) = reads(outs)
    assert (read2.start_rev, read2.end_rev) == (3, 10)
    outs = hub.on_history(read2.read_id, [], 11)  # nothing more on this key: synced, nothing sent
    assert outs == []
    assert keys_revs(one(hub.on_revisions([(11, [put(b"k", 11)])]))) == [(b"k", 11)]


def test_history_applies_filters_and_prev_kv():
    hub = WatchHub(10)
    prev = KV(key=b"k", create_revision=2, mod_revision=2, version=1, value=b"v")
    (read,) = reads(hub.create("s", Create(key=b"k", start_revision=2, filters=[Create.NOPUT])))
    r = one(hub.on_history(read.read_id, [(2, [put(b"k", 2)]), (3, [delete(b"k", 3, prev=prev)])], 11))
    assert [e.type for e in r.events] == [DELETE] and not r.events[0].HasField("prev_kv")


def test_compacted_start_cancels_the_watcher():
    hub = WatchHub(10, cluster_id=1, member_id=2, raft_term=3)
    (read,) = reads(hub.create("s", Create(key=b"k", start_revision=2)))
    r = one(hub.on_history(read.read_id, [], 0, compact_revision=5))
    assert (r.watch_id, r.canceled, r.created, r.compact_revision, r.cancel_reason) == (0, True, False, 5, "")
    assert (r.header.cluster_id, r.header.member_id, r.header.raft_term, r.header.revision) == (1, 2, 3, 0)
    assert hub.watcher_count == 0
    assert hub.on_revisions([(11, [put(b"k", 11)])]) == []
    assert hub.cancel("s", 0) == []


def test_cancel():
    hub = WatchHub(3)
    hub.create("s", Create(key=b"k"))
    r = one(hub.cancel("s", 0))
    assert (r.watch_id, r.canceled, r.created, r.header.revision) == (0, True, False, 3)
    assert hub.cancel("s", 0) == [] and hub.cancel("nope", 0) == []  # unknown: no answer
    assert hub.on_revisions([(4, [put(b"k", 4)])]) == []


def test_answer_for_a_cancelled_or_replaced_watcher_is_ignored():
    hub = WatchHub(10)
    (read,) = reads(hub.create("s", Create(key=b"k", start_revision=2, watch_id=1)))
    hub.cancel("s", 1)
    outs = hub.create("s", Create(key=b"k", start_revision=5, watch_id=1))  # same id again
    (read2,) = reads(outs)
    assert hub.on_history(read.read_id, [(2, [put(b"k", 2)])], 11) == []  # the old read
    r = one(hub.on_history(read2.read_id, [(5, [put(b"k", 5)])], 11))
    assert keys_revs(r) == [(b"k", 5)]
    hub._audit()


def test_close_stream_forgets_everything():
    hub = WatchHub(10, max_reads=1)
    (read,) = reads(hub.create("s", Create(key=b"k", start_revision=2)))
    assert reads(hub.create("t", Create(key=b"k", start_revision=2))) == []  # no read slot
    outs = hub.close_stream("s")
    (read2,) = reads(outs)  # the slot went to the other stream
    assert read2.stream == "t"
    assert sends(outs) == []
    assert hub.on_history(read.read_id, [(2, [put(b"k", 2)])], 11) == []
    assert hub.watcher_count == 1
    hub._audit()


def test_max_reads_in_flight():
    hub = WatchHub(10, max_reads=2)
    got = [reads(hub.create("s", Create(key=b"k", start_revision=2))) for _ in range(3)]
    assert [len(r) for r in got] == [1, 1, 0]
    outs = hub.on_history(got[0][0].read_id, [], 11)
    (read,) = reads(outs)
    assert read.watch_id == 2
    hub._audit()


# -- progress ----------------------------------------------------------------------------------


def test_progress_request_answered_when_synced():
    hub = WatchHub(7)
    r = one(hub.progress("fresh"))  # no watcher at all: answered
    assert (r.watch_id, r.header.revision, list(r.events), r.created, r.canceled) == (-1, 7, [], False, False)
    hub.create("s", Create(key=b"k"))
    assert one(hub.progress("s")).watch_id == -1


def test_progress_request_deferred_until_every_watcher_synced():
    hub = WatchHub(10)
    hub.create("s", Create(key=b"k"))
    (read,) = reads(hub.create("s", Create(key=b"j", start_revision=3)))
    assert hub.progress("s") == []
    assert hub.progress("s") == []  # one answer for requests made while deferred
    hub.on_revisions([(11, [put(b"k", 11)])])
    outs = hub.on_history(read.read_id, [(5, [put(b"j", 5)])], 11)
    (read2,) = reads(outs)
    assert len(sends(outs)) == 1  # the events only: still one revision behind
    got = sends(hub.on_history(read2.read_id, [], 12))
    assert [(r.watch_id, r.header.revision, len(r.events)) for _, r in got] == [(-1, 11, 0)]


def test_deferred_progress_released_by_cancel_and_compaction():
    hub = WatchHub(10)
    hub.create("s", Create(key=b"j", start_revision=3))
    assert hub.progress("s") == []
    got = sends(hub.cancel("s", 0))
    assert [(r.watch_id, r.canceled) for _, r in got] == [(0, True), (-1, False)]
    (read,) = reads(hub.create("s", Create(key=b"j", start_revision=3)))
    assert hub.progress("s") == []
    got = sends(hub.on_history(read.read_id, [], 0, compact_revision=4))
    assert [(r.watch_id, r.compact_revision) for _, r in got] == [(1, 4), (-1, 0)]


def test_progress_tick():
    hub = WatchHub(10)
    hub.create("s", Create(key=b"a", progress_notify=True))
    hub.create("s", Create(key=b"b"))
    hub.create("s", Create(key=b"c", progress_notify=True, start_revision=2))  # unsynced
    got = sends(hub.progress_tick())
    assert [(s, r.watch_id, r.header.revision, len(r.events)) for s, r in got] == [("s", 0, 10, 0)]
    hub.on_revisions([(11, [put(b"a", 11)])])
    assert hub.progress_tick() == []  # events went out since the last tick: elided (as etcd)
    assert [r.watch_id for _, r in sends(hub.progress_tick())] == [0]
    hub.stream_blocked("s")
    assert hub.progress_tick() == []


# -- fragments ---------------------------------------------------------------------------------


def test_fragments_cut_as_etcd_does():
    hub = WatchHub(1, fragment_bytes=200)
    hub.create("s", Create(key=b"k", range_end=b"l", fragment=True))
    hub.create("s", Create(key=b"k", range_end=b"l"))
    events = [put(b"k%d" % i, 2, b"x" * 50) for i in range(7)]
    got = sends(hub.on_revisions([(2, events)]))
    frags = [r for _, r in got if r.watch_id == 0]
    whole = [r for _, r in got if r.watch_id == 1]
    assert len(whole) == 1 and len(whole[0].events) == 7
    assert len(frags) > 1
    assert [r.fragment for r in frags] == [True] * (len(frags) - 1) + [False]
    assert [e for r in frags for e in r.events] == list(whole[0].events)
    assert all(r.header.revision == 2 for r in frags)
    for r in frags:
        assert len(r.events) == 1 or r.ByteSize() < 200
    # one event never fragments, however big
    r = one(hub.on_revisions([(3, [put(b"k", 3, b"y" * 500)])])[:1])
    assert not r.fragment and len(r.events) == 1


def test_fragment_with_an_event_bigger_than_the_limit():
    hub = WatchHub(1, fragment_bytes=200)
    hub.create("s", Create(key=b"k", range_end=b"l", fragment=True))
    events = [put(b"k1", 2, b"x" * 10), put(b"k2", 2, b"y" * 500), put(b"k3", 2, b"z" * 10)]
    got = [r for _, r in sends(hub.on_revisions([(2, events)]))]
    assert [[e.kv.key for e in r.events] for r in got] == [[b"k1"], [b"k2"], [b"k3"]]
    assert [r.fragment for r in got] == [True, True, False]


# -- slow streams ------------------------------------------------------------------------------


def test_blocked_stream_catches_up_from_history():
    hub = WatchHub(10)
    hub.create("slow", Create(key=b"k"))
    hub.create("slow", Create(key=b"quiet"))
    hub.create("fast", Create(key=b"k"))
    assert hub.stream_blocked("slow") == []
    got = sends(hub.on_revisions([(11, [put(b"k", 11)]), (12, [put(b"k", 12)])]))
    assert [s for s, _ in got] == ["fast"]
    hub._audit()
    # a cancel still answers while blocked
    assert one(hub.cancel("slow", 1)).canceled
    outs = hub.stream_ready("slow")
    (read,) = reads(outs)
    assert (read.stream, read.watch_id, read.start_rev, read.end_rev) == ("slow", 0, 11, 12)
    r = one(hub.on_history(read.read_id, [(11, [put(b"k", 11)]), (12, [put(b"k", 12)])], 13))
    assert keys_revs(r) == [(b"k", 11), (b"k", 12)]
    got = sends(hub.on_revisions([(13, [put(b"k", 13)])]))
    assert [(s, keys_revs(r)) for s, r in got] == [("slow", [(b"k", 13)]), ("fast", [(b"k", 13)])]
    hub._audit()


def test_blocked_stream_that_missed_nothing_stays_live():
    hub = WatchHub(10)
    hub.create("s", Create(key=b"k"))
    hub.stream_blocked("s")
    hub.on_revisions([(11, [put(b"other", 11)])])
    assert one(hub.progress("s")).header.revision == 11  # nothing missed: still synced
    assert hub.stream_ready("s") == []
    assert keys_revs(one(hub.on_revisions([(12, [put(b"k", 12)])]))) == [(b"k", 12)]


def test_history_answer_on_a_blocked_stream_is_dropped_and_read_again():
    hub = WatchHub(10)
    (read,) = reads(hub.create("s", Create(key=b"k", start_revision=5)))
    hub.stream_blocked("s")
    assert hub.on_history(read.read_id, [(5, [put(b"k", 5)])], 11) == []
    hub._audit()
    (read2,) = reads(hub.stream_ready("s"))
    assert (read2.start_rev, read2.end_rev) == (5, 10)
    assert keys_revs(one(hub.on_history(read2.read_id, [(5, [put(b"k", 5)])], 11))) == [(b"k", 5)]


def test_blocked_watchers_keep_no_events():
    hub = WatchHub(0)
    hub.create("s", Create(key=b"k"))
    hub.stream_blocked("s")
    for rev in range(1, 200):
        hub.on_revisions([(rev, [put(b"k", rev, b"x" * 100)])])
    w = next(iter(hub._streams["s"].watchers.values()))
    assert w.min_rev == 1 and not w.synced and not hub._reads and not hub._wanting


def test_reset_reads_from_the_new_store():
    hub = WatchHub(10)
    hub.create("s", Create(key=b"k"))
    hub.create("s", Create(key=b"j", start_revision=100))
    outs = hub.reset(50)
    (read,) = reads(outs)
    assert (read.watch_id, read.start_rev, read.end_rev) == (0, 11, 50)
    assert hub.revision == 50
    hub._audit()


def test_a_gap_in_revisions_is_read_from_history():
    hub = WatchHub(10)
    hub.create("s", Create(key=b"k"))
    hub.create("s", Create(key=b"j", start_revision=20))
    outs = hub.on_revisions([(13, [put(b"k", 13)])])  # 11 and 12 never came
    assert sends(outs) == []
    (read,) = reads(outs)
    assert (read.watch_id, read.start_rev, read.end_rev) == (0, 11, 13)
    hub._audit()


# -- the range index ---------------------------------------------------------------------------


def test_interval_index_matches_brute_force():
    rng = random.Random(7)
    alphabet = [bytes([c]) for c in b"abcdef"]

    def word() -> bytes:
        return b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))

    index = _Intervals()
    live: dict[tuple, list] = {}
    for step in range(400):
        start = word()
        end = None if rng.random() < 0.2 else word()
        if end is not None and end <= start:
            continue
        marker = object()
        index.add((start, end), marker)
        live.setdefault((start, end), []).append(marker)
        if step % 3 == 0 and live:
            ivl = rng.choice(sorted(live, key=repr))
            index.remove(ivl, live[ivl].pop())
            if not live[ivl]:
                del live[ivl]
        for _ in range(5):
            key = word()
            got = sorted(m for group in index.stab(key) for m in map(id, group))
            want = sorted(
                id(m) for (s, e), ms in live.items() if s <= key and (e is None or key < e) for m in ms
            )
            assert got == want, (key, step)
    assert _build([]) is None
