"""Deterministic cluster simulation of the raft core: 500 seeded runs (3 and 5 nodes) in CI.

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


def test_replay_is_deterministic() -> None:
    a = Sim(7, SimConfig.from_seed(7, 5))
    b = Sim(7, SimConfig.from_seed(7, 5))
    assert a.run() == b.run()
    assert a.trace == b.trace
    assert [e.data for e in a.nodes[1].applied] == [e.data for e in b.nodes[1].applied]


def test_simulation_catches_a_broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    # a vote granted without the election restriction must be caught as a safety violation
    from actors.raft.log import RaftLog

    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, i, t: True)
    with pytest.raises(SimFailure):
        for seed in range(200):
            run_seed(seed, 3)
