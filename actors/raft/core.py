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
acknowledgement), so nothing is sent before they are durable — with one exception: a leader's Ready
whose hard state keeps the term and vote already on disk may be sent first and written meanwhile
(etcd does this; raft thesis 10.2.1), because its messages are appends, heartbeats and read
answers, and the leader counts its own entries towards commit only once ``advance`` says they are
durable. Leader and followers then write the same entries in parallel. ``committed_entries`` may
include entries of the same Ready's ``entries`` (committed by followers' acknowledgements); they
are applied after step 1, so they are durable here too. Exactly one Ready is
outstanding at a time: call ``advance`` before the next ``ready``, and do not ``step``/``tick``
in between (the actor loop is single-threaded, so this is natural).

Covered: randomized election timeouts, PreVote, CheckQuorum with a leader lease, pipelined
replication with per-follower probe/replicate/snapshot states and a bounded number of in-flight
appends, fast log back-off with ``reject_hint``/``log_term``, the current-term commit rule with a
leader no-op, batched ReadIndex, leadership transfer, snapshots and membership changes.

Snapshots (the data is the shell's; the core handles metadata, :class:`Snapshot`):

* taking one: the state machine has a checkpoint at applied index ``i``; ``snap = core.compact(i)``
  returns its metadata (term and configuration at ``i``), the shell records it and drops the log
  prefix with ``log.compact(upto, snap)`` (``upto <= i + 1``; a tail may be kept for slow peers).
* sending one: a follower that needs entries below the leader's first index gets a
  ``MsgType.SNAP`` message carrying the metadata of ``log.snapshot()`` (``index``, ``log_term`` =
  snapshot term, ``context`` = ``ConfState.encode()``; :func:`snapshot_of` decodes it). The shell
  streams the data of that snapshot to the peer in chunks, delivers the SNAP message itself once
  the data is complete, and calls ``report_snapshot(peer, ok)`` when the transfer ends; the
  follower's progress stays paused (``Progress.state == SNAPSHOT``) until then.
* receiving one: the follower's shell keeps the received data by (index, term) and steps the SNAP
  message; the core may refuse it (stale term, or nothing newer than its commit index), and two
  leaders' transfers may overlap, so the data to install is the one whose (index, term) matches
  the next Ready's ``snapshot``. The shell installs it FIRST (replace the state machine by the
  data, then ``log.apply_snapshot(snapshot)``: in this order, so that a crash in between leaves a
  state machine ahead of the log, never behind), then saves the hard state and entries, sends,
  applies ``committed_entries`` (all after the snapshot) and advances; staged data of other
  snapshots can be dropped then. The state machine keeps the snapshot's metadata with its data, so
  that a start-up finding it ahead of the log's last index finishes the install
  (``log.apply_snapshot``) before it builds the core (which refuses ``applied > last index``).

