"""Benchmark a fresh real etcd and a fresh cairn with the same load generator, and compare them.

    python -m tools.compare_bench                       # etcd vs cairn, 10 s per workload
    python -m tools.compare_bench --servers etcd,etcd   # validate the tool itself (ratios ~1.0)
    python -m tools.compare_bench --members 3           # three-member clusters of each
    python -m tools.compare_bench --workloads lease-keepalive --leases 10000 --streams 100

Each server is started on free ports in its own temp dir with the same (etcd) flags, measured alone
(the other is not running, so an idle server does not steal CPU on a small machine), then stopped by
pid.  Workloads: put (64 clients, 256-byte values, random keys), serializable range, linearizable range;
lease-keepalive on request (``--workloads``), which also reports the leader's CPU alone.
The result is a markdown table with req/s, p50, p99 and server CPU µs per request; the last is the
figure least disturbed by the client sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools import bench

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from servers import Cluster, ServerError  # noqa: E402

RANGE_KEY = "bench/range-key"


def workloads(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, bench subcommand argv) for each workload; global flags are added by `run_workload`."""
    every = {
        "put": (
            f"put {args.clients} clients, {args.val_size} B values",
            ["put", "--val-size", str(args.val_size), "--key-space-size", str(args.key_space_size)],
        ),
        "range-s": (
            f"range serializable, {args.clients} clients",
            ["range", RANGE_KEY, "--consistency", "s"],
        ),
        "range-l": (
            f"range linearizable, {args.clients} clients",
            ["range", RANGE_KEY, "--consistency", "l"],
        ),
        "lease-keepalive": (
            f"lease keep-alive, {args.leases} leases at 1/s, {args.streams} streams",
            ["lease-keepalive", "--leases", str(args.leases), "--streams", str(args.streams)],
        ),
    }
    unknown = set(args.workloads.split(",")) - set(every)
    if unknown:
        raise SystemExit(f"compare_bench: unknown workload(s) {sorted(unknown)}; known: {sorted(every)}")
    return [every[name] for name in args.workloads.split(",")]


def enable_auth(target: Cluster, user: str) -> None:
    """Auth on, and ``user`` (not root: its requests go through the permission check) with
    readwrite on every key the workloads touch."""
    name, _, password = user.partition(":")
    for argv in (
        ("user", "add", "root:root"),
        ("role", "add", "root"),
        ("user", "grant-role", "root", "root"),
        ("role", "add", "bench"),
        ("role", "grant-permission", "bench", "readwrite", "0", "--from-key"),
        ("user", "add", f"{name}:{password}"),
        ("user", "grant-role", name, "bench"),
        ("auth", "enable"),
    ):
        target.members[0].etcdctl(*argv)


def run_workload(target: Cluster, args: argparse.Namespace, sub: list[str], duration: float) -> dict:
    """Run one bench workload against every member of `target` and return bench's summary dict."""
    if sub[0] == "lease-keepalive":  # the leader renews every lease: its CPU is the figure to read
        sub = [*sub, "--leader-pid", str(target.leader().pid)]
    argv = [
        "--endpoints", target.endpoints,
        "--clients", str(args.clients),
        "--conns", str(args.conns),
        "--procs", str(args.procs),
        "--duration", str(duration),
        "--server-pid", ",".join(str(m.pid) for m in target.members),
        "--quiet",
        *(["--user", args.user] if args.user else []),
        *sub,
    ]  # fmt: skip
    return bench.run(bench.build_parser().parse_args(argv))


def measure(kind: str, args: argparse.Namespace, base: Path) -> dict[str, dict[str, Any]] | str:
    """Start a fresh `kind` server, run every workload, stop it; return summaries or an error string."""
    target = Cluster(kind, args.members, base / f"{kind}-{len(list(base.iterdir()))}")
    results: dict[str, dict[str, Any]] = {}
    try:
        _log(f"starting {kind} ({args.members} member(s)) ...")
        target.start()
        _log(f"{kind} serving on {target.endpoints}")
        if args.user:
            enable_auth(target, args.user)
        credentials = ["--user", args.user] if args.user else []
        target.members[0].etcdctl(*credentials, "put", RANGE_KEY, "v" * args.val_size)
        for label, sub in workloads(args):
            if args.warmup > 0 and sub[0] != "lease-keepalive":  # that one warms up by itself
                run_workload(target, args, sub, args.warmup)
            _log(f"{kind}: {label} for {args.duration:g}s ...")
            s = run_workload(target, args, sub, args.duration)
            results[label] = s
            lat, cpu = s["latency_ms"], s.get("server_cpu_us_per_req", math.nan)
            _log(
                f"{kind}: {label}: {s['requests_per_s']:.0f} req/s, p50 {lat['p50']:.2f} ms, "
                f"p99 {lat['p99']:.2f} ms, {cpu:.1f} µs CPU/req"
                + (f", {s['errors']} errors" if s["errors"] else "")
            )
    except (ServerError, SystemExit, OSError) as exc:
        _log(f"{kind} failed: {exc}")
        return f"{kind} failed: {str(exc).splitlines()[0]}"
    finally:
        target.stop()
        _log(f"{kind} stopped")
    return results


