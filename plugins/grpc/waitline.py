"""Waiting in line by create revision: the queue under etcd's lock and election services.

Every contender puts one key ``<name>/<lease hex>`` on its session lease; the key with the lowest
create revision holds the lock (or leads), and that create revision is the holder's fencing token.
A contender waits for the deletion of the key just before its own, then looks again (etcd's
``clientv3/concurrency`` algorithm, run here in the frontend process over the core's KV and watch).

Unlike etcd 3.4.3, whose waiter Jepsen saw granted after its own lease had expired, a turn is only
granted when, after the last predecessor is gone, the contender's own key still exists with its
original create revision: its lease was alive at that revision. Watches are only wake-ups; what
decides is always a linearizable range, so a lost or duplicated event can delay but never mislead.

Also here, what the two services share: joining a line, and serving a method on serialized messages.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import structlog
from google.protobuf.message import DecodeError, Message

from actors.errors import Code, EtcdError
from actors.proto import kv_pb2, rpc_pb2
from actors.protocol import Method
from node.api import Client, Stream

log = structlog.get_logger()

M = TypeVar("M", bound=Message)

SESSION_TTL = 60  # seconds: the lease etcd's server-side session grants when a request names none
# A watch stream lost with the core process (it restarted) ends with an error, and the waiter
# looks again at once; an observer's watch is opened again from where it got to. After this long a
# silence they do so anyway: a safety net for a lost event, not the way turns pass.
RECHECK_SECONDS = 10.0

_CREATE = rpc_pb2.RangeRequest.CREATE
PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


class Caller:
    """The core as one request sees it: every call and watch carries that client's auth token, so a
    lock or campaign may touch only the keys its caller may (etcd's servers call with the caller's
    credentials too)."""

    def __init__(self, client: Client, token: str | None) -> None:
        self.client = client
        self.token = token

    async def call(self, method: Method, request: bytes) -> bytes:
        return await self.client.call(method, request, self.token)

    def open_stream(self) -> Stream:
        return self.client.open_stream(self.token)


class SessionExpired(Exception):
    """The contender's own key is gone (its lease expired or it was deleted) while it waited."""


def parse(message_type: type[M], data: bytes) -> M:
    """The request message, or the clear error a malformed one deserves."""
    try:
        return message_type.FromString(data)
    except DecodeError as e:
        name = message_type.DESCRIPTOR.full_name
        raise EtcdError(Code.INVALID_ARGUMENT, f"cairn: request is not a valid {name}: {e}") from None


def unknown(error: EtcdError) -> EtcdError:
    """etcd's lock and election servers call the KV through a client, and gRPC then reports every
    error they pass on with code Unknown and the original text."""
    return EtcdError(Code.UNKNOWN, error.message)


class Service(Protocol):
    client: Client


S = TypeVar("S", bound=Service)
ServiceMethod = Callable[[S, Caller, M], Awaitable[Message]]
Served = Callable[[S, bytes, str | None], Awaitable[bytes]]


def etcd_method(request_type: type[M]) -> Callable[[ServiceMethod], Served]:
    """A service method on serialized messages and the caller's auth token: the request parsed (a
    malformed one refused as an invalid argument), the response serialized, errors passed on as
    :func:`unknown` says."""

    def wrap(method: ServiceMethod) -> Served:
        @functools.wraps(method)
        async def serve(self: S, request: bytes, token: str | None = None) -> bytes:
            req = parse(request_type, request)
            try:
                return (await method(self, Caller(self.client, token), req)).SerializeToString()
            except EtcdError as e:
                raise unknown(e) from None

        return serve

    return wrap


async def contender(core: Caller, name: bytes, lease: int) -> tuple[int, bytes, bytes]:
    """``(lease, prefix, key)`` of a place in the line ``name``: lease 0 gets a fresh session lease."""
    lease = await session_lease(core, lease)
    prefix = prefix_of(name)
    return lease, prefix, session_key(prefix, lease)


