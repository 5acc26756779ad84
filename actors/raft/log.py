"""Raft log storage: the durable-storage protocol, an in-memory implementation, and the core's log view.

Like etcd's raft package, the core never writes storage itself. It reads what was made durable
through :class:`LogStorage` and keeps what is not durable yet in memory (the *unstable* tail of
:class:`RaftLog`); the shell persists ``Ready.entries`` with ``save`` and then calls ``advance``,
which moves them from unstable to stable. :class:`MemoryLog` is the reference implementation
(tests and the simulation); ``actors.raft.durable.DurableLog`` is the RocksDB one.

Indexes start at 1; index 0 with term 0 is the empty log's sentinel. Compaction drops a prefix:
``first_index()`` is then the first index still stored and ``term(first_index() - 1)`` stays
answerable, anything older raises :class:`Compacted`.

Snapshots: the state machine (not the log) holds the data; the log keeps only its metadata,
:class:`Snapshot` (index, term and the configuration at that index). ``compact(upto, snapshot)``
records a snapshot the shell took and drops the entries it covers (possibly keeping a tail below
it for slow followers: ``upto <= snapshot.index + 1``); ``apply_snapshot(snapshot)`` replaces the
whole log by a snapshot received from the leader: afterwards ``first_index() == snapshot.index + 1``
and ``term(snapshot.index) == snapshot.term``, also after a restart.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

_CONF_HEAD = struct.Struct("<HH")
_SNAP_HEAD = struct.Struct("<QQ")


@dataclass(slots=True)
class Entry:
    """One log entry; ``type`` is an ``actors.protocol.EntryType`` and ``data`` is opaque to raft."""

    term: int
    index: int
    type: int
    data: bytes


@dataclass(slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int
    vote: int
    commit: int


@dataclass(slots=True, frozen=True)
class ConfState:
    """A raft configuration: who votes, who only receives the log (sorted, disjoint id tuples)."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """``n_voters:u16 n_learners:u16`` then the ids as u64 (little-endian)."""
        v, lr = self.voters, self.learners
        return _CONF_HEAD.pack(len(v), len(lr)) + struct.pack(f"<{len(v) + len(lr)}Q", *v, *lr)

    @classmethod
    def decode_from(cls, data: bytes, offset: int = 0) -> tuple[ConfState, int]:
        """Decode at ``offset``; returns the state and the offset after it (ValueError if truncated)."""
        if len(data) - offset < _CONF_HEAD.size:
            raise ValueError("truncated configuration")
        nv, nl = _CONF_HEAD.unpack_from(data, offset)
        offset += _CONF_HEAD.size
        n = nv + nl
        if len(data) - offset < 8 * n:
            raise ValueError("truncated configuration ids")
        ids = struct.unpack_from(f"<{n}Q", data, offset)
        return cls(tuple(ids[:nv]), tuple(ids[nv:])), offset + 8 * n

    @classmethod
    def decode(cls, data: bytes) -> ConfState:
        """Inverse of :meth:`encode`."""
        cs, end = cls.decode_from(data)
        if end != len(data):
            raise ValueError("trailing bytes after a configuration")
        return cs


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Metadata of a state-machine snapshot: it holds every entry up to ``index`` (of ``term``) applied,
    and ``voters``/``learners`` is the configuration as of ``index``. The data itself is the shell's.
    """

    index: int
    term: int
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    @property
    def conf_state(self) -> ConfState:
        """The configuration recorded in the snapshot."""
        return ConfState(self.voters, self.learners)

    def encode(self) -> bytes:
        """``index:u64 term:u64`` followed by the :class:`ConfState` encoding."""
        return _SNAP_HEAD.pack(self.index, self.term) + self.conf_state.encode()

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        """Inverse of :meth:`encode` (ValueError on malformed input)."""
        if len(data) < _SNAP_HEAD.size:
            raise ValueError("truncated snapshot metadata")
        index, term = _SNAP_HEAD.unpack_from(data)
        cs, end = ConfState.decode_from(data, _SNAP_HEAD.size)
        if end != len(data):
            raise ValueError("trailing bytes after snapshot metadata")
        return cls(index, term, cs.voters, cs.learners)


EMPTY_SNAPSHOT = Snapshot(0, 0)


class Compacted(LookupError):
    """The requested index lies in the compacted prefix of the log (a snapshot would be needed)."""


