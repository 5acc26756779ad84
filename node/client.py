"""The Python client of cairn's native ZeroMQ protocol (``docs/zmq-protocol.md``), asyncio and sync.

::

    client = Client("tcp://127.0.0.1:2390")
    client.put(b"/config/a", b"1")
    client.get(b"/config/a").value          # b"1"
    for event in client.watch(b"/config/", prefix=True):
        ...

With ``server_key`` (the node's ``<data-dir>/curve/zmq.pub``) and ``secret_key`` (this client's
CURVE secret key, whose public key the node allows) the connection is CURVE-encrypted and
authenticated both ways; a refused handshake shows as the connect timeout's error.

Requests are pipelined: every call made during one event-loop turn leaves in one frame, and
answers are matched by request id, so many concurrent calls cost little more than one. Responses
are etcd's own protobuf messages (``actors.proto.rpc_pb2``); errors are
:class:`actors.errors.EtcdError` with etcd's code and text. Watches survive a restart of the
server: the client notices the changed session number and re-creates each watch from the
revision after the last event it delivered, dropping anything it already delivered.
:class:`Client` is the same API, blocking, run on a private event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import structlog
import zmq

from actors import curve, errors
from actors.proto import kv_pb2, rpc_pb2
from actors.protocol import Kind, Method, Record, pack
from node import api

log = structlog.get_logger()

DEFAULT_URL = "tcp://127.0.0.1:2390"
MAX_FRAME = 4 << 20  # bytes of records per outgoing frame; the server refuses frames over 16 MiB

T = TypeVar("T")
Key = bytes | str


def to_bytes(value: Key) -> bytes:
    """Keys and values may be given as str (UTF-8)."""
    return value.encode() if isinstance(value, str) else value


def prefix_end(key: Key) -> bytes:
    """The range end selecting every key that starts with ``key`` (etcd's GetPrefixRangeEnd)."""
    stripped = to_bytes(key).rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else b"\0"


# -- txn building blocks ------------------------------------------------------------------------------
_TARGETS = {
    "value": (rpc_pb2.Compare.VALUE, "value"),
    "version": (rpc_pb2.Compare.VERSION, "version"),
    "create": (rpc_pb2.Compare.CREATE, "create_revision"),
    "mod": (rpc_pb2.Compare.MOD, "mod_revision"),
    "lease": (rpc_pb2.Compare.LEASE, "lease"),
}
_RESULTS = {
    "==": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    ">": rpc_pb2.Compare.GREATER,
    "<": rpc_pb2.Compare.LESS,
}


def compare(key: Key, target: str, op: str, operand: int | Key) -> rpc_pb2.Compare:
    """``compare(b"k", "mod", "==", 5)``; targets value, version, create, mod, lease."""
    if target not in _TARGETS or op not in _RESULTS:
        raise ValueError(f"compare: target must be one of {list(_TARGETS)} and op one of {list(_RESULTS)}")
    kind, field = _TARGETS[target]
    message = rpc_pb2.Compare(key=to_bytes(key), target=kind, result=_RESULTS[op])
    setattr(message, field, to_bytes(operand) if target == "value" else int(operand))  # type: ignore[arg-type]
    return message


def put_op(key: Key, value: Key, lease: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(
        request_put=rpc_pb2.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease)
    )


def range_op(key: Key, range_end: Key = b"") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(
        request_range=rpc_pb2.RangeRequest(key=to_bytes(key), range_end=to_bytes(range_end))
    )


def delete_op(key: Key, range_end: Key = b"") -> rpc_pb2.RequestOp:
    request = rpc_pb2.DeleteRangeRequest(key=to_bytes(key), range_end=to_bytes(range_end))
    return rpc_pb2.RequestOp(request_delete_range=request)


class WatchCanceled(Exception):
    """The server ended a watch; ``compact_revision`` is set when its start revision was compacted."""

    def __init__(self, reason: str, compact_revision: int = 0) -> None:
        super().__init__(reason)
        self.compact_revision = compact_revision


# -- asyncio ------------------------------------------------------------------------------------------
class Watch:
    """One watch: an async iterator of ``mvccpb.Event``, resumed across server restarts.

    ``revision`` is the revision the watch would resume from: one past the last delivered event
    (or past what the server had when the watch was created).
    """

    def __init__(self, client: AsyncClient, sid: int, create: rpc_pb2.WatchCreateRequest) -> None:
        self.client = client
        self.id = sid
        self.create = create
        self.revision = create.start_revision
        self.created = asyncio.Event()
        self.error: BaseException | None = None
        self._events: asyncio.Queue[kv_pb2.Event | BaseException] = asyncio.Queue()
        self.closed = False

    def _request(self) -> bytes:
        create = rpc_pb2.WatchCreateRequest()
        create.CopyFrom(self.create)
        create.start_revision = self.revision
        return rpc_pb2.WatchRequest(create_request=create).SerializeToString()

    def _on_response(self, response: rpc_pb2.WatchResponse) -> None:
        if response.canceled:
            reason = response.cancel_reason or "watch canceled by the server"
            if response.compact_revision:
                reason = (
                    f"etcdserver: mvcc: required revision has been compacted ({response.compact_revision})"
                )
            self._fail(WatchCanceled(reason, response.compact_revision))
            return
        if response.created:
            if not self.revision:
                self.revision = response.header.revision + 1
            self.created.set()
        elif not response.events and response.header.revision >= self.revision:
            self.revision = response.header.revision + 1  # a progress notification: nothing missed
        for event in response.events:
            if event.kv.mod_revision >= self.revision:  # a resumed watch may repeat the last revision
                self._events.put_nowait(event)
        if response.events:
            self.revision = max(self.revision, response.events[-1].kv.mod_revision + 1)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self.closed = True  # the error is the last item: iteration ends after it
        self.created.set()
        self._events.put_nowait(error)
        self.client._drop_watch(self)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> kv_pb2.Event:
        if self.closed and self._events.empty():
            raise StopAsyncIteration
        item = await self._events.get()
        if isinstance(item, StopAsyncIteration):
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    async def get(self, timeout: float | None = None) -> kv_pb2.Event:
        """The next event, waiting at most ``timeout`` seconds (``TimeoutError`` after)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._drop_watch(self)
            self._events.put_nowait(StopAsyncIteration())

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class KeepAlive:
    """Refreshes a lease every third of its TTL until stopped or the lease is gone (``error``)."""

    def __init__(self, client: AsyncClient, lease_id: int) -> None:
        self.lease_id = lease_id
        self.ttl = 0
        self.error: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(client))
        client._tasks = [t for t in client._tasks if not t.done()] + [self._task]  # ends with the client

    async def _run(self, client: AsyncClient) -> None:
        while True:
            try:
                response = await client.lease_keep_alive_once(self.lease_id)
            except errors.EtcdError as e:
                if e.code != errors.Code.UNAVAILABLE:  # lost or unknown lease: retrying cannot help
                    self.error = e
                    return
                await asyncio.sleep(0.5)
                continue
            if response.TTL <= 0:
                self.error = errors.LEASE_NOT_FOUND.copy()
                return
            self.ttl = response.TTL
            await asyncio.sleep(max(response.TTL / 3, 0.2))

    def stop(self) -> None:
        """Stop refreshing (callable from any thread); the lease then expires after its TTL."""
        loop = self._task.get_loop()
        loop.call_soon_threadsafe(self._task.cancel)


class AsyncClient(api.Client):
    """Pipelined client of one cairn node's native ZeroMQ port.

    The frontends' own client of the core (:class:`node.api.Client`: the same envelope, batching,
    heartbeats and timeouts), plus what a remote client needs: a fixed routing id, session
    tracking with watch resume, and etcd-shaped methods.
    """

    # in an application, per-request debug events and warnings for errors it is handed anyway
    # would only be noise (structlog prints every level unless configured otherwise)
    _log = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        token: str | None = None,
        *,
        server_key: str | bytes | None = None,
        secret_key: str | bytes | None = None,
    ) -> None:
        options = {
            zmq.ROUTING_ID: b"cairn-" + os.urandom(10),  # the server keeps our streams on reconnect
            zmq.RECONNECT_IVL: 100,
            zmq.RECONNECT_IVL_MAX: 1000,
            zmq.HEARTBEAT_IVL: 1000,  # ZMTP pings find a dead TCP connection
            zmq.HEARTBEAT_TIMEOUT: 5000,
        }
        self.curve = server_key is not None
        if (server_key is None) != (secret_key is None):
            raise ValueError("CURVE needs both server_key and secret_key")
        if server_key is not None and secret_key is not None:
            secret = curve.check_key(secret_key, "secret_key")
            server = curve.check_key(server_key, "server_key")
            options.update(curve.client_options(server, curve.public_of(secret), secret))
        super().__init__(url, timeout, options=options)
        self._watches: dict[int, Watch] = {}
        self._session: int | None = None
        self._connected: asyncio.Event | None = None
        self._closed = False
        self.token = token  # an auth token (from :meth:`authenticate`) sent with every request

    # -- plumbing ------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Wait for the server's first answer (operations call this themselves)."""
        if self._connected is None:
            self._connected = asyncio.Event()
            await self.start()
            self._send_frame(pack(Kind.REQUEST, []))  # a heartbeat: the answer carries our session
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.timeout)
            except TimeoutError:
                text = f"cairn: no answer from {self.url} in {self.timeout:g}s"
                if self.curve:
                    text += " (CURVE: is the server key right, and this client's public key allowed?)"
                raise errors.EtcdError(errors.Code.UNAVAILABLE, text) from None

    async def call(self, method: int, request: bytes) -> bytes:
        """Send one request (a serialized etcd message); return the serialized response."""
        if self._closed:
            raise errors.STOPPED.copy()
        if self._connected is None or not self._connected.is_set():
            await self.connect()
        return await self.submit(method, request, self.token)

    def _flush(self) -> None:
        """Like the base class, but at most about MAX_FRAME bytes per frame."""
        for kind in (Kind.REQUEST, Kind.TOKEN_REQUEST):
            if kind == Kind.REQUEST:
                records, self._outbox = self._outbox, []
            else:
                records, self._token_outbox = self._token_outbox, []
            start, size = 0, 0
            for i, record in enumerate(records):
                size += len(record[2]) + 13
                if size > MAX_FRAME and i > start:
                    self._send_frame(pack(kind, records[start:i]))
                    start, size = i, len(record[2]) + 13
            if start < len(records):
                self._send_frame(pack(kind, records[start:]))

    send_flags = zmq.NOBLOCK

    def _send_frame(self, frame: bytes) -> None:
        """Never block the loop: a server that refused our CURVE handshake leaves the DEALER with
        no connection to queue on, where a plain send would wait forever. A frame dropped so is
        reported by its calls' timeouts (and connect's clear error)."""
        try:
            super()._send_frame(frame)
        except zmq.Again:
            self._log.warning("zmq_client_frame_dropped", url=self.url, curve=self.curve)

    def _on_frame(self, kind: int, aux: int, records: list[Record]) -> None:
        assert self._connected is not None
        if aux != self._session:  # aux is our session number on the server
            if self._session is not None:
                self._log.info("zmq_client_session_changed", url=self.url, watches=len(self._watches))
                self._resume_watches()
            self._session = aux
            self._connected.set()
        if kind == Kind.PUSH:
            for sid, _, body in records:
                watch = self._watches.get(sid)
                if watch is not None:
                    watch._on_response(rpc_pb2.WatchResponse.FromString(body))
        elif kind == Kind.RESULT:
            for rid, status, body in records:
                watch = self._watches.get(rid)
                if watch is not None:  # the server refused a watch stream
                    watch._fail(errors.EtcdError(errors.Code(status), body.decode(errors="replace")))
                elif rid == 0:
                    log.warning("zmq_client_frame_refused", error=body.decode(errors="replace"))
                else:
                    self._resolve(rid, status, body)

    def _resume_watches(self) -> None:
        """The server forgot us: re-create every watch from the revision after its last event."""
        for watch in self._watches.values():
            self._enqueue((watch.id, Method.WATCH_CLOSE, b""))
            self._enqueue((watch.id, Method.WATCH, watch._request()), self.token)

    def _drop_watch(self, watch: Watch) -> None:
        if self._watches.pop(watch.id, None) is not None and not self._closed:
            self._enqueue((watch.id, Method.WATCH_CLOSE, b""))

    async def close(self) -> None:
        if not self._closed:
            for watch in list(self._watches.values()):
                await watch.close()
            self._closed = True
            if self._connected is None:  # never started: only the socket to close
                self._sock.close(linger=0)
            else:
                await super().close()

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- KV ------------------------------------------------------------------------------------------
    async def range(
        self,
        key: Key,
        range_end: Key = b"",
        *,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: int = 0,
        sort_target: int = 0,
    ) -> rpc_pb2.RangeResponse:
        request = rpc_pb2.RangeRequest(
            key=to_bytes(key),
            range_end=prefix_end(key) if prefix else to_bytes(range_end),
            revision=revision,
            limit=limit,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            sort_order=sort_order,  # type: ignore[arg-type]
            sort_target=sort_target,  # type: ignore[arg-type]
        )
        body = await self.call(Method.RANGE, request.SerializeToString())
        return rpc_pb2.RangeResponse.FromString(body)

    async def get(self, key: Key, *, revision: int = 0) -> kv_pb2.KeyValue | None:
        """One key's current (or ``revision``'s) KeyValue, or None."""
        kvs = (await self.range(key, revision=revision)).kvs
        return kvs[0] if kvs else None

    async def put(
        self, key: Key, value: Key, *, lease: int = 0, prev_kv: bool = False
    ) -> rpc_pb2.PutResponse:
        request = rpc_pb2.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease, prev_kv=prev_kv)
        return rpc_pb2.PutResponse.FromString(await self.call(Method.PUT, request.SerializeToString()))

    async def delete(
        self, key: Key, range_end: Key = b"", *, prefix: bool = False, prev_kv: bool = False
    ) -> rpc_pb2.DeleteRangeResponse:
        end = prefix_end(key) if prefix else to_bytes(range_end)
        request = rpc_pb2.DeleteRangeRequest(key=to_bytes(key), range_end=end, prev_kv=prev_kv)
        body = await self.call(Method.DELETE_RANGE, request.SerializeToString())
        return rpc_pb2.DeleteRangeResponse.FromString(body)

    async def txn(
        self,
        compares: Iterable[rpc_pb2.Compare] = (),
        success: Iterable[rpc_pb2.RequestOp] = (),
        failure: Iterable[rpc_pb2.RequestOp] = (),
    ) -> rpc_pb2.TxnResponse:
        request = rpc_pb2.TxnRequest(compare=compares, success=success, failure=failure)
        return rpc_pb2.TxnResponse.FromString(await self.call(Method.TXN, request.SerializeToString()))

    async def compact(self, revision: int, *, physical: bool = False) -> rpc_pb2.CompactionResponse:
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        body = await self.call(Method.COMPACT, request.SerializeToString())
        return rpc_pb2.CompactionResponse.FromString(body)

    # -- leases --------------------------------------------------------------------------------------
    async def lease_grant(self, ttl: int, lease_id: int = 0) -> rpc_pb2.LeaseGrantResponse:
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id)
        body = await self.call(Method.LEASE_GRANT, request.SerializeToString())
        return rpc_pb2.LeaseGrantResponse.FromString(body)

    async def lease_revoke(self, lease_id: int) -> rpc_pb2.LeaseRevokeResponse:
        body = await self.call(
            Method.LEASE_REVOKE, rpc_pb2.LeaseRevokeRequest(ID=lease_id).SerializeToString()
        )
        return rpc_pb2.LeaseRevokeResponse.FromString(body)

    async def lease_keep_alive_once(self, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        request = rpc_pb2.LeaseKeepAliveRequest(ID=lease_id).SerializeToString()
        return rpc_pb2.LeaseKeepAliveResponse.FromString(await self.call(Method.LEASE_KEEPALIVE, request))

    async def keep_alive(self, lease_id: int) -> KeepAlive:
        """Keep ``lease_id`` alive in the background until ``stop()``."""
        await self.connect()
        return KeepAlive(self, lease_id)

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys).SerializeToString()
        body = await self.call(Method.LEASE_TIME_TO_LIVE, request)
        return rpc_pb2.LeaseTimeToLiveResponse.FromString(body)

    async def leases(self) -> rpc_pb2.LeaseLeasesResponse:
        body = await self.call(Method.LEASE_LEASES, rpc_pb2.LeaseLeasesRequest().SerializeToString())
        return rpc_pb2.LeaseLeasesResponse.FromString(body)

    # -- auth ----------------------------------------------------------------------------------------
    async def authenticate(self, name: str, password: str) -> rpc_pb2.AuthenticateResponse:
        """Log in: later requests carry the token (when the node has auth enabled)."""
        request = rpc_pb2.AuthenticateRequest(name=name, password=password).SerializeToString()
        response = rpc_pb2.AuthenticateResponse.FromString(await self.call(Method.AUTHENTICATE, request))
        self.token = response.token
        return response

    # -- cluster -------------------------------------------------------------------------------------
    async def status(self) -> rpc_pb2.StatusResponse:
        return rpc_pb2.StatusResponse.FromString(await self.call(Method.STATUS, b""))

    async def member_list(self) -> rpc_pb2.MemberListResponse:
        return rpc_pb2.MemberListResponse.FromString(await self.call(Method.MEMBER_LIST, b""))

    # -- watch ---------------------------------------------------------------------------------------
    async def watch(
        self,
        key: Key,
        range_end: Key = b"",
        *,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
        filters: Iterable[int] = (),
    ) -> Watch:
        """Start watching; returns once the server has created the watch (events after that are seen)."""
        await self.connect()
        create = rpc_pb2.WatchCreateRequest(
            key=to_bytes(key),
            range_end=prefix_end(key) if prefix else to_bytes(range_end),
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
            filters=filters,  # type: ignore[arg-type]
        )
        watch = Watch(self, self._new_id(), create)
        self._watches[watch.id] = watch
        self._enqueue((watch.id, Method.WATCH, watch._request()), self.token)
        try:
            await asyncio.wait_for(watch.created.wait(), self.timeout)
        except TimeoutError:
            await watch.close()
            raise errors.TIMEOUT.copy() from None
        if watch.error is not None:  # refused or canceled at once (e.g. a compacted start revision)
            raise watch.error
        return watch


