"""Maintenance.Snapshot over gRPC: the chunks of :func:`node.snapshot_stream.snapshot_chunks`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from actors.errors import EtcdError
from node.api import Client
from node.snapshot_stream import snapshot_chunks

SnapshotHandler = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]
TokenOf = Callable[[grpc.aio.ServicerContext], str | None]


def snapshot_stream(client: Client, token: TokenOf) -> SnapshotHandler:
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            async for chunk in snapshot_chunks(client, request, token(context)):
                yield chunk
        except EtcdError as e:  # the core could not take a checkpoint
            await context.abort(grpc.StatusCode[e.code.name], e.message)

    return handler
