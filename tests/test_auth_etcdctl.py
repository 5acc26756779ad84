"""Differential test of auth: the same etcdctl 3.4 session (users, roles, permissions, auth on and
off, permission-denied and bad-credential errors, a revoked role, a changed password, a deleted
user, a refused watch) against a real etcd and against cairn, compared line by line.

Only what differs between two correct servers is normalized: timestamps, the client's random
connection id, the endpoint, header ids and raft term. Revisions are compared as printed.
"""

from __future__ import annotations

import re
from pathlib import Path

from servers import Server

ROOT = ("--user", "root:rootpw")
SVC = ("--user", "svc:pw")
SVC2 = ("--user", "svc:newpw")

# (args, stdin)
SEQUENCE: list[tuple[tuple[str, ...], str | None]] = [
    (("user", "add", "root:rootpw"), None),
    (("auth", "enable"), None),  # root has no root role yet
    (("role", "add", "root"), None),
    (("user", "grant-role", "root", "root"), None),
    (("auth", "enable"), None),
    (("put", "k", "v"), None),  # no user once auth is on
    (("get", "k"), None),
    (("user", "list"), None),
    ((*ROOT, "role", "add", "app"), None),
    ((*ROOT, "role", "add", "app"), None),
    ((*ROOT, "role", "add", ""), None),
    ((*ROOT, "user", "add", "svc:pw"), None),
    ((*ROOT, "user", "add", "svc:pw"), None),
    ((*ROOT, "user", "add", "-w", "json", "nopw", "--no-password"), None),
    ((*ROOT, "role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"), None),
    ((*ROOT, "role", "grant-permission", "app", "read", "/ro"), None),
    ((*ROOT, "role", "grant-permission", "app", "write", "w1", "w5"), None),
    ((*ROOT, "role", "grant-permission", "app", "read", "from/", "--from-key"), None),
    ((*ROOT, "role", "grant-permission", "nope", "read", "x"), None),
    ((*ROOT, "user", "grant-role", "svc", "app"), None),
    ((*ROOT, "user", "grant-role", "svc", "app"), None),
    ((*ROOT, "user", "grant-role", "svc", "nope"), None),
    ((*ROOT, "user", "grant-role", "ghost", "app"), None),
    ((*ROOT, "role", "get", "app"), None),
    ((*ROOT, "role", "get", "-w", "json", "app"), None),
    ((*ROOT, "user", "get", "svc"), None),
    ((*ROOT, "user", "get", "--detail", "svc"), None),
    ((*ROOT, "user", "get", "ghost"), None),
    ((*ROOT, "role", "get", "ghost"), None),
    ((*SVC, "put", "/app/x", "1"), None),
    ((*SVC, "put", "-w", "json", "/app/y", "2"), None),
    ((*SVC, "put", "/other", "1"), None),
    ((*SVC, "get", "/app/x"), None),
    ((*SVC, "get", "--prefix", "/app/"), None),
    ((*SVC, "get", "--prefix", "/"), None),
    ((*SVC, "get", "/ro"), None),
    ((*SVC, "put", "/ro", "v"), None),
    ((*SVC, "put", "w3", "v"), None),
    ((*SVC, "get", "w3"), None),
    ((*SVC, "del", "w1", "w5"), None),
    ((*SVC, "del", "w1", "w6"), None),
    ((*SVC, "get", "from/zzz"), None),
    ((*SVC, "put", "--prev-kv", "/app/x", "3"), None),
    ((*SVC, "txn"), "\nput /app/t 1\n\n"),
    ((*SVC, "txn"), "\nput /other 2\n\n"),
    ((*SVC, "txn"), 'value("/other") = "1"\nput /app/t 2\n\n'),
    ((*SVC, "txn"), 'value("/app/x") = "1"\nput /app/t 3\n\nput /elsewhere 1\n\n'),
    ((*SVC, "watch", "/other"), None),
    ((*SVC, "watch", "--prefix", "/"), None),
    ((*SVC, "compaction", "2"), None),
    (("--user", "svc:bad", "get", "/app/x"), None),
    (("--user", "ghost:bad", "get", "/app/x"), None),
    (("--user", "nopw:x", "get", "/app/x"), None),
    ((*SVC, "user", "get", "svc"), None),
    ((*SVC, "user", "get", "root"), None),
    ((*SVC, "role", "get", "app"), None),
    ((*SVC, "role", "get", "root"), None),
    ((*SVC, "role", "list"), None),
    ((*SVC, "user", "list"), None),
    ((*SVC, "role", "add", "mine"), None),
    ((*SVC, "auth", "disable"), None),
    ((*ROOT, "user", "list"), None),
    ((*ROOT, "role", "list"), None),
    ((*ROOT, "role", "revoke-permission", "app", "/nope"), None),
    ((*ROOT, "role", "revoke-permission", "app", "/ro"), None),
    ((*SVC, "get", "/ro"), None),
    ((*ROOT, "user", "revoke-role", "svc", "nope"), None),
    ((*ROOT, "user", "revoke-role", "ghost", "app"), None),
    ((*ROOT, "user", "delete", "root"), None),
    ((*ROOT, "role", "delete", "root"), None),
    ((*ROOT, "user", "revoke-role", "root", "root"), None),
    ((*ROOT, "user", "passwd", "svc", "--interactive=false"), "newpw\n"),
    ((*SVC, "get", "/app/x"), None),
    ((*SVC2, "get", "/app/x"), None),
    ((*ROOT, "get", "--prefix", ""), None),
    ((*ROOT, "user", "revoke-role", "svc", "app"), None),
    ((*SVC2, "get", "/app/x"), None),
    ((*ROOT, "user", "grant-role", "svc", "app"), None),
    ((*ROOT, "role", "delete", "app"), None),
    ((*ROOT, "role", "delete", "app"), None),
    ((*SVC2, "get", "/app/x"), None),
    ((*ROOT, "user", "get", "svc"), None),
    ((*ROOT, "user", "delete", "svc"), None),
    ((*ROOT, "user", "delete", "svc"), None),
    ((*SVC2, "get", "/app/x"), None),
    ((*ROOT, "auth", "disable"), None),
    ((*ROOT, "auth", "disable"), None),
    (("get", "/app/x"), None),
    (("user", "list"), None),
    (("user", "delete", "root"), None),
    (("auth", "enable"), None),
    (("role", "list"), None),
]

