"""The REST frontend (etcd's JSON gateway, /health, /version, /metrics) against real clients.

curl and the etcd3gw client drive a real cairn node with ``plugins: {grpc: {}, rest: {}}``, so gRPC
and the gateway share the client port as with etcd; a differential test sends the same scripted
requests to a real etcd 3.4 and to cairn and compares status, content type and body after
normalizing what legitimately differs (member/cluster ids, terms, ports, sizes, versions).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from servers import Server

CURL = "/usr/bin/curl"
BOTH = json.dumps({"grpc": {}, "rest": {}})


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def curl(
    url: str, body: str | bytes | None = None, method: str = "POST", timeout: float = 10.0
) -> tuple[int, str, str]:
    """(status, content type, body) of one curl request."""
    cmd = [
        CURL,
        "-s",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
        "--max-time",
        str(timeout),
    ]
    if body is not None:
        cmd += ["--data-binary", "@-"]
    data = body.encode() if isinstance(body, str) else body
    out = subprocess.run([*cmd, url], input=data, capture_output=True, timeout=timeout + 5).stdout.decode()
    text, _, tail = out.rpartition("\n")
    code, _, ctype = tail.partition(" ")
    return int(code), ctype, text


def start_cairn(base: Path, plugins: str = BOTH, env: dict[str, str] | None = None) -> Server:
    server = Server("cairn", base, env={"ETCD_PLUGINS": plugins, **(env or {})})
    return server.start()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One cairn node with gRPC and REST on the same port, shared by the tests that only add keys."""
    base = tmp_path_factory.mktemp("rest")
    server = start_cairn(base / "cairn", env={"PROMETHEUS_MULTIPROC_DIR": _metrics_dir(base)})
    try:
        yield server
    finally:
        server.stop()


def _metrics_dir(base: Path) -> str:
    path = base / "metrics"
    path.mkdir(exist_ok=True)
    return str(path)


# -- differential: the same requests to etcd 3.4 and cairn ------------------------------------------------

