"""grpc.health.v1.Health for the native server: the node's frontend answers SERVING for "" (the
whole server), as etcd's does; any other service name is NOT_FOUND "unknown service" (grpc-go)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2

from plugins.grpc.native import CallContext

SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


async def _checked(request: bytes, context: CallContext) -> None:
    try:
        service = health_pb2.HealthCheckRequest.FromString(request).service
    except Exception:
        await context.abort(grpc.StatusCode.INTERNAL, "grpc: error unmarshalling request")
    if service:
        await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")


async def check(request: bytes, context: CallContext) -> bytes:
    await _checked(request, context)
    return SERVING


async def watch(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
    """SERVING, then nothing until the client goes: this server's status never changes."""
    await _checked(request, context)
    yield SERVING
    await asyncio.Event().wait()
