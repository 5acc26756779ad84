"""grpc.health.v1.Health: the frontend answers SERVING for "" (the whole server), as etcd's does;
any other service name is NOT_FOUND "unknown service" (grpc-go's text)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from actors.errors import Code, EtcdError
from plugins.grpc.native import CallContext

# HealthCheckRequest{service=1: string} / HealthCheckResponse{status=1: enum, SERVING = 1}
SERVING = b"\x08\x01"


def _check(request: bytes) -> None:
    if request[:1] == b"\x0a" and len(request) > 2:  # a non-empty service name
        raise EtcdError(Code.NOT_FOUND, "unknown service")
    if request and request[:1] != b"\x0a":
        raise EtcdError(Code.INTERNAL, "grpc: error unmarshalling request")


async def check(request: bytes, context: CallContext) -> bytes:
    _check(request)
    return SERVING


async def watch(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
    """SERVING, then nothing until the client goes: this server's status never changes."""
    _check(request)
    yield SERVING
    await asyncio.Event().wait()
