"""The replicated lease state (etcd's lessor minus its clock): which leases exist, their TTLs, the
last checkpointed remaining TTL of each, and which keys each lease holds.

It changes only by applying raft entries (grant, revoke, checkpoint, and the puts and deletes of
the KV store), in log order, on every member alike, so every member agrees on it. Rows go into the
storage backend's pending batch, in the same RocksDB write as the KV rows of the same entries:
a revoke and the deletion of its keys are durable together or not at all.

Persisted per lease, in the ``lease`` column family: key = the id as 8 bytes big-endian (signed),
value = ``>qq`` (TTL, remaining TTL; 0 = no checkpoint). Attachments are *not* persisted: as in
etcd, every live key's KeyValue names its lease, so :class:`actors.storage.mvcc.MvccStore`
rebuilds them from the KV rows on open. Storing them again would mean a second row to keep in step
with every put and delete, for nothing the KV rows do not already say.

When leases expire is not in here: that is the leader's business (:mod:`actors.lease.clock`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from actors import errors
from actors.storage.backend import LEASE, Backend

MAX_LEASE_TTL = 9_000_000_000  # etcd's lease.MaxLeaseTTL (seconds)
DEFAULT_MIN_TTL = 2  # etcd's minimum with its default timing (100 ms heartbeat, 1000 ms election)

_ROW = struct.Struct(">qq")  # ttl, remaining_ttl


def min_lease_ttl(heartbeat_ms: int, election_ms: int) -> int:
    """etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.

    A lease shorter than that could expire during a normal leader election (etcdserver/server.go:
    ``minTTL = (3*electionTicks)/2 * heartbeat``, ceil to seconds; 2 with etcd's defaults).
    """
    ticks = max(election_ms // max(heartbeat_ms, 1), 1)
    return max(math.ceil((3 * ticks // 2) * heartbeat_ms / 1000), 1)


def lease_key(lease_id: int) -> bytes:
    """The ``lease`` column family row key of a lease (etcd's int64ToBytes)."""
    return lease_id.to_bytes(8, "big", signed=True)


@dataclass(slots=True)
class Lease:
    """One lease as the replicated state knows it (read-only for callers)."""

    id: int
    ttl: int
    remaining_ttl: int = 0  # last checkpointed remaining TTL; 0 = none, the full TTL applies
    keys: set[bytes] = field(default_factory=set)


class LeaseTable:
    """The leases of the store, kept in memory and written through the backend's pending batch."""

    def __init__(self, backend: Backend, min_ttl: int = DEFAULT_MIN_TTL) -> None:
        self._backend = backend
        self.min_ttl = min_ttl
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}  # attached key -> its lease (etcd's itemMap)
        for key, value in backend.scan(LEASE):
            ttl, remaining = _ROW.unpack(value)
            lease_id = int.from_bytes(key, "big", signed=True)
            # like etcd's initAndRecover: a lower min TTL configured since grant raises old leases
            self._leases[lease_id] = Lease(lease_id, max(ttl, min_ttl), remaining)

    # -- replicated changes (raft entries, applied in log order) -----------------------------

    def grant(self, lease_id: int, ttl: int) -> int:
        """Create a lease; return the TTL granted (raised to ``min_ttl``, as etcd 3.4 answers).

        etcd's order of checks: id 0 -> not found, TTL too large, then an existing id.
        """
        if lease_id == 0:
            raise errors.LEASE_NOT_FOUND.copy()
        if ttl > MAX_LEASE_TTL:
            raise errors.LEASE_TTL_TOO_LARGE.copy()
        if lease_id in self._leases:
            raise errors.LEASE_EXIST.copy()
        ttl = max(ttl, self.min_ttl)
        self._leases[lease_id] = Lease(lease_id, ttl)
        self._persist(lease_id, ttl, 0)
        return ttl

    def revoke(self, lease_id: int) -> list[bytes]:
        """Forget a lease and its attachments; return its keys sorted (the caller deletes them in the
        same write, sorted so every member writes the same rows in the same order)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise errors.LEASE_NOT_FOUND.copy()
        key_lease = self._key_lease
        for key in lease.keys:
            del key_lease[key]
        self._backend.delete(LEASE, lease_key(lease_id))
        return sorted(lease.keys)

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> bool:
        """Record a lease's remaining TTL (persisted, so a restart or a new leader keeps it).

        An unknown lease is ignored, as in etcd (it may have been revoked after the leader
        proposed the checkpoint); returns whether the lease exists.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            return False
        lease.remaining_ttl = remaining_ttl
        self._persist(lease_id, lease.ttl, remaining_ttl)
        return True

    def attach(self, lease_id: int, key: bytes) -> None:
        """Attach ``key`` to a lease (detaching it from any other: a key holds one lease)."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND.copy()
        old = self._key_lease.get(key)
        if old is not None and old != lease_id:
            self._leases[old].keys.discard(key)
        lease.keys.add(key)
        self._key_lease[key] = lease_id

    def detach(self, lease_id: int, key: bytes) -> None:
        """Detach ``key`` from a lease; a key not attached to it is left alone."""
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.LEASE_NOT_FOUND.copy()
        if self._key_lease.get(key) == lease_id:
            del self._key_lease[key]
            lease.keys.discard(key)

    # -- reads ---------------------------------------------------------------------------------

    def exists(self, lease_id: int) -> bool:
        """Whether a lease exists (what a put naming it checks at apply time)."""
        return lease_id in self._leases

    __contains__ = exists

    def get(self, lease_id: int) -> Lease | None:
        """The lease, or None; do not mutate it."""
        return self._leases.get(lease_id)

    def lease_of(self, key: bytes) -> int:
        """The lease ``key`` is attached to, 0 for none (etcd's GetLease)."""
        return self._key_lease.get(key, 0)

    def ids(self) -> list[int]:
        """Every lease id, sorted."""
        return sorted(self._leases)

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        """The leases in id order."""
        leases = self._leases
        return (leases[i] for i in sorted(leases))

    def _persist(self, lease_id: int, ttl: int, remaining: int) -> None:
        self._backend.put(LEASE, lease_key(lease_id), _ROW.pack(ttl, remaining))
