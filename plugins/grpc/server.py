"""The etcd v3 gRPC API on ``listen-client-urls``, served by this process's own HTTP/2
(:mod:`plugins.grpc.native`).

Handlers never decode a message: the request's serialized bytes go to the core unchanged, and the
core's serialized response goes back unchanged. Errors come back as etcd's status code and text
(an :class:`EtcdError` raised by a handler becomes the call's grpc-status and grpc-message), which
clients (etcdctl, clientv3) turn into their typed errors.

Why a native server and not grpcio's: a grpc.aio unary call costs 220-290 µs of CPU in grpcio's C
core and Cython on this machine (MEASURED.md section 4), which alone held single-node put under
0.4x etcd; the native one costs the frontend ~40 µs (docs/benchmarks.md, "Native gRPC server").

Settings (``plugins: {grpc: {...}}``): ``listen`` (``host:port`` or a list: serve gRPC there
alone, plain). Without it gRPC shares the client port with the REST gateway (the REST plugin
hands each HTTP/2 connection over in-process) or, with REST disabled, listens on the client URLs
itself (TLS with ALPN h2 on ``https://`` ones).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from actors.auth.backends import request_token
from actors.errors import EtcdError
from actors.protocol import AUTH_RPCS, Method
from node import listeners, tls
from node.api import Client
from node.config import ConfigError, NodeConfig, split_urls
from plugins.grpc import health
from plugins.grpc.election import ElectionService
from plugins.grpc.lock import LockService
from plugins.grpc.native import CallContext, GrpcProtocol, Kind, Service
from plugins.grpc.snapshot import snapshot_stream

log = structlog.get_logger()

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd lets a gRPC message exceed max-request-bytes by this much
STREAM_IN_FLIGHT = 1024  # keep-alives of one stream at the core at once; more wait (gRPC flow control)

UNARY_METHODS: dict[str, dict[str, Method]] = {
    "etcdserverpb.KV": {
        "Range": Method.RANGE,
        "Put": Method.PUT,
        "DeleteRange": Method.DELETE_RANGE,
        "Txn": Method.TXN,
        "Compact": Method.COMPACT,
    },
    "etcdserverpb.Lease": {
        "LeaseGrant": Method.LEASE_GRANT,
        "LeaseRevoke": Method.LEASE_REVOKE,
        "LeaseTimeToLive": Method.LEASE_TIME_TO_LIVE,
        "LeaseLeases": Method.LEASE_LEASES,
    },
    "etcdserverpb.Maintenance": {
        "Status": Method.STATUS,
        "Defragment": Method.DEFRAGMENT,
        "Hash": Method.HASH,
        "HashKV": Method.HASH_KV,
        "Alarm": Method.ALARM,
        "MoveLeader": Method.MOVE_LEADER,
    },
    "etcdserverpb.Cluster": {
        "MemberList": Method.MEMBER_LIST,
        "MemberAdd": Method.MEMBER_ADD,
        "MemberRemove": Method.MEMBER_REMOVE,
        "MemberUpdate": Method.MEMBER_UPDATE,
        "MemberPromote": Method.MEMBER_PROMOTE,
    },
    "etcdserverpb.Auth": AUTH_RPCS,
}

Handler = Callable[[bytes, CallContext], Awaitable[bytes]]
StreamHandler = Callable[[AsyncIterator[bytes], CallContext], AsyncIterator[bytes]]
ServerStreamHandler = Callable[[bytes, CallContext], AsyncIterator[bytes]]


# Set by GrpcFrontend.start under client-cert-auth (one gRPC server per frontend process): then a
# call without a token acts as its client certificate's CN, as etcd's AuthInfoFromTLS.
_certificate_users = False

# The service the REST plugin hands HTTP/2 connections of the shared client port to (same process)
shared_port_service: Service | None = None


def token(context: CallContext) -> str | None:
    """The client's auth token: metadata ``token`` (clientv3), or ``authorization`` (as etcd reads);
    without one, under client-cert-auth, the verified client certificate's CN."""
    for key, value in context.invocation_metadata():
        if key in ("token", "authorization"):
            return request_token(value, None) if isinstance(value, str) else None
    return request_token(None, context.common_name) if _certificate_users else None


