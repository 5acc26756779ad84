"""The fault run: concurrent clients on a real 3-member cairn cluster while a nemesis injects faults.

Shared by the short CI test (tests/test_faults.py) and the long tool (tools/faults.py). Clients do
puts of unique values, linearizable gets and compare-and-swap txns on a few keys, each over its own
gRPC channel to one member (moving to another member after an error), every request with a 1-2 s
deadline, and record every operation with monotonic call and return times. A request that failed
or timed out is recorded as indeterminate: it may or may not have taken effect. Meanwhile a seeded
nemesis cycles through kill -9 and restart, SIGSTOP/SIGCONT, and partitions through the peer
transport's test-only fault switch (`CAIRN_FAULT_FILE`: a member drops all raft traffic to and
from the peers its file lists), healing each fault before the next. At the end everything is
healed, the clients go on for a few seconds (the cluster must serve again), then every key is read
from every member, linearizably and serializably.

The checks: the whole history, final reads included, is linearizable (tests/linearizability.py);
so every acknowledged write is visible at the end or was overwritten by a later one; members agree
on the final values; and the cluster serves again once healed.

A CAS is `Txn(compare value(key) == expected, success: put key new, failure: range key)`, so a
failed CAS also reports the value it saw; clients expect the last value they saw. Both keep the
checker's search small when it has to refute a history.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from linearizability import Op, Result, check
from servers import Cluster, Server, ServerError

from actors.proto import rpc_pb2, rpc_pb2_grpc

FAULT_KINDS = (
    "kill",  # kill -9 one member, restart it after a while
    "crash-loop",  # kill -9 one member again as soon as it serves after its restart, three times
    "kill-all",  # kill -9 every member at once (a power cut), restart them all
    "pause",  # SIGSTOP one member, SIGCONT it after a while
    "isolate",  # cut one member from the two others: both sides' files list the other side
    "isolate-one-sided",  # the same, but only the isolated member's file lists the others
    "shun-one-sided",  # the same, but only the others' files list the isolated member
    "cut-link",  # cut the link between two members only (one side's file); the third reaches both
)


@dataclass
class Fault:
    kind: str
    target: str  # member name
    was_leader: bool
    start: float  # seconds since the run began
    end: float | None = None
    detail: str = ""

    def describe(self) -> str:
        end = "..." if self.end is None else f"{self.end:6.2f}"
        who = f"{self.target}{' (leader)' if self.was_leader else ''}"
        return f"[{self.start:6.2f}, {end}] {self.kind:<18} {who}{' ' + self.detail if self.detail else ''}"


@dataclass
class RunReport:
    seed: int
    duration: float
    replay: str = ""  # tools/faults.py arguments that rerun the same nemesis schedule
    history: list[Op] = field(default_factory=list)
    schedule: list[Fault] = field(default_factory=list)
    result: Result | None = None
    final: dict[str, dict[str, dict[str, str | None]]] = field(default_factory=dict)  # mode → member → key
    errors: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    recovered_ops: int = 0
    fault_switch_applied: int = 0
    took: float = 0.0
    check_took: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.result is not None and self.result.ok is True

    def summary(self) -> str:
        determinate = [op for op in self.history if op.ret is not None]
        kinds = Counter(op.kind for op in determinate)
        indeterminate = Counter(op.kind for op in self.history if op.ret is None)
        faults = Counter(f.kind for f in self.schedule)
        lines = [
            f"fault run seed {self.seed}: {self.took:.1f}s ({self.duration:.0f}s of faults), "
            f"{len(self.history)} ops: {len(determinate)} acknowledged "
            f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}), "
            f"{sum(indeterminate.values())} failed/timed out "
            f"({', '.join(f'{k} {n}' for k, n in sorted(indeterminate.items()))})",
            f"faults injected: {len(self.schedule)} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(faults.items()))}); "
            f"fault switch applied {self.fault_switch_applied} times",
            f"ops acknowledged after healing: {self.recovered_ops}",
            f"client errors: {dict(self.errors.most_common(8))}",
        ]
        if self.result is not None:
            per_key = ", ".join(f"{k.key}: {k.ops} ops/{k.configurations} configs" for k in self.result.keys)
            verdict = {True: "linearizable", False: "NOT LINEARIZABLE", None: "UNKNOWN (search budget)"}
            lines.append(f"checker ({self.check_took:.2f}s): {verdict[self.result.ok]} — {per_key}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)

    def failure_report(self) -> str:
        lines = [
            self.summary(),
            f"replay: .venv/bin/python tools/faults.py {self.replay}",
            "nemesis schedule:",
            *(f"  {f.describe()}" for f in self.schedule),
        ]
        if self.result is not None and self.result.ok is not True:
            lines += ["checker:", self.result.explain()]
        lines.append(f"final values: {json.dumps(self.final, indent=1)}")
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        """The history and schedule as JSON, for offline analysis."""
        data = {
            "seed": self.seed,
            "schedule": [f.__dict__ for f in self.schedule],
            "history": [
                [op.client, op.kind, op.key, op.input, op.output, op.call, op.ret] for op in self.history
            ],
            "final": self.final,
            "problems": self.problems,
        }
        path.write_text(json.dumps(data))


def load_history(path: Path) -> list[Op]:
    data = json.loads(path.read_text())
    ops = []
    for client, kind, key, inp, out, call, ret in data["history"]:
        if kind == "cas":
            inp = tuple(inp)
            out = tuple(out) if isinstance(out, list) else out
        ops.append(Op(client, kind, key, inp, out, call, ret))
    return ops


# -- clients -----------------------------------------------------------------------------------------------


class Recorder:
    """The shared history: every thread appends its operations here."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.ops: list[Op] = []
        self.errors: Counter = Counter()
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def error(self, exc: grpc.RpcError) -> None:
        details = (exc.details() or "")[:60]
        with self.lock:
            self.errors[f"{exc.code().name}: {details}"] += 1


