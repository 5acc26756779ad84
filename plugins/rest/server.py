"""The REST frontend: etcd's JSON gateway on the client port, sharing it with gRPC as etcd does.

When the gRPC plugin is enabled too (and neither has its own ``listen``), this frontend owns the
public client addresses and gRPC listens on a unix socket (``plugins.grpc.server.internal_address``).
Each accepted connection is classified by its first bytes: the HTTP/2 connection preface, which
every gRPC client sends first, gets the connection spliced to the gRPC server; anything else is
HTTP/1.1 for the gateway. The splice copies whole reads with ``transport.write`` and passes write
backpressure back as ``pause_reading``, so its cost is a few syscalls per read, not per byte.

Settings (``plugins: {rest: {...}}``): ``listen`` (a list of ``http://host:port`` or ``host:port``:
serve the gateway there instead, alone), ``request-timeout`` (seconds a client may take to send one
whole request, default 30), ``health-key`` (the key /health reads, default ``health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import structlog

from actors import metrics
from node import tls
from node.api import Client
from node.config import ConfigError, NodeConfig, split_urls
from plugins.grpc import server as grpc_server
from plugins.grpc.native import GrpcProtocol, Service
from plugins.grpc.server import internal_address, shares_client_port
from plugins.rest.gateway import DEFAULT_VERSION, Gateway
from plugins.rest.http import HttpConnection, Limits

log = structlog.get_logger()

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SPLICE_LOW, SPLICE_HIGH = 64 * 1024, 1024 * 1024  # write buffer marks on each side of a splice


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


class Pipe(asyncio.Protocol):
    """One direction-pair end of a splice: what this transport reads goes to the peer."""

    __slots__ = ("on_lost", "peer", "transport")

    def __init__(self, peer: asyncio.Transport, on_lost: Callable[[], None] | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=SPLICE_HIGH, low=SPLICE_LOW)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer.can_write_eof():
            self.peer.write_eof()
            return True  # half-close: the other direction may still be flowing
        return False

    def pause_writing(self) -> None:  # our outgoing buffer is full: stop reading what fills it
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()
        if self.on_lost is not None:
            self.on_lost()


class PortProtocol(asyncio.Protocol):
    """A fresh connection on the shared port until its first bytes say HTTP/2 (gRPC) or HTTP/1.1."""

    def __init__(self, frontend: RestFrontend) -> None:
        self.frontend = frontend
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.done = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        n = min(len(self.buffer), len(PREFACE))
        if self.buffer[:n] != PREFACE[:n]:
            self._to_http()
        elif len(self.buffer) >= len(PREFACE) and grpc_server.shared_port_service is not None:
            self._to_native(grpc_server.shared_port_service)
        elif len(self.buffer) >= len(PREFACE):
            self.done = True
            self.transport.pause_reading()
            self.task = asyncio.ensure_future(self._to_grpc())

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True

    def _to_http(self) -> None:
        protocol = self.frontend.http_protocol()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.buffer)
        self.buffer = b""

    def _to_native(self, service: Service) -> None:
        """The native gRPC server takes the connection over in this process (TLS ended here)."""
        self.done = True
        protocol = GrpcProtocol(service)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(self.buffer)
        self.buffer = b""

    async def _to_grpc(self) -> None:
        client = self.transport
        loop = asyncio.get_running_loop()
        common_name = tls.common_name(client.get_extra_info("peercert"))
        spliced = None if common_name is None else tls.SPLICED_PEERS.add(common_name)
        forget = None if spliced is None else functools.partial(tls.SPLICED_PEERS.remove, spliced)
        try:
            if self.frontend.grpc_path is None:
                raise ConnectionRefusedError("no gRPC server on this port")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if spliced is not None:  # gRPC reports this name as the peer: the CN's key
                    sock.bind("\0" + spliced)
                sock.setblocking(False)
                await loop.sock_connect(sock, self.frontend.grpc_path)
            except BaseException:
                sock.close()
                raise
            backend, _ = await loop.create_unix_connection(lambda: Pipe(client, forget), sock=sock)
        except OSError as e:
            log.warning("grpc_splice_failed", error=str(e))
            if forget is not None:
                forget()
            client.close()
            return
        if client.is_closing():
            backend.close()
            return
        pipe = Pipe(backend)  # type: ignore[arg-type]
        client.set_protocol(pipe)
        pipe.connection_made(client)
        backend.write(self.buffer)
        self.buffer = b""
        client.resume_reading()


class RestFrontend:
    name = "rest"

    def __init__(self, config: NodeConfig, settings: dict) -> None:
        self.config = config
        self.settings = settings
        self.addresses = _addresses(config, settings.get("listen"))
        self.grpc_path: str | None = None
        if shares_client_port(config):
            address = internal_address(config)
            if address.startswith("unix-abstract:"):
                self.grpc_path = "\0" + address[len("unix-abstract:") :]
            else:
                self.grpc_path = address[len("unix:") :]
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
        loop = asyncio.get_running_loop()
        shared = self.grpc_path is not None
        factory = (lambda: PortProtocol(self)) if shared else self.http_protocol
        context = tls.server_context(self.config) if any(s for _, _, s in self.addresses) else None
        for host, port, secure in self.addresses:
            server = await loop.create_server(
                factory,
                host,
                port,
                reuse_address=True,
                backlog=1024,
                ssl=context if secure else None,
                ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT if secure else None,
            )
            self.servers.append(server)
        log.info(
            "rest_serving",
            addresses=[f"{'https' if s else 'http'}://{h}:{p}" for h, p, s in self.addresses],
            grpc_spliced_to=self.grpc_path.replace("\0", "@") if shared else None,
        )

    async def stop(self, grace: float) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), grace)
