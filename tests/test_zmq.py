"""The native ZeroMQ frontend and its Python client, against a real cairn node (and a real etcd).

The same request sequence goes to a real etcd 3.4 over gRPC and to cairn over the native protocol:
responses (headers without the ids) and errors (code and text) must be identical. Watches must
resume across a frontend crash and a whole-node restart without losing or repeating an event.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import zmq
from servers import REPO, Server
from zmq_servers import ZmqNode

from actors.errors import EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Kind, Method, pack, unpack
from node.client import AsyncClient, Client, WatchCanceled, compare, delete_op, put_op, range_op


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ZmqNode]:
    node = ZmqNode(tmp_path / "cairn")
    node.server.start()
    try:
        yield node
    finally:
        node.server.stop()


@pytest.fixture
def client(node: ZmqNode) -> Iterator[Client]:
    with Client(node.url, timeout=15) as c:
        yield c


# -- the same requests against etcd (gRPC) and cairn (native) -------------------------------------------
GRPC_PATHS = {
    Method.RANGE: "/etcdserverpb.KV/Range",
    Method.PUT: "/etcdserverpb.KV/Put",
    Method.DELETE_RANGE: "/etcdserverpb.KV/DeleteRange",
    Method.TXN: "/etcdserverpb.KV/Txn",
    Method.COMPACT: "/etcdserverpb.KV/Compact",
    Method.LEASE_GRANT: "/etcdserverpb.Lease/LeaseGrant",
    Method.LEASE_REVOKE: "/etcdserverpb.Lease/LeaseRevoke",
    Method.LEASE_TIME_TO_LIVE: "/etcdserverpb.Lease/LeaseTimeToLive",
    Method.LEASE_LEASES: "/etcdserverpb.Lease/LeaseLeases",
}
RESPONSES = {
    Method.RANGE: rpc_pb2.RangeResponse,
    Method.PUT: rpc_pb2.PutResponse,
    Method.DELETE_RANGE: rpc_pb2.DeleteRangeResponse,
    Method.TXN: rpc_pb2.TxnResponse,
    Method.COMPACT: rpc_pb2.CompactionResponse,
    Method.LEASE_GRANT: rpc_pb2.LeaseGrantResponse,
    Method.LEASE_REVOKE: rpc_pb2.LeaseRevokeResponse,
    Method.LEASE_TIME_TO_LIVE: rpc_pb2.LeaseTimeToLiveResponse,
    Method.LEASE_LEASES: rpc_pb2.LeaseLeasesResponse,
    Method.LEASE_KEEPALIVE: rpc_pb2.LeaseKeepAliveResponse,
}
LEASE = 0x3E7


def sequence() -> list[tuple[Method, bytes]]:
    pb = rpc_pb2
    dup = [put_op(b"d", b"1"), put_op(b"d", b"2")]
    steps = [
        (Method.PUT, pb.PutRequest(key=b"a", value=b"1")),
        (Method.PUT, pb.PutRequest(key=b"b", value=b"2", prev_kv=True)),
        (Method.PUT, pb.PutRequest(key=b"b", value=b"3", prev_kv=True)),
        (Method.RANGE, pb.RangeRequest(key=b"a", range_end=b"c")),
        (Method.TXN, pb.TxnRequest(compare=[compare(b"a", "value", "==", b"1")],
                                   success=[put_op(b"a", b"x"), range_op(b"b")], failure=[delete_op(b"a")])),
        (Method.TXN, pb.TxnRequest(compare=[compare(b"a", "mod", "<", 2)], success=[put_op(b"z", b"no")],
                                   failure=[range_op(b"a", b"c")])),
        (Method.DELETE_RANGE, pb.DeleteRangeRequest(key=b"b", prev_kv=True)),
        (Method.RANGE, pb.RangeRequest(key=b"a", range_end=b"\0", revision=3)),
        (Method.COMPACT, pb.CompactionRequest(revision=4)),
        (Method.RANGE, pb.RangeRequest(key=b"a", revision=3)),
        (Method.RANGE, pb.RangeRequest(key=b"a", revision=1000)),
        (Method.PUT, pb.PutRequest(key=b"", value=b"v")),
        (Method.TXN, pb.TxnRequest(success=dup)),
        (Method.LEASE_GRANT, pb.LeaseGrantRequest(ID=LEASE, TTL=60)),
        (Method.LEASE_GRANT, pb.LeaseGrantRequest(ID=LEASE, TTL=60)),
        (Method.PUT, pb.PutRequest(key=b"c", value=b"leased", lease=LEASE)),
        (Method.PUT, pb.PutRequest(key=b"c", value=b"leased", lease=LEASE + 1)),
        (Method.LEASE_TIME_TO_LIVE, pb.LeaseTimeToLiveRequest(ID=LEASE, keys=True)),
        (Method.LEASE_LEASES, pb.LeaseLeasesRequest()),
        (Method.LEASE_KEEPALIVE, pb.LeaseKeepAliveRequest(ID=LEASE)),
        (Method.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=LEASE)),
        (Method.RANGE, pb.RangeRequest(key=b"c")),
        (Method.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=LEASE)),
        (Method.RANGE, pb.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)),
    ]  # fmt: skip
    return [(method, request.SerializeToString()) for method, request in steps]


def normalized(method: Method, body: bytes) -> str:
    response = RESPONSES[method].FromString(body)
    response.header.cluster_id = response.header.member_id = response.header.raft_term = 0
    if method in (Method.LEASE_TIME_TO_LIVE, Method.LEASE_KEEPALIVE):
        assert 55 <= response.TTL <= 60, response
        response.TTL = 0
    return str(response)


def on_etcd(etcd: Server, method: Method, request: bytes) -> tuple[str, object]:
    with grpc.insecure_channel(etcd.endpoint) as channel:
        try:
            if method == Method.LEASE_KEEPALIVE:
                call = channel.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive")
                body = next(iter(call(iter([request]), timeout=10)))
            else:
                body = channel.unary_unary(GRPC_PATHS[method])(request, timeout=10)
        except grpc.RpcError as e:
            return "error", (e.code().value[0], e.details())
    return "ok", normalized(method, body)


def on_cairn(client: Client, method: Method, request: bytes) -> tuple[str, object]:
    try:
        body = client.call(method, request)
    except EtcdError as e:
        return "error", (int(e.code), e.message)
    return "ok", normalized(method, body)


def test_every_operation_answers_as_etcd_does(etcd: Server, client: Client) -> None:
    for method, request in sequence():
        expected = on_etcd(etcd, method, request)
        assert on_cairn(client, method, request) == expected, (method.name, request)


def test_convenience_api(client: Client) -> None:
    first = client.put("/config/a", "1")
    assert client.get(b"/config/a").value == b"1"
    client.put(b"/config/b", b"2")
    got = client.range(b"/config/", prefix=True)
    assert [kv.key for kv in got.kvs] == [b"/config/a", b"/config/b"] and got.count == 2
    assert client.get(b"/config/a", revision=first.header.revision).version == 1
    assert client.get(b"/nope") is None
    swapped = client.txn([compare("/config/a", "value", "==", "1")], [put_op("/config/a", "2")])
    assert swapped.succeeded and client.get("/config/a").value == b"2"
    lease = client.lease_grant(30)
    client.put("/svc/x", "up", lease=lease.ID)
    assert list(client.lease_time_to_live(lease.ID, keys=True).keys) == [b"/svc/x"]
    assert [item.ID for item in client.leases().leases] == [lease.ID]
    assert client.lease_keep_alive_once(lease.ID).TTL == 30
    client.lease_revoke(lease.ID)
    assert client.get("/svc/x") is None
    assert client.delete("/config/", prefix=True).deleted == 2
    status = client.status()
    assert status.version.startswith("3.4") and status.leader == status.header.member_id
    assert len(client.member_list().members) == 1
    with pytest.raises(EtcdError, match="etcdserver: requested lease not found"):
        client.lease_revoke(lease.ID)


def test_keep_alive_holds_a_lease_past_its_ttl(client: Client) -> None:
    lease = client.lease_grant(2)
    client.put("/held", "yes", lease=lease.ID)
    keeper = client.keep_alive(lease.ID)
    time.sleep(4.5)
    assert client.get("/held") is not None and keeper.error is None
    keeper.stop()
    deadline = time.monotonic() + 15
    while client.get("/held") is not None:
        assert time.monotonic() < deadline, "the lease did not expire after keep-alive stopped"
        time.sleep(0.2)


def test_etcdctl_and_native_client_see_the_same_key_at_the_same_revision(
    node: ZmqNode, client: Client
) -> None:
    node.server.etcdctl("put", "/shared/k", "from-etcdctl")
    client.put("/shared/n", "from-native")
    seen = json.loads(node.server.etcdctl("get", "--prefix", "/shared/", "-w", "json").stdout)
    native = client.range("/shared/", prefix=True)
    assert seen["header"]["revision"] == native.header.revision
    b64 = base64.b64decode
    assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in native.kvs] == [
        (b64(kv["key"]), b64(kv["value"]), kv["create_revision"], kv["mod_revision"], kv["version"])
        for kv in seen["kvs"]
    ]


def test_pipelined_calls_are_answered_in_one_go(node: ZmqNode) -> None:
    async def main() -> list[int]:
        async with AsyncClient(node.url) as c:
            puts = await asyncio.gather(*(c.put(f"/p/{i:04d}", str(i)) for i in range(500)))
            got = await asyncio.gather(*(c.get(f"/p/{i:04d}") for i in range(500)))
            assert [kv.value for kv in got] == [str(i).encode() for i in range(500)]
            return sorted(p.header.revision for p in puts)

    assert asyncio.run(main()) == list(range(2, 502))  # every put one revision, none lost


# -- watch ------------------------------------------------------------------------------------------------
def test_watch_events_and_compaction(client: Client) -> None:
    with client.watch("/w/", prefix=True, prev_kv=True) as watch:
        client.put("/w/a", "1")
        client.put("/w/a", "2")
        client.delete("/w/a")
        events = [watch.get(10) for _ in range(3)]
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        (0, b"/w/a", b"1"),
        (0, b"/w/a", b"2"),
        (1, b"/w/a", b""),
    ]
    assert events[1].prev_kv.value == b"1"
    head = client.put("/w/b", "3").header.revision
    client.compact(head)
    with pytest.raises(WatchCanceled) as info, client.watch("/w/", prefix=True, start_revision=2) as old:
        old.get(10)
    assert info.value.compact_revision == head


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def put_via_etcdctl(server: Server, key: str, value: str) -> None:
    """etcdctl (gRPC) writes, retried while the frontend process is still coming back."""
    deadline = time.monotonic() + 30
    while server.etcdctl("put", key, value, check=False).returncode != 0:
        assert time.monotonic() < deadline, "etcdctl put kept failing"
        time.sleep(0.2)


def test_watch_resumes_across_a_frontend_crash_and_a_node_restart(node: ZmqNode, client: Client) -> None:
    watch = client.watch("/r/", prefix=True)
    client.put("/r/1", "a")
    assert watch.get(10).kv.key == b"/r/1"

    frontend = node.child_pid("node.frontend")
    os.kill(frontend, signal.SIGKILL)  # the supervisor starts a new one: a new zmq server, new sessions
    put_via_etcdctl(node.server, "/r/2", "b")
    put_via_etcdctl(node.server, "/r/3", "c")
    assert [watch.get(30).kv.key for _ in range(2)] == [b"/r/2", b"/r/3"]
    assert node.child_pid("node.frontend") != frontend

    node.server.stop()  # the whole node: writes happen before the client is back
    node.server.start()
    node.server.etcdctl("put", "/r/4", "d")
    client.put("/r/5", "e")
    keys = [watch.get(30).kv.key for _ in range(2)]
    assert keys == [b"/r/4", b"/r/5"]
    with pytest.raises(TimeoutError):
        watch.get(1.5)  # nothing repeated after the resume
    assert watch.revision == client.get("/r/5").mod_revision + 1
    watch.close()


def test_a_stalled_watcher_loses_nothing(node: ZmqNode) -> None:
    """A raw client that stops reading while 2,000 puts of 4 KB happen, then reads: every event,
    in order, none twice (the relay held back, the watch hub replayed from history)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 4)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.RCVTIMEO, 30000)
    sock.connect(node.url)
    try:
        create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/s/", range_end=b"/s0"))
        sock.send(pack(Kind.REQUEST, [(1, Method.WATCH, create.SerializeToString())]))
        unpack(sock.recv())  # the created response: the watch exists from here on

        async def load() -> None:
            async with AsyncClient(node.url) as c:
                for start in range(0, 2000, 10):  # many small turns: many push frames
                    await asyncio.gather(
                        *(c.put(b"/s/%04d" % i, b"x" * 4096) for i in range(start, start + 10))
                    )

        asyncio.run(load())
        seen: list[int] = []
        while len(seen) < 2000:
            sock.send(pack(Kind.REQUEST, []))  # heartbeats, so the server does not forget us
            kind, _, records = unpack(sock.recv())
            for _, _, body in records if kind == Kind.PUSH else []:
                seen.extend(ev.kv.mod_revision for ev in rpc_pb2.WatchResponse.FromString(body).events)
        assert seen == sorted(set(seen)) and len(seen) == 2000
    finally:
        sock.close(linger=0)


