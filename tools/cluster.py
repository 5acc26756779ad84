"""``tools/cluster``: start, inspect, kill and stop a local cairn cluster of N members on loopback.

Each member gets its own data dir and log file under ``--dir`` (default ``data/cluster``) and the
pid of its supervisor in ``<name>.pid``, so every later command acts on exactly the processes this
tool started. Member i (1-based) listens for clients on ``i*10000+2379`` (2379 for n1) and for
peers on ``i*10000+2380``, like ``configs/cluster/``. ``join n4 [--learner]`` adds a member the
etcd way: ``etcdctl member add`` through the running members, then starts it with the ``ETCD_*``
settings that command prints (``initial-cluster-state existing``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ports(i: int) -> tuple[int, int]:
    base = 0 if i == 1 else i * 10000
    return base + 2379, base + 2380


def member_args(i: int, n: int, root: Path) -> list[str]:
    client, peer = ports(i)
    cluster = ",".join(f"n{j}=http://127.0.0.1:{ports(j)[1]}" for j in range(1, n + 1))
    return [
        "--name", f"n{i}",
        "--data-dir", str(root / f"n{i}"),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", cluster,
        "--initial-cluster-token", "cairn-local",
    ]  # fmt: skip


def pid_of(root: Path, name: str) -> int | None:
    try:
        pid = int((root / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def cairn_binary() -> list[str]:
    venv = REPO / ".venv" / "bin" / "cairn"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "node"]


def start(root: Path, n: int, only: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        name = f"n{i}"
        if only and name not in only:
            continue
        if pid_of(root, name):
            print(f"{name}: already running (pid {pid_of(root, name)})")
            continue
        log = open(root / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            cairn_binary() + member_args(i, n, root), stdout=log, stderr=log, start_new_session=True
        )
        (root / f"{name}.pid").write_text(str(proc.pid))
        log_path = root / f"{name}.log"
        print(f"{name}: started, pid {proc.pid}, client 127.0.0.1:{ports(i)[0]}, log {log_path}")


def join(root: Path, n: int, name: str, learner: bool) -> None:
    """``etcdctl member add`` on the cluster of n1..nN, then start ``name`` with what it printed."""
    i = int(name.lstrip("n"))
    client, peer = ports(i)
    endpoints = ",".join(f"127.0.0.1:{ports(j)[0]}" for j in range(1, n + 1))
    add = [
        "etcdctl",
        f"--endpoints={endpoints}",
        "member",
        "add",
        name,
        f"--peer-urls=http://127.0.0.1:{peer}",
    ]
    # a cluster just started may not have elected a leader yet, or have had its peers connected for
    # the 5 s etcd's strict reconfig check asks ("unhealthy cluster")
    deadline = time.monotonic() + 30
    while True:
        added = subprocess.run([*add, *(["--learner"] if learner else [])], capture_output=True, text=True)
        transient = "no leader" in added.stderr or "unhealthy cluster" in added.stderr
        if added.returncode == 0 or not transient or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(added.stdout or added.stderr.splitlines()[-1], end="\n" if added.returncode else "")
    if added.returncode:
        raise SystemExit(added.returncode)
    env = dict(os.environ, **dict(re.findall(r'^(ETCD_\w+)="(.*)"$', added.stdout, re.M)))
    env.update(
        ETCD_DATA_DIR=str(root / name),
        ETCD_LISTEN_CLIENT_URLS=f"http://127.0.0.1:{client}",
        ETCD_ADVERTISE_CLIENT_URLS=f"http://127.0.0.1:{client}",
        ETCD_LISTEN_PEER_URLS=f"http://127.0.0.1:{peer}",
        ETCD_INITIAL_CLUSTER_TOKEN="cairn-local",
    )
    log = open(root / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(cairn_binary(), stdout=log, stderr=log, env=env, start_new_session=True)
    (root / f"{name}.pid").write_text(str(proc.pid))
    print(f"{name}: started, pid {proc.pid}, client 127.0.0.1:{client}, log {root / f'{name}.log'}")


def signal_members(root: Path, names: list[str], sig: int) -> None:
    for name in names:
        pid = pid_of(root, name)
        if pid is None:
            print(f"{name}: not running")
            continue
        os.killpg(pid, sig)
        print(f"{name}: sent {signal.Signals(sig).name} to pid {pid}")


def status(root: Path, n: int) -> None:
    endpoints = ",".join(f"127.0.0.1:{ports(i)[0]}" for i in range(1, n + 1))
    for i in range(1, n + 1):
        pid = pid_of(root, f"n{i}")
        print(f"n{i}: {'running, pid ' + str(pid) if pid else 'stopped'}")
    subprocess.run(["etcdctl", f"--endpoints={endpoints}", "endpoint", "status", "-w", "table"], check=False)


def main() -> None:
    p = argparse.ArgumentParser(prog="tools/cluster", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["start", "stop", "status", "kill", "pause", "resume", "join"])
    p.add_argument("members", nargs="*", help="member names (n1, n2...); default: all")
    p.add_argument("-n", "--size", type=int, default=3)
    p.add_argument("--dir", type=Path, default=REPO / "data" / "cluster")
    p.add_argument("--learner", action="store_true", help="join: add the member as a learner")
    args = p.parse_args()
    names = args.members or [f"n{i}" for i in range(1, args.size + 1)]
    if args.command == "start":
        start(args.dir, args.size, args.members)
    elif args.command == "join":
        for name in args.members:
            join(args.dir, args.size, name, args.learner)
    elif args.command == "status":
        status(args.dir, args.size)
    elif args.command == "stop":
        signal_members(args.dir, names, signal.SIGTERM)
        time.sleep(0.5)
    else:
        sig = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "resume": signal.SIGCONT}[args.command]
        signal_members(args.dir, names, sig)


if __name__ == "__main__":
    main()
