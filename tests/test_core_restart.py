"""The core process killed under a running frontend: every open stream ends or resumes, no call hangs.

One node serves gRPC, REST, the native ZeroMQ protocol and RESP. Watchers of each kind are open
when the core is killed with SIGKILL (the supervisor starts a new one); a key put afterwards must
reach every watcher that resumes by itself (etcdctl, the native client, a RESP subscriber), and
the others (a python gRPC client, curl on the JSON gateway) must see their stream end with
UNAVAILABLE. A call the dead core had taken must fail with a retryable error, never hang.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from servers import ETCDCTL_BIN, Server, free_port
from zmq_servers import ZmqNode

from actors.proto import rpc_pb2
from node.api import CORE_SILENCE
from node.client import Client

RESTART_TIMEOUT = 60.0  # seconds for the supervisor's new core to serve, on a loaded machine


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stdout lines as they come, then None at its end."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str | None], wanted: str, timeout: float = RESTART_TIMEOUT) -> list[str]:
    """Every line up to and including the first that contains ``wanted``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert line is not None, f"output ended before {wanted!r}: {seen}"
        seen.append(line)
        if wanted in line:
            return seen


# aetcd runs apart: its protos would collide with ours in protobuf's registry
AETCD_WATCH = """
import asyncio, sys
import aetcd

async def main(port):
    try:
        async with aetcd.Client(host="127.0.0.1", port=port, timeout=60) as client:
            async for event in await client.watch_prefix(b"w/"):
                print("event", event.kv.key.decode(), flush=True)
        print("ended", flush=True)
    except Exception as e:
        print("error", type(e).__name__, e, flush=True)

asyncio.run(main(int(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ZmqNode, int]]:
    resp_port = free_port()
    node = ZmqNode(
        tmp_path_factory.mktemp("restart") / "cairn",
        more_plugins={"resp": {"listen": f"127.0.0.1:{resp_port}"}},
    )
    node.server.start()
    try:
        yield node, resp_port
    finally:
        node.server.stop()


def grpc_range(channel: grpc.Channel, key: bytes, timeout: float) -> rpc_pb2.RangeResponse:
    call = channel.unary_unary(
        "/etcdserverpb.KV/Range",
        request_serializer=rpc_pb2.RangeRequest.SerializeToString,
        response_deserializer=rpc_pb2.RangeResponse.FromString,
    )
    return call(rpc_pb2.RangeRequest(key=key), timeout=timeout)


def watchers(server: Server, prefix: str, start: int) -> tuple[subprocess.Popen[str], ...]:
    """``etcdctl watch`` (gRPC) and curl on the JSON gateway's ``/v3/watch``, both watching
    ``prefix`` from revision ``start``."""
    etcdctl = subprocess.Popen(
        [ETCDCTL_BIN, f"--endpoints={server.endpoint}", "watch", prefix, "--prefix", f"--rev={start}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
    key = prefix.encode()
    range_end = key[:-1] + bytes([key[-1] + 1])
    create = {"create_request": {"key": b64(key), "range_end": b64(range_end), "start_revision": start}}
    curl = subprocess.Popen(
        ["curl", "-sN", "-X", "POST", f"{server.client_url}/v3/watch", "-d", json.dumps(create)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return etcdctl, curl


def put_when_served(node: ZmqNode, key: str) -> None:
    """Put ``key`` once the new core serves (etcdctl's own retries are short)."""
    deadline = time.monotonic() + RESTART_TIMEOUT
    while True:
        try:
            node.server.etcdctl("put", key, "v", timeout=15)
            return
        except subprocess.CalledProcessError:
            assert time.monotonic() < deadline, f"the new core never served\n{node.server.log_tail()}"
            time.sleep(0.2)


@pytest.mark.timeout(240)
def test_streams_and_calls_survive_a_core_kill(node: tuple[ZmqNode, int]) -> None:
    zmq_node, resp_port = node
    server = zmq_node.server
    channel = server.channel()
    python = subprocess.Popen(
        [sys.executable, "-c", AETCD_WATCH, str(server.client_port)], stdout=subprocess.PIPE, text=True
    )
    python_lines = lines_of(python)
    started: list[subprocess.Popen[str]] = [python]
    native = Client(zmq_node.url, timeout=30)
    subscriber = redis.Redis(port=resp_port, socket_timeout=30).pubsub()
    try:
        deadline = time.monotonic() + 60
        while python_lines.empty():  # aetcd's watch is live once it sees a put made after it opened
            assert time.monotonic() < deadline, "the aetcd watch never saw a put"
            server.etcdctl("put", "w/ping", "v")
            time.sleep(0.5)
        # the other watchers start after every ping, so their first event is w/before
        start = grpc_range(channel, b"w/", timeout=30).header.revision + 1
        etcdctl, curl = watchers(server, "w/", start)
        started += [etcdctl, curl]
        etcdctl_lines, curl_lines = lines_of(etcdctl), lines_of(curl)
        native_watch = native.watch("w/", prefix=True, start_revision=start)
        subscriber.psubscribe("__keyspace@0__:w/*")
        assert subscriber.get_message(timeout=30)["type"] == "psubscribe"
        server.etcdctl("put", "w/before", "v")
        wait_for_line(python_lines, "event w/before")
        wait_for_line(etcdctl_lines, "w/before")
        wait_for_line(curl_lines, b64(b"w/before"))
        assert native_watch.get(30).kv.key == b"w/before"
        message = subscriber.get_message(timeout=30)
        assert (message["channel"], message["data"]) == (b"__keyspace@0__:w/before", b"set")

        # a call the core has taken when it dies: stopped first, so the call is surely in it
        old_core = zmq_node.child_pid("node.core")
        os.kill(old_core, signal.SIGSTOP)
        outcome: queue.Queue[object] = queue.Queue()
        threading.Thread(target=lambda: outcome.put(_grpc_outcome(channel)), daemon=True).start()
        time.sleep(1.0)
        os.kill(old_core, signal.SIGKILL)

        error = outcome.get(timeout=RESTART_TIMEOUT)
        assert isinstance(error, grpc.RpcError), error
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert error.details() in ("etcdserver: server stopped", "etcdserver: request timed out"), error

        # the python gRPC client and curl see their streams end with UNAVAILABLE
        ended = wait_for_line(python_lines, "error")
        # aetcd's exception for UNAVAILABLE
        assert ended[-1] == "error ConnectionFailedError etcdserver: server stopped", ended
        last = wait_for_line(curl_lines, '"error"')[-1]
        assert json.loads(last) == {
            "error": {
                "grpc_code": 14,
                "http_code": 503,
                "message": "etcdserver: server stopped",
                "http_status": "Service Unavailable",
            }
        }
        assert curl.wait(timeout=30) == 0  # the gateway ended the response cleanly

        put_when_served(zmq_node, "w/after")
        assert zmq_node.child_pid("node.core") != old_core
        # etcdctl, the native client and the RESP subscriber resumed by themselves, nothing repeated
        assert wait_for_line(etcdctl_lines, "w/after") == ["v", "PUT", "w/after"]  # w/before's value first
        assert native_watch.get(RESTART_TIMEOUT).kv.key == b"w/after"
        message = subscriber.get_message(timeout=RESTART_TIMEOUT)
        assert (message["channel"], message["data"]) == (b"__keyspace@0__:w/after", b"set")
        native_watch.close()
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()
        subscriber.close()
        native.close()
        channel.close()


def _grpc_outcome(channel: grpc.Channel) -> object:
    try:
        return grpc_range(channel, b"w/before", timeout=RESTART_TIMEOUT * 2)
    except grpc.RpcError as e:
        return e


@pytest.mark.timeout(120)
def test_streams_end_when_the_core_hangs(node: tuple[ZmqNode, int]) -> None:
    """A core that stops answering (here SIGSTOP) for longer than CORE_SILENCE: open streams end
    with UNAVAILABLE rather than wait on it; once it answers again, etcdctl's watch resumed."""
    zmq_node, _ = node
    server = zmq_node.server
    with server.channel() as channel:
        start = grpc_range(channel, b"h/", timeout=30).header.revision + 1
    etcdctl, curl = watchers(server, "h/", start)
    core = zmq_node.child_pid("node.core")
    try:
        etcdctl_lines, curl_lines = lines_of(etcdctl), lines_of(curl)
        wait_for_line(curl_lines, '"created":true')
        server.etcdctl("put", "h/before", "v")
        wait_for_line(etcdctl_lines, "h/before")
        os.kill(core, signal.SIGSTOP)
        stopped = time.monotonic()
        last = wait_for_line(curl_lines, '"error"', timeout=CORE_SILENCE + 30)[-1]
        assert time.monotonic() - stopped >= CORE_SILENCE - 1  # not before the documented bound
        assert json.loads(last)["error"]["message"] == "etcdserver: server stopped"
        assert curl.wait(timeout=30) == 0
    finally:
        os.kill(core, signal.SIGCONT)
    try:
        put_when_served(zmq_node, "h/after")
        assert zmq_node.child_pid("node.core") == core  # the same core, answering again
        assert wait_for_line(etcdctl_lines, "h/after")[-2:] == ["PUT", "h/after"]
    finally:
        for process in (etcdctl, curl):
            if process.poll() is None:
                process.kill()
            process.wait()
