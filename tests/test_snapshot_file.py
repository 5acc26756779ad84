"""The snapshot file format (actors/storage/snapshot.py): round trip through a real RocksDB
checkpoint, and refusal of every truncated or altered file."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from actors.storage.backend import KV, LEASE, META, Backend
from actors.storage.snapshot import (
    ALIGN,
    CHECKSUM_SIZE,
    SnapshotError,
    SnapshotMeta,
    checkpoint_files,
    extract,
    read_meta,
    write_snapshot,
)


def _fill(backend: Backend, rows: int) -> None:
    for i in range(rows):
        backend.put_kv(i.to_bytes(16, "big"), b"value-%d" % i * 10)
    backend.put(LEASE, (7).to_bytes(8, "big"), b"lease-row")
    backend.put(META, b"compact_revision", (3).to_bytes(8, "big"))
    backend.commit(rows)


def _rows(backend: Backend) -> dict[str, list[tuple[bytes, bytes]]]:
    return {cf: list(backend.scan(cf)) for cf in (KV, LEASE, META)}


@pytest.fixture
def snapshot_file(tmp_path: Path) -> tuple[Path, dict]:
    backend = Backend(str(tmp_path / "db"))
    _fill(backend, 500)
    expected = _rows(backend)
    backend.checkpoint(str(tmp_path / "ckpt"))
    _fill(backend, 600)  # written after the checkpoint: must not be in the snapshot
    backend.close()
    meta = SnapshotMeta(501, 3, 500, 500, 1, 2, checkpoint_files(str(tmp_path / "ckpt")))
    path = tmp_path / "snap.db"
    with open(path, "wb") as f:
        write_snapshot(meta, str(tmp_path / "ckpt"), f)
    return path, expected


def test_round_trip(snapshot_file: tuple[Path, dict], tmp_path: Path) -> None:
    path, expected = snapshot_file
    size = os.path.getsize(path)
    assert size % ALIGN == CHECKSUM_SIZE  # what etcdctl snapshot save insists on
    meta = read_meta(str(path))
    assert (meta.revision, meta.compact_revision, meta.keys, meta.applied_index) == (501, 3, 500, 500)
    assert meta.file_size == size
    seen = []
    extracted = extract(str(path), str(tmp_path / "out"), progress=seen.append)
    assert extracted == meta
    assert sum(seen) == size  # header, files, padding and checksum: the bar ends at 100%
    restored = Backend(str(tmp_path / "out"))
    try:
        assert _rows(restored) == expected
        assert restored.applied_index == 500
    finally:
        restored.close()


@pytest.mark.parametrize("cut", [1, CHECKSUM_SIZE, ALIGN, ALIGN + CHECKSUM_SIZE, "half", "all-but-header"])
def test_truncated_refused(snapshot_file: tuple[Path, dict], tmp_path: Path, cut: int | str) -> None:
    path, _ = snapshot_file
    data = path.read_bytes()
    keep = {"half": len(data) // 2, "all-but-header": 100}[cut] if isinstance(cut, str) else len(data) - cut
    path.write_bytes(data[:keep])
    with pytest.raises(SnapshotError, match=r"truncated|corrupt"):
        read_meta(str(path))
    with pytest.raises(SnapshotError, match=r"truncated|corrupt"):
        extract(str(path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bit_flips_refused(snapshot_file: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = snapshot_file
    data = path.read_bytes()
    seed = random.randrange(1 << 32)
    print("seed", seed)
    rng = random.Random(seed)
    # the header, the files, the padding and the checksum itself
    positions = [0, 9, 20, len(data) - 1, len(data) - CHECKSUM_SIZE - 1]
    positions += [rng.randrange(len(data)) for _ in range(12)]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        with pytest.raises(SnapshotError):
            read_meta(str(path))
        with pytest.raises(SnapshotError):
            extract(str(path), str(tmp_path / "out"))
        assert not (tmp_path / "out").exists(), pos


def test_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"x" * (ALIGN + CHECKSUM_SIZE))
    with pytest.raises(SnapshotError, match="sha256"):
        read_meta(str(path))
    with pytest.raises(SnapshotError, match="not a cairn snapshot"):
        read_meta(str(path), verify=False)
    path.write_bytes(b"")
    with pytest.raises(SnapshotError, match="truncated"):
        read_meta(str(path))


def test_header_survives_unverified_read(snapshot_file: tuple[Path, dict]) -> None:
    """--skip-hash-check reads the header without hashing; a bad header is still a clear error."""
    path, _ = snapshot_file
    assert read_meta(str(path), verify=False).revision == 501
    data = bytearray(path.read_bytes())
    data[14] ^= 0xFF  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="header"):
        read_meta(str(path), verify=False)


def test_meta_encode_decode_and_sizes() -> None:
    meta = SnapshotMeta(10, -1, 3, 12, 5, 6, (("CURRENT", 16), ("000009.sst", 1000)))
    out = io.BytesIO()
    assert meta.payload_size % ALIGN == 0
    assert meta.payload_size >= len(meta.encode()) + 1016
    from actors.storage.snapshot import decode_header

    out.write(meta.encode() + b"trailing bytes")
    assert decode_header(out.getvalue()) == meta
    bad = SnapshotMeta(1, 0, 0, 0, 0, 0, (("../evil", 1),)).encode()
    with pytest.raises(SnapshotError, match="bad file entry"):
        decode_header(bad)


def test_live_key_count_follows_puts_and_deletes(tmp_path: Path) -> None:
    """A snapshot's "total keys": live keys only, deleted ones with history left out."""
    from actors.proto import rpc_pb2
    from actors.protocol import Method
    from actors.storage.mvcc import MvccStore

    backend = Backend(str(tmp_path / "db"))
    try:
        store = MvccStore(backend, lease_exists=lambda _: False)
        for i in range(20):
            store.apply(Method.PUT, rpc_pb2.PutRequest(key=b"k%d" % (i % 8), value=b"v").SerializeToString())
        store.apply(
            Method.DELETE_RANGE, rpc_pb2.DeleteRangeRequest(key=b"k1", range_end=b"k4").SerializeToString()
        )
        store.apply(Method.PUT, rpc_pb2.PutRequest(key=b"k2", value=b"again").SerializeToString())
        everything = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True)
        assert store.live_key_count == store.range(everything).count == 6
    finally:
        backend.close()
