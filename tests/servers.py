"""Start, stop and talk to real etcd and cairn nodes as subprocesses.

The same class runs both, with etcd's own flags, so that every test (and the differential and benchmark
tools) treats the two exactly alike: whatever differs in the results is the server, never the harness.

Processes are started in a new session (their own process group), so that stopping one by its pid also
stops any helper processes the node spawned; they are stopped by pid only, never by name, so a test can
never touch a process it did not start.  Every `Server` ever started is kept in `LIVE_SERVERS` until it
is stopped, so a fixture finalizer (or atexit, as a last resort) can stop whatever a failing test left.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
ETCD_BIN = os.environ.get("ETCD_BIN", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL_BIN", "/usr/bin/etcdctl")

#: Servers started and not yet stopped: the safety net that teardown (and atexit) sweeps.
LIVE_SERVERS: set[Server] = set()

_RESERVED_PORTS: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now and was not handed out before in this process.

    Remembering handed-out ports avoids giving the same port to the client and peer URLs of one node
    (or to two nodes) when the kernel reuses a just-released ephemeral port.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _RESERVED_PORTS:
            _RESERVED_PORTS.add(port)
            return port
    raise RuntimeError("could not find a free port")


def cairn_command() -> list[str]:
    """The argv prefix that starts a cairn node: $CAIRN_BIN, the venv's script, `cairn` on PATH, or -m node.

    The venv script is preferred over PATH so tests exercise this checkout even if another cairn is
    installed elsewhere.
    """
    override = os.environ.get("CAIRN_BIN")
    if override:
        return override.split()
    venv_bin = REPO / ".venv" / "bin" / "cairn"
    if venv_bin.exists():
        return [str(venv_bin)]
    on_path = shutil.which("cairn")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "node"]


def _range_request(key: bytes) -> bytes:
    """Hand-encode a minimal etcdserverpb.RangeRequest{key}, so readiness needs no generated stubs."""
    return b"\x0a" + _varint(len(key)) + key


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class ServerError(RuntimeError):
    """A node did not start or serve; the message carries the tail of its log."""


class EtcdctlError(subprocess.CalledProcessError):
    """etcdctl exited non-zero; unlike CalledProcessError, its str() shows stdout and stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