def _value(kvs) -> str | None:
    return kvs[0].value.decode() if kvs else None


class Client(threading.Thread):
    """One client: its own channel to one member, moving to another after an error (and now and then)."""

    def __init__(
        self, n: int, endpoints: list[str], keys: list[str], rec: Recorder, seed: int, stop: threading.Event
    ) -> None:
        super().__init__(name=f"client-{n}", daemon=True)
        self.n = n
        self.endpoints = endpoints
        self.keys = keys
        self.rec = rec
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.seen: dict[str, str | None] = {}  # the last value this client saw per key
        self.seq = 0
        self.channel: grpc.Channel | None = None
        self.endpoint = self.rng.choice(endpoints)
        self.crash: BaseException | None = None

    def connect(self, avoid: str | None = None) -> rpc_pb2_grpc.KVStub:
        if self.channel is not None:
            self.channel.close()
        choices = [e for e in self.endpoints if e != avoid] or self.endpoints
        self.endpoint = self.rng.choice(choices)
        self.channel = grpc.insecure_channel(self.endpoint)
        return rpc_pb2_grpc.KVStub(self.channel)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # a bug in the harness must not pass for a quiet client
            self.crash = e
        finally:
            if self.channel is not None:
                self.channel.close()

    def _run(self) -> None:
        stub = self.connect()
        while not self.stop_event.is_set():
            key = self.rng.choice(self.keys)
            roll = self.rng.random()
            kind = "get" if roll < 0.4 else "put" if roll < 0.65 else "cas"
            if kind == "cas" and self.seen.get(key) is None:
                kind = "put"
            self.seq += 1
            value = f"c{self.n}-{self.seq}"
            timeout = self.rng.uniform(1.0, 2.0)
            call = self.rec.now()
            try:
                if kind == "get":
                    resp = stub.Range(rpc_pb2.RangeRequest(key=key.encode()), timeout=timeout)
                    inp, out = None, _value(resp.kvs)
                    self.seen[key] = out
                elif kind == "put":
                    stub.Put(rpc_pb2.PutRequest(key=key.encode(), value=value.encode()), timeout=timeout)
                    inp, out = value, None
                    self.seen[key] = value
                else:
                    expected = self.seen[key]
                    assert expected is not None
                    inp = (expected, value)
                    resp = stub.Txn(_cas_request(key, expected, value), timeout=timeout)
                    if resp.succeeded:
                        out = True
                        self.seen[key] = value
                    else:
                        current = _value(resp.responses[0].response_range.kvs)
                        out = (False, current)
                        self.seen[key] = current
                self.rec.add(Op(self.n, kind, key, inp, out, call, self.rec.now()))
                if self.rng.random() < 0.01:  # now and then another member, so that all get load
                    stub = self.connect()
            except grpc.RpcError as exc:
                inp = {"get": None, "put": value}.get(kind, (self.seen.get(key), value))
                self.rec.add(Op(self.n, kind, key, inp, None, call, None))
                self.rec.error(exc)
                stub = self.connect(avoid=self.endpoint)
                self.stop_event.wait(0.05)


