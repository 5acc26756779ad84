"""The backend space quota (etcd's server/quota.go backendQuota), checked before proposing.

etcd charges each request that can grow the database an estimate of what it will store (a put:
256 bytes of metadata + key + value; a txn: its costlier branch; a lease grant: 64 bytes) and
refuses it with "database space exceeded" when the backend's size plus that charge would reach
``quota-backend-bytes``; the refusing member then raises the NOSPACE alarm, which makes every
member refuse such writes until an operator disarms it (:mod:`actors.storage.alarms`).

The backend's size is measured by the storage actor after each batch of entries that could grow
it (and once a second) and reported to the session right behind that batch's results, so the
session counts an admitted request at its cost until its result arrives, and in the measured
size from then on: a burst of writes cannot run past the quota on a stale figure.
"""

from __future__ import annotations

from google.protobuf.message import Message

from actors.proto import rpc_pb2
from actors.protocol import Method

CHARGED = frozenset({Method.PUT, Method.TXN, Method.LEASE_GRANT})  # the requests etcd's quota checks
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
        self._in_flight: dict[int, int] = {}  # request key -> cost, for admitted requests not answered yet
        self._charged = 0  # their sum

    def report(self, db_size: int) -> None:
        """A fresh measurement of the backend: it includes every request answered before it."""
        self.db_size = db_size

    def fits(self, method: int, message: Message) -> bool:
        """Whether the request fits (etcd's backendQuota.Available: size + cost < quota)."""
        cost = request_cost(method, message)
        return not cost or self.limit < 0 or self.db_size + self._charged + cost < self.limit

    def charge(self, key: int, method: int, message: Message) -> None:
        """Count request ``key``, which is being proposed, at its cost until :meth:`settle`."""
        cost = request_cost(method, message)
        if cost:
            self._in_flight[key] = cost
            self._charged += cost

    def settle(self, key: int) -> None:
        """Request ``key`` was answered: the storage actor's next report counts what it wrote."""
        cost = self._in_flight.pop(key, 0)
        self._charged -= cost
