"""``cairnctl``: a small, readable command-line client for cairn (and any etcd v3 endpoint).

It speaks the etcd v3 gRPC API, so what it shows is what every etcd client sees. For the full
etcd tool set use ``etcdctl``; cairnctl is for quick looks and for cairn's own operations.
``queue`` and ``watch`` speak cairn's native ZeroMQ protocol (``--zmq``, tools/cairnctl_native.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from actors.errors import EtcdError
from actors.proto import rpc_pb2, rpc_pb2_grpc
from tools import cairnctl_curve, cairnctl_member, cairnctl_native, snapshotctl
from tools.nospace import explain_nospace, is_nospace


def prefix_end(key: bytes) -> bytes:
    """The range end that selects every key starting with ``key`` (etcd's GetPrefixRangeEnd)."""
    stripped = key.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else b"\0"


def show(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def parse_op(text: str) -> rpc_pb2.RequestOp:
    """``put KEY VALUE``, ``get KEY`` or ``del KEY`` as a txn operation."""
    words = text.split(None, 2)
    if len(words) == 3 and words[0] == "put":
        return rpc_pb2.RequestOp(
            request_put=rpc_pb2.PutRequest(key=words[1].encode(), value=words[2].encode())
        )
    if len(words) == 2 and words[0] == "get":
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=words[1].encode()))
    if len(words) == 2 and words[0] == "del":
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=words[1].encode()))
    raise ValueError(f"cannot read operation {text!r} (want 'put K V', 'get K' or 'del K')")


COMPARE_TARGETS = {
    "value": rpc_pb2.Compare.VALUE,
    "version": rpc_pb2.Compare.VERSION,
    "create": rpc_pb2.Compare.CREATE,
    "mod": rpc_pb2.Compare.MOD,
}
COMPARE_RESULTS = {
    "=": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    ">": rpc_pb2.Compare.GREATER,
    "<": rpc_pb2.Compare.LESS,
}


def parse_compare(text: str) -> rpc_pb2.Compare:
    """``value(KEY) = V``, ``version(KEY) > 0``, ``create(KEY) = 0``, ``mod(KEY) < 9``."""
    target_name, _, rest = text.partition("(")
    key, _, rest = rest.partition(")")
    op, _, operand = rest.strip().partition(" ")
    if target_name not in COMPARE_TARGETS or op not in COMPARE_RESULTS:
        raise ValueError(f"cannot read comparison {text!r} (want e.g. 'value(k) = v' or 'mod(k) > 3')")
    target = COMPARE_TARGETS[target_name]
    compare = rpc_pb2.Compare(key=key.encode(), target=target, result=COMPARE_RESULTS[op])
    if target == rpc_pb2.Compare.VALUE:
        compare.value = operand.encode()
    else:
        setattr(
            compare,
            {"version": "version", "create": "create_revision", "mod": "mod_revision"}[target_name],
            int(operand),
        )
    return compare


def run(args: argparse.Namespace) -> int:
    if args.command in cairnctl_native.COMMANDS:
        return cairnctl_native.run(args)
    if args.command == "curve":
        return cairnctl_curve.run(args)
    channel = grpc.insecure_channel(args.endpoint)
    if args.command == "snapshot":
        return snapshotctl.run(args, channel)
    if args.command == "member":
        return cairnctl_member.run(args, channel)
    kv = rpc_pb2_grpc.KVStub(channel)
    timeout = args.timeout
    if args.command == "put":
        resp = kv.Put(
            rpc_pb2.PutRequest(key=args.key.encode(), value=args.value.encode(), prev_kv=args.prev_kv),
            timeout=timeout,
        )
        print(f"OK (revision {resp.header.revision})")
        if resp.HasField("prev_kv"):
            print(f"previous: {show(resp.prev_kv.value)}")
    elif args.command == "get":
        req = rpc_pb2.RangeRequest(key=args.key.encode(), revision=args.rev, limit=args.limit)
        if args.prefix:
            req.range_end = prefix_end(req.key)
        resp = kv.Range(req, timeout=timeout)
        for item in resp.kvs:
            print(
                f"{show(item.key)} = {show(item.value)}"
                f"  (version {item.version}, created {item.create_revision}, modified {item.mod_revision})"
            )
        print(f"-- {resp.count} key(s) at revision {resp.header.revision}", file=sys.stderr)
    elif args.command == "del":
        req = rpc_pb2.DeleteRangeRequest(key=args.key.encode())
        if args.prefix:
            req.range_end = prefix_end(req.key)
        resp = kv.DeleteRange(req, timeout=timeout)
        print(f"deleted {resp.deleted} key(s) (revision {resp.header.revision})")
    elif args.command == "txn":
        req = rpc_pb2.TxnRequest(
            compare=[parse_compare(c) for c in args.compare],
            success=[parse_op(o) for o in args.success],
            failure=[parse_op(o) for o in args.failure],
        )
        resp = kv.Txn(req, timeout=timeout)
        print(f"{'SUCCESS' if resp.succeeded else 'FAILURE'} (revision {resp.header.revision})")
        for op in resp.responses:
            if op.HasField("response_range"):
                for item in op.response_range.kvs:
                    print(f"{show(item.key)} = {show(item.value)}")
    elif args.command == "status":
        resp = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=timeout)
        print(
            f"member {resp.header.member_id:x}  leader {resp.leader:x}  term {resp.raftTerm}  "
            f"index {resp.raftIndex}  applied {resp.raftAppliedIndex}  revision {resp.header.revision}  "
            f"db {resp.dbSize} bytes  version {resp.version}"
        )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cairnctl", description="A client for cairn (or any etcd v3 endpoint).")
    p.add_argument("--endpoint", default="127.0.0.1:2379", help="host:port of the gRPC API")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    p.add_argument("--zmq", help="URL of the native ZeroMQ port (default tcp://127.0.0.1:2390)")
    p.add_argument("--curve-server-key", help="the native port's CURVE key (cairnctl curve server-key)")
    p.add_argument("--curve-secret-key-file", help="this client's CURVE secret key (cairnctl curve keygen)")
    sub = p.add_subparsers(dest="command", required=True)
    put = sub.add_parser("put", help="write a key")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--prev-kv", action="store_true", help="show the value it replaced")
    get = sub.add_parser("get", help="read a key or a prefix")
    get.add_argument("key")
    get.add_argument("--prefix", action="store_true")
    get.add_argument("--rev", type=int, default=0, help="read at this revision")
    get.add_argument("--limit", type=int, default=0)
    delete = sub.add_parser("del", help="delete a key or a prefix")
    delete.add_argument("key")
    delete.add_argument("--prefix", action="store_true")
    txn = sub.add_parser("txn", help="compare-and-swap: --compare 'value(k) = v' --success 'put k w'")
    txn.add_argument("--compare", action="append", default=[])
    txn.add_argument("--success", action="append", default=[])
    txn.add_argument("--failure", action="append", default=[])
    sub.add_parser("status", help="the member's raft and storage status")
    snapshotctl.add_parser(sub)
    cairnctl_member.add_parser(sub)
    cairnctl_curve.add_parser(sub)
    cairnctl_native.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        sys.exit(run(args))
    except grpc.RpcError as e:
        print(f"cairnctl: {e.details()} ({e.code().name})", file=sys.stderr)
        if is_nospace(e):
            print(explain_nospace(args.endpoint, args.timeout), file=sys.stderr)
        sys.exit(1)
    except EtcdError as e:
        print(f"cairnctl: {e.message} ({e.code.name})", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:  # bad input, or a snapshot refused (SnapshotError, BoltError, RestoreError)
        print(f"cairnctl: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"cairnctl: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
