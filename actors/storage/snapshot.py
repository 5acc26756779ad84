"""cairn's snapshot file: a RocksDB checkpoint of a member's kv DB packed into one verifiable stream.

The same bytes serve ``etcdctl snapshot save`` (Maintenance.Snapshot streams them), ``cairnctl
snapshot status/restore`` and raft snapshot transfer. Taking one is cheap: a checkpoint hard-links
the DB's immutable SST files, so the storage actor only pauses for the checkpoint call itself, and
whoever streams the result reads plain files without the core's help.

Layout (integers little-endian)::

    magic "CAIRNSN1"  header_length:u32  header (JSON: SnapshotMeta)
    file 1 bytes, file 2 bytes, ... (names and sizes in the header, in that order)
    zero padding to a multiple of 512 bytes
    sha256 of everything above (32 bytes)

The trailer is etcd's own convention: etcd's server appends the sha256 of the bolt file as the last
chunk of the stream and ``etcdctl snapshot save`` refuses a download whose size is not
``512 * n + 32``; padding the payload to 512 bytes keeps cairn's files acceptable to it. A file cut
short, or with any byte changed, fails the size check or the checksum and is refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import BinaryIO

import orjson

MAGIC = b"CAIRNSN1"
_HEADER_LENGTH = struct.Struct("<I")
ALIGN = 512
CHECKSUM_SIZE = 32
CHUNK_SIZE = 1 << 20  # per SnapshotResponse: etcd sends 32 KiB, but per-message costs dominate in Python
MAX_HEADER = 1 << 20

Progress = Callable[[int], None]  # called with the number of bytes just processed


class SnapshotError(ValueError):
    """A snapshot file that cannot be used: truncated, altered, or not a snapshot at all."""


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    """What a snapshot holds, written at its start so status needs no unpacking."""

    revision: int
    compact_revision: int
    keys: int  # live keys at ``revision``
    applied_index: int  # raft index of the last entry applied to the data
    member_id: int
    cluster_id: int
    files: tuple[tuple[str, int], ...] = field(default_factory=tuple)  # checkpoint files: name, size
    version: int = 1

    def encode(self) -> bytes:
        """The header: magic, length, JSON."""
        body = orjson.dumps(asdict(self))
        return MAGIC + _HEADER_LENGTH.pack(len(body)) + body

    @property
    def data_size(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def payload_size(self) -> int:
        """Bytes before the checksum: header, files, padding."""
        return _aligned(len(self.encode()) + self.data_size)

    @property
    def file_size(self) -> int:
        """Bytes of the whole snapshot file, checksum included."""
        return self.payload_size + CHECKSUM_SIZE


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def decode_header(data: bytes) -> SnapshotMeta:
    """Parse the header at the start of ``data`` (which may hold more than the header)."""
    if data[: len(MAGIC)] != MAGIC:
        raise SnapshotError("not a cairn snapshot (no CAIRNSN1 header)")
    start = len(MAGIC) + _HEADER_LENGTH.size
    if len(data) < start:
        raise SnapshotError("snapshot header is truncated")
    (length,) = _HEADER_LENGTH.unpack_from(data, len(MAGIC))
    if length > MAX_HEADER or len(data) < start + length:
        raise SnapshotError("snapshot header is truncated or corrupt")
    try:
        fields = orjson.loads(data[start : start + length])
        files = tuple((str(name), int(size)) for name, size in fields.pop("files"))
        meta = SnapshotMeta(files=files, **fields)
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as e:
        raise SnapshotError(f"snapshot header is corrupt: {e}") from None
    if meta.version != 1:
        raise SnapshotError(f"snapshot format version {meta.version} is not supported (this cairn reads 1)")
    for name, size in files:
        if size < 0 or not name or name != os.path.basename(name) or name in (".", ".."):
            raise SnapshotError(f"snapshot header is corrupt: bad file entry {name!r}")
    return meta


def is_cairn_snapshot(path: str) -> bool:
    """Whether the file at ``path`` starts like a cairn snapshot (say so before judging integrity)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


# -- writing --------------------------------------------------------------------------------------


def checkpoint_files(directory: str) -> tuple[tuple[str, int], ...]:
    """The files of a checkpoint directory with their sizes, in name order."""
    names = sorted(os.listdir(directory))
    return tuple((name, os.path.getsize(os.path.join(directory, name))) for name in names)


