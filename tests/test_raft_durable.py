"""DurableLog: RocksDB-backed raft log (save/reopen, suffix overwrite, compaction, cache boundary)."""

from __future__ import annotations

import gc
import random
import struct
from pathlib import Path

import pytest
from rocksdict import AccessType, Options, Rdict

from actors.raft.core import RaftCore, Role
from actors.raft.durable import DurableLog
from actors.raft.log import Compacted, Entry, HardState, MemoryLog, Snapshot


def ents(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(term, i, 0, b"d%d/%d" % (i, term)) for i in range(lo, hi)]


def reopen(log: DurableLog, path: Path, **kw: int) -> DurableLog:
    log.close()
    del log
    gc.collect()
    return DurableLog(str(path), **kw)


def snapshot(log: DurableLog | MemoryLog) -> tuple:
    return (
        log.initial_state(),
        log.first_index(),
        log.last_index(),
        log.term(log.first_index() - 1),
        [(e.term, e.index, e.type, e.data) for e in log.entries(log.first_index(), log.last_index() + 1)],
        log.snapshot(),
    )


def test_empty_log(tmp_path: Path) -> None:
    log = DurableLog(str(tmp_path / "raft"))
    assert log.initial_state() == HardState(0, 0, 0)
    assert (log.first_index(), log.last_index(), log.term(0)) == (1, 0, 0)
    assert log.entries(1, 10) == []
    log.close()


def test_save_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log = DurableLog(str(path))
    log.save(HardState(2, 3, 4), ents(1, 6, 2))
    log.save(None, ents(6, 8, 2), sync=False)
    log.save(HardState(2, 3, 7), [])
    before = snapshot(log)
    assert before[0] == HardState(2, 3, 7) and before[2] == 7
    log = reopen(log, path)
    assert snapshot(log) == before
    assert log.term(5) == 2 and log.term(8) == 0
    assert [e.data for e in log.entries(3, 5)] == [b"d3/2", b"d4/2"]
    log.close()


