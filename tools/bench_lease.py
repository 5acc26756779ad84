"""The lease-keepalive workload of tools/bench.py: L leases kept alive at 1/s each through K streams.

    python -m tools.bench --endpoints 127.0.0.1:2379 --procs 2 --conns 10 --duration 20 \\
        --server-pid $PIDS lease-keepalive --leases 10000 --streams 100 --leader-pid $LEADER

What a service registry asks of its store: many clients, each holding a lease and heartbeating it.
Each worker process grants its share of the leases (unary LeaseGrant, 64 in flight), opens its
share of the LeaseKeepAlive streams (spread over its channels, so over the endpoints too) and then,
open loop, sends every lease's keep-alive once per ``--interval`` on that lease's stream, spread
evenly over the interval. Round trip = keep-alive written -> its response read (responses are
matched by lease id). Only the ``--duration`` window after ``--warmup`` seconds is measured: server
CPU (``--server-pid``: every member; ``--leader-pid``: the leader alone, the figure that bounds how
many leases a cluster can hold) divided by the keep-alives answered in that window. Leases are
revoked afterwards, outside the window.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from tools import bench

PACE_HZ = 50  # sending slots per interval: a stream sends 1/PACE_HZ of its leases per slot
GRANT_CONCURRENCY = 64


@dataclass
class KeepAliveResult:
    """One worker's samples: for every keep-alive answered, when it was sent and its round trip."""

    sent: bytes = b""  # array('d') of time.monotonic()
    rtts: bytes = b""  # array('d') of seconds, parallel to sent
    written: bytes = b""  # array('d'): when each keep-alive was written, answered or not
    expired: int = 0  # answers with TTL 0: the lease was lost (it expired before its keep-alive)
    leases: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failure: str = ""


def add_parser(sub: Any) -> None:
    """The ``lease-keepalive`` subcommand of tools/bench.py."""
    p = sub.add_parser(
        "lease-keepalive",
        help="L leases kept alive at 1/interval each through K LeaseKeepAlive streams; round trip and "
        "server CPU per keep-alive (--duration is the measured window, after --warmup)",
    )
    p.add_argument("--leases", type=int, default=10000)
    p.add_argument("--streams", type=int, default=100, help="LeaseKeepAlive streams (over --conns channels)")
    p.add_argument(
        "--ttl", type=int, default=30,
        help="TTL the leases are granted with, seconds: longer than granting them all takes, or the first "
        "ones expire before their first keep-alive (etcd then holds the stream until the revoke)",
    )  # fmt: skip
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two keep-alives of a lease")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds of keep-alives first")
    p.add_argument("--leader-pid", default="", help="PID[,PID] of the leader: its CPU per keep-alive too")
    p.add_argument("--keep", action="store_true", help="do not revoke the leases at the end")


async def _grant(channels: list[Any], n: int, ttl: int, timeout: float) -> list[int]:
    """``n`` leases, GRANT_CONCURRENCY in flight over the channels; then one linearizable read, so
    the server has applied every grant before keep-alives start (etcd renews a lease only once its
    applied index has caught up with its commit index: a backlog would be measured as latency)."""
    rpc_pb2 = bench._pb()
    grants = [c.unary_unary("/etcdserverpb.Lease/LeaseGrant") for c in channels]
    request = rpc_pb2.LeaseGrantRequest(TTL=ttl).SerializeToString()
    gate = asyncio.Semaphore(GRANT_CONCURRENCY)

    async def one(i: int) -> int:
        async with gate:
            answer = await grants[i % len(grants)](request, timeout=timeout)
            return rpc_pb2.LeaseGrantResponse.FromString(answer).ID

    ids = list(await asyncio.gather(*(one(i) for i in range(n))))
    read = channels[0].unary_unary("/etcdserverpb.KV/Range")
    await read(rpc_pb2.RangeRequest(key=b"bench/lease-keepalive").SerializeToString(), timeout=timeout * 6)
    return ids


async def _revoke(channel: Any, ids: list[int], timeout: float) -> None:
    rpc_pb2 = bench._pb()
    revoke = channel.unary_unary("/etcdserverpb.Lease/LeaseRevoke")
    gate = asyncio.Semaphore(GRANT_CONCURRENCY)

    async def one(lease_id: int) -> None:
        async with gate:
            await revoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id).SerializeToString(), timeout=timeout)

    await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)


