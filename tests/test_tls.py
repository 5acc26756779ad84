"""TLS on the client port (issue 9 item 4): etcdctl, curl and gRPC clients against cairn and a
real etcd started with the same flags; refused clients are refused by both, and both go on serving.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest
from certs import Authority, Pair
from servers import Server, run_etcdctl

from node.config import ConfigError, load_file, parse_args


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("pki")
    ca, other = Authority(base / "ca"), Authority(base / "other", "another CA")
    return {
        "ca": ca,
        "server": ca.issue("server"),
        "root": ca.issue("root"),
        "svc": ca.issue("svc"),
        "stranger": other.issue("root"),  # a root CN, but from a CA the node does not trust
    }


def tls_server(kind: str, base: Path, pki: dict, env: dict | None = None) -> Server:
    """etcd or cairn with the same TLS flags; its own clients (``server.etcdctl``) are root."""
    server, client, ca = pki["server"], pki["root"], pki["ca"].ca
    flags = [f"--cert-file={server.cert}", f"--key-file={server.key}", f"--trusted-ca-file={ca}"]
    flags.append("--client-cert-auth")
    return Server(kind, base / kind, extra_args=flags, client_tls=(ca, client.cert, client.key), env=env)


def etcdctl_as(server: Server, pair: Pair | None, *args: str) -> subprocess.CompletedProcess:
    flags = [f"--cacert={server.client_tls[0]}"]
    if pair is not None:
        flags += [f"--cert={pair.cert}", f"--key={pair.key}"]
    timeouts = ["--dial-timeout=3s", "--command-timeout=5s"]
    return run_etcdctl(server.endpoint, *flags, *timeouts, *args, check=False)


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-m", "10", *args], capture_output=True, text=True, timeout=30)


def test_etcdctl_with_client_certificates_matches_etcd(tmp_path: Path, pki: dict) -> None:
    outputs = {}
    for kind in ("etcd", "cairn"):
        with tls_server(kind, tmp_path, pki).start() as server:
            lines = []
            for args in (("put", "/a", "1"), ("put", "/b", "2"), ("get", "/", "--prefix"), ("del", "/a")):
                result = server.etcdctl(*args)
                lines.append(result.stdout)
            lines.append(server.etcdctl("get", "/", "--prefix", "-w", "json").stdout.count('"key"'))
            outputs[kind] = lines
    assert outputs["cairn"] == outputs["etcd"]
    assert outputs["cairn"][2] == "/a\n1\n/b\n2\n"


@pytest.mark.parametrize("kind", ["etcd", "cairn"])
def test_refused_clients_do_not_stop_the_node(tmp_path: Path, pki: dict, kind: str) -> None:
    """Another CA's certificate, no certificate, plain text: refused; the node keeps serving."""
    with tls_server(kind, tmp_path, pki).start() as server:
        server.etcdctl("put", "k", "v")
        refusals = [
            etcdctl_as(server, pki["stranger"], "get", "k"),  # a certificate from another CA
            etcdctl_as(server, None, "get", "k"),  # none at all, with client-cert-auth on
            run_etcdctl(f"http://{server.endpoint}", "--dial-timeout=3s", "get", "k", check=False),
        ]
        for result in refusals:
            assert result.returncode != 0, result
            assert "v" not in result.stdout.split()
        plain = curl("-X", "POST", f"http://{server.endpoint}/v3/kv/range", "-d", '{"key":"aw=="}')
        assert '"kvs"' not in plain.stdout
        assert server.etcdctl("get", "k", "--print-value-only").stdout == "v\n"
        assert server.running
    if kind == "cairn":
        log = server.log_path.read_text()
        assert log.count("tls_handshake_refused") >= 3, server.log_tail()


def test_curl_against_the_gateway_over_tls(tmp_path: Path, pki: dict) -> None:
    answers = {}
    for kind in ("etcd", "cairn"):
        with tls_server(kind, tmp_path, pki).start() as server:
            root = pki["root"]
            tls = ["--cacert", pki["ca"].ca, "--cert", root.cert, "--key", root.key]
            url = f"https://{server.endpoint}"
            put = curl(*tls, "-X", "POST", f"{url}/v3/kv/put", "-d", '{"key":"Zm9v","value":"YmFy"}')
            got = curl(*tls, "-X", "POST", f"{url}/v3/kv/range", "-d", '{"key":"Zm9v"}')
            assert put.returncode == 0 and got.returncode == 0, (put, got)
            kvs = json.loads(got.stdout)["kvs"]
            answers[kind] = [(kv["key"], kv["value"], kv["version"]) for kv in kvs]
            assert "revision" in json.loads(put.stdout)["header"]
    assert answers["cairn"] == answers["etcd"] == [("Zm9v", "YmFy", "1")]


AUTH_SETUP = [
    ("user", "add", "root", "--new-user-password=rootpw"),
    ("user", "grant-role", "root", "root"),
    ("role", "add", "app"),
    ("role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"),
    ("user", "add", "svc", "--new-user-password=svcpw"),
    ("user", "grant-role", "svc", "app"),
    ("auth", "enable"),
]


