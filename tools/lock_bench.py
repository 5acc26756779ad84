"""Lock/Unlock cycles through the v3lock service of a fresh etcd and a fresh cairn, side by side.

    python -m tools.lock_bench                      # 8 workers, 10 s per workload
    python -m tools.lock_bench --workers 16 --duration 20

Two workloads: *uncontended* (each worker locks a name of its own) and *contended* (every worker
locks the same name, so each grant waits for the previous holder's Unlock: the hand-over path).
Each worker holds its own lease. Reported: grants/s, Lock latency p50/p99, and the server's CPU
per grant (every process of the server, from /proc), the figure least disturbed by the client
sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

from actors.proto import rpc_pb2, v3lock_pb2
from tools.bench import percentile, process_tree_cpu

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from servers import Server  # noqa: E402


async def cycles(endpoint: str, workers: int, duration: float, contended: bool) -> list[float]:
    """Lock latencies (s) of every completed Lock/Unlock cycle of ``workers`` for ``duration`` s."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(endpoint) as channel:
        grant = channel.unary_unary("/etcdserverpb.Lease/LeaseGrant")
        lock, unlock = (
            channel.unary_unary("/v3lockpb.Lock/Lock"),
            channel.unary_unary("/v3lockpb.Lock/Unlock"),
        )
        end = time.monotonic() + duration

        async def worker(n: int) -> None:
            answer = await grant(rpc_pb2.LeaseGrantRequest(TTL=60).SerializeToString())
            lease = rpc_pb2.LeaseGrantResponse.FromString(answer).ID
            name = b"bench" if contended else b"bench-%d" % n
            request = v3lock_pb2.LockRequest(name=name, lease=lease).SerializeToString()
            while time.monotonic() < end:
                start = time.perf_counter()
                key = v3lock_pb2.LockResponse.FromString(await lock(request, timeout=60)).key
                latencies.append(time.perf_counter() - start)
                await unlock(v3lock_pb2.UnlockRequest(key=key).SerializeToString(), timeout=60)

        await asyncio.gather(*(worker(n) for n in range(workers)))
    return latencies


def measure(kind: str, args: argparse.Namespace, base: Path) -> list[str]:
    server = Server(kind, base / kind)
    rows = []
    try:
        server.start()
        for contended in (False, True):
            cpu0, t0 = process_tree_cpu([server.pid]), time.monotonic()
            latencies = sorted(asyncio.run(cycles(server.endpoint, args.workers, args.duration, contended)))
            cpu, elapsed = process_tree_cpu([server.pid]) - cpu0, time.monotonic() - t0
            label = "contended" if contended else "uncontended"
            p50, p99 = (percentile(latencies, p) * 1e3 for p in (50, 99))
            rows.append(
                f"| {kind} | {label} | {len(latencies) / elapsed:.0f} | {p50:.2f} | {p99:.2f} | "
                f"{cpu / max(len(latencies), 1) * 1e6:.0f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        server.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="lock_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="etcd,cairn")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lock-bench-") as tmp:
        rows = [row for kind in args.servers.split(",") for row in measure(kind, args, Path(tmp))]
    print(f"{args.workers} workers, {args.duration:g} s per workload")
    print("| server | workload | grants/s | Lock p50 ms | Lock p99 ms | server CPU µs/grant |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
