"""``POST /v3/maintenance/snapshot``: Maintenance.Snapshot through the JSON gateway.

As grpc-gateway serves a server stream: the body is one SnapshotRequest (``{}``), the answer is
newline-delimited ``{"result": SnapshotResponse}`` objects (``blob`` in base64, the last one the
sha256 of the others), one HTTP chunk each. The chunks come from
:func:`node.snapshot_stream.snapshot_chunks`, as for gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2
from node.api import Client
from node.snapshot_stream import snapshot_chunks
from plugins.rest import jsonpb
from plugins.rest.http import Exchange, Handler, Headers

if TYPE_CHECKING:
    from actors.metrics import FrontendMetrics
    from plugins.rest.gateway import Route

ErrorAnswer = Callable[[Exchange, int, str, "Route", float], Awaitable[None]]


def snapshot_handler(
    client: Client,
    route: Route,
    counters: FrontendMetrics,
    error: ErrorAnswer,
    ok_headers: Headers,
    token: Callable[[Exchange], str | None],
) -> Handler:
    """The path's handler; ``error`` answers a failure before the stream starts, as unary calls do,
    ``token`` reads the client's auth token."""

    async def handler(exchange: Exchange) -> None:
        start = time.perf_counter()
        counters.started(route.grpc_type, route.service, route.grpc_method)
        try:
            request = jsonpb.decode(exchange.body, route.request)
        except jsonpb.JsonError as e:
            await error(exchange, Code.INVALID_ARGUMENT, str(e), route, start)
            return
        chunks = snapshot_chunks(client, request.SerializeToString(), token(exchange))
        try:
            chunk: bytes | None = await anext(chunks)
        except EtcdError as e:  # the core could not take a checkpoint
            await error(exchange, e.code, e.message, route, start)
            return
        code = "Canceled"
        try:
            exchange.begin(200, ok_headers)
            while chunk is not None:
                result = jsonpb.to_dict(rpc_pb2.SnapshotResponse.FromString(chunk))
                await exchange.write(jsonpb.encode({"result": result}) + b"\n")
                chunk = await anext(chunks, None)
            exchange.finish()
            code = "OK"
        finally:
            await chunks.aclose()  # removes the checkpoint, however the stream ended
            counters.handled(
                route.grpc_type, route.service, route.grpc_method, code, time.perf_counter() - start
            )

    return handler
