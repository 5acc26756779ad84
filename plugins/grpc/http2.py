"""The server side of one HTTP/2 connection (RFC 9113), sans-IO: bytes in, events and bytes out.

Written for exactly what gRPC uses: no server push, no priorities (PRIORITY is parsed and
ignored), requests whose headers arrive in one block. :meth:`Connection.receive` takes whatever
the socket read and returns the events it completes; everything the server must write (SETTINGS
and PING acks, WINDOW_UPDATEs, responses) accumulates for :meth:`Connection.data_to_send`. A
protocol violation never raises: it queues GOAWAY with the RFC's error code and returns a
:class:`ConnectionFailed` event, after which the connection only drains its output.

Flow control both ways: the peer's windows bound what :meth:`send_data` writes now (the rest
waits per stream until a WINDOW_UPDATE opens them); our receive windows are credited back in
batches, the connection's as DATA arrives, a stream's as the application consumes it
(:meth:`consumed`), so a client cannot queue unbounded data at a handler that is not reading.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from plugins.grpc.hpack import Decoder, Header, HpackError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x4, 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME_SIZE = 16384

_FRAME_HEADER = struct.Struct(">BHBBI")  # length as 1 + 2 bytes, type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


@dataclass(slots=True)
class Limits:
    """What this server advertises and enforces."""

    max_concurrent_streams: int = 4096
    initial_window: int = 1 << 20  # per stream: a 2 MB request takes two round trips, not 32
    connection_window: int = 16 << 20
    max_header_list_size: int = 64 * 1024
    max_header_block: int = 256 * 1024  # raw HEADERS+CONTINUATION bytes of one block


@dataclass(slots=True)
class RequestReceived:
    stream_id: int
    headers: list[Header]
    end_stream: bool


@dataclass(slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(slots=True)
class StreamReset:
    """The stream ended without a response: the peer's RST_STREAM, or a stream error of ours."""

    stream_id: int
    code: int


