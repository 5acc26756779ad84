"""The checks etcd runs on a KV request before proposing it (etcdserver/api/v3rpc/key.go).

A request refused here never reaches the raft log, so these checks and their order decide which
error a client sees; what can only be known at apply time (a missing lease, a key that
ignore_value needs, a compacted revision) is checked by :mod:`actors.storage.mvcc` instead.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from actors import errors
from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Method

REQUEST_TYPES: dict[int, type[Message]] = {
    Method.RANGE: rpc_pb2.RangeRequest,
    Method.PUT: rpc_pb2.PutRequest,
    Method.DELETE_RANGE: rpc_pb2.DeleteRangeRequest,
    Method.TXN: rpc_pb2.TxnRequest,
    Method.COMPACT: rpc_pb2.CompactionRequest,
}

# Lease requests are only parsed before they go further: bytes that are no message are refused
# up front, never left to crash the actor that would read them (a gRPC client can send any bytes).
LEASE_REQUESTS: dict[int, type[Message]] = {
    Method.LEASE_GRANT: rpc_pb2.LeaseGrantRequest,
    Method.LEASE_REVOKE: rpc_pb2.LeaseRevokeRequest,
    Method.LEASE_KEEPALIVE: rpc_pb2.LeaseKeepAliveRequest,
    Method.LEASE_TIME_TO_LIVE: rpc_pb2.LeaseTimeToLiveRequest,
    Method.LEASE_LEASES: rpc_pb2.LeaseLeasesRequest,
}

M = TypeVar("M", bound=Message)

DEFAULT_MAX_TXN_OPS = 128  # etcd's --max-txn-ops default


def parse(cls: type[M], request: bytes) -> M:
    """Parse ``request`` as the etcd message ``cls``; bad bytes -> INVALID_ARGUMENT."""
    try:
        return cls.FromString(request)
    except DecodeError as exc:
        raise EtcdError(
            Code.INVALID_ARGUMENT, f"cairn: request is not a valid etcdserverpb.{cls.__name__}: {exc}"
        ) from None


def decode(method: int, request: bytes) -> Message:
    """Parse a KV request's bytes into its etcd message; bad bytes -> INVALID_ARGUMENT."""
    try:
        cls = REQUEST_TYPES[method]
    except KeyError:
        raise EtcdError(Code.UNIMPLEMENTED, f"cairn: method {method} is not a KV request") from None
    return parse(cls, request)


def validate(method: int, request: bytes, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> Message | None:
    """Raise the :class:`EtcdError` etcd's gRPC layer would answer before proposing, if any.

    Returns the parsed KV request (None for other methods), so the caller need not parse it again.
    """
    if method not in REQUEST_TYPES:
        return None
    message = decode(method, request)
    check_message(method, message, max_txn_ops)
    return message


def check_message(method: int, req: Message, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """:func:`validate` for an already parsed request."""
    if method == Method.PUT:
        _check_put(req)
    elif method == Method.RANGE or method == Method.DELETE_RANGE:
        if not req.key:
            raise errors.EMPTY_KEY
    elif method == Method.TXN:
        _check_txn(req, max_txn_ops)
        # overlap checks come after the cheap ones, as in etcd, to avoid quadratic work on junk
        _check_intervals(req.success)
        _check_intervals(req.failure)


def _check_put(req: rpc_pb2.PutRequest) -> None:
    if not req.key:
        raise errors.EMPTY_KEY
    if req.ignore_value and req.value:
        raise errors.VALUE_PROVIDED
    if req.ignore_lease and req.lease:
        raise errors.LEASE_PROVIDED


def _check_txn(req: rpc_pb2.TxnRequest, max_txn_ops: int) -> None:
    # etcd counts the longest of compare/success/failure, and nested txns get what is left
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops > max_txn_ops:
        raise errors.TOO_MANY_OPS
    for cmp in req.compare:
        if not cmp.key:
            raise errors.EMPTY_KEY
    for branch in (req.success, req.failure):
        for op in branch:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                _check_put(op.request_put)
            elif kind == "request_range":
                if not op.request_range.key:
                    raise errors.EMPTY_KEY
            elif kind == "request_delete_range":
                if not op.request_delete_range.key:
                    raise errors.EMPTY_KEY
            elif kind == "request_txn":
                _check_txn(op.request_txn, max_txn_ops - ops)
            else:  # an empty RequestOp: etcd answers this (odd) error
                raise errors.KEY_NOT_FOUND


# A delete interval as etcd's adt.StringAffineInterval: [begin, end), end b"" = unbounded. A put
# point k overlaps it iff begin <= k < end. An inverted interval (e.g. a from-key delete, whose
# end b"\0" sorts below its key) overlaps nothing: etcd 3.4 behaves so, and we copy it.
_Interval = tuple[bytes, bytes]


def _overlaps(dels: list[_Interval], key: bytes) -> bool:
    return any(begin <= key and (not end or key < end) for begin, end in dels)


def _check_intervals(ops) -> tuple[set[bytes], list[_Interval]]:
    """etcd's checkIntervals: no put may touch a key another put or a delete of the branch touches.

    Returns the branch's puts and deletes for the enclosing level's checks. Puts in the two
    branches of one nested txn may repeat each other (only one branch runs).
    """
    dels: list[_Interval] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.append((d.key, d.range_end) if d.range_end else (d.key, d.key + b"\0"))
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or _overlaps(dels, key):
                raise errors.DUPLICATE_KEY
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _overlaps(dels, key):
                raise errors.DUPLICATE_KEY
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or _overlaps(dels, key):
            raise errors.DUPLICATE_KEY
        puts.add(key)
    return puts, dels
