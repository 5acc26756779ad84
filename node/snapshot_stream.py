"""Maintenance.Snapshot for every frontend: the member's data streamed as etcd streams its bolt file.

The core only takes the checkpoint (:mod:`actors.storage.checkpoint`); the frontend process reads
its files (on a worker thread, hashing them there too, so neither the core's loop nor the frontend's
event loop waits on the disk) and yields serialized ``SnapshotResponse`` chunks with
``remaining_bytes`` counting down, then — etcd's protocol — one last chunk holding the sha256 of
everything sent, which ``etcdctl snapshot save`` appends to the file. The gRPC and REST plugins
only wrap these chunks in their own framing. The checkpoint directory is removed when the stream
ends, however it ends (a client that goes away included).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator

import structlog

from actors.proto import rpc_pb2
from actors.protocol import Method
from actors.storage.checkpoint import read_ticket
from actors.storage.snapshot import iter_payload
from node.api import Client

log = structlog.get_logger()


def _next_hashed(chunks: Iterator[bytes], digest: hashlib._Hash) -> bytes | None:
    """The next chunk, already hashed: the disk read and the hashing both stay off the event loop."""
    chunk = next(chunks, None)
    if chunk is not None:
        digest.update(chunk)
    return chunk


async def snapshot_chunks(client: Client, request: bytes, token: str | None) -> AsyncIterator[bytes]:
    """Serialized SnapshotResponses of a fresh checkpoint; raises EtcdError before the first one if
    the core cannot take it or refuses the client (only root may, once auth is on)."""
    directory, meta = read_ticket(await client.call(Method.SNAPSHOT, request, token))
    start = time.monotonic()
    try:
        chunks = iter_payload(meta, directory)
        remaining = meta.payload_size
        digest = hashlib.sha256()
        while True:
            chunk = await asyncio.to_thread(_next_hashed, chunks, digest)
            if chunk is None:
                break
            remaining -= len(chunk)
            yield rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=chunk).SerializeToString()
        yield rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=digest.digest()).SerializeToString()
        log.info(
            "snapshot_sent",
            revision=meta.revision,
            bytes=meta.file_size,
            seconds=round(time.monotonic() - start, 3),
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)
