"""Load generator for any etcd v3 gRPC endpoint (etcd or cairn), in the spirit of etcd's `benchmark`.

One tool measures both servers, so a comparison reflects the servers, not two different clients.

    python -m tools.bench --endpoints 127.0.0.1:2379 --clients 64 --conns 8 --procs 2 \\
        --total 20000 put --val-size 256 --key-space-size 100000
    python -m tools.bench --endpoints 127.0.0.1:2379 --clients 64 --duration 10 range foo --consistency s
    python -m tools.bench --endpoints 127.0.0.1:2379 --procs 2 --duration 15 \\
        watch-latency --streams 10 --watchers-per-stream 1000 --put-rate 100
    python -m tools.bench --endpoints 127.0.0.1:2379 --procs 2 --conns 10 --duration 20 \\
        lease-keepalive --leases 10000 --streams 100          # tools/bench_lease.py

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
from pathlib import Path
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
    if args.cmd == "authenticate":
        name, _, password = args.credentials.partition(":")
        req = rpc_pb2.AuthenticateRequest(name=name, password=password).SerializeToString()
        return "/etcdserverpb.Auth/Authenticate", lambda _i: req
    raise SystemExit(f"unknown workload {args.cmd!r}")


async def login(channel: Any, user: str) -> tuple[tuple[str, str], ...]:
    """``--user NAME:PASSWORD``: one Authenticate per channel; the token goes with every request."""
    rpc_pb2 = _pb()
    name, _, password = user.partition(":")
    call = channel.unary_unary(
        "/etcdserverpb.Auth/Authenticate",
        request_serializer=rpc_pb2.AuthenticateRequest.SerializeToString,
        response_deserializer=rpc_pb2.AuthenticateResponse.FromString,
    )
    answer = await call(rpc_pb2.AuthenticateRequest(name=name, password=password), timeout=30)
    return (("token", answer.token),)


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


async def wait_connected(channels: list[Any], args: argparse.Namespace) -> None:
    """Every channel ready within --connect-timeout, or a clear error naming the endpoints."""
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), args.connect_timeout)
    except TimeoutError:
        raise ConnectionError(
            f"could not connect to {args.endpoints} within {args.connect_timeout:g}s"
        ) from None


def open_channel(endpoint: str, args: argparse.Namespace, options: list) -> Any:
    """A gRPC aio channel, with TLS (and a client certificate) when --cacert (--cert, --key) are given."""
    import grpc

    if not args.cacert:
        return grpc.aio.insecure_channel(endpoint, options=options)
    files = (args.cacert, args.cert_file, args.key_file)
    ca, cert, key = (Path(p).read_bytes() if p else None for p in files)
    return grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(ca, key, cert), options=options)


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
    channels = [open_channel(endpoints[(index + i) % len(endpoints)], args, options) for i in range(n_conns)]
    result = WorkerResult()
    try:
        await wait_connected(channels, args)
        calls = [c.unary_unary(method) for c in channels]  # bytes in, bytes out: no client-side decode
        tokens = [await login(c, args.user) if args.user else None for c in channels]
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
            metadata = tokens[c % len(calls)]
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
                    await call(req, timeout=timeout, metadata=metadata)
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


# -- worker processes -----------------------------------------------------------------------------------

SPAWN = mp.get_context("spawn")  # never fork a process that may hold gRPC state


def run_worker(
    main: Callable[..., Any], result: type, args: argparse.Namespace, index: int, ready: Any, *rest: Any
) -> None:
    """A worker process: ``main(args, index, ready, *rest[:-1])`` on uvloop if importable, its result
    (or its failure, with ``ready`` set so the parent stops waiting) sent on ``rest[-1]``, a pipe."""
    *extra, conn = rest
    try:
        outcome = _run_loop(main(args, index, ready, *extra))
    except BaseException as exc:
        outcome = result(failure=f"{args.cmd} worker {index}: {type(exc).__name__}: {exc}")
        ready.set()
    conn.send(asdict(outcome))
    conn.close()


class Workers:
    """Worker processes, each running ``target(*worker_args(i), conn)`` and sending one result dict
    (with a ``failure`` field) on ``conn``: started, awaited and stopped the same way by every workload."""

    def __init__(self, n: int, target: Callable[..., None], worker_args: Callable[[int], tuple]) -> None:
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        for i in range(n):
            parent_end, child_end = SPAWN.Pipe(duplex=False)
            p = SPAWN.Process(target=target, args=(*worker_args(i), child_end), daemon=True)
            p.start()
            child_end.close()
            self.procs.append(p)
            self.pipes.append(parent_end)

    def wait_ready(self, ready: Sequence[Any], timeout: float, result: type, release: Any) -> None:
        """Every worker set its ready event; a worker that failed before that fails the run (after
        setting ``release``, the event the others wait on, so that they end too)."""
        for ev in ready:
            if not ev.wait(timeout):
                raise SystemExit("bench: a worker did not become ready in time")
        early = [result(**c.recv()).failure for c in self.pipes if c.poll(0)]
        if early:
            release.set()
            raise SystemExit("bench: " + "; ".join(early))

    def results(self, result: type, timeout: float) -> list[Any]:
        """Each worker's result, in worker order (never waiting forever)."""
        out = []
        for i, conn in enumerate(self.pipes):
            if not conn.poll(timeout):
                raise SystemExit(f"bench: worker {i} produced no result within {timeout:.0f}s")
            out.append(result(**conn.recv()))
        failures = [r.failure for r in out if r.failure]
        if failures:
            raise SystemExit("bench: " + "; ".join(failures))
        return out

    def join(self, grace: float = 10.0) -> None:
        for p in self.procs:
            p.join(grace)
            if p.is_alive():
                p.kill()


