"""The raft log's fsync on a helper thread, so the core loop keeps batching while the disk works.

rocksdict holds the GIL through a synced write, which would stop the whole core process for each
fsync (~0.2-1 ms here). ``flush_wal(sync=True)`` releases it, so the raft actor writes a Ready's
entries without sync, asks this thread to fsync, and goes on receiving proposals, applying and
serving reads; the thread signals completion on an inproc socket the loop polls, and only then
does the raft actor send what depends on those entries (messages, commits). This is group commit
with pipelining: everything proposed during one fsync goes into the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq
from prometheus_client import Histogram

from actors.background import BackgroundJob


class LogSyncer(BackgroundJob):
    """``request()`` fsyncs the log; ``done`` becomes readable when it has finished."""

    def __init__(self, ctx: zmq.Context, sync: Callable[[], None], timing: Histogram) -> None:
        def job() -> bytes:
            start = time.perf_counter()
            sync()
            timing.observe(time.perf_counter() - start)  # etcd_disk_wal_fsync_duration_seconds
            return b""

        super().__init__(ctx, "raft-log-sync", job)