async def _worker_main(
    args: argparse.Namespace, index: int, ready: Any, go: Any, stop: Any
) -> KeepAliveResult:
    import grpc

    rpc_pb2 = bench._pb()
    endpoints = args.endpoints.split(",")
    streams = list(range(index, args.streams, args.procs))
    n_conns = max(1, bench._share(args.conns, args.procs, index))
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(endpoints[(index + i) % len(endpoints)], options=options)
        for i in range(n_conns)
    ]
    result = KeepAliveResult()
    errors: Counter[str] = Counter()
    tasks: list[asyncio.Task[None]] = []
    ids: list[int] = []
    try:
        await bench.wait_connected(channels, args)
        n_leases = sum(bench._share(args.leases, args.streams, s) for s in streams)
        ids = await _grant(channels, n_leases, args.ttl, args.request_timeout)
        result.leases = len(ids)
        calls, leases_of = [], []
        offset = 0
        for k, s in enumerate(streams):
            n = bench._share(args.leases, args.streams, s)
            leases_of.append(ids[offset : offset + n])
            offset += n
            calls.append(channels[k % n_conns].stream_stream("/etcdserverpb.Lease/LeaseKeepAlive")())
        requests = {i: rpc_pb2.LeaseKeepAliveRequest(ID=i).SerializeToString() for i in ids}
        in_flight: dict[int, deque[float]] = {i: deque() for i in ids}
        sent, rtts, written = array("d"), array("d"), array("d")
        parse = rpc_pb2.LeaseKeepAliveResponse.FromString

        async def read(call: Any) -> None:
            monotonic = time.monotonic
            try:
                while True:
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        return
                    now = monotonic()
                    resp = parse(raw)
                    pending = in_flight.get(resp.ID)
                    if not pending:
                        errors["answer for a lease with no keep-alive in flight"] += 1
                        continue
                    t0 = pending.popleft()
                    sent.append(t0)
                    rtts.append(now - t0)
                    if resp.TTL <= 0:
                        result.expired += 1
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    errors[f"{exc.code().name}: {exc.details()}"] += 1

        for call in calls:
            tasks.append(asyncio.create_task(read(call)))
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        slot = args.interval / PACE_HZ
        start, n = time.monotonic(), 0
        while not stop.is_set():
            due = start + n * slot
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            k = n % PACE_HZ
            now = time.monotonic()
            for call, leases in zip(calls, leases_of, strict=True):
                for lease_id in leases[k::PACE_HZ]:
                    in_flight[lease_id].append(now)
                    written.append(now)
                    await call.write(requests[lease_id])
            n += 1
        await asyncio.sleep(min(2.0, args.interval))  # let the last answers come in
        result.sent, result.rtts, result.written = sent.tobytes(), rtts.tobytes(), written.tobytes()
    except Exception as exc:  # reported to the parent, which fails the whole run
        result.failure = f"lease worker {index}: {type(exc).__name__}: {exc}"
        ready.set()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.errors = dict(errors)
        if ids and not args.keep and channels:
            await _revoke(channels[0], ids, args.request_timeout)
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    return result


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split(",")] if text else []


