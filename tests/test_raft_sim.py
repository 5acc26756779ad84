"""Deterministic cluster simulation of the raft core: 500 seeded runs (3 and 5 nodes) in CI, about
two thirds of them with snapshots and half with membership changes (the seed decides).

Longer soaks: ``python tools/sim.py --seeds 100000 --nodes 5 --jobs 2``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # raftsim lives next to this file

from raftsim import Sim, SimConfig, SimFailure, run_seed

CHUNK = 50
SEEDS_PER_SIZE = 250  # x 2 cluster sizes = 500 runs


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("first", range(0, SEEDS_PER_SIZE, CHUNK))
def test_simulated_cluster(nodes: int, first: int) -> None:
    for seed in range(first, first + CHUNK):
        try:
            stats = run_seed(seed, nodes)
        except AssertionError as exc:
            replay = f"python tools/sim.py --seed {seed} --nodes {nodes} -v"
            pytest.fail(f"seed {seed} failed: {exc}\nreplay: {replay}")
        assert stats["committed"] > 0


@pytest.mark.parametrize("nodes", [3, 5])
def test_simulated_cluster_with_snapshots_and_membership(nodes: int) -> None:
    for seed in range(10000, 10000 + CHUNK):
        try:
            stats = run_seed(seed, nodes, snapshots=True, membership=True)
        except AssertionError as exc:
            replay = f"python tools/sim.py --seed {seed} --nodes {nodes} --snapshots on --membership on -v"
            pytest.fail(f"seed {seed} failed: {exc}\nreplay: {replay}")
        assert stats["committed"] > 0


def test_replay_is_deterministic() -> None:
    a = Sim(7, SimConfig.from_seed(7, 5, snapshots=True, membership=True))
    b = Sim(7, SimConfig.from_seed(7, 5, snapshots=True, membership=True))
    assert a.run() == b.run()
    assert a.trace == b.trace
    assert [e.data for e in a.nodes[1].applied] == [e.data for e in b.nodes[1].applied]


def test_snapshots_and_membership_are_exercised() -> None:
    total: dict[str, int] = {}
    for seed in range(30):
        for k, v in run_seed(seed, 3, snapshots=True, membership=True).items():
            total[k] = total.get(k, 0) + v
    for key in (
        "compactions",
        "snap_sent",
        "snap_failed",
        "snap_installed",
        "conf_add_learner",
        "conf_add_voter",
        "conf_promote_learner",
        "conf_remove",
        "leader_removed",
        "refused_ConfChangePending",
        "refused_LearnerNotReady",
    ):
        assert total.get(key, 0) > 0, (key, total)


def test_simulation_catches_learners_in_the_commit_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.raft.core import RaftCore

    def commit_counting_everyone(self: RaftCore) -> bool:
        matches = sorted((pr.match for pr in self._prs.values()), reverse=True)
        mci = matches[self._quorum - 1]
        log = self._log
        if mci > log.committed and log.term(mci) == self._term:
            log.committed = mci
            return True
        return False

    monkeypatch.setattr(RaftCore, "_maybe_commit", commit_counting_everyone)
    with pytest.raises(SimFailure):
        for seed in range(300):
            run_seed(seed, 5, snapshots=False, membership=True)


def test_simulation_catches_a_snapshot_that_keeps_the_old_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from actors.raft.core import RaftCore, Snapshot

    def restore_forgetting_the_configuration(self: RaftCore, snap: Snapshot) -> bool:
        log = self._log
        if snap.index <= log.committed:
            return False
        if log.match_term(snap.index, snap.term):
            log.commit_to(snap.index)
            return False
        log.restore(snap)
        self._conf_hist = [(snap.index, snap.conf_state)]  # reported, but not put in force
        return True

    monkeypatch.setattr(RaftCore, "_restore", restore_forgetting_the_configuration)
    with pytest.raises(SimFailure):
        for seed in range(100):
            run_seed(seed, 3, snapshots=True, membership=True)


def test_simulation_catches_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    # a vote granted without the election restriction must be caught as a safety violation
    from actors.raft.log import RaftLog

    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, i, t: True)
    with pytest.raises(SimFailure):
        for seed in range(200):
            run_seed(seed, 3)