class LogStorage(Protocol):
    """What the core reads from durable storage (etcd's ``Storage``)."""

    def initial_state(self) -> HardState:
        """The hard state saved last (all zero for a new log)."""
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``; raises :class:`Compacted` if ``lo < first_index()``."""
        ...

    def term(self, i: int) -> int:
        """Term of entry ``i``; valid for ``first_index() - 1 <= i <= last_index()``."""
        ...

    def first_index(self) -> int:
        """Index of the first stored entry (1 for a never-compacted log)."""
        ...

    def last_index(self) -> int:
        """Index of the last stored entry (``first_index() - 1`` when empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """Metadata of the newest snapshot recorded (``EMPTY_SNAPSHOT`` if none)."""
        ...


class MemoryLog:
    """A :class:`LogStorage` in memory with the same ``save``/``compact`` contract as ``DurableLog``.

    In the simulation it plays the disk: a crashed node restarts from exactly what was saved here.
    """

    __slots__ = ("_ents", "_hs", "_offset", "_snap", "_snap_term")

    def __init__(self) -> None:
        self._hs = HardState(0, 0, 0)
        self._ents: list[Entry] = []
        self._offset = 1  # index of _ents[0]
        self._snap_term = 0  # term of entry _offset - 1
        self._snap = EMPTY_SNAPSHOT

    def initial_state(self) -> HardState:
        """The last saved hard state (a copy, so the caller cannot alter the 'disk')."""
        hs = self._hs
        return HardState(hs.term, hs.vote, hs.commit)

    def first_index(self) -> int:
        """First stored index."""
        return self._offset

    def last_index(self) -> int:
        """Last stored index."""
        return self._offset + len(self._ents) - 1

    def term(self, i: int) -> int:
        """Term of entry ``i``; 0 past the end, :class:`Compacted` before the compaction point."""
        off = self._offset
        if i >= off:
            j = i - off
            return self._ents[j].term if j < len(self._ents) else 0
        if i == off - 1:
            return self._snap_term
        raise Compacted(i)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries in ``[lo, hi)`` (clipped at the end of the log)."""
        off = self._offset
        if lo < off:
            raise Compacted(lo)
        return self._ents[lo - off : hi - off]

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Persist a Ready's hard state and entries atomically; new entries replace any conflicting suffix."""
        if entries:
            first = entries[0].index
            off = self._offset
            if first < off or first > off + len(self._ents):
                raise ValueError(f"entries start at {first}, log holds [{off}, {off + len(self._ents)})")
            del self._ents[first - off :]
            self._ents.extend(entries)
        if hard_state is not None:
            self._hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)

    def snapshot(self) -> Snapshot:
        """Metadata of the newest snapshot."""
        return self._snap

    def compact(self, upto: int, snapshot: Snapshot | None = None) -> None:
        """Record ``snapshot`` (if given) and drop entries with index < ``upto`` (only committed ones).

        With a snapshot, ``upto`` may be at most ``snapshot.index + 1`` (entries below it may be kept
        for followers that are only a little behind); the snapshot must be of an entry of this log.
        """
        off = self._offset
        if snapshot is not None:
            check_snapshot(self, snapshot, upto)
        if upto > off and (upto > self.last_index() + 1 or upto > self._hs.commit + 1):
            raise ValueError(f"cannot compact to {upto}: last {self.last_index()}, commit {self._hs.commit}")
        if snapshot is not None and snapshot.index > self._snap.index:
            self._snap = snapshot
        if upto <= off:
            return
        self._snap_term = self.term(upto - 1)
        del self._ents[: upto - off]
        self._offset = upto

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (received from the leader); the hard state's commit
        moves up to the snapshot index (the Ready's hard state saved next carries it too)."""
        if snapshot.index < self._snap.index:
            raise ValueError(f"snapshot {snapshot.index} older than the stored one {self._snap.index}")
        self._ents = []
        self._offset = snapshot.index + 1
        self._snap_term = snapshot.term
        self._snap = snapshot
        hs = self._hs
        if hs.commit < snapshot.index:
            self._hs = HardState(hs.term, hs.vote, snapshot.index)


def check_snapshot(log: LogStorage, snapshot: Snapshot, upto: int) -> None:
    """A snapshot recorded by ``compact`` must cover ``upto - 1`` and match the log's term at its index."""
    if upto > snapshot.index + 1:
        raise ValueError(f"cannot compact to {upto} with a snapshot at {snapshot.index}")
    if snapshot.index > log.initial_state().commit:
        raise ValueError(f"snapshot at {snapshot.index} beyond the commit index {log.initial_state().commit}")
    try:
        term = log.term(snapshot.index)
    except Compacted:
        if snapshot.index < log.snapshot().index:
            return  # older than the one recorded: ignored
        raise
    if term != snapshot.term or snapshot.index > log.last_index():
        raise ValueError(f"snapshot {snapshot.index}/{snapshot.term} is not of this log")


class RaftLog:
    """The core's view of the log: stable entries in ``storage`` plus an unstable in-memory tail.

    ``unstable[k]`` has index ``offset + k``. Entries at or past ``offset`` that storage may still
    hold are stale (about to be overwritten by the next save) and are never read from storage.
    ``pending_snapshot`` is a snapshot received from the leader that the shell has not installed
    yet: while it is set, the log starts right after it and storage is not read at all.
    """

    __slots__ = ("applied", "committed", "offset", "pending_snapshot", "storage", "unstable")

    def __init__(self, storage: LogStorage, committed: int = 0, applied: int = 0) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.committed = committed
        self.applied = applied
        self.pending_snapshot: Snapshot | None = None

    def first_index(self) -> int:
        """First index still available."""
        ps = self.pending_snapshot
        if ps is not None:
            return ps.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """Last index, counting unstable entries."""
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.storage.last_index()

    def last_term(self) -> int:
        """Term of the last entry."""
        if self.unstable:
            return self.unstable[-1].term
        if self.pending_snapshot is not None:
            return self.pending_snapshot.term
        return self.storage.term(self.storage.last_index())

    def snapshot(self) -> Snapshot:
        """The newest snapshot known: one pending installation, else the one in storage."""
        ps = self.pending_snapshot
        return ps if ps is not None else self.storage.snapshot()

    def term(self, i: int) -> int:
        """Term of entry ``i``: 0 past the end; raises :class:`Compacted` before the compaction point."""
        off = self.offset
        if i >= off:
            j = i - off
            u = self.unstable
            return u[j].term if j < len(u) else 0
        if i <= 0:
            return 0
        ps = self.pending_snapshot
        if ps is not None:
            if i == ps.index:
                return ps.term
            raise Compacted(i)
        return self.storage.term(i)

    def match_term(self, i: int, t: int) -> bool:
        """Whether entry ``i`` exists with term ``t``."""
        try:
            return self.term(i) == t
        except Compacted:
            return False

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries in ``[lo, hi)``, clipped at the last index."""
        off = self.offset
        if lo >= off:
            return self.unstable[lo - off : hi - off]
        if self.pending_snapshot is not None:
            raise Compacted(lo)
        if hi <= off:
            return self.storage.entries(lo, hi)
        return self.storage.entries(lo, off) + self.unstable[: hi - off]

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by a snapshot from the leader (installed by the shell, then ``stable_snap_to``)."""
        self.pending_snapshot = snapshot
        self.unstable = []
        self.offset = snapshot.index + 1
        self.committed = snapshot.index

    def stable_snap_to(self, index: int) -> None:
        """The shell installed the pending snapshot at ``index``."""
        ps = self.pending_snapshot
        if ps is not None and ps.index == index:
            self.pending_snapshot = None
        if self.applied < index:
            self.applied = index

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is a candidate's log at least as up to date as ours?"""
        lt = self.last_term()
        return last_term > lt or (last_term == lt and last_index >= self.last_index())

    def append(self, ents: list[Entry]) -> None:
        """Append entries whose first index may truncate the unstable or stable tail."""
        if not ents:
            return
        after = ents[0].index
        if after <= self.committed:
            raise AssertionError(f"raft: truncating committed entry {after} (commit {self.committed})")
        off = self.offset
        u = self.unstable
        if after == off + len(u):
            u.extend(ents)
        elif after <= off:
            # Replaces everything from `after` on, including stable entries (the next save overwrites them).
            self.offset = after
            self.unstable = list(ents)
        else:
            del u[after - off :]
            u.extend(ents)

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 if all of them match."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term (fast back-off)."""
        if index > self.last_index():
            return index, 0
        while index > 0:
            try:
                t = self.term(index)
            except Compacted:
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(self, index: int, log_term: int, commit: int, ents: list[Entry]) -> int:
        """Follower side of AppendEntries: -1 on a prev mismatch, else the last index the message proves."""
        if not self.match_term(index, log_term):
            return -1
        last_new = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci:
                if ci <= self.committed:
                    raise AssertionError(f"raft: conflict at {ci} below commit {self.committed}")
                self.append(ents[ci - index - 1 :])
        if commit > self.committed:
            self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, i: int) -> None:
        """Advance the commit index (never backwards)."""
        if i > self.committed:
            if i > self.last_index():
                raise AssertionError(f"raft: commit {i} beyond last index {self.last_index()}")
            self.committed = i

    def stable_to(self, i: int, t: int) -> None:
        """Entries up to ``i`` (term ``t``) are durable now; drop them from the unstable tail."""
        off = self.offset
        j = i - off
        u = self.unstable
        if 0 <= j < len(u) and u[j].term == t:
            if j == len(u) - 1:
                self.unstable = []
            else:
                del u[: j + 1]
            self.offset = i + 1
