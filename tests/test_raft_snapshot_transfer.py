"""Snapshot transfer pieces without sockets: chunks within a window, acknowledgements, a follower
that refuses chunks out of order, and a damaged file refused when it is unpacked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.raft import snapshots
from actors.raft.snapshots import Incoming, Outgoing, parse_ack
from actors.storage.snapshot import SnapshotError, SnapshotMeta, checkpoint_files, extract


def checkpoint(path: Path, sizes: dict[str, int]) -> SnapshotMeta:
    path.mkdir()
    for name, size in sizes.items():
        (path / name).write_bytes(os.urandom(size))
    return SnapshotMeta(1, 0, 0, 42, 1, 2, files=checkpoint_files(str(path)))


def test_window_acks_and_a_verified_unpack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 1000)
    meta = checkpoint(tmp_path / "cp", {"000001.sst": 5500, "CURRENT": 16, "MANIFEST-000001": 700})
    out = Outgoing(9, 77, b"SNAPMSG", str(tmp_path / "cp"), meta, now=0.0)
    receiver = Incoming(str(tmp_path / "recv"))
    received = None
    rounds = 0
    while not out.finished:
        rounds += 1
        burst = []
        for frame in out.frames():
            burst.append(frame)
            out.sent()
        assert 0 < len(burst) <= snapshots.WINDOW
        for frame in burst:
            ack, done = receiver.on_chunk(frame)
            transfer, seq, ok = parse_ack(ack)
            assert (transfer, ok) == (77, True)
            out.on_ack(seq, now=rounds)
            received = done or received
    assert rounds > 1  # more chunks than one window
    assert received is not None and received.message == b"SNAPMSG"
    extract(received.path, str(tmp_path / "unpacked"))
    for name, _ in meta.files:
        assert (tmp_path / "unpacked" / name).read_bytes() == (tmp_path / "cp" / name).read_bytes()
    out.discard()
    assert not (tmp_path / "cp").exists()


def test_out_of_order_chunk_refused_and_stall_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 100)
    meta = checkpoint(tmp_path / "cp", {"a": 1000})
    out = Outgoing(9, 5, b"m", str(tmp_path / "cp"), meta, now=0.0)
    frames = []
    for frame in out.frames():
        frames.append(frame)
        out.sent()
    receiver = Incoming(str(tmp_path / "recv"))
    receiver.on_chunk(frames[0])
    ack, done = receiver.on_chunk(frames[2])  # frame 1 was lost
    assert parse_ack(ack) == (5, 2, False) and done is None
    assert not out.stalled(snapshots.STALL_TIMEOUT - 1) and out.stalled(snapshots.STALL_TIMEOUT + 1)
    receiver.close()
    assert not os.listdir(tmp_path / "recv")  # the partial file is gone


def test_damaged_transfer_refused_on_unpack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 300)
    meta = checkpoint(tmp_path / "cp", {"a": 2000})
    out = Outgoing(9, 5, b"m", str(tmp_path / "cp"), meta, now=0.0)
    receiver = Incoming(str(tmp_path / "recv"))
    received = None
    while not out.finished:
        for frame in out.frames():
            out.sent()
            if out.seq == 3:  # flip a byte of the third chunk's data on the way
                frame = frame[:-5] + bytes([frame[-5] ^ 1]) + frame[-4:]
            ack, done = receiver.on_chunk(frame)
            out.on_ack(parse_ack(ack)[1], 0.0)
            received = done or received
    with pytest.raises(SnapshotError):
        extract(received.path, str(tmp_path / "unpacked"))
    assert not (tmp_path / "unpacked").exists()
