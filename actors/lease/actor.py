"""The lease actor: the leader's clock for leases (expiry, keep-alive, checkpoints).

Which leases exist, their TTLs and attached keys are replicated state, applied by the storage
actor from raft entries; this actor mirrors the lease ids and TTLs from the storage actor's lease
events. Time is its own business: on the leader it renews leases on keep-alive (not a raft
entry, as in etcd), proposes the revocation of expired ones (at most ``REVOKE_RATE`` a second)
and periodically proposes checkpoints of remaining TTLs, so that a restart or a new leader keeps
each lease's remaining time instead of granting it a full new TTL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from actors import errors
from actors.lease.clock import LeaseClock
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import LEASE_EVENT, Kind, LeaseEvent, Method, Record, unpack

REVOKE_RATE = 1000  # leases revoked per second at most, like etcd's leaseRevokeRate
TURN = 0.5  # seconds between expiry checks: an expired lease is revoked within TTL + TURN


@dataclass(slots=True, frozen=True)
class LeaseSettings:
    key_prefix: int  # this member's request-key prefix, for the proposals this actor makes
    election_ms: int = 1000
    checkpoint_interval: float = 60.0


class LeaseActor(Actor):
    name = "lease"

    def __init__(self, ctx: zmq.Context, settings: LeaseSettings) -> None:
        self.settings = settings
        self.inbox = inbox(ctx, self.name)
        self.raft = Mailbox(ctx, "raft")
        self.storage = Mailbox(ctx, "storage")
        self.session = Mailbox(ctx, "session")
        self.clock = LeaseClock(checkpoint_interval=settings.checkpoint_interval)
        self.next_turn = time.monotonic() + TURN

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox,)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        now = time.monotonic()
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            if kind == Kind.LEASE_EVENTS:
                self._mirror(records, now)
            elif kind == Kind.LEADERSHIP:
                self._leadership(bool(aux), now)
            elif kind == Kind.READ:
                for record in records:
                    self._read(record, now)

    def _mirror(self, records: list[Record], now: float) -> None:
        for _, event, body in records:
            lease_id, ttl, remaining = LEASE_EVENT.unpack(body)
            if event == LeaseEvent.GRANTED:
                self.clock.granted(lease_id, ttl, remaining, now=now)
            elif event == LeaseEvent.REVOKED:
                self.clock.revoked(lease_id)

    def _leadership(self, leader: bool, now: float) -> None:
        if leader and not self.clock.is_primary:
            # like etcd: leases get an extra election timeout, so none expires for lack of a leader
            self.clock.promote(now, extend=self.settings.election_ms / 1000.0)
        elif not leader and self.clock.is_primary:
            self.clock.demote()

    def _read(self, record: Record, now: float) -> None:
        key, method, body = record
        if method == Method.LEASE_KEEPALIVE:
            if not self.clock.is_primary:
                self.session.put(Kind.RESULT, (key, errors.NO_LEADER.code, errors.NO_LEADER.message.encode()))
                return
            request = rpc_pb2.LeaseKeepAliveRequest.FromString(body)
            response = rpc_pb2.LeaseKeepAliveResponse(ID=request.ID, TTL=self.clock.renew(request.ID, now))
            self.storage.put(
                Kind.READ, (key, method, response.SerializeToString())
            )  # storage fills the header
        elif method == Method.LEASE_TIME_TO_LIVE:
            response = rpc_pb2.LeaseTimeToLiveResponse.FromString(body)
            response.TTL = self.clock.remaining(response.ID, now)
            self.session.put(Kind.RESULT, (key, 0, response.SerializeToString()))

    def _propose(self, method: Method, request: bytes) -> None:
        # nobody waits for these results: the key's low bits are 0, which the session never issues
        self.raft.put(Kind.PROPOSE, (self.settings.key_prefix, method, request))

    def deadline(self) -> float | None:
        return self.next_turn

    def on_time(self, now: float) -> None:
        self.next_turn = now + TURN
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
        self.storage.flush()
        self.session.flush()

    def close(self) -> None:
        self.inbox.close(linger=0)
        for mailbox in (self.raft, self.storage, self.session):
            mailbox.close()
