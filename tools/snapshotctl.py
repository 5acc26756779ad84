"""``cairnctl snapshot save | status | restore``: backups of cairn, and migration from etcd.

``save`` works against cairn and etcd alike (Maintenance.Snapshot), ``status`` and ``restore`` read
cairn's snapshot files and etcd's (bbolt) ones. ``status`` of an etcd file prints what
``etcdctl snapshot status`` prints, in the same formats.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import fields

import grpc
import orjson

from actors.proto import rpc_pb2, rpc_pb2_grpc
from actors.storage.snapshot import ALIGN, CHECKSUM_SIZE, MAGIC, SnapshotError, read_meta
from tools.bbolt import BoltDB, is_bolt, map_file
from tools.etcd_snapshot import EtcdStatus, status
from tools.progress import ProgressBar, human_bytes
from tools.restore import RestoreConfig, restore


def add_parser(sub: argparse._SubParsersAction) -> None:
    snapshot = sub.add_parser("snapshot", help="save, inspect and restore snapshots (cairn's or etcd's)")
    commands = snapshot.add_subparsers(dest="snapshot_command", required=True)
    save = commands.add_parser("save", help="stream a snapshot of the member at --endpoint into FILE")
    save.add_argument("file")
    stat = commands.add_parser("status", help="hash, revision, keys and size of a snapshot file")
    stat.add_argument("file")
    stat.add_argument("-w", "--write-out", choices=("simple", "table", "json"), default="simple")
    rest = commands.add_parser("restore", help="build a new cluster member's data dir from a snapshot")
    rest.add_argument("file")
    rest.add_argument("--data-dir", default="", help="where to put the new member's data (default NAME.etcd)")
    rest.add_argument("--name", default="default", help="the new member's name")
    rest.add_argument("--initial-cluster", default="default=http://localhost:2380")
    rest.add_argument("--initial-cluster-token", default="etcd-cluster")
    rest.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380")
    rest.add_argument("--skip-hash-check", action="store_true", help="accept a file without a sha256")


def run(args: argparse.Namespace, channel: grpc.Channel) -> int:
    if args.snapshot_command == "save":
        return save(channel, args.file)
    if args.snapshot_command == "status":
        return print_status(args.file, args.write_out)
    return run_restore(args)


def save(channel: grpc.Channel, path: str) -> int:
    """Download a snapshot, check its sha256, then move it into place (etcdctl's ``.part`` dance)."""
    part = path + ".part"
    stream = rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(rpc_pb2.SnapshotRequest())
    digest = hashlib.sha256()
    bar: ProgressBar | None = None
    try:
        with open(part, "wb") as out:
            last = b""
            for response in stream:
                if bar is None:
                    bar = ProgressBar("saving", response.remaining_bytes + len(response.blob))
                out.write(response.blob)
                digest.update(last)  # every chunk but the last, which is the sha256 of the others
                last = response.blob
                bar(len(response.blob))
            size = out.tell()
            if size % ALIGN != CHECKSUM_SIZE or len(last) != CHECKSUM_SIZE or digest.digest() != last:
                raise SnapshotError(f"the snapshot received is incomplete or damaged ({size} bytes)")
            out.flush()
            os.fsync(out.fileno())
        if bar is not None:
            bar.close()
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.remove(part)
    print(f"Snapshot saved at {path}")
    return 0


def file_status(path: str) -> tuple[EtcdStatus, bool]:
    """etcd's four status fields for a cairn or etcd snapshot file, and whether a sha256 was checked
    (a bolt file copied from a data dir has none). A file whose sha256 does not match is refused."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(MAGIC):
        meta = read_meta(path)  # verifies the sha256
        with open(path, "rb") as f:
            f.seek(-CHECKSUM_SIZE, os.SEEK_END)
            sha = f.read()
        return EtcdStatus(int.from_bytes(sha[:4], "big"), meta.revision, meta.keys, meta.data_size), True
    if not is_bolt(head):
        raise SnapshotError(f"{path!r} is not a snapshot: neither cairn's format nor etcd's (bbolt)")
    size = os.path.getsize(path)
    data = map_file(path)
    has_hash = size % ALIGN == CHECKSUM_SIZE
    db_size = size - CHECKSUM_SIZE if has_hash else size
    if has_hash and hashlib.sha256(data[:db_size]).digest() != data[db_size:]:
        raise SnapshotError("snapshot file is corrupt: its sha256 does not match the one at its end")
    return status(BoltDB(data[:db_size])), has_hash


def print_status(path: str, write_out: str) -> int:
    result, checked = file_status(path)
    row = [f"{result.hash:x}", str(result.revision), str(result.total_key), human_bytes(result.total_size)]
    if write_out == "json":
        print(
            orjson.dumps(
                {
                    "hash": result.hash,
                    "revision": result.revision,
                    "totalKey": result.total_key,
                    "totalSize": result.total_size,
                }
            ).decode()
        )
    elif write_out == "table":
        print(_table(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], row))
    else:
        print(", ".join(row))
    print(
        "checksum: sha256 ok" if checked else "checksum: none (a db file, not a saved snapshot)",
        file=sys.stderr,
    )
    return 0


def _table(header: list[str], row: list[str]) -> str:
    """etcdctl's table (tablewriter: centred headers, right-aligned cells)."""
    widths = [max(len(h), len(c)) for h, c in zip(header, row, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centred(text: str, width: int) -> str:
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)

    head = "| " + " | ".join(centred(h, w) for h, w in zip(header, widths, strict=True)) + " |"
    body = "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
    return "\n".join((rule, head, rule, body, rule))


def run_restore(args: argparse.Namespace) -> int:
    flags = {f.name: getattr(args, f.name) for f in fields(RestoreConfig) if f.name != "snapshot"}
    cfg = RestoreConfig(snapshot=args.file, **flags)
    bars: list[ProgressBar] = []

    def bar(label: str, total: int, unit: str) -> ProgressBar:
        if bars:
            bars[-1].close()
        bars.append(ProgressBar(label, total, unit))
        return bars[-1]

    restored = restore(cfg, bar)
    if bars:
        bars[-1].close()
    contents = restored.contents
    for warning in contents.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"restored {contents.source} snapshot at revision {contents.revision} ({contents.keys} keys, "
        f"compacted at {contents.compact_revision}) into {restored.data_dir}: member {restored.member_id:x} "
        f"of new cluster {restored.cluster_id:x}"
    )
    return 0
