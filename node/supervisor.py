"""The supervisor: the ``cairn`` process that starts, restarts and stops the core and frontends.

It holds no data and serves nothing itself. Children run with PR_SET_PDEATHSIG so that a
supervisor killed with SIGKILL takes its children with it (no orphan keeps the data dir locked).
A child that dies is restarted with backoff; SIGTERM/SIGINT stop the frontends first (no new
requests), then the core (which finishes its turn and closes RocksDB cleanly).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import structlog
from prometheus_client import multiprocess

from node.config import NodeConfig

log = structlog.get_logger()

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)
EXIT_FATAL = 3  # a child that exits with this cannot start (port in use, bad config): stop the node


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_tcp_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@dataclass
class Child:
    module: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0


class Supervisor:
    def __init__(self, config: NodeConfig) -> None:
        if not config.core_url:
            config = replace(config, core_url=free_tcp_url())
        self.config = config
        # prometheus_client's multiprocess mode: both children write their figures here, and the
        # REST frontend's /metrics reads them all (emptied at start: old pids' files are stale)
        self.metrics_dir = os.path.join(os.path.abspath(config.data_dir), "metrics")
        self.env = dict(
            os.environ, CAIRN_CONFIG=config.to_json().decode(), PROMETHEUS_MULTIPROC_DIR=self.metrics_dir
        )
        self.children = [Child("node.core"), Child("node.frontend")]
        self.stopping = False

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            [sys.executable, "-m", child.module], env=self.env, preexec_fn=_die_with_parent
        )
        child.started = time.monotonic()
        log.info("child_started", module=child.module, pid=child.process.pid)

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        os.makedirs(self.config.data_dir, exist_ok=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        os.makedirs(self.metrics_dir)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for child in self.children:
            self._start(child)
        log.info(
            "node_started",
            name=self.config.name,
            data_dir=self.config.data_dir,
            clients=self.config.listen_client_urls,
        )
        while not self.stopping:
            time.sleep(0.1)
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is None or self.stopping:
                    continue
                if code == EXIT_FATAL:
                    log.error("child_failed_to_start", module=child.module)
                    self.shutdown()
                    return 1
                if time.monotonic() - child.started > 30:
                    child.restarts = 0
                delay = RESTART_BACKOFF[min(child.restarts, len(RESTART_BACKOFF) - 1)]
                log.error("child_exited", module=child.module, code=code, restart_in=delay)
                child.restarts += 1
                multiprocess.mark_process_dead(child.process.pid, self.metrics_dir)
                time.sleep(delay)
                self._start(child)
        return self.shutdown()

    def shutdown(self, grace: float = 10.0) -> int:
        """Stop the frontends, then the core; SIGKILL whatever outlives ``grace``."""
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(grace)
                except subprocess.TimeoutExpired:
                    log.error("child_killed", module=child.module, pid=child.process.pid)
                    child.process.kill()
                    child.process.wait()
        log.info("node_stopped")
        return 0
