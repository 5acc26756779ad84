"""Bad input through gRPC and raw sockets: etcd's exact error code and text, and a node that shrugs it off.

Every error case runs against cairn and against a real etcd 3.4 (the `server` fixture is parametrized
over both), with the same expectations: etcd is the reference, so an expectation that real etcd does not
meet is a bug in this file, and one that only cairn misses is a bug in cairn.

After each case the node must still serve (a fresh put and read work), a known set of keys written when
the node started must be exactly as it was (same values, revisions and versions), and for cairn no child
process may have died (the supervisor would restart it, which would hide a crash behind a liveness check).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from servers import Server

from actors.proto import rpc_pb2, rpc_pb2_grpc

KNOWN_PREFIX = b"known/"
_counter = itertools.count()


# -- nodes -----------------------------------------------------------------------------------------------
class Node:
    """A started server plus the snapshot of its known keys and a gRPC channel to it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        for i in range(20):
            self.kv.Put(rpc_pb2.PutRequest(key=KNOWN_PREFIX + b"%02d" % i, value=b"v%d" % i), timeout=30)
        for i in range(0, 20, 3):  # some keys at version 2, with create != mod
            self.kv.Put(rpc_pb2.PutRequest(key=KNOWN_PREFIX + b"%02d" % i, value=b"w%d" % i), timeout=30)
        self.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=KNOWN_PREFIX + b"19"), timeout=30)
        self.known = self.known_now()
        assert len(self.known) == 19
        self.children = self.child_pids()

    @property
    def kind(self) -> str:
        return self.server.kind

    def known_now(self) -> list[bytes]:
        resp = self.kv.Range(rpc_pb2.RangeRequest(key=KNOWN_PREFIX, range_end=b"known0"), timeout=30)
        return [kv.SerializeToString(deterministic=True) for kv in resp.kvs]

    def child_pids(self) -> set[int]:
        if self.kind != "cairn":
            return set()
        pids: set[int] = set()
        for task in Path(f"/proc/{self.server.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (task / "children").read_text().split())
        return pids

    def assert_healthy(self) -> None:
        """The node serves a fresh write and a read, its known keys are intact, and nothing crashed."""
        assert self.server.running, f"{self.kind} died\n{self.server.log_tail()}"
        key = b"alive/%d" % next(_counter)
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(self.server.endpoint) as channel:  # a fresh connection, too
            kv = rpc_pb2_grpc.KVStub(channel)
            while True:
                try:
                    rev = kv.Put(rpc_pb2.PutRequest(key=key, value=b"yes"), timeout=10).header.revision
                    got = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=10)
                    break
                except grpc.RpcError as e:
                    assert time.monotonic() < deadline, f"{self.kind} stopped serving: {e}"
                    time.sleep(0.2)
        assert [(kv.value, kv.mod_revision) for kv in got.kvs] == [(b"yes", rev)]
        assert self.known_now() == self.known, "the known keys changed"
        assert self.child_pids() == self.children, (
            f"a {self.kind} child process died and was replaced\n{self.server.log_tail()}"
        )

    def close(self) -> None:
        self.channel.close()


def _start(kind: str, base: Path, extra_args: tuple[str, ...] = ()) -> Iterator[Node]:
    server = Server(kind, base, extra_args=extra_args, ready_timeout=60.0)
    server.start()
    node = None
    try:
        node = Node(server)
        yield node
    finally:
        if node is not None:
            node.close()
        server.stop()


@pytest.fixture(scope="module")
def cairn_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _start("cairn", tmp_path_factory.mktemp("bad-input-cairn"))


@pytest.fixture(scope="module")
def etcd_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _start("etcd", tmp_path_factory.mktemp("bad-input-etcd"))


@pytest.fixture(scope="module", params=["cairn", "etcd"])
def any_node(request: pytest.FixtureRequest) -> Node:
    # module-scoped, so it is set up before conftest's per-test sweep of servers started during a test
    return request.getfixturevalue(f"{request.param}_node")


