"""Point-in-time checkpoints of a member's kv DB for Maintenance.Snapshot (and raft snapshot sends).

The storage actor only *takes* a checkpoint (a RocksDB checkpoint hard-links the SST files: a few
milliseconds whatever the DB's size) and answers with a :func:`ticket`: the checkpoint directory
and the snapshot header. Whoever asked — the frontend process serving ``etcdctl snapshot save`` —
reads the files and streams them, then deletes the directory, so a large snapshot never stalls the
core's loop. Checkpoints live under ``data-dir/member/snapshots``; ones left by a frontend that
died mid-stream are removed when the core starts.
"""

from __future__ import annotations

import os
import shutil

from actors.protocol import pack_blobs, unpack_blobs
from actors.storage.backend import Backend
from actors.storage.snapshot import SnapshotMeta, checkpoint_files, decode_header


def checkpoints_dir(data_dir: str) -> str:
    return os.path.abspath(os.path.join(data_dir, "member", "snapshots"))


def clear_checkpoints(data_dir: str) -> None:
    """Remove checkpoints nobody will stream any more (the core restarted)."""
    shutil.rmtree(checkpoints_dir(data_dir), ignore_errors=True)


def take_checkpoint(
    backend: Backend,
    directory: str,
    revision: int,
    compact_revision: int,
    keys: int,
    member_id: int,
    cluster_id: int,
) -> SnapshotMeta:
    """Checkpoint ``backend`` (its pending batch must be committed) into the new ``directory``."""
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    backend.checkpoint(directory)
    return SnapshotMeta(
        revision=revision,
        compact_revision=compact_revision,
        keys=keys,
        applied_index=backend.applied_index,
        member_id=member_id,
        cluster_id=cluster_id,
        files=checkpoint_files(directory),
    )


def ticket(directory: str, meta: SnapshotMeta) -> bytes:
    """The answer to a Method.SNAPSHOT request: where the checkpoint is and its snapshot header."""
    return pack_blobs((directory.encode(), meta.encode()))


def read_ticket(body: bytes) -> tuple[str, SnapshotMeta]:
    directory, header = unpack_blobs(body)
    return directory.decode(), decode_header(header)
