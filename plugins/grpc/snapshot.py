"""Maintenance.Snapshot: stream a checkpoint of the member's data as etcd streams its bolt file.

The core only takes the checkpoint (:mod:`actors.storage.checkpoint`); this process reads its files
(on a worker thread, so neither the core's loop nor this event loop waits on the disk) and sends
them as ``SnapshotResponse`` chunks with ``remaining_bytes`` counting down, then — etcd's
protocol — one last chunk holding the sha256 of everything sent, which ``etcdctl snapshot save``
appends to the file. The checkpoint directory is removed when the stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import AsyncIterator, Callable

import grpc
import structlog

from actors.errors import EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Method
from actors.storage.checkpoint import read_ticket
from actors.storage.snapshot import iter_payload
from node.api import Client

log = structlog.get_logger()

SnapshotHandler = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]


def snapshot_stream(client: Client) -> SnapshotHandler:
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            answer = await client.call(Method.SNAPSHOT, request)
        except EtcdError as e:
            await context.abort(grpc.StatusCode[e.code.name], e.message)
        directory, meta = read_ticket(answer)
        start = time.monotonic()
        try:
            chunks = iter_payload(meta, directory)
            remaining = meta.payload_size
            digest = hashlib.sha256()
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                digest.update(chunk)
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

    return handler
