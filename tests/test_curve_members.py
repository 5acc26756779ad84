"""CURVE keys of members added at runtime (issue 9 item 5): ``cairnctl member add
--curve-public-key`` puts the key in the replicated member table, so every member admits the new
one from that entry on; a node with a key that was not added cannot join; after ``member remove``
the key is refused again."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from servers import Server, free_port
from test_cluster_membership import wait_for
from test_curve import curve_cluster, public_key, status

from actors.curve import read_secret, secure_client
from actors.raft.transport import JOIN_MAGIC


def cairnctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    """cairnctl's result, retried while the strict reconfig check refuses a membership change
    because the peers have been connected for less than 5 s ("unhealthy cluster"), as etcd does."""
    command = [sys.executable, "-m", "tools.cairnctl", "--endpoint", endpoint, *args]
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if "etcdserver: unhealthy cluster" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def joiner(base: Path, settings: dict[str, str]) -> Server:
    """A node started with the ETCD_* settings ``cairnctl member add`` printed."""
    node = Server(
        "cairn", base, name=settings["ETCD_NAME"], extra_args=["--initial-cluster-token", "test-cluster"]
    )
    node.peer_port = int(settings["ETCD_INITIAL_ADVERTISE_PEER_URLS"].rsplit(":", 1)[1])
    node.initial_cluster = settings["ETCD_INITIAL_CLUSTER"]
    node.env = {
        k: v
        for k, v in settings.items()
        if k in ("ETCD_INITIAL_CLUSTER_STATE", "ETCD_PEER_CURVE_PUBLIC_KEYS")
    }
    return node


def asks_to_join(member: Server, data_dir: Path) -> bool:
    """Whether ``member``'s peer port answers a join request made with the CURVE pair in ``data_dir``."""
    server_key = public_key(member.data_dir).encode()
    public, secret = read_secret(str(data_dir / "curve" / "peer.secret"))
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        secure_client(sock, server_key, public, secret)
        sock.connect(f"tcp://127.0.0.1:{member.peer_port}")
        sock.send(JOIN_MAGIC)
        if not sock.poll(3000):
            return False
        return sock.recv().startswith(JOIN_MAGIC)


def refused(members: list[Server], key: str) -> bool:
    """Whether a member logged ``peer_refused`` for this key."""
    lines = (line for m in members for line in m.log_path.read_text().splitlines())
    return any("peer_refused" in line and key in line for line in lines)


@pytest.mark.timeout(240)
def test_member_added_with_its_curve_key_joins_and_is_refused_after_remove(tmp_path: Path) -> None:
    cluster, _, listed = curve_cluster(tmp_path)
    with cluster:
        n1, n2, n3 = cluster.members
        n1.etcdctl("put", "before", "v0")
        new_dir = tmp_path / "n4" / "n4.data"
        key = public_key(new_dir)
        peer = f"http://127.0.0.1:{free_port()}"
        bad = cairnctl(n2.endpoint, "member", "add", "n4", "--peer-urls", peer, "--curve-public-key", "short")
        assert bad.returncode == 2 and "is not a 40-character Z85 CURVE key" in bad.stderr, bad.stderr
        added = cairnctl(n2.endpoint, "member", "add", "n4", "--peer-urls", peer, "--curve-public-key", key)
        assert added.returncode == 0, added.stderr
        settings = dict(re.findall(r"""^(ETCD_\w+)=["'](.*)["']$""", added.stdout, re.M))
        printed = set(settings["ETCD_PEER_CURVE_PUBLIC_KEYS"].split(","))
        assert printed == {*listed.split(","), f"n4={key}"}, added.stdout
        new_id = re.search(r"Member (\w+) added", added.stdout).group(1)
        listing = cairnctl(n3.endpoint, "member", "list").stdout
        assert f"{new_id}, unstarted, , {peer}, , false, {key}" in listing, listing

        # a node at the new member's address with a key nobody added cannot join or disturb
        leader = cluster.leader()
        term = status(leader).raftTerm
        impostor = joiner(tmp_path / "impostor", settings)
        wrong = public_key(impostor.data_dir)
        impostor.start(wait=False)
        try:
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline:
                assert n1.etcdctl("put", "k", "during-impostor").stdout == "OK\n"
                time.sleep(0.3)
            assert not (impostor.data_dir / "member" / "identity.json").exists(), impostor.log_tail()
            assert status(impostor) is None
            assert status(leader).raftTerm == term
        finally:
            impostor.stop()
        assert refused(cluster.members, wrong), "the impostor's key was not logged as refused"

        # the member it was added for joins with its own key and replicates
        node = joiner(tmp_path / "n4", settings)
        node.start(wait=False)
        try:
            wait_for(
                lambda: (
                    node.etcdctl("get", "before", "--consistency=s", "--print-value-only", check=False).stdout
                    == "v0\n"
                ),
                60,
                "the added member catching up over CURVE",
            )
            node.etcdctl("put", "from-n4", "v4")
            assert n3.etcdctl("get", "from-n4", "--print-value-only").stdout == "v4\n"
            assert asks_to_join(n1, new_dir)  # admitted by the ZAP handler

            removed = cairnctl(n1.endpoint, "member", "remove", new_id)
            assert removed.returncode == 0, removed.stderr
            wait_for(lambda: not node.running, 30, "the removed member shutting itself down")
            assert not asks_to_join(n1, new_dir)  # its key is refused again
            assert not asks_to_join(n2, new_dir)
            assert n1.etcdctl("put", "after", "remove").stdout == "OK\n"
            assert key not in cairnctl(n1.endpoint, "member", "list").stdout
        finally:
            node.stop()
        assert refused([n1, n2], key)