# -- blocking -----------------------------------------------------------------------------------------
class LoopThread:
    """A private event loop on a daemon thread, for the blocking API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cairn-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def blocking(method: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """The blocking twin of an async method of ``self._target``, run on ``self._runner``."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> T:
        return self._runner.run(method(self._target, *args, **kwargs))

    return call


async def _open(url: str, timeout: float, token: str | None, **curve_keys: Any) -> AsyncClient:
    """An :class:`AsyncClient` made on the loop that will run it (its socket belongs there)."""
    return AsyncClient(url, timeout, token, **curve_keys)


class SyncWatch:
    """A watch for blocking code: iterate it, or ``get(timeout)``; ``close()`` ends it."""

    def __init__(self, runner: LoopThread, watch: Watch) -> None:
        self._runner = runner
        self._target = watch

    @property
    def revision(self) -> int:
        return self._target.revision

    get = blocking(Watch.get)
    close = blocking(Watch.close)

    def __iter__(self) -> Iterator[kv_pb2.Event]:
        while True:
            try:
                yield self.get()
            except StopAsyncIteration:
                return

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """The blocking client: the same methods as :class:`AsyncClient`, each waiting for its answer."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        token: str | None = None,
        *,
        server_key: str | bytes | None = None,
        secret_key: str | bytes | None = None,
    ) -> None:
        self._runner = LoopThread()
        try:
            self._target = self._runner.run(
                _open(url, timeout, token, server_key=server_key, secret_key=secret_key)
            )
        except ValueError:
            self._runner.stop()
            raise

    connect = blocking(AsyncClient.connect)
    call = blocking(AsyncClient.call)
    range = blocking(AsyncClient.range)
    get = blocking(AsyncClient.get)
    put = blocking(AsyncClient.put)
    delete = blocking(AsyncClient.delete)
    txn = blocking(AsyncClient.txn)
    compact = blocking(AsyncClient.compact)
    lease_grant = blocking(AsyncClient.lease_grant)
    lease_revoke = blocking(AsyncClient.lease_revoke)
    lease_keep_alive_once = blocking(AsyncClient.lease_keep_alive_once)
    keep_alive = blocking(AsyncClient.keep_alive)
    lease_time_to_live = blocking(AsyncClient.lease_time_to_live)
    leases = blocking(AsyncClient.leases)
    authenticate = blocking(AsyncClient.authenticate)
    status = blocking(AsyncClient.status)
    member_list = blocking(AsyncClient.member_list)

    @functools.wraps(AsyncClient.watch)
    def watch(self, key: Key, range_end: Key = b"", **options: Any) -> SyncWatch:
        return SyncWatch(self._runner, self._runner.run(self._target.watch(key, range_end, **options)))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._runner.run(self._target.close())
        self._runner.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
