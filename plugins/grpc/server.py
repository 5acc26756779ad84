"""The etcd v3 gRPC API on ``listen-client-urls``.

Handlers never decode a message: gRPC hands over the request's serialized bytes, they go to the
core unchanged, and the core's serialized response goes back unchanged (identity serializers).
That keeps this process's share of a request to gRPC's own cost, which is the largest one on the
path (≈240 µs of CPU per unary call, MEASURED.md). Errors come back as etcd's status code and
text, which clients (etcdctl, clientv3) turn into their typed errors.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from actors.auth.backends import request_token
from actors.errors import EtcdError
from actors.protocol import AUTH_RPCS, Method
from node import tls
from node.api import Client
from node.config import NodeConfig, split_urls
from plugins.grpc.election import ElectionService
from plugins.grpc.lock import LockService
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

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
StreamHandler = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]
ServerStreamHandler = Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]


# Set by GrpcFrontend.start under client-cert-auth (one gRPC server per frontend process): then a
# call without a token acts as its client certificate's CN, as etcd's AuthInfoFromTLS.
_certificate_users = False


def token(context: grpc.aio.ServicerContext) -> str | None:
    """The client's auth token: metadata ``token`` (clientv3), or ``authorization`` (as etcd reads);
    without one, under client-cert-auth, the client certificate's CN (:func:`certificate_token`)."""
    for key, value in context.invocation_metadata() or ():
        if key in ("token", "authorization"):
            return request_token(value, None) if isinstance(value, str) else None
    return certificate_token(context) if _certificate_users else None


