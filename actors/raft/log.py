"""Raft log storage: the durable-storage protocol, an in-memory implementation, and the core's log view.

Like etcd's raft package, the core never writes storage itself. It reads what was made durable
through :class:`LogStorage` and keeps what is not durable yet in memory (the *unstable* tail of
:class:`RaftLog`); the shell persists ``Ready.entries`` with ``save`` and then calls ``advance``,
which moves them from unstable to stable. :class:`MemoryLog` is the reference implementation
(tests and the simulation); ``actors.raft.durable.DurableLog`` is the RocksDB one.

Indexes start at 1; index 0 with term 0 is the empty log's sentinel. Compaction drops a prefix:
``first_index()`` is then the first index still stored and ``term(first_index() - 1)`` stays
answerable (it is what a snapshot would record), anything older raises :class:`Compacted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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


class MemoryLog:
    """A :class:`LogStorage` in memory with the same ``save``/``compact`` contract as ``DurableLog``.

    In the simulation it plays the disk: a crashed node restarts from exactly what was saved here.
    """

    __slots__ = ("_ents", "_hs", "_offset", "_snap_term")

    def __init__(self) -> None:
        self._hs = HardState(0, 0, 0)
        self._ents: list[Entry] = []
        self._offset = 1  # index of _ents[0]
        self._snap_term = 0  # term of entry _offset - 1

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

    def compact(self, upto: int) -> None:
        """Drop entries with index < ``upto`` (only committed ones may be dropped)."""
        off = self._offset
        if upto <= off:
            return
        if upto > self.last_index() + 1 or upto > self._hs.commit + 1:
            raise ValueError(f"cannot compact to {upto}: last {self.last_index()}, commit {self._hs.commit}")
        self._snap_term = self.term(upto - 1)
        del self._ents[: upto - off]
        self._offset = upto


class RaftLog:
    """The core's view of the log: stable entries in ``storage`` plus an unstable in-memory tail.

    ``unstable[k]`` has index ``offset + k``. Entries at or past ``offset`` that storage may still
    hold are stale (about to be overwritten by the next save) and are never read from storage.
    """

    __slots__ = ("applied", "committed", "offset", "storage", "unstable")

    def __init__(self, storage: LogStorage, committed: int = 0, applied: int = 0) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.committed = committed
        self.applied = applied

    def first_index(self) -> int:
        """First index still available."""
        return self.storage.first_index()

    def last_index(self) -> int:
        """Last index, counting unstable entries."""
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        return self.storage.last_index()

    def last_term(self) -> int:
        """Term of the last entry."""
        if self.unstable:
            return self.unstable[-1].term
        return self.storage.term(self.storage.last_index())

    def term(self, i: int) -> int:
        """Term of entry ``i``: 0 past the end; raises :class:`Compacted` before the compaction point."""
        off = self.offset
        if i >= off:
            j = i - off
            u = self.unstable
            return u[j].term if j < len(u) else 0
        if i <= 0:
            return 0
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
        if hi <= off:
            return self.storage.entries(lo, hi)
        return self.storage.entries(lo, off) + self.unstable[: hi - off]

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