Membership (one change at a time, etcd's rules): ``propose_conf_change(ConfChange)`` appends a
CONF_CHANGE entry (refusing a second one until the first is applied, and etcd's member checks);
when the shell applies that entry it calls ``apply_conf_change(ConfChange.from_entry(entry))``,
which switches the configuration (``voters``, ``learners``, ``conf_state``). Learners get the log
but never vote or count for commit, CheckQuorum or ReadIndex; quorums always use the current
configuration; a leader that applies its own removal steps down (after telling the followers the
commit index and, when one is caught up, sending it MsgTimeoutNow); a removed node never campaigns;
no node campaigns while it has committed configuration changes it has not applied yet.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from actors.raft.confchange import (
    ERR_LAST_VOTER,
    ERR_LEARNER_NOT_READY,
    ERR_MEMBER_EXIST,
    ERR_MEMBER_NOT_FOUND,
    ERR_MEMBER_NOT_LEARNER,
    ERR_PENDING,
    ConfChange,
    ConfChangeError,
    ConfChangePending,
    ConfChangeType,
    LastVoter,
    LearnerNotReady,
    MemberExists,
    MemberNotFound,
    MemberNotLearner,
    apply_to,
    learner_ready,
)
from actors.raft.log import Compacted, ConfState, Entry, HardState, LogStorage, RaftLog, Snapshot

__all__ = [
    "ConfChange",
    "ConfChangeError",
    "ConfChangePending",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "HardState",
    "LastVoter",
    "LearnerNotReady",
    "MemberExists",
    "MemberNotFound",
    "MemberNotLearner",
    "Message",
    "MsgType",
    "NotLeader",
    "Progress",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "snapshot_of",
]

ENTRY_NORMAL = 0  # actors.protocol.EntryType.NORMAL (not imported: the core stays below the schema)
ENTRY_EMPTY = 1  # actors.protocol.EntryType.EMPTY
ENTRY_CONF_CHANGE = 2  # actors.protocol.EntryType.CONF_CHANGE: data is ConfChange.encode()

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
    SNAP = 12  # install a snapshot: index/log_term = its index/term, context = ConfState.encode()


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


def snapshot_of(m: Message) -> Snapshot:
    """The snapshot metadata a ``MsgType.SNAP`` message carries."""
    cs = ConfState.decode(m.context)
    return Snapshot(m.index, m.log_term, cs.voters, cs.learners)


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
    snapshot: Snapshot | None = None  # install before anything else of this Ready (see the module docstring)


class NotLeader(Exception):
    """Raised by leader-only calls on a non-leader; ``leader_id`` is a hint (0 = unknown or in transfer)."""

    def __init__(self, leader_id: int, message: str = "not leader") -> None:
        super().__init__(message)
        self.leader_id = leader_id


PROBE = 0
REPLICATE = 1
SNAPSHOT = 2


class Progress:
    """What the leader knows of one follower (etcd's tracker.Progress with Inflights).

    PROBE: one append at a time until the follower's match is found. REPLICATE: appends are
    pipelined optimistically (``next`` runs ahead of ``match``) with at most ``max_inflight``
    unacknowledged messages. SNAPSHOT: the follower needs entries the leader no longer has; a
    snapshot at ``pending_snapshot`` is being sent and nothing else is until it is acknowledged or
    reported (``RaftCore.report_snapshot``).
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
        self.pending_snapshot = 0  # index of the snapshot in flight (SNAPSHOT state)

    def is_paused(self) -> bool:
        """Whether the leader must not send another append now (flow control)."""
        if self.state == PROBE:
            return self.probe_sent
        if self.state == SNAPSHOT:
            return True
        return len(self.inflight) >= self.max_inflight

    def become_probe(self) -> None:
        """Find the match again, one message at a time (after a snapshot: from just past it)."""
        if self.state == SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
            self.pending_snapshot = 0
        else:
            self.next = self.match + 1
        self.state = PROBE
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        """A snapshot at ``index`` is on its way: pause until it is acknowledged or reported."""
        self.state = SNAPSHOT
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflight.clear()

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
        if self.state == SNAPSHOT:
            return False  # a snapshot is on its way; whatever this rejected is moot
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
        learners: Iterable[int] = (),
    ) -> None:
        """``voters``/``learners`` is the bootstrap configuration (the one before index 1): a member of
        a new cluster passes the initial cluster, a member joining an existing one passes nothing
        (it learns the configuration from the leader's log or snapshot). Once the log holds a
        snapshot, the configuration comes from it and the CONF_CHANGE entries up to ``applied``, so
        a restart passes the same bootstrap configuration again (it is ignored then).
        ``applied`` is the state machine's applied index (its durable one after a restart).
        """
        if id <= 0:
            raise ValueError("raft ids are positive (0 means none)")
        if heartbeat_tick <= 0 or election_tick <= heartbeat_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")
        self._id = id
        self._rng = rng
        self._election_tick = election_tick
        self._heartbeat_tick = heartbeat_tick
        self._pre_vote = pre_vote
        self._check_quorum = check_quorum
        self._max_inflight = max_inflight
        self._max_msg_entries = max_msg_entries
        self._max_apply = max_apply_entries

        hs = log.initial_state()
        # Everything up to the compaction point (a snapshot) was committed, whatever the saved commit.
        self._log = RaftLog(log, committed=max(hs.commit, log.first_index() - 1), applied=0)
        if self._log.committed > self._log.last_index():
            raise ValueError(f"hard state commit {hs.commit} beyond last index {self._log.last_index()}")
        if applied > self._log.last_index():
            raise ValueError(f"applied {applied} beyond last index {self._log.last_index()}")
        if applied > self._log.committed:
            # A commit-only hard state is saved without fsync (Ready.must_sync), so after a power loss
            # the state machine may be ahead of it; whatever was applied was committed.
            self._log.committed = applied
        self._log.applied = max(applied, self._log.first_index() - 1)

        # Configuration: (index, configuration from that index on), oldest first; the last is current.
        self._voters: list[int] = []
        self._voter_set: frozenset[int] = frozenset()
        self._learners: frozenset[int] = frozenset()
        self._quorum = 1
        self._promotable = False
        self._conf_hist = self._load_conf(
            log, ConfState(tuple(sorted(set(voters))), tuple(sorted(set(learners))))
        )
        self._pending_conf_index = 0  # leader: index of the newest change that may not be applied yet

        self._term = hs.term
        self._vote = hs.vote
        self._lead = 0
        self._role = Role.FOLLOWER
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._prs: dict[int, Progress] = {}
        self._voter_prs: list[Progress] = []
        self._votes: dict[int, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = election_tick
        self._lead_transferee = 0
        self._timeout_now_pending = False
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
        self._set_conf(self._conf_hist[-1][1])
        self._reset(self._term)

    def _load_conf(self, log: LogStorage, bootstrap: ConfState) -> list[tuple[int, ConfState]]:
        """The configuration history from the snapshot (or the bootstrap one) and the applied entries."""
        snap = log.snapshot()
        hist = [(snap.index, snap.conf_state)] if snap.index > 0 else [(0, bootstrap)]
        lo = max(hist[0][0] + 1, log.first_index())
        hi = self._log.applied + 1
        while lo < hi:
            chunk = log.entries(lo, min(hi, lo + 4096))
            if not chunk:
                break
            for e in chunk:
                if e.type == ENTRY_CONF_CHANGE:
                    cc = ConfChange.decode(e.data, e.index)
                    cur = hist[-1][1]
                    new = cc.result if cc.result is not None else apply_to(cur, cc)
                    if new != cur:
                        hist.append((e.index, new))
            lo = chunk[-1].index + 1
        return hist

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
        """The voter ids of the current configuration (sorted)."""
        return list(self._voters)

    @property
    def learners(self) -> list[int]:
        """The learner ids of the current configuration (sorted)."""
        return sorted(self._learners)

    @property
    def conf_state(self) -> ConfState:
        """The current configuration (as of the last applied configuration change)."""
        return self._conf_hist[-1][1]

    @property
    def pending_conf_index(self) -> int:
        """Leader: index of the newest configuration change that may not be applied yet (0 = none)."""
        return self._pending_conf_index if self._pending_conf_index > self._log.applied else 0

    def progress(self, peer: int) -> Progress | None:
        """The leader's view of ``peer`` (None when not leader or unknown)."""
        return self._prs.get(peer) if self._role == Role.LEADER else None

    # ------------------------------------------------------------------ configuration

    def _set_conf(self, cs: ConfState) -> None:
        self._voters = list(cs.voters)
        self._voter_set = frozenset(cs.voters)
        self._learners = frozenset(cs.learners)
        self._quorum = len(cs.voters) // 2 + 1
        self._promotable = self._id in self._voter_set

    def _switch_conf(self, cs: ConfState) -> None:
        """A configuration change was applied: new quorum, progress for new members, and on a leader
        whatever the change makes possible (commits, appends) or necessary (stepping down)."""
        old = set(self._prs)
        self._set_conf(cs)
        members = self._voter_set | self._learners
        last = self._log.last_index()
        for gone in old - members:
            del self._prs[gone]
        added = sorted(m for m in members if m not in old)
        for m in added:
            pr = Progress(last + 1, self._max_inflight)
            pr.recent_active = True  # a new member must not make CheckQuorum step the leader down at once
            self._prs[m] = pr
        if self._id in self._prs and self._role != Role.LEADER:
            self._prs[self._id].match = self._log.offset - 1  # what is durable (see advance)
        self._voter_prs = [self._prs[v] for v in self._voters]
        if self._role == Role.LEADER:
            if not self._promotable:
                self._step_down_removed()
                return
            if self._lead_transferee and self._lead_transferee not in self._voter_set:
                self._lead_transferee = 0
            if self._maybe_commit():
                self._bcast_append()
            for m in added:
                self._send_append(m, True)
        elif self._role != Role.FOLLOWER and not self._promotable:
            self._become_follower(self._term, 0)

    def _step_down_removed(self) -> None:
        """The leader applied its own removal: let the others learn the commit index (so they apply it
        too), hand leadership to a caught-up voter if there is one, and stop leading."""
        self._bcast_heartbeat()
        last = self._log.last_index()
        best = 0
        for v in self._voters:
            pr = self._prs.get(v)
            if pr is not None and pr.match == last and pr.recent_active:
                best = v
                break
        if best:
            self._send(Message(MsgType.TIMEOUT_NOW, best, self._id, self._term))
        self._become_follower(self._term, 0)

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
        self._timeout_now_pending = False
        self._votes = {}
        last = self._log.last_index()
        mi = self._max_inflight
        self._prs = {v: Progress(last + 1, mi) for v in self._voters}
        for v in self._learners:
            self._prs[v] = Progress(last + 1, mi)
        if self._id in self._prs:
            self._prs[self._id].match = self._log.offset - 1  # what is durable (see advance)
        self._voter_prs = [self._prs[v] for v in self._voters]  # the commit quorum, in _maybe_commit
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
        # No configuration change before this term's no-op is applied: every change of earlier terms
        # is then applied (and none can be pending unseen), and the term has a committed entry (the
        # fix to single-server changes from Ongaro's thesis).
        self._pending_conf_index = self._log.last_index()

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
        prs = self._prs
        n = sum(1 for v in self._voters if v == me or prs[v].recent_active)
        return n >= self._quorum

    # ------------------------------------------------------------------ elections

    def campaign(self) -> None:
        """Start an election now (with PreVote first if enabled); a single voter becomes leader at once."""
        if self._role != Role.LEADER:
            self._hup(transfer=False)

    def _hup(self, transfer: bool) -> None:
        if self._role == Role.LEADER or not self._promotable:
            return
        if self._has_unapplied_conf_change():
            return  # its configuration may be stale: wait until the change is applied (etcd does the same)
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

    def _has_unapplied_conf_change(self) -> bool:
        log = self._log
        if log.pending_snapshot is not None:
            return True  # not installed yet: not even the configuration is known to be in force
        if log.committed <= log.applied:
            return False
        lo = log.applied + 1
        hi = log.committed + 1
        while lo < hi:
            try:
                chunk = log.entries(lo, min(hi, lo + 4096))
            except Compacted:
                return True
            if not chunk:
                return False
            if any(e.type == ENTRY_CONF_CHANGE for e in chunk):
                return True
            lo = chunk[-1].index + 1
        return False

    def _poll(self, frm: int, granted: bool) -> int:
        if frm in self._voter_set:  # a learner's (or stranger's) answer does not count
            self._votes.setdefault(frm, granted)
        return sum(1 for g in self._votes.values() if g)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to ``to``: catch it up, then tell it to campaign at once (MsgTimeoutNow)."""
        if self._role != Role.LEADER:
            raise NotLeader(self._lead)
        if to == self._id:
            self._lead_transferee = 0
            return
        if to not in self._voter_set:
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

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Append a CONF_CHANGE entry for ``cc`` (leader only); returns its index.

        Refused with a :class:`ConfChangeError` (text = etcd's) when another change is not applied
        yet (:class:`ConfChangePending`; this term's no-op counts as one), when the member already
        exists / is not found / is not a learner, when a learner to promote is not in sync with the
        leader (etcd 3.4's ``isLearnerReady``: its match below 90% of the leader's), and when it
        would remove the last voter. The change takes effect when applied (``apply_conf_change``).
        """
        if self._role != Role.LEADER:
            raise NotLeader(self._lead)
        if self._lead_transferee:
            raise NotLeader(0, "leadership transfer in progress")
        if cc.node_id <= 0:
            raise ValueError("raft ids are positive (0 means none)")
        if self._pending_conf_index > self._log.applied:
            raise ConfChangePending(ERR_PENDING)
        n = cc.node_id
        t = cc.type
        member = n in self._prs
        if t == ConfChangeType.ADD_VOTER or t == ConfChangeType.ADD_LEARNER:
            if member:
                raise MemberExists(ERR_MEMBER_EXIST)
        elif not member:
            raise MemberNotFound(ERR_MEMBER_NOT_FOUND)
        elif t == ConfChangeType.PROMOTE_LEARNER:
            if n not in self._learners:
                raise MemberNotLearner(ERR_MEMBER_NOT_LEARNER)
            if not learner_ready(self._prs[n].match, self._prs[self._id].match):
                raise LearnerNotReady(ERR_LEARNER_NOT_READY)
        elif t == ConfChangeType.REMOVE and self._voters == [n]:
            raise LastVoter(ERR_LAST_VOTER)
        result = apply_to(self.conf_state, cc)
        data = ConfChange(t, n, cc.context, result).encode()
        self._append_entries([Entry(self._term, 0, ENTRY_CONF_CHANGE, data)])
        index = self._log.last_index()
        self._pending_conf_index = index
        self._bcast_append()
        return index

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """The shell applies the CONF_CHANGE entry of ``cc`` (from ``ConfChange.from_entry``): switch to
        the configuration it results in and return it (etcd's ApplyConfChange).

        Call it for every CONF_CHANGE entry of ``Ready.committed_entries``, in order, before ``advance``
        of that Ready (or right after it). Applying an index that is already applied changes nothing.
        """
        if cc.index <= 0:
            raise ValueError("apply_conf_change needs the entry's index: use ConfChange.from_entry(entry)")
        hist = self._conf_hist
        cur = hist[-1][1]
        if cc.index <= hist[-1][0]:
            return cur
        new = cc.result if cc.result is not None else apply_to(cur, cc)
        if new == cur:
            return cur
        hist.append((cc.index, new))
        self._switch_conf(new)
        return new

    def compact(self, index: int) -> Snapshot:
        """Metadata for a state-machine snapshot at applied ``index``: its term and the configuration
        in force there. The shell records it with ``log.compact(upto, snapshot)``.

        ``index`` must be applied and not older than the snapshot the log holds (the same index
        returns that snapshot again).
        """
        log = self._log
        if index > log.applied:
            raise ValueError(f"cannot snapshot at {index}: applied is {log.applied}")
        current = log.snapshot()
        if index <= current.index:
            if index == current.index:
                return current
            raise ValueError(f"cannot snapshot at {index}: the log holds a snapshot at {current.index}")
        hist = self._conf_hist
        if index < hist[0][0]:
            raise ValueError(f"configuration at {index} unknown (history starts at {hist[0][0]})")
        try:
            term = log.term(index)
        except Compacted:
            raise ValueError(f"cannot snapshot at {index}: entry compacted without a snapshot") from None
        k = len(hist) - 1
        while hist[k][0] > index:
            k -= 1
        cs = hist[k][1]
        if not cs.voters:
            # a member that joined with no configuration has not learned the one in force there yet
            raise ValueError(f"configuration at {index} unknown (this member joined later)")
        # history older than the snapshot the log already holds is no longer needed
        keep = len(hist) - 1
        while keep > 0 and hist[keep][0] > current.index:
            keep -= 1
        if keep > 0:
            del hist[:keep]
        return Snapshot(index, term, cs.voters, cs.learners)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The shell finished sending a snapshot to ``peer`` (``ok``) or gave up (etcd's ReportSnapshot).

        Either way replication resumes by probing: after success from just past the snapshot (the
        follower's acknowledgement of the install confirms it), after a failure from the follower's
        match, which sends a new snapshot once the follower answers again.
        """
        if self._role != Role.LEADER:
            return
        pr = self._prs.get(peer)
        if pr is None or pr.state != SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = True  # wait for the install's acknowledgement, or a heartbeat response

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
        if self._quorum == 1 and len(self._voters) == 1:
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
        if self._quorum == 1 and len(self._voters) == 1:
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
        if not ctx or ctx != self._round_ctx or frm not in self._voter_set:
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
        # The leader's own entries count for commit once they are durable (advance), not now: the
        # shell may send these appends before its own write finishes (etcd, raft thesis 10.2.1), and
        # an entry must never be committed on fewer than a quorum of disks.
        self._prs[self._id].next = log.last_index() + 1

    def _maybe_commit(self) -> bool:
        vprs = self._voter_prs
        if len(vprs) == 1:
            mci = vprs[0].match
        elif not vprs:
            return False
        else:
            matches = sorted([pr.match for pr in vprs], reverse=True)
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
            return send_if_empty and self._send_snapshot(to, pr)
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

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        """The follower needs compacted entries: send the newest snapshot's metadata (etcd's MsgSnap)."""
        if not pr.recent_active:
            return False  # not heard from lately: do not start a transfer that may go nowhere
        log = self._log
        snap = log.snapshot()
        if snap.index == 0 or snap.index < log.first_index() - 1:
            return False  # compacted without a snapshot covering it: temporarily unavailable
        pr.become_snapshot(snap.index)
        self._msgs.append(
            Message(
                MsgType.SNAP,
                to,
                self._id,
                self._term,
                log_term=snap.term,
                index=snap.index,
                commit=log.committed,
                context=snap.conf_state.encode(),
            )
        )
        return True

    def _bcast_append(self) -> None:
        """Entries, or just the new commit index, to every follower (etcd's bcastAppend sends even
        an empty append: followers learn a commit at once, not at the next heartbeat)."""
        me = self._id
        for v in self._prs:
            if v != me:
                self._send_append(v, True)

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
            if mt == MsgType.HEARTBEAT or mt == MsgType.APP or mt == MsgType.SNAP:
                # A stale leader (e.g. after a partition) learns the new term from this and steps down.
                # etcd answers only with CheckQuorum or PreVote on, counting on the node with the higher
                # term to campaign otherwise; but a learner cannot, and a member far behind may campaign
                # in an old configuration that does not even include the current leader.
                self._send(Message(MsgType.APP_RESP, m.frm, self._id, self._term))
            elif mt == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, m.frm, self._id, self._term, reject=True))
            elif mt == MsgType.VOTE:
                # etcd ignores these; the raft paper answers with the current term, and so do we: a
                # candidate stuck below our term must learn it to ever win our vote, and we may never
                # campaign towards it (it is not in our configuration when we lag behind a change).
                self._send(Message(MsgType.VOTE_RESP, m.frm, self._id, self._term, reject=True))
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
            state = pr.state
            if state == REPLICATE:
                pr.free_le(m.index)
            elif state == PROBE:
                pr.become_replicate()
            elif pr.match >= pr.pending_snapshot:
                # the snapshot (or a later append) arrived: back to replicating, via probe
                pr.become_probe()
                pr.become_replicate()
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
        elif mt == MsgType.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
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
        elif mt == MsgType.SNAP:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_snapshot(m)
        elif mt == MsgType.TIMEOUT_NOW:
            if self._promotable and self._has_unapplied_conf_change():
                # typically a removed leader's hand-over, whose removal we are about to apply: campaign
                # as soon as it is applied (advance), not an election timeout later
                self._timeout_now_pending = True
            else:
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

    def _handle_snapshot(self, m: Message) -> None:
        log = self._log
        index = log.last_index() if self._restore(snapshot_of(m)) else log.committed
        self._send(Message(MsgType.APP_RESP, m.frm, self._id, self._term, index=index))

    def _restore(self, snap: Snapshot) -> bool:
        """Replace log and configuration by ``snap`` unless it brings nothing new (etcd's restore)."""
        log = self._log
        if snap.index <= log.committed:
            return False
        if log.match_term(snap.index, snap.term):
            log.commit_to(snap.index)  # we have the entry: only the commit index moves
            return False
        log.restore(snap)
        cs = snap.conf_state
        self._conf_hist = [(snap.index, cs)]
        self._switch_conf(cs)
        return True

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
            or log.pending_snapshot is not None
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
        snap = log.pending_snapshot
        if ents or snap is not None:
            must_sync = True
        committed: list[Entry] = []
        if log.committed > log.applied:
            lo = log.applied + 1
            if snap is not None and lo <= snap.index:
                lo = snap.index + 1  # the snapshot brings everything up to its index
            if lo <= log.committed:
                committed = log.entries(lo, min(log.committed + 1, lo + self._max_apply))
        msgs = self._msgs
        self._msgs = []
        reads = self._read_states
        self._read_states = []
        return Ready(hs, ents, msgs, committed, reads, self._lead, self._role, self._term, must_sync, snap)

    def advance(self, rd: Ready) -> None:
        """The shell persisted, sent and applied ``rd``: record it."""
        if not self._in_ready:
            raise RuntimeError("advance() without ready()")
        self._in_ready = False
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        self._prev_soft = (rd.leader_id, rd.role)
        if rd.snapshot is not None:
            self._log.stable_snap_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
            if self._role == Role.LEADER:
                me = self._prs.get(self._id)
                if me is not None and me.maybe_update(self._log.offset - 1) and self._maybe_commit():
                    self._bcast_append()
        if rd.committed_entries:
            self._log.applied = rd.committed_entries[-1].index
        if self._timeout_now_pending and not self._has_unapplied_conf_change():
            self._timeout_now_pending = False
            if self._role == Role.FOLLOWER:
                self._hup(transfer=True)
