"""Coordination recipes on the native client: a distributed queue, a barrier and a double barrier.

They follow etcd's ``contrib/recipes`` and use nothing but the store's primitives, so several
processes (in any language) can share them: items are keys under a prefix ordered by create
revision, a claim is a delete guarded by the key's mod revision (exactly one claimer wins), and
waiting is a watch that starts at a known revision, so nothing that happens meanwhile is missed.
"""

from __future__ import annotations

import asyncio
import os
import time

from actors.proto import kv_pb2, rpc_pb2
from node.client import (
    AsyncClient,
    Client,
    KeepAlive,
    Key,
    LoopThread,
    blocking,
    compare,
    delete_op,
    put_op,
    to_bytes,
)

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
NO_PUT, NO_DELETE = rpc_pb2.WatchCreateRequest.NOPUT, rpc_pb2.WatchCreateRequest.NODELETE


async def wait_event(
    client: AsyncClient, key: bytes, start_revision: int, event_type: int, *, prefix: bool = False
) -> kv_pb2.Event:
    """The first ``event_type`` event on ``key`` (or under it) at or after ``start_revision``."""
    filters = [NO_DELETE] if event_type == PUT else [NO_PUT]
    async with await client.watch(
        key, prefix=prefix, start_revision=start_revision, filters=filters
    ) as watch:
        async for event in watch:
            if event.type == event_type:
                return event
    raise RuntimeError("watch ended")  # only when closed from elsewhere


async def create_unique(
    client: AsyncClient, prefix: bytes, value: bytes, lease: int = 0
) -> rpc_pb2.PutResponse:
    """Put ``value`` at a new key ``prefix/<time ns>-<random>``; the key is in the response's prev_kv."""
    while True:
        key = prefix + b"/%020d-%s" % (time.time_ns(), os.urandom(4).hex().encode())
        resp = await client.txn([compare(key, "create", "==", 0)], [put_op(key, value, lease)])
        if resp.succeeded:
            put = resp.responses[0].response_put
            put.prev_kv.key = key
            return put


async def claim(client: AsyncClient, kv: kv_pb2.KeyValue) -> bool:
    """Delete ``kv`` if nobody changed or claimed it since it was read: True for exactly one caller."""
    resp = await client.txn([compare(kv.key, "mod", "==", kv.mod_revision)], [delete_op(kv.key)])
    return resp.succeeded


class AsyncQueue:
    """A FIFO queue shared by many processes (etcd's recipe ``Queue``)."""

    def __init__(self, client: AsyncClient, prefix: Key) -> None:
        self.client = client
        self.prefix = to_bytes(prefix).rstrip(b"/")

    async def push(self, value: Key) -> bytes:
        """Append ``value``; returns the item's key."""
        return (await create_unique(self.client, self.prefix, to_bytes(value))).prev_kv.key

    async def pop(self, timeout: float | None = None) -> bytes:
        """Remove and return the oldest item, waiting for one (``TimeoutError`` after ``timeout`` s)."""
        async with asyncio.timeout(timeout):
            while True:
                first = await self.client.range(
                    self.prefix + b"/",
                    prefix=True,
                    limit=1,
                    sort_order=rpc_pb2.RangeRequest.ASCEND,
                    sort_target=rpc_pb2.RangeRequest.CREATE,
                )
                if first.kvs:
                    if await claim(self.client, first.kvs[0]):
                        return first.kvs[0].value
                    continue  # another consumer took it: look again
                event = await wait_event(
                    self.client, self.prefix + b"/", first.header.revision + 1, PUT, prefix=True
                )
                if await claim(self.client, event.kv):
                    return event.kv.value

    async def size(self) -> int:
        return (await self.client.range(self.prefix + b"/", prefix=True, count_only=True)).count


class AsyncBarrier:
    """Blocks waiters until the holder releases it (etcd's recipe ``Barrier``)."""

    def __init__(self, client: AsyncClient, key: Key) -> None:
        self.client = client
        self.key = to_bytes(key)

    async def hold(self) -> bool:
        """Raise the barrier; False if it was already up."""
        resp = await self.client.txn([compare(self.key, "create", "==", 0)], [put_op(self.key, b"")])
        return resp.succeeded

    async def release(self) -> None:
        await self.client.delete(self.key)

    async def wait(self, timeout: float | None = None) -> None:
        """Return once the barrier is down (at once if it is not up)."""
        async with asyncio.timeout(timeout):
            resp = await self.client.range(self.key)
            if resp.kvs:
                await wait_event(self.client, self.key, resp.header.revision + 1, DELETE)


