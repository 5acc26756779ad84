"""Defragment on a helper thread, so the member keeps serving while RocksDB compacts.

etcd's Defragment rewrites its bolt file under the backend's lock: the member stops serving for
the whole copy. cairn's equivalent, a full manual compaction of every column family, runs inside
RocksDB's C++ code with the GIL released (rocksdict), and RocksDB lets other threads read and
write meanwhile; so the storage actor hands it to a helper thread and goes on applying entries and
serving reads. Requests that arrive during a run are answered by the next run (a defragment asked
after a large delete must compact after that delete), and one run serves all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
import zmq
from prometheus_client import Histogram

from actors.background import BackgroundJob

log = structlog.get_logger()


class Defragmenter:
    """One run at a time; ``done`` becomes readable when a run has finished."""

    def __init__(self, ctx: zmq.Context, defragment: Callable[[], None], timing: Histogram) -> None:
        def job() -> bytes:
            start = time.perf_counter()
            try:
                defragment()
            except Exception as e:  # a disk error: the requests fail, the member goes on
                log.error("defragment_failed", error=str(e))
                return f"cairn: defragment failed: {e}".encode()
            seconds = time.perf_counter() - start
            timing.observe(seconds)  # etcd_disk_backend_defrag_duration_seconds
            log.info("defragment_finished", seconds=round(seconds, 3))
            return b""

        self._thread = BackgroundJob(ctx, "defragment", job)
        self.done = self._thread.done
        self.running: list[int] = []  # request keys the run in progress answers
        self.waiting: list[int] = []  # request keys that arrived during it: the next run's

    def request(self, key: int) -> None:
        """Defragment for request ``key``: now, or right after the run in progress."""
        self.waiting.append(key)
        if not self.running:
            self._start()

    def _start(self) -> None:
        self.running, self.waiting = self.waiting, []
        self._thread.request()

    def finished(self, report: bytes) -> tuple[list[int], str | None]:
        """Take a report read from ``done``: ``(request keys answered, error text or None)``;
        starts the next run if requests are waiting."""
        answered = self.running
        self.running = []
        if self.waiting:
            self._start()
        return answered, report.decode() or None

    def close(self) -> None:
        """Wait for a run in progress (RocksDB must not be closed under it), then stop."""
        self._thread.close()
