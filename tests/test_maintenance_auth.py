"""Maintenance under auth, side by side with a real etcd 3.4: Defragment, Hash and HashKV are root
only (etcd's authMaintenanceServer answers "auth: ..." with gRPC code Unknown, HTTP 500 through the
gateway), Alarm needs no permission. Same commands, same answers, through etcdctl, gRPC and REST."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
from servers import Server, assert_same_on_etcd_and_cairn

from actors.proto import rpc_pb2 as R

USERS = {"none": (), "bob": ("--user", "bob:bobpw"), "root": ("--user", "root:rootpw")}


def _post(server: Server, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    header = ["-H", f"Authorization: {token}"] if token is not None else []
    result = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-w", "\n%{http_code}", *header, "-d", json.dumps(body),
         server.client_url + path],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    text, status = result.stdout.rsplit("\n", 1)
    return int(status), json.loads(text)


def _grpc_hash(server: Server, token: str) -> tuple[str, str]:
    with grpc.insecure_channel(server.endpoint) as channel:
        call = channel.unary_unary(
            "/etcdserverpb.Maintenance/Hash",
            request_serializer=R.HashRequest.SerializeToString,
            response_deserializer=R.HashResponse.FromString,
        )
        try:
            call(R.HashRequest(), metadata=[("token", token)], timeout=30)
        except grpc.RpcError as e:
            return e.code().name, e.details()
    return "OK", ""


def _maintenance_under_auth(server: Server) -> list[object]:
    setup = (
        ("user", "add", "root:rootpw"), ("role", "add", "root"), ("user", "grant-role", "root", "root"),
        ("user", "add", "bob:bobpw"), ("role", "add", "reader"), ("user", "grant-role", "bob", "reader"),
        ("put", "k", "v"), ("auth", "enable"),
    )  # fmt: skip
    for args in setup:
        server.etcdctl(*args)
    seen: list[object] = []
    for name, who in USERS.items():
        for command in (("defrag",), ("endpoint", "hashkv"), ("alarm", "list")):
            result = server.etcdctl(*who, *command, check=False)
            lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
            last = lines[-1].replace(server.endpoint, "ENDPOINT") if lines else ""
            seen.append((name, command, result.returncode, last))
    tokens = {"none": None, "garbage": "garbage"}
    for name, password in (("bob", "bobpw"), ("root", "rootpw")):
        status, answer = _post(server, "/v3/auth/authenticate", {"name": name, "password": password})
        assert status == 200, answer
        tokens[name] = answer["token"]
    for name, token in tokens.items():
        for path in ("/v3/maintenance/defragment", "/v3/maintenance/hash", "/v3/maintenance/alarm"):
            status, answer = _post(server, path, {}, token)
            answer.pop("header", None)  # ids differ between the two servers
            answer.pop("hash", None)  # Hash hashes each server's own storage format
            seen.append((name, path, status, answer))
    seen.append(_grpc_hash(server, "garbage"))
    return seen


def test_defragment_hash_hashkv_need_root_alarm_does_not(tmp_path: Path) -> None:
    assert_same_on_etcd_and_cairn(tmp_path, _maintenance_under_auth)