def run_lease_keepalive(args: argparse.Namespace) -> dict[str, Any]:
    """Grant, keep alive for warmup + duration, measure the window, revoke; return the summary."""
    if not args.duration:
        args.duration = 10.0
    args.procs = max(1, min(args.procs, args.streams))
    ready_events = [bench.SPAWN.Event() for _ in range(args.procs)]
    go, stop = bench.SPAWN.Event(), bench.SPAWN.Event()
    workers = bench.Workers(
        args.procs,
        bench.run_worker,
        lambda i: (_worker_main, KeepAliveResult, args, i, ready_events[i], go, stop),
    )
    bench._log(args, f"{args.procs} process(es): granting {args.leases} leases, {args.streams} streams")
    server_pids, leader_pids = _pids(args.server_pid), _pids(args.leader_pid)
    try:
        t0 = time.monotonic()
        workers.wait_ready(ready_events, args.connect_timeout + 600, KeepAliveResult, go)
        grant_s = time.monotonic() - t0
        bench._log(args, f"{args.leases} leases granted in {grant_s:.1f}s; keep-alives for "
                         f"{args.warmup:g}s + {args.duration:g}s measured")  # fmt: skip
        go.set()
        time.sleep(args.warmup)
        window_start = time.monotonic()
        cpu0 = bench.process_tree_cpu(server_pids) if server_pids else 0.0
        lcpu0 = bench.process_tree_cpu(leader_pids) if leader_pids else 0.0
        time.sleep(args.duration)
        cpu1 = bench.process_tree_cpu(server_pids) if server_pids else 0.0
        lcpu1 = bench.process_tree_cpu(leader_pids) if leader_pids else 0.0
        window_end = time.monotonic()
        stop.set()
        results = workers.results(KeepAliveResult, args.request_timeout * 2 + 600)
    finally:
        stop.set()
        go.set()
        workers.join(30)

    rtts, written = array("d"), 0
    for r in results:
        writes = array("d")
        writes.frombytes(r.written)
        written += sum(1 for t in writes if window_start <= t < window_end)
        sent, rtt = array("d"), array("d")
        sent.frombytes(r.sent)
        rtt.frombytes(r.rtts)
        rtts.extend(x for t, x in zip(sent, rtt, strict=True) if window_start <= t < window_end)
    lat = sorted(rtts)
    window = window_end - window_start
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    answered = len(lat)
    summary: dict[str, Any] = {
        "workload": args.cmd,
        "endpoints": args.endpoints,
        "leases": sum(r.leases for r in results),
        "streams": args.streams,
        "conns": args.conns,
        "procs": args.procs,
        "interval_s": args.interval,
        "grant_s": grant_s,
        "window_s": window,
        "requests": answered,  # keep-alives answered in the window (bench's names, for compare_bench)
        "asked_per_s": args.leases / args.interval,
        "written_per_s": written / window if window > 0 else math.nan,  # below asked: the client lags
        "requests_per_s": answered / window if window > 0 else math.nan,
        "expired_answers": sum(r.expired for r in results),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "latency_ms": {
            "min": lat[0] * 1e3 if lat else math.nan,
            "avg": statistics.fmean(lat) * 1e3 if lat else math.nan,
            "max": lat[-1] * 1e3 if lat else math.nan,
            **{f"p{p:g}": bench.percentile(lat, p) * 1e3 for p in bench.PERCENTILES},
        },
    }
    for name, pids, cpu in (("server", server_pids, cpu1 - cpu0), ("leader", leader_pids, lcpu1 - lcpu0)):
        if pids:
            summary.update(bench.cpu_fields(name, pids, cpu, answered, window))
    return summary


def format_report(s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    lines = [
        f"Workload: lease-keepalive  endpoints={s['endpoints']} leases={s['leases']} streams={s['streams']} "
        f"conns={s['conns']} procs={s['procs']} interval={s['interval_s']:g}s",
        f"  {s['leases']} leases granted in {s['grant_s']:.1f} s",
        "Summary:",
        f"  Keep-alives:\t{s['requests']} answered in {s['window_s']:.1f} s: {s['requests_per_s']:.0f}/s "
        f"(asked {s['asked_per_s']:.0f}/s, written {s['written_per_s']:.0f}/s); "
        f"{s['expired_answers']} answered TTL 0; {s['errors']} errors",
        "",
        "Keep-alive round trip, written -> answer read (ms):",
        f"  min {lat['min']:.3f}  avg {lat['avg']:.3f}  max {lat['max']:.3f}",
        *(f"  {p:g}% in {lat[f'p{p:g}']:.3f} ms." for p in bench.PERCENTILES),
    ]
    for name in ("server", "leader"):
        if f"{name}_cpu_s" in s:
            lines.append(bench.cpu_line(s, name, "keep-alive"))
    if s["error_kinds"]:
        lines += ["", "Errors:", *(f"  {n}\t{k}" for k, n in sorted(s["error_kinds"].items()))]
    return "\n".join(lines)
