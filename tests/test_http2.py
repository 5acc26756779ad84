"""The sans-IO HTTP/2 server connection (plugins/grpc/http2.py): frames in, events and frames out.

Every protocol violation must end in the connection's own result (a ConnectionFailed event and a
GOAWAY with the RFC's code) or a stream reset, never an exception; a seeded fuzz checks that for
random frame sequences, truncations and bytes."""

from __future__ import annotations

import os
import random
import struct

import pytest

from plugins.grpc import http2
from plugins.grpc.hpack import Decoder, encode
from plugins.grpc.http2 import PREFACE, Connection, frame

REQUEST = encode(
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/etcdserverpb.KV/Put"), (b":authority", b"x"),
     (b"content-type", b"application/grpc"), (b"te", b"trailers")]
)  # fmt: skip


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of each frame the server wrote."""
    out, position = [], 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 3], "big")
        kind, flags, stream = (
            data[position + 3],
            data[position + 4],
            int.from_bytes(data[position + 5 : position + 9], "big"),
        )
        out.append((kind, flags, stream, data[position + 9 : position + 9 + length]))
        position += 9 + length
    return out


def settings(**values: int) -> bytes:
    ids = {"initial_window": http2.INITIAL_WINDOW_SIZE, "max_frame": http2.MAX_FRAME_SIZE,
           "push": http2.ENABLE_PUSH, "table": http2.HEADER_TABLE_SIZE}  # fmt: skip
    return frame(http2.SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items()))


def connected(limits: http2.Limits | None = None, **peer: int) -> Connection:
    connection = Connection(limits)
    assert connection.receive(PREFACE + settings(**peer)) == []
    kinds = [f[0] for f in frames(connection.data_to_send())]
    assert kinds == [http2.SETTINGS, http2.WINDOW_UPDATE, http2.SETTINGS]  # ours, the window, the ack
    return connection


def goaway_code(connection: Connection) -> int:
    (goaway,) = [f for f in frames(connection.data_to_send()) if f[0] == http2.GOAWAY]
    return struct.unpack_from(">II", goaway[3])[1]


def test_a_request_and_its_response() -> None:
    connection = connected()
    events = connection.receive(
        frame(http2.HEADERS, http2.END_HEADERS, 1, REQUEST)
        + frame(http2.DATA, http2.END_STREAM, 1, b"\0\0\0\0\0")
    )
    assert events[0] == http2.RequestReceived(1, Decoder().decode(REQUEST)[0], False)
    assert events[1] == http2.DataReceived(1, b"\0\0\0\0\0", True)
    connection.send_headers(1, b"\x88")
    connection.send_data(1, b"payload")
    connection.send_headers(1, b"\x00", end_stream=True)
    out = frames(connection.data_to_send())
    assert [(f[0], f[1]) for f in out] == [
        (http2.HEADERS, http2.END_HEADERS),
        (http2.DATA, 0),
        (http2.HEADERS, http2.END_HEADERS | http2.END_STREAM),
    ]
    assert connection.streams == {}


def test_headers_split_over_continuation_and_padding() -> None:
    connection = connected()
    padded = bytes([3]) + REQUEST[:5] + b"\0\0\0"
    events = connection.receive(
        frame(http2.HEADERS, http2.PADDED, 1, padded)
        + frame(http2.CONTINUATION, 0, 1, REQUEST[5:9])
        + frame(http2.CONTINUATION, http2.END_HEADERS, 1, REQUEST[9:])
        + frame(http2.DATA, http2.PADDED | http2.END_STREAM, 1, b"\x02ab\0\0")
    )
    assert [type(e) for e in events] == [http2.RequestReceived, http2.DataReceived]
    assert events[1].data == b"ab"


def test_a_frame_between_headers_and_continuation_is_a_protocol_error() -> None:
    connection = connected()
    events = connection.receive(
        frame(http2.HEADERS, 0, 1, REQUEST[:5]) + frame(http2.PING, 0, 0, b"12345678")
    )
    assert events == [
        http2.ConnectionFailed(http2.PROTOCOL_ERROR, "expected CONTINUATION of the header block")
    ]
    assert goaway_code(connection) == http2.PROTOCOL_ERROR
    assert connection.receive(b"anything") == []


def test_ping_is_acknowledged() -> None:
    connection = connected()
    connection.receive(frame(http2.PING, 0, 0, b"12345678"))
    assert frames(connection.data_to_send()) == [(http2.PING, http2.ACK, 0, b"12345678")]


def test_send_side_flow_control_and_frame_size() -> None:
    connection = connected(initial_window=10)
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, REQUEST))
    connection.send_headers(1, b"\x88")
    connection.send_data(1, b"x" * 25)
    connection.send_headers(1, b"\x00", end_stream=True)  # trailers wait behind the data
    assert [(f[0], len(f[3])) for f in frames(connection.data_to_send())] == [
        (http2.HEADERS, 1),
        (http2.DATA, 10),
    ]
    assert connection.queued(1) == 16
    connection.receive(frame(http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 100)))
    out = frames(connection.data_to_send())
    assert [(f[0], f[1], len(f[3])) for f in out] == [
        (http2.DATA, 0, 15),
        (http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1),
    ]
    assert connection.streams == {}


def test_peer_max_frame_size_splits_data() -> None:
    connection = connected(max_frame=16384, initial_window=100000)
    connection.receive(frame(http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 100000)))
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, REQUEST))
    connection.send_data(1, b"y" * 40000, end_stream=True)
    sizes = [len(f[3]) for f in frames(connection.data_to_send()) if f[0] == http2.DATA]
    assert sizes == [16384, 16384, 40000 - 32768]


def test_initial_window_change_applies_to_open_streams() -> None:
    connection = connected(initial_window=0)
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, REQUEST))
    connection.send_data(1, b"z" * 5)
    assert frames(connection.data_to_send()) == []
    connection.receive(settings(initial_window=5))
    assert [f[0] for f in frames(connection.data_to_send())] == [http2.SETTINGS, http2.DATA]


def test_received_data_is_credited_in_batches() -> None:
    limits = http2.Limits(initial_window=1000, connection_window=65535 + 4000)
    connection = connected(limits)
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS, 1, REQUEST))
    connection.receive(frame(http2.DATA, 0, 1, b"d" * 200))
    connection.consumed(1, 200)
    assert frames(connection.data_to_send()) == []  # under a quarter of the window: not yet
    connection.receive(frame(http2.DATA, 0, 1, b"d" * 100))
    connection.consumed(1, 100)
    out = frames(connection.data_to_send())
    assert (http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 300)) in out
    assert not [f for f in out if f[0] == http2.WINDOW_UPDATE and f[2] == 0]  # a quarter of 69535: not yet


def test_data_beyond_the_stream_window_resets_the_stream() -> None:
    connection = connected(http2.Limits(initial_window=100))
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS, 1, REQUEST))
    events = connection.receive(frame(http2.DATA, 0, 1, b"d" * 101))
    assert events == [http2.StreamReset(1, http2.FLOW_CONTROL_ERROR)]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), http2.FLOW_CONTROL_ERROR),
        (frame(http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), http2.PROTOCOL_ERROR),
        (frame(http2.HEADERS, http2.END_HEADERS, 2, REQUEST), http2.PROTOCOL_ERROR),  # even id
        (frame(http2.DATA, 0, 7, b"x"), http2.PROTOCOL_ERROR),  # idle stream
        (frame(http2.DATA, 0, 1, b"x" * 16385), http2.FRAME_SIZE_ERROR),
        (frame(http2.PING, 0, 0, b"123"), http2.FRAME_SIZE_ERROR),
        (frame(http2.SETTINGS, 0, 0, b"12345"), http2.FRAME_SIZE_ERROR),
        (settings(push=2), http2.PROTOCOL_ERROR),
        (settings(max_frame=100), http2.PROTOCOL_ERROR),
        (settings(initial_window=2**31), http2.FLOW_CONTROL_ERROR),
        (frame(http2.PUSH_PROMISE, http2.END_HEADERS, 1, b"\0\0\0\2"), http2.PROTOCOL_ERROR),
        (frame(http2.HEADERS, http2.END_HEADERS, 1, b"\x80"), http2.COMPRESSION_ERROR),
        (frame(http2.HEADERS, http2.PADDED | http2.END_HEADERS, 1, b"\x09abc"), http2.PROTOCOL_ERROR),
        (frame(http2.CONTINUATION, http2.END_HEADERS, 1, REQUEST), http2.PROTOCOL_ERROR),
    ],
)
def test_connection_errors(data: bytes, code: int) -> None:
    connection = connected()
    events = connection.receive(data)
    assert [type(e) for e in events] == [http2.ConnectionFailed] and events[0].code == code
    assert goaway_code(connection) == code


def test_a_bad_preface_and_a_first_frame_that_is_not_settings() -> None:
    assert Connection().receive(b"GET / HTTP/1.1\r\n")[0].code == http2.PROTOCOL_ERROR
    assert (
        Connection().receive(PREFACE + frame(http2.PING, 0, 0, b"12345678"))[0].code == http2.PROTOCOL_ERROR
    )


def test_too_many_streams_are_refused() -> None:
    connection = connected(http2.Limits(max_concurrent_streams=2))
    events = connection.receive(
        b"".join(frame(http2.HEADERS, http2.END_HEADERS, s, REQUEST) for s in (1, 3, 5))
    )
    assert [e.stream_id for e in events] == [1, 3]
    assert (http2.RST_STREAM, 0, 5, struct.pack(">I", http2.REFUSED_STREAM)) in frames(
        connection.data_to_send()
    )


def test_an_oversized_header_list_gets_431_and_the_connection_goes_on() -> None:
    connection = connected(http2.Limits(max_header_list_size=400))
    big = encode([(b":path", b"/a"), (b"x-big", b"v" * 500)])
    assert connection.receive(frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 1, big)) == []
    (response,) = frames(connection.data_to_send())
    assert response[0] == http2.HEADERS and Decoder().decode(response[3])[0] == [(b":status", b"431")]
    assert connection.receive(frame(http2.HEADERS, http2.END_HEADERS, 3, REQUEST))[0].stream_id == 3


def test_an_endless_header_block_is_refused() -> None:
    connection = connected()
    data = frame(http2.HEADERS, 0, 1, b"\x82") + frame(http2.CONTINUATION, 0, 1, b"\x82" * 16384) * 20
    assert connection.receive(data)[-1].code == http2.ENHANCE_YOUR_CALM


def test_frames_after_reset_are_ignored_and_client_reset_is_an_event() -> None:
    connection = connected()
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS, 1, REQUEST))
    assert connection.receive(frame(http2.RST_STREAM, 0, 1, struct.pack(">I", http2.CANCEL))) == [
        http2.StreamReset(1, http2.CANCEL)
    ]
    assert connection.receive(frame(http2.DATA, http2.END_STREAM, 1, b"late")) == []
    connection.send_data(1, b"nobody")  # the application may still try: nothing is written
    assert frames(connection.data_to_send()) == []


def test_graceful_close_refuses_new_streams() -> None:
    connection = connected()
    connection.receive(frame(http2.HEADERS, http2.END_HEADERS, 1, REQUEST))
    connection.close()
    assert frames(connection.data_to_send())[0][0] == http2.GOAWAY
    assert connection.receive(frame(http2.HEADERS, http2.END_HEADERS, 3, REQUEST)) == []
    assert connection.receive(frame(http2.DATA, http2.END_STREAM, 1, b"x")) == [
        http2.DataReceived(1, b"x", True)
    ]


def random_frame(rng: random.Random) -> bytes:
    kind = rng.choice([*range(10), 0x42])
    flags = rng.choice(
        [0, http2.END_STREAM, http2.END_HEADERS, http2.PADDED, http2.PRIORITY_FLAG, rng.randrange(256)]
    )
    stream = rng.choice([0, 1, 2, 3, 5, rng.randrange(2**31)])
    if kind in (http2.HEADERS, http2.CONTINUATION) and rng.random() < 0.6:
        payload = REQUEST[: rng.randrange(len(REQUEST) + 1)]
    elif kind == http2.SETTINGS and rng.random() < 0.6:
        payload = struct.pack(">HI", rng.randrange(8), rng.choice([0, 1, 16384, 2**31 - 1, 2**32 - 1]))
    elif kind == http2.WINDOW_UPDATE and rng.random() < 0.6:
        payload = struct.pack(">I", rng.choice([0, 1, 2**31 - 1, 2**32 - 1]))
    else:
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 4, 5, 8, 9, 30])))
    return frame(kind, flags, stream, payload)


def test_fuzz_never_raises() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print("seed", seed)
    rng = random.Random(seed)
    for _ in range(3000):
        connection = Connection()
        data = PREFACE + settings(initial_window=rng.randrange(2**31)) if rng.random() < 0.9 else b""
        data += b"".join(random_frame(rng) for _ in range(rng.randrange(1, 12)))
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data) + 1)]  # a truncated frame
        if rng.random() < 0.1:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        position = 0
        while position < len(data):  # fed in random pieces, as a socket would
            step = rng.randrange(1, 64)
            for event in connection.receive(data[position : position + step]):
                if isinstance(event, http2.RequestReceived):
                    connection.send_headers(event.stream_id, b"\x88")
                    connection.send_data(event.stream_id, b"r" * rng.randrange(100000), end_stream=True)
                if isinstance(event, http2.ConnectionFailed):
                    assert connection.failed
            position += step
        connection.data_to_send()