def test_cairnctl_watch_prints_changes(node: ZmqNode, client: Client) -> None:
    command = [
        sys.executable,
        "-m",
        "tools.cairnctl",
        "--zmq",
        node.url,
        "watch",
        "/cw/",
        "--prefix",
        "--rev",
        "2",
    ]
    client.put("/cw/a", "1")  # revision 2: from history
    watcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "PUT /cw/a 1  (revision 2)\n"
        client.delete("/cw/a")
        assert watcher.stdout.readline() == "DELETE /cw/a  (revision 3)\n"
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_auth_tokens_travel_with_native_requests(node: ZmqNode, client: Client) -> None:
    """With auth on, the native client is refused as etcdctl is, until it authenticates."""
    node.server.etcdctl("user", "add", "root:rootpw")
    node.server.etcdctl("auth", "enable")
    anonymous = node.server.etcdctl("put", "/a/k", "v", check=False)
    with pytest.raises(EtcdError) as refused:
        client.put("/a/k", "v")
    assert refused.value.message in anonymous.stderr
    wrong = node.server.etcdctl("--user", "root:nope", "get", "/a/k", check=False)
    with pytest.raises(EtcdError) as failed:
        client.authenticate("root", "nope")
    assert failed.value.message in wrong.stderr
    assert client.authenticate("root", "rootpw").token
    with client.watch("/a/", prefix=True) as watch:
        revision = client.put("/a/k", "v").header.revision
        assert watch.get(10).kv.mod_revision == revision
    seen = node.server.etcdctl("--user", "root:rootpw", "get", "/a/k", "--print-value-only").stdout
    assert seen == "v\n"