def prefix_of(name: bytes) -> bytes:
    return name + b"/"


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end of every key under ``prefix``, which always ends in ``/`` (so one byte bumps)."""
    return prefix[:-1] + b"0"


def session_key(prefix: bytes, lease: int) -> bytes:
    """``prefix`` + the lease id in lowercase hex, as Go's ``%x`` writes it (a minus sign included)."""
    return prefix + format(lease, "x").encode()


async def range_kv(core: Caller, request: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
    return rpc_pb2.RangeResponse.FromString(await core.call(Method.RANGE, request.SerializeToString()))


async def txn(core: Caller, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
    return rpc_pb2.TxnResponse.FromString(await core.call(Method.TXN, request.SerializeToString()))


def owner_range(prefix: bytes) -> rpc_pb2.RangeRequest:
    """The key under ``prefix`` with the lowest create revision (clientv3's WithFirstCreate)."""
    return rpc_pb2.RangeRequest(
        key=prefix,
        range_end=prefix_range_end(prefix),
        sort_target=_CREATE,
        sort_order=rpc_pb2.RangeRequest.ASCEND,
        limit=1,
    )


def created_at(key: bytes, rev: int) -> rpc_pb2.Compare:
    """The guard of every write to a contender's key: it is still the incarnation created at ``rev``."""
    return rpc_pb2.Compare(
        result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.CREATE, key=key, create_revision=rev
    )


async def session_lease(core: Caller, lease: int) -> int:
    """The request's lease, or (lease 0) a fresh one of etcd's default session TTL, never kept alive."""
    if lease:
        return lease
    request = rpc_pb2.LeaseGrantRequest(TTL=SESSION_TTL)
    answer = await core.call(Method.LEASE_GRANT, request.SerializeToString())
    return rpc_pb2.LeaseGrantResponse.FromString(answer).ID


async def release(core: Caller, key: bytes, rev: int) -> rpc_pb2.TxnResponse:
    """Delete the contender's key if it is still the one created at ``rev`` (never a newer one)."""
    delete = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))
    return await txn(core, rpc_pb2.TxnRequest(compare=[created_at(key, rev)], success=[delete]))


async def join_line(
    core: Caller, put: rpc_pb2.PutRequest, *reads: rpc_pb2.RangeRequest
) -> tuple[rpc_pb2.TxnResponse, int]:
    """Put the contender's key unless it exists, run ``reads`` after; ``(answer, create revision)``.

    The first response is the put's, or a range of the key that was already there (the same lease
    joined before: it keeps its place). A caller cancelled meanwhile leaves no new key behind: the
    transaction runs to its end and the key it created is released.
    """
    then = [rpc_pb2.RequestOp(request_range=r) for r in reads]
    mine = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=put.key))
    request = rpc_pb2.TxnRequest(
        compare=[created_at(put.key, 0)],
        success=[rpc_pb2.RequestOp(request_put=put), *then],
        failure=[mine, *then],
    )
    joining = asyncio.ensure_future(txn(core, request))
    try:
        answer = await asyncio.shield(joining)
    except asyncio.CancelledError:
        joining.add_done_callback(lambda done: _release_created(core, put.key, done))
        raise
    if answer.succeeded:
        return answer, answer.header.revision
    return answer, answer.responses[0].response_range.kvs[0].create_revision


def _release_created(core: Caller, key: bytes, joined: asyncio.Future[rpc_pb2.TxnResponse]) -> None:
    if not joined.cancelled() and joined.exception() is None and joined.result().succeeded:
        release_later(core, key, joined.result().header.revision)


_cleanups: set[asyncio.Task[None]] = set()


def release_later(core: Caller, key: bytes, rev: int) -> None:
    """Release a waiter's key from a task of its own: the request that owned it is being cancelled."""

    async def run() -> None:
        try:
            await release(core, key, rev)
            log.info("waiter_released", key=key.decode(errors="replace"), rev=rev)
        except EtcdError as e:  # its lease will still take the key away
            log.warning("waiter_release_failed", key=key.decode(errors="replace"), error=e.message)

    task = asyncio.get_running_loop().create_task(run())
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)


