"""LeaseClock: the leader's lease expiry bookkeeping, pure and deterministic (times are passed in).

etcd 3.4.23 facts it follows (checked against the real server): TimeToLive truncates the remaining
time (a 100 s lease answered 98 about 1.5 s after grant), and an expired lease whose revoke is not
applied yet answers TTL 0 (a 2 s lease answered 1, then 0 from 1.0 s to about 2.3 s, then -1
once revoked, roughly one 500 ms expiry check after it expired).
"""

from __future__ import annotations

import math
import random

import pytest

from actors.lease.clock import LeaseClock


def primary(**kw) -> LeaseClock:
    clock = LeaseClock(**kw)
    clock.promote(0.0, extend=0.0)
    return clock


# -- follower -----------------------------------------------------------------------------------------


def test_a_follower_expires_nothing_and_renews_nothing() -> None:
    clock = LeaseClock()
    clock.granted(1, 10)
    clock.granted(2, 100, remaining_ttl=30)
    assert not clock.is_primary
    assert clock.expired(1e9, limit=10) == [] and clock.checkpoints_due(1e9, limit=10) == []
    assert clock.next_deadline() is None
    assert clock.renew(1, 5.0) == -1  # etcd's ErrNotPrimary
    # what the lease would start from on promotion
    assert clock.remaining(1, 5.0) == 10 and clock.remaining(2, 5.0) == 30
    assert clock.remaining(3, 5.0) == -1
    assert len(clock) == 2 and 1 in clock and 3 not in clock


# -- promote / demote -------------------------------------------------------------------------------


def test_promote_uses_the_checkpointed_remaining_plus_extend() -> None:
    clock = LeaseClock()
    clock.granted(1, 10)
    clock.granted(2, 100, remaining_ttl=30)
    clock.promote(1000.0, extend=1.5)
    assert clock.is_primary
    assert clock.remaining(1, 1000.0) == 11  # 11.5 truncated
    assert clock.remaining(2, 1000.0) == 31
    assert clock.next_deadline() == 1011.5
    assert clock.expired(1011.4, 10) == []
    assert clock.expired(1011.5, 10) == [1]
    clock.revoked(1)
    assert clock.expired(1031.5, 10) == [2]


def test_demote_stops_expiry_and_promote_restarts_every_lease() -> None:
    clock = primary()
    clock.granted(1, 10, now=0.0)
    clock.demote()
    assert clock.expired(100.0, 10) == [] and clock.next_deadline() is None
    clock.promote(100.0, extend=1.0)
    assert clock.expired(110.9, 10) == []
    assert clock.expired(111.0, 10) == [1]


def test_promote_spreads_a_pile_of_leases_like_etcd() -> None:
    # etcd's Promote with revoke rate 8: at most 3/4 * 8 = 6 leases expire in a one second window;
    # the n-th lease beyond that is delayed by n/6 s (minus how much later it expired anyway)
    clock = LeaseClock(revoke_rate=8)
    for lease_id in range(1, 11):
        clock.granted(lease_id, 10)
    clock.promote(0.0, extend=0.0)
    assert clock.expired(10.0, 100) == [1, 2, 3, 4, 5, 6]
    for n in (7, 8, 9, 10):
        assert clock.expired(10 + n / 6 - 0.001, 100) == []
        assert clock.expired(10 + n / 6, 100) == [n]


def test_promote_below_the_revoke_rate_does_not_spread() -> None:
    clock = LeaseClock(revoke_rate=1000)
    for lease_id in range(1, 11):
        clock.granted(lease_id, 10)
    clock.promote(0.0, extend=0.0)
    assert clock.expired(10.0, 100) == list(range(1, 11))


# -- grants on the primary ------------------------------------------------------------------------


def test_a_grant_on_the_primary_starts_at_now() -> None:
    clock = primary()
    clock.granted(5, 10, now=3.0)
    assert clock.remaining(5, 3.0) == 10 and clock.next_deadline() == 13.0
    clock.granted(5, 10, remaining_ttl=4)  # a checkpoint of a running lease: expiry unchanged
    assert clock.remaining(5, 3.0) == 10 and clock.remaining_ttl(5) == 4 and clock.ttl(5) == 10


def test_a_grant_without_a_time_starts_at_the_next_time_seen() -> None:
    clock = primary()
    clock.granted(5, 10)
    assert clock.next_deadline() is None  # nothing due before it starts
    assert clock.expired(2.0, 10) == []  # starts here: expires at 12
    assert clock.expired(11.9, 10) == [] and clock.expired(12.0, 10) == [5]


# -- expiry -------------------------------------------------------------------------------------------