class Server:
    """One etcd-flag-compatible node (`kind` is "etcd" or "cairn") running as a subprocess.

    Ports and the data dir are fixed at construction, so `restart()` brings back the same member on the
    same data (the point of crash/recovery tests).
    """

    def __init__(
        self,
        kind: str = "etcd",
        base_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = "n1",
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ready_timeout: float = 30.0,
        client_tls: tuple[str, str, str] | None = None,
    ) -> None:
        if kind not in ("etcd", "cairn"):
            raise ValueError(f"unknown server kind {kind!r}")
        self.kind = kind
        self.name = name
        self._own_base = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-")) if base_dir is None else Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.base_dir / f"{name}.data"
        self.log_path = self.base_dir / f"{name}.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        if command is None:
            command = [ETCD_BIN] if kind == "etcd" else cairn_command()
        self.command = list(command)
        self.extra_args = list(extra_args)
        self.env = env
        self.ready_timeout = ready_timeout
        self.client_tls = client_tls  # (ca, cert, key) a client uses; the URLs become https
        self.initial_cluster = f"{name}={self.peer_url}"  # a Cluster sets every member's
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """host:port of the client (gRPC) listener, the form etcdctl's --endpoints and grpc take."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.client_tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    def tls_flags(self) -> list[str]:
        """etcdctl's flags for this node's client TLS (none for a plain node)."""
        if not self.client_tls:
            return []
        ca, cert, key = self.client_tls
        return [f"--cacert={ca}", f"--cert={cert}", f"--key={key}"]

    def channel(self) -> grpc.Channel:
        """A gRPC channel to the client port, with TLS when the node has it."""
        if not self.client_tls:
            return grpc.insecure_channel(self.endpoint)
        ca, cert, key = (Path(p).read_bytes() for p in self.client_tls)
        return grpc.secure_channel(self.endpoint, grpc.ssl_channel_credentials(ca, key, cert))

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError(f"{self.kind} {self.name} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        """The full command line: etcd's own flags, identical for etcd and cairn."""
        return [
            *self.command,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            *self.extra_args,
        ]  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> Server:
        """Spawn the node (appending to its log) and, unless wait=False, block until it serves."""
        if self.running:
            raise ServerError(f"{self.kind} {self.name} already running (pid {self.pid})")
        env = dict(os.environ)
        env.update(self.env or {})
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO) if self.kind == "cairn" else str(self.base_dir),
                env=env,
                start_new_session=True,
            )
        LIVE_SERVERS.add(self)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll a linearizable gRPC Range until it succeeds, the process exits, or the timeout passes.

        A linearizable read (what `etcdctl endpoint health` also does) proves a leader is elected and the
        KV service answers, not merely that the port is open.
        """
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        with self.channel() as channel:
            rng = channel.unary_unary("/etcdserverpb.KV/Range")
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    raise ServerError(
                        f"{self.kind} {self.name} exited with code {code} before serving\n{self.log_tail()}"
                    )
                try:
                    rng(_range_request(b"health"), timeout=1.0)
                    return
                except grpc.RpcError as exc:
                    if exc.details() == "etcdserver: user name is empty":
                        return  # auth is on: the read reached the permission check (etcd's /health agrees)
                    last_error = f"{exc.code()}: {exc.details()}"
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.kind} {self.name} (pid {self.pid}) not serving on {self.endpoint} after "
                        f"{timeout:.0f}s (last error: {last_error})\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def _signal(self, sig: int) -> None:
        """Signal the node's process group (== its pid, as it leads a new session), else just the pid."""
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code (None if never started)."""
        if self._proc is None:
            return None
        proc = self._proc
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(10)
        else:
            # The leader may be gone while helpers in its group live on: sweep the group anyway.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        LIVE_SERVERS.discard(self)
        return proc.returncode

    def kill9(self) -> None:
        """Crash the node: SIGKILL with no chance to flush, as a power cut would."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
        self._proc.wait(10)
        LIVE_SERVERS.discard(self)

    def restart(self, *, crash: bool = False, wait: bool = True) -> Server:
        """Stop (or kill -9 when crash=True) and start again on the same data dir and ports."""
        if crash:
            self.kill9()
        else:
            self.stop()
        return self.start(wait=wait)

    def cleanup(self) -> None:
        """Stop the node and remove its directory if the harness created it."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"<Server {self.kind} {self.name} {self.endpoint} pid={pid}>"

    # -- inspection ------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's combined stdout/stderr, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the node and its helper processes, from /proc."""
        return tree_cpu_seconds(self.pid)

    def etcdctl(
        self,
        *args: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run `etcdctl --endpoints=<this node> ARGS` with the v3 API; raise EtcdctlError if check fails.

        Text mode decodes with surrogateescape so non-UTF-8 output (-w protobuf) never raises.
        """
        return run_etcdctl(
            self.endpoint, *self.tls_flags(), *args, input=input, check=check, timeout=timeout, text=text
        )


class Cluster:
    """N members of one cluster (etcd or cairn) on loopback, started together, stopped by pid."""

    def __init__(
        self, kind: str, size: int, base_dir: str | os.PathLike[str], extra_args: Sequence[str] = ()
    ):
        self.members = [
            Server(
                kind,
                Path(base_dir) / f"n{i}",
                name=f"n{i}",
                extra_args=[*extra_args, "--initial-cluster-token", "test-cluster"],
            )
            for i in range(1, size + 1)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> Cluster:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        return self

    def status(self, member: Server, timeout: float = 2.0) -> tuple[int, int, int] | None:
        """(member id, leader id, raft index) from Maintenance.Status, or None if it does not answer."""
        from actors.proto import rpc_pb2

        with grpc.insecure_channel(member.endpoint) as channel:
            call = channel.unary_unary("/etcdserverpb.Maintenance/Status")
            try:
                resp = rpc_pb2.StatusResponse.FromString(call(b"", timeout=timeout))
            except grpc.RpcError:
                return None
        return resp.header.member_id, resp.leader, resp.raftIndex

    def leader(self, timeout: float = 10.0, among: Sequence[Server] | None = None) -> Server:
        """The running member that is leader, as every running member agrees; waits for one."""
        deadline = time.monotonic() + timeout
        members = [m for m in (among or self.members) if m.running]
        while True:
            statuses = {m.name: self.status(m) for m in members}
            leaders = {s[1] for s in statuses.values() if s}
            by_id = {s[0]: m for m, s in zip(members, statuses.values(), strict=True) if s}
            if len(leaders) == 1 and None not in statuses.values():
                leader = by_id.get(leaders.pop())
                if leader is not None:
                    return leader
            if time.monotonic() > deadline:
                raise ServerError(f"no agreed leader after {timeout}s: {statuses}")
            time.sleep(0.1)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def assert_same_on_etcd_and_cairn(base: Path, scenario: Callable[[Server], list[object]]) -> None:
    """Run ``scenario`` on a fresh real etcd, then on a fresh cairn node: every observation it
    returns must be the same (the differential tests' shape)."""
    with Server("etcd", base / "etcd") as etcd:
        expected = scenario(etcd)
    with Server("cairn", base / "cairn") as cairn:
        got = scenario(cairn)
    for want, have in zip(expected, got, strict=True):
        assert have == want, (have, want)


def run_etcdctl(
    endpoint: str,
    *args: str,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 30.0,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run etcdctl against `endpoint` (host:port) with ETCDCTL_API=3 and a neutral environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    cmd = [ETCDCTL_BIN, f"--endpoints={endpoint}", *args]
    if text:
        if isinstance(input, bytes):
            input = input.decode("utf-8", "surrogateescape")
        result = subprocess.run(
            cmd, input=input, capture_output=True, env=env, timeout=timeout,
            encoding="utf-8", errors="surrogateescape",
        )  # fmt: skip
    else:
        if isinstance(input, str):
            input = input.encode()
        result = subprocess.run(cmd, input=input, capture_output=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise EtcdctlError(result.returncode, cmd, result.stdout, result.stderr)
    return result


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces), 0-based from state."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` alone in seconds (stat fields 14 and 15)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and all its live descendants, plus the children they already reaped.

    A node may fan its work out to helper processes; counting only the leader would flatter it.  Each
    process contributes utime+stime+cutime+cstime: a reaped child is counted once, in its parent.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        todo.extend(children.get(p, ()))
    return total / os.sysconf("SC_CLK_TCK")


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet (the teardown safety net)."""
    for server in list(LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop(grace=5.0)
        LIVE_SERVERS.discard(server)


atexit.register(stop_all)
