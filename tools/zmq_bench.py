"""Pipelined load through cairn's native ZeroMQ client (``node.client.AsyncClient``).

    python -m tools.zmq_bench --url tcp://127.0.0.1:2390 --procs 2 --clients 256 --duration 10 put
    python -m tools.zmq_bench --url tcp://127.0.0.1:2390 --procs 2 --clients 256 --duration 10 get

Each worker process holds ONE client connection and runs ``--clients`` coroutines that each send
a request as soon as the previous answer arrives, so up to ``--clients`` requests per process are
in flight and every event-loop turn leaves as one frame: the pipelining the protocol is built for.
``--server-pid`` gives server CPU per request, as in ``tools.bench`` (whose helpers this uses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from collections.abc import Sequence
from typing import Any

from tools.bench import percentile, process_tree_cpu


async def _load(args: argparse.Namespace, worker: int) -> tuple[int, int, list[float]]:
    from node.client import AsyncClient

    value = b"v" * args.val_size
    latencies: list[float] = []
    failures = 0
    async with AsyncClient(args.url, timeout=30) as client:
        if args.cmd == "get":  # something to read
            await asyncio.gather(*(client.put(b"bench/%08d" % k, value) for k in range(min(args.keys, 1000))))
        end = time.monotonic() + args.duration

        async def one(c: int) -> None:
            nonlocal failures
            n = c
            while time.monotonic() < end:
                key = b"bench/%08d" % (
                    (n * 7919 + worker) % min(args.keys, 1000 if args.cmd == "get" else args.keys)
                )
                n += args.clients
                start = time.monotonic()
                try:
                    if args.cmd == "put":
                        await client.put(key, value)
                    else:
                        await client.range(key, serializable=args.serializable)
                except Exception:
                    failures += 1
                    continue
                latencies.append(time.monotonic() - start)

        await asyncio.gather(*(one(c) for c in range(args.clients)))
    return len(latencies), failures, latencies


def _worker(args: argparse.Namespace, worker: int, out: Any) -> None:
    out.send(asyncio.run(_load(args, worker)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    server_pids = [int(p) for p in args.server_pid.split(",")] if args.server_pid else []
    cpu0 = process_tree_cpu(server_pids) if server_pids else 0.0
    start = time.monotonic()
    for i in range(args.procs):
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(args, i, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    results = [p.recv() for p in pipes]
    elapsed = time.monotonic() - start
    cpu = (process_tree_cpu(server_pids) - cpu0) if server_pids else float("nan")
    for proc in procs:
        proc.join(10)
    ok = sum(r[0] for r in results)
    samples = sorted(s for r in results for s in r[2])
    return {
        "workload": args.cmd,
        "procs": args.procs,
        "clients_per_proc": args.clients,
        "requests": ok,
        "failures": sum(r[1] for r in results),
        # start-up (spawn + connect) is inside elapsed but outside --duration: rate over the duration
        "req_per_s": ok / args.duration,
        "p50_ms": percentile(samples, 50) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "server_cpu_us_per_req": cpu / ok * 1e6 if ok else float("nan"),
        "wall_s": elapsed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="zmq_bench", description="pipelined load on cairn's native ZeroMQ port")
    p.add_argument("--url", default="tcp://127.0.0.1:2390")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--clients", type=int, default=256, help="concurrent requests per process")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--keys", type=int, default=100000)
    p.add_argument("--serializable", action="store_true", help="get: serializable reads")
    p.add_argument("--server-pid", help="comma-separated pids whose process trees' CPU is measured")
    p.add_argument("cmd", choices=["put", "get"])
    print(json.dumps(run(p.parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