@pytest.fixture
def node(any_node: Node) -> Iterator[Node]:
    yield any_node
    any_node.assert_healthy()  # after every case: still serving, known data intact, no crashed child


LIMIT_ARGS = ("--max-txn-ops", "3", "--max-request-bytes", "1024")


@pytest.fixture(scope="module", params=["cairn", "etcd"])
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node started with --max-txn-ops 3 --max-request-bytes 1024."""
    yield from _start(
        request.param, tmp_path_factory.mktemp(f"bad-input-limited-{request.param}"), LIMIT_ARGS
    )


# -- helpers ---------------------------------------------------------------------------------------------
def expect_error(call: Callable[[], object], code: grpc.StatusCode, details: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert (err.code(), err.details()) == (code, details)


def put_op(key: bytes, value: bytes = b"v") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))


def revision(node: Node) -> int:
    return node.kv.Range(rpc_pb2.RangeRequest(key=b"nobody"), timeout=30).header.revision


INVALID = grpc.StatusCode.INVALID_ARGUMENT
EMPTY_KEY = "etcdserver: key is not provided"
TOO_MANY_OPS = "etcdserver: too many operations in txn request"
DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"
TOO_LARGE = "etcdserver: request is too large"


# -- etcd's errors ---------------------------------------------------------------------------------------
def test_empty_key(node: Node) -> None:
    before = revision(node)
    expect_error(lambda: node.kv.Range(rpc_pb2.RangeRequest(key=b""), timeout=30), INVALID, EMPTY_KEY)
    expect_error(
        lambda: node.kv.Range(rpc_pb2.RangeRequest(key=b"", range_end=b"z"), timeout=30), INVALID, EMPTY_KEY
    )
    expect_error(lambda: node.kv.Put(rpc_pb2.PutRequest(key=b"", value=b"v"), timeout=30), INVALID, EMPTY_KEY)
    expect_error(
        lambda: node.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b""), timeout=30), INVALID, EMPTY_KEY
    )
    expect_error(
        lambda: node.kv.Txn(rpc_pb2.TxnRequest(success=[put_op(b"")]), timeout=30), INVALID, EMPTY_KEY
    )
    expect_error(
        lambda: node.kv.Txn(
            rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"", target=rpc_pb2.Compare.VERSION)]), timeout=30
        ),
        INVALID,
        EMPTY_KEY,
    )
    assert revision(node) == before


def test_too_many_txn_ops(node: Node) -> None:
    before = revision(node)
    ops = [put_op(b"many/%03d" % i) for i in range(129)]
    for request in (
        rpc_pb2.TxnRequest(success=ops),
        rpc_pb2.TxnRequest(failure=ops),
        rpc_pb2.TxnRequest(
            compare=[
                rpc_pb2.Compare(key=b"many/%03d" % i, target=rpc_pb2.Compare.VERSION) for i in range(129)
            ]
        ),
    ):
        expect_error(lambda request=request: node.kv.Txn(request, timeout=30), INVALID, TOO_MANY_OPS)
    assert revision(node) == before
    # 128 is allowed, in each branch at once
    resp = node.kv.Txn(rpc_pb2.TxnRequest(success=ops[:128], failure=ops[1:129]), timeout=30)
    assert resp.succeeded and len(resp.responses) == 128
    assert resp.header.revision == before + 1


def test_duplicate_key_in_txn(node: Node) -> None:
    before = revision(node)
    cases = [
        [put_op(b"dup/a"), put_op(b"dup/a", b"w")],
        [put_op(b"dup/a"), rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"dup/a"))],
        [  # a put inside the range a delete covers
            put_op(b"dup/b"),
            rpc_pb2.RequestOp(
                request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"dup/", range_end=b"dup0")
            ),
        ],
        [put_op(b"dup/a"), rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(success=[put_op(b"dup/a")]))],
    ]
    for ops in cases:
        expect_error(
            lambda ops=ops: node.kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30), INVALID, DUPLICATE_KEY
        )
        expect_error(
            lambda ops=ops: node.kv.Txn(rpc_pb2.TxnRequest(failure=ops), timeout=30), INVALID, DUPLICATE_KEY
        )
    assert revision(node) == before
    # the same key in both branches, or read twice, is fine
    resp = node.kv.Txn(rpc_pb2.TxnRequest(success=[put_op(b"dup/a")], failure=[put_op(b"dup/a")]), timeout=30)
    assert resp.succeeded and resp.header.revision == before + 1
    read = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"dup/a"))
    resp = node.kv.Txn(rpc_pb2.TxnRequest(success=[read, read, put_op(b"dup/a", b"x")]), timeout=30)
    assert [r.response_range.kvs[0].value for r in resp.responses[:2]] == [b"v", b"v"]


def test_compacted_and_future_revisions(node: Node) -> None:
    key = b"rev/%d" % next(_counter)
    revs = [
        node.kv.Put(rpc_pb2.PutRequest(key=key, value=b"%d" % i), timeout=30).header.revision
        for i in range(3)
    ]
    node.kv.Compact(rpc_pb2.CompactionRequest(revision=revs[1]), timeout=30)
    out = grpc.StatusCode.OUT_OF_RANGE
    expect_error(
        lambda: node.kv.Range(rpc_pb2.RangeRequest(key=key, revision=revs[0]), timeout=30), out, COMPACTED
    )
    expect_error(
        lambda: node.kv.Compact(rpc_pb2.CompactionRequest(revision=revs[0]), timeout=30), out, COMPACTED
    )
    expect_error(
        lambda: node.kv.Compact(rpc_pb2.CompactionRequest(revision=revs[1]), timeout=30), out, COMPACTED
    )
    resp = node.kv.Range(rpc_pb2.RangeRequest(key=key, revision=revs[1]), timeout=30)
    assert [kv.value for kv in resp.kvs] == [b"1"]
    now = revision(node)
    expect_error(
        lambda: node.kv.Range(rpc_pb2.RangeRequest(key=key, revision=now + 1), timeout=30), out, FUTURE
    )
    expect_error(
        lambda: node.kv.Compact(rpc_pb2.CompactionRequest(revision=now + 1), timeout=30), out, FUTURE
    )
    txn = rpc_pb2.TxnRequest(
        success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key, revision=now + 5))]
    )
    expect_error(lambda: node.kv.Txn(txn, timeout=30), out, FUTURE)
    assert revision(node) == now


def test_request_too_large(node: Node) -> None:
    before = revision(node)
    big = b"x" * (1600 * 1024)  # > 1.5 MiB, < gRPC's receive limit (1.5 MiB + 512 KiB)
    expect_error(
        lambda: node.kv.Put(rpc_pb2.PutRequest(key=b"big", value=big), timeout=60), INVALID, TOO_LARGE
    )
    half = b"y" * (800 * 1024)
    txn = rpc_pb2.TxnRequest(success=[put_op(b"big/1", half), put_op(b"big/2", half)])
    expect_error(lambda: node.kv.Txn(txn, timeout=60), INVALID, TOO_LARGE)
    assert revision(node) == before
    # above gRPC's own receive limit the transport refuses it before etcd's check
    with pytest.raises(grpc.RpcError) as info:
        node.kv.Put(rpc_pb2.PutRequest(key=b"big", value=b"z" * (2100 * 1024)), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # just under the limit is fine
    ok = b"o" * (1400 * 1024)
    assert node.kv.Put(rpc_pb2.PutRequest(key=b"big", value=ok), timeout=60).header.revision == before + 1
    node.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"big"), timeout=60)


def test_large_range_request_is_not_a_proposal(node: Node) -> None:
    """--max-request-bytes limits what is proposed to raft; etcd serves a read with a key that long."""
    long_key = b"k" * (1600 * 1024)
    for serializable in (False, True):
        resp = node.kv.Range(rpc_pb2.RangeRequest(key=long_key, serializable=serializable), timeout=60)
        assert resp.count == 0 and not resp.kvs


def test_put_options(node: Node) -> None:
    before = revision(node)
    nf = grpc.StatusCode.NOT_FOUND
    expect_error(
        lambda: node.kv.Put(rpc_pb2.PutRequest(key=b"opt/k", value=b"v", lease=0x1234ABCD), timeout=30),
        nf,
        "etcdserver: requested lease not found",
    )
    node.kv.Put(rpc_pb2.PutRequest(key=b"opt/k", value=b"v"), timeout=30)
    cases = [
        (rpc_pb2.PutRequest(key=b"opt/k", value=b"w", ignore_value=True), "etcdserver: value is provided"),
        (rpc_pb2.PutRequest(key=b"opt/k", lease=5, ignore_lease=True), "etcdserver: lease is provided"),
        (rpc_pb2.PutRequest(key=b"opt/missing", ignore_value=True), "etcdserver: key not found"),
        (rpc_pb2.PutRequest(key=b"opt/missing", value=b"v", ignore_lease=True), "etcdserver: key not found"),
    ]
    for request, details in cases:
        expect_error(lambda request=request: node.kv.Put(request, timeout=30), INVALID, details)
        txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=request)])
        expect_error(lambda txn=txn: node.kv.Txn(txn, timeout=30), INVALID, details)
    assert revision(node) == before + 1
    resp = node.kv.Range(rpc_pb2.RangeRequest(key=b"opt/k"), timeout=30)
    assert [(kv.value, kv.version) for kv in resp.kvs] == [(b"v", 1)]


# -- limits moved by flags -------------------------------------------------------------------------------
def test_max_txn_ops_flag(limited: Node) -> None:
    before = revision(limited)
    ops = [put_op(b"lim/%d" % i) for i in range(4)]
    resp = limited.kv.Txn(rpc_pb2.TxnRequest(success=ops[:3]), timeout=30)
    assert resp.succeeded and resp.header.revision == before + 1
    expect_error(lambda: limited.kv.Txn(rpc_pb2.TxnRequest(success=ops), timeout=30), INVALID, TOO_MANY_OPS)
    expect_error(lambda: limited.kv.Txn(rpc_pb2.TxnRequest(failure=ops), timeout=30), INVALID, TOO_MANY_OPS)
    cmps = [rpc_pb2.Compare(key=b"lim/%d" % i, target=rpc_pb2.Compare.VERSION) for i in range(4)]
    expect_error(lambda: limited.kv.Txn(rpc_pb2.TxnRequest(compare=cmps), timeout=30), INVALID, TOO_MANY_OPS)
    assert revision(limited) == before + 1
    limited.assert_healthy()


def test_max_request_bytes_flag(limited: Node) -> None:
    before = revision(limited)
    limited.kv.Put(rpc_pb2.PutRequest(key=b"small", value=b"s" * 100), timeout=30)
    expect_error(
        lambda: limited.kv.Put(rpc_pb2.PutRequest(key=b"small", value=b"s" * 2000), timeout=30),
        INVALID,
        TOO_LARGE,
    )
    txn = rpc_pb2.TxnRequest(success=[put_op(b"t/%d" % i, b"t" * 400) for i in range(3)])
    expect_error(lambda: limited.kv.Txn(txn, timeout=30), INVALID, TOO_LARGE)
    # gRPC's receive limit moves with the flag too: 1024 + 512 KiB
    with pytest.raises(grpc.RpcError) as info:
        limited.kv.Put(rpc_pb2.PutRequest(key=b"small", value=b"s" * (600 * 1024)), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert revision(limited) == before + 1
    limited.assert_healthy()


def test_max_request_bytes_counts_the_whole_proposal(limited: Node) -> None:
    """etcd compares the limit with the raft entry (request plus its header), so a PutRequest of exactly
    --max-request-bytes is already too large."""
    request = rpc_pb2.PutRequest(key=b"edge", value=b"e" * (1024 - 9))  # 2+4 key, 3+1015 value
    assert request.ByteSize() == 1024
    expect_error(lambda: limited.kv.Put(request, timeout=30), INVALID, TOO_LARGE)
    limited.kv.Put(rpc_pb2.PutRequest(key=b"edge", value=b"e" * 900), timeout=30)


# -- range_end below key: differential -------------------------------------------------------------------
def test_range_end_below_key_matches_etcd(cairn_node: Node, etcd_node: Node) -> None:
    def view(node: Node, key: bytes, range_end: bytes) -> tuple:
        resp = node.kv.Range(rpc_pb2.RangeRequest(key=key, range_end=range_end), timeout=30)
        return resp.count, resp.more, [(kv.key, kv.value, kv.version) for kv in resp.kvs]

    for n in (cairn_node, etcd_node):
        for k in (b"~re/a", b"~re/b", b"~re/c"):
            n.kv.Put(rpc_pb2.PutRequest(key=k, value=k[1:].upper()), timeout=30)
    cases = [
        (b"~re/c", b"~re/a"),  # end below key
        (b"~re/b", b"~re/b"),  # end == key: empty
        (b"~re/b", b"~re/b\x00"),  # exactly one key
        (b"~re/b", b"~re/"),
        (b"~re/c", b"\x01"),  # far below
        (b"~re/b", b"\x00"),  # "\x00" means every key >= key (nothing else sorts after "~")
        (b"~re/", b"~re0"),
    ]
    for key, range_end in cases:
        assert view(cairn_node, key, range_end) == view(etcd_node, key, range_end), (key, range_end)
    assert view(cairn_node, b"~re/c", b"~re/a") == (0, False, [])
    for n in (cairn_node, etcd_node):  # deleting with range_end below key deletes nothing either
        resp = n.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"~re/c", range_end=b"~re/a"), timeout=30)
        assert resp.deleted == 0
        assert view(n, b"~re/", b"~re0")[0] == 3
        n.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"~re/", range_end=b"~re0"), timeout=30)
    cairn_node.assert_healthy()
    etcd_node.assert_healthy()


# -- garbage through gRPC --------------------------------------------------------------------------------
def test_garbage_protobuf_body(node: Node) -> None:
    """Identity serializers send raw bytes as the request message: not a valid protobuf is a clear error."""
    before = revision(node)
    for method in ("/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Txn",
                   "/etcdserverpb.KV/DeleteRange", "/etcdserverpb.KV/Compact"):  # fmt: skip
        call = node.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for body in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\xff\xff\xff\xff\x0f"):
            with pytest.raises(grpc.RpcError) as info:
                call(body, timeout=30)
            # etcd (grpc-go) says INTERNAL "grpc: error unmarshalling request: ..."
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), (
                method, body, info.value.code(), info.value.details(),
            )  # fmt: skip
            assert info.value.details()
    # an empty body is a valid, empty message: the usual validation answers
    put = node.channel.unary_unary(
        "/etcdserverpb.KV/Put", request_serializer=None, response_deserializer=None
    )
    expect_error(lambda: put(b"", timeout=30), INVALID, EMPTY_KEY)
    # a valid body with a trailing unknown field is still served
    body = rpc_pb2.PutRequest(key=b"raw/unknown-field", value=b"ok").SerializeToString() + b"\xf8\x07\x01"
    raw = put(body, timeout=30)
    assert rpc_pb2.PutResponse.FromString(raw).header.revision == before + 1
    unknown = node.channel.unary_unary(
        "/etcdserverpb.KV/Nope", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        unknown(b"", timeout=30)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert revision(node) == before + 1


def test_cancelled_calls(node: Node) -> None:
    """Clients that give up right after sending: the node must neither crash nor half-apply anything."""
    sent: dict[bytes, bytes] = {}
    with grpc.insecure_channel(node.server.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for i in range(40):
            key, value = b"cancel/%03d" % i, b"value-%d" % i
            sent[key] = value
            if i % 2:
                future = kv.Put.future(rpc_pb2.PutRequest(key=key, value=value), timeout=30)
            else:
                ops = [put_op(key + b"/%d" % j, value) for j in range(20)]
                for j in range(20):
                    sent[key + b"/%d" % j] = value
                future = kv.Txn.future(rpc_pb2.TxnRequest(success=ops), timeout=30)
            future.cancel()
        # and calls whose deadline passes before any answer could come
        for i in range(10):
            key = b"cancel/deadline/%d" % i
            sent[key] = b"d"
            with contextlib.suppress(grpc.RpcError):
                kv.Put(rpc_pb2.PutRequest(key=key, value=b"d"), timeout=0.001)
    node.assert_healthy()
    resp = node.kv.Range(rpc_pb2.RangeRequest(key=b"cancel/", range_end=b"cancel0"), timeout=30)
    for kv in resp.kvs:
        assert sent.get(kv.key) == kv.value and kv.version == 1, kv
    # a txn is all or nothing, cancelled or not
    landed = {kv.key for kv in resp.kvs}
    for i in range(0, 40, 2):
        parts = {b"cancel/%03d/%d" % (i, j) in landed for j in range(20)}
        assert len(parts) == 1, f"txn {i} half applied"


# -- raw sockets -----------------------------------------------------------------------------------------
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (lengths < 127)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_headers(path: str, authority: str, stream: int = 1) -> bytes:
    fields = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
        (b":authority", authority.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
    ]  # fmt: skip
    return h2_frame(0x1, 0x4, stream, b"".join(_literal(n, v) for n, v in fields))  # HEADERS, END_HEADERS


def grpc_data(message: bytes, *, end_stream: bool = True, stream: int = 1) -> bytes:
    return h2_frame(
        0x0, 0x1 if end_stream else 0x0, stream, b"\x00" + len(message).to_bytes(4, "big") + message
    )


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def h2_connect(endpoint: str) -> socket.socket:
    """A raw HTTP/2 client connection: preface, our SETTINGS, the server's SETTINGS read and acknowledged."""
    host, port = endpoint.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=15)
    sock.sendall(PREFACE + h2_frame(0x4, 0, 0))
    header = recv_exact(sock, 9)
    assert header[3] == 0x4, f"server's first frame is type {header[3]}, not SETTINGS"
    recv_exact(sock, int.from_bytes(header[:3], "big"))
    sock.sendall(h2_frame(0x4, 0x1, 0))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 15.0) -> bool:
    """Drain what the server sends; True if it closed the connection within `timeout`."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def exists(node: Node, key: bytes) -> list[bytes]:
    return [kv.value for kv in node.kv.Range(rpc_pb2.RangeRequest(key=key), timeout=30).kvs]


def test_raw_http2_request_works(node: Node) -> None:
    """The hand-made HTTP/2 framing below is right: a complete request is served."""
    key = b"raw/complete/%d" % next(_counter)
    with h2_connect(node.server.endpoint) as sock:
        message = rpc_pb2.PutRequest(key=key, value=b"framed").SerializeToString()
        sock.sendall(grpc_headers("/etcdserverpb.KV/Put", node.server.endpoint) + grpc_data(message))
        deadline = time.monotonic() + 30
        while not exists(node, key):
            assert time.monotonic() < deadline, "the raw HTTP/2 put never landed"
            time.sleep(0.1)
    assert exists(node, key) == [b"framed"]


def test_garbage_byte_stream(node: Node) -> None:
    rng = random.Random(7)
    host, port = node.server.endpoint.rsplit(":", 1)
    payloads = [
        bytes(rng.getrandbits(8) for _ in range(65536)),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(rng.getrandbits(8) for _ in range(4096)),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(500),  # a TLS ClientHello to a plaintext port
        PREFACE + bytes(rng.getrandbits(8) for _ in range(65536)),  # a good preface, then noise
        PREFACE + h2_frame(0x4, 0, 0) + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",  # a 16 MiB frame announced
    ]
    for i, payload in enumerate(payloads):
        with socket.create_connection((host, int(port)), timeout=15) as sock:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(payload)
            # etcd waits (for more of the TLS handshake, it seems) on the ClientHello; the rest it drops
            closed = read_until_closed(sock, timeout=2.0 if i == 2 else 15.0)
        assert closed or i == 2, f"{node.kind} kept a connection open after garbage {payload[:16]!r}"
        node.assert_healthy()


def test_half_sent_http2_request(node: Node) -> None:
    """Preface and a partial frame, then the client hangs: others are served meanwhile; then it closes."""
    message = rpc_pb2.PutRequest(key=b"raw/half", value=b"never").SerializeToString()
    headers = grpc_headers("/etcdserverpb.KV/Put", node.server.endpoint)
    partials = [
        h2_frame(0x4, 0, 0)[:5],  # half a SETTINGS frame header (preface sent below)
        headers[:7],  # half a HEADERS frame header
        headers[: len(headers) - 5],  # a HEADERS frame missing its last bytes
        headers + grpc_data(message)[:12],  # a DATA frame cut inside the gRPC length prefix
        headers,  # headers, and the body never comes
    ]
    host, port = node.server.endpoint.rsplit(":", 1)
    hanging = []
    try:
        for partial in partials:
            sock = socket.create_connection((host, int(port)), timeout=15)
            hanging.append(sock)
            sock.sendall(
                PREFACE + partial if partial is partials[0] else PREFACE + h2_frame(0x4, 0, 0) + partial
            )
        time.sleep(0.5)
        node.assert_healthy()  # served while all of those hang
    finally:
        for sock in hanging:
            sock.close()
    node.assert_healthy()
    assert exists(node, b"raw/half") == []


def test_client_disconnects_mid_request(node: Node) -> None:
    endpoint = node.server.endpoint
    truncated_key = b"raw/truncated/%d" % next(_counter)
    message = rpc_pb2.PutRequest(key=truncated_key, value=b"t" * 1000).SerializeToString()
    data = grpc_data(message)
    # the gRPC message cut in half: it must never be applied
    with h2_connect(endpoint) as sock:
        sock.sendall(grpc_headers("/etcdserverpb.KV/Put", endpoint) + data[: len(data) // 2])
    # complete frames, but the stream is never half-closed; then RST_STREAM(CANCEL) right after a full
    # request; then a full request and gone without reading the answer
    maybe = {}
    for variant in ("no-end-stream", "rst", "gone"):
        key = b"raw/%s/%d" % (variant.encode(), next(_counter))
        maybe[key] = b"maybe-" + variant.encode()
        body = rpc_pb2.PutRequest(key=key, value=maybe[key]).SerializeToString()
        with h2_connect(endpoint) as sock:
            frames = grpc_headers("/etcdserverpb.KV/Put", endpoint) + grpc_data(
                body, end_stream=variant != "no-end-stream"
            )
            if variant == "rst":
                frames += h2_frame(0x3, 0, 1, (0x8).to_bytes(4, "big"))  # RST_STREAM CANCEL
            sock.sendall(frames)
    # many streams opened at once on one connection, then the connection dropped
    with h2_connect(endpoint) as sock:
        frames = b""
        for stream in range(1, 200, 2):
            key = b"raw/burst/%d" % stream
            maybe[key] = b"burst"
            body = rpc_pb2.PutRequest(key=key, value=b"burst").SerializeToString()
            frames += grpc_headers("/etcdserverpb.KV/Put", endpoint, stream) + grpc_data(body, stream=stream)
        sock.sendall(frames)
    node.assert_healthy()
    time.sleep(1.0)  # anything still in flight has landed or never will
    assert exists(node, truncated_key) == []
    for key, value in maybe.items():
        assert exists(node, key) in ([], [value]), key
    node.assert_healthy()
