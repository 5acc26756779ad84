"""Keep-alives on a follower: the pure bookkeeping (ForwardedReads) and the lease actor's routing.

The actor is driven through its real inproc sockets (its own inbox; PULL sockets stand in for
the raft and session actors' inboxes, so everything it sends is read back as frames). Keep-alives
reach it as storage sends them: a LeaseKeepAliveResponse with the header filled in, TTL to fill.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from actors import errors
from actors.lease.actor import LeaseActor, LeaseSettings
from actors.lease.forwarded import ForwardedReads
from actors.mailbox import inbox
from actors.proto import rpc_pb2
from actors.protocol import LEASE_EVENT, Kind, LeaseEvent, Method, pack, unpack

ME, LEADER, OTHER = 0xA1, 0xB2, 0xC3

# -- ForwardedReads (pure) ----------------------------------------------------------------------------


def test_pending_reads_are_answered_once_and_resent_oldest_first() -> None:
    reads = ForwardedReads(timeout=7.0)
    assert reads.add(1, Method.LEASE_KEEPALIVE, b"a", now=0.0) == (1, Method.LEASE_KEEPALIVE, b"a")
    reads.add(2, Method.LEASE_TIME_TO_LIVE, b"b", now=1.0)
    assert reads.pending() == [(1, Method.LEASE_KEEPALIVE, b"a"), (2, Method.LEASE_TIME_TO_LIVE, b"b")]
    assert reads.answered(1)
    assert not reads.answered(1)  # a duplicate answer (the request went to two leaders)
    assert len(reads) == 1 and reads.take() == [(2, Method.LEASE_TIME_TO_LIVE, b"b")] and len(reads) == 0


def test_unanswered_reads_expire_at_their_deadline_only() -> None:
    reads = ForwardedReads(timeout=7.0)
    for key in range(5):
        reads.add(key, Method.LEASE_KEEPALIVE, b"", now=float(key))
    assert reads.expired(6.9) == []
    assert reads.expired(9.0) == [0, 1, 2]
    assert not reads.answered(1)  # failed already: a late answer is dropped
    assert [k for k, _, _ in reads.pending()] == [3, 4]


# -- the actor's routing ------------------------------------------------------------------------------


class Harness:
    """A LeaseActor plus PULL sockets bound where raft, storage and session would listen."""

    def __init__(self, election_ms: int = 1000) -> None:
        self.ctx = zmq.Context()
        self.peers = {name: inbox(self.ctx, name) for name in ("raft", "session")}
        settings = LeaseSettings(ME, ME << 48, election_ms=election_ms, request_timeout=7.0)
        self.actor = LeaseActor(self.ctx, settings)

    def send(self, kind: int, records: list[tuple[int, int, bytes]], aux: int = 0) -> None:
        self.actor.handle(self.actor.inbox, [[pack(kind, records, aux)]])
        self.actor.flush()

    def tick(self, later: float) -> None:
        """The actor's timer, ``later`` seconds from now."""
        self.actor.on_time(time.monotonic() + later)
        self.actor.flush()

    def received(self, name: str) -> list[tuple[int, int, list[tuple[int, int, bytes]]]]:
        """Every frame sent to ``name`` so far, decoded."""
        sock, out = self.peers[name], []
        while sock.poll(200):
            out.append(unpack(sock.recv()))
        return out

    def close(self) -> None:
        self.actor.close()
        for sock in self.peers.values():
            sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def keepalive(lease_id: int, ttl: int = 0) -> bytes:
    """A keep-alive as storage hands it on (header filled in), or with ``ttl`` as answered."""
    response = rpc_pb2.LeaseKeepAliveResponse(ID=lease_id, TTL=ttl)
    response.header.revision = 5
    return response.SerializeToString()


def answers(harness: Harness) -> list[tuple[int, int, int, int, int]]:
    """(key, status, lease id, TTL, header revision) of each keep-alive answered to the session."""
    out = []
    for _, _, records in harness.received("session"):
        for key, status, body in records:
            r = rpc_pb2.LeaseKeepAliveResponse.FromString(body)
            out.append((key, status, r.ID, r.TTL, r.header.revision))
    return out


