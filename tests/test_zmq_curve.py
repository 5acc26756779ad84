"""CURVE on the native ZeroMQ client port (issue 9 item 5), against a real node: a client with an
allowed key works (put, get, watch, cairnctl); an unknown key, a plain-text client and a client
that expects another server key are refused with a clear error within their timeout; the node
keeps serving the others and the data stays intact; the allowed-keys file is re-read live."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq_servers import ZmqNode

from actors.curve import public_of, read_secret, secure_client
from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Kind, Method, pack, unpack
from node.client import Client
from node.config import ConfigError
from plugins.zmq.server import ZmqFrontend

REFUSED_TIMEOUT = 3.0  # seconds a refused client waits for the answer it never gets


def keygen(path: Path) -> tuple[str, bytes]:
    """A client pair made the documented way: ``(public key, secret key)``."""
    out = cairnctl("curve", "keygen", str(path))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip(), read_secret(str(path))[1]


def cairnctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cairnctl", *args], capture_output=True, text=True, timeout=60
    )


class Keys:
    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.allowed_file = base / "clients.keys"
        self.allowed, self.allowed_secret = keygen(base / "allowed.secret")
        self.unknown, self.unknown_secret = keygen(base / "unknown.secret")
        self.allowed_file.write_text(f"# the clients of this node\n\n{self.allowed} app\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ZmqNode, Keys, str]]:
    base = tmp_path_factory.mktemp("zmq-curve")
    keys = Keys(base / "keys")
    node = ZmqNode(base / "node", **{"curve": True, "curve-client-keys-file": str(keys.allowed_file)})
    node.server.start()
    try:
        shown = cairnctl("curve", "server-key", str(node.server.data_dir))
        assert shown.returncode == 0, shown.stderr
        yield node, keys, shown.stdout.strip()
    finally:
        node.server.stop()


def refused(client_args: dict[str, object], url: str) -> EtcdError:
    started = time.monotonic()
    with pytest.raises(EtcdError) as info, Client(url, timeout=REFUSED_TIMEOUT, **client_args) as client:
        client.put(b"/refused", b"x")
    assert time.monotonic() - started < REFUSED_TIMEOUT + 5, "a refused client hung past its timeout"
    assert info.value.code == Code.UNAVAILABLE and "no answer from" in info.value.message
    return info.value


def test_allowed_client_works_and_the_others_are_refused(setup: tuple[ZmqNode, Keys, str]) -> None:
    node, keys, server_key = setup
    assert len(server_key) == 40
    with Client(node.url, timeout=15, server_key=server_key, secret_key=keys.allowed_secret) as client:
        put = client.put(b"/curve/a", b"1")
        assert client.get(b"/curve/a").value == b"1"
        with client.watch(b"/curve/", prefix=True, start_revision=put.header.revision + 1) as watch:
            client.put(b"/curve/b", b"2")
            event = watch.get(timeout=10)
            assert (event.kv.key, event.kv.value) == (b"/curve/b", b"2")

        other = node.server.data_dir.parent / "other.secret"
        wrong_server, _ = keygen(other)
        cases = {
            "unknown key": {"server_key": server_key, "secret_key": keys.unknown_secret},
            "plain text": {},
            "wrong server key": {"server_key": wrong_server, "secret_key": keys.allowed_secret},
        }
        for variant, args in cases.items():
            error = refused(args, node.url)
            assert ("CURVE" in error.message) == bool(args), (variant, error.message)
            # the allowed client is served all along, and nothing was written by the refused ones
            assert client.put(b"/curve/after", variant).header.revision > put.header.revision
            assert client.get(b"/refused") is None
        log = node.server.log_path.read_text()
        assert any("zmq_client_refused" in line and keys.unknown in line for line in log.splitlines()), log[
            -3000:
        ]
        assert client.get(b"/curve/a").value == b"1"

    # cairnctl's native mode takes the same keys as flags
    flags = ["--zmq", node.url, "--curve-server-key", server_key]
    ok = cairnctl(
        *flags,
        "--curve-secret-key-file",
        str(keys.allowed_file.parent / "allowed.secret"),
        "queue",
        "push",
        "/cq",
        "v",
    )
    assert ok.returncode == 0, ok.stderr
    bad = cairnctl(
        *flags,
        "--timeout",
        "2",
        "--curve-secret-key-file",
        str(keys.allowed_file.parent / "unknown.secret"),
        "queue",
        "size",
        "/cq",
    )
    assert bad.returncode != 0 and "CURVE" in bad.stderr, bad.stderr


def test_keys_file_is_reread_and_a_key_cannot_take_over_another_routing_id(
    setup: tuple[ZmqNode, Keys, str],
) -> None:
    node, keys, server_key = setup
    with keys.allowed_file.open("a") as f:
        f.write(f"{keys.unknown}\n")
    try:
        with Client(node.url, timeout=15, server_key=server_key, secret_key=keys.unknown_secret) as client:
            assert client.put(b"/curve/live", b"now allowed").header.revision > 0
        # two allowed keys, one routing id: the second gets a session of its own, not the first's
        sessions = [
            session_of(node.url, server_key, secret, b"cairn-shared-id")
            for secret in (keys.allowed_secret, keys.unknown_secret)
        ]
        assert sessions[0] != sessions[1]
        assert "zmq_routing_id_taken_over" in node.server.log_path.read_text()
    finally:
        keys.allowed_file.write_text(f"{keys.allowed}\n")
    refused({"server_key": server_key, "secret_key": keys.unknown_secret}, node.url)


def session_of(url: str, server_key: str, secret: bytes, routing_id: bytes) -> int:
    """The session number the server gives a raw DEALER (``aux`` of its answer to a heartbeat)."""
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        secure_client(sock, server_key.encode(), public_of(secret), secret)
        sock.connect(url)
        sock.send(pack(Kind.REQUEST, [(1, Method.STATUS, rpc_pb2.StatusRequest().SerializeToString())]))
        assert sock.poll(15000), "no answer"
        kind, aux, records = unpack(sock.recv())
        assert kind == Kind.RESULT and [(rid, status) for rid, status, _ in records] == [(1, 0)]
        return aux


def test_bad_curve_settings_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs curve-client-keys or curve-client-keys-file"):
        ZmqFrontend({"curve": True}, str(tmp_path))
    with pytest.raises(ConfigError, match="not a 40-character Z85 CURVE key"):
        ZmqFrontend({"curve": True, "curve-client-keys": ["short"]}, str(tmp_path))
    with pytest.raises(ConfigError, match="curve-client-keys-file"):
        ZmqFrontend({"curve": True, "curve-client-keys-file": str(tmp_path / "missing")}, str(tmp_path))
    with pytest.raises(ConfigError, match="curve-secret-key-file"):
        ZmqFrontend(
            {"curve": True, "curve-client-keys": [], "curve-secret-key-file": "/nonexistent"}, str(tmp_path)
        )
    with pytest.raises(ConfigError, match="is not true or false"):
        ZmqFrontend({"curve": "yes"}, str(tmp_path))
