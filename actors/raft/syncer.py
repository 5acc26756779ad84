"""The raft log's fsync on a helper thread, so the core loop keeps batching while the disk works.

rocksdict holds the GIL through a synced write, which would stop the whole core process for each
fsync (~0.2-1 ms here). ``flush_wal(sync=True)`` releases it, so the raft actor writes a Ready's
entries without sync, asks this thread to fsync, and goes on receiving proposals, applying and
serving reads; the thread signals completion on an inproc socket the loop polls, and only then
does the raft actor send what depends on those entries (messages, commits). This is group commit
with pipelining: everything proposed during one fsync goes into the next.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable

import zmq
from prometheus_client import Histogram

_ids = itertools.count()


class LogSyncer:
    def __init__(self, ctx: zmq.Context, sync: Callable[[], None], timing: Histogram) -> None:
        address = f"inproc://cairn/raft-sync-{next(_ids)}"
        self.done = ctx.socket(zmq.PAIR)
        self.done.bind(address)
        self._signal = ctx.socket(zmq.PAIR)  # used only by the thread
        self._signal.connect(address)
        self._sync = sync
        self._timing = timing  # etcd_disk_wal_fsync_duration_seconds
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="raft-log-sync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """fsync now; ``done`` becomes readable when it has finished."""
        self._requests.put(True)

    def _run(self) -> None:
        while self._requests.get():
            start = time.perf_counter()
            self._sync()
            self._timing.observe(time.perf_counter() - start)
            self._signal.send(b"")

    def close(self) -> None:
        self._requests.put(False)
        self._thread.join()
        self._signal.close(linger=0)
        self.done.close(linger=0)
