"""Cluster membership under auth, side by side with a real etcd 3.4: MemberAdd/Update/Remove/Promote
are root only (etcd's checkMembershipOperationPermission: "permission denied" for another user,
"user name is empty" without one), MemberList and MoveLeader need no permission."""

from __future__ import annotations

import re
from pathlib import Path

from servers import Server, assert_same_on_etcd_and_cairn

USERS = {"none": (), "bob": ("--user", "bob:bobpw"), "root": ("--user", "root:rootpw")}
HEX_ID = re.compile(r"( ?) *\b[0-9a-f]{12,16}\b")  # etcdctl pads ids to 16 columns with spaces
LEARNER_URL = "http://127.0.0.1:1"  # never started: a learner that never catches up


def _run(server: Server, who: tuple[str, ...], *command: str) -> tuple[int, str]:
    result = server.etcdctl(*who, *command, check=False)
    lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
    text = "\n".join(lines if result.returncode == 0 else lines[-1:]).replace(server.endpoint, "ENDPOINT")
    text = text.replace(server.peer_url, "PEER").replace(server.client_url, "CLIENT")
    # etcdctl lists the members in id order, and ids differ between the two servers
    text = re.sub(
        r'ETCD_INITIAL_CLUSTER="(.*)"',
        lambda m: 'ETCD_INITIAL_CLUSTER="' + ",".join(sorted(m.group(1).split(","))) + '"',
        text,
    )
    return result.returncode, HEX_ID.sub(r"\1ID", text)


def _membership_under_auth(server: Server) -> list[object]:
    setup = (
        ("user", "add", "root:rootpw"), ("role", "add", "root"), ("user", "grant-role", "root", "root"),
        ("user", "add", "bob:bobpw"), ("role", "add", "reader"), ("user", "grant-role", "bob", "reader"),
        ("auth", "enable"),
    )  # fmt: skip
    for args in setup:
        server.etcdctl(*args)
    own_id = server.etcdctl(*USERS["root"], "member", "list").stdout.split(",")[0]
    seen: list[object] = []
    for name in ("none", "bob", "root"):
        who = USERS[name]
        add = ("member", "add", "l1", "--learner", f"--peer-urls={LEARNER_URL}")
        seen.append((name, "add", _run(server, who, *add)))
        listed = server.etcdctl(*USERS["root"], "member", "list").stdout.splitlines()
        learner = next((line.split(",")[0] for line in listed if "true" in line.split(", ")[-1:]), "1234")
        new_url = f"http://127.0.0.1:{2 if name == 'root' else 3}"
        for command in (
            ("member", "update", learner, f"--peer-urls={new_url}"),
            ("member", "promote", learner),
            ("member", "remove", learner),
            ("member", "list"),
            ("move-leader", own_id),
        ):
            seen.append((name, HEX_ID.sub(r"\1ID", " ".join(command)), _run(server, who, *command)))
    return seen


def test_membership_changes_need_root(tmp_path: Path) -> None:
    assert_same_on_etcd_and_cairn(tmp_path, _membership_under_auth)