def _cas_request(key: str, expected: str, new: str) -> rpc_pb2.TxnRequest:
    k = key.encode()
    return rpc_pb2.TxnRequest(
        compare=[
            rpc_pb2.Compare(
                result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.VALUE, key=k, value=expected.encode()
            )
        ],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=new.encode()))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))],
    )


# -- the nemesis -------------------------------------------------------------------------------------------


class Nemesis:
    """Injects one fault at a time into a cluster whose members read fault files, and heals it."""

    def __init__(
        self, cluster: Cluster, ids: dict[str, int], files: dict[str, Path], rng: random.Random, rec: Recorder
    ) -> None:
        self.cluster = cluster
        self.ids = ids
        self.files = files
        self.rng = rng
        self.rec = rec
        self.schedule: list[Fault] = []
        self.problems: list[str] = []
        self.paused: set[str] = set()
        self._mtime_ns = time.time_ns()
        self.kinds: tuple[str, ...] = FAULT_KINDS

    def member(self, name: str) -> Server:
        return next(m for m in self.cluster.members if m.name == name)

    def leader(self) -> Server | None:
        """The member that says it leads (a quick probe, not an agreement wait); None if none does."""
        for m in self.cluster.members:
            if m.running and m.name not in self.paused:
                s = self.cluster.status(m, timeout=0.5)
                if s and s[0] == s[1]:
                    return m
        return None

    def write_cuts(self, cuts: dict[str, set[str]]) -> None:
        """Each member's fault file lists the ids of the members it must not talk to.

        Written atomically with a strictly increasing mtime: a member re-reads its file only when
        the mtime changes, and file timestamps are coarser than our writes are apart.
        """
        for name, path in self.files.items():
            self._mtime_ns = max(time.time_ns(), self._mtime_ns + 10_000_000)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{self.ids[p]:x}\n" for p in sorted(cuts.get(name, ()))))
            os.utime(tmp, ns=(self._mtime_ns, self._mtime_ns))
            os.replace(tmp, path)

    def heal_network(self) -> None:
        self.write_cuts({})

    def heal_all(self) -> None:
        """Undo everything: reconnect all links, resume paused members, start stopped ones."""
        self.heal_network()
        for m in self.cluster.members:
            if m.name in self.paused and m.running:
                m._signal(signal.SIGCONT)
            self.paused.discard(m.name)
        for m in self.cluster.members:
            if not m.running:
                with contextlib.suppress(ServerError):
                    m.start(wait=False)

    def run(self, duration: float, stop: threading.Event) -> None:
        end = self.rec.now() + duration
        kinds: list[str] = []
        while self.rec.now() < end and not stop.is_set():
            if not kinds:
                kinds = list(self.kinds)
                self.rng.shuffle(kinds)
            kind = kinds.pop()
            hold = min(self.rng.uniform(1.0, 4.0), max(0.5, end - self.rec.now()))
            self.inject(kind, hold, stop)
            stop.wait(self.rng.uniform(0.5, 2.0))

    def inject(self, kind: str, hold: float, stop: threading.Event) -> None:
        leader = self.leader()
        names = [m.name for m in self.cluster.members]
        to_leader = leader is not None and self.rng.random() < 0.5
        target = leader.name if leader is not None and to_leader else self.rng.choice(names)
        others = [n for n in names if n != target]
        fault = Fault(kind, target, leader is not None and target == leader.name, self.rec.now())
        self.schedule.append(fault)
        m = self.member(target)
        if kind in ("kill", "crash-loop", "kill-all"):
            victims = self.cluster.members if kind == "kill-all" else [m]
            if kind == "kill-all":
                fault.target = "all"
            waits = []
            for round in range(3 if kind == "crash-loop" else 1):
                for v in victims:
                    v.kill9()
                stop.wait(hold if kind != "crash-loop" else self.rng.uniform(0.1, 1.0))
                for v in victims:
                    v.start(wait=False)
                restarted = self.rec.now()
                for v in victims:
                    try:
                        v.wait_ready(timeout=30)
                    except ServerError as e:
                        self.problems.append(
                            f"{v.name} not serving 30s after its restart at {restarted:.2f}s: {e}"
                        )
                waits.append(f"{self.rec.now() - restarted:.2f}s")
                if kind == "crash-loop" and round < 2:
                    stop.wait(self.rng.uniform(0.0, 0.5))
            fault.end = self.rec.now()
            fault.detail = f"(serving again after {', '.join(waits)})"
            return
        if kind == "pause":
            self.paused.add(target)
            m._signal(signal.SIGSTOP)
            stop.wait(hold)
            m._signal(signal.SIGCONT)
            self.paused.discard(target)
        else:
            if kind == "isolate":  # both sides drop each other
                cuts = {target: set(others), **{o: {target} for o in others}}
            elif kind == "isolate-one-sided":  # only the target's file lists the others
                cuts = {target: set(others)}
            elif kind == "shun-one-sided":  # only the others' files list the target
                cuts = {o: {target} for o in others}
            else:  # cut-link: one link only, from one side; the third member still reaches both
                peer = self.rng.choice(others)
                cuts = {target: {peer}}
                fault.detail = f"<-/-> {peer}"
            self.write_cuts(cuts)
            stop.wait(hold)
            self.heal_network()
        fault.end = self.rec.now()


