"""Load generator for any etcd v3 gRPC endpoint (etcd or cairn), in the spirit of etcd's `benchmark`.

One tool measures both servers, so a comparison reflects the servers, not two different clients.

    python -m tools.bench --endpoints 127.0.0.1:2379 --clients 64 --conns 8 --procs 2 \\
        --total 20000 put --val-size 256 --key-space-size 100000
    python -m tools.bench --endpoints 127.0.0.1:2379 --clients 64 --duration 10 range foo --consistency s

Why several processes: one Python process (GIL, protobuf and gRPC per-call overhead) saturates long
before a server does, so `--procs P` forks P workers, each with its own event loop and gRPC channels;
their raw latency samples are merged before percentiles are computed.  Requests are serialized once
(or cheaply per request) and responses are left undecoded, to keep client CPU per request low.

`--server-pid` reads utime+stime of the given processes (and their children) from /proc before and
after the run, giving server CPU time per request: a throughput-independent efficiency figure that
stays meaningful even when the client, not the server, is the bottleneck.

Progress goes to stderr; the report (or `--json`) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9)

# -- request construction -------------------------------------------------------------------------------


def _pb() -> Any:
    """Import the etcd schema lazily: workers import it after spawn, the parent only when needed."""
    from actors.proto import rpc_pb2

    return rpc_pb2


def _make_key(n: int, key_size: int) -> bytes:
    """Key number `n` as `key_size` bytes: zero-padded decimal, so keys sort like their numbers."""
    digits = str(n).encode()
    if len(digits) >= key_size:
        return digits[-key_size:]
    return b"0" * (key_size - len(digits)) + digits


def request_factory(args: argparse.Namespace, worker: int) -> tuple[str, Callable[[int], bytes]]:
    """Return (gRPC method path, function i -> serialized request) for the chosen workload.

    The function takes the request's sequence number so --sequential-keys is deterministic per worker;
    workers start at different offsets so they do not all write the same keys in lockstep.
    """
    rpc_pb2 = _pb()
    if args.cmd in ("put", "txn-put"):
        value = (b"v" * args.val_size)[: args.val_size]
        rng = random.Random(args.seed + worker)
        space = max(1, args.key_space_size)
        offset = worker * (space // max(1, args.procs))

        def key_for(i: int) -> bytes:
            n = (offset + i) % space if args.sequential_keys else rng.randrange(space)
            return _make_key(n, args.key_size)

        if args.cmd == "put":

            def put(i: int) -> bytes:
                return rpc_pb2.PutRequest(key=key_for(i), value=value).SerializeToString()

            return "/etcdserverpb.KV/Put", put

        def txn(i: int) -> bytes:
            ops = [
                rpc_pb2.RequestOp(
                    request_put=rpc_pb2.PutRequest(key=key_for(i * args.txn_ops + j), value=value)
                )
                for j in range(args.txn_ops)
            ]
            return rpc_pb2.TxnRequest(success=ops).SerializeToString()

        return "/etcdserverpb.KV/Txn", txn

    if args.cmd == "range":
        req = rpc_pb2.RangeRequest(
            key=args.key.encode(),
            range_end=(args.end or "").encode(),
            limit=args.limit,
            serializable=args.consistency == "s",
            count_only=args.count_only,
        ).SerializeToString()
        return "/etcdserverpb.KV/Range", lambda _i: req
    raise SystemExit(f"unknown workload {args.cmd!r}")


# -- one worker process ---------------------------------------------------------------------------------


@dataclass
class WorkerResult:
    """What one worker process sends back: raw samples, so percentiles are computed over all of them."""

    latencies: bytes = b""  # array('d') of seconds, successful requests only
    errors: dict[str, int] = field(default_factory=dict)
    start: float = 0.0  # time.monotonic(): CLOCK_MONOTONIC is system-wide, so comparable across procs
    end: float = 0.0
    failure: str = ""


def _share(total: int, parts: int, index: int) -> int:
    """Split `total` into `parts` near-equal integers; return part `index`."""
    return total // parts + (1 if index < total % parts else 0)


async def _worker_main(args: argparse.Namespace, index: int, ready: Any, go: Any) -> WorkerResult:
    import grpc

    method, make_request = request_factory(args, index)
    n_clients = _share(args.clients, args.procs, index)
    n_conns = max(1, _share(args.conns, args.procs, index))
    budget = _share(args.total, args.procs, index) if args.total else None
    endpoints = args.endpoints.split(",")
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # really one TCP connection per channel
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    channels = [
        grpc.aio.insecure_channel(endpoints[(index + i) % len(endpoints)], options=options)
        for i in range(n_conns)
    ]
    result = WorkerResult()
    try:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.channel_ready() for c in channels)), args.connect_timeout
            )
        except TimeoutError:
            raise ConnectionError(
                f"could not connect to {args.endpoints} within {args.connect_timeout:g}s"
            ) from None
        calls = [c.unary_unary(method) for c in channels]  # bytes in, bytes out: no client-side decode
        latencies = array("d")
        errors: Counter[str] = Counter()
        issued = 0
        timeout = args.request_timeout

        # Tell the parent we are connected, then wait for the common start signal.
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        start = time.monotonic()
        deadline = start + args.duration if args.duration else math.inf

        async def client(c: int) -> None:
            nonlocal issued
            call = calls[c % len(calls)]
            perf = time.perf_counter
            while True:
                if budget is not None and issued >= budget:
                    return
                if budget is None and time.monotonic() >= deadline:
                    return
                i = issued
                issued += 1
                req = make_request(i)
                t0 = perf()
                try:
                    await call(req, timeout=timeout)
                except grpc.aio.AioRpcError as exc:
                    errors[f"{exc.code().name}: {exc.details()}"] += 1
                    if len(errors) > 100 or sum(errors.values()) > 1000 + len(latencies):
                        raise RuntimeError(
                            f"too many errors, e.g. {exc.code().name}: {exc.details()}"
                        ) from exc
                    continue
                latencies.append(perf() - t0)

        await asyncio.gather(*(client(c) for c in range(max(1, n_clients))))
        result.start, result.end = start, time.monotonic()
        result.latencies = latencies.tobytes()
        result.errors = dict(errors)
    except Exception as exc:  # reported to the parent, which fails the whole run
        result.failure = f"worker {index}: {type(exc).__name__}: {exc}"
        ready.set()
    finally:
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    return result


def _worker_entry(args: argparse.Namespace, index: int, ready: Any, go: Any, conn: Any) -> None:
    """Process entry point: run the worker on uvloop if importable, send the result through `conn`."""
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        result = runner(_worker_main(args, index, ready, go))
    except BaseException as exc:
        result = WorkerResult(failure=f"worker {index}: {type(exc).__name__}: {exc}")
        ready.set()
    conn.send(asdict(result))
    conn.close()


# -- server CPU accounting --------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2 :].split()


def process_tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user+system, incl. reaped children) used by `pids` and all their descendants.

    Each process is counted once even if it is in several of the given trees.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    seen: set[int] = set()
    todo = list(pids)
    ticks = 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            f = _stat(pid)
        except OSError:
            continue
        ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo.extend(children.get(pid, ()))
    return ticks / os.sysconf("SC_CLK_TCK")


# -- the run ------------------------------------------------------------------------------------------------


def percentile(sorted_samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already-sorted samples (as etcd's benchmark reports them)."""
    if not sorted_samples:
        return math.nan
    k = max(0, min(len(sorted_samples) - 1, math.ceil(p / 100.0 * len(sorted_samples)) - 1))
    return sorted_samples[k]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run one workload as configured by `args` and return the summary (what --json prints)."""
    if not args.total and not args.duration:
        args.total = 10000
    ctx = mp.get_context("spawn")  # never fork a process that may hold gRPC state
    ready_events = [ctx.Event() for _ in range(args.procs)]
    go = ctx.Event()
    procs, pipes = [], []
    for i in range(args.procs):
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker_entry, args=(args, i, ready_events[i], go, child_end), daemon=True)
        p.start()
        child_end.close()
        procs.append(p)
        pipes.append(parent_end)
    n_channels = sum(max(1, _share(args.conns, args.procs, i)) for i in range(args.procs))
    _log(args, f"{args.procs} worker process(es) started, connecting {n_channels} channel(s)...")
    try:
        for ev in ready_events:
            if not ev.wait(args.connect_timeout + 30):
                raise SystemExit("bench: a worker did not become ready in time")
        early = [WorkerResult(**c.recv()).failure for c in pipes if c.poll(0)]  # failed before the start
        if early:
            go.set()
            raise SystemExit("bench: " + "; ".join(early))
        server_pids = [int(p) for p in args.server_pid.split(",")] if args.server_pid else []
        cpu0 = process_tree_cpu(server_pids) if server_pids else 0.0
        _log(args, f"running {args.cmd}: {args.clients} clients, "
                   + (f"{args.total} requests" if args.total else f"{args.duration}s"))  # fmt: skip
        go.set()
        results = []
        for i, conn in enumerate(pipes):
            # Generous bound: the run's own length plus per-request timeouts; never hang forever.
            limit = (args.duration or 0) + args.request_timeout * 4 + 600
            if not conn.poll(limit):
                raise SystemExit(f"bench: worker {i} produced no result within {limit:.0f}s")
            results.append(WorkerResult(**conn.recv()))
        cpu1 = process_tree_cpu(server_pids) if server_pids else 0.0
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    failures = [r.failure for r in results if r.failure]
    if failures:
        raise SystemExit("bench: " + "; ".join(failures))

    samples = array("d")
    for r in results:
        samples.frombytes(r.latencies)
    lat = sorted(samples)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    elapsed = max(r.end for r in results) - min(r.start for r in results)
    ok = len(lat)
    summary: dict[str, Any] = {
        "workload": args.cmd,
        "endpoints": args.endpoints,
        "clients": args.clients,
        "conns": args.conns,
        "procs": args.procs,
        "requests": ok,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "elapsed_s": elapsed,
        "requests_per_s": ok / elapsed if elapsed > 0 else math.nan,
        "latency_ms": {
            "min": lat[0] * 1e3 if lat else math.nan,
            "avg": statistics.fmean(lat) * 1e3 if lat else math.nan,
            "stddev": statistics.pstdev(lat) * 1e3 if lat else math.nan,
            "max": lat[-1] * 1e3 if lat else math.nan,
            **{f"p{p:g}": percentile(lat, p) * 1e3 for p in PERCENTILES},
        },
    }
    if server_pids:
        cpu = cpu1 - cpu0
        summary["server_pids"] = server_pids
        summary["server_cpu_s"] = cpu
        summary["server_cpu_us_per_req"] = cpu / ok * 1e6 if ok else math.nan
        summary["server_cpu_utilization"] = cpu / elapsed if elapsed > 0 else math.nan
    return summary


def format_report(s: dict[str, Any]) -> str:
    """Human-readable report laid out like etcd's benchmark tool (times in ms rather than secs)."""
    lat = s["latency_ms"]
    lines = [
        f"Workload: {s['workload']}  endpoints={s['endpoints']} clients={s['clients']} "
        f"conns={s['conns']} procs={s['procs']}",
        "Summary:",
        f"  Total:\t{s['elapsed_s']:.4f} secs.",
        f"  Requests:\t{s['requests']} ok, {s['errors']} failed",
        f"  Slowest:\t{lat['max']:.3f} ms.",
        f"  Fastest:\t{lat['min']:.3f} ms.",
        f"  Average:\t{lat['avg']:.3f} ms.",
        f"  Stddev:\t{lat['stddev']:.3f} ms.",
        f"  Requests/sec:\t{s['requests_per_s']:.1f}",
        "",
        "Latency distribution:",
        *(f"  {p:g}% in {lat[f'p{p:g}']:.3f} ms." for p in PERCENTILES),
    ]
    if "server_cpu_s" in s:
        lines += [
            "",
            f"Server CPU (pids {','.join(map(str, s['server_pids']))}): {s['server_cpu_s']:.2f} s, "
            f"{s['server_cpu_us_per_req']:.1f} µs/request, {s['server_cpu_utilization']:.2f} cores busy",
        ]
    if s["error_kinds"]:
        lines += ["", "Errors:", *(f"  {n}\t{k}" for k, n in sorted(s["error_kinds"].items()))]
    return "\n".join(lines)