def forward(client: Client, method: Method) -> Handler:
    return unary(functools.partial(client.call, method))


def unary(call: Callable[[bytes, str | None], Awaitable[bytes]], waits: bool = False) -> Handler:
    """A unary method answered by ``call(request, auth token)``.
    A method that ``waits`` (Lock, Campaign) ends with its RPC (:func:`end_with_rpc`)."""

    async def handler(request: bytes, context: CallContext) -> bytes:
        if waits:
            end_with_rpc(context)
        return await call(request, token(context))

    return handler


def server_stream(call: Callable[[bytes, str | None], AsyncIterator[bytes]]) -> ServerStreamHandler:
    """A server-streaming method (Election.Observe): the responses ``call`` yields, then its error."""

    async def handler(request: bytes, context: CallContext) -> AsyncIterator[bytes]:
        end_with_rpc(context)
        async for response in call(request, token(context)):
            yield response

    return handler


def end_with_rpc(context: CallContext) -> None:
    """Cancel the running handler when its RPC ends (the client cancelled, its deadline passed, the
    connection went): a method that waits must not outlive its caller (a Lock granted to no one)."""
    task = asyncio.current_task()
    assert task is not None
    if context.done():
        task.cancel()
    else:
        context.add_done_callback(lambda _: task.cancel())


