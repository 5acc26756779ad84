"""Auth backends as plugins (issue 9 item 6): the chain's rules, the htpasswd file backend, and a
third party's backend installed as a package (docs/examples/webhook_backend.py)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import pytest
from servers import Server

from actors.auth.backends import CERTIFICATE_PREFIX, BackendChain, request_token
from node.config import ConfigError
from plugins.certcn.plugin import CertificateBackend
from plugins.htpasswd.backend import HtpasswdBackend, parse

REPO = Path(__file__).resolve().parent.parent
DENIED = "Error: etcdserver: permission denied"
FAILED = "Error: etcdserver: authentication failed, invalid user ID or password"
NO_PASSWORD = "auth: authentication failed, password was given for no password user"


class Fixed:
    def __init__(self, name: str, answers: dict[str, bool], users: dict[str, str] | None = None) -> None:
        self.name, self.answers, self.users, self.calls = name, answers, users or {}, 0

    def verify_password(self, name: str, password: bytes) -> bool | None:
        self.calls += 1
        if name == "boom":
            raise OSError("directory unreachable")
        return self.answers.get(name)

    def certificate_user(self, common_name: str) -> str | None:
        return self.users.get(common_name)


def test_the_first_backend_that_knows_the_user_decides() -> None:
    first, second = Fixed("a", {"alice": False}), Fixed("b", {"alice": True, "bob": True}, {"cn": "carol"})
    chain = BackendChain([first, second])
    assert chain.verify_password("alice", b"pw") == (False, "a")  # refused by "a": "b" is not asked
    assert second.calls == 0
    assert chain.verify_password("bob", b"pw") == (True, "b")
    assert chain.verify_password("nobody", b"pw") == (None, "")
    assert chain.verify_password("boom", b"pw") == (False, "a")  # an outage refuses, it does not raise
    assert chain.certificate_user("cn") == "carol" and chain.certificate_user("x") is None
    assert not BackendChain() and chain


def test_a_client_cannot_forge_a_certificate_identity() -> None:
    assert request_token(None, "svc") == CERTIFICATE_PREFIX + "svc"
    assert request_token("tok", "svc") == "tok"  # a token wins over the certificate, as in etcd
    assert not request_token(CERTIFICATE_PREFIX + "root", None).startswith("\x00")
    assert request_token(None, None) is None
    assert CertificateBackend().certificate_user("svc") == "svc"
    assert CertificateBackend({"svc.example.com": "svc"}).certificate_user("other") is None


def test_htpasswd_file_parsing_and_reload(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    with pytest.raises(ConfigError, match=r"f:2: user 'bob' has no bcrypt hash \(htpasswd -B\)"):
        parse(f"alice:{hashed}\nbob:$apr1$xyz$abc\n", "f")
    with pytest.raises(ConfigError, match="f:1 is not name:hash"):
        parse("just-a-name\n", "f")
    assert parse(f"# comment\n\nalice:{hashed}\n", "f") == {"alice": hashed.encode()}
    path = tmp_path / "users"
    path.write_text(f"alice:{hashed}\n")
    backend = HtpasswdBackend(str(path))
    assert backend.verify_password("alice", b"pw") is True
    assert backend.verify_password("alice", b"nope") is False
    assert backend.verify_password("bob", b"pw") is None
    new = bcrypt.hashpw(b"pw2", bcrypt.gensalt(4)).decode()
    path.write_text(f"alice:{new}\nbob:{new}\n")
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    assert backend.verify_password("bob", b"pw2") is True
    path.write_text("broken\n")
    os.utime(path, (2, 2))
    assert backend.verify_password("bob", b"pw2") is True  # a broken edit keeps the last good table
    with pytest.raises(ConfigError, match="No such file"):
        HtpasswdBackend(str(tmp_path / "missing"))


SETUP = [
    ("user", "add", "root", "--new-user-password=rootpw"),
    ("user", "grant-role", "root", "root"),
    ("role", "add", "app"),
    ("role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"),
    ("user", "add", "alice", "--no-password"),  # her password lives in the backend
    ("user", "grant-role", "alice", "app"),
    ("user", "add", "eve", "--no-password"),
    ("auth", "enable"),
]


def _last_line(result: object) -> str:
    text = (result.stdout + result.stderr).strip().splitlines()  # type: ignore[attr-defined]
    return text[-1] if text else ""


def test_htpasswd_backend_logs_in_no_password_users(tmp_path: Path) -> None:
    path = tmp_path / "users.htpasswd"
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p, bcrypt.gensalt(4)).decode()}\n" for u, p in
                            (("alice", b"wonderland"), ("mallory", b"x"))))  # fmt: skip
    plugins = {"grpc": {}, "rest": {}, "htpasswd": {"file": str(path)}}
    with Server("cairn", tmp_path / "n", env={"ETCD_PLUGINS": json.dumps(plugins)}).start() as server:
        for args in SETUP:
            server.etcdctl(*args)
        assert server.etcdctl("--user=alice:wonderland", "put", "/app/x", "1").stdout == "OK\n"
        assert _last_line(server.etcdctl("--user=alice:wonderland", "put", "/x", "1", check=False)) == DENIED
        assert _last_line(server.etcdctl("--user=alice:wrong", "get", "/app/x", check=False)) == FAILED
        # in the file but not a user of the store: no roles to act with, so no token
        assert _last_line(server.etcdctl("--user=mallory:x", "get", "/app/x", check=False)) == FAILED
        # a no-password user the file does not list: etcd's answer for no-password users
        eve = server.etcdctl("--user=eve:anything", "get", "/app/x", check=False)
        assert _last_line(eve) == f"Error: rpc error: code = Unknown desc = {NO_PASSWORD}"
        # store passwords still work as before
        assert server.etcdctl("--user=root:rootpw", "get", "/app/x", "--print-value-only").stdout == "1\n"


class Checker(BaseHTTPRequestHandler):
    users = {"alice": "from-the-webhook"}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        known = self.users.get(body["user"])
        self.send_response(404 if known is None else 200 if known == body["password"] else 401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_third_party_backend_installed_as_a_package(tmp_path: Path) -> None:
    """docs/examples/webhook_backend.py, installed the way pip would (a module and a dist-info
    with a ``cairn`` entry point on the node's path), enabled by the config, logs users in."""
    site = tmp_path / "site"
    dist = site / "webhook_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    shutil.copy(REPO / "docs" / "examples" / "webhook_backend.py", site / "webhook_backend.py")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: webhook-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cairn]\nwebhook = webhook_backend\n")
    service = ThreadingHTTPServer(("127.0.0.1", 0), Checker)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{service.server_address[1]}/check"
        plugins = {"grpc": {}, "rest": {}, "webhook": {"url": url}}
        env = {"ETCD_PLUGINS": json.dumps(plugins), "PYTHONPATH": str(site)}
        with Server("cairn", tmp_path / "n", env=env).start() as server:
            for args in SETUP:
                server.etcdctl(*args)
            login = "--user=alice:from-the-webhook"
            assert server.etcdctl(login, "put", "/app/x", "1").stdout == "OK\n"
            assert _last_line(server.etcdctl("--user=alice:guess", "get", "/app/x", check=False)) == FAILED
            assert "authenticated_by_backend" in server.log_path.read_text()
    finally:
        service.shutdown()


def test_a_native_zeromq_client_cannot_forge_a_certificate_identity(tmp_path: Path) -> None:
    """The ZeroMQ protocol carries any token bytes a client likes: one shaped like a frontend's
    certificate identity must not make the client root."""
    from servers import free_port

    from actors.errors import EtcdError
    from node.client import Client

    url = f"tcp://127.0.0.1:{free_port()}"
    plugins = {"grpc": {}, "rest": {}, "cert-cn": {}, "zmq": {"listen": url}}
    with Server("cairn", tmp_path / "n", env={"ETCD_PLUGINS": json.dumps(plugins)}).start() as server:
        for args in SETUP:
            server.etcdctl(*args)
        for forged in (CERTIFICATE_PREFIX + "root", "cn:root"):
            client = Client(url, token=forged)
            try:
                with pytest.raises(EtcdError, match="invalid auth token"):
                    client.put(b"/x", b"1")
            finally:
                client.close()
        assert server.etcdctl("--user=root:rootpw", "get", "/x").stdout == ""
