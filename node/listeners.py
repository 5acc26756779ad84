"""The client listeners of the frontends: one asyncio server per (host, port, TLS?) address."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from node import tls


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    addresses: list[tuple[str, int, bool]],
    context: ssl.SSLContext | None,
) -> list[asyncio.AbstractServer]:
    """Bind every address (``context`` on the TLS ones); a client gets the handshake timeout."""
    loop = asyncio.get_running_loop()
    servers = []
    for host, port, secure in addresses:
        server = await loop.create_server(
            factory,
            host,
            port,
            reuse_address=True,
            backlog=1024,
            ssl=context if secure else None,
            ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT if secure else None,
        )
        servers.append(server)
    return servers


def urls(addresses: list[tuple[str, int, bool]]) -> list[str]:
    return [f"{'https' if secure else 'http'}://{host}:{port}" for host, port, secure in addresses]