# -- the run -----------------------------------------------------------------------------------------------


def run(
    base_dir: Path,
    *,
    seed: int,
    duration: float = 40.0,
    clients: int = 5,
    keys: int = 3,
    recovery: float = 3.0,
    faults: Sequence[str] = FAULT_KINDS,
    log: Callable[[str], None] = print,
) -> RunReport:
    """Start a 3-member cluster in base_dir, run the workload under faults, check, stop the cluster.

    The nemesis cycles through `faults` (kinds of FAULT_KINDS) in a seeded random order.
    """
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown or not faults:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    started = time.monotonic()
    kinds = "" if tuple(faults) == FAULT_KINDS else f" --faults {','.join(faults)}"
    replay = f"--seed {seed} --duration {duration:g} --clients {clients} --keys {keys}{kinds}"
    report = RunReport(seed, duration, replay)
    rng = random.Random(seed)
    base_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster("cairn", 3, base_dir)
    files = {m.name: base_dir / f"faults-{m.name}" for m in cluster.members}
    for m in cluster.members:
        files[m.name].write_text("")
        m.env = {"CAIRN_FAULT_FILE": str(files[m.name])}
    try:
        cluster.start()
        ids = {}
        for m in cluster.members:
            status = cluster.status(m)
            assert status is not None, f"{m.name} has no status"
            ids[m.name] = status[0]
        cluster.leader(timeout=20)
        log(
            f"fault run: seed {seed}, {clients} clients, {keys} keys, {duration:.0f}s of faults, "
            f"in {base_dir}"
        )
        t0 = time.monotonic()
        rec = Recorder(t0)
        stop_clients = threading.Event()
        stop_nemesis = threading.Event()
        key_names = [f"faults/k{i}" for i in range(keys)]
        endpoints = [m.endpoint for m in cluster.members]
        nemesis = Nemesis(cluster, ids, files, random.Random(rng.randrange(2**32)), rec)
        workers = [
            Client(i, endpoints, key_names, rec, rng.randrange(2**32), stop_clients) for i in range(clients)
        ]
        nemesis.kinds = tuple(faults)
        for w in workers:
            w.start()
        try:
            nemesis.run(duration, stop_nemesis)
        finally:
            nemesis.heal_all()
        report.schedule = nemesis.schedule
        report.problems += nemesis.problems
        healed = rec.now()
        log(f"healed at {healed:.1f}s after {len(nemesis.schedule)} faults")
        try:
            cluster.leader(timeout=30)
            for m in cluster.members:
                m.wait_ready(timeout=20)
        except ServerError as e:
            report.problems.append(f"no leader / not serving 30s after healing everything: {e}")
        time.sleep(recovery)
        stop_clients.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                report.problems.append(f"{w.name} still running 10s after being stopped (a hung request?)")
            if w.crash is not None:
                report.problems.append(f"{w.name} crashed: {w.crash!r}")
        with rec.lock:
            report.recovered_ops = sum(1 for op in rec.ops if op.ret is not None and op.call > healed)
        if report.recovered_ops == 0:
            report.problems.append("no operation succeeded after healing")
        final_reads(cluster, key_names, rec, report)
        report.history = list(rec.ops)
        report.errors = rec.errors
        checked = time.monotonic()
        report.result = check(report.history)
        report.check_took = time.monotonic() - checked
    finally:
        cluster.stop()
        report.fault_switch_applied = sum(
            m.log_path.read_text(errors="replace").count("peer_faults_injected")
            for m in cluster.members
            if m.log_path.exists()
        )
        report.took = time.monotonic() - started
    return report


