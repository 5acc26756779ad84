"""Logs are JSON lines with stable event names, and one request can be followed through them."""

from __future__ import annotations

import json
import time
from pathlib import Path

from servers import Server


def events(server: Server) -> list[dict]:
    lines = server.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_debug_logs_follow_a_request_from_frontend_to_core(tmp_path: Path) -> None:
    server = Server("cairn", tmp_path, extra_args=["--log-level", "debug"])
    with server:
        server.etcdctl("put", "traced", "1")
        failed = server.etcdctl("get", "k", "--rev=99", check=False)  # an error: logged at warning
        assert failed.returncode != 0
        time.sleep(0.5)
        logged = events(server)
    names = {e["event"] for e in logged}
    assert {"node_started", "core_listening", "grpc_serving", "raft_leader_changed"} <= names
    sent = [e for e in logged if e["event"] == "request_sent" and e["process"] == "frontend"]
    received = [e for e in logged if e["event"] == "request_received" and e["process"] == "core"]
    assert sent and received
    by_id = {e["request_id"]: e for e in received}
    assert all(e["request_id"] in by_id for e in sent), "every frontend request id is seen by the core"
    warnings = [e for e in logged if e["event"] == "request_failed"]
    assert warnings and warnings[-1]["level"] == "warning" and "future revision" in warnings[-1]["error"]


def test_info_level_logs_no_requests(cairn: Server) -> None:
    cairn.etcdctl("put", "quiet", "1")
    assert not [e for e in events(cairn) if e["event"] in ("request_sent", "request_received")]
