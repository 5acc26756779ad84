"""Snapshots: metadata encoding, log storage, the core's compact/send/report/install, and restarts."""

from __future__ import annotations

import gc
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # raftsim lives next to this file

from raftsim import Cluster

from actors.raft import codec
from actors.raft.core import (
    SNAPSHOT,
    ConfState,
    Message,
    MsgType,
    RaftCore,
    Role,
    Snapshot,
    snapshot_of,
)
from actors.raft.durable import DurableLog
from actors.raft.log import EMPTY_SNAPSHOT, Compacted, Entry, HardState, MemoryLog


def ents(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(term, i, 0, b"d%d" % i) for i in range(lo, hi)]


def snaps(c: Cluster) -> list[Message]:
    return [m for m in c.sent if m.type == MsgType.SNAP]


# ---------------------------------------------------------------------- metadata


def test_snapshot_and_conf_state_encoding() -> None:
    s = Snapshot(12, 3, (1, 2, 3), (7,))
    assert Snapshot.decode(s.encode()) == s
    assert s.conf_state == ConfState((1, 2, 3), (7,))
    assert ConfState.decode(ConfState().encode()) == ConfState()
    for bad in (b"", s.encode()[:-1], s.encode() + b"x", b"\x00" * 16 + b"\x05\x00\x00\x00"):
        with pytest.raises(ValueError):
            Snapshot.decode(bad)


def test_snap_message_round_trips_through_the_peer_codec() -> None:
    s = Snapshot(40, 5, (1, 2), (3,))
    m = Message(
        MsgType.SNAP, 2, 1, 6, log_term=s.term, index=s.index, commit=41, context=s.conf_state.encode()
    )
    (back,) = codec.decode(9, codec.encode(9, [m]))
    assert back == m and snapshot_of(back) == s


# ---------------------------------------------------------------------- storage


@pytest.fixture(params=["memory", "durable"])
def storage(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        yield MemoryLog
    else:
        opened: list[DurableLog] = []

        def make() -> DurableLog:
            log = DurableLog(str(tmp_path / "raft"))
            opened.append(log)
            return log

        yield make
        for log in opened:
            log.close()


def test_compact_records_the_snapshot(storage) -> None:
    log = storage()
    log.save(HardState(2, 1, 8), ents(1, 6, 1) + ents(6, 11, 2))
    assert log.snapshot() == EMPTY_SNAPSHOT
    snap = Snapshot(7, 2, (1, 2, 3))
    with pytest.raises(ValueError):
        log.compact(9, snap)  # beyond the snapshot
    with pytest.raises(ValueError):
        log.compact(8, Snapshot(7, 1, (1,)))  # not this log's term at 7
    with pytest.raises(ValueError):
        log.compact(9, Snapshot(9, 2, (1,)))  # beyond the commit index
    log.compact(6, snap)  # keeps entry 6 and 7 below the snapshot for slow followers
    assert log.snapshot() == snap and (log.first_index(), log.last_index()) == (6, 10)
    log.compact(8, snap)
    assert (log.first_index(), log.term(7)) == (8, 2)
    with pytest.raises(Compacted):
        log.term(6)
    log.compact(6, Snapshot(5, 1, (1,)))  # older than the one held: ignored
    assert log.snapshot() == snap


def test_apply_snapshot_replaces_the_log(storage) -> None:
    log = storage()
    log.save(HardState(2, 1, 3), ents(1, 6, 1))
    snap = Snapshot(20, 4, (1, 2), (3,))
    log.apply_snapshot(snap)
    assert (log.first_index(), log.last_index(), log.term(20)) == (21, 20, 4)
    assert log.snapshot() == snap and log.initial_state().commit == 20 and log.entries(21, 30) == []
    with pytest.raises(Compacted):
        log.entries(20, 21)
    log.save(HardState(4, 0, 20), ents(21, 23, 4))
    assert [e.index for e in log.entries(21, 30)] == [21, 22]
    with pytest.raises(ValueError):
        log.apply_snapshot(Snapshot(10, 3, (1,)))  # older than the one installed


def test_durable_snapshot_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "raft")
    log = DurableLog(path)
    log.save(HardState(1, 1, 5), ents(1, 9, 1))
    log.compact(4, Snapshot(5, 1, (1, 2, 3)))
    log.close()
    del log
    gc.collect()
    log = DurableLog(path)
    assert log.snapshot() == Snapshot(5, 1, (1, 2, 3)) and (log.first_index(), log.last_index()) == (4, 8)
    snap = Snapshot(30, 3, (1, 2), (4,))
    log.apply_snapshot(snap)
    log.save(HardState(3, 2, 30), ents(31, 33, 3))
    log.close()
    del log
    gc.collect()
    log = DurableLog(path)
    assert log.snapshot() == snap
    assert (log.first_index(), log.last_index(), log.term(30), log.term(32)) == (31, 32, 3, 3)
    assert log.initial_state() == HardState(3, 2, 30)
    core = RaftCore(2, [], log, random.Random(0), applied=30)
    assert core.conf_state == ConfState((1, 2), (4,)) and core.commit_index == 30 and core.applied_index == 30
    log.close()