def final_reads(cluster: Cluster, keys: list[str], rec: Recorder, report: RunReport) -> None:
    """Read every key from every member, linearizably (into the history) then serializably."""
    for mode in ("linearizable", "serializable"):
        for m in cluster.members:
            values: dict[str, str | None] = {}
            with grpc.insecure_channel(m.endpoint) as channel:
                stub = rpc_pb2_grpc.KVStub(channel)
                for key in keys:
                    deadline = time.monotonic() + 15
                    while True:
                        call = rec.now()
                        try:
                            request = rpc_pb2.RangeRequest(
                                key=key.encode(), serializable=mode == "serializable"
                            )
                            value = _value(stub.Range(request, timeout=2).kvs)
                        except grpc.RpcError as exc:
                            if time.monotonic() > deadline:
                                report.problems.append(
                                    f"final {mode} read of {key} on {m.name} failed: {exc}"
                                )
                                break
                            time.sleep(0.2)
                            continue
                        if mode == "linearizable":
                            rec.add(Op(f"final-{m.name}", "get", key, None, value, call, rec.now()))
                        values[key] = value
                        break
            report.final.setdefault(mode, {})[m.name] = values
    for key in keys:
        seen = {
            f"{mode} {name}": vals.get(key, "<no answer>")
            for mode, members in report.final.items()
            for name, vals in members.items()
        }
        if len(set(seen.values())) != 1:
            report.problems.append(f"members disagree on the final value of {key}: {seen}")
