"""A received snapshot is unpacked on a helper thread, not on the core loop.

Unpacking means reading the whole transferred file, hashing it and writing every checkpoint file
out again: seconds for a large database. On the loop that would stop heartbeats, proposals and
reads of the whole core process for as long, and a follower that is silent for an election
timeout makes the others campaign. File IO and sha256 release the GIL, so the thread and the loop
proceed together. Results come back in request order on ``done``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil

import zmq

from actors.background import BackgroundJob
from actors.storage.snapshot import SnapshotError, extract


class SnapshotUnpacker(BackgroundJob):
    """``unpack(path, target)`` extracts the snapshot file at ``path`` into ``target`` and deletes
    the file; ``done`` then receives b"" on success or the reason it failed."""

    def __init__(self, ctx: zmq.Context) -> None:
        self._work: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()

        def job() -> bytes:
            path, target = self._work.get()
            try:
                shutil.rmtree(target, ignore_errors=True)
                extract(path, target)
            except (SnapshotError, OSError) as e:
                return (str(e) or type(e).__name__).encode()
            finally:
                with contextlib.suppress(OSError):  # gone already: nothing to clean up
                    os.unlink(path)
            return b""

        super().__init__(ctx, "snapshot-unpack", job)

    def unpack(self, path: str, target: str) -> None:
        self._work.put((path, target))
        self.request()