def test_overwrite_conflicting_suffix(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log = DurableLog(str(path))
    log.save(HardState(1, 1, 2), ents(1, 11, 1))
    log.save(HardState(2, 2, 2), ents(6, 8, 2))  # a new leader's shorter suffix replaces 6..10
    assert log.last_index() == 7
    assert [e.term for e in log.entries(1, 20)] == [1] * 5 + [2] * 2
    log = reopen(log, path)
    assert log.last_index() == 7 and log.term(6) == 2 and log.term(8) == 0
    assert [e.term for e in log.entries(1, 20)] == [1] * 5 + [2] * 2
    log.save(None, ents(8, 9, 2))
    assert log.last_index() == 8
    with pytest.raises(ValueError):
        log.save(None, ents(10, 11, 2))  # a hole
    log.close()


def test_compact(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log = DurableLog(str(path))
    log.save(HardState(3, 0, 8), ents(1, 6, 1) + ents(6, 11, 3))
    with pytest.raises(ValueError):
        log.compact(10)  # beyond the commit index
    log.compact(7)
    assert (log.first_index(), log.last_index()) == (7, 10)
    assert log.term(6) == 3  # the term before the first entry is kept (a snapshot would need it)
    with pytest.raises(Compacted):
        log.term(5)
    with pytest.raises(Compacted):
        log.entries(6, 8)
    log.compact(3)  # already compacted: no-op
    log = reopen(log, path)
    assert (log.first_index(), log.last_index(), log.term(6)) == (7, 10, 3)
    assert [e.index for e in log.entries(7, 100)] == [7, 8, 9, 10]
    with pytest.raises(ValueError):
        log.save(None, ents(5, 6, 3))  # below the compaction point
    log.close()


def test_cache_boundary_reads_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log = DurableLog(str(path), cache_entries=4)
    for lo in range(1, 41, 5):
        log.save(None, ents(lo, lo + 5, 1))
    assert [e.index for e in log.entries(1, 41)] == list(range(1, 41))
    assert log.term(2) == 1
    log.save(None, ents(3, 5, 2))  # overwrite below the cache
    assert [e.term for e in log.entries(1, 10)] == [1, 1, 2, 2]
    log = reopen(log, path, cache_entries=2)
    assert [(e.index, e.term) for e in log.entries(1, 10)] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    log.close()


def test_matches_memory_log_under_random_ops(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    rng = random.Random(1)
    dur = DurableLog(str(path), cache_entries=8)
    mem = MemoryLog()
    term = 1
    for step in range(300):
        op = rng.random()
        if op < 0.75:
            commit = mem.initial_state().commit
            lo = rng.randint(max(mem.first_index(), commit + 1), mem.last_index() + 1)
            term += rng.random() < 0.3
            new = ents(lo, lo + rng.randint(1, 6), term)
            hs = None
            if rng.random() < 0.7:
                hs = HardState(term, rng.randint(0, 3), rng.randint(commit, new[-1].index))
            dur.save(hs, new, sync=rng.random() < 0.2)
            mem.save(hs, new)
        elif op < 0.8:
            upto = rng.randint(mem.first_index(), mem.initial_state().commit + 1)
            dur.compact(upto)
            mem.compact(upto)
        elif op < 0.85:
            lo = max(mem.first_index(), mem.snapshot().index + 1)
            commit = min(mem.initial_state().commit, mem.last_index())
            if lo <= commit:
                at = rng.randint(lo, commit)
                snap = Snapshot(at, mem.term(at), (1, 2, 3), (rng.randint(4, 9),))
                upto = rng.randint(mem.first_index(), at + 1)
                dur.compact(upto, snap)
                mem.compact(upto, snap)
        elif op < 0.87:
            at = max(mem.last_index(), mem.snapshot().index) + rng.randint(0, 5)
            term += 1
            snap = Snapshot(at, term, (1, 2), ())
            dur.apply_snapshot(snap)
            mem.apply_snapshot(snap)
        elif op < 0.9:
            dur = reopen(dur, path, cache_entries=rng.choice((1, 8, 100)))
        assert snapshot(dur) == snapshot(mem), step
    dur.close()


def test_single_voter_core_restarts_from_durable_log(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log = DurableLog(str(path))
    core = RaftCore(1, [1], log, random.Random(0))
    core.campaign()
    applied: list[bytes] = []
    for k in range(3):
        core.propose([b"v%d" % k])
        while core.has_ready():
            rd = core.ready()
            log.save(rd.hard_state, rd.entries, sync=rd.must_sync)
            applied += [e.data for e in rd.committed_entries if e.type == 0]
            core.advance(rd)
    log = reopen(log, path)
    again = RaftCore(1, [1], log, random.Random(0), applied=2)
    assert again.term == 1 and again.commit_index == 4 and again.last_index == 4
    rd = again.ready()
    assert [e.data for e in rd.committed_entries] == [b"v1", b"v2"]
    again.advance(rd)
    again.campaign()
    assert again.role == Role.LEADER and again.term == 2
    log.close()


def _hard_state_on_disk(path: Path) -> HardState:
    """What a restart after a crash would read: the DB opened read-only beside the live one."""
    db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        raw = db.get(b"m:hs")
    finally:
        db.close()
    return HardState(*struct.unpack("<QQQ", raw))


def test_commit_only_hard_state_is_written_with_the_next_batch(tmp_path: Path) -> None:
    path = tmp_path / "raft"
    log = DurableLog(str(path))
    log.save(HardState(1, 1, 0), ents(1, 3, 1), sync=True)
    log.save(HardState(1, 1, 2), [], sync=False)  # the commit index moved, nothing else
    assert log.initial_state() == HardState(1, 1, 2)
    assert _hard_state_on_disk(path) == HardState(1, 1, 0)
    log.save(None, ents(3, 4, 1), sync=False)
    assert _hard_state_on_disk(path) == HardState(1, 1, 2)
    log.save(HardState(1, 1, 3), [], sync=False)
    log.compact(2)  # may drop only committed entries: the commit in memory counts, and is written
    assert _hard_state_on_disk(path) == HardState(1, 1, 3)
    log.save(HardState(2, 0, 3), [], sync=False)  # a new term is written at once
    assert _hard_state_on_disk(path) == HardState(2, 0, 3)
    log.save(HardState(2, 0, 3), ents(4, 5, 2), sync=False)
    log.save(HardState(2, 0, 4), [], sync=False)
    log = reopen(log, path)  # a clean close writes it
    assert log.initial_state() == HardState(2, 0, 4)
    log.close()
