"""The raft actor: the IO shell around the pure :class:`RaftCore`.

One turn: take every proposal and read that arrived, hand them to the core as one batch, then
drain the core's Ready: persist its entries and hard state with ONE fsync (group commit: every
request of the turn shares it), send its messages, pass committed entries to the storage actor in
log order, release reads whose ReadIndex is safe — after the entries they must observe, on the
same ordered channel — and advance. Clock ticks come from the loop's timer, never from the core.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
import zmq

from actors import errors, metrics
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import Kind, Method, Record, encode_proposal, unpack
from actors.raft.core import NotLeader, RaftCore, Ready
from actors.raft.durable import DurableLog
from actors.raft.syncer import LogSyncer
from actors.raft.transport import LEASE_KINDS, PeerTransport

log = structlog.get_logger()

LOCAL_READS = frozenset({Method.STATUS, Method.MEMBER_LIST})  # answered from this member's own state


@dataclass(slots=True, frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class RaftSettings:
    member_id: int
    cluster_id: int
    members: tuple[Member, ...]
    data_dir: str
    listen_peer_urls: tuple[str, ...] = ()
    heartbeat_ms: int = 100
    election_ms: int = 1000
    applied: int = 0
    keep_entries: int = 10000


class RaftActor(Actor):
    name = "raft"

    def __init__(self, ctx: zmq.Context, settings: RaftSettings) -> None:
        self.settings = settings
        self.inbox = inbox(ctx, self.name)
        self.storage = Mailbox(ctx, "storage")
        self.session = Mailbox(ctx, "session")
        self.lease = Mailbox(ctx, "lease")
        path = os.path.join(settings.data_dir, "member", "raft")
        os.makedirs(path, exist_ok=True)
        self.log = DurableLog(path)
        self.metrics = metrics.core()
        for gauge, value in (
            (self.metrics.has_leader, 0),
            (self.metrics.is_leader, 0),
            (self.metrics.proposals_pending, 0),
            (self.metrics.proposals_committed, settings.applied),
        ):
            gauge.set(value)  # in multiprocess mode a gauge never set is not exported at all
        self.syncer = LogSyncer(ctx, self.log.sync, self.metrics.wal_fsync)
        self.syncing: Ready | None = None  # the Ready whose fsync is under way
        self.core = RaftCore(
            settings.member_id,
            [m.id for m in settings.members],
            self.log,
            random.Random(),
            election_tick=max(2, settings.election_ms // settings.heartbeat_ms),
            heartbeat_tick=1,
            applied=settings.applied,
        )
        self.transport = PeerTransport(
            ctx,
            settings.cluster_id,
            settings.member_id,
            settings.listen_peer_urls,
            {m.id: m.peer_urls for m in settings.members},
        )
        self.interval = settings.heartbeat_ms / 1000.0
        self.next_tick = time.monotonic() + self.interval
        self.reads: dict[bytes, list[Record]] = {}  # ReadIndex context -> the reads it serves
        self.ready_reads: list[tuple[int, list[Record]]] = []  # (read index, reads) awaiting commit
        self.committed = settings.applied  # highest index handed to storage
        self.term = 0
        self.read_seq = 0
        self.durable_applied = settings.applied
        self.leader_id = 0
        if len(settings.members) == 1:
            self.core.campaign()
        self._drain_ready()

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox, self.transport.inbound, self.syncer.done)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        if sock is self.syncer.done:
            rd, self.syncing = self.syncing, None
            if rd is not None:
                self._finish(rd)
            self._drain_ready()
            return
        if sock is self.transport.inbound:
            peer_messages, forwarded, lease = self.transport.receive(messages)
            for message in peer_messages:
                self.core.step(message)
            if forwarded:
                self._propose(forwarded)
            for sender, kind, records in lease:
                self.lease.extend(kind, records, aux=sender)
            self._drain_ready()
            return
        proposals: list[Record] = []
        reads: list[Record] = []
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            if kind == Kind.PROPOSE:
                proposals.extend(records)
            elif kind == Kind.READ:
                for record in records:
                    if record[1] in LOCAL_READS:
                        self._local_read(record)
                    else:
                        reads.append(record)
            elif kind == Kind.APPLIED_DURABLE:
                self._compact(aux)
            elif kind in LEASE_KINDS:
                self._relay_lease(kind, aux, records)
        if proposals:
            self._propose(proposals)
        if reads:
            self._read_index(reads)
        self._drain_ready()

    def _propose(self, proposals: list[Record]) -> None:
        """Propose here when leader; a follower forwards to the leader, whose commit answers us."""
        try:
            self.core.propose([encode_proposal(key, method, body) for key, method, body in proposals])
        except NotLeader as e:
            if not (e.leader_id and self.transport.forward(e.leader_id, proposals)):
                self._fail(proposals, errors.NO_LEADER)

    def _relay_lease(self, kind: int, to: int, records: list[Record]) -> None:
        """The lease actor's frames for member ``to``'s lease actor (this member's own included)."""
        if to == self.settings.member_id:
            self.lease.extend(kind, records, aux=to)
        else:
            self.transport.send_lease(to, kind, records)

    def _read_index(self, reads: list[Record]) -> None:
        """One ReadIndex request for the whole batch: one heartbeat round serves them all."""
        self.read_seq += 1
        context = self.read_seq.to_bytes(8, "big")
        try:
            self.core.read_index(context)
        except NotLeader:
            self._fail(reads, errors.NO_LEADER)
            return
        self.reads[context] = reads

    def _fail(self, records: list[Record], error: errors.EtcdError) -> None:
        self.metrics.proposals_failed.inc(len(records))
        text = error.message.encode()
        self.session.extend(Kind.RESULT, [(key, error.code, text) for key, _, _ in records])

    def _local_read(self, record: Record) -> None:
        """Status and member list: raft fills its part, storage fills the header and its own part."""
        key, method, _ = record
        core = self.core
        if method == Method.STATUS:
            response = rpc_pb2.StatusResponse(
                leader=core.leader_id, raftIndex=core.last_index, raftTerm=core.term
            )
        elif method == Method.MEMBER_LIST:
            response = rpc_pb2.MemberListResponse(
                members=[
                    rpc_pb2.Member(ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls)
                    for m in self.settings.members
                ]
            )
        else:
            self.session.put(Kind.RESULT, (key, errors.Code.UNIMPLEMENTED, b"unsupported read"))
            return
        self.storage.put(Kind.READ, (key, method, response.SerializeToString()))

    def _drain_ready(self) -> None:
        """Take Readys from the core; one that must be fsynced waits for the syncer thread."""
        core = self.core
        while self.syncing is None and core.has_ready():
            rd = core.ready()
            if rd.hard_state is not None or rd.entries:
                self.log.save(rd.hard_state, rd.entries, sync=False)
                if rd.must_sync:
                    self.syncing = rd
                    self.syncer.request()
                    return
            self._finish(rd)

    def _finish(self, rd: Ready) -> None:
        """The rest of a Ready, once its entries and hard state are durable."""
        if rd.messages:
            self.transport.send(rd.messages)  # only now: what they promise is on disk
        if rd.term != self.term:
            self._fail_reads(errors.LEADER_CHANGED)
            self.term = rd.term
        if rd.committed_entries:
            self.storage.extend(
                Kind.COMMITTED, [(e.index, e.type, e.data) for e in rd.committed_entries], aux=rd.term
            )
            self.committed = rd.committed_entries[-1].index
        for state in rd.read_states:
            reads = self.reads.pop(state.context, None)
            if reads:
                self.ready_reads.append((state.index, reads))
        self._release_reads()
        if rd.committed_entries:
            self.metrics.proposals_committed.set(self.committed)
            self.metrics.proposals_pending.set(self.core.last_index - self.committed)
        if rd.leader_id != self.leader_id:
            log.info("raft_leader_changed", leader=f"{rd.leader_id:x}", term=rd.term)
            self.leader_id = rd.leader_id
            is_leader = rd.leader_id == self.settings.member_id
            self.metrics.has_leader.set(int(bool(rd.leader_id)))
            self.metrics.is_leader.set(int(is_leader))
            if rd.leader_id:
                self.metrics.leader_changes.inc()
            self.lease.signal(Kind.LEADER, rd.leader_id)
        self.core.advance(rd)

    def _release_reads(self) -> None:
        """Reads go to storage behind the entries up to their read index (a follower may lag)."""
        waiting = []
        for index, reads in self.ready_reads:
            if index <= self.committed:
                self.storage.extend(Kind.READ, reads)
            else:
                waiting.append((index, reads))
        self.ready_reads = waiting

    def _fail_reads(self, error: errors.EtcdError) -> None:
        """A new term drops the core's pending ReadIndex requests: answer them instead of timing out."""
        for reads in self.reads.values():
            self._fail(reads, error)
        self.reads.clear()

    def _compact(self, durable_applied: int) -> None:
        """Drop log entries the storage actor has durably applied, keeping a tail for slow peers."""
        self.durable_applied = max(self.durable_applied, durable_applied)
        upto = self.durable_applied - self.settings.keep_entries
        if upto > self.log.first_index() + self.settings.keep_entries:
            self.log.compact(upto)

    def deadline(self) -> float | None:
        return self.next_tick

    def on_time(self, now: float) -> None:
        self.next_tick = max(self.next_tick + self.interval, now)
        self.transport.refresh_faults()
        self.core.tick()
        self._drain_ready()

    def flush(self) -> None:
        self.storage.flush()
        self.session.flush()
        self.lease.flush()

    def close(self) -> None:
        self.inbox.close(linger=0)
        for mailbox in (self.storage, self.session, self.lease):
            mailbox.close()
        self.transport.close()
        self.syncer.close()
        self.log.close()