LEASE = 7000
SCRIPT: list[tuple[str, Any]] = [
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("bar")}),
    ("/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True}),
    ("/v3/kv/put", {"key": b64("fop"), "value": b64("1")}),
    ("/v3/kv/put", {"key": b64("zed"), "value": b64("<&>")}),
    ("/v3/kv/range", {"key": b64("foo")}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp")}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp"), "count_only": True}),
    ("/v3/kv/range", {"key": b64("fo"), "range_end": b64("fp"), "keys_only": True, "limit": 1}),
    (
        "/v3/kv/range",
        {"key": b64("\0"), "range_end": b64("\0"), "sort_order": "DESCEND", "sort_target": "KEY"},
    ),
    ("/v3/kv/range", {"key": b64("\0"), "range_end": b64("\0"), "sort_order": 1, "limit": "2"}),
    ("/v3/kv/range", {"key": b64("nothing")}),
    ("/v3/kv/range", {"key": b64("foo"), "revision": 2}),
    ("/v3/kv/range", {"key": b64("foo"), "revision": "99"}),
    ("/v3/kv/range", {"key": b64("foo"), "serializable": True, "unknown_field": 1}),
    ("/v3beta/kv/range", {"key": b64("foo")}),
    ("/v3/kv/deleterange", {"key": b64("fop"), "prev_kv": True}),
    ("/v3/kv/deleterange", {"key": b64("nothing")}),
    (
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE", "value": b64("baz")}],
            "success": [
                {"request_put": {"key": b64("t1"), "value": b64("x")}},
                {"request_range": {"key": b64("foo")}},
            ],
            "failure": [{"request_delete_range": {"key": b64("foo")}}],
        },
    ),
    (
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("foo"), "target": "MOD", "result": "LESS", "mod_revision": "2"}],
            "success": [{"request_put": {"key": b64("t2"), "value": b64("y")}}],
            "failure": [
                {"request_delete_range": {"key": b64("t1"), "prev_kv": True}},
                {"request_range": {"key": b64("t1")}},
            ],
        },
    ),
    ("/v3/kv/txn", {}),
    ("/v3/lease/grant", {"TTL": 60, "ID": LEASE}),
    ("/v3/lease/grant", {"TTL": 60, "ID": LEASE}),
    ("/v3/lease/grant", {"TTL": "9999999999", "ID": LEASE + 1}),
    ("/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": LEASE}),
    ("/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": "12345"}),
    ("/v3/lease/leases", {}),
    ("/v3/kv/lease/leases", {}),
    ("/v3/lease/timetolive", {"ID": LEASE, "keys": True}),
    ("/v3/kv/lease/timetolive", {"ID": "424242"}),
    ("/v3/lease/revoke", {"ID": LEASE}),
    ("/v3/lease/revoke", {"ID": LEASE}),
    ("/v3/kv/lease/revoke", {"ID": 31337}),
    ("/v3/kv/range", {"key": b64("leased")}),
    ("/v3/kv/compaction", {"revision": 3}),
    ("/v3/kv/range", {"key": b64("foo"), "revision": 2}),
    ("/v3/kv/compaction", {"revision": 2}),
    ("/v3/cluster/member/list", {}),
    ("/v3/maintenance/status", {}),
    # bad input
    ("/v3/kv/put", {}),
    ("/v3/kv/put", "{bad"),
    ("/v3/kv/put", '{"key":"Zm9v",}'),
    ("/v3/kv/put", "[]"),
    ("/v3/kv/put", '"x"'),
    ("/v3/kv/put", "null"),
    ("/v3/kv/put", ""),
    ("/v3/kv/put", {"key": 1}),
    ("/v3/kv/put", {"key": "!!"}),
    ("/v3/kv/put", {"key": "Zm9-"}),
    ("/v3/kv/put", {"key": {}}),
    ("/v3/kv/range", {"key": b64("foo"), "limit": "abc"}),
    ("/v3/kv/range", {"key": b64("foo"), "limit": 1.5}),
    ("/v3/kv/range", {"key": b64("foo"), "limit": "1e3"}),
    ("/v3/kv/range", {"key": b64("foo"), "keys_only": "true"}),
    ("/v3/kv/range", {"key": b64("foo"), "sort_order": "SIDEWAYS"}),
    ("/v3/kv/range", {"key": b64("foo"), "serializable": 1}),
    ("/v3/kv/txn", {"success": {}}),
    ("/v3/lease/revoke", {"ID": "18446744073709551615"}),
    ("/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * 1_600_000)}),
    ("/v3/kv/put", {"key": b64("big"), "value": b64(b"x" * 3_000_000)}),
    ("/v3/kv/nope", {}),
    ("/v3/kv/range/", {}),
    ("/nothing", None),
]