METRICS: list[tuple[str, Any]] = [
    ("req/s", lambda s: s["requests_per_s"]),
    ("p50 ms", lambda s: s["latency_ms"]["p50"]),
    ("p99 ms", lambda s: s["latency_ms"]["p99"]),
    ("server CPU µs/req", lambda s: s.get("server_cpu_us_per_req", math.nan)),
    ("leader CPU µs/req", lambda s: s.get("leader_cpu_us_per_req", math.nan)),
    ("failed requests", lambda s: float(s["errors"])),
    ("keep-alives answered TTL 0 (lost leases)", lambda s: float(s.get("expired_answers", math.nan))),
]


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if x == int(x) and abs(x) < 100:
        return str(int(x))
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def markdown_table(
    names: Sequence[str], results: Sequence[dict[str, dict[str, Any]] | str], labels: Sequence[str]
) -> str:
    """One row per (workload, metric); one column per server, then last/first ratio columns."""
    head = ["workload", "metric", *names] + [f"{n}/{names[0]}" for n in names[1:]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        for metric, get in METRICS:
            vals: list[float] = []
            for r in results:
                vals.append(get(r[label]) if isinstance(r, dict) and label in r else math.nan)
            if all(math.isnan(v) for v in vals):
                continue  # a metric this workload does not have (leader CPU outside lease-keepalive)
            ratios = [v / vals[0] if vals[0] and not math.isnan(vals[0]) else math.nan for v in vals[1:]]
            cells = [
                label,
                metric,
                *(_fmt(v) for v in vals),
                *(f"{x:.2f}" if not math.isnan(x) else "n/a" for x in ratios),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _log(msg: str) -> None:
    print(f"compare_bench: {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 1 if any server could not be measured."""
    p = argparse.ArgumentParser(prog="compare_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="etcd,cairn", help="comma-separated kinds, first is the baseline")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each workload")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--procs", type=int, default=2, help="client processes (see tools/bench.py)")
    p.add_argument("--members", type=int, default=1, help="cluster size (clients spread over every member)")
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--key-space-size", type=int, default=100000)
    p.add_argument("--workloads", default="put,range-s,range-l", help="comma-separated, of: "
                   "put, range-s, range-l, lease-keepalive")  # fmt: skip
    p.add_argument("--leases", type=int, default=10000, help="lease-keepalive: leases kept alive")
    p.add_argument("--streams", type=int, default=100, help="lease-keepalive: LeaseKeepAlive streams")
    p.add_argument("--base-dir", default=None, help="where data dirs go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="also dump all summaries as JSON on stdout")
    p.add_argument("--user", default="", help="NAME:PASSWORD: measure with auth on, as this (non-root) user")
    args = p.parse_args(argv)

    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    names = [k if kinds.count(k) == 1 else f"{k}#{kinds[: i + 1].count(k)}" for i, k in enumerate(kinds)]
    labels = [label for label, _ in workloads(args)]
    with tempfile.TemporaryDirectory(prefix="compare-bench-", dir=args.base_dir) as tmp:
        results = [measure(kind, args, Path(tmp)) for kind in kinds]
    print(
        f"\n{args.duration:g} s per workload, {args.clients} clients, {args.conns} conns, "
        f"{args.procs} client procs; {Path('/proc/cpuinfo').read_text().count('processor')} CPUs\n"
    )
    print(markdown_table(names, results, labels))
    for name, r in zip(names, results, strict=True):
        if isinstance(r, str):
            print(f"\n**{name}**: {r}")
    if args.json:
        print(json.dumps(dict(zip(names, results, strict=True)), indent=2))
    return 0 if all(isinstance(r, dict) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
