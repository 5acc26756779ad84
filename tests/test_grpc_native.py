"""The native gRPC server (plugins/grpc/native.py) at its edges, against a real etcd where etcd
defines the answer: grpc-go's status texts for messages over the receive limit, unknown methods and
services, compressed messages; the health service; and abuse of one connection (garbage after the
preface, 10,000 streams, a client gone mid-stream) after which the node still serves."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import Server

from actors.proto import rpc_pb2, rpc_pb2_grpc
from plugins.grpc.hpack import Decoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7


def serve(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(kind, tmp_path_factory.mktemp(f"native-{kind}"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve("etcd", tmp_path_factory)


@pytest.fixture(scope="module")
def cairn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve("cairn", tmp_path_factory)


@pytest.fixture(scope="module")
def both(etcd_server: Server, cairn_server: Server) -> tuple[Server, Server]:
    return etcd_server, cairn_server


def status_of(server: Server, call) -> tuple[grpc.StatusCode, str]:
    with server.channel() as channel, pytest.raises(grpc.RpcError) as info:
        call(channel)
    return info.value.code(), info.value.details()


def same_status(both: tuple[Server, Server], call) -> tuple[grpc.StatusCode, str]:
    etcd, cairn = (status_of(server, call) for server in both)
    assert cairn == etcd
    return cairn


def test_a_message_over_the_receive_limit(both: tuple[Server, Server]) -> None:
    request = rpc_pb2.PutRequest(key=b"big", value=b"z" * (2100 * 1024))
    code, details = same_status(both, lambda ch: rpc_pb2_grpc.KVStub(ch).Put(request, timeout=60))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == f"grpc: received message larger than max ({request.ByteSize()} vs. 2097152)"


def test_unknown_method_and_service(both: tuple[Server, Server]) -> None:
    for path in ("/etcdserverpb.KV/Nope", "/no.Such/Thing"):
        code, _ = same_status(both, lambda ch, p=path: ch.unary_unary(p)(b"", timeout=30))
        assert code == grpc.StatusCode.UNIMPLEMENTED


def test_health(both: tuple[Server, Server]) -> None:
    for server in both:
        with server.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    request = health_pb2.HealthCheckRequest(service="nope")
    code, details = same_status(both, lambda ch: health_pb2_grpc.HealthStub(ch).Check(request, timeout=30))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "unknown service")


# -- raw HTTP/2 -------------------------------------------------------------------------------------------


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request_headers(
    server: Server, path: bytes, stream: int, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> bytes:
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
              (b":authority", server.endpoint.encode()), (b"content-type", b"application/grpc"),
              (b"te", b"trailers"), *extra]  # fmt: skip
    return h2_frame(HEADERS, 0x4, stream, b"".join(literal(n, v) for n, v in fields))


def connect(server: Server) -> socket.socket:
    host, port = server.endpoint.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(PREFACE + h2_frame(SETTINGS, 0, 0))
    return sock


def read_frames(sock: socket.socket, until) -> list[tuple[int, int, int, bytes]]:
    """Frames the server sends (SETTINGS acknowledged) until ``until(frame)`` or the socket closes."""
    seen, buffer = [], b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length = int.from_bytes(buffer[:3], "big")
            frame = (
                buffer[3],
                buffer[4],
                int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF,
                buffer[9 : 9 + length],
            )
            buffer = buffer[9 + length :]
            seen.append(frame)
            if frame[0] == SETTINGS and not frame[1] & 1:
                with contextlib.suppress(OSError):
                    sock.sendall(h2_frame(SETTINGS, 1, 0))
            if until(frame):
                return seen
    return seen


def trailers(server: Server, data: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> dict[bytes, bytes]:
    """grpc-status and grpc-message of one raw Put whose DATA frame is ``data``."""
    with connect(server) as sock:
        sock.sendall(
            request_headers(server, b"/etcdserverpb.KV/Put", 1, extra) + h2_frame(DATA, 0x1, 1, data)
        )
        frames = read_frames(sock, lambda f: f[0] == HEADERS and f[1] & 0x1)
    decoder = Decoder()
    fields: dict[bytes, bytes] = {}
    for kind, _, stream, payload in frames:
        if kind == HEADERS and stream == 1:
            fields.update(decoder.decode(payload)[0])
    return {k: v for k, v in fields.items() if k.startswith(b"grpc-")}


def test_compressed_messages(both: tuple[Server, Server]) -> None:
    message = rpc_pb2.PutRequest(key=b"c", value=b"v").SerializeToString()
    framed = b"\x01" + struct.pack(">I", len(message)) + message
    etcd, cairn = both
    assert (
        trailers(cairn, framed)
        == trailers(etcd, framed)
        == {
            b"grpc-status": b"13",
            b"grpc-message": b"grpc: compressed flag set with identity or empty encoding",
        }
    )
    snappy = ((b"grpc-encoding", b"snappy"),)
    assert trailers(cairn, framed, snappy) == trailers(etcd, framed, snappy)
    assert trailers(cairn, framed, snappy)[b"grpc-status"] == b"12"


def serves(server: Server) -> None:
    with server.channel() as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        rev = kv.Put(rpc_pb2.PutRequest(key=b"alive", value=b"yes"), timeout=30).header.revision
        assert kv.Range(rpc_pb2.RangeRequest(key=b"alive"), timeout=30).kvs[0].mod_revision == rev


def test_garbage_after_the_preface_gets_goaway(cairn_server: Server) -> None:
    for garbage in (
        b"\x00" * 9 + b"\xff" * 100,
        h2_frame(0x9, 0x4, 1, b"\x82"),
        b"\x00\x00\x08\x06\x00\x00\x00\x00\x01",
    ):
        with connect(cairn_server) as sock:
            sock.sendall(garbage)
            frames = read_frames(sock, lambda f: f[0] == GOAWAY)
        (code,) = {struct.unpack_from(">I", f[3], 4)[0] for f in frames if f[0] == GOAWAY}
        assert code in (0x1, 0x6)  # PROTOCOL_ERROR, FRAME_SIZE_ERROR
    serves(cairn_server)


def test_ten_thousand_streams_on_one_connection(cairn_server: Server) -> None:
    """Streams past MAX_CONCURRENT_STREAMS (4096) are refused, the others wait for their body; all
    go with the connection, and the node serves on."""
    with connect(cairn_server) as sock:
        block = b"".join(
            request_headers(cairn_server, b"/etcdserverpb.KV/Put", 2 * i + 1) for i in range(10000)
        )
        sock.sendall(block)
        refused = []
        read_frames(
            sock, lambda f: f[0] == RST_STREAM and refused.append(f) is None and len(refused) >= 10000 - 4096
        )
        assert len(refused) == 10000 - 4096
        assert {struct.unpack(">I", f[3])[0] for f in refused} == {0x7}  # REFUSED_STREAM
    serves(cairn_server)


def test_client_gone_mid_stream(cairn_server: Server) -> None:
    """A watch and a keep-alive stream opened, then the socket closed: the handlers end, the node serves."""
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"w")).SerializeToString()
    with connect(cairn_server) as sock:
        sock.sendall(
            request_headers(cairn_server, b"/etcdserverpb.Watch/Watch", 1)
            + h2_frame(DATA, 0, 1, b"\x00" + struct.pack(">I", len(create)) + create)
            + request_headers(cairn_server, b"/etcdserverpb.Lease/LeaseKeepAlive", 3)
            + h2_frame(DATA, 0, 3, b"\x00\x00\x00\x00\x10")  # a message cut short
        )
        read_frames(sock, lambda f: f[0] == DATA and f[2] == 1)  # the watch was created
    serves(cairn_server)


def test_frontend_log_has_no_handler_failures(cairn_server: Server) -> None:
    serves(cairn_server)
    log = Path(cairn_server.log_path).read_text()
    assert "grpc_handler_failed" not in log and "Traceback" not in log
