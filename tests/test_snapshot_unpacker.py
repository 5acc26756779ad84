"""The follower's snapshot unpacking on a helper thread (actors/raft/unpacker.py): a received file
is extracted off the loop, results come back in order on ``done``, a damaged file is refused and
leaves nothing behind, and the thread does not hold the caller while it works."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import test_snapshot_file as files
import zmq

from actors.raft.unpacker import SnapshotUnpacker
from actors.storage.backend import Backend

snapshot_file = files.snapshot_file  # the fixture: a real snapshot file and the rows it holds


def _result(unpacker: SnapshotUnpacker) -> bytes:
    assert unpacker.done.poll(30_000), "no result within 30 s"
    return unpacker.done.recv()


def test_unpacks_in_order_and_refuses_a_damaged_file(
    snapshot_file: tuple[Path, dict], tmp_path: Path
) -> None:
    path, expected = snapshot_file
    good = tmp_path / "good.db"
    bad = tmp_path / "bad.db"
    shutil.copy(path, good)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    ctx = zmq.Context()
    unpacker = SnapshotUnpacker(ctx)
    try:
        unpacker.unpack(str(good), str(tmp_path / "out-good"))
        unpacker.unpack(str(bad), str(tmp_path / "out-bad"))
        assert _result(unpacker) == b""
        refused = _result(unpacker).decode()
        assert refused  # the reason, for the log
        assert not (tmp_path / "out-bad").exists()
        assert not good.exists() and not bad.exists()  # the received files are consumed either way
        restored = Backend(str(tmp_path / "out-good"))
        try:
            assert files._rows(restored) == expected
        finally:
            restored.close()
    finally:
        unpacker.close()
        ctx.term()


def test_unpacking_runs_on_its_own_thread(snapshot_file: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = snapshot_file
    ctx = zmq.Context()
    unpacker = SnapshotUnpacker(ctx)
    try:
        assert unpacker._thread is not threading.current_thread()
        unpacker.unpack(str(path), str(tmp_path / "out"))
        assert _result(unpacker) == b""
        assert os.path.isdir(tmp_path / "out")
    finally:
        unpacker.close()
        ctx.term()