def test_expired_order_limit_retry_and_revoke() -> None:
    clock = primary(retry_after=3.0)
    clock.granted(3, 10, now=0.0)
    clock.granted(1, 10, now=0.0)  # same expiry: id order
    clock.granted(2, 5, now=0.0)
    clock.granted(4, 20, now=0.0)
    assert clock.expired(4.9, 10) == []
    assert clock.expired(10.0, 2) == [2, 1]  # earliest first, at most limit
    assert clock.expired(10.0, 2) == [3]  # the rest; the handed-out ones wait for retry_after
    assert clock.expired(12.9, 10) == []
    clock.revoked(1)  # its revoke was applied
    assert clock.expired(13.0, 10) == [2, 3]  # revoke proposals lost? handed out again
    assert clock.next_deadline() == 16.0
    assert clock.expired(0.0, 0) == []
    clock.revoked(2)
    clock.revoked(3)
    assert clock.next_deadline() == 20.0
    assert clock.expired(25.0, 10) == [4]


def test_renew() -> None:
    clock = primary()
    clock.granted(1, 10, now=0.0)
    assert clock.renew(1, 8.0) == 10
    assert clock.expired(17.9, 10) == [] and clock.remaining(1, 17.9) == 0
    assert clock.renew(1, 17.9) == 10
    assert clock.expired(27.8, 10) == [] and clock.expired(27.9, 10) == [1]
    assert clock.renew(1, 28.0) == 0  # expired: its revoke is under way
    assert clock.renew(99, 28.0) == 0  # unknown


def test_remaining_truncates_like_etcd() -> None:
    clock = primary()
    clock.granted(1, 10, now=0.0)
    assert clock.remaining(1, 0.0) == 10
    assert clock.remaining(1, 0.5) == 9
    assert clock.remaining(1, 9.99) == 0
    assert clock.remaining(1, 10.0) == 0
    assert clock.remaining(1, 12.5) == 0  # expired, not revoked yet: 0 (etcd answered 0 there too)
    clock.revoked(1)
    assert clock.remaining(1, 12.5) == -1


# -- checkpoints ------------------------------------------------------------------------------------


def test_checkpoints_every_interval_with_remaining_rounded_up() -> None:
    clock = primary(checkpoint_interval=60.0)
    clock.granted(1, 300, now=0.5)
    clock.granted(2, 60, now=0.5)  # not above the interval: never checkpointed
    assert clock.next_deadline() == 60.5
    assert clock.checkpoints_due(60.0, 10) == []
    assert clock.checkpoints_due(60.5, 10) == [(1, 240)]
    assert clock.expired(60.5, 10) == [2]
    clock.revoked(2)
    assert clock.checkpoints_due(61.0, 10) == []
    assert clock.checkpoints_due(120.6, 10) == [(1, 180)]  # 179.9 rounded up
    assert clock.renew(1, 130.0) == 300
    assert clock.checkpoints_due(180.0, 10) == []  # periodic: due at 180.6
    assert clock.checkpoints_due(180.6, 10) == [(1, 250)]
    clock.granted(1, 300, remaining_ttl=250)  # the checkpoint applied
    assert clock.renew(1, 200.0) == 300
    assert clock.remaining_ttl(1) == 0
    # the renewal clears the checkpointed remaining through raft, before anything else is due
    assert clock.next_deadline() == 200.0
    assert clock.checkpoints_due(200.0, 10) == [(1, 0)]
    assert clock.checkpoints_due(200.0, 10) == []
    assert clock.checkpoints_due(240.6, 10) == [(1, 260)]


def test_checkpoints_skip_full_ttl_and_expired_leases_and_respect_the_limit() -> None:
    clock = primary(checkpoint_interval=10.0)
    for lease_id in (1, 2, 3):
        clock.granted(lease_id, 30, now=0.0)
    clock.granted(4, 15, now=0.0)
    assert clock.renew(1, 10.0) == 30
    assert clock.checkpoints_due(10.0, 10) == [(2, 20), (3, 20), (4, 5)]  # 1 is at its full TTL
    assert clock.checkpoints_due(20.0, 1) == [(1, 20)]
    assert clock.checkpoints_due(20.0, 5) == [(2, 10), (3, 10)]  # 4 expired at 15: skipped
    assert clock.checkpoints_due(1000.0, 0) == []


def test_stale_heap_entries_do_not_pile_up() -> None:
    clock = primary(checkpoint_interval=5.0)
    clock.granted(1, 100, now=0.0)
    for step in range(10_000):
        clock.renew(1, step * 0.01)
    assert len(clock._expiry) + len(clock._checkpoints) <= 4 * len(clock) + 1025
    assert clock.remaining(1, 100.0) == 99


# -- randomized against a naive model ---------------------------------------------------------------


