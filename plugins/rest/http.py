"""A small HTTP/1.1 server on ``asyncio.Protocol`` with h11 doing the parsing and framing.

What the gateway needs and no more: keep-alive and pipelining (h11 pauses after each request until
its response is out), request bodies read whole (bounded) or streamed to the handler as they come
(watch and keep-alive streams may keep sending), responses with a length or chunked and streamed
with write backpressure, and limits against clients that send too much or too slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Protocol

import h11
import structlog

log = structlog.get_logger()

Headers = list[tuple[bytes, bytes]]
LINGER_SECONDS = 2.0  # how long a refused client may go on sending before the connection is closed
Handler = Callable[["Exchange"], Awaitable[None]]


class App(Protocol):
    def resolve(self, method: str, path: str) -> tuple[Handler, bool]:
        """The handler for a request, and whether it reads its body as a stream."""


class Limits:
    """Per-connection bounds: body size, time to receive one whole request, header size."""

    def __init__(self, max_body: int, request_timeout: float, max_header: int = 64 * 1024) -> None:
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_header = max_header


class Exchange:
    """One request and its response, as a handler sees it."""

    __slots__ = ("_chunks", "_conn", "_started", "body", "headers", "http10", "method", "path", "query")

    def __init__(self, conn: HttpConnection, request: h11.Request) -> None:
        self._conn = conn
        self.method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        self.path, _, self.query = target.partition("?")
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        self.http10 = request.http_version == b"1.0"
        self.body = b""
        self._chunks: asyncio.Queue[bytes | None] | None = None
        self._started = False

    # -- request body, for streaming handlers ------------------------------------------------------------
    async def read(self) -> bytes | None:
        """The next piece of a streamed body; None once it is complete (or the client went away)."""
        assert self._chunks is not None, "read() is for handlers that stream their body"
        return await self._chunks.get()

    # -- responses ---------------------------------------------------------------------------------------
    async def respond(self, status: int, body: bytes, headers: Headers = ()) -> None:
        """A whole response with a Content-Length."""
        all_headers = [*headers, (b"content-length", str(len(body)).encode())]
        response = h11.Response(status_code=status, headers=all_headers, reason=_reason(status))
        self._conn.send_response(response, body, end=True)

    def begin(self, status: int, headers: Headers = ()) -> None:
        """Start a streamed (chunked) response; follow with :meth:`write` and :meth:`finish`."""
        self._started = True
        response = h11.Response(status_code=status, headers=list(headers), reason=_reason(status))
        self._conn.send_response(response, b"", end=False)

    async def write(self, data: bytes) -> None:
        """One chunk of a streamed response; waits while the client is not reading."""
        await self._conn.send_data(data)

    def finish(self) -> None:
        self._conn.end_response()

    @property
    def started(self) -> bool:
        return self._started


class HttpConnection(asyncio.Protocol):
    """One client connection: h11 state, the exchange in progress, write flow control."""

    def __init__(self, app: App, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.streaming = False
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self._handler: Handler | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # draining what a refused client still sends
        try:
            self.conn.receive_data(data)
        except RuntimeError:  # data after the connection was marked closed: ignore it
            return
        self._pump()

    def eof_received(self) -> bool:
        if self.closed:
            return False  # a lingering close is over once the client is done sending
        with contextlib.suppress(RuntimeError):
            self.conn.receive_data(b"")
        self._pump()
        return True  # keep our side open: a streamed response may still be going out

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.writable.set()
        if self.exchange is not None and self.exchange._chunks is not None:
            self.exchange._chunks.put_nowait(None)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- reading -----------------------------------------------------------------------------------------
    def _pump(self) -> None:
        while not self.closed:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._fail(e.error_status_hint, str(e))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.NEED_DATA and self.exchange is None and self.conn.trailing_data[0]:
                    self._arm_timer()  # part of the next request is here: it must complete in time
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._on_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._on_end()
            elif isinstance(event, h11.ConnectionClosed):
                # The client is gone: as Go's server cancels a request's context when its connection
                # reads EOF, the handler still at work is cancelled (a lock waiter leaves the line).
                if self.task is not None and not self.task.done():
                    self.task.cancel()
                self._close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self._arm_timer()
        exchange = self.exchange = Exchange(self, request)
        self.body_parts, self.body_size = [], 0
        length = exchange.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body:
            self._reject_body(exchange)
            return
        handler, self.streaming = self.app.resolve(exchange.method, exchange.path)
        if self.conn.client_is_waiting_for_100_continue:
            self.transport.write(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        if self.streaming:
            exchange._chunks = asyncio.Queue()
            self._cancel_timer()  # a streamed body may stay open as long as the response does
            self.task = asyncio.ensure_future(self._run(handler, exchange))
        else:
            self._handler = handler

    def _on_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or self.closed:
            return
        self.body_size += len(data)
        if self.body_size > self.limits.max_body:
            if not self.streaming:
                self._reject_body(exchange)
                return
            self.body_size = 0  # a stream is bounded per message by its consumer, not in total
        if self.streaming:
            assert exchange._chunks is not None
            exchange._chunks.put_nowait(data)
        else:
            self.body_parts.append(data)

    def _on_end(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        if self.streaming:
            assert exchange._chunks is not None
            exchange._chunks.put_nowait(None)
            return
        if self.task is not None and not self.task.done():
            return  # already answered early (body too large) and closing
        self._cancel_timer()
        exchange.body = b"".join(self.body_parts)
        self.body_parts = []
        assert self._handler is not None
        self.task = asyncio.ensure_future(self._run(self._handler, exchange))

    async def _run(self, handler: Handler, exchange: Exchange) -> None:
        try:
            await handler(exchange)
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # the client went away while we were answering
            self._close()
        except Exception as e:  # a bug in a handler: answer 500 rather than leave the client hanging
            log.warning("rest_handler_failed", path=exchange.path, error=repr(e))
            if not exchange.started and self.conn.our_state == h11.SEND_RESPONSE:
                body = b'{"error":"internal error","message":"internal error","code":13}'
                await exchange.respond(500, body, [(b"content-type", b"application/json")])
            else:
                self._close()

    # -- writing -----------------------------------------------------------------------------------------
    def send_response(self, response: h11.Response, body: bytes, end: bool) -> None:
        if self.closed:
            return
        try:
            out = [self.conn.send(response)]
            if body:
                out.append(self.conn.send(h11.Data(data=body)))
            if end:
                out.append(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as e:
            log.warning("rest_response_refused", error=str(e))
            self._close()
            return
        self.transport.write(b"".join(out))
        if end:
            self._response_done()

    async def send_data(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("client went away")
        self.transport.write(self.conn.send(h11.Data(data=data)))
        if not self.writable.is_set():
            await self.writable.wait()
            if self.closed:
                raise ConnectionResetError("client went away")

    def end_response(self) -> None:
        if self.closed:
            return
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self._response_done()

    def _response_done(self) -> None:
        conn = self.conn
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self._close()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.exchange = None
            self.task = None
            self.streaming = False
            asyncio.get_running_loop().call_soon(self._pump)  # a pipelined request may be waiting
        else:
            # answered before the request was fully read (a refused body, a stream that ended
            # first): this connection cannot carry another request reliably
            self._close()

    def _reject_body(self, exchange: Exchange) -> None:
        body = b'{"error":"request body too large","message":"request body too large","code":8}'
        self._cancel_timer()
        self.task = asyncio.ensure_future(asyncio.sleep(0))  # marks the exchange answered
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            data = self.conn.send(h11.Response(status_code=413, headers=headers, reason=_reason(413)))
            data += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            data = b""
        self.transport.write(data)
        self._linger_close()

    def _fail(self, status: int, reason: str) -> None:
        """A request h11 cannot parse: answer if nothing was sent yet, then close."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self.task is None:
            status = status if 400 <= status < 600 else 400
            body = f"{status} Bad Request: {reason}\n".encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, _REASONS.get(status, b"Bad Request"), len(body), body)
            )
        self._linger_close()

    # -- time limit on receiving a request -------------------------------------------------------------
    def _arm_timer(self) -> None:
        if self.timer is None and self.limits.request_timeout > 0:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.limits.request_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.closed:
            return
        log.warning("rest_request_timeout", peer=str(self.transport.get_extra_info("peername")))
        self._fail(408, "request not received in time")

    def _linger_close(self) -> None:
        """Close after an error answer without losing it: a client still sending when we close would
        get a reset, and with it lose our answer. So stop writing, read and drop what still comes
        for a moment, then close."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timer()
            self.transport.close()
            if self.streaming and self.task is not None and not self.task.done():
                self.task.cancel()


_PHRASES: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    phrase = _PHRASES.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        _PHRASES[status] = phrase
    return phrase


_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}
