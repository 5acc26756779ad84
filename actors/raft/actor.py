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
import shutil
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog
import zmq
from google.protobuf.message import DecodeError

from actors import errors, metrics
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import (
    MEMBERSHIP_CHANGES,
    EntryType,
    Kind,
    Method,
    Record,
    encode_proposal,
    pack_blobs,
    unpack,
    unpack_blobs,
)
from actors.raft import codec
from actors.raft.core import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    Message,
    MsgType,
    NotLeader,
    RaftCore,
    Ready,
    Role,
    Snapshot,
    snapshot_of,
)
from actors.raft.curve import CurveSettings
from actors.raft.durable import DurableLog
from actors.raft.log import Entry
from actors.raft.members import MemberTable, etcd_error
from actors.raft.reconfig import PeerActivity, check_add, check_remove
from actors.raft.snapshots import Incoming, Outgoing, parse_ack
from actors.raft.syncer import LogSyncer
from actors.raft.transport import LEASE_KINDS, SNAP_ACK_MAGIC, SNAP_CHUNK_MAGIC, Inbound, PeerTransport
from actors.raft.unpacker import SnapshotUnpacker
from actors.storage.checkpoint import read_ticket

log = structlog.get_logger()

LOCAL_READS = frozenset({Method.STATUS, Method.MEMBER_LIST})  # answered from this member's own state
PUBLISH_RETRY = 1.0  # seconds between attempts to record this member's name and client URLs
REMOVED_GRACE = 1.0  # seconds a removed member keeps running to send its last messages
MOVE_LEADER_TIMEOUT = 5.0  # seconds a MoveLeader waits for the transferee to take over


