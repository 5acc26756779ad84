"""The raft log's fsync: on the loop's thread when it has nothing else to do, else on a helper thread.

rocksdict holds the GIL through a synced write, which would stop the whole core process for each
fsync (~0.2-1 ms here). ``flush_wal(sync=True)`` releases it, so the raft actor writes a Ready's
entries without sync and asks for an fsync; only once it has finished does the raft actor send what
depends on those entries (messages, commits). When requests keep arriving, the helper thread
fsyncs while the loop goes on receiving proposals, applying and serving reads: group commit with
pipelining, everything proposed during one fsync goes into the next. When nothing else is ready
(a lone client, a follower waiting for its own disk) the loop fsyncs itself (``sync_here``): a
thread wake to start the fsync and another to report it cost more than the fsync on a busy
machine, and they sit on every request's path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq
from prometheus_client import Histogram

from actors.background import BackgroundJob


class LogSyncer(BackgroundJob):
    """``request()`` fsyncs the log on the thread (``done`` becomes readable when it has finished);
    ``sync_here()`` fsyncs it on the caller's."""

    def __init__(self, ctx: zmq.Context, sync: Callable[[], None], timing: Histogram) -> None:
        def job() -> bytes:
            start = time.perf_counter()
            sync()
            timing.observe(time.perf_counter() - start)  # etcd_disk_wal_fsync_duration_seconds
            return b""

        super().__init__(ctx, "raft-log-sync", job)

    def sync_here(self) -> None:
        self._job()
