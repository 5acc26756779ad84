"""Run the deterministic raft simulation over many seeds; a failure prints the command that replays it.

    python tools/sim.py --seeds 100000 --nodes 5 --jobs 2     # long soak
    python tools/sim.py --seed 4242 --nodes 3 -v              # replay one seed with its event trace
    python tools/sim.py --seeds 5000 --snapshots on --membership on   # every run with both features

By default the seed decides whether a run takes snapshots (about two thirds) and changes membership
(about half); ``--snapshots``/``--membership`` force them ``on`` or ``off``.

The simulator itself is ``tests/raftsim.py`` (test code, shared with ``tests/test_raft_sim.py``);
this CLI loads it by path so that no test or product module has to import ``tools/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load_raftsim() -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("raftsim", ROOT / "tests" / "raftsim.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["raftsim"] = mod
    spec.loader.exec_module(mod)
    return mod


raftsim = _load_raftsim()


FEATURE = {"seed": None, "on": True, "off": False}


def replay_command(
    seed: int, nodes: int, ticks: int, snapshots: str = "seed", membership: str = "seed"
) -> str:
    """The exact command line that reruns one seed."""
    extra = "".join(
        f" --{name} {value}"
        for name, value in (("snapshots", snapshots), ("membership", membership))
        if value != "seed"
    )
    return f"python tools/sim.py --seed {seed} --nodes {nodes} --ticks {ticks}{extra} -v"


def _run(job: tuple[int, int, int, str, str]) -> tuple[int, int, str | None, dict[str, int] | None]:
    seed, nodes, ticks, snapshots, membership = job
    try:
        stats = raftsim.run_seed(seed, nodes, ticks, FEATURE[snapshots], FEATURE[membership])
    except AssertionError as exc:  # SimFailure, or an assertion inside the core
        return seed, nodes, f"{type(exc).__name__}: {exc}", None
    return seed, nodes, None, stats


def main(argv: list[str] | None = None) -> int:
    """Run the seeds; exit status 1 if any failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1000, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--seed", type=int, help="run only this seed (replay)")
    p.add_argument("--nodes", type=int, default=0, help="cluster size (3 or 5; 0 = both for every seed)")
    p.add_argument("--ticks", type=int, default=200, help="ticks of faulty running before healing")
    p.add_argument(
        "--snapshots", choices=FEATURE, default="seed", help="log compaction and snapshot installs"
    )
    p.add_argument("--membership", choices=FEATURE, default="seed", help="membership changes")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--max-failures", type=int, default=10)
    p.add_argument("-v", "--verbose", action="store_true", help="print statistics (and the trace on failure)")
    a = p.parse_args(argv)
    sizes = [a.nodes] if a.nodes else [3, 5]
    seeds = [a.seed] if a.seed is not None else range(a.start, a.start + a.seeds)
    jobs = [(s, n, a.ticks, a.snapshots, a.membership) for s in seeds for n in sizes]
    totals: dict[str, int] = {}

    t0 = time.perf_counter()
    failures = 0
    done = 0
    if a.jobs > 1:
        pool = multiprocessing.Pool(a.jobs)
        results = pool.imap_unordered(_run, jobs, chunksize=16)
    else:
        pool = None
        results = map(_run, jobs)
    try:
        for seed, nodes, err, stats in results:
            done += 1
            if err is not None:
                failures += 1
                text = err if a.verbose else err.split("\nlast events:")[0]
                print(f"FAIL seed={seed} nodes={nodes}: {text}")
                print(
                    f"  replay: {replay_command(seed, nodes, a.ticks, a.snapshots, a.membership)}", flush=True
                )
                if failures >= a.max_failures:
                    break
            else:
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0) + v
                if a.verbose and len(jobs) <= 20:
                    print(f"ok seed={seed} nodes={nodes} {stats}")
            if done % 1000 == 0:
                rate = done / (time.perf_counter() - t0)
                print(f"... {done}/{len(jobs)} runs, {failures} failed, {rate:.0f} runs/s", flush=True)
    finally:
        if pool is not None:
            pool.terminate()
    dt = time.perf_counter() - t0
    print(f"{done} runs in {dt:.1f}s ({done / dt:.0f} runs/s), {failures} failed")
    if a.verbose:
        print("totals:", " ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