@dataclass(slots=True, frozen=True)
class RaftSettings:
    member_id: int
    cluster_id: int
    members: MemberTable  # the table as of ``applied`` (the raft actor keeps its own copy up to date)
    data_dir: str
    bootstrap_voters: tuple[int, ...] = ()  # the configuration before index 1 (see identity.py)
    name: str = ""
    client_urls: tuple[str, ...] = ()
    listen_peer_urls: tuple[str, ...] = ()
    heartbeat_ms: int = 100
    election_ms: int = 1000
    applied: int = 0
    keep_entries: int = 10000  # etcd's snapshot-count: log entries kept below the durably applied index
    installed_snapshot: bytes = b""  # Snapshot.encode() of the last one the kv DB installed (or empty)
    curve: CurveSettings | None = None  # CURVE on the peer links (actors/raft/curve.py)


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
        self._finish_install(settings)
        self.metrics = metrics.core()
        for gauge, value in (
            (self.metrics.has_leader, 0),
            (self.metrics.is_leader, 0),
            (self.metrics.proposals_pending, 0),
            (self.metrics.proposals_committed, settings.applied),
        ):
            gauge.set(value)  # in multiprocess mode a gauge never set is not exported at all
        self.syncer = LogSyncer(ctx, self.log.sync, self.metrics.wal_fsync)
        self.syncing: Ready | None = None  # the Ready whose fsync is wanted or under way
        self.sync_wanted = False  # the fsync of ``syncing`` waits for the loop (run_blocking)
        self.sent_early: Ready | None = None  # a leader's Ready whose messages left before its write
        self.members = settings.members.copy()
        self.core = RaftCore(
            settings.member_id,
            settings.bootstrap_voters,
            self.log,
            random.Random(),
            election_tick=max(2, settings.election_ms // settings.heartbeat_ms),
            heartbeat_tick=1,
            applied=settings.applied,
        )
        self.snapshot_dir = os.path.join(settings.data_dir, "member", "snap-recv")
        shutil.rmtree(self.snapshot_dir, ignore_errors=True)  # partial transfers of an earlier run
        self.receiving = Incoming(self.snapshot_dir)
        self.staged: dict[tuple[int, int], str] = {}  # (index, term) -> unpacked snapshot, not installed
        self.unpacker = SnapshotUnpacker(ctx)
        self.unpacking: deque[tuple[int, Message, str]] = deque()  # (sender, SNAP message, target) in order
        self.installing: Ready | None = None  # the Ready whose snapshot the storage actor is installing
        self.snapshot_wanted: dict[int, Message] = {}  # peer -> SNAP message waiting for its checkpoint
        self.sending: dict[int, Outgoing] = {}  # peer -> snapshot transfer under way
        self.activity = PeerActivity(settings.election_ms / 1000.0)  # for the strict reconfig check
        self.transport = PeerTransport(
            ctx,
            settings.cluster_id,
            settings.member_id,
            settings.listen_peer_urls,
            self.members.peer_urls(),
            settings.curve and replace(settings.curve, peers=self.members.curve_keys(settings.curve.peers)),
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
        self.next_publish = 0.0
        self.moves: list[tuple[int, int, float]] = []  # MoveLeader requests: (key, transferee, deadline)
        self.on_removed = lambda: None  # set by the node: a removed member shuts down
        self.stop_at = 0.0
        if self.core.voters == [settings.member_id]:
            self.core.campaign()
        self._drain_ready()

    def sockets(self) -> Sequence[zmq.Socket]:
        zap = () if self.transport.zap is None else (self.transport.zap.socket,)
        return (self.inbox, self.transport.inbound, self.syncer.done, self.unpacker.done, *zap)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        if sock is self.syncer.done:
            self._synced()
            return
        if sock is self.unpacker.done:
            for (outcome,) in messages:
                self._unpacked(outcome)
            self._drain_ready()
            return
        if self.transport.zap is not None and sock is self.transport.zap.socket:
            self.transport.zap.answer(messages)
            return
        if sock is self.transport.inbound:
            self._peer_frames(self.transport.receive(messages))
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
                    elif record[1] == Method.MOVE_LEADER:
                        self._move_leader(record)
                    else:
                        reads.append(record)
            elif kind == Kind.APPLIED_DURABLE:
                self._compact(aux)
            elif kind == Kind.RESULT:
                for peer, status, body in records:
                    self._checkpoint_ready(peer, status, body)
            elif kind == Kind.SNAPSHOT_INSTALLED:
                self._installed(records[0][2])
            elif kind in LEASE_KINDS:
                self._relay_lease(kind, aux, records)
        if proposals:
            self._propose(proposals)
        if reads:
            self._read_index(reads)
        self._drain_ready()

    def is_learner(self) -> bool:
        """Whether this member is a learner now (the session refuses what a learner does not serve)."""
        me = self.members.get(self.settings.member_id)
        return me is not None and me.isLearner

    def _peer_frames(self, got: Inbound) -> None:
        removed = self.members.removed
        now = time.monotonic()
        for message in got.raft:
            if message.frm in removed:
                self.transport.tell_removed(message.frm)
            else:
                self.activity.heard(message.frm, now)
                self.core.step(message)
        for sender, records in got.forwarded:
            self._propose(records, origin=sender)
        if got.results:
            self.session.extend(Kind.RESULT, got.results)
        if got.joins:
            answer = rpc_pb2.MemberListResponse(members=self.members.listing())
            answer.header.cluster_id = self.settings.cluster_id
            answer.header.member_id = self.settings.member_id
            for routing_id in got.joins:
                self.transport.answer_join(routing_id, answer.SerializeToString())
        for sender, kind, records in got.lease:
            self.lease.extend(kind, records, aux=sender)
        if got.removed:
            self._removed()
        for sender, payload in got.snapshot_acks:
            self._snapshot_ack(sender, payload, now)
        for sender, payload in got.snapshot_chunks:
            self._snapshot_chunk(sender, payload)

    def _propose(self, proposals: list[Record], origin: int = 0) -> None:
        """Propose here when leader; a follower forwards to the leader, whose commit answers us.
        ``origin`` is the member that forwarded these (0: our own session's)."""
        normal = []
        for record in proposals:
            if record[1] in MEMBERSHIP_CHANGES:
                self._propose_change(record, origin)
            else:
                normal.append(record)
        if not normal:
            return
        try:
            self.core.propose([encode_proposal(key, method, body) for key, method, body in normal])
        except NotLeader as e:
            self._forward(e, normal, origin)

    def _forward(self, e: NotLeader, records: list[Record], origin: int) -> None:
        if origin or not (e.leader_id and self.transport.forward(e.leader_id, records)):
            self._fail(records, errors.NO_LEADER, origin)

    def _propose_change(self, record: Record, origin: int) -> None:
        """A membership change: checked against the member table and the core, proposed by the leader."""
        key, method, body = record
        try:
            if self.core.role != Role.LEADER:
                raise NotLeader(self.core.leader_id)
            change = self.members.conf_change(method, body, key, self.settings.cluster_id, int(time.time()))
            self._check_active_quorum(change)
            self.core.propose_conf_change(change)
        except NotLeader as e:
            self._forward(e, [record], origin)
        except ConfChangeError as e:
            self._fail([record], etcd_error(e), origin)
        except errors.EtcdError as e:
            log.info("membership_change_refused", method=method, error=e.message)
            self._fail([record], e, origin)
        else:
            log.info("membership_change_proposed", change=change.type.name, member=f"{change.node_id:x}")

    def _check_active_quorum(self, change: ConfChange) -> None:
        """etcd's strict reconfig check on connectivity (reconfig.py): EtcdError "unhealthy cluster"."""
        voters = [m.ID for m in self.members.listing() if not m.isLearner]
        me, now = self.settings.member_id, time.monotonic()
        if change.type in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER):
            check_add(self.activity, me, voters, now)
        elif change.type == ConfChangeType.REMOVE and change.node_id in voters:
            check_remove(self.activity, me, voters, change.node_id, now)

    def _move_leader(self, record: Record) -> None:
        """etcd's MoveLeader: only the leader takes it; answered once the transferee leads."""
        key, _, body = record
        try:
            target = rpc_pb2.MoveLeaderRequest.FromString(body).targetID
        except DecodeError:
            error = errors.EtcdError(errors.Code.INVALID_ARGUMENT, "cairn: malformed MoveLeaderRequest")
            self._fail([record], error)
            return
        member = self.members.get(target)
        if self.core.role != Role.LEADER:
            self._fail([record], errors.NOT_LEADER)
        elif member is None or member.isLearner or target not in self.core.voters:
            self._fail([record], errors.BAD_LEADER_TRANSFEREE)
        elif target == self.settings.member_id:
            self.session.put(Kind.RESULT, (key, 0, b""))
        else:
            log.info("leader_transfer_started", transferee=f"{target:x}")
            self.core.transfer_leader(target)
            self.moves.append((key, target, time.monotonic() + MOVE_LEADER_TIMEOUT))

    def _settle_moves(self, now: float) -> None:
        waiting = []
        for key, target, deadline in self.moves:
            if self.leader_id == target:
                log.info("leader_transfer_finished", transferee=f"{target:x}")
                self.session.put(Kind.RESULT, (key, 0, b""))
            elif deadline < now:
                error = errors.LEADER_TRANSFER_TIMEOUT
                self.session.put(Kind.RESULT, (key, error.code, error.message.encode()))
            else:
                waiting.append((key, target, deadline))
        self.moves = waiting

    def _apply_membership(self, entries: list) -> None:
        """Configuration changes and member attributes take effect here as they are handed to storage
        (which applies the same entries to its persistent copy of the table)."""
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                change = ConfChange.from_entry(e)
                self.core.apply_conf_change(change)
                self.members.apply_change(change)
                self._admit_curve_keys()
                self._relink(change)
            elif e.type == EntryType.NORMAL and len(e.data) > 8 and e.data[8] == Method.MEMBER_PUBLISH:
                self.members.publish(rpc_pb2.Member.FromString(e.data[9:]))

    def _admit_curve_keys(self) -> None:
        """CURVE admits the keys of the members in the table now (actors/raft/curve.py)."""
        if self.settings.curve is not None:
            self.transport.admit(self.members.curve_keys(self.settings.curve.peers))

    def _relink(self, change: ConfChange) -> None:
        """Peer links follow the configuration: connect to new members, drop removed ones."""
        peer = change.node_id
        log.info("membership_changed", change=change.type.name, member=f"{peer:x}", index=change.index)
        if change.type == ConfChangeType.REMOVE:
            if peer == self.settings.member_id:
                self._removed()
            else:
                self.transport.retire(peer)
                self.activity.forget(peer)
        elif change.type != ConfChangeType.PROMOTE_LEARNER and peer != self.settings.member_id:
            member = self.members.get(peer)
            if member is not None and member.peerURLs:
                self.transport.connect(peer, member.peerURLs[0])

    def _removed(self) -> None:
        """This member was removed: stop a moment later, once what it still owes has gone out (the
        step-down of a removed leader, the applying of its own removal)."""
        if not self.stop_at:
            log.warning("member_removed", member=f"{self.settings.member_id:x}")
            self.stop_at = time.monotonic() + REMOVED_GRACE

    def _maybe_publish(self, now: float) -> None:
        """Record this member's name and client URLs in the table once it has a leader (etcd's publish)."""
        me = self.members.get(self.settings.member_id)
        if me is None or now < self.next_publish or not self.leader_id:
            return
        if me.name == self.settings.name and list(me.clientURLs) == list(self.settings.client_urls):
            return
        self.next_publish = now + PUBLISH_RETRY
        attributes = rpc_pb2.Member(
            ID=self.settings.member_id, name=self.settings.name, clientURLs=self.settings.client_urls
        )
        self._propose([(0, Method.MEMBER_PUBLISH, attributes.SerializeToString())])

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

    def _fail(self, records: list[Record], error: errors.EtcdError, origin: int = 0) -> None:
        self.metrics.proposals_failed.inc(len(records))
        text = error.message.encode()
        results = [(key, error.code, text) for key, _, _ in records if key]
        if origin:
            self.transport.answer_failed(origin, results)
        else:
            self.session.extend(Kind.RESULT, results)

    def _local_read(self, record: Record) -> None:
        """Status and member list: raft fills its part, storage fills the header and its own part."""
        key, method, _ = record
        core = self.core
        if method == Method.STATUS:
            response = rpc_pb2.StatusResponse(
                leader=core.leader_id,
                raftIndex=core.last_index,
                raftTerm=core.term,
                isLearner=self.settings.member_id in core.learners,
            )
        elif method == Method.MEMBER_LIST:
            response = rpc_pb2.MemberListResponse()  # storage lists its (persistent) member table
        else:
            self.session.put(Kind.RESULT, (key, errors.Code.UNIMPLEMENTED, b"unsupported read"))
            return
        self.storage.put(Kind.READ, (key, method, response.SerializeToString()))

    def _drain_ready(self) -> None:
        """Take Readys from the core; one that must be fsynced waits for the syncer thread, one that
        brings a snapshot waits for the storage actor to install it."""
        core = self.core
        while self.syncing is None and self.installing is None and core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                self._install(rd)
                return
            if not self._persist(rd):
                return
            self._finish(rd)

    def _persist(self, rd: Ready) -> bool:
        """Write a Ready's hard state and entries; False when it must wait for their fsync.

        A leader whose term and vote are on disk already sends first: the followers write the new
        entries while it does (the core counts its own only once they are durable).
        """
        if rd.hard_state is not None or rd.entries:
            if (
                rd.role == Role.LEADER
                and rd.messages
                and (rd.hard_state is None or rd.hard_state.term == self.log.initial_state().term)
            ):
                self._send(rd.messages)
                self.sent_early = rd
            self.log.save(rd.hard_state, rd.entries, sync=False)
            if rd.must_sync:
                # what was committed before this Ready's entries is durable already (the previous
                # Ready's fsync finished before this one was taken): apply it now, not after this fsync
                first_new = rd.entries[0].index if rd.entries else None
                self._commit(
                    [e for e in rd.committed_entries if first_new is None or e.index < first_new], rd.term
                )
                self.syncing = rd
                self.sync_wanted = True
                return False
        return True

    def blocking_work(self) -> bool:
        return self.sync_wanted

    def run_blocking(self, here: bool) -> None:
        self.sync_wanted = False
        if here:
            self.syncer.sync_here()
            self._synced()
        else:
            self.syncer.request()

    def _synced(self) -> None:
        """The fsync of ``syncing`` has finished: the rest of its Ready, then the next Readys."""
        rd, self.syncing = self.syncing, None
        if rd is not None:
            self._finish(rd)
        self._drain_ready()

    def _commit(self, entries: list[Entry], term: int) -> None:
        """Hand committed entries to storage, in order and each once."""
        entries = [e for e in entries if e.index > self.committed]
        if entries:
            self._apply_membership(entries)
            self.storage.extend(Kind.COMMITTED, [(e.index, e.type, e.data) for e in entries], aux=term)
            self.committed = entries[-1].index

    def _finish(self, rd: Ready) -> None:
        """The rest of a Ready, once its entries and hard state are durable."""
        if rd.messages and self.sent_early is not rd:
            self._send(rd.messages)  # only now: what they promise is on disk
        self.sent_early = None
        if rd.term != self.term:
            self._fail_reads(errors.LEADER_CHANGED)
            self.term = rd.term
        self._commit(rd.committed_entries, rd.term)
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
            if self.moves:
                self._settle_moves(time.monotonic())
        self.core.advance(rd)

    def _send(self, messages: list[Message]) -> None:
        if any(m.type == MsgType.SNAP for m in messages):
            messages = [m for m in messages if m.type != MsgType.SNAP or self._want_snapshot(m)]
        self.transport.send(messages)

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

    # -- snapshots: sending (leader) -------------------------------------------------------------

    def _want_snapshot(self, m: Message) -> bool:
        """The core wants to send a follower a snapshot: ask storage for a checkpoint of the kv DB.
        The SNAP message itself leaves with the data (``False``: not sent now)."""
        if m.to not in self.sending and m.to not in self.snapshot_wanted:
            self.snapshot_wanted[m.to] = m
            self.storage.put(Kind.READ, (m.to, Method.RAFT_SNAPSHOT, b""))
        return False

    def _checkpoint_ready(self, peer: int, status: int, body: bytes) -> None:
        """The checkpoint is taken (at the storage's applied index): record a raft snapshot at that
        index (its term and configuration) and start streaming it."""
        wanted = self.snapshot_wanted.pop(peer, None)
        if status:
            log.error("snapshot_checkpoint_failed", peer=f"{peer:x}", error=body.decode(errors="replace"))
            self.core.report_snapshot(peer, False)
            return
        directory, meta = read_ticket(body)
        core = self.core
        try:
            if wanted is None or core.role != Role.LEADER or core.term != wanted.term:
                raise ValueError("leadership changed meanwhile")
            snap = core.compact(meta.applied_index)
        except ValueError as e:
            log.info("snapshot_send_abandoned", peer=f"{peer:x}", reason=str(e))
            shutil.rmtree(directory, ignore_errors=True)
            core.report_snapshot(peer, False)
            return
        self.log.compact(self.log.first_index(), snap)
        message = Message(
            MsgType.SNAP,
            peer,
            self.settings.member_id,
            wanted.term,
            log_term=snap.term,
            index=snap.index,
            commit=core.commit_index,
            context=snap.conf_state.encode(),
        )
        now = time.monotonic()
        frame = codec.encode(self.settings.cluster_id, [message])
        self.sending[peer] = Outgoing(peer, random.getrandbits(63), frame, directory, meta, now)
        log.info("snapshot_send_started", peer=f"{peer:x}", index=snap.index, bytes=meta.file_size)
        self._pump_snapshots(now)

    def _pump_snapshots(self, now: float) -> None:
        for peer, out in list(self.sending.items()):
            for frame in out.frames():
                if not self.transport.send_raw(peer, SNAP_CHUNK_MAGIC, frame):
                    break
                out.sent()
            if out.finished or out.stalled(now):
                self._end_send(out, out.finished)

    def _end_send(self, out: Outgoing, ok: bool) -> None:
        del self.sending[out.peer]
        out.discard()
        self.core.report_snapshot(out.peer, ok)
        event = "snapshot_sent" if ok else "snapshot_send_failed"
        log.info(event, peer=f"{out.peer:x}", bytes=out.sent_bytes)

    def _snapshot_ack(self, sender: int, payload: bytes, now: float) -> None:
        try:
            transfer, seq, ok = parse_ack(payload)
        except struct.error:
            log.warning("snapshot_ack_malformed", peer=f"{sender:x}")
            return
        out = self.sending.get(sender)
        if out is None or out.transfer != transfer:
            return
        if not ok:
            self._end_send(out, False)
            return
        out.on_ack(seq, now)
        self._pump_snapshots(now)

    # -- snapshots: receiving (follower) -----------------------------------------------------------

    def _snapshot_chunk(self, sender: int, payload: bytes) -> None:
        try:
            ack, received = self.receiving.on_chunk(payload)
        except (struct.error, OSError) as e:
            log.warning("snapshot_chunk_dropped", peer=f"{sender:x}", error=str(e))
            return
        self.transport.send_raw(sender, SNAP_ACK_MAGIC, ack)
        if received is None:
            return
        try:
            (message,) = codec.decode(self.settings.cluster_id, received.message)
            snap = snapshot_of(message)
        except ValueError as e:
            log.error("snapshot_received_unusable", peer=f"{sender:x}", error=str(e))
            os.unlink(received.path)
            return
        target = os.path.join(self.snapshot_dir, f"{snap.index}-{snap.term}")
        if (snap.index, snap.term) in self.staged or any(t == target for _, _, t in self.unpacking):
            os.unlink(received.path)  # a second transfer of it: the first is staged or being unpacked
            return
        self.unpacking.append((sender, message, target))
        self.unpacker.unpack(received.path, target)  # the loop goes on meanwhile (unpacker.py)

    def _unpacked(self, outcome: bytes) -> None:
        """A received snapshot is unpacked (or refused): the core may now take it."""
        sender, message, target = self.unpacking.popleft()
        if outcome:
            log.error(
                "snapshot_received_unusable", peer=f"{sender:x}", error=outcome.decode(errors="replace")
            )
            return
        snap = snapshot_of(message)
        log.info("snapshot_received", peer=f"{sender:x}", index=snap.index, term=snap.term)
        self.staged[(snap.index, snap.term)] = target
        self.core.step(message)

    def _install(self, rd: Ready) -> None:
        """Install FIRST (the kv DB, then the raft log), then the rest of the Ready (core's contract)."""
        snap = rd.snapshot
        assert snap is not None
        directory = self.staged.pop((snap.index, snap.term))
        self.installing = rd
        self.storage.put(
            Kind.SNAPSHOT_INSTALL, (snap.index, 0, pack_blobs((directory.encode(), snap.encode())))
        )

    def _installed(self, rows: bytes) -> None:
        rd, self.installing = self.installing, None
        assert rd is not None and rd.snapshot is not None
        self.log.apply_snapshot(rd.snapshot)
        self.committed = max(self.committed, rd.snapshot.index)
        blobs = unpack_blobs(rows)
        self.members = MemberTable.from_rows(zip(blobs[::2], blobs[1::2], strict=True))
        self._admit_curve_keys()
        for peer, urls in self.members.peer_urls().items():
            if peer != self.settings.member_id and urls:
                self.transport.connect(peer, urls[0])
        for peer in [p for p in self.transport.outbound if p not in self.members.members]:
            self.transport.retire(peer)
        for stale in self.staged.values():
            shutil.rmtree(stale, ignore_errors=True)
        self.staged.clear()
        log.info("raft_snapshot_installed", index=rd.snapshot.index, term=rd.snapshot.term)
        if self._persist(rd):
            self._finish(rd)
        self._drain_ready()

    def _finish_install(self, settings: RaftSettings) -> None:
        """A crash between the kv DB's install and the raft log's leaves the DB ahead: finish it."""
        if settings.applied > self.log.last_index() and settings.installed_snapshot:
            snap = Snapshot.decode(settings.installed_snapshot)
            if snap.index == settings.applied:
                log.info("raft_snapshot_install_finished", index=snap.index)
                self.log.apply_snapshot(snap)

    def _compact(self, durable_applied: int) -> None:
        """Drop log entries the storage actor has durably applied, keeping a tail for slow peers.

        The log records a snapshot at the durably applied index (its term and configuration: the
        kv DB is the snapshot's data), so a restart knows the configuration the dropped entries
        built, and a follower that needs them can be sent the kv DB instead.
        """
        self.durable_applied = max(self.durable_applied, durable_applied)
        upto = self.durable_applied - self.settings.keep_entries
        if upto > self.log.first_index() + self.settings.keep_entries:
            try:
                snapshot = self.core.compact(self.durable_applied)
            except ValueError as e:  # a joining member that has not learned its configuration yet
                log.info("raft_log_compaction_deferred", reason=str(e))
                return
            self.log.compact(upto, snapshot)

    def deadline(self) -> float | None:
        return self.next_tick

    def on_time(self, now: float) -> None:
        self.next_tick = max(self.next_tick + self.interval, now)
        self.transport.refresh_faults()
        self.transport.relink_silent(now)
        self.core.tick()
        if self.sending:
            self._pump_snapshots(now)
        if self.stop_at and now >= self.stop_at:
            self.on_removed()
        self._maybe_publish(now)
        if self.moves:
            self._settle_moves(now)
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
        self.unpacker.close()
        self.receiving.close()
        for out in self.sending.values():
            out.discard()
        self.log.close()
