"""grpc.health.v1.Health: the frontend answers SERVING for "" (the whole server), as etcd's does;
any other service name is NOT_FOUND "unknown service" (grpc-go's text)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from actors.errors import Code, EtcdError
from plugins.grpc.native import CallContext

SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


def _check(request: bytes) -> None:
    try:
        service = health_pb2.HealthCheckRequest.FromString(request).service
    except DecodeError as e:
        raise EtcdError(Code.INTERNAL, f"grpc: error unmarshalling request: {e}") from None
    if service:
        raise EtcdError(Code.NOT_FOUND, "unknown service")


async def check(request: bytes, context: CallContext) -> bytes:
    _check(request)
    return SERVING


async def watch(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
    """SERVING, then nothing until the client goes: this server's status never changes."""
    _check(request)
    yield SERVING
    await asyncio.Event().wait()
