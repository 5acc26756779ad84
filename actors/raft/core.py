"""A sans-IO Raft state machine, modelled on etcd's raft package.

No IO, no clock, no threads: the shell feeds it ``tick()`` (a logical clock), ``step(msg)``
(messages from peers), ``propose``/``read_index``/``campaign``/``transfer_leader`` (local
requests) and drains its output with ``ready()``/``advance()``. Randomness comes only from the
injected ``random.Random``, so a seeded simulation replays exactly.

The Ready contract (what makes the core safe without knowing about disks)::

    while core.has_ready():
        rd = core.ready()
        storage.save(rd.hard_state, rd.entries, sync=rd.must_sync)  # 1. persist (one fsync)
        send(rd.messages)                                            # 2. only then send
        apply(rd.committed_entries); serve(rd.read_states)           # 3. apply, in order
        core.advance(rd)                                             # 4. tell the core

Messages in a Ready may depend on its hard state and entries (a vote grant, an append
acknowledgement, a leader's append of its own new entries), so nothing is sent before they are
durable. ``committed_entries`` may include entries of the same Ready's ``entries`` (a single-voter
leader commits at once); they are applied after step 1, so they are durable. Exactly one Ready is
outstanding at a time: call ``advance`` before the next ``ready``, and do not ``step``/``tick``
in between (the actor loop is single-threaded, so this is natural).

Covered: randomized election timeouts, PreVote, CheckQuorum with a leader lease, pipelined
replication with per-follower probe/replicate states and a bounded number of in-flight appends,
fast log back-off with ``reject_hint``/``log_term``, the current-term commit rule with a leader
no-op, batched ReadIndex, leadership transfer. Not yet: snapshots (a follower that needs compacted
entries is left waiting, see ``Progress.pending_snapshot``) and membership changes (the voter set
is fixed at construction; ``_voters``/``_prs`` are the single places to change it).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from actors.raft.log import Compacted, Entry, HardState, LogStorage, RaftLog

__all__ = [
    "Entry",
    "HardState",
    "Message",
    "MsgType",
    "NotLeader",
    "Progress",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
]

ENTRY_NORMAL = 0  # actors.protocol.EntryType.NORMAL (not imported: the core stays below the schema)
ENTRY_EMPTY = 1  # actors.protocol.EntryType.EMPTY

CAMPAIGN_TRANSFER = b"transfer"  # context of votes after MsgTimeoutNow: they override the leader lease


class MsgType(IntEnum):
    """Peer message types (numbers are a wire fact once the transport encodes them)."""

    APP = 1
    APP_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    TIMEOUT_NOW = 9
    READ_INDEX = 10
    READ_INDEX_RESP = 11
    SNAP = 12  # reserved for snapshots


class Role(StrEnum):
    """A node's role; string values read well in logs and metrics."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Message:
    """A peer message; which fields matter depends on ``type`` (as in etcd's raftpb.Message)."""

    type: MsgType
    to: int
    frm: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(slots=True)
