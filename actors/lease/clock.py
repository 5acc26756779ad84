"""When leases expire: the leader's bookkeeping of etcd's lessor, pure (every time is passed in).

Which leases exist is replicated state (:mod:`actors.lease.table`); the lease actor mirrors it
into this clock with :meth:`LeaseClock.granted` and :meth:`LeaseClock.revoked`. Only the primary
(the raft leader's clock) tracks expiries: a follower's leases never expire, and a new leader
restarts every lease at its checkpointed remaining TTL (or full TTL) plus an election timeout,
as etcd's Promote does, so no lease dies because leadership moved.

Everything due is kept in heaps ordered by ``(time, lease id)``, so a tick costs O(log n) per
lease that is actually due, never a scan. Entries are invalidated lazily (each lease remembers the
sequence number of its live heap entry) and the heaps are rebuilt when stale entries pile up.

Times are seconds on whatever monotonic clock the caller uses; TTLs are whole seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from heapq import heapify, heappop, heappush

DEFAULT_CHECKPOINT_INTERVAL = 60.0  # etcd: 5 min, and off by default; cairn checkpoints by default
DEFAULT_RETRY_AFTER = 3.0  # etcd's defaultExpiredleaseRetryInterval
DEFAULT_REVOKE_RATE = 1000  # etcd's leaseRevokeRate (leases per second), used to spread a promotion


@dataclass(slots=True)
class _Lease:
    ttl: int
    remaining_ttl: int  # last checkpointed remaining TTL, 0 = none
    expiry: float | None = None  # primary only; None while not tracked
    check_at: float = 0.0  # key of its expiry-heap entry: expiry, or the retry time once handed out
    seq: int = 0  # sequence number of its live expiry-heap entry
    cp_due: float = 0.0
    cp_seq: int = 0  # sequence number of its live checkpoint-heap entry, 0 = none scheduled


class LeaseClock:
    """Expiry, renewal and checkpoint scheduling of the leases, for the primary (leader) lessor."""

    def __init__(
        self,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        retry_after: float = DEFAULT_RETRY_AFTER,
        revoke_rate: int = DEFAULT_REVOKE_RATE,
    ) -> None:
        self.checkpoint_interval = checkpoint_interval
        self.retry_after = retry_after
        self.revoke_rate = revoke_rate
        self._leases: dict[int, _Lease] = {}
        self._primary = False
        self._expiry: list[tuple[float, int, int]] = []  # (check_at, id, seq)
        self._checkpoints: list[tuple[float, int, int]] = []  # (due, id, seq)
        self._clears: dict[int, float] = {}  # renewed leases whose checkpoint must be cleared -> when
        self._unanchored: dict[int, None] = {}  # granted on the primary without a time: start at next now
        self._seq = 0

    # -- mirror of the replicated state ------------------------------------------------------------

    def granted(self, lease_id: int, ttl: int, remaining_ttl: int = 0, now: float | None = None) -> None:
        """A lease exists with this TTL and checkpointed remaining TTL (an upsert: checkpoints of known
        leases arrive this way too, and never move a running expiry).

        On the primary a new lease expires at ``now`` + its TTL; without ``now`` it starts at the next
        call that passes a time (it then lives slightly longer, never shorter).
        """
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.ttl = ttl
            lease.remaining_ttl = remaining_ttl
            return
        lease = self._leases[lease_id] = _Lease(ttl, remaining_ttl)
        if self._primary:
            if now is None:
                self._unanchored[lease_id] = None
            else:
                self._start(lease_id, lease, now, 0.0)

    def revoked(self, lease_id: int) -> None:
        """The lease is gone from the replicated state."""
        if self._leases.pop(lease_id, None) is not None:
            self._unanchored.pop(lease_id, None)
            self._clears.pop(lease_id, None)
            self._maybe_compact()

    # -- leadership ------------------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        """Whether this clock expires leases (this member leads)."""
        return self._primary

    def promote(self, now: float, extend: float) -> None:
        """Became leader: every lease expires at now + (checkpointed remaining TTL, else TTL) + extend.

        As etcd's Promote, when there are at least ``revoke_rate`` leases, those piling up in one
        second beyond 3/4 of the revoke rate are pushed later, so a new leader does not revoke a
        burst of them at once.
        """
        self._primary = True
        self._unanchored.clear()
        self._clears.clear()
        leases = self._leases
        for lease in leases.values():
            lease.expiry = now + extend + (lease.remaining_ttl or lease.ttl)
        if len(leases) >= self.revoke_rate:
            self._spread(now, extend)
        self._expiry = []
        self._checkpoints = []
        interval = self.checkpoint_interval
        for lease_id, lease in leases.items():
            self._seq += 1
            lease.check_at, lease.seq = lease.expiry, self._seq
            self._expiry.append((lease.expiry, lease_id, self._seq))
            lease.cp_seq = 0
            if lease.ttl > interval:
                self._seq += 1
                lease.cp_due, lease.cp_seq = now + interval, self._seq
                self._checkpoints.append((lease.cp_due, lease_id, self._seq))
        heapify(self._expiry)
        heapify(self._checkpoints)

    def _spread(self, now: float, extend: float) -> None:
        """etcd's Promote pile-up adjustment (in seconds), on leases sorted by (expiry, id)."""
        order = sorted(self._leases.items(), key=lambda item: (item[1].expiry, item[0]))
        base = order[0][1].expiry - now
        next_window = base + 1.0
        expires = 0
        target = (3 * self.revoke_rate) // 4
        for _, lease in order:
            remaining = lease.expiry - now
            if remaining > next_window:
                base = remaining
                next_window = base + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target:
                continue
            delay = expires / target - (remaining - base)
            next_window = base + delay
            lease.expiry = now + delay + extend + (lease.remaining_ttl or lease.ttl)

    def demote(self) -> None:
        """No longer leader: nothing expires here any more (the new leader's clock takes over)."""
        self._primary = False
        for lease in self._leases.values():
            lease.expiry = None
            lease.seq = lease.cp_seq = 0
        self._expiry = []
        self._checkpoints = []
        self._clears.clear()
        self._unanchored.clear()

    # -- the primary's work ----------------------------------------------------------------------

    def renew(self, lease_id: int, now: float) -> int:
        """A keep-alive: the lease now expires at ``now`` + TTL; return the TTL.

        0 for an unknown lease, and for one already expired (its revoke is under way: etcd waits for
        it and then answers not found). -1 when not primary (etcd's ErrNotPrimary: only the leader
        renews). A checkpointed remaining TTL is cleared, and a checkpoint of 0 queued for
        :meth:`checkpoints_due`, so a later leader does not cut the renewed lease short.
        """
        if not self._primary:
            return -1
        self._anchor(now)
        lease = self._leases.get(lease_id)
        if lease is None or lease.expiry <= now:
            return 0
        if lease.remaining_ttl > 0:
            lease.remaining_ttl = 0
            self._clears.setdefault(lease_id, now)
        self._set_expiry(lease_id, lease, now + lease.ttl)
        if not lease.cp_seq and lease.ttl > self.checkpoint_interval:
            self._schedule_checkpoint(lease_id, lease, now + self.checkpoint_interval)
        return lease.ttl

    def remaining(self, lease_id: int, now: float) -> int:
        """Whole seconds left, truncated like etcd's TimeToLive (``int64(Remaining().Seconds())``);
        -1 for an unknown lease.

        An expired lease whose revoke is not applied yet answers 0 (what etcd 3.4 answers in that
        window; etcd could go negative were the revoke a second late, cairn stays at 0). A
        non-primary clock answers what the lease would start from on promotion.
        """
        lease = self._leases.get(lease_id)
        if lease is None:
            return -1
        if not self._primary:
            return lease.remaining_ttl or lease.ttl
        self._anchor(now)
        return max(int(lease.expiry - now), 0)

    def expired(self, now: float, limit: int) -> list[int]:
        """Up to ``limit`` leases past their expiry, earliest first, to propose revoking.

        A lease handed out is not handed out again for ``retry_after`` seconds (etcd re-checks
        then, in case the revoke proposal was lost); its revocation removes it for good.
        """
        if not self._primary or limit <= 0:
            return []
        self._anchor(now)
        out: list[int] = []
        heap, leases = self._expiry, self._leases
        while heap and len(out) < limit:
            at, lease_id, seq = heap[0]
            if at > now:
                break
            heappop(heap)
            lease = leases.get(lease_id)
            if lease is None or lease.seq != seq:
                continue
            out.append(lease_id)
            self._seq += 1
            lease.check_at, lease.seq = now + self.retry_after, self._seq
            heappush(heap, (lease.check_at, lease_id, self._seq))
        return out

    def checkpoints_due(self, now: float, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ``(lease id, remaining TTL)`` to checkpoint through raft.

        First the clears renewals queued (remaining 0), then the leases whose periodic checkpoint
        is due, as etcd's findDueScheduledCheckpoints: remaining rounded up, skipped when expired or
        when still the full TTL. A lease with a TTL above the interval is checked every interval.
        """
        if not self._primary or limit <= 0:
            return []
        self._anchor(now)
        out: list[tuple[int, int]] = []
        leases, clears = self._leases, self._clears
        while clears and len(out) < limit:
            lease_id = next(iter(clears))
            del clears[lease_id]
            if lease_id in leases:
                out.append((lease_id, 0))
        heap, interval = self._checkpoints, self.checkpoint_interval
        while heap and len(out) < limit:
            due, lease_id, seq = heap[0]
            if due > now:
                break
            heappop(heap)
            lease = leases.get(lease_id)
            if lease is None or lease.cp_seq != seq:
                continue
            lease.cp_seq = 0
            if now >= lease.expiry:
                continue  # expired: being revoked
            if lease.ttl > interval:
                self._schedule_checkpoint(lease_id, lease, now + interval)
            remaining = math.ceil(lease.expiry - now)
            if remaining < lease.ttl:
                out.append((lease_id, remaining))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expired` or :meth:`checkpoints_due` has work; None if never."""
        if not self._primary:
            return None
        leases = self._leases
        best: float | None = None
        if self._clears:
            best = next(iter(self._clears.values()))
        for heap, field in ((self._expiry, "seq"), (self._checkpoints, "cp_seq")):
            while heap:
                at, lease_id, seq = heap[0]
                lease = leases.get(lease_id)
                if lease is not None and getattr(lease, field) == seq:
                    if best is None or at < best:
                        best = at
                    break
                heappop(heap)
        return best

    # -- introspection -----------------------------------------------------------------------------

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def ttl(self, lease_id: int) -> int:
        """The granted TTL of a lease, -1 if unknown."""
        lease = self._leases.get(lease_id)
        return -1 if lease is None else lease.ttl

    def remaining_ttl(self, lease_id: int) -> int:
        """The last checkpointed remaining TTL (0 = none), -1 if unknown."""
        lease = self._leases.get(lease_id)
        return -1 if lease is None else lease.remaining_ttl

    # -- internals -----------------------------------------------------------------------------

    def _start(self, lease_id: int, lease: _Lease, now: float, extend: float) -> None:
        self._set_expiry(lease_id, lease, now + extend + (lease.remaining_ttl or lease.ttl))
        if lease.ttl > self.checkpoint_interval:
            self._schedule_checkpoint(lease_id, lease, now + self.checkpoint_interval)

    def _anchor(self, now: float) -> None:
        """Start the leases granted without a time."""
        if self._unanchored:
            leases = self._leases
            for lease_id in self._unanchored:
                self._start(lease_id, leases[lease_id], now, 0.0)
            self._unanchored.clear()

    def _set_expiry(self, lease_id: int, lease: _Lease, expiry: float) -> None:
        self._seq += 1
        lease.expiry = lease.check_at = expiry
        lease.seq = self._seq
        heappush(self._expiry, (expiry, lease_id, self._seq))
        self._maybe_compact()

    def _schedule_checkpoint(self, lease_id: int, lease: _Lease, due: float) -> None:
        self._seq += 1
        lease.cp_due, lease.cp_seq = due, self._seq
        heappush(self._checkpoints, (due, lease_id, self._seq))

    def _maybe_compact(self) -> None:
        """Rebuild the heaps without stale entries once those outnumber the live ones."""
        live = len(self._leases)
        if len(self._expiry) + len(self._checkpoints) <= 4 * live + 1024:
            return
        items = self._leases.items()
        self._expiry = [(lease.check_at, i, lease.seq) for i, lease in items if lease.seq]
        self._checkpoints = [(lease.cp_due, i, lease.cp_seq) for i, lease in items if lease.cp_seq]
        heapify(self._expiry)
        heapify(self._checkpoints)