async def wait_for_turn(core: Caller, prefix: bytes, key: bytes, rev: int) -> rpc_pb2.ResponseHeader:
    """Wait until no key under ``prefix`` was created before ``rev`` while ``key`` still was at ``rev``.

    Returns the header of the read that saw the contender's key alive. Raises
    :class:`SessionExpired` once that key is gone, and the core's errors as they come.
    """
    before = rpc_pb2.RangeRequest(
        key=prefix,
        range_end=prefix_range_end(prefix),
        sort_target=_CREATE,
        sort_order=rpc_pb2.RangeRequest.DESCEND,
        limit=1,
        max_create_revision=rev - 1,
    )
    while True:
        # Predecessors first, own key second: nothing created before ``rev`` can appear later, so
        # "none at R1" and "mine alive at R2 >= R1" together mean the turn is ours at R2.
        predecessor = await range_kv(core, before)
        mine = await range_kv(core, rpc_pb2.RangeRequest(key=key))
        if not mine.kvs or mine.kvs[0].create_revision != rev:
            raise SessionExpired
        if not predecessor.kvs:
            return mine.header
        waited_for = predecessor.kvs[0].key
        log.debug(
            "waiter_waiting", key=key.decode(errors="replace"), behind=waited_for.decode(errors="replace")
        )
        await wait_for_delete(core, (waited_for, key), predecessor.header.revision + 1)


async def wait_for_delete(core: Caller, keys: tuple[bytes, ...], start: int) -> None:
    """Return once one of ``keys`` is deleted at revision ``start`` or later, once the watch is
    cancelled by a compaction or lost with the core (the caller reads again), or after
    :data:`RECHECK_SECONDS`."""
    creates = [
        rpc_pb2.WatchCreateRequest(key=k, start_revision=start, filters=[rpc_pb2.WatchCreateRequest.NOPUT])
        for k in keys
    ]
    async with Watch(core, creates) as watch:
        while True:
            try:
                async with asyncio.timeout(RECHECK_SECONDS):  # not wait_for: on 3.11 it can swallow a cancel
                    response = await watch.next()
            except (TimeoutError, EtcdError):
                return
            if response.canceled:
                if response.compact_revision:
                    return
                raise EtcdError(Code.UNKNOWN, response.cancel_reason or "lost watcher waiting for delete")
            if any(event.type == DELETE and event.kv.key in keys for event in response.events):
                return


class Watch:
    """One watch stream to the core holding the given watchers, closed when the block exits."""

    def __init__(self, core: Caller, creates: list[rpc_pb2.WatchCreateRequest]) -> None:
        self.core = core
        self.creates = creates
        self.stream: Stream | None = None

    async def __aenter__(self) -> Watch:
        self.stream = self.core.open_stream()
        for create in self.creates:
            self.stream.send(rpc_pb2.WatchRequest(create_request=create).SerializeToString())
        return self

    async def next(self) -> rpc_pb2.WatchResponse:
        assert self.stream is not None
        return rpc_pb2.WatchResponse.FromString(await self.stream.get())

    async def __aexit__(self, *exc: object) -> None:
        assert self.stream is not None
        self.stream.close()


async def watch_responses(
    core: Caller, create: rpc_pb2.WatchCreateRequest
) -> AsyncIterator[rpc_pb2.WatchResponse]:
    """The responses of one watch (``start_revision`` set) until it is cancelled; after
    :data:`RECHECK_SECONDS` of silence, or when the core lost it, it is opened again from the
    revision it got to."""
    resume = rpc_pb2.WatchCreateRequest()
    resume.CopyFrom(create)
    while True:
        async with Watch(core, [resume]) as watch:
            while True:
                try:
                    async with asyncio.timeout(RECHECK_SECONDS):
                        response = await watch.next()
                except (TimeoutError, EtcdError):
                    break
                if response.canceled:
                    return
                if response.events:
                    resume.start_revision = response.events[-1].kv.mod_revision + 1
                yield response
