"""The lease actor: the leader's clock for leases (expiry, keep-alive, checkpoints).

Which leases exist, their TTLs and attached keys are replicated state, applied by the storage
actor from raft entries; this actor mirrors the lease ids and TTLs from the storage actor's lease
events. Time is its own business: on the leader it renews leases on keep-alive (not a raft
entry, as in etcd), proposes the revocation of expired ones (at most ``REVOKE_RATE`` a second)
and periodically proposes checkpoints of remaining TTLs, so that a restart or a new leader keeps
each lease's remaining time instead of granting it a full new TTL.

On a follower, keep-alives and TimeToLive need the leader's clock: the actor forwards them to the
leader's lease actor (through the raft actors' peer link, :class:`Kind.LEASE_FORWARD`), which
answers them (:class:`Kind.LEASE_REPLY`); :mod:`actors.lease.forwarded` keeps them until then,
sends them again when the leader changes, and fails them at the request timeout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
import zmq
from google.protobuf.message import DecodeError

from actors import errors
from actors.lease.clock import LeaseClock
from actors.lease.forwarded import ForwardedReads
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import LEASE_EVENT, Kind, LeaseEvent, Method, Record, unpack

log = structlog.get_logger()

REVOKE_RATE = 1000  # leases revoked per second at most, like etcd's leaseRevokeRate
TURN = 0.5  # seconds between expiry checks: an expired lease is revoked within TTL + TURN


@dataclass(slots=True, frozen=True)
class LeaseSettings:
    member_id: int
    key_prefix: int  # this member's request-key prefix, for the proposals this actor makes
    election_ms: int = 1000
    checkpoint_interval: float = 60.0
    request_timeout: float = 7.0  # a keep-alive forwarded to the leader fails after this long


class LeaseActor(Actor):
    name = "lease"

    def __init__(self, ctx: zmq.Context, settings: LeaseSettings) -> None:
        self.settings = settings
        self.inbox = inbox(ctx, self.name)
        self.raft = Mailbox(ctx, "raft")
        self.session = Mailbox(ctx, "session")
        self.clock = LeaseClock(checkpoint_interval=settings.checkpoint_interval)
        self.forwarded = ForwardedReads(settings.request_timeout)
        self.leader = 0  # the raft leader's member id as raft last told us, 0 = none
        self.settled_at = 0.0  # a new leader's reads of leases it does not know wait until then
        self.unsettled: list[tuple[int, int, int, bytes]] = []  # (member or 0, key, method, body)
        self.next_turn = time.monotonic() + TURN

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox,)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        now = time.monotonic()
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            if kind == Kind.LEASE_EVENTS:
                self._mirror(records, now)
            elif kind == Kind.LEADER:
                self._leader_changed(aux, now)
            elif kind == Kind.READ:
                for key, method, body in records:
                    self._read(key, method, body, now)
            elif kind == Kind.LEASE_FORWARD:
                self._answer_member(aux, records, now)
            elif kind == Kind.LEASE_REPLY:
                self._relay_replies(records)

    def _mirror(self, records: list[Record], now: float) -> None:
        for _, event, body in records:
            lease_id, ttl, remaining = LEASE_EVENT.unpack(body)
            if event == LeaseEvent.GRANTED:
                self.clock.granted(lease_id, ttl, remaining, now=now)
            elif event == LeaseEvent.REVOKED:
                self.clock.revoked(lease_id)

    def _leader_changed(self, leader: int, now: float) -> None:
        self.leader = leader
        leading = leader == self.settings.member_id
        if leading and not self.clock.is_primary:
            # like etcd: leases get an extra election timeout, so none expires for lack of a leader
            self.clock.promote(now, extend=self.settings.election_ms / 1000.0)
            self.settled_at = now + self.settings.election_ms / 1000.0
        elif not leading and self.clock.is_primary:
            self.clock.demote()
            held, self.unsettled = self.unsettled, []
            for member, key, method, body in held:
                if not member:  # our own clients': to the new leader (below); other members resend theirs
                    self.forwarded.add(key, method, body, now)
        if leading:
            self._answer(0, self.forwarded.take(), now)
        elif leader and len(self.forwarded):
            log.info("lease_reads_forwarded_again", leader=f"{leader:x}", count=len(self.forwarded))
            self.raft.extend(Kind.LEASE_FORWARD, self.forwarded.pending(), aux=leader)

    def _read(self, key: int, method: int, body: bytes, now: float) -> None:
        """A keep-alive or TimeToLive response from storage (header and keys filled in) for the
        leader's clock to complete."""
        if self.clock.is_primary:
            self._answer(0, [(key, method, body)], now)
            return
        record = self.forwarded.add(key, method, body, now)
        if self.leader:  # otherwise it goes when a leader is known
            self.raft.put(Kind.LEASE_FORWARD, record, aux=self.leader)

    def _answer_member(self, member: int, records: list[Record], now: float) -> None:
        """Lease reads another member forwarded: answered when this member's clock is the leader's.

        Otherwise (leadership moved on meanwhile) they are dropped: the asking member sends them
        again once it learns the new leader, and fails them at their deadline.
        """
        if self.clock.is_primary:
            self._answer(member, records, now)
        else:
            log.info("lease_reads_not_leader", member=f"{member:x}", count=len(records))

    def _answer(self, member: int, records: list[Record], now: float) -> None:
        """Complete lease reads from the leader's clock, for ``member`` (0: this member's session).

        A new leader may not have applied the latest grants yet (entries the old leader committed
        reach its storage once its own first entry commits): until an election timeout after its
        promotion, a read of a lease it does not know waits instead of answering "not found", as
        etcd's leader waits for its applied index to catch up before renewing.
        """
        replies: list[Record] = []
        for key, method, body in records:
            try:
                if now < self.settled_at and self._lease_id(method, body) not in self.clock:
                    self.unsettled.append((member, key, method, body))
                    continue
                replies.append((key, 0, self._clock_answer(method, body, now)))
            except (DecodeError, ValueError) as e:
                error = errors.EtcdError(errors.Code.INVALID_ARGUMENT, f"bad lease request: {e}")
                replies.append((key, error.code, error.message.encode()))
        if member:
            self.raft.extend(Kind.LEASE_REPLY, replies, aux=member)
        else:
            self.session.extend(Kind.RESULT, replies)

    @staticmethod
    def _lease_id(method: int, body: bytes) -> int:
        if method == Method.LEASE_KEEPALIVE:
            return rpc_pb2.LeaseKeepAliveResponse.FromString(body).ID
        if method == Method.LEASE_TIME_TO_LIVE:
            return rpc_pb2.LeaseTimeToLiveResponse.FromString(body).ID
        raise ValueError(f"method {method} is not answered by the lease clock")

    def _clock_answer(self, method: int, body: bytes, now: float) -> bytes:
        """The response with what the leader's clock says: the renewed TTL, or the remaining TTL."""
        if method == Method.LEASE_KEEPALIVE:
            keepalive = rpc_pb2.LeaseKeepAliveResponse.FromString(body)
            keepalive.TTL = self.clock.renew(keepalive.ID, now)
            return keepalive.SerializeToString()
        if method == Method.LEASE_TIME_TO_LIVE:
            response = rpc_pb2.LeaseTimeToLiveResponse.FromString(body)
            ttl = self.clock.remaining(response.ID, now)
            if ttl == -1:  # revoked since the asking member read it: as etcd, nothing but TTL -1
                response = rpc_pb2.LeaseTimeToLiveResponse(header=response.header, ID=response.ID)
            response.TTL = ttl
            return response.SerializeToString()
        raise ValueError(f"method {method} is not answered by the lease clock")

    def _fail(self, key: int, error: errors.EtcdError) -> None:
        self.session.put(Kind.RESULT, (key, error.code, error.message.encode()))

    def _relay_replies(self, records: list[Record]) -> None:
        """The leader's answers to what this member forwarded; late duplicates are dropped."""
        for key, status, body in records:
            if self.forwarded.answered(key):
                self.session.put(Kind.RESULT, (key, status, body))

    def _propose(self, method: Method, request: bytes) -> None:
        # nobody waits for these results: the key's low bits are 0, which the session never issues
        self.raft.put(Kind.PROPOSE, (self.settings.key_prefix, method, request))

    def deadline(self) -> float | None:
        return self.next_turn

    def on_time(self, now: float) -> None:
        self.next_turn = now + TURN
        for key in self.forwarded.expired(now):
            self._fail(key, errors.TIMEOUT)
        if self.unsettled and now >= self.settled_at:
            held, self.unsettled = self.unsettled, []
            for member, key, method, body in held:
                self._answer(member, [(key, method, body)], now)
        if not self.clock.is_primary:
            return
        for lease_id in self.clock.expired(now, limit=int(REVOKE_RATE * TURN)):
            self._propose(Method.LEASE_REVOKE, rpc_pb2.LeaseRevokeRequest(ID=lease_id).SerializeToString())
        due = self.clock.checkpoints_due(now, limit=1000)
        if due:
            checkpoints = [rpc_pb2.LeaseCheckpoint(ID=i, remaining_TTL=ttl) for i, ttl in due]
            request = rpc_pb2.LeaseCheckpointRequest(checkpoints=checkpoints)
            self._propose(Method.LEASE_CHECKPOINT, request.SerializeToString())

    def flush(self) -> None:
        self.raft.flush()
        self.session.flush()

    def close(self) -> None:
        self.inbox.close(linger=0)
        for mailbox in (self.raft, self.session):
            mailbox.close()
