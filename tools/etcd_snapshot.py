"""Snapshots saved from a real etcd (3.4/3.5): status as ``etcdctl snapshot status`` prints it, and
import into a cairn kv DB — the migration path from etcd to cairn.

etcd's backend buckets and how they map (etcd's mvcc/kvstore.go, lease/lessor.go, schema):

* ``key``: ``main:8 BE + "_" + sub:8 BE`` (+ ``"t"`` on a deletion) -> serialized mvccpb.KeyValue.
  cairn's ``kv`` rows hold the very same values under ``main + sub`` (+ ``"t"``), so rows are copied
  with their revisions, versions and leases unchanged.
* ``lease``: lease id (int64 BE) -> leasepb.Lease {ID=1, TTL=2, RemainingTTL=3}: granted again in
  cairn's lease table with the same id, TTL and checkpointed remaining TTL.
* ``meta``: ``finishedCompactRev`` / ``scheduledCompactRev`` (revision bytes): the compaction is
  replayed through cairn's own compact, so reads below it are refused exactly as etcd refuses them.
  ``consistent_index`` (and 3.5's term/confState) belong to the old cluster's raft log: dropped.
* ``members``, ``members_removed``, ``cluster``: the old membership; a restore makes a new one.
* ``auth``, ``authUsers``, ``authRoles``: not imported (reported), ``alarm``: dropped as etcd's restore would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from actors.errors import EtcdError
from actors.lease.table import LeaseTable
from actors.proto import kv_pb2, rpc_pb2
from actors.protocol import Method
from actors.storage.backend import META, Backend
from actors.storage.keyindex import TOMBSTONE
from actors.storage.mvcc import COMPACT_REVISION, MvccStore
from actors.storage.snapshot import Progress
from tools.bbolt import BoltDB, BoltError

KeyValue = kv_pb2.KeyValue
BATCH_ROWS = 10_000  # rows per RocksDB write while importing


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), continuing from ``crc``: the hash etcdctl's snapshot status prints."""
    table = _CRC32C
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(slots=True)
class EtcdStatus:
    """etcd's snapshot.Status of a bolt file, field for field."""

    hash: int
    revision: int
    total_key: int
    total_size: int


def status(db: BoltDB) -> EtcdStatus:
    """What ``etcdctl snapshot status`` reports: crc32c of every bucket name, key and value, the
    revision of the last ``key`` row, the number of rows of all buckets and the DB size."""
    crc, revision, total = 0, 0, 0
    for name in db.buckets():
        crc = crc32c(name, crc)
        for key, value in db.items(name):
            crc = crc32c(value, crc32c(key, crc))
            if name == b"key":
                revision = int.from_bytes(key[:8], "big")
            total += 1
    return EtcdStatus(crc, revision, total, db.size)


def _varints(data: bytes) -> dict[int, int]:
    """The varint fields of a small protobuf message (leasepb.Lease has nothing else)."""
    fields, i = {}, 0
    while i < len(data):
        tag, i = _varint(data, i)
        if tag & 7 != 0:
            raise BoltError(f"etcd lease record has a non-varint field {tag >> 3}")
        value, i = _varint(data, i)
        fields[tag >> 3] = value - (1 << 64) if value >= 1 << 63 else value
    return fields


def _varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise BoltError("etcd lease record is truncated")
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _revision(raw: bytes | None) -> int:
    """etcd's revision bytes (``main:8 + "_" + sub:8``) as the main revision; 0 when absent."""
    return int.from_bytes(raw[:8], "big") if raw else 0


def kv_row(etcd_key: bytes) -> bytes:
    """cairn's ``kv`` row key for an etcd ``key`` bucket key."""
    if len(etcd_key) not in (17, 18) or etcd_key[8:9] != b"_" or etcd_key[17:] not in (b"", b"t"):
        raise BoltError(f"etcd key bucket holds a row key that is not a revision: {etcd_key.hex()}")
    row = etcd_key[:8] + etcd_key[9:17]
    return row + TOMBSTONE if len(etcd_key) == 18 else row


@dataclass(slots=True)
class Imported:
    revision: int
    compact_revision: int
    rows: int
    keys: int
    leases: int
    skipped: list[str] = field(default_factory=list)  # what was not imported, said to the user


def import_etcd(db: BoltDB, backend: Backend, progress: Progress | None = None) -> Imported:
    """Fill the empty ``backend`` with the keys, history, leases and compaction of an etcd DB."""
    rows = 0
    parse = KeyValue.FromString
    for etcd_key, value in db.items(b"key"):
        try:
            parse(value)
        except DecodeError:
            raise BoltError(f"etcd key row {etcd_key.hex()} does not hold an mvccpb.KeyValue") from None
        backend.put_kv(kv_row(etcd_key), value)
        rows += 1
        if rows % BATCH_ROWS == 0:
            backend.commit(0)
            if progress:
                progress(BATCH_ROWS)
    table = LeaseTable(backend, min_ttl=1)  # TTLs as etcd granted them (already >= its minimum)
    leases = 0
    for lease_key, value in db.items(b"lease"):
        fields = _varints(value)
        lease_id = fields.get(1, int.from_bytes(lease_key, "big", signed=True))
        try:
            table.grant(lease_id, fields.get(2, 0))
        except EtcdError as e:
            raise BoltError(f"etcd lease record {lease_key.hex()} cannot be imported: {e.message}") from None
        if fields.get(3):
            table.checkpoint(lease_id, fields[3])
        leases += 1
    backend.commit(0)
    if progress:
        progress(rows % BATCH_ROWS)
    meta = dict(db.items(b"meta"))
    finished = _revision(meta.get(b"finishedCompactRev"))
    scheduled = _revision(meta.get(b"scheduledCompactRev"))
    if finished:  # etcd already dropped the rows below it; the revision is at least this (kvstore.restore)
        backend.put(META, COMPACT_REVISION, finished.to_bytes(8, "big", signed=True))
        backend.commit(0)
    store = MvccStore(backend, LeaseTable(backend, min_ttl=1))
    if finished < scheduled <= store.revision:  # a compaction etcd had not finished: etcd redoes it on start
        store.apply(Method.COMPACT, rpc_pb2.CompactionRequest(revision=scheduled).SerializeToString())
        backend.commit(0)
    everything = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)
    skipped = []
    users = sum(1 for _ in db.items(b"authUsers"))
    roles = sum(1 for _ in db.items(b"authRoles"))
    if users or roles:
        skipped.append(
            f"etcd auth data ({users} users, {roles} roles) was not imported: add them to cairn again"
        )
    return Imported(
        store.revision, store.compact_revision, rows, store.range(everything).count, leases, skipped
    )
