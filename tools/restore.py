"""``cairnctl snapshot restore``: the data dir of a member of a NEW cluster, from a snapshot file.

Accepts cairn's snapshot files and bolt files saved from a real etcd 3.4/3.5 (migration). The result
is ``data-dir/member/kv`` holding exactly the snapshot's keys, history, revisions, compaction and
leases, with its applied index reset to 0, and no raft log: the new member starts a fresh raft
log with the membership given by the flags (etcdutl's), as every member restored from the same
file does, so they all hold the same state at log index 0. The flags are checked as etcd checks
them (etcdserver's VerifyBootstrap), and a refused snapshot leaves no data dir behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from actors.storage.backend import Backend
from actors.storage.snapshot import MAGIC, Progress, SnapshotError, extract
from node.config import ConfigError, NodeConfig, split_urls
from tools.bbolt import BoltDB, is_bolt, map_file
from tools.etcd_snapshot import import_etcd

Bar = Callable[[str, int, str], Progress]  # (label, total, unit) -> a progress callback


class RestoreError(ValueError):
    """A restore that cannot be done; the message says why."""


@dataclass(slots=True, frozen=True)
class RestoreConfig:
    """etcdutl's restore flags, with its defaults."""

    snapshot: str
    data_dir: str = ""
    name: str = "default"
    initial_cluster: str = "default=http://localhost:2380"
    initial_cluster_token: str = "etcd-cluster"
    initial_advertise_peer_urls: str = "http://localhost:2380"
    skip_hash_check: bool = False

    @property
    def target(self) -> str:
        return self.data_dir or f"{self.name}.etcd"


@dataclass(slots=True, frozen=True)
class Contents:
    """What a snapshot brought into the new data dir."""

    source: str  # "cairn" or "etcd"
    revision: int
    compact_revision: int
    keys: int
    warnings: tuple[str, ...] = ()  # what was not imported, for the user to hear


@dataclass(slots=True, frozen=True)
class Restored:
    contents: Contents
    member_id: int
    cluster_id: int
    data_dir: str


def check_membership(cfg: RestoreConfig) -> NodeConfig:
    """The new member's configuration, refused with etcd's messages where etcd refuses it."""
    try:
        node = NodeConfig(
            name=cfg.name,
            data_dir=cfg.target,
            initial_cluster=cfg.initial_cluster,
            initial_cluster_token=cfg.initial_cluster_token,
            initial_advertise_peer_urls=cfg.initial_advertise_peer_urls,
        )
    except ConfigError as e:
        if "has no entry for this member's name" in str(e):
            raise RestoreError(
                f'couldn\'t find local name "{cfg.name}" in the initial cluster configuration'
            ) from None
        raise RestoreError(str(e)) from None
    peers = node.cluster_peers()
    urls = [url for member_urls in peers.values() for url in member_urls]
    if len(urls) != len(set(urls)):
        raise RestoreError(f"initial cluster {cfg.initial_cluster} has duplicate url")
    mine, advertised = set(peers[cfg.name]), set(split_urls(cfg.initial_advertise_peer_urls))
    if mine - advertised:
        missing = ",".join(f"{cfg.name}={url}" for url in sorted(mine - advertised))
        raise RestoreError(
            f"--initial-cluster has {missing} but missing from "
            f"--initial-advertise-peer-urls={','.join(sorted(advertised))}"
        )
    if advertised - mine:
        raise RestoreError(
            f"--initial-advertise-peer-urls has {','.join(sorted(advertised - mine))} but missing from "
            f"--initial-cluster={cfg.name}={','.join(sorted(advertised))}"
        )
    return node


def restore(cfg: RestoreConfig, bar: Bar | None = None) -> Restored:
    """Build the new member's data dir from ``cfg.snapshot``; raise RestoreError, SnapshotError or
    BoltError (all ValueErrors with a clear message) and leave nothing behind on failure."""
    node = check_membership(cfg)
    target = cfg.target
    if os.path.exists(target):
        raise RestoreError(f'data-dir "{target}" exists')
    try:
        with open(cfg.snapshot, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise RestoreError(f"cannot read snapshot {cfg.snapshot!r}: {e.strerror}") from None
    kv_dir = os.path.join(target, "member", "kv")
    try:
        if head.startswith(MAGIC):
            contents = _restore_cairn(cfg, kv_dir, bar)
        elif is_bolt(head):
            contents = _restore_etcd(cfg, kv_dir, bar)
        else:
            raise RestoreError(
                f"{cfg.snapshot!r} is not a snapshot: neither cairn's format nor etcd's (bbolt)"
            )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return Restored(contents, node.member_id, node.cluster_id, target)


def _progress(bar: Bar | None, label: str, total: int, unit: str = "bytes") -> Progress | None:
    return bar(label, total, unit) if bar else None


def _reset_applied_index(kv_dir: str) -> None:
    """The new cluster's raft log starts empty: the data counts as applied up to index 0."""
    backend = Backend(kv_dir)
    try:
        backend.commit(0, sync=True)
    finally:
        backend.close()


def _restore_cairn(cfg: RestoreConfig, kv_dir: str, bar: Bar | None) -> Contents:
    os.makedirs(os.path.dirname(kv_dir))
    size = os.path.getsize(cfg.snapshot)
    meta = extract(
        cfg.snapshot, kv_dir, verify=not cfg.skip_hash_check, progress=_progress(bar, "restoring", size)
    )
    _reset_applied_index(kv_dir)
    return Contents("cairn", meta.revision, meta.compact_revision, meta.keys)


def _restore_etcd(cfg: RestoreConfig, kv_dir: str, bar: Bar | None) -> Contents:
    size = os.path.getsize(cfg.snapshot)
    has_hash = size % 512 == hashlib.sha256().digest_size
    if not has_hash and not cfg.skip_hash_check:
        raise SnapshotError(
            f"snapshot missing hash but --skip-hash-check=false ({size} bytes is not 512*n + 32: the file is "
            "truncated, or is a db file copied from a data dir, which --skip-hash-check accepts)"
        )
    data = map_file(cfg.snapshot)
    db_size = size - 32 if has_hash else size
    if has_hash and not cfg.skip_hash_check:
        _check_sha256(data, db_size, _progress(bar, "verifying", db_size))
    db = BoltDB(data[:db_size])
    rows = sum(1 for _ in db.items(b"key"))
    os.makedirs(kv_dir)
    backend = Backend(kv_dir)
    try:
        imported = import_etcd(db, backend, _progress(bar, "importing", rows, "rows"))
        backend.commit(0, sync=True)
    finally:
        backend.close()
    return Contents(
        "etcd", imported.revision, imported.compact_revision, imported.keys, tuple(imported.skipped)
    )


def _check_sha256(view: memoryview, size: int, progress: Progress | None) -> None:
    digest = hashlib.sha256()
    step = 1 << 20
    for offset in range(0, size, step):
        chunk = view[offset : min(offset + step, size)]
        digest.update(chunk)
        if progress:
            progress(len(chunk))
    expected = bytes(view[size : size + 32])
    if digest.digest() != expected:
        raise SnapshotError(
            f"snapshot file is corrupt: expected sha256 {expected.hex()}, got {digest.hexdigest()}"
        )