def test_certificate_common_name_is_the_user_as_in_etcd(tmp_path: Path, pki: dict) -> None:
    seen = {}
    for kind in ("etcd", "cairn"):
        with tls_server(kind, tmp_path, pki).start() as server:
            for args in AUTH_SETUP:
                server.etcdctl(*args)
            svc = pki["svc"]
            seen[kind] = [
                (r.returncode, r.stdout, r.stderr.strip().splitlines()[-1:])
                for r in (
                    etcdctl_as(server, svc, "put", "/app/x", "1"),  # svc may write /app/
                    etcdctl_as(server, svc, "put", "/other", "1"),  # ... and nothing else
                    etcdctl_as(server, svc, "get", "/app/x", "--print-value-only"),
                    etcdctl_as(server, pki["root"], "put", "/other", "2"),  # the root CN is root
                    etcdctl_as(server, svc, "--user=root:rootpw", "get", "/other", "--print-value-only"),
                )
            ]
    assert seen["cairn"] == seen["etcd"]
    assert seen["cairn"][1][2] == ["Error: etcdserver: permission denied"]
    assert seen["cairn"][4][1] == "2\n"


def test_grpc_on_its_own_port_uses_grpc_tls(tmp_path: Path, pki: dict) -> None:
    """Without the REST plugin gRPC owns the port: its own TLS, and the CN still names the user."""
    plugins = json.dumps({"grpc": {}, "cert-cn": {}})
    server = tls_server("cairn", tmp_path, pki, env={"ETCD_PLUGINS": plugins})
    with server.start():
        for args in AUTH_SETUP:
            server.etcdctl(*args)
        assert etcdctl_as(server, pki["svc"], "put", "/app/y", "1").returncode == 0
        denied = etcdctl_as(server, pki["svc"], "put", "/y", "1")
        assert "permission denied" in denied.stderr
        assert etcdctl_as(server, pki["stranger"], "get", "/app/y").returncode != 0
        ca, cert, key = (Path(p).read_bytes() for p in (pki["ca"].ca, pki["svc"].cert, pki["svc"].key))
        with grpc.secure_channel(server.endpoint, grpc.ssl_channel_credentials(ca, key, cert)) as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
        assert server.etcdctl("get", "/app/y", "--print-value-only").stdout == "1\n"


def test_auto_tls_makes_a_self_signed_certificate_in_the_data_dir(tmp_path: Path) -> None:
    server = Server("cairn", tmp_path / "auto", extra_args=["--auto-tls"])
    server.client_tls = ("", "", "")  # https URLs; the client below skips verification as etcd's docs say
    server.start(wait=False)
    try:
        result = None
        for _ in range(100):
            result = run_etcdctl(server.endpoint, "--insecure-transport=false", "--insecure-skip-tls-verify",
                                 "--dial-timeout=2s", "put", "k", "v", check=False)  # fmt: skip
            if result.returncode == 0:
                break
        assert result is not None and result.returncode == 0, (result, server.log_tail())
        assert (server.data_dir / "fixtures" / "client" / "cert.pem").exists()
        assert run_etcdctl(server.endpoint, "get", "k", check=False).returncode != 0  # plain text refused
    finally:
        server.stop()


def test_tls_settings_are_etcds_keys(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"TLS key/cert \(--cert-file, --key-file\) must be provided for client url "
        r"https://127.0.0.1:2379 with HTTPS scheme",
    ):
        parse_args(["--listen-client-urls", "https://127.0.0.1:2379"], environ={})
    config = parse_args(
        ["--auto-tls", "--client-cert-auth=false", "--listen-client-urls", "https://127.0.0.1:2379"],
        environ={},
    )
    assert config.auto_tls and not config.client_cert_auth
    with pytest.raises(ConfigError, match="client-cert-auth: 'maybe' is not true or false"):
        parse_args(["--client-cert-auth=maybe"], environ={})
    path = tmp_path / "etcd.yaml"
    path.write_text(
        "listen-client-urls: https://127.0.0.1:2379\n"
        "client-transport-security:\n  cert-file: /c.pem\n  key-file: /k.pem\n"
        "  trusted-ca-file: /ca.pem\n  client-cert-auth: true\n"
    )
    config = load_file(str(path))  # etcd's config file nests the client TLS keys
    assert (config.cert_file, config.key_file, config.trusted_ca_file, config.client_cert_auth) == (
        "/c.pem",
        "/k.pem",
        "/ca.pem",
        True,
    )


def test_the_gateways_certificate_user_is_the_rest_clients_cn(tmp_path: Path, pki: dict) -> None:
    """cairn only: etcd's gateway reaches gRPC with the server's own certificate (see security.md)."""
    with tls_server("cairn", tmp_path, pki).start() as server:
        for args in AUTH_SETUP:
            server.etcdctl(*args)
        svc = pki["svc"]
        tls = ["--cacert", pki["ca"].ca, "--cert", svc.cert, "--key", svc.key]
        url = f"https://{server.endpoint}/v3/kv/put"
        allowed = curl(*tls, "-X", "POST", url, "-d", '{"key":"L2FwcC94","value":"MQ=="}')  # /app/x
        denied = curl(*tls, "-X", "POST", url, "-d", '{"key":"L290aGVy","value":"MQ=="}')  # /other
        assert "revision" in json.loads(allowed.stdout)["header"], allowed
        assert json.loads(denied.stdout)["message"] == "etcdserver: permission denied", denied
        forged = curl(*tls, "-H", "Authorization: \x01root", "-X", "POST", url, "-d", '{"key":"L290aGVy"}')
        assert "kvs" not in forged.stdout and "header" not in json.loads(forged.stdout)
