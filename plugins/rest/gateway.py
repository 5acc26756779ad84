"""etcd's JSON gateway (grpc-gateway v1 as etcd 3.4 serves it) plus ``/health``, ``/version``, ``/metrics``.

Each gateway path stands for one gRPC method: the JSON body becomes that method's request message,
goes to the core through :class:`node.api.Client` exactly as a gRPC request would, and the response
message comes back as JSON (:mod:`plugins.rest.jsonpb`). Errors are the gateway's
``{"error","message","code"}`` with its HTTP status for the gRPC code. ``/v3/watch`` and
``/v3/lease/keepalive`` are streams: the body is read as a sequence of JSON requests while the
response goes out as newline-delimited ``{"result":...}`` objects, one HTTP chunk each.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import structlog
from google.protobuf.message import Message

from actors import metrics
from actors.auth.backends import request_token
from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2, v3election_pb2, v3lock_pb2
from actors.protocol import AUTH_RPCS, Method
from node.api import Client
from plugins.grpc.election import ElectionService
from plugins.grpc.lock import LockService
from plugins.rest import jsonpb
from plugins.rest.http import Exchange, Handler, Headers
from plugins.rest.snapshot import snapshot_handler

log = structlog.get_logger()

GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd's gRPC limit is max-request-bytes plus this
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # what etcd's Go client sends
HEALTH_TIMEOUT = 1.0  # etcd's /health gives its quorum read one second
DEFAULT_VERSION = "3.4.0"  # what /version says until the core's Status has told us

# -- the gateway's paths (etcd 3.4: etcdserverpb/gw, v3lockpb/gw, v3electionpb/gw) -------------------------

_KV, _LEASE, _CLUSTER, _MAINT, _AUTH = (
    "etcdserverpb.KV",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
)
PATHS: dict[str, tuple[str, str]] = {
    "/v3/kv/range": (_KV, "Range"),
    "/v3/kv/put": (_KV, "Put"),
    "/v3/kv/deleterange": (_KV, "DeleteRange"),
    "/v3/kv/txn": (_KV, "Txn"),
    "/v3/kv/compaction": (_KV, "Compact"),
    "/v3/watch": ("etcdserverpb.Watch", "Watch"),
    "/v3/lease/grant": (_LEASE, "LeaseGrant"),
    "/v3/lease/revoke": (_LEASE, "LeaseRevoke"),
    "/v3/kv/lease/revoke": (_LEASE, "LeaseRevoke"),
    "/v3/lease/keepalive": (_LEASE, "LeaseKeepAlive"),
    "/v3/lease/timetolive": (_LEASE, "LeaseTimeToLive"),
    "/v3/kv/lease/timetolive": (_LEASE, "LeaseTimeToLive"),
    "/v3/lease/leases": (_LEASE, "LeaseLeases"),
    "/v3/kv/lease/leases": (_LEASE, "LeaseLeases"),
    "/v3/cluster/member/add": (_CLUSTER, "MemberAdd"),
    "/v3/cluster/member/remove": (_CLUSTER, "MemberRemove"),
    "/v3/cluster/member/update": (_CLUSTER, "MemberUpdate"),
    "/v3/cluster/member/list": (_CLUSTER, "MemberList"),
    "/v3/cluster/member/promote": (_CLUSTER, "MemberPromote"),
    "/v3/maintenance/alarm": (_MAINT, "Alarm"),
    "/v3/maintenance/status": (_MAINT, "Status"),
    "/v3/maintenance/defragment": (_MAINT, "Defragment"),
    "/v3/maintenance/hash": (_MAINT, "Hash"),  # etcd registers HashKV on the same path; Hash wins
    "/v3/maintenance/snapshot": (_MAINT, "Snapshot"),
    "/v3/maintenance/transfer-leadership": (_MAINT, "MoveLeader"),
    "/v3/auth/enable": (_AUTH, "AuthEnable"),
    "/v3/auth/disable": (_AUTH, "AuthDisable"),
    "/v3/auth/authenticate": (_AUTH, "Authenticate"),
    "/v3/auth/user/add": (_AUTH, "UserAdd"),
    "/v3/auth/user/get": (_AUTH, "UserGet"),
    "/v3/auth/user/list": (_AUTH, "UserList"),
    "/v3/auth/user/delete": (_AUTH, "UserDelete"),
    "/v3/auth/user/changepw": (_AUTH, "UserChangePassword"),
    "/v3/auth/user/grant": (_AUTH, "UserGrantRole"),
    "/v3/auth/user/revoke": (_AUTH, "UserRevokeRole"),
    "/v3/auth/role/add": (_AUTH, "RoleAdd"),
    "/v3/auth/role/get": (_AUTH, "RoleGet"),
    "/v3/auth/role/list": (_AUTH, "RoleList"),
    "/v3/auth/role/delete": (_AUTH, "RoleDelete"),
    "/v3/auth/role/grant": (_AUTH, "RoleGrantPermission"),
    "/v3/auth/role/revoke": (_AUTH, "RoleRevokePermission"),
    "/v3/lock/lock": ("v3lockpb.Lock", "Lock"),
    "/v3/lock/unlock": ("v3lockpb.Lock", "Unlock"),
    "/v3/election/campaign": ("v3electionpb.Election", "Campaign"),
    "/v3/election/proclaim": ("v3electionpb.Election", "Proclaim"),
    "/v3/election/leader": ("v3electionpb.Election", "Leader"),
    "/v3/election/observe": ("v3electionpb.Election", "Observe"),
    "/v3/election/resign": ("v3electionpb.Election", "Resign"),
}

# The methods the node serves; every other gateway path answers Unimplemented, as gRPC does.
SERVED: dict[tuple[str, str], Method] = {
    (_KV, "Range"): Method.RANGE,
    (_KV, "Put"): Method.PUT,
    (_KV, "DeleteRange"): Method.DELETE_RANGE,
    (_KV, "Txn"): Method.TXN,
    (_KV, "Compact"): Method.COMPACT,
    ("etcdserverpb.Watch", "Watch"): Method.WATCH,
    (_LEASE, "LeaseGrant"): Method.LEASE_GRANT,
    (_LEASE, "LeaseRevoke"): Method.LEASE_REVOKE,
    (_LEASE, "LeaseKeepAlive"): Method.LEASE_KEEPALIVE,
    (_LEASE, "LeaseTimeToLive"): Method.LEASE_TIME_TO_LIVE,
    (_LEASE, "LeaseLeases"): Method.LEASE_LEASES,
    (_CLUSTER, "MemberList"): Method.MEMBER_LIST,
    (_CLUSTER, "MemberAdd"): Method.MEMBER_ADD,
    (_CLUSTER, "MemberRemove"): Method.MEMBER_REMOVE,
    (_CLUSTER, "MemberUpdate"): Method.MEMBER_UPDATE,
    (_CLUSTER, "MemberPromote"): Method.MEMBER_PROMOTE,
    (_MAINT, "Status"): Method.STATUS,
    (_MAINT, "MoveLeader"): Method.MOVE_LEADER,
    (_MAINT, "Snapshot"): Method.SNAPSHOT,
    (_MAINT, "Defragment"): Method.DEFRAGMENT,
    (_MAINT, "Hash"): Method.HASH,
    (_MAINT, "Alarm"): Method.ALARM,
    **{(_AUTH, name): method for name, method in AUTH_RPCS.items()},
}

# grpc-gateway v1's HTTPStatusFromCode
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 408,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 412,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}
HTTP_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

CORS: Headers = [
    (b"access-control-allow-headers", b"accept, content-type, authorization"),
    (b"access-control-allow-methods", b"POST, GET, OPTIONS, PUT, DELETE"),
    (b"access-control-allow-origin", b"*"),
]
JSON_HEADERS: Headers = [*CORS, (b"content-type", b"application/json")]
GATEWAY_OK_HEADERS: Headers = [*JSON_HEADERS, (b"grpc-metadata-content-type", b"application/grpc")]
TEXT_HEADERS: Headers = [
    *CORS,
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"x-content-type-options", b"nosniff"),
]


def _services() -> dict[str, Any]:
    found = {}
    for module in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            found[service.full_name] = service
    return found


class Route:
    """One gateway path: its gRPC method, message classes, and what the node does with it."""

    __slots__ = ("grpc_method", "grpc_type", "method", "request", "response", "service")

    def __init__(self, service: str, name: str, services: dict[str, Any]) -> None:
        from google.protobuf import message_factory

        descriptor = services[service].methods_by_name[name]
        self.service = service
        self.grpc_method = name
        self.request = message_factory.GetMessageClass(descriptor.input_type)
        self.response = message_factory.GetMessageClass(descriptor.output_type)
        streams = (descriptor.client_streaming, descriptor.server_streaming)
        self.grpc_type = {
            (False, False): "unary",
            (True, True): "bidi_stream",
            (False, True): "server_stream",
            (True, False): "client_stream",
        }[streams]
        self.method = SERVED.get((service, name))


def recipe_methods(client: Client) -> dict[tuple[str, str], Callable[..., Any]]:
    """The lock and election methods, which the frontend serves itself on top of the core."""
    locks, elections = LockService(client), ElectionService(client)
    lock, election = "v3lockpb.Lock", "v3electionpb.Election"
    return {
        (lock, "Lock"): locks.lock,
        (lock, "Unlock"): locks.unlock,
        (election, "Campaign"): elections.campaign,
        (election, "Proclaim"): elections.proclaim,
        (election, "Leader"): elections.leader,
        (election, "Observe"): elections.observe,
        (election, "Resign"): elections.resign,
    }


def error_body(code: int, message: str) -> bytes:
    return jsonpb.encode({"error": message, "message": message, "code": int(code)})


def stream_error_chunk(code: int, message: str) -> bytes:
    status = HTTP_STATUS.get(Code(code), 500)
    chunk: dict[str, Any] = {"grpc_code": int(code), "http_code": status, "message": message}
    chunk["http_status"] = HTTP_REASONS.get(status, "")
    return jsonpb.encode({"error": {k: v for k, v in chunk.items() if v}})


class StreamDecoder:
    """The JSON requests of a streamed body, decoded as they arrive."""

    def __init__(self, exchange: Exchange, message_type: type[Message], limit: int) -> None:
        self.exchange = exchange
        self.message_type = message_type
        self.limit = limit
        self.text = ""
        self.ready: list[Any] = []
        self.done = False
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    async def next(self) -> Message | None:
        """The next request, None at the end of the body; raises JsonError on a malformed one."""
        while not self.ready:
            if self.done:
                return None
            chunk = await self.exchange.read()
            if chunk is None:
                self.done = True
                self.text += self.utf8.decode(b"", final=True)
                values, used, error = jsonpb.split_values(self.text)
                self.ready.extend(values)
                rest = self.text[used:].strip()
                self.text = ""
                if error is not None:
                    self._fail_after(error)
                elif rest:
                    self._fail_after(jsonpb.JsonError("unexpected EOF"))
                continue
            self.text += self.utf8.decode(chunk)
            values, used, error = jsonpb.split_values(self.text)
            self.ready.extend(values)
            self.text = self.text[used:]
            if error is not None:
                self._fail_after(error)
            elif len(self.text) > self.limit:
                self._fail_after(jsonpb.JsonError("request too large"))
        value = self.ready.pop(0)
        if isinstance(value, jsonpb.JsonError):
            self.ready.clear()
            self.done = True
            raise value
        return jsonpb.decode_value(value, self.message_type)

    def _fail_after(self, error: jsonpb.JsonError) -> None:
        """Requests decoded so far still go out; then the error, and nothing after it."""
        self.ready.append(error)
        self.done = True


class Gateway:
    """The :class:`plugins.rest.http.App` of the REST frontend."""

    def __init__(self, client: Client, max_request_bytes: int, health_key: bytes = b"health") -> None:
        self.client = client
        self.max_message = max_request_bytes + GRPC_OVERHEAD_BYTES
        self.max_body = 8 * self.max_message  # base64 and JSON around the largest message
        self.health_key = health_key
        self.version: str | None = None
        self.metrics = metrics.frontend()
        services = _services()
        self.routes = {path: Route(service, name, services) for path, (service, name) in PATHS.items()}
        self.handlers: dict[str, Handler] = {}
        recipes = recipe_methods(client)
        for path, route in self.routes.items():
            recipe = recipes.get((route.service, route.grpc_method))
            if recipe is not None:
                stream = route.grpc_type == "server_stream"
                self.handlers[path] = (self._server_stream_handler if stream else self._unary_handler)(
                    route, recipe
                )
            elif route.method is None:
                self.handlers[path] = self._unimplemented_handler(route)
            elif route.method == Method.WATCH:
                self.handlers[path] = self._watch_handler(route)
            elif route.method == Method.LEASE_KEEPALIVE:
                self.handlers[path] = self._keepalive_handler(route)
            elif route.method == Method.SNAPSHOT:
                self.handlers[path] = snapshot_handler(
                    client, route, self.metrics, self._error, GATEWAY_OK_HEADERS, token
                )
            else:
                self.handlers[path] = self._unary_handler(route, functools.partial(client.call, route.method))
        self.streaming = {"/v3/watch", "/v3/lease/keepalive"}

    # -- routing -----------------------------------------------------------------------------------------
    def resolve(self, method: str, path: str) -> tuple[Handler, bool]:
        if path.startswith("/v3beta/"):
            path = "/v3/" + path[len("/v3beta/") :]
        handler = self.handlers.get(path)
        if handler is not None:
            if method != "POST":
                return _plain(405, "Method Not Allowed"), False
            return handler, path in self.streaming
        if path == "/health":
            return (self.health if method == "GET" else _plain(405, "Method Not Allowed", allow="GET")), False
        if path == "/version":
            return (self.version_handler if method == "GET" else _plain(405, "Method Not Allowed")), False
        if path == "/metrics":
            return self.metrics_handler, False
        if path.startswith("/v3/"):
            return _plain(404, "Not Found"), False
        return _plain(404, "404 page not found"), False

    # -- unary methods -----------------------------------------------------------------------------------
    def _unary_handler(self, route: Route, call: Callable[[bytes, str | None], Awaitable[bytes]]) -> Handler:
        request_type, response_type = route.request, route.response
        service, name, grpc_type = route.service, route.grpc_method, route.grpc_type
        counters = self.metrics

        async def handler(exchange: Exchange) -> None:
            start = time.perf_counter()
            counters.started(grpc_type, service, name)
            try:
                request = jsonpb.decode(exchange.body, request_type)
            except jsonpb.JsonError as e:
                await self._error(exchange, Code.INVALID_ARGUMENT, str(e), route, start)
                return
            data = request.SerializeToString()
            if len(data) > self.max_message:
                text = f"grpc: received message larger than max ({len(data)} vs. {self.max_message})"
                await self._error(exchange, Code.RESOURCE_EXHAUSTED, text, route, start)
                return
            try:
                answer = await call(data, token(exchange))
            except EtcdError as e:
                await self._error(exchange, e.code, e.message, route, start)
                return
            body = jsonpb.encode(jsonpb.to_dict(response_type.FromString(answer)))
            await exchange.respond(200, body, GATEWAY_OK_HEADERS)
            counters.handled(grpc_type, service, name, "OK", time.perf_counter() - start)
            log.debug("rest_request", path=exchange.path, status=200)

        return handler

    def _server_stream_handler(
        self, route: Route, call: Callable[[bytes, str | None], AsyncIterator[bytes]]
    ) -> Handler:
        """One JSON request in, newline-delimited ``{"result":...}`` out until the stream ends; an
        error ends it with an ``{"error":...}`` line (under the error's HTTP status if nothing was sent)."""
        request_type, response_type = route.request, route.response

        async def handler(exchange: Exchange) -> None:
            start = time.perf_counter()
            self.metrics.started(route.grpc_type, route.service, route.grpc_method)
            try:
                request = jsonpb.decode(exchange.body, request_type)
            except jsonpb.JsonError as e:
                await self._error(exchange, Code.INVALID_ARGUMENT, str(e), route, start)
                return
            code = "OK"
            try:
                async for answer in call(request.SerializeToString(), token(exchange)):
                    if not exchange.started:
                        exchange.begin(200, [*GATEWAY_OK_HEADERS])
                    line = jsonpb.encode({"result": jsonpb.to_dict(response_type.FromString(answer))})
                    await exchange.write(line + b"\n")
            except EtcdError as e:
                code = metrics.GRPC_CODE_NAMES[e.code]
                if not exchange.started:
                    exchange.begin(HTTP_STATUS.get(e.code, 500), [*JSON_HEADERS])
                await exchange.write(stream_error_chunk(e.code, e.message))
                log.warning("rest_stream_error", path=exchange.path, code=int(e.code), error=e.message)
            except (asyncio.CancelledError, ConnectionError):
                code = "Canceled"
                raise
            finally:
                self.metrics.handled(
                    route.grpc_type, route.service, route.grpc_method, code, time.perf_counter() - start
                )
            if not exchange.started:
                exchange.begin(200, [*GATEWAY_OK_HEADERS])
            exchange.finish()

        return handler

    def _unimplemented_handler(self, route: Route) -> Handler:
        async def handler(exchange: Exchange) -> None:
            await self._error(exchange, Code.UNIMPLEMENTED, "Method not found!", route, time.perf_counter())

        return handler

    async def _error(self, exchange: Exchange, code: int, message: str, route: Route, start: float) -> None:
        status = HTTP_STATUS.get(Code(code), 500)
        await exchange.respond(status, error_body(code, message), JSON_HEADERS)
        self.metrics.handled(
            route.grpc_type,
            route.service,
            route.grpc_method,
            metrics.GRPC_CODE_NAMES[code],
            time.perf_counter() - start,
        )
        log.warning("rest_error", path=exchange.path, status=status, code=int(code), error=message)

    # -- streams -----------------------------------------------------------------------------------------
    async def _first_request(
        self, exchange: Exchange, decoder: StreamDecoder, route: Route
    ) -> tuple[bool, Message | None]:
        """The stream's first request; on a malformed one answer as the gateway does (500, code 2)."""
        try:
            return True, await decoder.next()
        except jsonpb.JsonError as e:
            status = 500
            await exchange.respond(status, error_body(Code.UNKNOWN, str(e)), JSON_HEADERS)
            self.metrics.handled(route.grpc_type, route.service, route.grpc_method, "Unknown", 0.0)
            log.warning("rest_error", path=exchange.path, status=status, code=int(Code.UNKNOWN), error=str(e))
            return False, None

    def _watch_handler(self, route: Route) -> Handler:
        response_type = route.response

        async def handler(exchange: Exchange) -> None:
            self.metrics.started(route.grpc_type, route.service, route.grpc_method)
            start = time.perf_counter()
            decoder = StreamDecoder(exchange, route.request, self.max_message)
            ok, first = await self._first_request(exchange, decoder, route)
            if not ok:
                return
            stream = self.client.open_stream(token(exchange))
            reader: asyncio.Task[None] | None = None
            code = "OK"
            try:
                if first is not None:
                    stream.send(first.SerializeToString())

                    async def forward_requests() -> None:
                        while True:
                            try:
                                request = await decoder.next()
                            except jsonpb.JsonError:
                                return  # the gateway stops sending and keeps the stream open
                            if request is None:
                                return
                            stream.send(request.SerializeToString())

                    reader = asyncio.ensure_future(forward_requests())
                exchange.begin(200, [*GATEWAY_OK_HEADERS])
                while True:
                    try:
                        answer = await stream.get()
                    except EtcdError as e:  # the core lost (restart) or refused (learner) the stream
                        code = metrics.GRPC_CODE_NAMES[e.code]
                        await exchange.write(stream_error_chunk(e.code, e.message))
                        log.warning(
                            "rest_stream_error", path=exchange.path, code=int(e.code), error=e.message
                        )
                        exchange.finish()
                        return
                    line = jsonpb.encode({"result": jsonpb.to_dict(response_type.FromString(answer))})
                    await exchange.write(line + b"\n")
            except (asyncio.CancelledError, ConnectionError):
                code = "Canceled"
                raise
            finally:
                if reader is not None:
                    reader.cancel()
                stream.close()
                self.metrics.handled(
                    route.grpc_type, route.service, route.grpc_method, code, time.perf_counter() - start
                )

        return handler

    def _keepalive_handler(self, route: Route) -> Handler:
        method = route.method
        assert method is not None
        response_type = route.response

        async def handler(exchange: Exchange) -> None:
            self.metrics.started(route.grpc_type, route.service, route.grpc_method)
            start = time.perf_counter()
            decoder = StreamDecoder(exchange, route.request, self.max_message)
            ok, request = await self._first_request(exchange, decoder, route)
            if not ok:
                return
            exchange.begin(200, [*GATEWAY_OK_HEADERS])
            code = "OK"
            while request is not None:
                try:
                    answer = await self.client.call(method, request.SerializeToString(), token(exchange))
                except EtcdError as e:
                    code = metrics.GRPC_CODE_NAMES[e.code]
                    await exchange.write(stream_error_chunk(e.code, e.message))
                    break
                line = jsonpb.encode({"result": jsonpb.to_dict(response_type.FromString(answer))})
                await exchange.write(line + b"\n")
                try:
                    request = await decoder.next()
                except jsonpb.JsonError:
                    break  # the gateway stops sending; the server then ends the stream
            exchange.finish()
            self.metrics.handled(
                route.grpc_type, route.service, route.grpc_method, code, time.perf_counter() - start
            )

        return handler

    # -- health, version, metrics ------------------------------------------------------------------------
    async def health(self, exchange: Exchange) -> None:
        """etcd's /health: false while an alarm not named in ``?exclude=`` is active, else true only
        if a quorum read (a linearizable range here) succeeds within 1 s."""
        request = rpc_pb2.RangeRequest(key=self.health_key, count_only=True).SerializeToString()
        try:
            answer = await asyncio.wait_for(self.client.call(Method.STATUS, b""), HEALTH_TIMEOUT)
            excluded = set(parse_qs(exchange.query).get("exclude", ()))
            errors = rpc_pb2.StatusResponse.FromString(answer).errors  # alarms as "memberID:1 alarm:NOSPACE "
            raised = {e.partition("alarm:")[2].strip() for e in errors} - {""} - excluded
            healthy = not raised
            if raised:
                log.warning("health_check_alarmed", alarms=sorted(raised))
            else:
                await asyncio.wait_for(self.client.call(Method.RANGE, request), HEALTH_TIMEOUT)
        except (EtcdError, TimeoutError) as e:
            healthy = False
            log.warning("health_check_failed", error=getattr(e, "message", None) or type(e).__name__)
        if healthy:
            self.metrics.health_success.inc()
            await exchange.respond(
                200, b'{"health":"true"}', [*CORS, (b"content-type", b"text/plain; charset=utf-8")]
            )
        else:
            self.metrics.health_failures.inc()
            await exchange.respond(503, b'{"health":"false"}\n', TEXT_HEADERS)

    async def version_handler(self, exchange: Exchange) -> None:
        if self.version is None:
            try:
                answer = await asyncio.wait_for(self.client.call(Method.STATUS, b""), HEALTH_TIMEOUT)
                self.version = rpc_pb2.StatusResponse.FromString(answer).version or DEFAULT_VERSION
            except (EtcdError, TimeoutError):
                pass  # answer with the default now, ask again next time
        version = self.version or DEFAULT_VERSION
        body = jsonpb.encode({"etcdserver": version, "etcdcluster": _cluster_version(version)})
        await exchange.respond(200, body, JSON_HEADERS)

    async def metrics_handler(self, exchange: Exchange) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
        await exchange.respond(200, body, [*CORS, (b"content-type", METRICS_CONTENT_TYPE)])


def token(exchange: Exchange) -> str | None:
    """The client's auth token: the ``Authorization`` header, its raw value (etcd's gateway passes
    it on as gRPC metadata ``authorization``, which etcd reads as the token); without one, the
    CN of the client's certificate when client-cert-auth verified one (see docs/security.md)."""
    return request_token(exchange.headers.get("authorization"), exchange.common_name)


def _cluster_version(server: str) -> str:
    """etcd reports the cluster version as major.minor.0 of the members' versions."""
    parts = server.split(".")
    return ".".join([*parts[:2], "0"]) if len(parts) >= 2 else server


def _plain(status: int, text: str, allow: str | None = None) -> Handler:
    body = (text + "\n").encode()
    headers = [*TEXT_HEADERS, (b"allow", allow.encode())] if allow else TEXT_HEADERS

    async def handler(exchange: Exchange) -> None:
        await exchange.respond(status, body, headers)
        log.debug("rest_request", path=exchange.path, status=status)

    return handler
