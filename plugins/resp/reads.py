"""GETs from every connection during one event-loop turn, read as one ``GET_MANY`` request.

A pipelined read load (``redis-benchmark -P 16`` with 50 clients) brings hundreds of GETs per
turn. Each core request has a fixed cost (a ReadIndex, routing) several times that of reading one
key, so the GETs of a turn go to the core together: up to ``point_reads.MAX_KEYS`` keys per
request, which the node serves as one linearizable read at one revision, each key answered on its
own (actors/point_reads.py). Every GET was received before the read is made, so each still sees
every write acknowledged before it was sent.
"""

from __future__ import annotations

import asyncio

from actors import point_reads
from actors.errors import EtcdError
from actors.protocol import Method
from plugins.resp.store import Store

BATCH_KEYS = point_reads.MAX_KEYS  # the most GETs in one core request
Waiter = tuple[asyncio.Future[list[point_reads.Result]], int]  # a run of GETs: its future, its key count


class ReadBatcher:
    """Collects GET runs; answers each with its results (a value, None for a missing key, or an error).

    GETs are merged only with GETs sent with the same auth token (every connection that has not
    authenticated shares None), so each read is checked against its own user's permissions.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # kept: asyncio.get_running_loop() costs a getpid() system call each time
        # per token: a store that sends with it, the keys asked this turn, and each run's waiter
        self.turn: dict[str | None, tuple[Store, list[bytes], list[Waiter]]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    def get(self, store: Store, keys: list[bytes]) -> asyncio.Future[list[point_reads.Result]]:
        """Each key's value, None or error (at most BATCH_KEYS keys), read with the turn's other GETs."""
        loop = self.loop
        if not self.turn:
            loop.call_soon(self._flush)
        future: asyncio.Future[list[point_reads.Result]] = loop.create_future()
        _, pending, waiters = self.turn.setdefault(store.token, (store, [], []))
        waiters.append((future, len(keys)))
        pending.extend(keys)
        return future

    def _flush(self) -> None:
        turn, self.turn = self.turn, {}
        for store, keys, waiters in turn.values():
            self._flush_store(store, keys, waiters)

    def _flush_store(self, store: Store, keys: list[bytes], waiters: list[Waiter]) -> None:
        start = 0
        group: list[Waiter] = []
        size = 0
        for waiter in waiters:
            if size + waiter[1] > BATCH_KEYS:
                self._read(store, keys[start : start + size], group)
                start, size, group = start + size, 0, []
            group.append(waiter)
            size += waiter[1]
        self._read(store, keys[start : start + size], group)

    def _read(self, store: Store, keys: list[bytes], waiters: list[Waiter]) -> None:
        task = self.loop.create_task(self._call(store, keys, waiters))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _call(self, store: Store, keys: list[bytes], waiters: list[Waiter]) -> None:
        try:
            body = await store.call(Method.GET_MANY, point_reads.encode_request(keys))
        except EtcdError as e:
            for future, _ in waiters:
                if not future.done():
                    future.set_exception(e)
            return
        values = point_reads.decode_response(body)[1]
        start = 0
        for future, count in waiters:
            if not future.done():
                future.set_result(values[start : start + count])
            start += count
