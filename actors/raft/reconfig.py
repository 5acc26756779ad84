"""etcd's strict reconfiguration check on connectivity (``--strict-reconfig-check``, on in 3.4).

Before proposing a membership change, etcd's server looks at how long its transport has been
connected to each voting member (``isConnectedFullySince`` / ``numConnectedSince`` with
``HealthInterval`` = 5 s) and refuses, with "etcdserver: unhealthy cluster", a change that would
leave the cluster without an active quorum: adding any member while some voter is not connected,
or removing a live voter when the connected voters left would not be a quorum.

Here the leader makes the check (membership changes are proposed by the leader; a follower
forwards them), and a peer counts as connected since the start of its current unbroken run of
raft messages: a gap longer than ``silence`` (the election timeout) ends a run, as a broken
stream does in etcd. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections.abc import Iterable

from actors import errors

HEALTH_INTERVAL = 5.0  # seconds; etcd's etcdserver.HealthInterval


class PeerActivity:
    """When each peer's current run of messages began (etcd's transport ``ActiveSince``)."""

    def __init__(self, silence: float) -> None:
        self.silence = silence
        self.since: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def heard(self, peer: int, now: float) -> None:
        last = self.last.get(peer)
        if last is None or now - last > self.silence:
            self.since[peer] = now
        self.last[peer] = now

    def forget(self, peer: int) -> None:
        self.since.pop(peer, None)
        self.last.pop(peer, None)

    def active_since(self, peer: int, now: float) -> float | None:
        """The start of the peer's current run, or None when it is not connected now."""
        last = self.last.get(peer)
        if last is None or now - last > self.silence:
            return None
        return self.since[peer]

    def connected_since(self, peer: int, now: float, interval: float = HEALTH_INTERVAL) -> bool:
        """etcd's ``isConnectedSince(now - interval)``."""
        since = self.active_since(peer, now)
        return since is not None and since < now - interval


def _connected(activity: PeerActivity, me: int, voters: Iterable[int], now: float) -> int:
    """etcd's ``numConnectedSince``: voters connected for the health interval, this member included."""
    return sum(1 for v in voters if v == me or activity.connected_since(v, now))


def check_add(activity: PeerActivity, me: int, voters: list[int], now: float) -> None:
    """etcd's ``mayAddMember`` connectivity part: every voter connected for the health interval."""
    if _connected(activity, me, voters, now) != len(voters):
        raise errors.UNHEALTHY.copy()


def check_remove(activity: PeerActivity, me: int, voters: list[int], target: int, now: float) -> None:
    """etcd's ``mayRemoveMember`` connectivity part (``target`` a voter): a member that is down is
    safe to remove; a live one only if the connected voters left are still a quorum."""
    if target != me and activity.active_since(target, now) is None:
        return
    if _connected(activity, me, voters, now) - 1 < 1 + (len(voters) - 1) // 2:
        raise errors.UNHEALTHY.copy()