# -- the run ------------------------------------------------------------------------------------------------


def percentile(sorted_samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already-sorted samples (as etcd's benchmark reports them)."""
    if not sorted_samples:
        return math.nan
    k = max(0, min(len(sorted_samples) - 1, math.ceil(p / 100.0 * len(sorted_samples)) - 1))
    return sorted_samples[k]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run one workload as configured by `args` and return the summary (what --json prints)."""
    if args.cmd == "watch-latency":
        return run_watch_latency(args)
    if args.cmd == "lease-keepalive":
        from tools.bench_lease import run_lease_keepalive

        return run_lease_keepalive(args)
    if not args.total and not args.duration:
        args.total = 10000
    ready_events = [SPAWN.Event() for _ in range(args.procs)]
    go = SPAWN.Event()
    workers = Workers(
        args.procs, run_worker, lambda i: (_worker_main, WorkerResult, args, i, ready_events[i], go)
    )
    n_channels = sum(max(1, _share(args.conns, args.procs, i)) for i in range(args.procs))
    _log(args, f"{args.procs} worker process(es) started, connecting {n_channels} channel(s)...")
    try:
        workers.wait_ready(ready_events, args.connect_timeout + 30, WorkerResult, go)
        server_pids = [int(p) for p in args.server_pid.split(",")] if args.server_pid else []
        cpu0 = process_tree_cpu(server_pids) if server_pids else 0.0
        _log(args, f"running {args.cmd}: {args.clients} clients, "
                   + (f"{args.total} requests" if args.total else f"{args.duration}s"))  # fmt: skip
        go.set()
        # Generous bound: the run's own length plus per-request timeouts; never hang forever.
        results = workers.results(WorkerResult, (args.duration or 0) + args.request_timeout * 4 + 600)
        cpu1 = process_tree_cpu(server_pids) if server_pids else 0.0
    finally:
        workers.join()

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
        summary.update(cpu_fields("server", server_pids, cpu1 - cpu0, ok, elapsed))
    return summary


def cpu_fields(name: str, pids: list[int], cpu: float, requests: int, seconds: float) -> dict[str, Any]:
    """The summary's CPU figures for one group of server processes (``server``, ``leader``)."""
    return {
        f"{name}_pids": pids,
        f"{name}_cpu_s": cpu,
        f"{name}_cpu_us_per_req": cpu / requests * 1e6 if requests else math.nan,
        f"{name}_cpu_utilization": cpu / seconds if seconds > 0 else math.nan,
    }


def cpu_line(s: dict[str, Any], name: str, per: str) -> str:
    """The report line for :func:`cpu_fields`' figures; ``per`` names what one request is."""
    return (
        f"{name.capitalize()} CPU (pids {','.join(map(str, s[f'{name}_pids']))}): "
        f"{s[f'{name}_cpu_s']:.2f} s, {s[f'{name}_cpu_us_per_req']:.1f} µs/{per}, "
        f"{s[f'{name}_cpu_utilization']:.2f} cores busy"
    )


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
        lines += ["", cpu_line(s, "server", "request")]
    if s["error_kinds"]:
        lines += ["", "Errors:", *(f"  {n}\t{k}" for k, n in sorted(s["error_kinds"].items()))]
    return "\n".join(lines)


# -- watch latency ------------------------------------------------------------------------------------------

WATCH_KEY_PREFIX = b"bench/watch/"


def _watch_key(n: int) -> bytes:
    """Key number `n` of the watch-latency key space; fixed width, so keys sort like their numbers."""
    return WATCH_KEY_PREFIX + b"%012d" % n


def _watch_ranges(args: argparse.Namespace) -> list[tuple[int, int]]:
    """[first, end) key numbers watched by each watcher, watcher g = stream * watchers_per_stream + w."""
    space, width = args.key_space_size, args.range_width
    return [(g % space, g % space + width) for g in range(args.streams * args.watchers_per_stream)]


def _watchers_per_key(args: argparse.Namespace) -> list[int]:
    """How many watchers see a put to key number k, for every k in the key space."""
    diff = [0] * (args.key_space_size + 1)
    for first, end in _watch_ranges(args):
        diff[first] += 1
        diff[min(end, args.key_space_size)] -= 1
    counts, running = [], 0
    for d in diff[:-1]:
        running += d
        counts.append(running)
    return counts


@dataclass
class WatchWorkerResult:
    """One watch worker's samples: the mod_revision of every event received and when (time.monotonic)."""

    revisions: bytes = b""  # array('q')
    arrivals: bytes = b""  # array('d'), parallel to revisions
    created: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failure: str = ""


async def _watch_worker_main(
    args: argparse.Namespace, index: int, ready: Any, stop: Any, received: Any
) -> WatchWorkerResult:
    """Open this worker's share of the streams, create every watcher, then record each event's arrival.

    Each stream has its own channel (one TCP connection). Responses are parsed just enough to read
    the events' revisions; the arrival time is taken once per response, as it comes off the stream.
    """
    import grpc

    rpc_pb2 = _pb()
    endpoints = args.endpoints.split(",")
    streams = list(range(index, args.streams, args.procs))
    ranges = _watch_ranges(args)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    channels = [open_channel(endpoints[s % len(endpoints)], args, options) for s in streams]
    result = WatchWorkerResult()
    revisions, arrivals = array("q"), array("d")
    errors: Counter[str] = Counter()
    tasks: list[asyncio.Task[None]] = []
    try:
        await wait_connected(channels, args)
        parse = rpc_pb2.WatchResponse.FromString
        all_created = asyncio.Event()
        pending_creates = len(streams) * args.watchers_per_stream

        async def read(call: Any) -> None:
            nonlocal pending_creates
            monotonic = time.monotonic
            try:
                while True:
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        errors["stream ended"] += 1
                        return
                    now = monotonic()
                    resp = parse(raw)
                    if resp.created:
                        result.created += 1
                        pending_creates -= 1
                        if not pending_creates:
                            all_created.set()
                    if resp.canceled:
                        errors[f"watch canceled: {resp.cancel_reason}"] += 1
                    for ev in resp.events:
                        revisions.append(ev.kv.mod_revision)
                        arrivals.append(now)
                    received.value = len(revisions)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    errors[f"{exc.code().name}: {exc.details()}"] += 1

        calls = []
        for channel, s in zip(channels, streams, strict=True):
            call = channel.stream_stream("/etcdserverpb.Watch/Watch")()
            calls.append(call)
            tasks.append(asyncio.create_task(read(call)))
            for w in range(args.watchers_per_stream):
                first, end = ranges[s * args.watchers_per_stream + w]
                create = rpc_pb2.WatchCreateRequest(key=_watch_key(first), range_end=_watch_key(end))
                await call.write(rpc_pb2.WatchRequest(create_request=create).SerializeToString())
        try:
            await asyncio.wait_for(all_created.wait(), args.connect_timeout + 60)
        except TimeoutError:
            raise RuntimeError(
                f"only {result.created} of {len(streams) * args.watchers_per_stream} watchers created"
            ) from None
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.revisions, result.arrivals = revisions.tobytes(), arrivals.tobytes()
        result.errors = dict(errors)
    except Exception as exc:  # reported to the parent, which fails the whole run
        result.failure = f"watch worker {index}: {type(exc).__name__}: {exc}"
        ready.set()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    return result


async def _put_at_rate(args: argparse.Namespace) -> tuple[list[int], array, array, array, Counter[str]]:
    """Put at --put-rate for --duration (open loop: put i leaves at start + i/rate, whatever earlier puts
    do). Returns the key number, send time, ack time and revision of every put (ack 0 if it failed)."""
    import grpc

    rpc_pb2 = _pb()
    n = max(1, round(args.put_rate * args.duration))
    rng = random.Random(args.seed)
    keys = [rng.randrange(args.key_space_size) for _ in range(n)]
    value = (b"v" * args.val_size)[: args.val_size]
    sent, acked, revs = array("d", [0.0] * n), array("d", [0.0] * n), array("q", [0] * n)
    errors: Counter[str] = Counter()
    async with open_channel(args.endpoints.split(",")[0], args, []) as channel:
        await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        put = channel.unary_unary("/etcdserverpb.KV/Put")
        requests = [rpc_pb2.PutRequest(key=_watch_key(k), value=value).SerializeToString() for k in keys]
        parse = rpc_pb2.PutResponse.FromString

        async def one(i: int) -> None:
            sent[i] = time.monotonic()
            try:
                resp = await put(requests[i], timeout=args.request_timeout)
            except grpc.aio.AioRpcError as exc:
                errors[f"{exc.code().name}: {exc.details()}"] += 1
                return
            acked[i] = time.monotonic()
            revs[i] = parse(resp).header.revision

        start = time.monotonic()
        tasks = []
        for i in range(n):
            delay = start + i / args.put_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return keys, sent, acked, revs, errors


def run_watch_latency(args: argparse.Namespace) -> dict[str, Any]:
    """The watch-latency workload: --streams x --watchers-per-stream watchers, puts at --put-rate."""
    if not args.duration:
        args.duration = 10.0
    if not args.key_space_size:
        args.key_space_size = args.streams * args.watchers_per_stream
    args.procs = max(1, min(args.procs, args.streams))
    ready_events = [SPAWN.Event() for _ in range(args.procs)]
    stop = SPAWN.Event()
    counters = [SPAWN.Value("q", 0, lock=False) for _ in range(args.procs)]
    workers = Workers(
        args.procs,
        run_worker,
        lambda i: (_watch_worker_main, WatchWorkerResult, args, i, ready_events[i], stop, counters[i]),
    )
    watchers = args.streams * args.watchers_per_stream
    _log(args, f"{args.procs} watch process(es): {args.streams} x {args.watchers_per_stream} watchers")
    try:
        t0 = time.monotonic()
        workers.wait_ready(ready_events, args.connect_timeout + 120, WatchWorkerResult, stop)
        setup_s = time.monotonic() - t0
        server_pids = [int(p) for p in args.server_pid.split(",")] if args.server_pid else []
        cpu0 = process_tree_cpu(server_pids) if server_pids else 0.0
        _log(args, f"{watchers} watchers created in {setup_s:.1f}s; putting {args.put_rate:g}/s "
                   f"for {args.duration:g}s")  # fmt: skip
        put_start = time.monotonic()
        keys, sent, acked, revs, put_errors = _run_loop(_put_at_rate(args))
        put_elapsed = time.monotonic() - put_start
        per_key = _watchers_per_key(args)
        expected = sum(per_key[k] for k, ack in zip(keys, acked, strict=True) if ack)
        deadline = time.monotonic() + args.drain
        while sum(c.value for c in counters) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu1 = process_tree_cpu(server_pids) if server_pids else 0.0
        stop.set()
        results = workers.results(WatchWorkerResult, 60)
    finally:
        stop.set()
        workers.join()

    by_rev = {rev: i for i, rev in enumerate(revs) if acked[i]}
    from_ack, from_send = array("d"), array("d")
    before_ack = unknown = 0
    for r in results:
        rev_samples, arrival_samples = array("q"), array("d")
        rev_samples.frombytes(r.revisions)
        arrival_samples.frombytes(r.arrivals)
        for rev, arrived in zip(rev_samples, arrival_samples, strict=True):
            i = by_rev.get(rev)
            if i is None:
                unknown += 1
                continue
            if arrived < acked[i]:
                before_ack += 1
            from_ack.append(max(0.0, arrived - acked[i]))
            from_send.append(arrived - sent[i])
    errors: Counter[str] = Counter(put_errors)
    for r in results:
        errors.update(r.errors)
    ok_puts = sum(1 for a in acked if a)
    put_lat = sorted(acked[i] - sent[i] for i in range(len(acked)) if acked[i])

    def dist(samples: Sequence[float]) -> dict[str, float]:
        s = sorted(samples)
        return {
            "min": s[0] * 1e3 if s else math.nan,
            "avg": statistics.fmean(s) * 1e3 if s else math.nan,
            "max": s[-1] * 1e3 if s else math.nan,
            **{f"p{p:g}": percentile(s, p) * 1e3 for p in PERCENTILES},
        }

    summary: dict[str, Any] = {
        "workload": args.cmd,
        "endpoints": args.endpoints,
        "streams": args.streams,
        "watchers_per_stream": args.watchers_per_stream,
        "watchers": watchers,
        "key_space_size": args.key_space_size,
        "range_width": args.range_width,
        "procs": args.procs,
        "watch_setup_s": setup_s,
        "put_rate": args.put_rate,
        "puts": ok_puts,
        "put_errors": sum(put_errors.values()),
        "put_elapsed_s": put_elapsed,
        "put_latency_ms": dist(put_lat),
        "events_expected": expected,
        "events_received": len(from_ack),
        "events_unexpected": unknown,
        "events_before_ack": before_ack,
        "errors": dict(errors),
        "latency_ms": dist(from_ack),
        "latency_from_send_ms": dist(from_send),
    }
    if server_pids:
        summary["server_pids"] = server_pids
        summary["server_cpu_s"] = cpu1 - cpu0
        summary["server_cpu_utilization"] = (cpu1 - cpu0) / put_elapsed if put_elapsed > 0 else math.nan
    return summary


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def format_watch_report(s: dict[str, Any]) -> str:
    """Human-readable watch-latency report: put ack -> event arrival at every watcher."""
    lat, send, put = s["latency_ms"], s["latency_from_send_ms"], s["put_latency_ms"]
    lines = [
        f"Workload: watch-latency  endpoints={s['endpoints']} streams={s['streams']} "
        f"watchers-per-stream={s['watchers_per_stream']} ({s['watchers']} watchers) procs={s['procs']}",
        f"  each watcher on {s['range_width']} key(s) of {s['key_space_size']}; "
        f"{s['watchers']} watchers created in {s['watch_setup_s']:.1f} s",
        "Summary:",
        f"  Puts:\t{s['puts']} ok, {s['put_errors']} failed, in {s['put_elapsed_s']:.2f} secs "
        f"({s['puts'] / s['put_elapsed_s']:.1f}/s; asked {s['put_rate']:g}/s)",
        f"  Put latency:\tp50 {put['p50']:.2f} ms, p99 {put['p99']:.2f} ms, max {put['max']:.2f} ms",
        f"  Events:\t{s['events_received']} received of {s['events_expected']} expected"
        f" ({s['events_unexpected']} unexpected, {s['events_before_ack']} arrived before the put's ack)",
        "",
        "Watch latency, put acknowledged -> event received (ms):",
        f"  min {lat['min']:.3f}  avg {lat['avg']:.3f}  max {lat['max']:.3f}",
        *(f"  {p:g}% in {lat[f'p{p:g}']:.3f} ms." for p in PERCENTILES),
        "",
        "Watch latency, put sent -> event received (ms): "
        f"p50 {send['p50']:.3f}, p99 {send['p99']:.3f}, max {send['max']:.3f}",
    ]
    if "server_cpu_s" in s:
        lines += [
            "",
            f"Server CPU (pids {','.join(map(str, s['server_pids']))}): {s['server_cpu_s']:.2f} s, "
            f"{s['server_cpu_utilization']:.2f} cores busy while putting",
        ]
    if s["errors"]:
        lines += ["", "Errors:", *(f"  {n}\t{k}" for k, n in sorted(s["errors"].items()))]
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
    p.add_argument("--user", default="", help="NAME:PASSWORD: authenticate and send the token (auth on)")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.add_argument("--cacert", default="", help="TLS: the CA of the server's certificate (as etcdctl)")
    p.add_argument("--cert", dest="cert_file", default="", help="TLS: the client certificate (with --key)")
    p.add_argument("--key", dest="key_file", default="", help="TLS: the client certificate's key")
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
    auth = sub.add_parser("authenticate", help="Auth.Authenticate with the given credentials")
    auth.add_argument("credentials", help="NAME:PASSWORD")
    rng = sub.add_parser("range", help="KV.Range of one key or [key, end)")
    rng.add_argument("key")
    rng.add_argument("end", nargs="?", default="")
    rng.add_argument("--consistency", choices=("l", "s"), default="l", help="linearizable or serializable")
    rng.add_argument("--limit", type=int, default=0)
    rng.add_argument("--count-only", action="store_true")
    wl = sub.add_parser(
        "watch-latency",
        help="put acknowledged -> event received at every watcher (etcd's benchmark watch-latency); "
        "--procs spreads the streams over processes, --duration is how long to put (default 10 s)",
    )
    wl.add_argument("--streams", type=int, default=10, help="watch streams, each on its own connection")
    wl.add_argument("--watchers-per-stream", type=int, default=10)
    wl.add_argument("--put-rate", type=float, default=100.0, help="puts per second (open loop)")
    wl.add_argument("--val-size", type=int, default=32)
    wl.add_argument(
        "--key-space-size", type=int, default=0,
        help="keys the puts pick from at random (default: one per watcher; 1 = every watcher on one key)",
    )  # fmt: skip
    wl.add_argument(
        "--range-width", type=int, default=1,
        help="watcher g watches keys [g mod space, g mod space + width): width 1 = one key per watcher",
    )  # fmt: skip
    wl.add_argument("--drain", type=float, default=5.0, help="max seconds to wait for late events")
    from tools.bench_lease import add_parser as add_lease_keepalive

    add_lease_keepalive(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run the workload, print the report (or JSON); non-zero if every request failed."""
    args = build_parser().parse_args(argv)
    for name in ("clients", "conns", "procs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bench: --{name} must be >= 1")
    if args.cmd == "watch-latency":
        summary = run_watch_latency(args)
        print(json.dumps(summary, indent=2) if args.json else format_watch_report(summary), flush=True)
        return 0 if summary["events_received"] > 0 else 1
    if args.cmd == "lease-keepalive":
        from tools.bench_lease import format_report as format_lease_report

        summary = run(args)
        print(json.dumps(summary, indent=2) if args.json else format_lease_report(summary), flush=True)
        return 0 if summary["requests"] > 0 else 1
    if args.procs > args.clients:
        args.procs = args.clients
    summary = run(args)
    print(json.dumps(summary, indent=2) if args.json else format_report(summary), flush=True)
    return 0 if summary["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
