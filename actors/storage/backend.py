"""The storage actor's RocksDB (rocksdict, raw mode): column families and one pending write batch.

Applying committed raft entries fills ONE pending ``WriteBatch``; :meth:`Backend.commit` writes it
together with the applied raft index in one ``db.write``, so after a crash the store holds either
all of a batch's entries and its index or none of them, and replaying the raft log from the
stored index applies every entry exactly once.

Rows written since the last commit are not in RocksDB yet, so the ``kv`` rows of the pending
batch are also kept in a dict: :meth:`Backend.get_kv` reads through it, which lets a write (or a
range inside a txn) see what earlier entries of the same batch wrote.

rocksdict 0.3.29 has two bugs this module works around (see MEASURED.md, and the regression
tests in tests/test_mvcc.py): ``ReadOptions.set_iterate_lower_bound`` overwrites the *upper*
bound, so scans ``seek`` to their start instead; and iterating a ``Snapshot`` ignores the
snapshot, so nothing here iterates snapshots (revision-keyed rows read under an upper bound
are a consistent view already).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

from rocksdict import (
    BottommostLevelCompaction,
    CompactOptions,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

KV = "kv"  # revision row key -> serialized mvccpb.KeyValue
META = "meta"  # applied index, compacted revision, ...
LEASE = "lease"  # reserved for the lease actor
AUTH = "auth"  # reserved for the auth actor
COLUMN_FAMILIES = (KV, META, LEASE, AUTH)

APPLIED_INDEX = b"applied_index"  # meta key: u64 big-endian
MAX_WAL_BYTES = 64 * 1024 * 1024
"""Past this much write-ahead log, RocksDB flushes the column families that pin its oldest file:
the small CFs (meta, lease) otherwise keep every WAL file alive, and the WAL counts in the size."""


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_max_total_wal_size(MAX_WAL_BYTES)
    return opts


class Backend:
    """One RocksDB directory with cairn's column families and a pending write batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        opts = _options()
        self._db = Rdict(path, opts, column_families={name: _options() for name in COLUMN_FAMILIES})
        self._cfs = {name: self._db.get_column_family(name) for name in COLUMN_FAMILIES}
        self._handles = {name: self._db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self._kv = self._cfs[KV]
        self._kv_handle = self._handles[KV]
        self._meta_handle = self._handles[META]
        self._batch = WriteBatch(raw_mode=True)
        self._pending: dict[bytes, bytes | None] = {}  # kv rows of the batch; None = deleted
        self._pending_meta: dict[bytes, bytes | None] = {}
        self._write_opts = WriteOptions()
        self._sync_opts = WriteOptions()
        self._sync_opts.sync = True
        raw = self._cfs[META].get(APPLIED_INDEX)
        self._applied_index = int.from_bytes(raw, "big") if raw is not None else 0

    # -- kv rows -------------------------------------------------------------------------------

    def put_kv(self, rev: bytes, value: bytes) -> None:
        """Add a kv row to the pending batch."""
        self._batch.put(rev, value, self._kv_handle)
        self._pending[rev] = value

    def delete_kv(self, rev: bytes) -> None:
        """Delete a kv row in the pending batch."""
        self._batch.delete(rev, self._kv_handle)
        self._pending[rev] = None

    def get_kv(self, revs: list[bytes]) -> list[bytes | None]:
        """The rows at ``revs`` (None where absent), pending ones included: one multi-get."""
        pending = self._pending
        if not pending:
            return self._kv[revs] if revs else []
        missing = [rev for rev in revs if rev not in pending]
        stored = iter(self._kv[missing]) if missing else iter(())
        return [pending[rev] if rev in pending else next(stored) for rev in revs]

    def scan_kv(self, start: bytes = b"", end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Committed kv rows with ``start <= key < end`` in key (= revision) order.

        Seeks to ``start`` rather than setting a lower bound (rocksdict's lower-bound bug).
        """
        ro = ReadOptions()
        if end is not None:
            ro.set_iterate_upper_bound(end)
        it = self._kv.iter(ro)
        it.seek(start)
        while it.valid():
            yield it.key(), it.value()
            it.next()
        del it

    # -- other column families -----------------------------------------------------------------

    def put(self, cf: str, key: bytes, value: bytes) -> None:
        """Add a row of column family ``cf`` to the pending batch."""
        self._batch.put(key, value, self._handles[cf])
        if cf == META:
            self._pending_meta[key] = value

    def delete(self, cf: str, key: bytes) -> None:
        """Delete a row of column family ``cf`` in the pending batch."""
        self._batch.delete(key, self._handles[cf])
        if cf == META:
            self._pending_meta[key] = None

    def get(self, cf: str, key: bytes) -> bytes | None:
        """A row of ``cf``: committed data, plus the pending batch for ``meta`` (other CFs' owners
        keep their own tables in memory)."""
        if cf == META and key in self._pending_meta:
            return self._pending_meta[key]
        return self._cfs[cf].get(key)

    def scan(self, cf: str) -> Iterator[tuple[bytes, bytes]]:
        """Every committed row of a small column family (lease, auth), in key order."""
        return iter(self._cfs[cf].items())

    # -- batch -------------------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """The raft index of the last committed batch (0 on a new store)."""
        return self._applied_index

    @property
    def pending(self) -> int:
        """Operations waiting in the pending batch."""
        return len(self._batch)

    def commit(self, applied_index: int, sync: bool = False) -> None:
        """Write the pending batch and ``applied_index`` atomically, then start a new batch.

        ``sync`` fsyncs the WAL (power-loss durability); without it a process crash still keeps
        every committed batch whole. A failed write leaves memory ahead of disk: the caller must
        stop (and replay from the stored index on restart).
        """
        batch = self._batch
        batch.put(APPLIED_INDEX, applied_index.to_bytes(8, "big"), self._meta_handle)
        self._db.write(batch, self._sync_opts if sync else self._write_opts)
        self._batch = WriteBatch(raw_mode=True)  # a written batch is consumed
        self._pending.clear()
        self._pending_meta.clear()
        self._applied_index = applied_index

    # -- maintenance -----------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes the store takes on disk: every CF's SST files plus the write-ahead log, which holds
        what the memtables have not flushed yet. Status.dbSize, and what the space quota counts
        (as etcd counts its bolt file): deleting or compacting does not shrink it, defragmenting does."""
        return self._sst_bytes("rocksdb.total-sst-files-size") + self._wal_bytes()

    def size_in_use_bytes(self) -> int:
        """RocksDB's estimate of the live data in the SST files, plus the WAL: Status.dbSizeInUse."""
        return self._sst_bytes("rocksdb.estimate-live-data-size") + self._wal_bytes()

    def _sst_bytes(self, prop: str) -> int:
        return sum(cf.property_int_value(prop) or 0 for cf in self._cfs.values())

    def _wal_bytes(self) -> int:
        total = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.endswith(".log"):
                    with contextlib.suppress(FileNotFoundError):  # deleted by RocksDB meanwhile
                        total += entry.stat().st_size
        return total

    def defragment(self) -> None:
        """Flush and fully compact every CF so deleted rows free their space (etcd's Defragment).

        Safe on another thread while this one writes (RocksDB is thread-safe, and rocksdict
        releases the GIL inside flush and compact_range: the core loop keeps running).
        """
        opts = CompactOptions()
        opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        for cf in self._cfs.values():
            cf.flush(True)
            cf.compact_range(None, None, opts)

    def start_flush(self) -> None:
        """Have RocksDB's own threads flush every CF's memtable; returns at once (``Rdict.flush``
        flushes only the default CF, and with ``wait`` it stops the caller for the whole flush)."""
        for cf in self._cfs.values():
            cf.flush(False)

    def flushing(self) -> bool:
        """Whether a memtable flush started by :meth:`start_flush` is still under way."""
        return any(cf.property_int_value("rocksdb.num-immutable-mem-table") for cf in self._cfs.values())

    def checkpoint(self, path: str) -> None:
        """A consistent copy of every CF's committed rows in the new directory ``path``: RocksDB
        hard-links the immutable SST files, so this is cheap whatever the DB's size."""
        from rocksdict import Checkpoint

        Checkpoint(self._db).create_checkpoint(path)

    def close(self) -> None:
        """Close the DB; the pending batch is dropped. RocksDB keeps its LOCK while any CF handle
        lives, so they are released (and collected) first."""
        if self._db is None:
            return
        self._cfs.clear()
        self._handles.clear()
        self._kv = self._kv_handle = self._meta_handle = None
        self._batch = None
        gc.collect()
        self._db.close()
        self._db = None
