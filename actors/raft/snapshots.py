"""Raft snapshot transfer: the kv DB's checkpoint streamed to a follower the leader's log no longer covers.

The data is a cairn snapshot file (:mod:`actors.storage.snapshot`: header, checkpoint files,
sha256 trailer), cut into chunks sent over the peer link, a window of them in flight, each
acknowledged by the follower. The last chunk also carries the raft ``SNAP`` message, so the
follower steps it only once it holds the whole file and has verified and unpacked it: the core
then hands the snapshot out in a Ready, and the raft actor has the storage actor swap its kv DB
for the unpacked one before anything else of that Ready.

A chunk that cannot be sent waits for the next pump; a transfer with no acknowledgement for
:data:`STALL_TIMEOUT` seconds, or refused by the follower, ends as a failure (the leader's core
then retries with a new snapshot once the follower answers again).

Chunk: ``transfer:u64 seq:u32 last:u8 message_len:u32 message data``; acknowledgement:
``transfer:u64 seq:u32 ok:u8``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from actors.storage.snapshot import SnapshotMeta, iter_payload

log = structlog.get_logger()

CHUNK = struct.Struct("<QIBI")
ACK = struct.Struct("<QIB")
CHUNK_BYTES = 1 << 20
WINDOW = 4  # chunks in flight per transfer
STALL_TIMEOUT = 10.0


def _chunks(meta: SnapshotMeta, directory: str) -> Iterator[bytes]:
    """The snapshot file's bytes in pieces of about CHUNK_BYTES, the sha256 trailer last and alone."""
    digest = hashlib.sha256()
    buf: list[bytes] = []
    size = 0
    for piece in iter_payload(meta, directory, chunk_size=CHUNK_BYTES):
        digest.update(piece)
        buf.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)
    yield digest.digest()


class Outgoing:
    """One snapshot on its way to one follower (leader side)."""

    def __init__(
        self, peer: int, transfer: int, message: bytes, directory: str, meta: SnapshotMeta, now: float
    ) -> None:
        self.peer = peer
        self.transfer = transfer
        self.message = message  # the encoded raft SNAP message, sent with the last chunk
        self.directory = directory
        self.chunks = _chunks(meta, directory)
        self.held: bytes | None = next(self.chunks)
        self.upcoming: bytes | None = next(self.chunks, None)
        self.seq = 0  # sequence number of ``held``
        self.acked = -1
        self.last_progress = now
        self.sent_bytes = 0

    def frames(self) -> Iterator[bytes]:
        """Chunk frames the window allows now; call :meth:`sent` after each one that went out."""
        while self.held is not None and self.seq - self.acked <= WINDOW:
            last = self.upcoming is None
            message = self.message if last else b""
            yield CHUNK.pack(self.transfer, self.seq, int(last), len(message)) + message + self.held

    def sent(self) -> None:
        self.sent_bytes += len(self.held or b"")
        self.held = self.upcoming
        self.upcoming = next(self.chunks, None) if self.held is not None else None
        self.seq += 1

    @property
    def finished(self) -> bool:
        """Every chunk sent and acknowledged."""
        return self.held is None and self.acked == self.seq - 1

    def on_ack(self, seq: int, now: float) -> None:
        if seq > self.acked:
            self.acked = seq
            self.last_progress = now

    def stalled(self, now: float) -> bool:
        return now - self.last_progress > STALL_TIMEOUT

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def parse_ack(payload: bytes) -> tuple[int, int, bool]:
    """``(transfer, seq, ok)``; struct.error if malformed."""
    transfer, seq, ok = ACK.unpack_from(payload)
    return transfer, seq, bool(ok)


@dataclass(slots=True)
class Received:
    """A complete snapshot file and the SNAP message that came with it."""

    path: str
    message: bytes


class Incoming:
    """The snapshot file being received from the leader (follower side); one at a time."""

    def __init__(self, directory: str) -> None:
        self.directory = directory  # where snapshot files are received and unpacked
        self.transfer = 0
        self.next_seq = 0
        self.file = None
        self.path = ""

    def on_chunk(self, payload: bytes) -> tuple[bytes, Received | None]:
        """Write a chunk; returns the acknowledgement to send and the file once complete."""
        transfer, seq, last, message_len = CHUNK.unpack_from(payload)
        start = CHUNK.size
        if seq == 0:
            self._open(transfer)
        elif transfer != self.transfer or seq != self.next_seq:
            log.warning("snapshot_chunk_unexpected", transfer=transfer, seq=seq, expected=self.next_seq)
            return ACK.pack(transfer, seq, 0), None
        message = payload[start : start + message_len]
        assert self.file is not None
        self.file.write(payload[start + message_len :])
        self.next_seq = seq + 1
        ack = ACK.pack(transfer, seq, 1)
        if not last:
            return ack, None
        self.file.close()
        self.file = None
        return ack, Received(self.path, message)

    def _open(self, transfer: int) -> None:
        self.close()
        os.makedirs(self.directory, exist_ok=True)
        self.transfer = transfer
        self.next_seq = 0
        self.path = os.path.join(self.directory, f"incoming-{transfer:x}.snap")
        self.file = open(self.path, "wb")  # noqa: SIM115 - open across chunks, closed by the last one

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            os.unlink(self.path)