def iter_payload(meta: SnapshotMeta, directory: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The payload (header, files, padding) in chunks of at most ``chunk_size`` bytes; the caller
    hashes them and sends the digest last. A checkpoint file whose size changed is an error: the
    header already promised its size."""
    header = meta.encode()
    yield header
    for name, size in meta.files:
        left = size
        with open(os.path.join(directory, name), "rb") as f:
            while left:
                chunk = f.read(min(chunk_size, left))
                if not chunk:
                    raise SnapshotError(f"checkpoint file {name} shrank while being sent")
                left -= len(chunk)
                yield chunk
    padding = meta.payload_size - len(header) - meta.data_size
    if padding:
        yield bytes(padding)


def write_snapshot(meta: SnapshotMeta, directory: str, out: BinaryIO) -> bytes:
    """Write the snapshot file of a checkpoint directory to ``out``; return its sha256."""
    digest = hashlib.sha256()
    for chunk in iter_payload(meta, directory):
        digest.update(chunk)
        out.write(chunk)
    sha = digest.digest()
    out.write(sha)
    return sha


# -- reading ------------------------------------------------------------------------------------


def _check_size(size: int) -> None:
    if size < ALIGN + CHECKSUM_SIZE or size % ALIGN != CHECKSUM_SIZE:
        raise SnapshotError(
            f"snapshot file is truncated or damaged: {size} bytes is not 512*n + 32 (data and its sha256)"
        )


def _read_meta(f: BinaryIO) -> SnapshotMeta:
    head = f.read(len(MAGIC) + _HEADER_LENGTH.size)
    if head[: len(MAGIC)] == MAGIC and len(head) == len(MAGIC) + _HEADER_LENGTH.size:
        (length,) = _HEADER_LENGTH.unpack_from(head, len(MAGIC))
        head += f.read(min(length, MAX_HEADER))
    return decode_header(head)


def read_meta(path: str, verify: bool = True, progress: Progress | None = None) -> SnapshotMeta:
    """The metadata of the snapshot file at ``path``; with ``verify``, after checking its sha256."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if verify:
            _check_size(size)
            _verify_stream(f, size, progress)
            f.seek(0)
        meta = _read_meta(f)
    if verify and meta.file_size != size:
        raise SnapshotError(f"snapshot header says {meta.file_size} bytes, the file has {size}")
    return meta


def _verify_stream(f: BinaryIO, size: int, progress: Progress | None) -> None:
    digest = hashlib.sha256()
    left = size - CHECKSUM_SIZE
    while left:
        chunk = f.read(min(1 << 20, left))
        if not chunk:
            raise SnapshotError("snapshot file is truncated")
        digest.update(chunk)
        left -= len(chunk)
        if progress:
            progress(len(chunk))
    expected = f.read(CHECKSUM_SIZE)
    if digest.digest() != expected:
        raise SnapshotError(
            f"snapshot file is corrupt: its sha256 {digest.hexdigest()} "
            f"does not match the one at its end {expected.hex()}"
        )


def extract(path: str, directory: str, verify: bool = True, progress: Progress | None = None) -> SnapshotMeta:
    """Unpack the checkpoint files of the snapshot at ``path`` into the new ``directory``.

    Verifies the sha256 in the same pass (unless ``verify`` is off); on any failure the directory
    is removed again, so a refused file leaves nothing behind.
    """
    size = os.path.getsize(path)
    if verify:
        _check_size(size)
    os.makedirs(directory)
    try:
        with open(path, "rb") as f:
            meta = _read_meta(f)
            if verify and meta.file_size != size:
                raise SnapshotError(
                    f"snapshot file is truncated or damaged: its header says {meta.file_size} bytes, "
                    f"the file has {size}"
                )
            digest = hashlib.sha256()
            header = meta.encode()
            digest.update(header)
            f.seek(len(header))
            if progress:
                progress(len(header))
            for name, file_size in meta.files:
                _copy_out(f, os.path.join(directory, name), file_size, digest, progress)
            padding = f.read(meta.payload_size - len(header) - meta.data_size)
            digest.update(padding)
            if progress:
                progress(len(padding) + CHECKSUM_SIZE)
            if verify and digest.digest() != f.read(CHECKSUM_SIZE):
                raise SnapshotError("snapshot file is corrupt: its sha256 does not match the trailer")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return meta


def _copy_out(f: BinaryIO, target: str, size: int, digest: hashlib._Hash, progress: Progress | None) -> None:
    left = size
    with open(target, "wb") as out:
        while left:
            chunk = f.read(min(1 << 20, left))
            if not chunk:
                raise SnapshotError("snapshot file is truncated")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
            if progress:
                progress(len(chunk))
        out.flush()
        os.fsync(out.fileno())
