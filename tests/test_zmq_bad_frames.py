"""Untrusted bytes on the native ZeroMQ port: each bad frame gets an error record or a closed
connection, and afterwards the node serves, its known keys are unchanged, and no process restarted."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import Iterator

import grpc
import pytest
import zmq
from zmq_servers import ZmqNode

from actors.proto import rpc_pb2
from actors.protocol import WRITES, Kind, MalformedFrame, Method, pack, unpack
from node.client import Client

MAX_FRAME = 1 << 20
LEASE_METHODS = [
    Method.LEASE_GRANT,
    Method.LEASE_REVOKE,
    Method.LEASE_KEEPALIVE,
    Method.LEASE_TIME_TO_LIVE,
    Method.LEASE_LEASES,
]
MAX_IN_FLIGHT = 50


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZmqNode]:
    node = ZmqNode(
        tmp_path_factory.mktemp("zmq-bad") / "cairn",
        **{"max-frame-bytes": MAX_FRAME, "max-in-flight": MAX_IN_FLIGHT},
    )
    node.server.start()
    try:
        with Client(node.url) as c:
            for i in range(10):
                c.put(b"known/%d" % i, b"v%d" % i)
        yield node
    finally:
        node.server.stop()


def known(client: Client) -> list[bytes]:
    return [kv.SerializeToString() for kv in client.range(b"known/", prefix=True).kvs]


@pytest.fixture
def healthy(node: ZmqNode) -> Iterator[None]:
    """Around each case: the same known keys, the same child processes, and a working fresh client."""
    with Client(node.url) as c:
        before = known(c)
    pids = (node.child_pid("node.core"), node.child_pid("node.frontend"))
    yield
    with Client(node.url) as c:
        rev = c.put(b"alive", b"yes").header.revision
        assert c.get(b"alive").mod_revision == rev
        assert known(c) == before, "a bad frame changed data"
    assert (node.child_pid("node.core"), node.child_pid("node.frontend")) == pids, node.server.log_tail()


@pytest.fixture
def sock(node: ZmqNode) -> Iterator[zmq.Socket]:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 10000)
    s.connect(node.url)
    yield s
    s.close()


def answer(sock: zmq.Socket) -> list[tuple[int, int, bytes]]:
    """The records of the next RESULT frame (watch pushes that fuzzed frames may cause are skipped)."""
    while True:
        kind, session, records = unpack(sock.recv())
        assert session != 0
        if kind == Kind.RESULT:
            return records
        assert kind == Kind.PUSH


def frame_error(sock: zmq.Socket) -> str:
    [(rid, code, text)] = answer(sock)
    assert (rid, code) == (0, 3)
    return text.decode()


PUT_NEW = rpc_pb2.PutRequest(key=b"known/new", value=b"x").SerializeToString()
PUT_FRAME = pack(Kind.REQUEST, [(1, Method.PUT, PUT_NEW)])


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "cairn: malformed frame: frame of 0 bytes is shorter than its header"),
        (b"\x01garbage", "cairn: malformed frame: frame of 8 bytes is shorter than its header"),
        (PUT_FRAME[:-3], "cairn: malformed frame: record body runs past the end of the frame"),
        (PUT_FRAME + b"\x00" * 5, "cairn: malformed frame: truncated record header"),
        (PUT_FRAME[: -len(PUT_NEW) - 4] + struct.pack("<I", 1 << 31) + PUT_NEW, "cairn: malformed frame"),
        (pack(Kind.PUSH, [(1, Method.PUT, PUT_NEW)]), "cairn: unknown frame kind 9"),
        (pack(200, []), "cairn: unknown frame kind 200"),
    ],
)  # fmt: skip
def test_malformed_frames_get_a_frame_error(
    healthy: None, sock: zmq.Socket, frame: bytes, error: str
) -> None:
    sock.send(frame)
    assert frame_error(sock).startswith(error)


def test_multipart_message(healthy: None, sock: zmq.Socket) -> None:
    sock.send_multipart([pack(Kind.REQUEST, [(1, Method.PUT, PUT_NEW)]), b"more"])
    assert frame_error(sock) == "cairn: a message must be exactly one frame, not 2"


def test_unknown_methods_and_bad_bodies_get_error_records(healthy: None, sock: zmq.Socket) -> None:
    records = [
        (1, 99, b""),
        (2, Method.LEASE_CHECKPOINT, b""),
        (3, Method.WATCH_BLOCKED, b""),
        (4, Method.WATCH_HISTORY, b"\xff"),
        (5, Method.PUT, b"\xff\xff\xff"),
        (6, Method.WATCH, b"\xff\xff\xff"),
        (7, Method.RANGE, rpc_pb2.RangeRequest(key=b"known/1").SerializeToString()),
        *((8 + i, method, b"\xff\xff") for i, method in enumerate(LEASE_METHODS)),
    ]
    sock.send(pack(Kind.REQUEST, records))
    got: dict[int, tuple[int, bytes]] = {}
    while len(got) < len(records):
        got.update((rid, (code, body)) for rid, code, body in answer(sock))
    for rid, method in ((1, 99), (2, 8), (3, 14), (4, 16)):
        assert got[rid] == (12, f"unknown method {method}".encode())
    assert got[5][0] == 3  # INVALID_ARGUMENT: the request is not a PutRequest
    assert got[6] == (3, b"cairn: malformed WatchRequest")
    assert got[7][0] == 0 and rpc_pb2.RangeResponse.FromString(got[7][1]).kvs[0].value == b"v1"
    assert [got[8 + i][0] for i in range(len(LEASE_METHODS))] == [3] * len(LEASE_METHODS)


def test_lease_requests_that_are_no_message_are_refused_over_grpc_too(healthy: None, node: ZmqNode) -> None:
    """Found by test_random_frames: such bytes crashed the core whichever frontend carried them."""
    with grpc.insecure_channel(node.server.endpoint) as channel:
        for name in ("LeaseGrant", "LeaseRevoke", "LeaseTimeToLive", "LeaseLeases"):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(f"/etcdserverpb.Lease/{name}")(b"\xff\xff", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name


def test_a_peer_over_its_in_flight_limit_is_told_too_many_requests(healthy: None, sock: zmq.Socket) -> None:
    read = rpc_pb2.RangeRequest(key=b"known/1").SerializeToString()
    sock.send(pack(Kind.REQUEST, [(i, Method.RANGE, read) for i in range(1, 201)]))
    got: dict[int, int] = {}
    while len(got) < 200:
        got.update((rid, code) for rid, code, _ in answer(sock))
    assert sorted(got.values()).count(0) == MAX_IN_FLIGHT
    assert [code for code in got.values() if code] == [8] * (200 - MAX_IN_FLIGHT)


def test_oversized_frame_closes_the_connection(healthy: None, sock: zmq.Socket) -> None:
    sock.send(
        pack(
            Kind.REQUEST,
            [(1, Method.PUT, rpc_pb2.PutRequest(key=b"big", value=b"x" * MAX_FRAME).SerializeToString())],
        )
    )
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    with pytest.raises(zmq.Again):
        sock.recv()  # dropped with the connection; the socket reconnects and is served again
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.send(pack(Kind.REQUEST, [(2, Method.RANGE, rpc_pb2.RangeRequest(key=b"big").SerializeToString())]))
    [(rid, code, body)] = answer(sock)
    assert (rid, code) == (2, 0) and not rpc_pb2.RangeResponse.FromString(body).kvs


@pytest.mark.parametrize(
    ("payload", "closed"),
    [
        (b"PING\r\n", False),
        (b"x" * (1 << 20) + b"\n", False),  # valid ZMTP/1.0 framing: 120-byte frames of kind 'x', refused
        (bytes(range(256)) * 8, True),
        (b"\xff" + bytes(7) + b"\x01\x7f\x03\x00NOPE" + bytes(60), True),  # ZMTP 3, unknown mechanism
    ],
)
def test_non_zeromq_bytes_on_the_port(healthy: None, node: ZmqNode, payload: bytes, closed: bool) -> None:
    """The server greets with ZMTP's signature (which an HTTP or RESP client rejects at once); bytes
    that cannot be ZMTP close the connection. Other bytes are read as ZMTP/1.0 frames (a length
    byte first): refused one by one, or awaited to completion, while the node serves everyone else."""
    host, port = node.url.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as raw:
        greeting = b""
        while len(greeting) < 10:
            greeting += raw.recv(10 - len(greeting))
        assert greeting[0] == 0xFF and greeting[9] == 0x7F
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            raw.sendall(payload)
            if closed:
                deadline = time.monotonic() + 20
                while raw.recv(65536):
                    assert time.monotonic() < deadline, "the server kept a garbage connection open"


def writes(frame: bytes) -> bool:
    """Whether a mutated frame became a well-formed write (a legal request, not what we test)."""
    try:
        return any(method in WRITES for _, method, _ in unpack(frame)[2])
    except MalformedFrame:
        return False


def test_random_frames(healthy: None, sock: zmq.Socket) -> None:
    """Seeded fuzzing of the envelope: random kinds, ids, methods, lengths, truncations and bodies.
    Methods are limited to ones that cannot write, so the known-keys check stays meaningful."""
    seed = int(os.environ.get("CAIRN_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    methods = [
        Method.RANGE,
        Method.STATUS,
        Method.LEASE_TIME_TO_LIVE,
        Method.WATCH,
        Method.WATCH_CLOSE,
        0,
        77,
        255,
    ]
    for _ in range(300):
        records = [
            (rng.randrange(1 << 64), rng.choice(methods), rng.randbytes(rng.randrange(40)))
            for _ in range(rng.randrange(4))
        ]
        frame = bytearray(pack(rng.choice([Kind.REQUEST, Kind.REQUEST, rng.randrange(256)]), records))
        for _ in range(rng.randrange(3)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        if rng.random() < 0.3:
            del frame[rng.randrange(len(frame)) :]
        if not writes(bytes(frame)):
            sock.send(bytes(frame))
    deadline = time.monotonic() + 30
    while True:  # every earlier frame has been handled once a marker request is answered
        sock.send(pack(Kind.REQUEST, [(7, Method.STATUS, b"")]))
        codes = []
        while not codes:
            codes = [code for rid, code, _ in answer(sock) if rid == 7]
        if codes == [0]:
            break
        assert codes == [8] and time.monotonic() < deadline  # still over max-in-flight: try again
        time.sleep(0.2)
