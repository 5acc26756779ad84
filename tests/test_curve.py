"""CURVE peer links (issue 9 item 5): a cluster whose members know each other's public keys
serves; a member started with a wrong key, or without CURVE, cannot join or disturb it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from servers import Cluster, Server

from actors.proto import rpc_pb2
from node.config import ConfigError, parse_args


def public_key(data_dir: Path) -> str:
    """The documented bootstrap: make the member's key pair before its first start."""
    out = subprocess.run(
        [sys.executable, "-m", "actors.raft.curve", str(data_dir)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def status(server: Server) -> rpc_pb2.StatusResponse | None:
    with grpc.insecure_channel(server.endpoint) as channel:
        try:
            return rpc_pb2.StatusResponse.FromString(
                channel.unary_unary("/etcdserverpb.Maintenance/Status")(b"", timeout=2.0)
            )
        except grpc.RpcError:
            return None


def curve_cluster(base: Path) -> tuple[Cluster, dict[str, str], str]:
    """Three members (not started) that know each other's keys: (cluster, name -> key, the list)."""
    cluster = Cluster("cairn", 3, base)
    keys = {m.name: public_key(m.data_dir) for m in cluster.members}
    listed = ",".join(f"{name}={key}" for name, key in keys.items())
    for m in cluster.members:
        m.extra_args += ["--peer-curve-public-keys", listed]
    return cluster, keys, listed


def impostor_of(victim: Server, base: Path, extra: list[str]) -> Server:
    """A process claiming the victim's name and peer address, with its own (fresh) data dir."""
    token = ["--initial-cluster-token", "test-cluster"]
    impostor = Server("cairn", base, name=victim.name, extra_args=[*token, *extra])
    impostor.peer_port = victim.peer_port
    impostor.initial_cluster = victim.initial_cluster
    return impostor


@pytest.mark.timeout(180)
def test_curve_members_serve_and_impostors_cannot_join_or_disturb(tmp_path: Path) -> None:
    cluster, keys, listed = curve_cluster(tmp_path)
    with cluster:
        n1, n2, n3 = cluster.members
        n1.etcdctl("put", "k", "v0")
        assert n3.etcdctl("get", "k", "--print-value-only").stdout == "v0\n"  # replicated over CURVE
        n3.stop()
        leader = cluster.leader(among=[n1, n2])
        term = status(leader).raftTerm
        wrong_dir = tmp_path / "wrong" / "n3.data"
        wrong_keys = listed.replace(keys["n3"], public_key(wrong_dir))  # it believes its own key
        impostors = {
            "wrong key": impostor_of(n3, tmp_path / "wrong", ["--peer-curve-public-keys", wrong_keys]),
            "no key": impostor_of(n3, tmp_path / "plain", []),
        }
        for variant, impostor in impostors.items():
            impostor.start(wait=False)
            try:
                deadline = time.monotonic() + 5.0  # five election timeouts of campaigning
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    assert n1.etcdctl("put", "k", f"{variant}-{i}").stdout == "OK\n"
                    time.sleep(0.2)
                assert impostor.running, impostor.log_tail()
                mine = status(impostor)
                assert mine is None or mine.leader == 0, (variant, mine)  # it never found a leader
                got = impostor.etcdctl("get", "k", "--command-timeout=2s", check=False)
                assert got.returncode != 0, (variant, got.stdout)
                now = status(leader)
                assert now.leader == status(n2).leader == leader_id(leader)
                assert now.raftTerm == term, f"{variant}: the impostor disturbed the leader's term"
            finally:
                impostor.stop()
        assert "peer_refused" in n1.log_path.read_text() + n2.log_path.read_text()
        n3.start()  # the real member, with its own key, catches up
        assert n3.etcdctl("get", "k", "--print-value-only").stdout.startswith("no key-")


def leader_id(server: Server) -> int:
    answer = status(server)
    assert answer is not None
    return answer.header.member_id


def test_curve_keys_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not name=<40-character Z85 key>"):
        parse_args(["--peer-curve-public-keys", "n1=short"], environ={})
    data = tmp_path / "n1.data"
    key = public_key(data)
    assert public_key(data) == key and len(key) == 40  # made once, then kept
    other = public_key(tmp_path / "other")
    server = Server("cairn", tmp_path, name="n1", extra_args=["--peer-curve-public-keys", f"n1={other}"])
    with pytest.raises(Exception, match="but its key in"):
        server.start()
