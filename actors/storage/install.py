"""Swapping the kv DB directory for a raft snapshot's, so that a crash at any moment leaves one whole DB.

The storage actor closes its DB, then: ``kv`` -> ``kv.old``, the unpacked snapshot -> ``kv``, the
parent directory fsynced, ``kv.old`` removed. A crash after the first rename leaves no ``kv`` but a
``kv.old``: :func:`recover_swap` (run before the DB is opened) puts it back, and the member is
simply sent the snapshot again. The raft snapshot's metadata is stored in the new DB
(:data:`INSTALLED_SNAPSHOT`), so a restart that finds the DB ahead of the raft log completes the
raft side of the install.
"""

from __future__ import annotations

import os
import shutil

INSTALLED_SNAPSHOT = b"raft_snapshot"  # meta key: Snapshot.encode() of the last installed raft snapshot


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(kv_dir: str, new_dir: str) -> None:
    """Make ``new_dir`` the DB at ``kv_dir`` (the DB must be closed)."""
    old = kv_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(kv_dir, old)
    os.rename(new_dir, kv_dir)
    _fsync_dir(os.path.dirname(kv_dir))
    shutil.rmtree(old, ignore_errors=True)


def recover_swap(kv_dir: str) -> None:
    """Undo a swap a crash interrupted between its two renames."""
    old = kv_dir + ".old"
    if os.path.isdir(old):
        if not os.path.isdir(kv_dir):
            os.rename(old, kv_dir)
        else:
            shutil.rmtree(old, ignore_errors=True)