def forward_stream(client: Client, method: Method) -> StreamHandler:
    """A bidirectional stream where each request gets one response (LeaseKeepAlive).

    Requests are pipelined (up to ``STREAM_IN_FLIGHT`` per stream) and each answer is sent as it
    comes: clientv3 keeps every lease of a client alive on one stream and matches answers by lease
    id, so one slow keep-alive (a follower's, waiting for a new leader) must not hold up the rest,
    nor may the stream's rate be one core round trip at a time. An error ends the stream, as etcd's.
    """

    async def handler(requests: AsyncIterator[bytes], context: CallContext) -> AsyncIterator[bytes]:
        answers: asyncio.Queue[bytes | EtcdError | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        calls: set[asyncio.Task[None]] = set()

        async def call(request: bytes) -> None:
            try:
                answers.put_nowait(await client.call(method, request, token(context)))
            except EtcdError as e:
                answers.put_nowait(e)
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()
                    task = asyncio.create_task(call(request))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
                await asyncio.gather(*calls)
            finally:
                answers.put_nowait(None)  # the client half-closed and everything is answered

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                if isinstance(answer, EtcdError):
                    raise answer
                yield answer
        finally:
            reader.cancel()
            for task in list(calls):
                task.cancel()

    return handler


def watch_stream(client: Client) -> StreamHandler:
    """etcd's Watch: requests flow to the core's watch hub while its pushed responses flow back.

    A client that half-closes keeps receiving, as with etcd; the stream ends when the client
    cancels, or with UNAVAILABLE when the server stops or the core process restarted (clients
    then reconnect and resume from their last revision), or with the core's refusal (a learner's).
    """

    async def handler(requests: AsyncIterator[bytes], context: CallContext) -> AsyncIterator[bytes]:
        stream = client.open_stream(token(context))

        async def forward_requests() -> None:
            async for request in requests:
                stream.send(request)

        reader = asyncio.create_task(forward_requests())
        try:
            while True:  # an EtcdError (the core lost or refused the stream) becomes the status
                yield await stream.get()
        finally:
            reader.cancel()
            stream.close()

    return handler


def etcd_service(client: Client, max_receive: int) -> Service:
    """Every method of the etcd v3 API, v3lock, v3election and grpc.health.v1."""
    service = Service(max_receive=max_receive)
    for name, methods in UNARY_METHODS.items():
        for method_name, method in methods.items():
            service.add(name, method_name, Kind.UNARY, forward(client, method))
    service.add(
        "etcdserverpb.Lease", "LeaseKeepAlive", Kind.BIDI, forward_stream(client, Method.LEASE_KEEPALIVE)
    )
    service.add("etcdserverpb.Maintenance", "Snapshot", Kind.SERVER_STREAM, snapshot_stream(client, token))
    service.add("etcdserverpb.Watch", "Watch", Kind.BIDI, watch_stream(client))
    locks, elections = LockService(client), ElectionService(client)  # they run here, on the core's KV
    service.add("v3lockpb.Lock", "Lock", Kind.UNARY, unary(locks.lock, waits=True))
    service.add("v3lockpb.Lock", "Unlock", Kind.UNARY, unary(locks.unlock))
    for name in ("Campaign", "Proclaim", "Leader", "Resign"):
        method = unary(getattr(elections, name.lower()), waits=name == "Campaign")
        service.add("v3electionpb.Election", name, Kind.UNARY, method)
    service.add("v3electionpb.Election", "Observe", Kind.SERVER_STREAM, server_stream(elections.observe))
    service.add("grpc.health.v1.Health", "Check", Kind.UNARY, health.check)
    service.add("grpc.health.v1.Health", "Watch", Kind.SERVER_STREAM, health.watch)
    return service


def shares_client_port(config: NodeConfig) -> bool:
    """Whether the REST plugin owns the client port and hands gRPC connections to this server.

    That is etcd's arrangement (gRPC and the JSON gateway on one port): it holds when both plugins
    are enabled and neither was given its own ``listen`` addresses.
    """
    rest, grpc_settings = config.plugins.get("rest"), config.plugins.get("grpc")
    return (
        rest is not None
        and grpc_settings is not None
        and rest.get("enabled", True)
        and grpc_settings.get("enabled", True)
        and not rest.get("listen")
        and not grpc_settings.get("listen")
    )


class GrpcFrontend:
    name = "grpc"

    def __init__(self, config: NodeConfig, settings: dict) -> None:
        self.config = config
        listen = settings.get("listen")
        self.shared = shares_client_port(config)
        self.addresses: list[tuple[str, int, bool]] = []  # (host, port, TLS?) of our own listeners
        if listen:
            for item in [listen] if isinstance(listen, str) else list(listen):
                host, _, port = str(item).rpartition(":")
                if not host or not port.isdigit():
                    raise ConfigError(f"plugins.grpc.listen: {item!r} is not host:port")
                self.addresses.append((host.strip("[]"), int(port), False))
        elif not self.shared:
            urls = split_urls(config.listen_client_urls)
            self.addresses = [
                (h, p, tls.is_tls_url(url))
                for (h, p), url in zip(config.client_addresses(), urls, strict=True)
            ]
        self.service: Service | None = None
        self.listeners: list[asyncio.AbstractServer] = []

    async def start(self, client: Client) -> None:
        global _certificate_users, shared_port_service
        _certificate_users = self.config.client_cert_auth
        service = self.service = etcd_service(client, self.config.max_request_bytes + GRPC_OVERHEAD_BYTES)
        if self.shared:
            shared_port_service = service
        context = None
        if any(secure for _, _, secure in self.addresses):
            context = tls.server_context(self.config)
            context.set_alpn_protocols(["h2"])  # a gRPC-only port: HTTP/2 or nothing
        self.listeners = await listeners.listen(lambda: GrpcProtocol(service), self.addresses, context)
        log.info("grpc_serving", addresses=listeners.urls(self.addresses), shared_client_port=self.shared)

    async def stop(self, grace: float) -> None:
        """GOAWAY to every connection; the calls still running after ``grace`` are cancelled."""
        for listener in self.listeners:
            listener.close()
        if self.service is None:
            return
        loop = asyncio.get_running_loop()
        for connection in list(self.service.connections):
            connection.stop()
        deadline = loop.time() + grace
        while self.service.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.service.connections):
            connection.abort()
        await asyncio.sleep(0.1)  # let cancelled handlers clean up while the core is still there
