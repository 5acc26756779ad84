"""Per-user limit on password checks, so a guesser cannot keep the node's bcrypt worker busy.

A token bucket per user name: each password check takes a token (returned when the password was
right), ``burst`` tokens at most, refilled at ``rate`` per second. A guesser hammering one user
gets a few checks and then an immediate refusal that costs no hashing; other users are untouched.
Pure: the caller passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    def __init__(self, burst: int = 5, rate: float = 1.0, max_users: int = 100_000) -> None:
        self.burst = burst
        self.rate = rate
        self.max_users = max_users
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, user: str, now: float) -> _Bucket:
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= self.max_users:
                self.forget_full(now)
            bucket = self._buckets[user] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket

    def take(self, user: str, now: float) -> bool:
        """Whether a password check for ``user`` may run now (it then holds one token)."""
        bucket = self._bucket(user, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def give_back(self, user: str, now: float) -> None:
        """The check succeeded: it does not count against the user."""
        bucket = self._bucket(user, now)
        bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (they hold nothing a new bucket would not)."""
        for user in [
            u for u, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]:
            del self._buckets[user]
