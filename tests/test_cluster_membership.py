"""Membership and leadership on real three-member clusters, driven with etcdctl.

The same scripted `etcdctl member ...` / `move-leader` session runs against a real etcd cluster and
a cairn cluster and must print the same (member ids, cluster ids and ports normalized to names);
then a cairn cluster goes 3 -> add a learner -> start it -> promote -> remove a member -> 3.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import grpc
import pytest
from servers import Cluster, Server, free_port, run_etcdctl

from actors.proto import rpc_pb2 as R

pytestmark = pytest.mark.timeout(240)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.2)


def members(endpoints: str) -> list[dict]:
    return json.loads(run_etcdctl(endpoints, "member", "list", "-w", "json").stdout)["members"]


def etcdctl(endpoints: str, *args: str) -> str:
    """stdout, or the `Error:` line etcdctl prints (its retry warnings carry timestamps)."""
    result = run_etcdctl(endpoints, *args, check=False)
    if result.returncode == 0:
        return result.stdout
    return "".join(line + "\n" for line in result.stderr.splitlines() if line.startswith("Error:"))


def until_healthy(endpoint: str, *args: str) -> str:
    """A membership change, retried while etcd's strict reconfig check refuses it because peers
    have been connected for less than 5 s ("unhealthy cluster"); stdout."""
    deadline = time.monotonic() + 30
    while True:
        result = run_etcdctl(endpoint, *args, check=False)
        if "etcdserver: unhealthy cluster" not in result.stderr or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return result.stdout
        time.sleep(0.5)


class Names:
    """Replaces ids, cluster id and URLs in etcdctl output by stable names, so runs compare."""

    def __init__(self) -> None:
        self.subs: dict[str, str] = {}

    def add(self, text: str, name: str) -> None:
        self.subs[text] = name

    def add_member(self, member_id: int, name: str) -> None:
        self.add(f"{member_id:16x}", f"<id:{name}>")
        self.add(f"{member_id:x}", f"<id:{name}>")

    def __call__(self, text: str) -> str:
        for old in sorted(self.subs, key=len, reverse=True):
            text = text.replace(old, self.subs[old])
        return text


def script(cluster: Cluster, base: Path) -> list[str]:
    """One etcdctl session against ``cluster``; every output normalized."""
    eps = cluster.endpoints
    wait_for(lambda: all(m.get("clientURLs") for m in members(eps)), 10, "every member publishing its URLs")
    names = Names()
    for m in members(eps):
        names.add_member(int(m["ID"]), m["name"])
    for m in cluster.members:
        names.add(m.peer_url, f"<peer:{m.name}>")
        names.add(m.client_url, f"<client:{m.name}>")
    status = json.loads(run_etcdctl(eps, "endpoint", "status", "-w", "json").stdout)
    names.add(f"{status[0]['Status']['header']['cluster_id']:16x}", "<cluster>")
    names.add(f"{status[0]['Status']['header']['cluster_id']:x}", "<cluster>")
    new_peer = f"http://127.0.0.1:{free_port()}"
    names.add(new_peer, "<peer:n4>")
    out = []

    # etcd refuses changes until its peers have been connected for 5 s ("unhealthy cluster")
    added = wait_for(
        lambda: (
            run_etcdctl(
                eps, "member", "add", "n4", f"--peer-urls={new_peer}", "--learner", check=False
            ).stdout
        ),
        30,
        "a member add",
    )
    new_id = int(re.search(r"Member\s+(\w+) added", added).group(1), 16)
    names.add_member(new_id, "n4")
    # members are listed in id order, and ids differ between the runs: sort by name
    out.append(
        re.sub(
            r'ETCD_INITIAL_CLUSTER="(.*)"',
            lambda m: 'ETCD_INITIAL_CLUSTER="' + ",".join(sorted(m.group(1).split(","))) + '"',
            names(added),
        )
    )
    out.append("".join(sorted(names(etcdctl(eps, "member", "list")).splitlines(True))))
    out.append(names(etcdctl(eps, "member", "promote", f"{new_id:x}")))  # not started: not in sync
    out.append(names(etcdctl(eps, "member", "add", "n5", f"--peer-urls={cluster.members[0].peer_url}")))
    out.append(names(etcdctl(eps, "member", "add", "n5", "--peer-urls=http://127.0.0.1:1", "--learner")))
    out.append(names(etcdctl(eps, "member", "add", "n5", "--peer-urls=foo")))
    out.append(names(etcdctl(eps, "member", "add", "n5", "--peer-urls=http://127.0.0.1")))
    voter = next(m for m in cluster.members)
    voter_id = next(int(m["ID"]) for m in members(eps) if m.get("name") == voter.name)
    out.append(names(etcdctl(eps, "member", "promote", f"{voter_id:x}")))  # not a learner
    out.append(names(etcdctl(eps, "member", "update", "1234", "--peer-urls=http://127.0.0.1:2")))
    out.append(names(etcdctl(eps, "member", "remove", f"{new_id:x}")))
    out.append(names(etcdctl(eps, "member", "remove", f"{new_id:x}")))  # removed already
    out.append(names(etcdctl(eps, "member", "remove", "1234")))
    out.append("".join(sorted(names(etcdctl(eps, "member", "list")).splitlines(True))))

    leader = cluster.leader()
    target = next(m for m in cluster.members if m is not leader)
    target_id = next(int(m["ID"]) for m in members(eps) if m.get("name") == target.name)
    leader_id = next(int(m["ID"]) for m in members(eps) if m.get("name") == leader.name)
    moved = etcdctl(eps, "move-leader", f"{target_id:x}")
    out.append(moved.replace(f"{leader_id:x}", "<old>").replace(f"{target_id:x}", "<new>"))
    assert cluster.leader(timeout=10) is target
    out.append(names(etcdctl(eps, "move-leader", "1234")))
    back = etcdctl(target.endpoint, "move-leader", f"{leader_id:x}")  # the new leader moves it back
    out.append(back.replace(f"{leader_id:x}", "<old>").replace(f"{target_id:x}", "<new>"))
    return out


def test_membership_session_matches_etcd(tmp_path: Path) -> None:
    outputs = {}
    for kind in ("etcd", "cairn"):
        with Cluster(kind, 3, tmp_path / kind) as cluster:
            outputs[kind] = script(cluster, tmp_path / kind)
    for etcd_out, cairn_out in zip(outputs["etcd"], outputs["cairn"], strict=True):
        assert cairn_out == etcd_out
    print("\n".join(outputs["cairn"]))


def start_added_member(cluster: Cluster, base: Path, added: str, via: Server) -> Server:
    """Start the member `etcdctl member add` announced, with the ETCD_* values it printed."""
    env = dict(re.findall(r'^(ETCD_\w+)="(.*)"$', added, re.M))
    node = Server(
        "cairn", base / "n4", name=env["ETCD_NAME"], extra_args=["--initial-cluster-token", "test-cluster"]
    )
    node.peer_port = int(env["ETCD_INITIAL_ADVERTISE_PEER_URLS"].rsplit(":", 1)[1])
    node.initial_cluster = env["ETCD_INITIAL_CLUSTER"]
    node.env = {"ETCD_INITIAL_CLUSTER_STATE": env["ETCD_INITIAL_CLUSTER_STATE"]}
    node.start(wait=False)  # a learner refuses the linearizable read start() waits for, as etcd's do
    wait_for(
        lambda: node.etcdctl("get", "x", "--consistency=s", check=False).returncode == 0,
        30,
        "the learner serving",
    )
    return node


LEARNER_REFUSAL = "etcdserver: rpc not supported for learner"  # etcd's ErrGPRCNotSupportedForLearner


def assert_learner_refuses(node: Server) -> None:
    """etcd 3.4's learner serves only Status and serializable ranges: every other unary RPC and
    every stream (Watch, LeaseKeepAlive, Snapshot) fails with Unavailable and etcd's text."""
    for args in (
        ("get", "k49"),  # linearizable
        ("member", "list"),
        ("lease", "grant", "10"),
        ("defrag",),
        ("endpoint", "hashkv"),
        ("user", "add", "u:p"),
    ):
        result = node.etcdctl(*args, check=False)
        assert result.returncode != 0 and LEARNER_REFUSAL in result.stdout + result.stderr, (args, result)
    watch = R.WatchRequest(create_request=R.WatchCreateRequest(key=b"k"))
    streams = (
        ("/etcdserverpb.Watch/Watch", watch),
        ("/etcdserverpb.Lease/LeaseKeepAlive", R.LeaseKeepAliveRequest(ID=1)),
    )
    with grpc.insecure_channel(node.endpoint) as channel:
        for path, request in streams:
            call = channel.stream_stream(path)
            with pytest.raises(grpc.RpcError) as refused:
                next(call(iter([request.SerializeToString()]), timeout=10))
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                LEARNER_REFUSAL,
            )
        snapshot = channel.unary_stream("/etcdserverpb.Maintenance/Snapshot")
        with pytest.raises(grpc.RpcError) as refused:
            next(snapshot(b"", timeout=10))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            LEARNER_REFUSAL,
        )


