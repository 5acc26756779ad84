"""GETs from every connection during one event-loop turn, read as one read-only Txn of ranges.

A pipelined read load (``redis-benchmark -P 16`` with 50 clients) brings hundreds of GETs per
turn. Each core request has a fixed cost (validation, a ReadIndex, routing) several times that of
reading one key, so the GETs of a turn go to the core together: up to ``max-txn-ops`` ranges per
Txn, which the node serves as one linearizable read at one revision. Every GET was received
before the read is made, so each still sees every write acknowledged before it was sent.
"""

from __future__ import annotations

import asyncio

from actors.errors import EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Method
from plugins.resp.store import Store

TXN_RANGES = 128  # etcd's default max-txn-ops: the most ranges in one Txn


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ranges_txn(keys: list[bytes]) -> bytes:
    """``TxnRequest{success: [RequestOp{request_range: RangeRequest{key}}...]}`` serialized.

    Written by hand because building the messages costs more than the read itself here; a test
    checks it against protobuf's own serialization.
    """
    parts = []
    for key in keys:
        inner = b"\x0a" + _varint(len(key)) + key if key else b""  # RangeRequest.key = 1
        op = b"\x0a" + _varint(len(inner)) + inner  # RequestOp.request_range = 1
        parts.append(b"\x12" + _varint(len(op)) + op)  # TxnRequest.success = 2
    return b"".join(parts)


class ReadBatcher:
    """Collects GET runs; answers each with its values (None for a missing key).

    GETs are merged only with GETs made as the same etcd user (same :class:`Store`), so each
    read is checked against its own user's permissions.
    """

    def __init__(self) -> None:
        # per store: the keys asked this turn, and (future, key count) for each run of them
        self.turn: dict[Store, tuple[list[bytes], list[tuple[asyncio.Future[list[bytes | None]], int]]]] = {}
        self._reads: set[asyncio.Task[None]] = set()

    def get(self, store: Store, keys: list[bytes]) -> asyncio.Future[list[bytes | None]]:
        """The values of ``keys`` (at most TXN_RANGES), read together with the turn's other GETs."""
        loop = asyncio.get_running_loop()
        if not self.turn:
            loop.call_soon(self._flush)
        future: asyncio.Future[list[bytes | None]] = loop.create_future()
        pending, waiters = self.turn.setdefault(store, ([], []))
        waiters.append((future, len(keys)))
        pending.extend(keys)
        return future

    def _flush(self) -> None:
        turn, self.turn = self.turn, {}
        for store, (keys, waiters) in turn.items():
            self._flush_store(store, keys, waiters)

    def _flush_store(self, store: Store, keys: list[bytes], waiters: list) -> None:
        start = 0
        group: list[tuple[asyncio.Future[list[bytes | None]], int]] = []
        size = 0
        for waiter in waiters:
            if size + waiter[1] > TXN_RANGES:
                self._read(store, keys[start : start + size], group)
                start, size, group = start + size, 0, []
            group.append(waiter)
            size += waiter[1]
        self._read(store, keys[start : start + size], group)

    def _read(self, store: Store, keys: list[bytes], waiters: list) -> None:
        task = asyncio.get_running_loop().create_task(self._call(store, keys, waiters))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _call(self, store: Store, keys: list[bytes], waiters: list) -> None:
        try:
            body = await store.call(Method.TXN, ranges_txn(keys))
        except EtcdError as e:
            for future, _ in waiters:
                if not future.done():
                    future.set_exception(e)
            return
        values = [
            r.response_range.kvs[0].value if r.response_range.kvs else None
            for r in rpc_pb2.TxnResponse.FromString(body).responses
        ]
        start = 0
        for future, count in waiters:
            if not future.done():
                future.set_result(values[start : start + count])
            start += count