class Model:
    """The same contract as LeaseClock, by scanning every lease: obviously right, slow."""

    def __init__(self, interval: float, retry: float) -> None:
        self.interval, self.retry = interval, retry
        self.leases: dict[int, dict] = {}
        self.primary = False
        self.clears: dict[int, float] = {}

    def _start(self, lease: dict, now: float, extend: float) -> None:
        lease["expiry"] = lease["check"] = now + extend + (lease["rem"] or lease["ttl"])
        lease["cp"] = now + self.interval if lease["ttl"] > self.interval else None

    def granted(self, i: int, ttl: int, rem: int, now: float) -> None:
        if i in self.leases:
            self.leases[i].update(ttl=ttl, rem=rem)
            return
        self.leases[i] = lease = {"ttl": ttl, "rem": rem, "expiry": None, "check": None, "cp": None}
        if self.primary:
            self._start(lease, now, 0.0)

    def revoked(self, i: int) -> None:
        self.leases.pop(i, None)
        self.clears.pop(i, None)

    def promote(self, now: float, extend: float) -> None:
        self.primary = True
        self.clears.clear()
        for lease in self.leases.values():
            self._start(lease, now, extend)

    def demote(self) -> None:
        self.primary = False
        self.clears.clear()
        for lease in self.leases.values():
            lease.update(expiry=None, check=None, cp=None)

    def renew(self, i: int, now: float) -> int:
        if not self.primary:
            return -1
        lease = self.leases.get(i)
        if lease is None or lease["expiry"] <= now:
            return 0
        if lease["rem"] > 0:
            lease["rem"] = 0
            self.clears.setdefault(i, now)
        lease["expiry"] = lease["check"] = now + lease["ttl"]
        if lease["cp"] is None and lease["ttl"] > self.interval:
            lease["cp"] = now + self.interval
        return lease["ttl"]

    def remaining(self, i: int, now: float) -> int:
        lease = self.leases.get(i)
        if lease is None:
            return -1
        if not self.primary:
            return lease["rem"] or lease["ttl"]
        return max(int(lease["expiry"] - now), 0)

    def expired(self, now: float, limit: int) -> list[int]:
        if not self.primary:
            return []
        due = sorted((lease["check"], i) for i, lease in self.leases.items() if lease["check"] <= now)
        out = [i for _, i in due[:limit]]
        for i in out:
            self.leases[i]["check"] = now + self.retry
        return out

    def checkpoints_due(self, now: float, limit: int) -> list[tuple[int, int]]:
        if not self.primary:
            return []
        out = []
        while self.clears and len(out) < limit:
            i = next(iter(self.clears))
            del self.clears[i]
            out.append((i, 0))
        while len(out) < limit:
            due = sorted((lease["cp"], i) for i, lease in self.leases.items() if lease["cp"] is not None)
            if not due or due[0][0] > now:
                break
            i = due[0][1]
            lease = self.leases[i]
            lease["cp"] = None
            if now >= lease["expiry"]:
                continue
            if lease["ttl"] > self.interval:
                lease["cp"] = now + self.interval
            remaining = math.ceil(lease["expiry"] - now)
            if remaining < lease["ttl"]:
                out.append((i, remaining))
        return out

    def next_deadline(self) -> float | None:
        if not self.primary:
            return None
        times = [lease["check"] for lease in self.leases.values()]
        times += [lease["cp"] for lease in self.leases.values() if lease["cp"] is not None]
        times += list(self.clears.values())[:1]
        return min(times) if times else None


def run_against_model(seed: int, steps: int = 600) -> None:
    rng = random.Random(seed)
    interval, retry = rng.choice([5.0, 10.0]), rng.choice([1.0, 3.0])
    clock, model = LeaseClock(checkpoint_interval=interval, retry_after=retry), Model(interval, retry)
    now = 0.0
    for step in range(steps):
        now += rng.choice([0.0, 0.25, 0.5, 1.0, 2.5])  # quarter seconds: exact floats, many ties
        i = rng.randint(1, 12)
        op = rng.random()
        where = f"seed={seed} step={step} now={now}"
        if op < 0.2:
            ttl, rem = rng.choice([1, 3, 6, 12, 30]), rng.choice([0, 0, 2, 4])
            clock.granted(i, ttl, rem, now=now)
            model.granted(i, ttl, rem, now)
        elif op < 0.3:
            clock.revoked(i)
            model.revoked(i)
        elif op < 0.45:
            assert clock.renew(i, now) == model.renew(i, now), where
        elif op < 0.55:
            assert clock.remaining(i, now) == model.remaining(i, now), where
        elif op < 0.7:
            limit = rng.randint(0, 4)
            assert clock.expired(now, limit) == model.expired(now, limit), where
        elif op < 0.85:
            limit = rng.randint(0, 4)
            assert clock.checkpoints_due(now, limit) == model.checkpoints_due(now, limit), where
        elif op < 0.9:
            extend = rng.choice([0.0, 1.0, 1.5])
            clock.promote(now, extend)
            model.promote(now, extend)
        elif op < 0.93:
            clock.demote()
            model.demote()
        assert clock.next_deadline() == model.next_deadline(), where
        assert clock.is_primary == model.primary and len(clock) == len(model.leases), where


@pytest.mark.parametrize("seed", range(200))
def test_clock_matches_a_naive_model(seed: int) -> None:
    try:
        run_against_model(seed)
    except AssertionError:
        print(f"LeaseClock diverged from the model: reproduce with run_against_model({seed})")
        raise