class AsyncDoubleBarrier:
    """``count`` participants enter together and leave together (etcd's recipe ``DoubleBarrier``).

    Each participant's key lives on its own lease, so one that dies does not hold the rest forever
    once the lease expires (``ttl`` seconds).
    """

    def __init__(self, client: AsyncClient, prefix: Key, count: int, ttl: int = 10) -> None:
        self.client = client
        self.prefix = to_bytes(prefix).rstrip(b"/")
        self.count = count
        self.ttl = ttl
        self.my_key = b""
        self.lease = 0
        self.keeper: KeepAlive | None = None

    async def enter(self, timeout: float | None = None) -> None:
        """Arrive; return once ``count`` participants have arrived."""
        async with asyncio.timeout(timeout):
            self.lease = (await self.client.lease_grant(self.ttl)).ID
            self.keeper = await self.client.keep_alive(self.lease)
            mine = await create_unique(self.client, self.prefix + b"/waiters", b"", self.lease)
            self.my_key = mine.prev_kv.key
            waiters = await self.client.range(self.prefix + b"/waiters/", prefix=True, count_only=True)
            if waiters.count > self.count:
                await self._quit()
                raise ValueError(f"double barrier {self.prefix!r}: more than {self.count} participants")
            if waiters.count == self.count:
                await self.client.put(self.prefix + b"/ready", b"")
                return
            await wait_event(self.client, self.prefix + b"/ready", mine.header.revision + 1, PUT)

    async def leave(self, timeout: float | None = None) -> None:
        """Depart; return once every participant has left."""
        async with asyncio.timeout(timeout):
            while True:
                waiters = (await self.client.range(self.prefix + b"/waiters/", prefix=True)).kvs
                if not any(kv.key == self.my_key for kv in waiters):
                    break
                if len(waiters) == 1:
                    await self.client.txn(
                        success=[delete_op(self.prefix + b"/ready"), delete_op(self.my_key)]
                    )
                    break
                lowest = min(waiters, key=lambda kv: kv.mod_revision)
                highest = max(waiters, key=lambda kv: kv.mod_revision)
                if lowest.key == self.my_key:  # the last to go: wait for the others
                    await wait_event(self.client, highest.key, highest.mod_revision + 1, DELETE)
                else:
                    await self.client.delete(self.my_key)
                    await wait_event(self.client, lowest.key, lowest.mod_revision + 1, DELETE)
            await self._quit()

    async def _quit(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        await self.client.lease_revoke(self.lease)


# -- blocking twins -----------------------------------------------------------------------------------
class Queue:
    """:class:`AsyncQueue` for a blocking :class:`Client`."""

    def __init__(self, client: Client, prefix: Key) -> None:
        self._runner: LoopThread = client._runner
        self._target = AsyncQueue(client._target, prefix)

    push = blocking(AsyncQueue.push)
    pop = blocking(AsyncQueue.pop)
    size = blocking(AsyncQueue.size)


class Barrier:
    """:class:`AsyncBarrier` for a blocking :class:`Client`."""

    def __init__(self, client: Client, key: Key) -> None:
        self._runner: LoopThread = client._runner
        self._target = AsyncBarrier(client._target, key)

    hold = blocking(AsyncBarrier.hold)
    release = blocking(AsyncBarrier.release)
    wait = blocking(AsyncBarrier.wait)


class DoubleBarrier:
    """:class:`AsyncDoubleBarrier` for a blocking :class:`Client`."""

    def __init__(self, client: Client, prefix: Key, count: int, ttl: int = 10) -> None:
        self._runner: LoopThread = client._runner
        self._target = AsyncDoubleBarrier(client._target, prefix, count, ttl)

    enter = blocking(AsyncDoubleBarrier.enter)
    leave = blocking(AsyncDoubleBarrier.leave)
