"""The raft log on RocksDB (rocksdict, raw mode), in a DB directory of its own.

One ``save`` per Ready writes the hard state and the new entries in ONE ``WriteBatch`` with one
fsync (group commit: rocksdict holds the GIL while syncing, so batching is done here, not by
RocksDB). New entries overwrite a conflicting suffix: their keys are rewritten and anything past
the new last index is range-deleted in the same batch, so a crash leaves either the old log or
the new one. The newest entries stay cached in memory, so the core's ``term()``/``entries()``
calls (every append, every follower catch-up that is not far behind) never touch the disk.

Keys (big-endian indexes sort numerically)::

    b"e" + index:u64be  ->  term:u64 type:u8 data      one entry
    b"m:hs"             ->  term:u64 vote:u64 commit:u64
    b"m:first"          ->  first_index:u64 term_before_first:u64   (written by compact)
    b"m:snap"           ->  Snapshot.encode()   (metadata of the newest snapshot)

A hard state that only moves the commit index (a Ready with nothing to fsync) is kept in memory
and written with the next batch, or at close: raft's commit index is volatile state (after a crash
the leader tells it again, and the kv DB's applied index bounds it from below), while a RocksDB
write for each commit costs every member ~10-40 µs on its way to applying.

``compact(upto, snapshot)`` records a snapshot the shell took and drops the prefix it covers;
``apply_snapshot(snapshot)`` (a follower installing one from the leader) drops the whole log.
Both are one synced WriteBatch.

Scans use ``seek`` plus an upper bound only: ``ReadOptions.set_iterate_lower_bound`` is broken in
rocksdict 0.3.29 (it overwrites the upper bound).
"""

from __future__ import annotations

import struct

from rocksdict import Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from actors.raft.log import EMPTY_SNAPSHOT, Compacted, Entry, HardState, Snapshot, check_snapshot

_KEY = struct.Struct(">BQ")
_ENT = struct.Struct("<QB")
_HS = struct.Struct("<QQQ")
_FIRST = struct.Struct("<QQ")
_E = ord("e")
_HS_KEY = b"m:hs"
_FIRST_KEY = b"m:first"
_SNAP_KEY = b"m:snap"
_ENTRIES_END = b"f"  # upper bound of every entry key


def _key(i: int) -> bytes:
    return _KEY.pack(_E, i)


def _decode(i: int, v: bytes) -> Entry:
    term, typ = _ENT.unpack_from(v)
    return Entry(term, i, typ, v[_ENT.size :])


