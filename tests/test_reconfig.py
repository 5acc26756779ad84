"""The pure strict-reconfig connectivity check (actors/raft/reconfig.py): etcd's mayAddMember and
mayRemoveMember decisions from when each peer's current run of messages began."""

from __future__ import annotations

import pytest

from actors import errors
from actors.raft.reconfig import HEALTH_INTERVAL, PeerActivity, check_add, check_remove

ME, A, B = 1, 2, 3
VOTERS = [ME, A, B]


def _activity(start: float, peers: list[int], until: float, step: float = 0.1) -> PeerActivity:
    activity = PeerActivity(silence=1.0)
    t = start
    while t <= until:
        for p in peers:
            activity.heard(p, t)
        t += step
    return activity


def test_a_run_starts_at_the_first_message_and_ends_after_silence() -> None:
    activity = PeerActivity(silence=1.0)
    assert activity.active_since(A, 0.0) is None
    activity.heard(A, 10.0)
    activity.heard(A, 10.9)
    assert activity.active_since(A, 11.0) == 10.0
    assert activity.active_since(A, 12.0) is None  # silent for longer than the silence: not connected
    activity.heard(A, 12.5)  # a new run
    assert activity.active_since(A, 12.6) == 12.5
    activity.forget(A)
    assert activity.active_since(A, 12.6) is None


def test_add_needs_every_voter_connected_for_the_health_interval() -> None:
    activity = _activity(0.0, [A, B], until=10.0)
    check_add(activity, ME, VOTERS, 10.0)
    young = _activity(10.0 - HEALTH_INTERVAL + 0.5, [A, B], until=10.0)
    with pytest.raises(errors.EtcdError) as e:
        check_add(young, ME, VOTERS, 10.0)  # connected, but not for 5 s yet
    assert e.value == errors.UNHEALTHY
    one_down = _activity(0.0, [A], until=10.0)
    with pytest.raises(errors.EtcdError):
        check_add(one_down, ME, VOTERS, 10.0)
    check_add(PeerActivity(1.0), ME, [ME], 10.0)  # a single member is always fully connected


def test_remove_keeps_an_active_quorum() -> None:
    one_down = _activity(0.0, [A], until=10.0)
    check_remove(one_down, ME, VOTERS, B, 10.0)  # B is down: safe to remove
    with pytest.raises(errors.EtcdError) as e:
        check_remove(one_down, ME, VOTERS, A, 10.0)  # only ME would be left of 2: no quorum
    assert e.value == errors.UNHEALTHY
    with pytest.raises(errors.EtcdError):
        check_remove(one_down, ME, VOTERS, ME, 10.0)  # the leader removing itself counts too
    healthy = _activity(0.0, [A, B], until=10.0)
    for target in VOTERS:
        check_remove(healthy, ME, VOTERS, target, 10.0)
    five = [ME, A, B, 4, 5]
    two_down = _activity(0.0, [A, B], until=10.0)
    with pytest.raises(errors.EtcdError):
        check_remove(two_down, ME, five, A, 10.0)  # 3 connected - 1 < 1 + 4 // 2
    one_of_five_down = _activity(0.0, [A, B, 4], until=10.0)
    check_remove(one_of_five_down, ME, five, A, 10.0)  # 4 connected - 1 >= 1 + 4 // 2
    check_remove(two_down, ME, five, 4, 10.0)  # down