def granted(lease_id: int, ttl: int) -> tuple[int, int, bytes]:
    return (0, LeaseEvent.GRANTED, LEASE_EVENT.pack(lease_id, ttl, 0))


def test_a_follower_forwards_to_the_leader_and_relays_its_answer(harness: Harness) -> None:
    harness.send(Kind.LEASE_EVENTS, [granted(7, 10)])
    harness.send(Kind.LEADER, [], aux=LEADER)
    harness.send(Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(7))])
    assert harness.received("raft") == [
        (Kind.LEASE_FORWARD, LEADER, [(100, Method.LEASE_KEEPALIVE, keepalive(7))])
    ]
    answer = keepalive(7, ttl=10)
    harness.send(Kind.LEASE_REPLY, [(100, 0, answer), (100, 0, answer)], aux=LEADER)  # second: a duplicate
    assert harness.received("session") == [(Kind.RESULT, 0, [(100, 0, answer)])]


def test_errors_from_the_leader_go_to_the_session(harness: Harness) -> None:
    harness.send(Kind.LEADER, [], aux=LEADER)
    harness.send(Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(7))])
    text = b"etcdserver: bad lease request"
    harness.send(Kind.LEASE_REPLY, [(100, errors.Code.INVALID_ARGUMENT, text)], aux=LEADER)
    assert harness.received("session") == [(Kind.RESULT, 0, [(100, errors.Code.INVALID_ARGUMENT, text)])]


def test_without_a_leader_reads_wait_then_go_to_the_next_leader(harness: Harness) -> None:
    harness.send(Kind.LEADER, [], aux=LEADER)
    harness.send(Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(7))])
    harness.send(Kind.LEADER, [], aux=0)  # the leader died: an election is under way
    harness.send(Kind.READ, [(101, Method.LEASE_KEEPALIVE, keepalive(8))])
    harness.send(Kind.LEADER, [], aux=OTHER)
    frames = harness.received("raft")
    assert frames[0] == (Kind.LEASE_FORWARD, LEADER, [(100, Method.LEASE_KEEPALIVE, keepalive(7))])
    assert frames[1:] == [
        (
            Kind.LEASE_FORWARD,
            OTHER,
            [(100, Method.LEASE_KEEPALIVE, keepalive(7)), (101, Method.LEASE_KEEPALIVE, keepalive(8))],
        )
    ]


def test_a_follower_that_becomes_leader_answers_what_it_had_forwarded(harness: Harness) -> None:
    harness.send(Kind.LEASE_EVENTS, [granted(7, 10)])
    harness.send(Kind.LEADER, [], aux=LEADER)
    harness.send(
        Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(7)), (101, Method.LEASE_KEEPALIVE, keepalive(9))]
    )
    harness.received("raft")
    harness.send(Kind.LEADER, [], aux=ME)
    assert answers(harness) == [(100, 0, 7, 10, 5)]  # 9 is unknown: it waits for the new leader to settle
    harness.tick(1.5)
    assert answers(harness) == [(101, 0, 9, 0, 5)]  # still unknown: TTL 0, as etcd
    assert harness.received("raft") == []


def test_a_new_leader_does_not_call_a_lease_it_has_not_applied_yet_unknown(harness: Harness) -> None:
    harness.send(Kind.LEADER, [], aux=ME)
    harness.send(Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(11))])
    harness.send(Kind.LEASE_FORWARD, [(200, Method.LEASE_KEEPALIVE, keepalive(11))], aux=OTHER)
    assert harness.received("session") == [] and harness.received("raft") == []
    harness.send(Kind.LEASE_EVENTS, [granted(11, 10)])  # the grant the old leader committed, applied now
    harness.tick(1.5)
    assert answers(harness) == [(100, 0, 11, 10, 5)]
    [(kind, to, [(key, status, body)])] = harness.received("raft")
    assert (kind, to, key, status, rpc_pb2.LeaseKeepAliveResponse.FromString(body).TTL) == (
        Kind.LEASE_REPLY, OTHER, 200, 0, 10,
    )  # fmt: skip