def _log(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"bench: {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror etcd's benchmark tool where they exist (--endpoints, --clients, --conns, ...)."""
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", default="127.0.0.1:2379", help="comma-separated host:port list")
    p.add_argument("--clients", type=int, default=1, help="concurrent requests in flight (all procs)")
    p.add_argument("--conns", type=int, default=1, help="gRPC channels / TCP connections (all procs)")
    p.add_argument("--procs", type=int, default=1, help="client OS processes, each with its own channels")
    p.add_argument("--total", type=int, default=0, help="total requests (default 10000 unless --duration)")
    p.add_argument("--duration", type=float, default=0.0, help="run for this many seconds instead")
    p.add_argument("--server-pid", default="", help="PID[,PID]: report server CPU per request from /proc")
    p.add_argument("--request-timeout", type=float, default=10.0, help="per-request deadline, seconds")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    sub = p.add_subparsers(dest="cmd", required=True)

    def writes(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--key-size", type=int, default=8)
        sp.add_argument("--val-size", type=int, default=256)
        sp.add_argument("--key-space-size", type=int, default=1, help="distinct keys to write")
        sp.add_argument("--sequential-keys", action="store_true", help="cycle through keys in order")

    writes(sub.add_parser("put", help="KV.Put"))
    txn = sub.add_parser("txn-put", help="KV.Txn with --txn-ops puts in the success branch")
    writes(txn)
    txn.add_argument("--txn-ops", type=int, default=1)
    rng = sub.add_parser("range", help="KV.Range of one key or [key, end)")
    rng.add_argument("key")
    rng.add_argument("end", nargs="?", default="")
    rng.add_argument("--consistency", choices=("l", "s"), default="l", help="linearizable or serializable")
    rng.add_argument("--limit", type=int, default=0)
    rng.add_argument("--count-only", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the workload, print the report (or JSON); non-zero if every request failed."""
    args = build_parser().parse_args(argv)
    for name in ("clients", "conns", "procs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bench: --{name} must be >= 1")
    if args.procs > args.clients:
        args.procs = args.clients
    summary = run(args)
    print(json.dumps(summary, indent=2) if args.json else format_report(summary), flush=True)
    return 0 if summary["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