def test_add_learner_promote_remove(tmp_path: Path) -> None:
    with Cluster("cairn", 3, tmp_path) as cluster:
        leader = cluster.leader()
        follower = next(m for m in cluster.members if m is not leader)
        for i in range(50):
            run_etcdctl(cluster.endpoints, "put", f"k{i}", f"v{i}")
        peer = f"http://127.0.0.1:{free_port()}"
        added = until_healthy(follower.endpoint, "member", "add", "n4", f"--peer-urls={peer}", "--learner")
        new_id = int(re.search(r"Member\s+(\w+) added", added).group(1), 16)
        node = start_added_member(cluster, tmp_path, added, follower)
        try:
            # a learner gets the log: it serves what was written before it joined, serializably;
            # anything else it refuses, as etcd's learners do
            wait_for(
                lambda: node.etcdctl("get", "k49", "--consistency=s", "--print-value-only").stdout == "v49\n",
                30,
                "the learner catching up",
            )
            refused = node.etcdctl("put", "k", "v", check=False)
            assert "etcdserver: rpc not supported for learner" in refused.stderr
            assert_learner_refuses(node)
            assert node.etcdctl("endpoint", "status", "-w", "json").returncode == 0
            wait_for(
                lambda: (
                    run_etcdctl(follower.endpoint, "member", "promote", f"{new_id:x}", check=False).returncode
                    == 0
                ),
                30,
                "promoting the learner (through a follower)",
            )
            listing = wait_for(
                lambda: (
                    {m["name"]: m for m in members(cluster.endpoints) if m.get("clientURLs")} or None
                    if all(m.get("clientURLs") for m in members(cluster.endpoints))
                    else None
                ),
                10,
                "the new member publishing its name and client URLs",
            )
            assert sorted(listing) == ["n1", "n2", "n3", "n4"]
            assert not any(m.get("isLearner") for m in listing.values())
            assert listing["n4"]["clientURLs"] == [node.client_url]

            # remove the leader itself: it steps down, the others elect a leader, it shuts down
            leader_id = int(listing[leader.name]["ID"])
            until_healthy(follower.endpoint, "member", "remove", f"{leader_id:x}")
            wait_for(lambda: not leader.running, 30, "the removed member shutting itself down")
            rest = [m for m in cluster.members if m is not leader] + [node]
            endpoints = ",".join(m.endpoint for m in rest)
            assert sorted(m["name"] for m in members(endpoints)) == sorted(m.name for m in rest)
            wait_for(
                lambda: run_etcdctl(endpoints, "put", "after", "remove", check=False).returncode == 0,
                20,
                "a write",
            )
            for m in rest:
                wait_for(
                    lambda m=m: (
                        m.etcdctl("get", "after", "--consistency=s", "--print-value-only").stdout
                        == "remove\n"
                    ),
                    10,
                    f"{m.name} applying the write",
                )
            # a removed member does not come back
            leader.start(wait=False)
            wait_for(lambda: not leader.running, 30, "the removed member refusing to start")
        finally:
            node.stop()


def test_malformed_membership_requests_get_a_clear_error(cairn: Server) -> None:
    with grpc.insecure_channel(cairn.endpoint) as channel:
        for path in (
            "Cluster/MemberAdd",
            "Cluster/MemberRemove",
            "Cluster/MemberUpdate",
            "Cluster/MemberPromote",
            "Maintenance/MoveLeader",
        ):
            with pytest.raises(grpc.RpcError) as e:
                channel.unary_unary(f"/etcdserverpb.{path}")(b"\xff\xff\xff", timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
    assert cairn.etcdctl("put", "still", "serving").stdout == "OK\n"
    assert len(members(cairn.endpoint)) == 1