class DurableLog:
    """A ``LogStorage`` on RocksDB: the shell calls ``save`` once per Ready, ``compact`` after snapshots."""

    def __init__(self, path: str, cache_entries: int = 8192) -> None:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(path, opts)
        self._wo_sync = WriteOptions()
        self._wo_sync.sync = True
        self._wo_async = WriteOptions()
        self._cap = max(1, cache_entries)

        raw = self._db.get(_HS_KEY)
        self._hs = HardState(*_HS.unpack(raw)) if raw is not None else HardState(0, 0, 0)
        self._hs_unsaved = False  # ``_hs`` moved its commit index only: written with the next batch
        raw = self._db.get(_FIRST_KEY)
        self._first, self._snap_term = _FIRST.unpack(raw) if raw is not None else (1, 0)
        raw = self._db.get(_SNAP_KEY)
        self._snap = Snapshot.decode(raw) if raw is not None else EMPTY_SNAPSHOT

        ro = ReadOptions()
        ro.set_iterate_upper_bound(_ENTRIES_END)
        it = self._db.iter(ro)
        it.seek_to_last()
        if it.valid() and it.key()[:1] == b"e":
            self._last = _KEY.unpack(it.key())[1]
        else:
            self._last = self._first - 1
        del it
        lo = max(self._first, self._last - self._cap + 1)
        self._cache: list[Entry] = self._read(lo, self._last + 1)
        self._cache_first = lo
        if len(self._cache) != self._last - lo + 1:
            raise RuntimeError(f"raft log at {path} has holes in [{lo}, {self._last}]")

    # ------------------------------------------------------------------ LogStorage

    def initial_state(self) -> HardState:
        """The hard state saved last."""
        hs = self._hs
        return HardState(hs.term, hs.vote, hs.commit)

    def first_index(self) -> int:
        """First stored index."""
        return self._first

    def last_index(self) -> int:
        """Last stored index."""
        return self._last

    def term(self, i: int) -> int:
        """Term of entry ``i`` (0 past the end); from the cache unless far behind."""
        if i > self._last:
            return 0
        cf = self._cache_first
        if i >= cf:
            return self._cache[i - cf].term
        if i == self._first - 1:
            return self._snap_term
        if i < self._first:
            raise Compacted(i)
        raw = self._db.get(_key(i))
        if raw is None:
            raise RuntimeError(f"raft log entry {i} missing")
        return _ENT.unpack_from(raw)[0]

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries in ``[lo, hi)`` clipped at the end; disk is read only below the cache."""
        if lo < self._first:
            raise Compacted(lo)
        hi = min(hi, self._last + 1)
        if lo >= hi:
            return []
        cf = self._cache_first
        if lo >= cf:
            return self._cache[lo - cf : hi - cf]
        if hi <= cf:
            return self._read(lo, hi)
        return self._read(lo, cf) + self._cache[: hi - cf]

    def _read(self, lo: int, hi: int) -> list[Entry]:
        if lo >= hi:
            return []
        ro = ReadOptions()
        ro.set_iterate_upper_bound(_key(hi))
        it = self._db.iter(ro)
        it.seek(_key(lo))
        out = []
        unpack = _KEY.unpack
        while it.valid():
            i = unpack(it.key())[1]
            out.append(_decode(i, it.value()))
            it.next()
        del it
        return out

    # ------------------------------------------------------------------ writes

    def sync(self) -> None:
        """fsync everything saved so far. Safe from another thread: rocksdict releases the GIL here
        (unlike ``save(sync=True)``), so the raft actor's loop keeps working while the disk does."""
        self._db.flush_wal(True)

    def save(self, hard_state: HardState | None, entries: list[Entry], sync: bool = True) -> None:
        """Persist a Ready atomically with one (optional) fsync; new entries replace a conflicting suffix."""
        hs = self._hs
        if (
            not entries
            and not sync
            and hard_state is not None
            and (hard_state.term, hard_state.vote) == (hs.term, hs.vote)
        ):
            self._hs = HardState(hs.term, hs.vote, hard_state.commit)
            self._hs_unsaved = True
            return
        wb = WriteBatch(raw_mode=True)
        if entries:
            first_new = entries[0].index
            new_last = entries[-1].index
            if first_new < self._first or first_new > self._last + 1:
                raise ValueError(f"entries start at {first_new}, log holds [{self._first}, {self._last}]")
            if new_last - first_new + 1 != len(entries):
                raise ValueError("entries are not contiguous")
            put = wb.put
            pack = _ENT.pack
            key = _KEY.pack
            for e in entries:
                put(key(_E, e.index), pack(e.term, e.type) + e.data)
            if new_last < self._last:
                wb.delete_range(_key(new_last + 1), _key(self._last + 1))
        if hard_state is not None:
            hs = HardState(hard_state.term, hard_state.vote, hard_state.commit)
        if hard_state is not None or self._hs_unsaved:
            wb.put(_HS_KEY, _HS.pack(hs.term, hs.vote, hs.commit))
        if len(wb) == 0:
            return
        self._db.write(wb, self._wo_sync if sync else self._wo_async)
        self._hs = hs
        self._hs_unsaved = False
        if entries:
            cache = self._cache
            cf = self._cache_first
            if first_new >= cf:
                del cache[first_new - cf :]
                cache.extend(entries)
            else:
                self._cache = cache = list(entries)
                self._cache_first = cf = first_new
            self._last = new_last
            if len(cache) > 2 * self._cap:
                drop = len(cache) - self._cap
                del cache[:drop]
                self._cache_first = cf + drop

    def snapshot(self) -> Snapshot:
        """Metadata of the newest snapshot recorded."""
        return self._snap

    def compact(self, upto: int, snapshot: Snapshot | None = None) -> None:
        """Record ``snapshot`` (if given) and drop entries with index < ``upto`` (only committed ones);
        the term before them is kept. With a snapshot, ``upto <= snapshot.index + 1``."""
        if snapshot is not None:
            check_snapshot(self, snapshot, upto)
            if snapshot.index <= self._snap.index:
                snapshot = None
        drop = upto > self._first
        if drop and (upto > self._last + 1 or upto > self._hs.commit + 1):
            raise ValueError(f"cannot compact to {upto}: last {self._last}, commit {self._hs.commit}")
        if not drop and snapshot is None:
            return
        wb = WriteBatch(raw_mode=True)
        if self._hs_unsaved:
            hs = self._hs
            wb.put(_HS_KEY, _HS.pack(hs.term, hs.vote, hs.commit))
        if drop:
            snap_term = self.term(upto - 1)
            wb.delete_range(_key(self._first), _key(upto))
            wb.put(_FIRST_KEY, _FIRST.pack(upto, snap_term))
        if snapshot is not None:
            wb.put(_SNAP_KEY, snapshot.encode())
        self._db.write(wb, self._wo_sync)
        self._hs_unsaved = False
        if snapshot is not None:
            self._snap = snapshot
        if drop:
            self._first = upto
            self._snap_term = snap_term
            if self._cache_first < upto:
                del self._cache[: upto - self._cache_first]
                self._cache_first = upto

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` from the leader (one synced batch): afterwards
        ``first_index() == snapshot.index + 1``; the saved commit moves up to the snapshot index."""
        if snapshot.index < self._snap.index:
            raise ValueError(f"snapshot {snapshot.index} older than the stored one {self._snap.index}")
        first = snapshot.index + 1
        wb = WriteBatch(raw_mode=True)
        wb.delete_range(_key(0), _key(max(self._last, snapshot.index) + 1))
        wb.put(_FIRST_KEY, _FIRST.pack(first, snapshot.term))
        wb.put(_SNAP_KEY, snapshot.encode())
        hs = self._hs
        if hs.commit < snapshot.index:
            hs = HardState(hs.term, hs.vote, snapshot.index)
        if hs is not self._hs or self._hs_unsaved:
            wb.put(_HS_KEY, _HS.pack(hs.term, hs.vote, hs.commit))
        self._db.write(wb, self._wo_sync)
        self._hs = hs
        self._hs_unsaved = False
        self._first = first
        self._last = snapshot.index
        self._snap_term = snapshot.term
        self._snap = snapshot
        self._cache = []
        self._cache_first = first

    def close(self) -> None:
        """Write a commit index still in memory, then close the DB (releases its lock)."""
        if self._hs_unsaved:
            self.save(self._hs, [], sync=True)
        self._db.close()

    def __enter__(self) -> DurableLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