def certificate_token(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's CN: from gRPC's own TLS, or the one the shared port's
    splice recorded for this connection (``node.tls.SplicedPeers``)."""
    names = context.auth_context().get("x509_common_name")
    common_name = names[0].decode() if names else tls.SPLICED_PEERS.common_name(context.peer())
    return request_token(None, common_name)


def forward(client: Client, method: Method) -> Handler:
    return unary(functools.partial(client.call, method))


def unary(call: Callable[[bytes, str | None], Awaitable[bytes]], waits: bool = False) -> Handler:
    """A unary method answered by ``call(request, auth token)``; its EtcdError becomes etcd's gRPC
    status and text.
    A method that ``waits`` (Lock, Campaign) ends with its RPC (:func:`end_with_rpc`)."""

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if waits:
            end_with_rpc(context)
        try:
            return await call(request, token(context))
        except EtcdError as e:
            await context.abort(grpc.StatusCode[e.code.name], e.message)
            raise  # unreachable: abort raises

    return handler


def server_stream(call: Callable[[bytes, str | None], AsyncIterator[bytes]]) -> ServerStreamHandler:
    """A server-streaming method (Election.Observe): the responses ``call`` yields, then its error."""

    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        end_with_rpc(context)
        try:
            async for response in call(request, token(context)):
                yield response
        except EtcdError as e:
            await context.abort(grpc.StatusCode[e.code.name], e.message)

    return handler


def end_with_rpc(context: grpc.aio.ServicerContext) -> None:
    """Cancel the running handler when its RPC ends or its deadline passes. grpc.aio does not cancel
    a handler that starts at (or just before) its deadline: such a Lock was seen waiting on for no
    one, and then granted; a method that waits must not outlive its caller."""
    task = asyncio.current_task()
    assert task is not None
    remaining = context.time_remaining()
    if remaining is not None:
        deadline = asyncio.get_running_loop().call_later(max(remaining, 0.0), task.cancel)
        task.add_done_callback(lambda _: deadline.cancel())
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

    async def handler(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
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
                    await context.abort(grpc.StatusCode[answer.code.name], answer.message)
                yield answer
        finally:
            reader.cancel()
            for task in list(calls):
                task.cancel()

    return handler


def watch_stream(client: Client) -> StreamHandler:
    """etcd's Watch: requests flow to the core's watch hub while its pushed responses flow back.

    A client that half-closes keeps receiving, as with etcd; the stream ends when the client
    cancels or the server stops (clients then reconnect and resume from their last revision).
    """

    async def handler(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        stream = client.open_stream(token(context))

        async def forward_requests() -> None:
            async for request in requests:
                stream.send(request)

        reader = asyncio.create_task(forward_requests())
        try:
            while True:
                yield await stream.get()
        except EtcdError as e:  # the core refused the stream (a learner's): etcd's status and text
            await context.abort(grpc.StatusCode[e.code.name], e.message)
        finally:
            reader.cancel()
            stream.close()

    return handler


def recipe_handlers(client: Client) -> list[grpc.GenericRpcHandler]:
    """The v3lock and v3election services, which run here on top of the core's KV, lease and watch."""
    locks, elections = LockService(client), ElectionService(client)
    lock = {
        "Lock": grpc.unary_unary_rpc_method_handler(unary(locks.lock, waits=True)),
        "Unlock": grpc.unary_unary_rpc_method_handler(unary(locks.unlock)),
    }
    election = {
        name: grpc.unary_unary_rpc_method_handler(unary(getattr(elections, name.lower()), name == "Campaign"))
        for name in ("Campaign", "Proclaim", "Leader", "Resign")
    }
    election["Observe"] = grpc.unary_stream_rpc_method_handler(server_stream(elections.observe))
    return [
        grpc.method_handlers_generic_handler("v3lockpb.Lock", lock),
        grpc.method_handlers_generic_handler("v3electionpb.Election", election),
    ]


def shares_client_port(config: NodeConfig) -> bool:
    """Whether the REST plugin owns the client port and splices gRPC connections to this server.

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


def internal_address(config: NodeConfig) -> str:
    """The unix socket gRPC listens on behind a shared client port: in the data dir, or abstract."""
    path = os.path.join(os.path.abspath(config.data_dir), "grpc.sock")
    if len(path) < 100:  # sockaddr_un holds ~107 bytes
        return "unix:" + path
    return "unix-abstract:cairn-grpc-" + hashlib.sha1(path.encode()).hexdigest()[:16]


class GrpcFrontend:
    name = "grpc"

    def __init__(self, config: NodeConfig, settings: dict) -> None:
        self.config = config
        listen = settings.get("listen")
        self.secure: set[str] = set()  # addresses served with TLS
        if listen:
            self.addresses = [listen] if isinstance(listen, str) else list(listen)
        elif shares_client_port(config):
            self.addresses = [internal_address(config)]  # TLS ends at the shared port
        else:
            urls = split_urls(config.listen_client_urls)
            self.addresses = [f"{h}:{p}" for h, p in config.client_addresses()]
            self.secure = {a for a, url in zip(self.addresses, urls, strict=True) if tls.is_tls_url(url)}
        self.server: grpc.aio.Server | None = None

    async def start(self, client: Client) -> None:
        global _certificate_users
        _certificate_users = self.config.client_cert_auth
        limit = self.config.max_request_bytes + GRPC_OVERHEAD_BYTES
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.so_reuseport", 0),
            ]
        )
        handlers = []
        for service, methods in UNARY_METHODS.items():
            table = {
                name: grpc.unary_unary_rpc_method_handler(forward(client, method))
                for name, method in methods.items()
            }
            if service == "etcdserverpb.Lease":
                table["LeaseKeepAlive"] = grpc.stream_stream_rpc_method_handler(
                    forward_stream(client, Method.LEASE_KEEPALIVE)
                )
            if service == "etcdserverpb.Maintenance":
                table["Snapshot"] = grpc.unary_stream_rpc_method_handler(snapshot_stream(client, token))
            handlers.append(grpc.method_handlers_generic_handler(service, table))
        watch = {"Watch": grpc.stream_stream_rpc_method_handler(watch_stream(client))}
        handlers.append(grpc.method_handlers_generic_handler("etcdserverpb.Watch", watch))
        handlers.extend(recipe_handlers(client))
        server.add_generic_rpc_handlers(handlers)
        checker = health.aio.HealthServicer()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        for address in self.addresses:
            if address in self.secure:
                server.add_secure_port(address, tls.grpc_credentials(self.config))
            else:
                server.add_insecure_port(address)
        await server.start()
        self.server = server
        log.info("grpc_serving", addresses=self.addresses, tls=sorted(self.secure))

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
