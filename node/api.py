"""``Client``: the one asyncio client of the core's message protocol, shared by every frontend.

Frontends hand it serialized etcd request messages and get serialized responses back; it never
looks inside them. Calls made during one event-loop iteration leave in ONE frame (pyzmq's cost is
per frame), and the core answers in batches the same way, so a frontend under load pays a few
microseconds of transport per request instead of a round trip each.
"""

from __future__ import annotations

import asyncio
import time

import structlog
import zmq
import zmq.asyncio

from actors import errors
from actors.protocol import Kind, MalformedFrame, Record, pack, unpack

log = structlog.get_logger()


class Client:
    """Pipelined request/response over a DEALER socket connected to the core's session actor."""

    def __init__(self, url: str, timeout: float = 7.0, context: zmq.asyncio.Context | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.connect(url)
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future[bytes], float]] = {}
        self._outbox: list[Record] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._expire())]

    async def call(self, method: int, request: bytes) -> bytes:
        """Send one request; return the response message or raise the node's :class:`EtcdError`."""
        rid = self._next_id
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = (future, time.monotonic() + self.timeout)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append((rid, method, request))
        return await future

    def _flush(self) -> None:
        records, self._outbox = self._outbox, []
        self._sock.send(pack(Kind.REQUEST, records), copy=False)

    async def _receive(self) -> None:
        while True:
            frame = await self._sock.recv(copy=True)
            try:
                kind, _, records = unpack(frame)
            except MalformedFrame as e:
                log.error("core_frame_malformed", error=str(e))
                continue
            if kind != Kind.RESULT:
                continue
            for rid, status, body in records:
                entry = self._pending.pop(rid, None)
                if entry is None or entry[0].done():
                    continue
                if status == 0:
                    entry[0].set_result(body)
                else:
                    entry[0].set_exception(
                        errors.EtcdError(errors.Code(status), body.decode(errors="replace"))
                    )

    async def _expire(self) -> None:
        """Fail calls the core never answered (it restarted, or a leader was lost) with etcd's timeout."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            late = [rid for rid, (_, deadline) in self._pending.items() if deadline < now]
            for rid in late:
                future, _ = self._pending.pop(rid)
                if not future.done():
                    future.set_exception(errors.TIMEOUT.copy())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(errors.STOPPED.copy())
        self._pending.clear()
        self._sock.close(linger=0)