@dataclass(slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: int


@dataclass(slots=True)
class ConnectionFailed:
    code: int
    message: str


Event = RequestReceived | DataReceived | StreamReset | GoAwayReceived | ConnectionFailed


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    __slots__ = ("end_sent", "outbox", "received", "remote_open", "send_window", "unacked")

    def __init__(self, send_window: int, remote_open: bool) -> None:
        self.send_window = send_window
        self.remote_open = remote_open  # the client may still send DATA
        self.end_sent = False
        self.received = 0  # flow-controlled bytes received and not yet consumed
        self.unacked = 0  # bytes consumed and not yet credited back
        self.outbox: deque[tuple[int, bytes, bool]] = deque()  # (DATA or HEADERS, payload, end)


class Connection:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.decoder = Decoder(max_header_list_size=self.limits.max_header_list_size)
        self.streams: dict[int, Stream] = {}
        self.highest_stream_id = 0
        self.buffer = bytearray()
        self.out = bytearray()
        self.preface_seen = False
        self.settings_seen = False
        self.failed = False
        self.closing = False  # GOAWAY sent: no new streams
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME_SIZE
        self.send_window = DEFAULT_WINDOW  # connection-level, ours to the peer
        self.receive_window = max(self.limits.connection_window, DEFAULT_WINDOW)
        self.receive_unacked = 0
        self.header_block: bytearray | None = None  # a block awaiting CONTINUATION
        self.header_stream = 0
        self.header_end_stream = False
        self.blocked: dict[int, None] = {}  # streams with queued output, in order
        settings = struct.pack(
            ">HIHIHIHI",
            ENABLE_PUSH, 0,
            MAX_CONCURRENT_STREAMS, self.limits.max_concurrent_streams,
            INITIAL_WINDOW_SIZE, self.limits.initial_window,
            MAX_HEADER_LIST_SIZE, self.limits.max_header_list_size,
        )  # fmt: skip
        self.out += frame(SETTINGS, 0, 0, settings)
        if self.receive_window > DEFAULT_WINDOW:
            self.out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.receive_window - DEFAULT_WINDOW))

    # ---- input

    def receive(self, data: bytes) -> list[Event]:
        if self.failed:
            return []
        self.buffer += data
        events: list[Event] = []
        try:
            self._parse(events)
        except ProtocolError as e:
            self._fail(e.code, str(e))
            events.append(ConnectionFailed(e.code, str(e)))
        except HpackError as e:
            self._fail(COMPRESSION_ERROR, str(e))
            events.append(ConnectionFailed(COMPRESSION_ERROR, str(e)))
        return events

    def _parse(self, events: list[Event]) -> None:
        buffer = self.buffer
        if not self.preface_seen:
            n = min(len(buffer), len(PREFACE))
            if buffer[:n] != PREFACE[:n]:
                raise ProtocolError(PROTOCOL_ERROR, "invalid connection preface")
            if n < len(PREFACE):
                return
            self.preface_seen = True
            del buffer[: len(PREFACE)]
        position = 0
        size = len(buffer)
        try:
            while size - position >= 9:
                high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(buffer, position)
                length = (high << 16) | low
                if length > DEFAULT_FRAME_SIZE:  # we never raise SETTINGS_MAX_FRAME_SIZE
                    raise ProtocolError(
                        FRAME_SIZE_ERROR, f"frame of {length} bytes over {DEFAULT_FRAME_SIZE}"
                    )
                end = position + 9 + length
                if end > size:
                    break
                payload = bytes(buffer[position + 9 : end])
                position = end
                self._frame(kind, flags, stream_id & MAX_WINDOW, payload, events)
        finally:
            del buffer[:position]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not self.settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise ProtocolError(PROTOCOL_ERROR, "the first frame must be SETTINGS")
            self.settings_seen = True
        if self.header_block is not None and (kind != CONTINUATION or stream_id != self.header_stream):
            raise ProtocolError(PROTOCOL_ERROR, "expected CONTINUATION of the header block")
        if kind == DATA:
            self._data(flags, stream_id, payload, events)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload, events)
        elif kind == CONTINUATION:
            if self.header_block is None:
                raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._add_block(payload)
            if flags & END_HEADERS:
                self._end_block(events)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload, events)
        elif kind == PING:
            if stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if not flags & ACK:
                self.out += frame(PING, ACK, 0, payload)
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise ProtocolError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
            self._idle_check(stream_id, "RST_STREAM")
            if self._forget(stream_id):
                events.append(StreamReset(stream_id, struct.unpack(">I", payload)[0]))
        elif kind == PRIORITY:
            if not stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._reset(stream_id, FRAME_SIZE_ERROR, events)
        elif kind == GOAWAY:
            if stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "GOAWAY payload under 8 bytes")
            last, code = struct.unpack_from(">II", payload)
            events.append(GoAwayReceived(last & MAX_WINDOW, code))
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other frame types are extensions: ignored (RFC 9113 4.1)

    def _idle_check(self, stream_id: int, what: str) -> None:
        if not stream_id:
            raise ProtocolError(PROTOCOL_ERROR, f"{what} on stream 0")
        if stream_id > self.highest_stream_id:
            raise ProtocolError(PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolError(PROTOCOL_ERROR, "padding as long as the frame")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        self._idle_check(stream_id, "DATA")
        length = len(payload)  # padding counts against flow control
        if length > self.receive_window:
            raise ProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.receive_window -= length
        self.receive_unacked += length
        if self.receive_unacked >= self.limits.connection_window // 4:
            self.out += frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.receive_unacked))
            self.receive_window += self.receive_unacked
            self.receive_unacked = 0
        data = self._unpad(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            if stream is not None:  # half-closed (remote): a stream error STREAM_CLOSED
                self._reset(stream_id, STREAM_CLOSED, events)
            return  # a stream we closed or reset: frames in flight are discarded
        stream.received += length
        if stream.received + stream.unacked > self.limits.initial_window:
            self._reset(stream_id, FLOW_CONTROL_ERROR, events)
            return
        padding = length - len(data)
        if padding:
            self.consumed(stream_id, padding)
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_open = False
        events.append(DataReceived(stream_id, data, end))

    def _headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise ProtocolError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if struct.unpack_from(">I", block)[0] & MAX_WINDOW == stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "stream depends on itself")
            block = block[5:]
        self.header_block = bytearray()
        self.header_stream = stream_id
        self.header_end_stream = bool(flags & END_STREAM)
        self._add_block(block)
        if flags & END_HEADERS:
            self._end_block(events)

    def _add_block(self, fragment: bytes) -> None:
        assert self.header_block is not None
        self.header_block += fragment
        if len(self.header_block) > self.limits.max_header_block:
            raise ProtocolError(ENHANCE_YOUR_CALM, "header block too large")

    def _end_block(self, events: list[Event]) -> None:
        assert self.header_block is not None
        block, stream_id, end = bytes(self.header_block), self.header_stream, self.header_end_stream
        self.header_block = None
        headers, fits = self.decoder.decode(block)  # always: the table must follow the peer's
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers: they must end the stream
            if not stream.remote_open:
                self._reset(stream_id, STREAM_CLOSED, events)
            elif not end:
                self._reset(stream_id, PROTOCOL_ERROR, events)
            else:
                stream.remote_open = False
                events.append(DataReceived(stream_id, b"", True))
            return
        if stream_id <= self.highest_stream_id:
            return  # a stream already closed: frames in flight are discarded
        if not stream_id & 1:
            raise ProtocolError(PROTOCOL_ERROR, f"client stream id {stream_id} is even")
        self.highest_stream_id = stream_id
        if self.closing:
            return  # after GOAWAY: ignored, the client retries elsewhere
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM))
            return
        self.streams[stream_id] = Stream(self.peer_initial_window, not end)
        if not fits:  # RFC 9113 8.2.3: 431, as grpc-go answers
            self.send_headers(stream_id, b"\x08\x03431", end_stream=True)  # ":status: 431" literal
            return
        events.append(RequestReceived(stream_id, headers, end))

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == ENABLE_PUSH and value > 1:
                raise ProtocolError(PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for sid, stream in self.streams.items():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError(FLOW_CONTROL_ERROR, f"stream {sid} window over 2^31-1")
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise ProtocolError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
            # HEADER_TABLE_SIZE: our encoder never uses the dynamic table, any size is honoured
        self.out += frame(SETTINGS, ACK, 0)
        self._flush()

    def _window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = struct.unpack(">I", payload)[0] & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            self._idle_check(stream_id, "WINDOW_UPDATE")
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            if not increment:
                self._reset(stream_id, PROTOCOL_ERROR, events)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(stream_id, FLOW_CONTROL_ERROR, events)
                return
        self._flush()

    # ---- output

    def consumed(self, stream_id: int, n: int) -> None:
        """The application took ``n`` bytes of the stream's DATA: credit them back, in batches."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.remote_open:
            return
        stream.received -= n
        stream.unacked += n
        if stream.unacked >= self.limits.initial_window // 4:
            self.out += frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", stream.unacked))
            stream.unacked = 0

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """Headers (or trailers, with ``end_stream``); after any DATA still waiting for window."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.end_sent:
            return
        if stream.outbox:
            stream.outbox.append((HEADERS, block, end_stream))
        else:
            self._write_headers(stream_id, block, end_stream)
        if end_stream:
            stream.end_sent = True
            self._maybe_close(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.end_sent:
            return
        stream.outbox.append((DATA, data, end_stream))
        if end_stream:
            stream.end_sent = True
        self._drain(stream_id, stream)
        if stream.outbox:
            self.blocked[stream_id] = None
        elif end_stream:
            self._maybe_close(stream_id, stream)

    def queued(self, stream_id: int) -> int:
        """Bytes of the stream's output waiting for flow-control window."""
        stream = self.streams.get(stream_id)
        return 0 if stream is None else sum(len(item[1]) for item in stream.outbox)

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        if self._forget(stream_id):
            self.out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))

    def close(self, code: int = NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY: the streams open now may finish; new ones are refused."""
        if not self.closing:
            self.closing = True
            self.out += frame(GOAWAY, 0, 0, struct.pack(">II", self.highest_stream_id, code) + debug)

    def data_to_send(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out

    # ---- internals

    def _write_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        limit = self.peer_max_frame
        end = END_STREAM if end_stream else 0
        if len(block) <= limit:
            self.out += frame(HEADERS, END_HEADERS | end, stream_id, block)
            return
        self.out += frame(HEADERS, end, stream_id, block[:limit])
        for offset in range(limit, len(block), limit):
            last = offset + limit >= len(block)
            self.out += frame(
                CONTINUATION, END_HEADERS if last else 0, stream_id, block[offset : offset + limit]
            )

    def _drain(self, stream_id: int, stream: Stream) -> None:
        outbox, out = stream.outbox, self.out
        while outbox:
            kind, payload, end = outbox[0]
            if kind == HEADERS:
                outbox.popleft()
                self._write_headers(stream_id, payload, end)
                continue
            window = min(stream.send_window, self.send_window)
            if payload and window <= 0:
                return
            n = min(len(payload), window, self.peer_max_frame)
            last = n == len(payload)
            out += frame(DATA, END_STREAM if end and last else 0, stream_id, payload[:n])
            stream.send_window -= n
            self.send_window -= n
            if last:
                outbox.popleft()
            else:
                outbox[0] = (kind, payload[n:], end)

    def _flush(self) -> None:
        for stream_id in list(self.blocked):
            stream = self.streams.get(stream_id)
            if stream is None:
                del self.blocked[stream_id]
                continue
            self._drain(stream_id, stream)
            if not stream.outbox:
                del self.blocked[stream_id]
                if stream.end_sent:
                    self._maybe_close(stream_id, stream)
            if self.send_window <= 0:
                return

    def _maybe_close(self, stream_id: int, stream: Stream) -> None:
        """Our END_STREAM is out: the stream is done. A client still sending gets RST_STREAM
        NO_ERROR (RFC 9113 8.1), as grpc-go's server does."""
        if stream.outbox:
            return
        del self.streams[stream_id]
        self.blocked.pop(stream_id, None)
        if stream.remote_open:
            self.out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", NO_ERROR))

    def _forget(self, stream_id: int) -> bool:
        self.blocked.pop(stream_id, None)
        return self.streams.pop(stream_id, None) is not None

    def _reset(self, stream_id: int, code: int, events: list[Event]) -> None:
        if self._forget(stream_id):
            self.out += frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))
            events.append(StreamReset(stream_id, code))

    def _fail(self, code: int, message: str) -> None:
        self.failed = True
        self.closing = True
        self.out += frame(
            GOAWAY, 0, 0, struct.pack(">II", self.highest_stream_id, code) + message.encode()[:256]
        )
        self.streams.clear()
        self.blocked.clear()
