"""A read-only reader of bbolt files (etcd's backend, and what ``etcdctl snapshot save`` writes).

Written from bbolt's documented on-disk format, so migrating from etcd needs no Go:

* the file is pages of ``page_size`` bytes; every page starts with a 16-byte header
  ``id:u64 flags:u16 count:u16 overflow:u32`` (a page spans ``overflow + 1`` pages) and flags say
  branch (0x01), leaf (0x02), meta (0x04) or freelist (0x10);
* pages 0 and 1 are meta pages: ``magic:u32 (0xED0CDAED) version:u32 (2) page_size:u32 flags:u32
  root:(pgid:u64 sequence:u64) freelist:u64 pgid:u64 txid:u64 checksum:u64`` where checksum is
  FNV-1a 64 of the fields before it; the valid one with the higher txid is current;
* a B+tree's branch page holds ``count`` elements ``pos:u32 ksize:u32 pgid:u64``, a leaf page
  ``flags:u32 pos:u32 ksize:u32 vsize:u32`` (flags 0x01: the value is a nested bucket), ``pos``
  counting from the element itself; keys come in order;
* the root bucket maps bucket names to bucket headers ``root:u64 sequence:u64``; ``root == 0``
  means an inline bucket whose leaf page follows the header inside the value.

Every offset is checked against the file, so a truncated or damaged file gives :class:`BoltError`,
never an IndexError or an endless walk.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01

_PAGE = struct.Struct("<QHHI")
_META = struct.Struct("<IIII QQ QQQ Q")
_BRANCH = struct.Struct("<IIQ")
_LEAF = struct.Struct("<IIII")
_BUCKET = struct.Struct("<QQ")
_META_SUMMED = _META.size - 8  # bytes of the meta the checksum covers
MAX_DEPTH = 64  # deeper than any real bbolt tree: a cycle in a damaged file


class BoltError(ValueError):
    """A file that is not a readable bbolt database."""


def is_bolt(head: bytes) -> bool:
    """Whether ``head`` (the file's first bytes) starts like a bbolt database."""
    return len(head) >= _PAGE.size + 4 and struct.unpack_from("<I", head, _PAGE.size)[0] == MAGIC


def map_file(path: str) -> memoryview:
    """The file's bytes, memory-mapped read-only: a DB of gigabytes is not read into memory. The
    mapping is released when the last view of it is dropped (never closed under a live view)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))


def fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class BoltDB:
    """The current state of a bbolt file held in memory (``data``: the file's bytes or a mmap)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        metas = []
        for offset in (0, None):
            if offset is None:  # the second meta page sits one page further, by the first's page size
                if not metas:
                    break
                offset = metas[0][2]
            meta = self._meta(offset)
            if meta is not None:
                metas.append(meta)
        if not metas:
            raise BoltError("not an etcd/bbolt database (no valid meta page)")
        _, _, self.page_size, _, self.root, _, _, self.high_water, self.txid, _ = max(
            metas, key=lambda m: m[8]
        )
        if self.page_size < 512 or self.page_size & (self.page_size - 1):
            raise BoltError(f"bbolt page size {self.page_size} is not a power of two")

    def _meta(self, offset: int) -> tuple | None:
        start = offset + _PAGE.size
        if len(self.data) < start + _META.size:
            return None
        fields = _META.unpack_from(self.data, start)
        magic, version, checksum = fields[0], fields[1], fields[-1]
        if magic != MAGIC or version != VERSION:
            return None
        if checksum != 0 and checksum != fnv64a(self.data[start : start + _META_SUMMED]):
            return None
        return fields

    @property
    def size(self) -> int:
        """Bytes the database uses (bbolt's ``Tx.Size``: high-water page id times page size)."""
        return self.high_water * self.page_size

    def _page(self, pgid: int) -> tuple[int, int, int, int]:
        """``(offset, flags, count, end)`` of page ``pgid`` after bounds checks."""
        offset = pgid * self.page_size
        if pgid < 2 or pgid >= self.high_water or offset + _PAGE.size > len(self.data):
            raise BoltError(f"bbolt file is truncated or corrupt: page {pgid} is outside the file")
        page_id, flags, count, overflow = _PAGE.unpack_from(self.data, offset)
        end = offset + (overflow + 1) * self.page_size
        if page_id != pgid or end > len(self.data):
            raise BoltError(f"bbolt file is corrupt: page {pgid} is damaged or truncated")
        return offset, flags, count, end

    def _walk(self, offset: int, flags: int, count: int, end: int, depth: int) -> Iterator[tuple]:
        """``(key, value, element flags)`` of the tree rooted at a page, in key order."""
        if depth > MAX_DEPTH:
            raise BoltError("bbolt file is corrupt: its tree is too deep (a cycle?)")
        if flags & LEAF:
            yield from _leaf_items(self.data, offset, count, end)
        elif flags & BRANCH:
            base = offset + _PAGE.size
            if base + count * _BRANCH.size > end:
                raise BoltError("bbolt file is corrupt: a branch page overflows")
            for i in range(count):
                _, _, child = _BRANCH.unpack_from(self.data, base + i * _BRANCH.size)
                yield from self._walk(*self._page(child), depth + 1)
        else:
            raise BoltError(f"bbolt file is corrupt: page flags {flags:#x} in a tree")

    def _tree(self, root: int) -> Iterator[tuple]:
        return self._walk(*self._page(root), 0)

    def buckets(self) -> list[bytes]:
        """The names of the top-level buckets, in order."""
        return [key for key, _, flags in self._tree(self.root) if flags & BUCKET_LEAF]

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of a top-level bucket in key order (nothing if it does not exist);
        nested buckets, which etcd does not use, are skipped."""
        for name, value, flags in self._tree(self.root):
            if name == bucket and flags & BUCKET_LEAF:
                yield from self._bucket_items(value)
                return

    def _bucket_items(self, header: memoryview) -> Iterator[tuple[bytes, bytes]]:
        if len(header) < _BUCKET.size:
            raise BoltError("bbolt file is corrupt: a bucket header is short")
        root, _ = _BUCKET.unpack_from(header)
        if root:
            tree = self._tree(root)
        else:  # inline: a leaf page right after the header, inside the value
            inline = header[_BUCKET.size :]
            if len(inline) < _PAGE.size:
                raise BoltError("bbolt file is corrupt: an inline bucket is short")
            _, flags, count, _ = _PAGE.unpack_from(inline)
            if not flags & LEAF:
                raise BoltError("bbolt file is corrupt: an inline bucket is not a leaf page")
            tree = _leaf_items(inline, 0, count, len(inline))
        for key, value, flags in tree:
            if not flags & BUCKET_LEAF:
                yield key, bytes(value)


def _leaf_items(data: memoryview, offset: int, count: int, end: int) -> Iterator[tuple]:
    """``(key, value, element flags)`` of the leaf page at ``offset`` (ending at ``end``)."""
    base = offset + _PAGE.size
    if base + count * _LEAF.size > end:
        raise BoltError("bbolt file is corrupt: a leaf page overflows")
    for i in range(count):
        element = base + i * _LEAF.size
        flags, pos, ksize, vsize = _LEAF.unpack_from(data, element)
        k = element + pos
        if k + ksize + vsize > end:
            raise BoltError("bbolt file is corrupt: a key or value runs past its page")
        yield bytes(data[k : k + ksize]), data[k + ksize : k + ksize + vsize], flags
