"""TLS on the RESP listener: redis-cli --tls with the node's certificates; refused clients do not
stop the node; with client-cert-auth the certificate's CN is the connection's user until AUTH."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from certs import Authority, Pair
from servers import Server, free_port
from test_tls import AUTH_SETUP

REDIS_CLI = "/usr/bin/redis-cli"


def redis_cli(
    port: int, ca: str, pair: Pair | None, *args: str, tls: bool = True
) -> subprocess.CompletedProcess:
    flags = ["--tls", "--cacert", ca] if tls else []
    if pair is not None:
        flags += ["--cert", pair.cert, "--key", pair.key]
    return subprocess.run(
        [REDIS_CLI, "-p", str(port), *flags, *args], capture_output=True, text=True, timeout=20
    )


def test_redis_cli_over_tls_and_certificate_users(tmp_path: Path) -> None:
    ca, other = Authority(tmp_path / "ca"), Authority(tmp_path / "other", "another CA")
    server_pair, root, svc = ca.issue("server"), ca.issue("root"), ca.issue("svc")
    port = free_port()
    plugins = {"grpc": {}, "rest": {}, "cert-cn": {}, "resp": {"listen": f"127.0.0.1:{port}", "tls": True}}
    flags = [
        f"--cert-file={server_pair.cert}", f"--key-file={server_pair.key}",
        f"--trusted-ca-file={ca.ca}", "--client-cert-auth",
    ]  # fmt: skip
    node = Server(
        "cairn", tmp_path / "n", extra_args=flags, env={"ETCD_PLUGINS": json.dumps(plugins)},
        client_tls=(ca.ca, root.cert, root.key),
    )  # fmt: skip
    with node.start():
        deadline = time.monotonic() + 30
        while redis_cli(port, ca.ca, root, "PING").stdout.strip() != "PONG":
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.2)
        assert redis_cli(port, ca.ca, root, "SET", "k", "v").stdout.strip() == "OK"
        assert redis_cli(port, ca.ca, root, "GET", "k").stdout.strip() == "v"
        assert node.etcdctl("get", "k", "--print-value-only").stdout == "v\n"  # the same store
        # refused: plain text, no certificate, another CA's certificate; the node goes on serving
        assert redis_cli(port, ca.ca, None, "GET", "k", tls=False).stdout.strip() != "v"
        assert redis_cli(port, ca.ca, None, "GET", "k").stdout.strip() != "v"
        assert redis_cli(port, ca.ca, other.issue("root"), "GET", "k").stdout.strip() != "v"
        assert node.log_path.read_text().count("tls_handshake_refused") >= 2
        assert redis_cli(port, ca.ca, root, "GET", "k").stdout.strip() == "v"
        for args in AUTH_SETUP:
            node.etcdctl(*args)
        assert redis_cli(port, ca.ca, svc, "SET", "/app/x", "1").stdout.strip() == "OK"
        assert "NOPERM" in redis_cli(port, ca.ca, svc, "SET", "/other", "1").stdout
        assert redis_cli(port, ca.ca, svc, "AUTH", "root", "rootpw").stdout.strip() == "OK"
