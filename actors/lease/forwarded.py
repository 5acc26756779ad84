"""Lease reads a follower handed to the leader's lease clock and still awaits (pure: times passed in).

Keep-alives are not raft entries: only the leader's clock renews a lease, so a follower sends them
to the leader (and TimeToLive too, whose remaining TTL only that clock knows), as etcd forwards
LeaseRenew to its leader over the peer link. The follower keeps each until it is answered, so that
none hangs on a leader that died: on a leader change everything pending goes again to the new
leader (renewing a lease twice is harmless), and what is still unanswered at its deadline fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.protocol import Record


@dataclass(slots=True, frozen=True)
class _Pending:
    method: int
    body: bytes
    deadline: float


class ForwardedReads:
    """Requests (by request key) sent to the leader and not answered yet, oldest first."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: dict[int, _Pending] = {}  # insertion order = deadline order (one timeout)

    def add(self, key: int, method: int, body: bytes, now: float) -> Record:
        """Remember a request; return it as the record to send."""
        self._pending[key] = _Pending(method, body, now + self.timeout)
        return key, method, body

    def answered(self, key: int) -> bool:
        """The answer for ``key`` came: whether it was pending (False for a late duplicate of an
        answer already relayed, or one that arrived after its deadline)."""
        return self._pending.pop(key, None) is not None

    def pending(self) -> list[Record]:
        """Every request still unanswered, oldest first, to send again to a new leader."""
        return [(key, p.method, p.body) for key, p in self._pending.items()]

    def take(self) -> list[Record]:
        """Every request still unanswered, forgotten here (a new leader answers them itself)."""
        records = self.pending()
        self._pending.clear()
        return records

    def expired(self, now: float) -> list[int]:
        """Keys of the requests past their deadline, forgotten here: the caller fails them."""
        out = []
        for key, p in self._pending.items():
            if p.deadline > now:
                break
            out.append(key)
        for key in out:
            del self._pending[key]
        return out

    def __len__(self) -> int:
        return len(self._pending)