# ---------------------------------------------------------------------- core: taking snapshots


def test_compact_returns_term_and_configuration() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.put(b"a", b"b")
    core = c.core(1)
    assert core.applied_index == 3
    with pytest.raises(ValueError):
        core.compact(4)  # not applied
    snap = core.compact(2)
    assert snap == Snapshot(2, 1, (1, 2, 3), ())
    c.members[1].disk.compact(3, snap)
    assert core.compact(2) == snap  # the one held
    with pytest.raises(ValueError):
        core.compact(1)  # older than the one held


# ---------------------------------------------------------------------- core: sending and installing


def lagging_cluster(**kw: object) -> Cluster:
    """3 nodes; node 3 was cut off while the others committed and compacted past what it has."""
    c = Cluster([1, 2, 3], **kw)
    c.elect(1)
    c.put(b"a")
    c.isolate(3)
    for k in range(5):
        c.put(b"x%d" % k)
    c.compact(1)
    c.compact(2)
    return c


def test_lagging_follower_catches_up_by_snapshot() -> None:
    c = lagging_cluster()
    lead = c.core(1)
    assert lead.raft_log.first_index() == lead.applied_index + 1
    c.heal()
    c.tick(2)
    (m,) = snaps(c)
    assert (m.to, m.index, m.log_term) == (3, lead.raft_log.snapshot().index, 1)
    assert c.reports == [(1, 3, True)]
    assert c.values(3) == c.values(1) == [b"a"] + [b"x%d" % k for k in range(5)]
    f = c.core(3)
    assert f.applied_index == lead.applied_index and f.raft_log.first_index() == m.index + 1
    pr = lead.progress(3)
    assert pr is not None and pr.state != SNAPSHOT and pr.match == lead.last_index
    c.put(b"after")  # replication resumes with appends
    assert c.values(3)[-1] == b"after" and len(snaps(c)) == 1


def test_follower_ready_carries_the_snapshot_first() -> None:
    log = MemoryLog()
    log.save(HardState(1, 0, 2), ents(1, 3, 1))
    f = RaftCore(2, [1, 2, 3], log, random.Random(0), applied=2)
    snap = Snapshot(10, 2, (1, 2, 3), (4,))
    f.step(Message(MsgType.SNAP, 2, 1, 2, log_term=2, index=10, context=snap.conf_state.encode()))
    assert f.role == Role.FOLLOWER and f.leader_id == 1 and f.term == 2
    assert f.conf_state == ConfState((1, 2, 3), (4,)) and f.learners == [4]
    rd = f.ready()
    assert rd.snapshot == snap and rd.must_sync and rd.committed_entries == []
    assert rd.hard_state == HardState(2, 0, 10)
    (resp,) = rd.messages
    assert (resp.type, resp.to, resp.index, resp.reject) == (MsgType.APP_RESP, 1, 10, False)
    log.apply_snapshot(snap)
    log.save(rd.hard_state, rd.entries)
    f.advance(rd)
    assert f.applied_index == 10 and f.commit_index == 10 and f.raft_log.first_index() == 11
    assert not f.has_ready()
    # entries after the snapshot append and apply as usual
    f.step(Message(MsgType.APP, 2, 1, 2, log_term=2, index=10, entries=ents(11, 13, 2), commit=12))
    rd = f.ready()
    assert [e.index for e in rd.entries] == [11, 12] and [e.index for e in rd.committed_entries] == [11, 12]


def test_snapshot_then_entries_in_one_ready() -> None:
    f = RaftCore(2, [1, 2], MemoryLog(), random.Random(0))
    cs = ConfState((1, 2)).encode()
    f.step(Message(MsgType.SNAP, 2, 1, 3, log_term=3, index=7, context=cs))
    f.step(Message(MsgType.APP, 2, 1, 3, log_term=3, index=7, entries=ents(8, 10, 3), commit=9))
    rd = f.ready()
    assert rd.snapshot is not None and rd.snapshot.index == 7
    assert [e.index for e in rd.entries] == [8, 9] and [e.index for e in rd.committed_entries] == [8, 9]
    assert [m.index for m in rd.messages] == [7, 9]


