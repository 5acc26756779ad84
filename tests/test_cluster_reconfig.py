"""etcd's strict reconfiguration checks on a real 3-member cluster, side by side with a real etcd
3.4 cluster: with one member down, adding a member and removing a live voter are refused with
"etcdserver: unhealthy cluster" (the active quorum would break); removing the member that is down
and ordinary adds/removes still work."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from servers import Cluster, free_port, run_etcdctl
from test_cluster_membership import etcdctl, members, wait_for

pytestmark = pytest.mark.timeout(240)

HEX_ID = re.compile(r" +[0-9a-f]{12,16}\b")  # etcdctl pads ids to 16 columns
NEVER_STARTED = "http://127.0.0.1:1"
ELECTION_TIMEOUT = 1.0  # seconds, the default of both


def _first_line(text: str) -> str:
    return HEX_ID.sub(" ID", text.splitlines()[0] if text else "")


def script(cluster: Cluster) -> list[str]:
    leader = cluster.leader()
    ep = leader.endpoint
    wait_for(lambda: all(m.get("name") for m in members(ep)), 10, "every member publishing its name")
    ids = {m["name"]: int(m["ID"]) for m in members(ep)}
    out = []
    # etcd refuses changes until its peers have been connected for 5 s ("unhealthy cluster")
    added = wait_for(
        lambda: (
            run_etcdctl(
                ep, "member", "add", "l1", "--learner", f"--peer-urls={NEVER_STARTED}", check=False
            ).stdout
        ),
        30,
        "a learner add",
    )
    out.append(_first_line(added))
    learner = int(re.search(r"Member\s+(\w+) added", added).group(1), 16)
    out.append(_first_line(etcdctl(ep, "member", "remove", f"{learner:x}")))

    down, live = [m for m in cluster.members if m is not leader]
    down.kill9()
    new_peer = f"http://127.0.0.1:{free_port()}"
    # etcd notices the broken stream at once, cairn's leader after an election timeout of silence
    time.sleep(3 * ELECTION_TIMEOUT)
    out.append(etcdctl(ep, "member", "add", "n4", f"--peer-urls={new_peer}"))
    out.append(etcdctl(ep, "member", "add", "n4", f"--peer-urls={new_peer}", "--learner"))
    out.append(etcdctl(ep, "member", "remove", f"{ids[live.name]:x}"))
    out.append(_first_line(etcdctl(ep, "member", "remove", f"{ids[down.name]:x}")))  # down: safe to remove
    roles = {leader.name: "<leader>", live.name: "<live>"}  # which member leads differs between runs
    out.append(
        ", ".join(sorted(roles.get(m.get("name"), m.get("name") or "(unstarted)") for m in members(ep)))
    )
    out.append(_first_line(etcdctl(ep, "member", "add", "l2", f"--peer-urls={new_peer}", "--learner")))
    return out


def test_strict_reconfig_checks_match_etcd(tmp_path: Path) -> None:
    outputs = {}
    for kind in ("etcd", "cairn"):
        with Cluster(kind, 3, tmp_path / kind) as cluster:
            outputs[kind] = script(cluster)
    print("\n".join(outputs["cairn"]))
    assert outputs["cairn"] == outputs["etcd"]
    assert "Error: etcdserver: unhealthy cluster\n" in outputs["etcd"]
