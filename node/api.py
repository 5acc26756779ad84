"""``Client``: the one asyncio client of the core's message protocol, shared by every frontend.

Frontends hand it serialized etcd request messages and get serialized responses back; it never
looks inside them. Calls made during one event-loop iteration leave in ONE frame (pyzmq's cost
is per frame), and the core answers in batches the same way, so a frontend under load pays a few
microseconds of transport per request instead of a round trip each. Watch streams are
:class:`Stream` objects: the frontend sends WatchRequests and reads the responses the core
pushes, with backpressure toward the core's watch hub.

The core process may die and be restarted by the supervisor; it then knows nothing of the calls
and streams it had. Every frame the core sends carries its *incarnation* (a random number drawn at
its start) in ``aux``, and it answers the heartbeats this client sends every
:data:`HEARTBEAT_INTERVAL`. When the incarnation changes, or the core stays silent for
:data:`CORE_SILENCE`, every pending call fails and every open stream ends with
:data:`CORE_LOST` (gRPC UNAVAILABLE, which etcd clients retry: a watch reconnects and resumes
from its last revision) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog
import zmq

from actors import errors
from actors.protocol import Kind, MalformedFrame, Method, Record, encode_with_token, pack, unpack

log = structlog.get_logger()


HEARTBEAT_INTERVAL = 0.5  # seconds; the core's session actor forgets frontends silent for FRONTEND_TIMEOUT
# seconds without any frame from the core (it answers every heartbeat) before its calls and streams
# are given up: twice the session actor's FRONTEND_TIMEOUT, so a core busy for a few seconds (a
# defragmentation, a large snapshot) keeps its streams, and one that is gone for good frees them
CORE_SILENCE = 10.0
# what pending calls and open streams end with when the core restarted or went silent: etcd's
# ErrGRPCStopped, code UNAVAILABLE, which clientv3 retries (a watch reconnects and resumes)
CORE_LOST = errors.STOPPED
STREAM_HIGH_WATER = 256  # pushed responses a frontend holds for one stream before it says "blocked"
STREAM_HIGH_BYTES = 8 << 20  # ... or bytes of them (a few large values must not pile up either)
STREAM_LOW_WATER = 32  # ... and says "ready" again once the stream has drained to this


class Stream:
    """One watch stream: requests go to the core's watch hub, its responses come back pushed.

    When the consumer (a gRPC client that does not read) falls behind, the stream tells the
    hub it is blocked; the hub stops live sending and later replays from history, so memory here
    stays bounded by the high-water mark plus what was already in flight.
    """

    def __init__(self, client: Client, stream_id: int, token: str | None = None) -> None:
        self.client = client
        self.id = stream_id
        self.token = token  # every record of the stream carries it, so they stay in order
        self.queue: asyncio.Queue[bytes | errors.EtcdError] = asyncio.Queue()
        self.queued_bytes = 0
        self.blocked = False
        self.ended: errors.EtcdError | None = None  # the core lost the stream: get() raises this

    def send(self, request: bytes) -> None:
        if self.ended is None:  # a request on a lost stream would open a stray one on the new core
            self.client._enqueue((self.id, Method.WATCH, request), self.token)

    def _push(self, response: bytes) -> None:
        self.queue.put_nowait(response)
        self.queued_bytes += len(response)
        full = self.queue.qsize() >= STREAM_HIGH_WATER or self.queued_bytes >= STREAM_HIGH_BYTES
        if not self.blocked and full:
            self.blocked = True
            self.client._enqueue((self.id, Method.WATCH_BLOCKED, b""), self.token)

    def _end(self, error: errors.EtcdError) -> None:
        """The core lost this stream (restart) or refused it (a learner's): responses already
        queued come first, then ``error``."""
        self.ended = error
        self.queue.put_nowait(error)

    async def get(self) -> bytes:
        """The next response pushed by the core; raises :class:`EtcdError` once the stream is lost."""
        response = await self.queue.get()
        if isinstance(response, errors.EtcdError):
            self.queue.put_nowait(response)  # every later get() raises it too
            raise response.copy()
        self.queued_bytes -= len(response)
        if (
            self.blocked
            and self.queue.qsize() <= STREAM_LOW_WATER
            and self.queued_bytes < STREAM_HIGH_BYTES // 8
        ):
            self.blocked = False
            self.client._enqueue((self.id, Method.WATCH_READY, b""), self.token)
        return response

    def close(self) -> None:
        if self.client._streams.pop(self.id, None) is not None:
            self.client._enqueue((self.id, Method.WATCH_CLOSE, b""), self.token)


class Client:
    """Pipelined request/response over a DEALER socket connected to the core's session actor.

    The socket is a plain (blocking-API) pyzmq socket watched with the event loop's ``add_reader``
    on its edge-triggered FD: zmq.asyncio's per-call futures and events cost more than the whole
    rest of this class (profiled: ~18% of the frontend's CPU under a put load).
    """

    _log = log  # per-request events; a subclass used outside the node may quiet them

    def __init__(
        self,
        url: str,
        timeout: float = 7.0,
        context: zmq.Context | None = None,
        options: Mapping[int, int | bytes] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        for option, value in (options or {}).items():  # before connecting: e.g. a routing id
            self._sock.setsockopt(option, value)
        self._sock.connect(url)
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future[bytes], float]] = {}
        self._outbox: list[Record] = []
        self._token_outbox: list[Record] = []  # requests carrying a client's auth token
        self._streams: dict[int, Stream] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._incarnation: int | None = None  # the core's, from the aux of its frames
        self._heard = time.monotonic()  # when the core last sent a frame
        self._loop: asyncio.AbstractEventLoop  # the loop `start` ran in: every call comes from it

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._heard = time.monotonic()
        loop.add_reader(self._sock.getsockopt(zmq.FD), self._receive)
        loop.call_soon(self._receive)  # the FD is edge-triggered: take what came before we watched
        self._tasks = [asyncio.create_task(self._expire())]

    async def call(self, method: int, request: bytes, token: str | None = None) -> bytes:
        """Send one request; return the response message or raise the node's :class:`EtcdError`.

        ``token`` is the client's auth token (gRPC metadata ``token``, the REST ``Authorization``
        header, a RESP ``AUTH``, a field of the ZeroMQ protocol): the core resolves it to a user.
        """
        return await self.submit(method, request, token)

    def submit(self, method: int, request: bytes, token: str | None = None) -> asyncio.Future[bytes]:
        """:meth:`call` without a coroutine: a relay answering thousands of requests per turn
        attaches a callback to the future instead of paying for a task per request."""
        rid = self._new_id()
        future = self._loop.create_future()
        self._pending[rid] = (future, time.monotonic() + self.timeout)
        self._enqueue((rid, method, request), token)
        self._log.debug("request_sent", request_id=rid, method=method)  # filtered below debug: ~0.2 µs
        return future

    def open_stream(self, token: str | None = None) -> Stream:
        stream = Stream(self, self._new_id(), token)
        self._streams[stream.id] = stream
        return stream

    def _new_id(self) -> int:
        """Request and stream ids share one sequence, so a record's id names one thing."""
        rid = self._next_id
        self._next_id += 1
        return rid

    def _enqueue(self, record: Record, token: str | None = None) -> None:
        if not self._outbox and not self._token_outbox:
            self._loop.call_soon(self._flush)
        if token is None:
            self._outbox.append(record)
        else:
            rid, method, body = record
            self._token_outbox.append((rid, method, encode_with_token(token, body)))

    def _flush(self) -> None:
        records, self._outbox = self._outbox, []
        if records:
            self._send_frame(pack(Kind.REQUEST, records))
        if self._token_outbox:
            records, self._token_outbox = self._token_outbox, []
            self._send_frame(pack(Kind.TOKEN_REQUEST, records))

    send_flags = 0  # AsyncClient: zmq.NOBLOCK (a remote server may leave it with no connection)

    def _send_frame(self, frame: bytes) -> None:
        if self._sock.closed:  # a flush scheduled before close(): nobody is left to answer
            return
        self._sock.send(frame, self.send_flags)  # SNDHWM 0: never blocks while connected
        # any operation on the socket may consume the FD's edge for input that is waiting
        if self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._loop.call_soon(self._receive)

    def _receive(self) -> None:
        """Take every frame waiting on the socket (the loop calls this when its FD signals)."""
        sock = self._sock
        while not sock.closed and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._dispatch(sock.recv(zmq.NOBLOCK))

    def _dispatch(self, frame: bytes) -> None:
        try:
            kind, aux, records = unpack(frame)
        except MalformedFrame as e:
            log.error("core_frame_malformed", error=str(e))
            return
        self._heard = time.monotonic()
        self._on_frame(kind, aux, records)

    def _on_frame(self, kind: int, aux: int, records: list[Record]) -> None:
        if kind == Kind.PUSH:
            for sid, status, body in records:
                stream = self._streams.get(sid)
                if stream is None:
                    continue
                if status:
                    stream._end(errors.EtcdError(errors.Code(status), body.decode(errors="replace")))
                else:
                    stream._push(body)
        elif kind == Kind.RESULT:
            for rid, status, body in records:
                self._resolve(rid, status, body)
        if aux != self._incarnation:
            if self._incarnation is not None:
                # after this frame's records: those are the new core's answers to calls it has
                self._lose_core("core_restarted")
            self._incarnation = aux

    def _lose_core(self, event: str) -> None:
        """Fail every pending call and end every open stream with :data:`CORE_LOST`.

        Each stream's close is still sent: a core that was only slow drops its watchers, and a
        restarted one ignores closes of streams it never had.
        """
        calls, self._pending = self._pending, {}
        streams, self._streams = self._streams, {}
        self._log.warning(event, calls=len(calls), streams=len(streams))
        for future, _ in calls.values():
            if not future.done():
                future.set_exception(CORE_LOST.copy())
        for stream in streams.values():
            stream._end(CORE_LOST.copy())
            self._enqueue((stream.id, Method.WATCH_CLOSE, b""), stream.token)

    def _resolve(self, rid: int, status: int, body: bytes) -> None:
        """Answer the call waiting for ``rid``: its response, or the error the status and text say."""
        entry = self._pending.pop(rid, None)
        if entry is None or entry[0].done():
            return
        if status == 0:
            entry[0].set_result(body)
        else:
            text = body.decode(errors="replace")
            self._log.warning("request_failed", request_id=rid, code=errors.Code(status).name, error=text)
            entry[0].set_exception(errors.EtcdError(errors.Code(status), text))

    async def _expire(self) -> None:
        """Fail calls the core never answered (a leader was lost) with etcd's timeout, and give
        up on a core silent for :data:`CORE_SILENCE`.

        Every turn also sends a frame even when idle: the core takes a frontend that stays silent
        for several seconds to be gone, and drops its watch streams; its answer is how a silent
        core (or a restarted one) is noticed.
        """
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if not self._outbox:
                self._send_frame(pack(Kind.REQUEST, []))
            now = time.monotonic()
            if now - self._heard > CORE_SILENCE:
                self._heard = now  # at most once per CORE_SILENCE while it stays away
                if self._pending or self._streams:
                    self._lose_core("core_silent")
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
        self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
        self._sock.close(linger=0)
