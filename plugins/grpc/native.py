"""gRPC over this process's own HTTP/2 (:mod:`plugins.grpc.http2`): the asyncio shell and call layer.

Why not grpcio's server: its C core and Cython cost 220-290 µs of CPU per unary call on this
machine (MEASURED.md section 4), most of the frontend's share of a put, and the box is CPU-bound.
This server does only what gRPC over HTTP/2 needs: a unary call is one parse of the request's
frames, one handler coroutine and one write of precomputed header blocks around the response.

The handlers (:mod:`plugins.grpc.server`) take ``(request bytes, CallContext)``; an EtcdError they
raise becomes the call's status. Errors of the transport itself are grpc-go's codes and texts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors.errors import Code, EtcdError
from node import tls
from plugins.grpc import http2
from plugins.grpc.hpack import encode

log = structlog.get_logger()

STREAM_WRITE_LIMIT = 256 * 1024  # queued bytes of one streaming response before its handler waits
WRITE_HIGH, WRITE_LOW = 1024 * 1024, 256 * 1024
BIDI_QUEUE = 64  # unread requests of a stream before its window is no longer credited

RESPONSE_HEADERS = encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
TRAILERS_OK = encode([(b"grpc-status", b"0")])
_MESSAGE_PREFIX = struct.Struct(">BI")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


class Kind(enum.Enum):
    UNARY = 1
    SERVER_STREAM = 2
    BIDI = 3


@dataclass(frozen=True, slots=True)
class Route:
    """A method: how it streams, and its handler ``(request or request iterator, CallContext)``."""

    kind: Kind
    handler: Callable[..., Any]


@dataclass
class Service:
    """What a connection serves: ``/package.Service/Method`` -> method, and the receive limit."""

    methods: dict[str, Route] = field(default_factory=dict)
    max_receive: int = 4 * 1024 * 1024
    services: set[str] = field(default_factory=set)
    connections: set[GrpcProtocol] = field(default_factory=set)

    def add(self, service: str, name: str, kind: Kind, handler: Callable[..., Any]) -> None:
        self.methods[f"/{service}/{name}"] = Route(kind, handler)
        self.services.add(service)


def percent_encode(message: str) -> bytes:
    """grpc-message's encoding: printable ASCII except '%' as is, every other byte as %XX."""
    return b"".join(
        bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in message.encode()
    )


def status_block(code: int, message: str, trailers_only: bool) -> bytes:
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc")] if trailers_only else []
    headers.append((b"grpc-status", str(int(code)).encode()))
    if message:
        headers.append((b"grpc-message", percent_encode(message)))
    return encode(headers)


def binary_value(value: bytes) -> bytes:
    """A ``-bin`` metadata value: base64, padded or not (gRPC sends it unpadded)."""
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return b""


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout (``1S``, ``250m`` ...) in seconds; None when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class CallContext:
    """What a handler may know of its call: the client's metadata and certificate, and its end."""

    __slots__ = ("_callbacks", "_ended", "common_name", "metadata")

    def __init__(self, metadata: list[tuple[str, str | bytes]], common_name: str | None) -> None:
        self.metadata = metadata
        self.common_name = common_name  # of the verified client certificate (TLS), if any
        self._ended = False
        self._callbacks: list[Callable[[CallContext], None]] = []

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self.metadata

    def done(self) -> bool:
        return self._ended

    def add_done_callback(self, callback: Callable[[CallContext], None]) -> None:
        """``callback(context)`` when the call ends: answered, cancelled, past its deadline."""
        self._callbacks.append(callback)

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            for callback in self._callbacks:
                callback(self)
            self._callbacks.clear()


class Call:
    """One RPC on one stream."""

    __slots__ = (
        "buffer", "context", "encoding", "headers_sent", "method", "requests", "stream_id", "task",
        "timer", "withheld",
    )  # fmt: skip

    def __init__(self, stream_id: int, method: Route, context: CallContext, encoding: bytes | None) -> None:
        self.stream_id = stream_id
        self.method = method
        self.context = context
        self.encoding = encoding  # grpc-encoding, if it names a compression: compressed messages are refused
        self.buffer = bytearray()
        self.requests: list[bytes] | asyncio.Queue[bytes | None] = (
            asyncio.Queue() if method.kind is Kind.BIDI else []
        )
        self.headers_sent = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.withheld = 0


class GrpcProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, service: Service, limits: http2.Limits | None = None) -> None:
        self.service = service
        self.h2 = http2.Connection(limits)
        self.calls: dict[int, Call] = {}
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.common_name: str | None = None
        self.flush_scheduled = False
        self.paused = False
        self.waiters: list[asyncio.Future[None]] = []
        self.loop = asyncio.get_event_loop()

    # ---- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]
        address = transport.get_extra_info("peername")
        self.peer = f"ipv4:{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.common_name = tls.common_name(transport.get_extra_info("peercert"))
        self.service.connections.add(self)
        self._flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive(data):
            kind = type(event)
            if kind is http2.DataReceived:
                self._data(event)  # type: ignore[arg-type]
            elif kind is http2.RequestReceived:
                self._request(event)  # type: ignore[arg-type]
            elif kind is http2.StreamReset:
                self._cancel(event.stream_id)  # type: ignore[union-attr]
            elif kind is http2.GoAwayReceived:
                self.h2.close()
            else:
                log.warning("grpc_connection_error", peer=self.peer, error=event.message)  # type: ignore[union-attr]
                for stream_id in list(self.calls):
                    self._cancel(stream_id)
        self._wake()
        self._flush()
        if self.h2.failed:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self)
        for stream_id in list(self.calls):
            self._cancel(stream_id)
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def stop(self) -> None:
        """Graceful: GOAWAY; the calls in progress finish, then the connection closes."""
        self.h2.close()
        self._flush()
        if not self.calls and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """The end of a graceful stop: the calls still running are cancelled, the socket closed."""
        for stream_id in list(self.calls):
            self._cancel(stream_id)
        self._flush()
        if self.transport is not None:
            self.transport.close()

    # ---- output

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _writable(self, call: Call) -> None:
        """Wait while the stream's output or the socket's buffer is full (a slow reader)."""
        while call.stream_id in self.calls and (
            self.paused or self.h2.queued(call.stream_id) > STREAM_WRITE_LIMIT
        ):
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            self._schedule_flush()
            await waiter

    def _send_message(self, call: Call, message: bytes) -> None:
        if not call.headers_sent:
            call.headers_sent = True
            self.h2.send_headers(call.stream_id, RESPONSE_HEADERS)
        self.h2.send_data(call.stream_id, _MESSAGE_PREFIX.pack(0, len(message)) + message)

    def _finish(self, call: Call, code: int = 0, message: str = "") -> None:
        """The call's status: trailers (or trailers-only); the stream and its context end."""
        if self.calls.pop(call.stream_id, None) is None:
            return
        if code == 0 and call.headers_sent:
            block = TRAILERS_OK
        else:
            block = status_block(code, message, trailers_only=not call.headers_sent)
        self.h2.send_headers(call.stream_id, block, end_stream=True)
        self._end(call)
        self._schedule_flush()
        if self.h2.closing and not self.calls:
            self.loop.call_soon(self._close_when_flushed)

    def _close_when_flushed(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()  # asyncio writes what is buffered first

    def _end(self, call: Call) -> None:
        if call.timer is not None:
            call.timer.cancel()
        call.context.end()

    # ---- input

    def _request(self, event: http2.RequestReceived) -> None:
        stream_id = event.stream_id
        path = content_type = b""
        timeout = encoding = None
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in event.headers:
            if name == b":path":
                path = value
            elif name[:1] == b":" or name == b"te":
                continue
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = parse_timeout(value)
            elif name == b"grpc-encoding":
                encoding = value
            elif not name.startswith(b"grpc-"):
                key = name.decode("latin-1")
                metadata.append(
                    (key, binary_value(value) if key.endswith("-bin") else value.decode("latin-1"))
                )
        if not content_type.startswith(b"application/grpc"):
            self.h2.send_headers(stream_id, encode([(b":status", b"415")]), end_stream=True)
            return
        method = self.service.methods.get(path.decode("latin-1"))
        context = CallContext(metadata, self.common_name)
        call = Call(
            stream_id,
            method or Route(Kind.UNARY, None),
            context,
            None if encoding == b"identity" else encoding,
        )
        self.calls[stream_id] = call
        if method is None:
            self._finish(
                call,
                Code.UNIMPLEMENTED,
                unknown_method(path.decode("latin-1"), self.service),
            )
            return
        if timeout is not None:
            call.timer = self.loop.call_later(timeout, self._deadline, stream_id)
        if method.kind is Kind.BIDI:
            call.task = self.loop.create_task(self._run(call, self._bidi(call)))
        if event.end_stream:
            self._end_of_requests(call)

    def _data(self, event: http2.DataReceived) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        data = event.data
        if data:
            if call.method.kind is Kind.BIDI and call.requests.qsize() >= BIDI_QUEUE:  # type: ignore[union-attr]
                call.withheld += len(data)
            else:
                self.h2.consumed(call.stream_id, len(data))
            buffer = call.buffer
            buffer += data
            while len(buffer) >= 5:
                compressed, length = _MESSAGE_PREFIX.unpack_from(buffer)
                error = self._message_error(call, compressed, length)
                if error is not None:
                    self._fail(call, *error)
                    return
                if len(buffer) < 5 + length:
                    break
                message = bytes(buffer[5 : 5 + length])
                del buffer[: 5 + length]
                if call.method.kind is Kind.BIDI:
                    call.requests.put_nowait(message)  # type: ignore[union-attr]
                else:
                    call.requests.append(message)  # type: ignore[union-attr]
        if event.end_stream:
            self._end_of_requests(call)

    def _message_error(self, call: Call, compressed: int, length: int) -> tuple[int, str] | None:
        if compressed:
            if call.encoding is None:
                return Code.INTERNAL, "grpc: compressed flag set with identity or empty encoding"
            name = call.encoding.decode("latin-1")
            return Code.UNIMPLEMENTED, f'grpc: Decompressor is not installed for grpc-encoding "{name}"'
        if length > self.service.max_receive:
            return (
                Code.RESOURCE_EXHAUSTED,
                f"grpc: received message larger than max ({length} vs. {self.service.max_receive})",
            )
        return None

    def _end_of_requests(self, call: Call) -> None:
        if call.stream_id not in self.calls:
            return
        if call.buffer:
            self._fail(call, Code.INTERNAL, "grpc: the request ended inside a message")
            return
        if call.method.kind is Kind.BIDI:
            call.requests.put_nowait(None)  # type: ignore[union-attr]
            return
        requests = call.requests
        if len(requests) != 1:  # type: ignore[arg-type]
            self._finish(
                call,
                Code.INTERNAL,
                f"grpc: {len(requests)} request messages for a unary request",
            )  # type: ignore[arg-type]
            return
        request = requests[0]  # type: ignore[index]
        body = (
            self._unary(call, request)
            if call.method.kind is Kind.UNARY
            else self._server_stream(call, request)
        )
        call.task = self.loop.create_task(self._run(call, body))

    def _fail(self, call: Call, code: int, message: str) -> None:
        if call.task is not None:
            call.task.cancel()
        self._finish(call, code, message)

    def _cancel(self, stream_id: int) -> None:
        """The client reset the stream or went away: the handler is cancelled, nothing is sent."""
        call = self.calls.pop(stream_id, None)
        if call is None:
            return
        if call.task is not None:
            call.task.cancel()
        self._end(call)
        self.h2.reset(stream_id)
        self._schedule_flush()

    def _deadline(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            self._fail(call, Code.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # ---- handlers

    async def _run(self, call: Call, body: Awaitable[None]) -> None:
        try:
            await body
        except EtcdError as e:
            self._finish(call, e.code, e.message)
        except asyncio.CancelledError:
            self._finish(call, Code.CANCELLED, "Cancelled")
        except Exception as e:
            log.exception("grpc_handler_failed", method=call.method.handler, error=str(e))
            self._finish(call, Code.UNKNOWN, f"Unexpected {type(e).__name__}: {e}")
        else:
            self._finish(call)

    async def _unary(self, call: Call, request: bytes) -> None:
        response = await call.method.handler(request, call.context)
        if call.stream_id in self.calls:
            self._send_message(call, response)

    async def _server_stream(self, call: Call, request: bytes) -> None:
        await self._stream_out(call, call.method.handler(request, call.context))

    async def _bidi(self, call: Call) -> None:
        await self._stream_out(call, call.method.handler(self._requests(call), call.context))

    async def _stream_out(self, call: Call, responses: AsyncIterator[bytes]) -> None:
        try:
            async for response in responses:
                if call.stream_id not in self.calls:
                    return
                self._send_message(call, response)
                self._schedule_flush()
                await self._writable(call)
        finally:
            with contextlib.suppress(Exception):
                await responses.aclose()  # type: ignore[attr-defined]

    async def _requests(self, call: Call) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = call.requests  # type: ignore[assignment]
        while (message := await queue.get()) is not None:
            if call.withheld and queue.qsize() < BIDI_QUEUE:
                self.h2.consumed(call.stream_id, call.withheld)
                call.withheld = 0
                self._schedule_flush()
            yield message


def unknown_method(path: str, service: Service) -> str:
    """grpc-go's UNIMPLEMENTED texts for a path it cannot route."""
    name = path[1:] if path.startswith("/") else path
    if "/" not in name:
        return f"malformed method name: {path!r}"
    package, method = name.rsplit("/", 1)
    if package not in service.services:
        return f"unknown service {package}"
    return f"unknown method {method} for service {package}"