def test_stale_or_known_snapshot_is_not_installed() -> None:
    log = MemoryLog()
    log.save(HardState(2, 0, 5), ents(1, 4, 1) + ents(4, 9, 2))
    f = RaftCore(2, [1, 2, 3], log, random.Random(0), applied=5)
    cs = ConfState((1, 2, 3)).encode()
    f.step(Message(MsgType.SNAP, 2, 1, 2, log_term=1, index=3, context=cs))  # older than the commit
    rd = f.ready()
    assert rd.snapshot is None and [(m.type, m.index) for m in rd.messages] == [(MsgType.APP_RESP, 5)]
    log.save(rd.hard_state, rd.entries)
    f.advance(rd)
    f.step(Message(MsgType.SNAP, 2, 1, 2, log_term=2, index=7, context=cs))  # we hold entry 7/2
    rd = f.ready()
    assert rd.snapshot is None and f.commit_index == 7 and [m.index for m in rd.messages] == [7]
    assert [e.index for e in rd.committed_entries] == [6, 7]
    assert f.raft_log.first_index() == 1  # nothing was thrown away


def test_failed_transfer_is_retried() -> None:
    c = lagging_cluster()
    c.heal()
    c.drop = lambda m: m.type == MsgType.SNAP  # the stream breaks
    c.tick(1)
    assert c.reports == [(1, 3, False)]
    pr = c.core(1).progress(3)
    assert pr is not None and pr.state != SNAPSHOT and pr.probe_sent  # waits for the next heartbeat
    assert c.core(3).applied_index == 2
    c.heal()
    c.tick(3)
    assert [ok for _, _, ok in c.reports] == [False, True]
    assert c.values(3) == c.values(1)


def test_no_appends_while_a_snapshot_is_pending() -> None:
    c = lagging_cluster()
    c.heal()
    lead = c.core(1)
    held: list[Message] = []

    def hold(m: Message) -> bool:
        if m.type == MsgType.SNAP:
            held.append(m)
            return True
        return False

    c.drop = hold
    c.reports.clear()
    lead.report_snapshot = lambda peer, ok: None  # the transfer is still running: no report yet
    c.tick(1)
    assert len(held) == 1
    pr = lead.progress(3)
    assert pr is not None and pr.state == SNAPSHOT and pr.pending_snapshot == held[0].index and pr.is_paused()
    before = len(c.sent)
    c.put(b"more")
    c.tick(3)
    assert not [m for m in c.sent[before:] if m.to == 3 and m.type in (MsgType.APP, MsgType.SNAP)]
    del lead.report_snapshot
    lead.report_snapshot(3, False)
    c.heal()
    c.tick(3)
    assert c.values(3) == c.values(1)


def test_inactive_follower_gets_no_snapshot() -> None:
    c = lagging_cluster(check_quorum=True)
    c.tick(12, only=[1, 2])  # CheckQuorum clears 3's recent activity
    pr = c.core(1).progress(3)
    assert pr is not None and not pr.recent_active
    c.deliver()
    assert snaps(c) == []


def test_compaction_without_snapshot_sends_none() -> None:
    # a log compacted the old way (no snapshot recorded) cannot serve a lagging follower: it waits
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.isolate(3)
    c.put(b"a", b"b")
    c.members[1].disk.compact(3)
    c.heal()
    c.tick(3)
    assert snaps(c) == [] and c.core(3).applied_index == 1  # the no-op of term 1 only
    c.compact(1)  # now there is one
    c.tick(2)
    assert len(snaps(c)) == 1 and c.values(3) == [b"a", b"b"]


def test_kept_tail_serves_a_slow_follower_without_snapshot() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.put(b"a")
    c.isolate(3)
    c.put(b"b", b"c")
    c.compact(1, keep=4)
    c.heal()
    c.tick(2)
    assert snaps(c) == [] and c.values(3) == [b"a", b"b", b"c"]


def test_restart_after_install() -> None:
    c = lagging_cluster()
    c.heal()
    c.tick(2)
    f = c.members[3]
    installed = f.disk.snapshot()
    assert installed.index > 0
    c.crash(3)
    c.put(b"while-down")
    core = c.restart(3)
    assert core.raft_log.first_index() == installed.index + 1 and core.raft_log.term(installed.index) == 1
    assert core.commit_index >= installed.index and core.conf_state == ConfState((1, 2, 3))
    c.tick(2)
    assert c.values(3) == c.values(1) and c.values(3)[-1] == b"while-down"


def test_leader_restart_after_compaction_keeps_serving_snapshots() -> None:
    c = lagging_cluster()
    c.crash(1)
    c.restart(1)
    c.heal()
    c.tick(30)
    lead = c.leader()
    c.put(b"z")
    assert c.values(3) == c.values(lead.id) and c.values(3)[-1] == b"z"