def _normalize(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "raft_term":  # etcd's first term is 2 (pre-vote), and its watch "created" carries it
                continue
            out[k] = _normalize(v, k)
        return out
    if isinstance(value, list):
        return [_normalize(v, key) for v in value]
    if key in ("cluster_id", "member_id", "leader"):
        return "<id>"
    if key == "ID" and isinstance(value, str) and len(value) > 8:
        return "<member id>"
    if key in (
        "dbSize",
        "dbSizeInUse",
        "raftIndex",
        "raftAppliedIndex",
        "raftTerm",
        "version",
    ) and isinstance(value, str):
        return f"<{key}>"
    if key == "TTL" and isinstance(value, str) and value.isdigit() and 50 <= int(value) <= 60:
        return "<ttl>"
    if key in ("peerURLs", "clientURLs"):
        return re.sub(r":\d+", ":<port>", value)
    return value


def _exchange(server: Server, path: str, body: Any) -> tuple[int, str, Any]:
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    status, ctype, text = curl(server.client_url + path, data, method="POST" if body is not None else "GET")
    try:
        parsed: Any = _normalize(json.loads(text))
    except ValueError:
        parsed = text
    return status, ctype, parsed


@pytest.mark.timeout(180)
def test_differential_against_etcd(tmp_path: Path) -> None:
    etcd = Server("etcd", tmp_path / "etcd").start()
    cairn = start_cairn(tmp_path / "cairn")
    differences = []
    for path, body in SCRIPT:
        want, got = _exchange(etcd, path, body), _exchange(cairn, path, body)
        if want != got:
            differences.append(f"{path} {str(body)[:80]}\n  etcd:  {want}\n  cairn: {got}")
    # the same keep-alive and watch streams
    for path, body in [
        ("/v3/lease/grant", {"TTL": 60, "ID": LEASE + 5}),
        ("/v3/lease/keepalive", {"ID": LEASE + 5}),
        ("/v3/lease/keepalive", {"ID": 99}),
        ("/v3/lease/keepalive", ""),
        ("/v3/lease/keepalive", "{x"),
        ("/v3/watch", "{x"),
    ]:
        want, got = _exchange(etcd, path, body), _exchange(cairn, path, body)
        if want != got:
            differences.append(f"{path} {body}\n  etcd:  {want}\n  cairn: {got}")
    request = {
        "create_request": {"key": b64("\0"), "range_end": b64("\0"), "start_revision": 3, "prev_kv": True}
    }
    want_events = _watch_events(etcd, request, 7)
    got_events = _watch_events(cairn, request, 7)
    if want_events != got_events:
        differences.append(f"watch history\n  etcd:  {want_events}\n  cairn: {got_events}")
    assert not differences, "\n".join(differences)


def _watch_events(server: Server, request: dict, count: int, timeout: float = 5.0) -> list[Any]:
    events: list[Any] = []
    with requests.post(server.client_url + "/v3/watch", json=request, stream=True, timeout=timeout) as resp:
        assert resp.status_code == 200
        deadline = time.monotonic() + timeout
        for line in resp.iter_lines():
            result = json.loads(line)["result"]
            events.extend(_normalize(result.get("events", [])))
            if len(events) >= count or time.monotonic() > deadline:
                break
    return events


# -- the gateway on cairn ---------------------------------------------------------------------------------


def test_every_path_answers(node: Server) -> None:
    url = node.client_url
    status, ctype, text = curl(url + "/v3/kv/put", json.dumps({"key": b64("p/a"), "value": b64("1")}))
    assert (status, ctype) == (200, "application/json")
    header = json.loads(text)["header"]
    assert set(header) >= {"cluster_id", "member_id", "revision", "raft_term"}
    assert isinstance(header["revision"], str)  # int64 as a string
    kvs = json.loads(curl(url + "/v3/kv/range", json.dumps({"key": b64("p/a")}))[2])["kvs"]
    assert base64.b64decode(kvs[0]["value"]) == b"1" and kvs[0]["version"] == "1"
    assert (
        curl(url + "/v3/kv/txn", json.dumps({"success": [{"request_range": {"key": b64("p/a")}}]}))[0] == 200
    )
    assert curl(url + "/v3/kv/deleterange", json.dumps({"key": b64("p/a")}))[0] == 200
    lease = json.loads(curl(url + "/v3/lease/grant", json.dumps({"TTL": 30}))[2])["ID"]
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        assert json.loads(curl(url + path, json.dumps({"ID": lease}))[2])["grantedTTL"] == "30"
    for path in ("/v3/lease/leases", "/v3/kv/lease/leases"):
        assert {"ID": lease} in json.loads(curl(url + path, "{}")[2])["leases"]
    lines = curl(url + "/v3/lease/keepalive", json.dumps({"ID": lease}))[2].splitlines()
    assert json.loads(lines[0])["result"]["TTL"] == "30"
    assert curl(url + "/v3/kv/lease/revoke", json.dumps({"ID": lease}))[0] == 200
    assert curl(url + "/v3/lease/revoke", json.dumps({"ID": lease}))[0] == 404
    members = json.loads(curl(url + "/v3/cluster/member/list", "{}")[2])["members"]
    assert members[0]["clientURLs"] == [node.client_url]
    status_body = json.loads(curl(url + "/v3/maintenance/status", "{}")[2])
    assert status_body["leader"] == status_body["header"]["member_id"]
    assert curl(url + "/v3/kv/compaction", json.dumps({"revision": 1}))[0] == 200
    status, ctype, text = curl(url + "/v3/auth/enable", "{}")  # served: etcd's refusal without root
    assert status == 412 and json.loads(text)["message"] == "etcdserver: root user does not exist"


def test_etcdctl_shares_the_port(node: Server) -> None:
    node.etcdctl("put", "shared", "grpc")
    assert node.etcdctl("get", "shared", "--print-value-only").stdout.strip() == "grpc"
    text = curl(node.client_url + "/v3/kv/range", json.dumps({"key": b64("shared")}))[2]
    assert base64.b64decode(json.loads(text)["kvs"][0]["value"]) == b"grpc"
    curl(node.client_url + "/v3/kv/put", json.dumps({"key": b64("shared"), "value": b64("rest")}))
    assert node.etcdctl("get", "shared", "--print-value-only").stdout.strip() == "rest"
    assert (
        "is healthy" in node.etcdctl("endpoint", "health").stderr + node.etcdctl("endpoint", "health").stdout
    )


def test_watch_streams_events(node: Server) -> None:
    request = {"create_request": {"key": b64("w/"), "range_end": b64("w0"), "prev_kv": True}}
    with requests.post(node.client_url + "/v3/watch", json=request, stream=True, timeout=10) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
        lines = resp.iter_lines()
        created = json.loads(next(lines))["result"]
        assert created["created"] is True
        for i in range(3):
            curl(node.client_url + "/v3/kv/put", json.dumps({"key": b64(f"w/{i}"), "value": b64(str(i))}))
        curl(node.client_url + "/v3/kv/deleterange", json.dumps({"key": b64("w/0")}))
        events: list[dict] = []
        while len(events) < 4:
            events.extend(json.loads(next(lines))["result"]["events"])
    assert [e.get("type", "PUT") for e in events] == ["PUT", "PUT", "PUT", "DELETE"]
    assert [base64.b64decode(e["kv"]["key"]) for e in events] == [b"w/0", b"w/1", b"w/2", b"w/0"]
    assert base64.b64decode(events[3]["prev_kv"]["value"]) == b"0"


def test_watch_stream_takes_more_requests_from_a_chunked_body(node: Server) -> None:
    """The body is a stream of WatchRequests: a second create sent later on the same request works."""
    sock = socket.create_connection(("127.0.0.1", node.client_port), timeout=10)
    try:
        sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = json.dumps({"create_request": {"key": b64("cw/a")}}).encode()
        sock.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        second = json.dumps({"create_request": {"key": b64("cw/b")}}).encode()
        half = len(second) // 2  # a request split over two chunks
        sock.sendall(b"%x\r\n%s\r\n%x\r\n%s\r\n" % (half, second[:half], len(second) - half, second[half:]))
        time.sleep(0.5)
        curl(node.client_url + "/v3/kv/put", json.dumps({"key": b64("cw/b"), "value": b64("2")}))
        seen: list[dict] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("events" in r for r in seen):
            line = reader.readline()
            if line.startswith(b"{"):
                seen.append(json.loads(line)["result"])
        assert sum(1 for r in seen if r.get("created")) == 2
        assert base64.b64decode(next(r for r in seen if "events" in r)["events"][0]["kv"]["key"]) == b"cw/b"
    finally:
        sock.close()


def test_etcd3gw_client(node: Server) -> None:
    from etcd3gw.client import Etcd3Client

    client = Etcd3Client(host="127.0.0.1", port=node.client_port, api_path=None)
    assert client.api_path == "/v3/"  # picked from /version
    assert client.put("gw/a", "1") is True
    assert client.get("gw/a") == [b"1"]
    client.put("gw/b", "2")
    assert sorted(v for v, _ in client.get_prefix("gw/")) == [b"1", b"2"]
    assert client.status()["header"]["member_id"]
    assert client.members()[0]["clientURLs"] == [node.client_url]
    txn = {
        "compare": [{"key": b64("gw/a"), "result": "EQUAL", "target": "VALUE", "value": b64("1")}],
        "success": [{"request_put": {"key": b64("gw/c"), "value": b64("3")}}],
        "failure": [],
    }
    assert client.transaction(txn)["succeeded"] is True
    assert client.get("gw/c") == [b"3"]
    assert client.delete("gw/c") is True
    assert client.delete("gw/c") is False
    lease = client.lease(ttl=20)
    client.put("gw/leased", "x", lease=lease)
    assert lease.ttl() > 15
    assert lease.refresh() == 20
    assert lease.keys() == [b"gw/leased"]
    assert lease.revoke() is True
    assert client.get("gw/leased") == []
    events, cancel = client.watch("gw/watched")
    try:
        time.sleep(0.5)
        client.put("gw/watched", "v1")
        event = next(iter(events))
        assert event["kv"]["key"] == b"gw/watched" and event["kv"]["value"] == b"v1"
    finally:
        cancel()
    assert client.delete_prefix("gw/") is True


# -- health, version, metrics -------------------------------------------------------------------------------


def test_health_and_version(node: Server) -> None:
    status, ctype, text = curl(node.client_url + "/health", method="GET")
    assert (status, text) == (200, '{"health":"true"}')
    assert ctype.startswith("text/plain")
    assert curl(node.client_url + "/health", "{}")[0] == 405
    status, ctype, text = curl(node.client_url + "/version", method="GET")
    assert status == 200 and ctype == "application/json"
    version = json.loads(text)
    assert set(version) == {"etcdserver", "etcdcluster"} and version["etcdserver"].startswith("3.4.")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _core_pid(server: Server) -> int:
    for child in _children(server.pid):
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"node.core" in f.read():
                return child
    raise AssertionError("no core process under the node")


def test_health_is_false_when_the_core_does_not_answer(tmp_path: Path) -> None:
    server = start_cairn(tmp_path / "cairn")
    core = _core_pid(server)
    os.kill(core, signal.SIGSTOP)  # the core is this test's own node's child, stopped by pid
    try:
        start = time.monotonic()
        status, _ctype, text = curl(server.client_url + "/health", method="GET")
        assert (status, text) == (503, '{"health":"false"}\n')
        assert time.monotonic() - start < 3
        assert curl(server.client_url + "/version", method="GET")[0] == 200  # no quorum needed
    finally:
        os.kill(core, signal.SIGCONT)
    assert curl(server.client_url + "/health", method="GET")[0] == 200


def _metrics(server: Server) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    status, ctype, text = curl(server.client_url + "/metrics", method="GET")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in families.values()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_count_requests(node: Server) -> None:
    before = _metrics(node)
    for i in range(5):
        curl(node.client_url + "/v3/kv/put", json.dumps({"key": b64(f"m/{i}"), "value": b64("v")}))
    curl(node.client_url + "/v3/kv/put", "{}")
    curl(node.client_url + "/health", method="GET")
    after = _metrics(node)
    put = {"grpc_service": "etcdserverpb.KV", "grpc_method": "Put", "grpc_type": "unary"}
    assert (
        _sample(after, "grpc_server_started_total", **put)
        - _sample(before, "grpc_server_started_total", **put)
        == 6
    )
    ok = _sample(after, "grpc_server_handled_total", grpc_code="OK", **put)
    assert ok - _sample(before, "grpc_server_handled_total", grpc_code="OK", **put) == 5
    bad = _sample(after, "grpc_server_handled_total", grpc_code="InvalidArgument", **put)
    assert bad - _sample(before, "grpc_server_handled_total", grpc_code="InvalidArgument", **put) == 1
    assert _sample(after, "grpc_server_handling_seconds_count", **put) >= 6
    assert _sample(after, "etcd_server_health_success_total") > _sample(
        before, "etcd_server_health_success_total"
    )
    assert "etcd_server_version" in after


CORE_METRICS = [
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_keys_total",
]



def test_metrics_include_the_core_figures(node: Server) -> None:
    curl(node.client_url + "/v3/kv/put", json.dumps({"key": b64("core"), "value": b64("v")}))
    families = _metrics(node)
    missing = [name for name in CORE_METRICS if name not in families]
    assert not missing, f"missing from /metrics: {missing}"
    assert _sample(families, "etcd_server_has_leader") == 1


# -- bad input and misbehaving clients ---------------------------------------------------------------------


def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_garbage_and_oversized_input(node: Server) -> None:
    port = node.client_port
    assert _raw(port, b"\x16\x03\x01 definitely not http\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{"
    reply = _raw(port, huge)
    assert reply.startswith(b"HTTP/1.1 413") and b'"code":8' in reply
    long_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    assert _raw(port, long_header)[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400")
    # still serving, over both protocols
    assert curl(node.client_url + "/health", method="GET")[0] == 200
    node.etcdctl("put", "after-garbage", "ok")


def test_pipelined_and_http10_requests(node: Server) -> None:
    body = json.dumps({"key": b64("pipe")}).encode()
    one = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = _raw(node.client_port, one * 3 + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    assert reply.endswith(b'{"health":"true"}')
    reply = _raw(node.client_port, b"GET /version HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200") and b'"etcdcluster"' in reply


def test_half_sent_request_times_out_and_others_are_served(tmp_path: Path) -> None:
    plugins = json.dumps({"grpc": {}, "rest": {"request-timeout": 1.5}})
    server = start_cairn(tmp_path / "cairn", plugins=plugins)
    with socket.create_connection(("127.0.0.1", server.client_port), timeout=10) as sock:
        sock.sendall(b'POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"key":')
        for _ in range(3):  # meanwhile everyone else is served
            assert curl(server.client_url + "/health", method="GET")[0] == 200
        start = time.monotonic()
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - start < 3
        assert sock.recv(65536) == b""  # and closed
    # a client that vanishes halfway through a request leaves nothing behind
    with socket.create_connection(("127.0.0.1", server.client_port)) as sock:
        sock.sendall(b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    with socket.create_connection(("127.0.0.1", server.client_port)) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM")  # half an HTTP/2 preface, then gone
    assert curl(server.client_url + "/health", method="GET")[0] == 200
    server.etcdctl("put", "k", "v")


def test_rest_on_its_own_port(tmp_path: Path) -> None:
    """With ``listen`` the gateway serves alone on its own address; gRPC keeps the client port."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    rest_port = port.getsockname()[1]
    port.close()
    plugins = json.dumps({"grpc": {}, "rest": {"listen": [f"http://127.0.0.1:{rest_port}"]}})
    server = start_cairn(tmp_path / "cairn", plugins=plugins)
    server.etcdctl("put", "k", "v")
    text = curl(f"http://127.0.0.1:{rest_port}/v3/kv/range", json.dumps({"key": b64("k")}))[2]
    assert base64.b64decode(json.loads(text)["kvs"][0]["value"]) == b"v"
    assert curl(f"http://127.0.0.1:{rest_port}/health", method="GET")[0] == 200


def test_watch_client_that_goes_away_is_counted(node: Server) -> None:
    before = _metrics(node)
    labels = {"grpc_service": "etcdserverpb.Watch", "grpc_method": "Watch", "grpc_code": "Canceled"}
    with requests.post(
        node.client_url + "/v3/watch", json={"create_request": {"key": b64("gone")}}, stream=True, timeout=5
    ) as resp:
        assert json.loads(next(resp.iter_lines()))["result"]["created"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        after = _metrics(node)
        if _sample(after, "grpc_server_handled_total", **labels) > _sample(
            before, "grpc_server_handled_total", **labels
        ):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the server did not notice the watch client leaving")
