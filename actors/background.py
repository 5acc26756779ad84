"""A helper thread for work that releases the GIL (an fsync, a RocksDB compaction), so the core
loop keeps turning while the disk works.

The loop polls ``done``, an inproc PAIR socket: each finished run sends one message there, the
bytes the job returned. The thread touches nothing but the job and its end of the socket pair.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable

import zmq

_ids = itertools.count()


class BackgroundJob:
    """Runs ``job`` once per :meth:`request`, in order, on one helper thread."""

    def __init__(self, ctx: zmq.Context, name: str, job: Callable[[], bytes]) -> None:
        address = f"inproc://cairn/{name}-{next(_ids)}"
        self.done = ctx.socket(zmq.PAIR)
        self.done.bind(address)
        self._signal = ctx.socket(zmq.PAIR)  # used only by the thread
        self._signal.connect(address)
        self._job = job
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Run the job (after the runs already requested); ``done`` receives its result."""
        self._requests.put(True)

    def _run(self) -> None:
        while self._requests.get():
            self._signal.send(self._job())

    def close(self) -> None:
        """Let the runs requested so far finish, then stop the thread."""
        self._requests.put(False)
        self._thread.join()
        self._signal.close(linger=0)
        self.done.close(linger=0)