class ReadState:
    """A read asked with ``read_index(context)`` may be served once the applied index reaches ``index``."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """One batch of work for the shell; see the module docstring for the order it must be done in."""

    hard_state: HardState | None
    entries: list[Entry]
    messages: list[Message]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    leader_id: int
    role: Role
    term: int
    must_sync: bool = False  # False when only the commit index changed: a lost commit index is re-learned


class NotLeader(Exception):
    """Raised by leader-only calls on a non-leader; ``leader_id`` is a hint (0 = unknown or in transfer)."""

    def __init__(self, leader_id: int, message: str = "not leader") -> None:
        super().__init__(message)
        self.leader_id = leader_id


PROBE = 0
REPLICATE = 1


class Progress:
    """What the leader knows of one follower (etcd's tracker.Progress with Inflights).

    PROBE: one append at a time until the follower's match is found. REPLICATE: appends are
    pipelined optimistically (``next`` runs ahead of ``match``) with at most ``max_inflight``
    unacknowledged messages.
    """

    __slots__ = (
        "inflight",
        "match",
        "max_inflight",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.recent_active = False
        self.inflight: deque[int] = deque()  # last index of each in-flight append
        self.max_inflight = max_inflight
        self.pending_snapshot = False

    def is_paused(self) -> bool:
        """Whether the leader must not send another append now (flow control)."""
        if self.state == PROBE:
            return self.probe_sent
        return len(self.inflight) >= self.max_inflight

    def become_probe(self) -> None:
        """Find the match again, one message at a time."""
        self.state = PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.next = self.match + 1

    def become_replicate(self) -> None:
        """Match found: stream appends."""
        self.state = REPLICATE
        self.probe_sent = False
        self.inflight.clear()
        self.next = self.match + 1

    def maybe_update(self, n: int) -> bool:
        """An acknowledgement up to ``n``; returns whether the match advanced."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the append after ``rejected``; returns False if it is stale."""
        if self.state == REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def free_le(self, index: int) -> None:
        """Acknowledged appends up to ``index`` are no longer in flight."""
        q = self.inflight
        while q and q[0] <= index:
            q.popleft()


class RaftCore:
    """One raft node's state machine; see the module docstring for the shell's side of the contract."""

    def __init__(
        self,
        id: int,
        voters: Iterable[int],
        log: LogStorage,
        rng: random.Random,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight: int = 256,
        max_msg_entries: int = 1024,
        applied: int = 0,
        max_apply_entries: int = 4096,
    ) -> None:
        if id <= 0:
            raise ValueError("raft ids are positive (0 means none)")
        if heartbeat_tick <= 0 or election_tick <= heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        self._id = id
        self._voters = sorted(set(voters))
        self._quorum = len(self._voters) // 2 + 1
        self._rng = rng
        self._election_tick = election_tick
        self._heartbeat_tick = heartbeat_tick
        self._pre_vote = pre_vote
        self._check_quorum = check_quorum
        self._max_inflight = max_inflight
        self._max_msg_entries = max_msg_entries
        self._max_apply = max_apply_entries
        self._promotable = id in self._voters

        hs = log.initial_state()
        self._log = RaftLog(log, committed=hs.commit, applied=0)
        if hs.commit > self._log.last_index():
            raise ValueError(f"hard state commit {hs.commit} beyond last index {self._log.last_index()}")
        if applied > self._log.last_index():
            raise ValueError(f"applied {applied} beyond last index {self._log.last_index()}")
        if applied > hs.commit:
            # A commit-only hard state is saved without fsync (Ready.must_sync), so after a power loss
            # the state machine may be ahead of it; whatever was applied was committed.
            self._log.committed = applied
        self._log.applied = max(applied, self._log.first_index() - 1)

        self._term = hs.term
        self._vote = hs.vote
        self._lead = 0
        self._role = Role.FOLLOWER
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = election_tick
        self._lead_transferee = 0
        # ReadIndex: reads waiting for the next round, and the round in flight.
        self._pending_reads: list[tuple[bytes, int]] = []  # (context, requester id)
        self._round_ctx = b""
        self._round_seq = 0
        self._round_index = 0
        self._round_reads: list[tuple[bytes, int]] = []
        self._round_acks: set[int] = set()

        self._prev_hs = HardState(hs.term, hs.vote, hs.commit)
        self._prev_soft = (0, Role.FOLLOWER)
        self._in_ready = False
        self._reset(self._term)

    # ------------------------------------------------------------------ properties

    @property
    def id(self) -> int:
        """This node's id."""
        return self._id

    @property
    def term(self) -> int:
        """Current term."""
        return self._term

    @property
    def vote(self) -> int:
        """Whom this node voted for in the current term (0 = nobody)."""
        return self._vote

    @property
    def leader_id(self) -> int:
        """The leader this node knows of (0 = unknown)."""
        return self._lead

    @property
    def role(self) -> Role:
        """Current role."""
        return self._role

    @property
    def commit_index(self) -> int:
        """Highest index known committed."""
        return self._log.committed

    @property
    def applied_index(self) -> int:
        """Highest index handed out as committed and acknowledged with ``advance``."""
        return self._log.applied

    @property
    def last_index(self) -> int:
        """Index of the last entry in the log (durable or not)."""
        return self._log.last_index()

    @property
    def raft_log(self) -> RaftLog:
        """The log view (for tests and the simulation's invariant checks)."""
        return self._log

    @property
    def voters(self) -> list[int]:
        """The voter ids."""
        return list(self._voters)

    def progress(self, peer: int) -> Progress | None:
        """The leader's view of ``peer`` (None when not leader or unknown)."""
        return self._prs.get(peer) if self._role == Role.LEADER else None

    # ------------------------------------------------------------------ role changes

    def _reset(self, term: int) -> None:
        if self._term != term:
            self._term = term
            self._vote = 0
        self._lead = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._election_tick + self._rng.randrange(self._election_tick)
        self._lead_transferee = 0
        self._votes = {}
        last = self._log.last_index()
        self._prs = {v: Progress(last + 1, self._max_inflight) for v in self._voters}
        if self._id in self._prs:
            self._prs[self._id].match = last
        self._pending_reads = []
        self._round_ctx = b""
        self._round_reads = []
        self._round_acks = set()

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Term and vote stay: a pre-vote changes nothing durable.
        self._votes = {}
        self._lead = 0
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        me = self._prs[self._id]
        me.become_replicate()
        me.recent_active = True
        # The no-op entry of this term: earlier entries are only committed through it.
        self._append_entries([Entry(0, 0, ENTRY_EMPTY, b"")])

    # ------------------------------------------------------------------ clock

    def tick(self) -> None:
        """Advance the logical clock by one tick."""
        if self._role == Role.LEADER:
            self._tick_heartbeat()
            return
        self._election_elapsed += 1
        if self._promotable and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_tick:
            self._election_elapsed = 0
            if self._check_quorum:
                if not self._quorum_active():
                    self._become_follower(self._term, 0)
                    return
                for pid, pr in self._prs.items():
                    if pid != self._id:
                        pr.recent_active = False
            if self._lead_transferee:
                self._lead_transferee = 0  # the transfer did not finish within an election timeout
        if self._heartbeat_elapsed >= self._heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        me = self._id
        n = sum(1 for pid, pr in self._prs.items() if pid == me or pr.recent_active)
        return n >= self._quorum

    # ------------------------------------------------------------------ elections

    def campaign(self) -> None:
        """Start an election now (with PreVote first if enabled); a single voter becomes leader at once."""
        if self._role != Role.LEADER:
            self._hup(transfer=False)

    def _hup(self, transfer: bool) -> None:
        if self._role == Role.LEADER or not self._promotable:
            return
        if self._pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_type = MsgType.PRE_VOTE
            term = self._term + 1  # the term we would campaign in; our own term does not change yet
        else:
            self._become_candidate()
            vote_type = MsgType.VOTE
            term = self._term
        if self._poll(self._id, True) >= self._quorum:
            # Single voter: won already.
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        li = self._log.last_index()
        lt = self._log.last_term()
        for v in self._voters:
            if v != self._id:
                self._msgs.append(Message(vote_type, v, self._id, term, log_term=lt, index=li, context=ctx))

    def _poll(self, frm: int, granted: bool) -> int:
        self._votes.setdefault(frm, granted)
        return sum(1 for g in self._votes.values() if g)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to ``to``: catch it up, then tell it to campaign at once (MsgTimeoutNow)."""
        if self._role != Role.LEADER:
            raise NotLeader(self._lead)
        if to == self._id:
            self._lead_transferee = 0
            return
        if to not in self._prs:
            raise ValueError(f"{to} is not a voter")
        if self._lead_transferee == to:
            return
        self._lead_transferee = to
        self._election_elapsed = 0  # the transfer must finish within one election timeout
        if self._prs[to].match == self._log.last_index():
            self._send(Message(MsgType.TIMEOUT_NOW, to, self._id, self._term))
        else:
            self._send_append(to, True)

    # ------------------------------------------------------------------ client requests

    def propose(self, datas: list[bytes]) -> None:
        """Append NORMAL entries carrying ``datas`` and replicate them (leader only)."""
        if self._role != Role.LEADER:
            raise NotLeader(self._lead)
        if self._lead_transferee:
            raise NotLeader(0, "leadership transfer in progress")
        if not datas:
            return
        term = self._term
        self._append_entries([Entry(term, 0, ENTRY_NORMAL, d) for d in datas])
        self._bcast_append()

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer is a ReadState with this ``context``.

        On a follower the request goes to the leader (raises NotLeader(0) when none is known).
        Requests are dropped, without an answer, if leadership changes meanwhile: the shell fails
        reads pending when ``Ready.leader_id`` or ``Ready.term`` changes, or times them out.
        """
        if self._role == Role.LEADER:
            self._leader_read(context, self._id)
        elif self._lead:
            self._send(Message(MsgType.READ_INDEX, self._lead, self._id, self._term, context=context))
        else:
            raise NotLeader(0)

    def _committed_in_term(self) -> bool:
        log = self._log
        return log.term(log.committed) == self._term

    def _leader_read(self, context: bytes, frm: int) -> None:
        if len(self._voters) == 1:
            if self._committed_in_term():
                self._answer_read(self._log.committed, context, frm)
            else:
                self._pending_reads.append((context, frm))
            return
        self._pending_reads.append((context, frm))
        self._maybe_start_read_round()

    def _maybe_start_read_round(self) -> None:
        """One heartbeat round for all queued reads, unless one is in flight or the term has no commit."""
        if self._round_ctx or not self._pending_reads or not self._committed_in_term():
            return
        if len(self._voters) == 1:
            for ctx, frm in self._pending_reads:
                self._answer_read(self._log.committed, ctx, frm)
            self._pending_reads = []
            return
        self._round_seq += 1
        self._round_ctx = self._round_seq.to_bytes(8, "big")
        self._round_index = self._log.committed
        self._round_reads = self._pending_reads
        self._pending_reads = []
        self._round_acks = {self._id}
        self._bcast_heartbeat()

    def _on_read_ack(self, frm: int, ctx: bytes) -> None:
        if not ctx or ctx != self._round_ctx:
            return
        acks = self._round_acks
        acks.add(frm)
        if len(acks) >= self._quorum:
            idx = self._round_index
            for rctx, rfrm in self._round_reads:
                self._answer_read(idx, rctx, rfrm)
            self._round_ctx = b""
            self._round_reads = []
            self._round_acks = set()
            self._maybe_start_read_round()

    def _answer_read(self, index: int, context: bytes, frm: int) -> None:
        if frm == self._id:
            self._read_states.append(ReadState(index, context))
        else:
            resp = Message(MsgType.READ_INDEX_RESP, frm, self._id, self._term, index=index, context=context)
            self._send(resp)

    # ------------------------------------------------------------------ leader replication

    def _append_entries(self, ents: list[Entry]) -> None:
        log = self._log
        li = log.last_index()
        term = self._term
        for i, e in enumerate(ents, li + 1):
            e.term = term
            e.index = i
        log.append(ents)
        self._prs[self._id].maybe_update(log.last_index())
        self._maybe_commit()

    def _maybe_commit(self) -> bool:
        prs = self._prs
        if len(prs) == 1:
            mci = prs[self._id].match
        else:
            matches = sorted((pr.match for pr in prs.values()), reverse=True)
            mci = matches[self._quorum - 1]
        log = self._log
        if mci > log.committed and log.term(mci) == self._term:
            log.committed = mci
            if self._pending_reads:
                self._maybe_start_read_round()  # reads deferred until this term's first commit
            return True
        return False

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send one append to ``to`` if flow control allows; returns whether a message went out."""
        pr = self._prs[to]
        if pr.is_paused():
            return False
        log = self._log
        prev = pr.next - 1
        try:
            prev_term = log.term(prev)
            ents = log.entries(pr.next, pr.next + self._max_msg_entries)
        except Compacted:
            pr.pending_snapshot = True  # needs a snapshot: not implemented yet
            return False
        if not ents and not send_if_empty:
            return False
        self._msgs.append(
            Message(
                MsgType.APP,
                to,
                self._id,
                self._term,
                log_term=prev_term,
                index=prev,
                entries=ents,
                commit=log.committed,
            )
        )
        if ents:
            if pr.state == REPLICATE:
                last = ents[-1].index
                pr.next = last + 1
                pr.inflight.append(last)
            else:
                pr.probe_sent = True
        return True

    def _bcast_append(self) -> None:
        me = self._id
        for v in self._voters:
            if v != me:
                self._send_append(v, False)

    def _bcast_heartbeat(self) -> None:
        me = self._id
        term = self._term
        committed = self._log.committed
        ctx = self._round_ctx
        for v, pr in self._prs.items():
            if v != me:
                self._msgs.append(
                    Message(MsgType.HEARTBEAT, v, me, term, commit=min(pr.match, committed), context=ctx)
                )

    # ------------------------------------------------------------------ step

    def step(self, m: Message) -> None:
        """Handle a message from a peer; stale and foreign terms are answered or ignored as etcd does."""
        mt = m.type
        if m.term > self._term:
            if mt == MsgType.VOTE or mt == MsgType.PRE_VOTE:
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self._check_quorum and self._lead != 0 and self._election_elapsed < self._election_tick
                )
                if not force and in_lease:
                    return  # leader lease: a live leader exists, do not let a partitioned node disrupt it
            if mt == MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif mt == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the future term; the term changes once a quorum grants
            elif mt == MsgType.APP or mt == MsgType.HEARTBEAT or mt == MsgType.SNAP:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self._term:
            if (self._check_quorum or self._pre_vote) and (mt == MsgType.HEARTBEAT or mt == MsgType.APP):
                # A stale leader (e.g. after a partition) learns the new term from this and steps down.
                self._send(Message(MsgType.APP_RESP, m.frm, self._id, self._term))
            elif mt == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, self._id, self._term, reject=True))
            return

        if mt == MsgType.VOTE or mt == MsgType.PRE_VOTE:
            can_vote = (
                self._vote == m.frm
                or (self._vote == 0 and self._lead == 0)
                or (mt == MsgType.PRE_VOTE and m.term > self._term)
            )
            resp = MsgType.VOTE_RESP if mt == MsgType.VOTE else MsgType.PRE_VOTE_RESP
            if can_vote and self._log.is_up_to_date(m.index, m.log_term):
                self._send(Message(resp, m.frm, self._id, m.term))
                if mt == MsgType.VOTE:
                    self._election_elapsed = 0
                    self._vote = m.frm
            else:
                self._send(Message(resp, m.frm, self._id, self._term, reject=True))
            return

        role = self._role
        if role == Role.LEADER:
            self._step_leader(m)
        elif role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_leader(self, m: Message) -> None:
        mt = m.type
        if mt == MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)
            return
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        if mt == MsgType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self._log.find_conflict_by_term(hint, m.log_term)[0]
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == REPLICATE:
                        pr.become_probe()
                    self._send_append(m.frm, True)
                return
            old_paused = pr.is_paused()
            if not pr.maybe_update(m.index):
                return
            if pr.state == PROBE:
                pr.become_replicate()
            else:
                pr.free_le(m.index)
            if self._maybe_commit():
                self._bcast_append()
            elif old_paused:
                self._send_append(m.frm, True)
            while self._send_append(m.frm, False):
                pass
            if m.frm == self._lead_transferee and pr.match == self._log.last_index():
                self._send(Message(MsgType.TIMEOUT_NOW, m.frm, self._id, self._term))
        elif mt == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == REPLICATE and len(pr.inflight) >= pr.max_inflight:
                pr.inflight.popleft()
            if pr.match < self._log.last_index():
                self._send_append(m.frm, True)
            if m.context:
                self._on_read_ack(m.frm, m.context)

    def _step_candidate(self, m: Message) -> None:
        mt = m.type
        if mt == MsgType.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif mt == MsgType.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif (mt == MsgType.PRE_VOTE_RESP and self._role == Role.PRE_CANDIDATE) or (
            mt == MsgType.VOTE_RESP and self._role == Role.CANDIDATE
        ):
            granted = self._poll(m.frm, not m.reject)
            rejected = len(self._votes) - granted
            if granted >= self._quorum:
                if self._role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif rejected >= self._quorum:
                self._become_follower(self._term, 0)

    def _step_follower(self, m: Message) -> None:
        mt = m.type
        if mt == MsgType.APP:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_append(m)
        elif mt == MsgType.HEARTBEAT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_heartbeat(m)
        elif mt == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif mt == MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        log = self._log
        if m.index < log.committed:
            self._send(Message(MsgType.APP_RESP, m.frm, self._id, self._term, index=log.committed))
            return
        last_new = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new >= 0:
            self._send(Message(MsgType.APP_RESP, m.frm, self._id, self._term, index=last_new))
            return
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self._send(
            Message(
                MsgType.APP_RESP,
                m.frm,
                self._id,
                self._term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self._log.commit_to(m.commit)
        self._send(Message(MsgType.HEARTBEAT_RESP, m.frm, self._id, self._term, context=m.context))

    # ------------------------------------------------------------------ ready / advance

    def _hard_state_changed(self) -> bool:
        p = self._prev_hs
        return p.term != self._term or p.vote != self._vote or p.commit != self._log.committed

    def has_ready(self) -> bool:
        """Whether ``ready()`` would hand out anything (state to persist, messages, entries, reads)."""
        log = self._log
        return bool(
            self._msgs
            or log.unstable
            or log.committed > log.applied
            or self._read_states
            or self._hard_state_changed()
            or self._prev_soft != (self._lead, self._role)
        )

    def ready(self) -> Ready:
        """Hand out the next batch of work; call ``advance`` with it before calling ``ready`` again."""
        if self._in_ready:
            raise RuntimeError("ready() called again before advance()")
        self._in_ready = True
        log = self._log
        hs = None
        must_sync = False
        if self._hard_state_changed():
            p = self._prev_hs
            must_sync = p.term != self._term or p.vote != self._vote
            hs = HardState(self._term, self._vote, log.committed)
        ents = log.unstable[:]
        if ents:
            must_sync = True
        committed: list[Entry] = []
        if log.committed > log.applied:
            lo = log.applied + 1
            committed = log.entries(lo, min(log.committed + 1, lo + self._max_apply))
        msgs = self._msgs
        self._msgs = []
        reads = self._read_states
        self._read_states = []
        return Ready(hs, ents, msgs, committed, reads, self._lead, self._role, self._term, must_sync)

    def advance(self, rd: Ready) -> None:
        """The shell persisted, sent and applied ``rd``: record it."""
        if not self._in_ready:
            raise RuntimeError("advance() without ready()")
        self._in_ready = False
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        self._prev_soft = (rd.leader_id, rd.role)
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self._log.applied = rd.committed_entries[-1].index
