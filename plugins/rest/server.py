"""The REST frontend: etcd's JSON gateway on the client port, sharing it with gRPC as etcd does.

When the gRPC plugin is enabled too (and neither has its own ``listen``), this frontend owns the
public client addresses. Each accepted connection is classified by its first bytes: the HTTP/2
connection preface, which every gRPC client sends first, hands the connection (TLS already ended
here) to the native gRPC server in this process (``plugins.grpc.native``); anything else is
HTTP/1.1 for the gateway.

Settings (``plugins: {rest: {...}}``): ``listen`` (a list of ``http://host:port`` or ``host:port``:
serve the gateway there instead, alone), ``request-timeout`` (seconds a client may take to send one
whole request, default 30), ``health-key`` (the key /health reads, default ``health``).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import structlog

from actors import metrics
from node import listeners, tls
from node.api import Client
from node.config import ConfigError, NodeConfig, split_urls
from plugins.grpc import server as grpc_server
from plugins.grpc.http2 import PREFACE
from plugins.grpc.native import GrpcProtocol
from plugins.grpc.server import shares_client_port
from plugins.rest.gateway import DEFAULT_VERSION, Gateway
from plugins.rest.http import HttpConnection, Limits

log = structlog.get_logger()


def _addresses(config: NodeConfig, listen: object) -> list[tuple[str, int, bool]]:
    """(host, port, TLS?) of each listener: ``https://`` URLs get TLS."""
    if not listen:
        urls = split_urls(config.listen_client_urls)
        return [(h, p, tls.is_tls_url(u)) for (h, p), u in zip(config.client_addresses(), urls, strict=True)]
    items = [listen] if isinstance(listen, str) else list(listen)  # type: ignore[call-overload]
    result = []
    for item in items:
        url = item if "://" in item else "http://" + item
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ConfigError(f"plugins.rest.listen: {item!r} is not host:port or http(s)://host:port")
        result.append((parts.hostname, parts.port, tls.is_tls_url(url)))
    return result


class PortProtocol(asyncio.Protocol):
    """A fresh connection on the shared port until its first bytes say HTTP/2 (gRPC) or HTTP/1.1."""

    def __init__(self, frontend: RestFrontend) -> None:
        self.frontend = frontend
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        n = min(len(self.buffer), len(PREFACE))
        if self.buffer[:n] != PREFACE[:n]:
            self._to_http()
        elif n == len(PREFACE):
            self._to_grpc()

    def eof_received(self) -> bool:
        return False

    def _to_http(self) -> None:
        protocol = self.frontend.http_protocol()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.buffer)
        self.buffer = b""

    def _to_grpc(self) -> None:
        service = grpc_server.shared_port_service
        if service is None:  # the gRPC plugin failed to start; frontend start fails then anyway
            log.warning("grpc_not_serving_on_shared_port")
            self.transport.close()
            return
        protocol = GrpcProtocol(service)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.buffer)
        self.buffer = b""


class RestFrontend:
    name = "rest"

    def __init__(self, config: NodeConfig, settings: dict) -> None:
        self.config = config
        self.settings = settings
        self.addresses = _addresses(config, settings.get("listen"))
        self.shared = shares_client_port(config)
        timeout = float(settings.get("request-timeout", settings.get("request_timeout", 30.0)))
        self.limits = Limits(max_body=0, request_timeout=timeout)
        self.health_key = str(settings.get("health-key", "health")).encode()
        self.gateway: Gateway | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: set[asyncio.Protocol] = set()

    def http_protocol(self) -> HttpConnection:
        assert self.gateway is not None
        return HttpConnection(self.gateway, self.limits)

    async def start(self, client: Client) -> None:
        self.gateway = Gateway(client, self.config.max_request_bytes, self.health_key)
        self.limits.max_body = self.gateway.max_body
        metrics.frontend().version.labels(DEFAULT_VERSION).set(1)
        factory = (lambda: PortProtocol(self)) if self.shared else self.http_protocol
        context = tls.server_context(self.config) if any(s for _, _, s in self.addresses) else None
        self.servers = await listeners.listen(factory, self.addresses, context)
        log.info("rest_serving", addresses=listeners.urls(self.addresses), shares_with_grpc=self.shared)

    async def stop(self, grace: float) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), grace)