def test_reads_a_new_leader_held_go_to_the_next_leader_if_it_loses_leadership(harness: Harness) -> None:
    harness.send(Kind.LEADER, [], aux=ME)
    harness.send(Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(11))])
    harness.send(Kind.LEASE_FORWARD, [(200, Method.LEASE_KEEPALIVE, keepalive(11))], aux=OTHER)
    harness.send(Kind.LEADER, [], aux=OTHER)
    # ours is forwarded to the new leader; the other member's is dropped (it resends it itself)
    assert harness.received("raft") == [
        (Kind.LEASE_FORWARD, OTHER, [(100, Method.LEASE_KEEPALIVE, keepalive(11))])
    ]
    harness.tick(1.5)
    assert harness.received("session") == [] and harness.received("raft") == []


@pytest.fixture
def quick_harness() -> Iterator[Harness]:
    """A harness whose election timeout (so a new leader's settling time) is 50 ms."""
    h = Harness(election_ms=50)
    try:
        yield h
    finally:
        h.close()


def test_the_leader_answers_other_members_and_a_follower_does_not(quick_harness: Harness) -> None:
    harness = quick_harness
    harness.send(Kind.LEASE_EVENTS, [granted(7, 10)])
    ttl_query = rpc_pb2.LeaseTimeToLiveResponse(ID=7, grantedTTL=10, keys=[b"k"]).SerializeToString()
    gone_query = rpc_pb2.LeaseTimeToLiveResponse(ID=5, grantedTTL=10, keys=[b"k"]).SerializeToString()
    asked = [
        (1, Method.LEASE_KEEPALIVE, keepalive(7)),
        (2, Method.LEASE_TIME_TO_LIVE, ttl_query),
        (3, Method.LEASE_TIME_TO_LIVE, gone_query),
        (4, Method.LEASE_KEEPALIVE, b"\xff\xff"),  # not a protobuf message
    ]
    harness.send(Kind.LEADER, [], aux=OTHER)
    harness.send(Kind.LEASE_FORWARD, asked, aux=OTHER)  # not the leader here: dropped, the asker resends
    assert harness.received("raft") == []
    harness.send(Kind.LEADER, [], aux=ME)
    time.sleep(0.1)  # settled: a lease it does not know is not found
    harness.send(Kind.LEASE_FORWARD, asked, aux=OTHER)
    [(kind, to, replies)] = harness.received("raft")
    assert (kind, to, [(key, status) for key, status, _ in replies]) == (
        Kind.LEASE_REPLY, OTHER, [(1, 0), (2, 0), (3, 0), (4, errors.Code.INVALID_ARGUMENT)],
    )  # fmt: skip
    alive = rpc_pb2.LeaseKeepAliveResponse.FromString(replies[0][2])
    assert (alive.ID, alive.TTL, alive.header.revision) == (7, 10, 5)  # the asker's header kept
    ttl = rpc_pb2.LeaseTimeToLiveResponse.FromString(replies[1][2])
    assert (ttl.TTL, ttl.grantedTTL, list(ttl.keys)) == (10, 10, [b"k"])  # just renewed (key 1)
    gone = rpc_pb2.LeaseTimeToLiveResponse.FromString(replies[2][2])
    assert (gone.ID, gone.TTL, gone.grantedTTL, list(gone.keys)) == (5, -1, 0, [])  # etcd: only TTL -1


def test_an_unanswered_forward_fails_with_etcds_timeout(harness: Harness) -> None:
    harness.send(Kind.LEADER, [], aux=LEADER)
    harness.send(Kind.READ, [(100, Method.LEASE_KEEPALIVE, keepalive(7))])
    harness.tick(3.0)
    assert harness.received("session") == []
    harness.tick(7.5)
    timeout = (100, errors.TIMEOUT.code, errors.TIMEOUT.message.encode())
    assert harness.received("session") == [(Kind.RESULT, 0, [timeout])]
