"""Maintenance.Snapshot over gRPC: the chunks of :func:`node.snapshot_stream.snapshot_chunks`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from node.api import Client
from node.snapshot_stream import snapshot_chunks
from plugins.grpc.native import CallContext

SnapshotHandler = Callable[[bytes, CallContext], AsyncIterator[bytes]]
TokenOf = Callable[[CallContext], str | None]


def snapshot_stream(client: Client, token: TokenOf) -> SnapshotHandler:
    """The core's EtcdError (it could not take a checkpoint) ends the stream with etcd's status."""

    def handler(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
        return snapshot_chunks(client, request, token(context))

    return handler
