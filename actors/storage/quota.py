"""The backend space quota (etcd's server/quota.go backendQuota), checked before proposing.

etcd charges each request that can grow the database an estimate of what it will store (a put:
256 bytes of metadata + key + value; a txn: its costlier branch; a lease grant: 64 bytes) and
refuses it with "database space exceeded" when the backend's size plus that charge would reach
``quota-backend-bytes``; the refusing member then raises the NOSPACE alarm, which makes every
member refuse such writes until an operator disarms it (:mod:`actors.storage.alarms`).

The backend's size is measured by the storage actor (once a second and after a defragment) and
reported to the session. Between two reports the session adds up what it admitted, so a burst of
writes cannot run far past the quota on a stale figure.
"""

from __future__ import annotations

from google.protobuf.message import Message

from actors.proto import rpc_pb2
from actors.protocol import Method

DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024  # etcd's DefaultQuotaBytes: used when the config says 0
LEASE_OVERHEAD = 64  # etcd's leaseOverhead
KV_OVERHEAD = 256  # etcd's kvOverhead


def put_cost(put: rpc_pb2.PutRequest) -> int:
    return KV_OVERHEAD + len(put.key) + len(put.value)


def txn_cost(txn: rpc_pb2.TxnRequest) -> int:
    """The costlier branch's puts (top-level ops only, as etcd 3.4 counts them)."""

    def branch(ops: list[rpc_pb2.RequestOp]) -> int:
        return sum(put_cost(op.request_put) for op in ops if op.HasField("request_put"))

    return max(branch(txn.success), branch(txn.failure))


def request_cost(method: int, message: Message) -> int:
    """etcd's backendQuota.Cost; 0 for requests that cannot grow the database."""
    if method == Method.PUT:
        return put_cost(message)  # type: ignore[arg-type]
    if method == Method.TXN:
        return txn_cost(message)  # type: ignore[arg-type]
    if method == Method.LEASE_GRANT:
        return LEASE_OVERHEAD
    return 0


class SpaceQuota:
    """Admission against ``quota-backend-bytes`` (negative: no quota; 0: etcd's 2 GiB default)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = DEFAULT_QUOTA_BYTES if limit_bytes == 0 else limit_bytes
        self.db_size = 0  # the last size the storage actor reported
        self.charged = 0  # what was admitted since that report

    def report(self, db_size: int) -> None:
        """A fresh measurement of the backend (it includes what was admitted before it)."""
        self.db_size = db_size
        self.charged = 0

    def admit(self, method: int, message: Message) -> bool:
        """Whether the request fits (etcd: size + cost < quota); a fitting one is charged."""
        if self.limit < 0:
            return True
        cost = request_cost(method, message)
        if not cost:
            return True
        if self.db_size + self.charged + cost >= self.limit:
            return False
        self.charged += cost
        return True