_NOISE = [
    (re.compile(r'"ts":"[^"]*"'), '"ts":"<TS>"'),
    (re.compile(r"client-[0-9a-f-]{36}"), "client-<UUID>"),
    (re.compile(r'("(?:cluster_id|member_id|raft_term)":)\d+'), r"\1<ID>"),
]


def _run(server: Server) -> list[tuple[int, str, str]]:
    transcript = []
    for args, stdin in SEQUENCE:
        result = server.etcdctl(*args, input=stdin, check=False, timeout=20)
        texts = []
        for text in (result.stdout, result.stderr):
            text = text.replace(server.endpoint, "<ENDPOINT>")
            for pattern, replacement in _NOISE:
                text = pattern.sub(replacement, text)
            texts.append(text)
        transcript.append((result.returncode, *texts))
    return transcript


def test_etcdctl_auth_session_matches_etcd(tmp_path: Path) -> None:
    with Server("etcd", tmp_path / "etcd") as etcd:
        expected = _run(etcd)
    with Server("cairn", tmp_path / "cairn") as cairn:
        got = _run(cairn)
    mismatches = [
        f"step {i} {' '.join(SEQUENCE[i][0])}:\n  etcd : {want}\n  cairn: {have}"
        for i, (want, have) in enumerate(zip(expected, got, strict=True))
        if want != have
    ]
    assert not mismatches, "\n".join(mismatches)
