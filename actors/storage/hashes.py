"""The Maintenance hashes: etcd's HashKV (MVCC rows up to a revision) and Hash (whole backend).

HashKV is the cross-member corruption check: members that applied the same log hold the same
rows, so they answer the same hash whatever their RocksDB files look like. cairn hashes exactly
what etcd's ``store.HashByRev`` hashes (CRC-32C of the bucket name ``key``, then each row's key
and value in revision order), with each row key written in etcd's layout (8-byte main revision,
``_``, 8-byte sub revision, ``t`` on a deletion): its rows hold the same serialized
``mvccpb.KeyValue`` values as etcd's, so the same operations give the same hash as a real etcd.

Hash (the whole backend) has no such counterpart: etcd's covers bolt buckets cairn does not have.
Here it covers every column family except the member-local applied index.
"""

from __future__ import annotations

from collections.abc import Iterable

import google_crc32c

from actors.storage.keyindex import REVISION_SIZE, main_revision

CHUNK = 1 << 20  # bytes handed to the CRC at once: one C call per chunk, not two per row

Row = tuple[bytes, bytes]


def etcd_revision(row: bytes) -> bytes:
    """A ``kv`` row key in etcd's layout: main, ``_``, sub, and ``t`` if it is a tombstone."""
    return row[:8] + b"_" + row[8:REVISION_SIZE] + (b"t" if len(row) != REVISION_SIZE else b"")


class Crc:
    """CRC-32C (Castagnoli, as Go's crc32.MakeTable(crc32.Castagnoli)) over many small writes."""

    def __init__(self) -> None:
        self.value = 0
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        self.value = google_crc32c.extend(self.value, b"".join(self._parts))
        self._parts.clear()
        self._size = 0

    def sum(self) -> int:
        self._flush()
        return self.value


def hash_kv(rows: Iterable[Row], keep: set[bytes], compact_revision: int) -> int:
    """etcd's HashByRev over ``rows`` (the ``kv`` rows up to the hashed revision, in order).

    Rows at or below the compact revision count only if ``keep`` (the revisions a compaction at
    the hashed revision would keep) holds them, and, etcd's quirk, all of them when ``keep`` is
    empty. That makes the hash independent of how far a member's compaction has got.
    """
    crc = Crc()
    crc.write(b"key")
    for row, value in rows:
        if keep and main_revision(row) <= compact_revision and row not in keep:
            continue
        crc.write(etcd_revision(row))
        crc.write(value)
    return crc.sum()


def hash_backend(
    column_families: Iterable[tuple[str, Iterable[Row]]], skip: frozenset[tuple[str, bytes]]
) -> int:
    """CRC-32C of each column family's name and rows in order, leaving out the ``(cf, key)`` in ``skip``."""
    crc = Crc()
    for name, rows in column_families:
        crc.write(name.encode())
        for key, value in rows:
            if (name, key) not in skip:
                crc.write(key)
                crc.write(value)
    return crc.sum()
