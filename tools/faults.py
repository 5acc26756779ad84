#!/usr/bin/env python3
"""The long fault run: tests/faultrun.py's workload and nemesis for as long as you like.

    tools/faults.py --duration 600 --clients 8 --keys 5            # a random seed, printed
    tools/faults.py --seed 1234 --duration 40 --clients 5 --keys 3  # rerun a CI run's seeded nemesis
    tools/faults.py --runs 20 --duration 60                         # 20 runs, seeds one after another
    tools/faults.py --faults crash-loop,kill-all --duration 120     # only some kinds of fault
    tools/faults.py --check history.json                            # re-check a saved history

Each run starts a fresh 3-member cairn cluster in its own directory (under --dir, kept on failure,
removed otherwise), saves the history as history.json there, and prints a summary; a failing run
prints the seed, the nemesis schedule and the operations the checker could not linearize. The exit
status is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def load_faultrun():
    """tests/faultrun.py by path (tools are never imported by tests; this goes the other way)."""
    sys.path.insert(0, str(TESTS))  # faultrun imports servers and linearizability from there
    spec = importlib.util.spec_from_file_location("faultrun", TESTS / "faultrun.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["faultrun"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults per run (300)")
    parser.add_argument("--seed", type=int, help="seed of the first run (random by default)")
    parser.add_argument("--clients", type=int, default=6, help="client threads (6)")
    parser.add_argument("--keys", type=int, default=4, help="keys the clients share (4)")
    parser.add_argument("--runs", type=int, default=1, help="runs, with seeds seed, seed+1, ... (1)")
    parser.add_argument("--recovery", type=float, default=3.0, help="seconds of load after healing (3)")
    parser.add_argument("--faults", help="comma-separated fault kinds to cycle through (all by default)")
    parser.add_argument("--dir", type=Path, help="where runs keep their clusters (a temp dir)")
    parser.add_argument("--check", type=Path, metavar="HISTORY", help="only re-check a saved history.json")
    args = parser.parse_args(argv)
    faultrun = load_faultrun()

    if args.check:
        from linearizability import check

        result = check(faultrun.load_history(args.check))
        print(result.explain())
        return 0 if result.ok else 1

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    base = args.dir or Path(tempfile.mkdtemp(prefix="cairn-faults-"))
    failed = []
    for n in range(args.runs):
        run_seed = seed + n
        run_dir = base / f"seed-{run_seed}"
        print(f"=== run {n + 1}/{args.runs}: seed {run_seed}", flush=True)
        report = faultrun.run(
            run_dir,
            seed=run_seed,
            duration=args.duration,
            clients=args.clients,
            keys=args.keys,
            recovery=args.recovery,
            faults=args.faults.split(",") if args.faults else faultrun.FAULT_KINDS,
            log=lambda line: print(line, flush=True),
        )
        report.save(run_dir / "history.json")
        if report.ok:
            print(report.summary(), flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(report.failure_report(), flush=True)
            print(f"kept {run_dir} (member logs, history.json)", flush=True)
            failed.append(run_seed)
    if failed:
        print(f"FAILED seeds: {failed}")
        return 1
    print(f"all {args.runs} runs passed (seeds {seed}..{seed + args.runs - 1})")
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
