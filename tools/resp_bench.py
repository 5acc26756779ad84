"""redis-benchmark against a fresh cairn node's RESP port, with each server process's CPU per request.

    python -m tools.resp_bench                            # GET/SET, with and without -P 16, 3 runs each
    python -m tools.resp_bench --workloads get-p16 --runs 5
    PYTHONPATH=/tmp/old-tree python -m tools.resp_bench   # the same load on another source tree

Throughput on a shared 2-core machine follows whatever else runs; the CPU that the core and the
frontend process spend per request (utime+stime from ``/proc/PID/stat`` over the run) does much
less, so both are reported, with the load average before each run, and the best and median run.
The keys (``-r 1000``) are written before the GET workloads, so every GET finds its key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tools import bench

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from servers import Server, free_port  # noqa: E402

REDIS_BENCHMARK = "/usr/bin/redis-benchmark"
WORKLOADS = {  # name -> (redis-benchmark test, requests, pipeline depth)
    "get-p16": ("get", 500_000, 16),
    "set-p16": ("set", 200_000, 16),
    "get": ("get", 100_000, 1),
    "set": ("set", 50_000, 1),
}


def server_processes(supervisor: int) -> dict[str, int]:
    """``{"core": pid, "frontend": pid}``: the supervisor's children, by the module they run."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == supervisor and b"-m" in cmdline:
            found[cmdline[cmdline.index(b"-m") + 1].decode().removeprefix("node.")] = int(entry)
    if set(found) != {"core", "frontend"}:
        raise SystemExit(f"resp_bench: expected a core and a frontend under pid {supervisor}, found {found}")
    return found


def run_once(port: int, pids: dict[str, int], test: str, requests: int, pipeline: int, clients: int) -> dict:
    load = float(Path("/proc/loadavg").read_text().split()[0])
    before = {name: bench.process_tree_cpu([pid]) for name, pid in pids.items()}
    argv = [REDIS_BENCHMARK, "-p", str(port), "-c", str(clients), "-n", str(requests), "-t", test,
            "-P", str(pipeline), "-r", "1000", "-q"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    used = {name: bench.process_tree_cpu([pid]) - before[name] for name, pid in pids.items()}
    match = re.search(r"([\d.]+) requests per second, p50=([\d.]+) msec", out.replace("\r", "\n"))
    if match is None:
        raise SystemExit(f"resp_bench: no result in redis-benchmark's output: {out!r}")
    result = {"rps": float(match[1]), "p50_ms": float(match[2]), "load": load}
    result.update({f"{name}_us": cpu / requests * 1e6 for name, cpu in used.items()})
    return result


def summary_line(name: str, runs: list[dict]) -> str:
    best = max(runs, key=lambda r: r["rps"])
    median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
    each = ", ".join(
        f"{r['rps']:,.0f}/s (core {r['core_us']:.1f} + frontend {r['frontend_us']:.1f} µs, "
        f"load {r['load']:.1f})"
        for r in runs
    )
    return (
        f"| {name} | {best['rps']:,.0f} | {median['rps']:,.0f} | "
        f"{statistics.median(r['core_us'] for r in runs):.2f} | "
        f"{statistics.median(r['frontend_us'] for r in runs):.2f} | {each} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="get-p16,set-p16,get,set", help=f"of {', '.join(WORKLOADS)}")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, default=50)
    args = p.parse_args(argv)
    names = args.workloads.split(",")
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"resp_bench: unknown workload(s) {sorted(unknown)}; known: {sorted(WORKLOADS)}")
    port = free_port()
    plugins = json.dumps({"grpc": {}, "resp": {"listen": f"127.0.0.1:{port}"}})
    with tempfile.TemporaryDirectory(prefix="resp-bench-") as base:
        server = Server("cairn", base, env={"ETCD_PLUGINS": plugins}, extra_args=["--log-level", "warn"])
        server.start()
        try:
            pids = server_processes(server.pid)
            run_once(port, pids, "set", 10_000, 16, args.clients)  # every key of -r 1000 exists
            print("| workload | best req/s | median req/s | core µs/req (median) | frontend µs/req "
                  "(median) | runs |\n|---|---|---|---|---|---|")  # fmt: skip
            for name in names:
                test, requests, pipeline = WORKLOADS[name]
                runs = [
                    run_once(port, pids, test, requests, pipeline, args.clients) for _ in range(args.runs)
                ]
                print(summary_line(name, runs), flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
