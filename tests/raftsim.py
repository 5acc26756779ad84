"""Deterministic simulation of a cluster of RaftCore nodes on a faulty simulated network.

Why it lives in tests/: it is a test oracle (fault injection plus invariant checks), not product
code, so it stays out of the ``actors`` package; ``tests/test_raft_sim.py`` imports it and
``tools/sim.py`` (the long-running CLI) loads it by path. Nothing imports ``tools/``.

Everything is driven by one seeded ``random.Random`` (each node gets its own, derived from the
seed), the clock is a tick counter and the network a heap of (delivery time, random key), so a
seed replays the same run exactly.

Faults: message drop, duplication, reordering and delay; symmetric partitions (two sides) and
asymmetric ones (single directed links cut); crashes that lose everything a node has not
persisted (a node may run several steps before its shell processes the Ready, like the real
actor loop draining a batch, and may crash right after persisting but before sending/applying);
restarts from the MemoryLog's saved hard state and entries plus the durably applied index; leader
transfers. Clients propose unique values and issue ReadIndex reads.

Snapshots: nodes take state-machine snapshots at random applied points (``core.compact``) and drop
their log prefix (sometimes keeping a tail); a follower that needs compacted entries gets a
snapshot: the leader's shell "streams" the data (a transfer that takes a few ticks and may fail,
be cut by a partition or die with either end) and reports the outcome (``report_snapshot``); the
follower installs it from its Ready (state machine replaced, ``MemoryLog.apply_snapshot``).
The state machine is the list of applied entries, so a snapshot's data is the applied prefix.

Membership: the leader is asked to add learners and voters (fresh ids: a new node starts with an
empty log and configuration and catches up by log or snapshot), promote learners (refused while
not in sync), remove learners, voters and itself. Like etcd's peer transport, a node refuses
messages from members it has applied the removal of, and such a member shuts down for good
(removed members that learn nothing keep running and campaigning in their old configuration).

Checked after every step (each one incremental, so a run stays cheap):
  * election safety: at most one leader per term, ever;
  * log matching: every entry that enters any log agrees with the one global (index, term) ->
    (previous term, type, data) map (by induction this is the Log Matching Property), plus a full
    scan every ``full_check_every`` ticks and at the end;
  * leader completeness: an entry committed in term T (the term of the leader that committed it)
    is held by every leader of a term > T: checked when a leader is elected and when an entry
    commits;
  * state-machine safety: nodes commit and apply identical entries at each index, applying
    strictly in order;
  * commit never goes backwards (within a run of a node, and in what it persists), terms never go
    backwards, a node never votes for two candidates in one term (persisted votes);
  * ReadIndex: a read's index is at least the commit index known anywhere when it was issued;
  * snapshots: a snapshot taken or installed equals the committed prefix (index, term, every
    applied entry) and its configuration is the one in force at its index;
  * configuration: the result a leader records in a change is the change applied to the committed
    configuration before it; every node's configuration equals the committed one at its applied
    index (after each applied change, install and restart).
At the end the network heals and every node restarts; the run must converge (one leader, equal
logs applied on every member of the final configuration) and every acknowledged proposal must be
applied on every member.

:class:`Cluster` at the end is a lossless, synchronous harness with the same shell duties (install,
apply configuration changes, stream and report snapshots) for the unit tests.
"""

from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass, field

from actors.raft.confchange import ConfChange, ConfChangeError, ConfChangeType, apply_to
from actors.raft.core import Entry, Message, MsgType, NotLeader, RaftCore, Ready, Role, snapshot_of
from actors.raft.log import Compacted, ConfState, MemoryLog, Snapshot

ENTRY_NORMAL = 0
ENTRY_CONF_CHANGE = 2
MAX_VOTERS = 7


class SimFailure(AssertionError):
    """An invariant broke; the message names the seed and the tick."""


@dataclass
class SimConfig:
    """Knobs of one run; ``from_seed`` randomizes the ones that should vary across seeds."""

    nodes: int = 3
    ticks: int = 200  # ticks of faulty running before the heal phase
    heal_ticks: int = 400  # at most this many ticks to converge after healing
    election_tick: int = 10
    heartbeat_tick: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 4
    max_msg_entries: int = 4
    p_drop: float = 0.05
    p_dup: float = 0.03
    p_delay: float = 0.2  # chance a message is delayed by 1..max_delay ticks (else same tick, random order)
    max_delay: int = 3
    p_partition: float = 0.01  # per tick: start a partition
    p_heal: float = 0.04  # per tick: heal all cuts
    p_crash: float = 0.006  # per tick: crash a random live node
    p_restart: float = 0.05  # per tick: restart a random crashed node
    p_defer: float = 0.3  # chance a step's Ready is processed later in the tick (un-persisted state at risk)
    p_propose: float = 0.3  # per tick
    p_read: float = 0.1  # per tick
    p_transfer: float = 0.005  # per tick
    p_isolate_leader: float = 0.0  # per tick: cut a current leader off from everyone (leader churn)
    leader_crash_bias: float = 0.0  # chance a crash picks a leader (if any) instead of a random node
    p_crash_new_leader: float = 0.0  # chance a new leader persists its no-op, then dies before sending it
    p_compact: float = 0.0  # per tick: a random node snapshots its state machine and compacts its log
    keep_tail: tuple[int, ...] = (0,)  # entries kept below a snapshot (one picked per compaction)
    p_snap_fail: float = 0.1  # chance a snapshot transfer fails
    p_conf: float = 0.0  # per tick: ask the leader for a membership change
    max_members: int = 0  # fresh ids available to joiners: ids nodes+1 .. max_members
    full_check_every: int = 25

    @classmethod
    def from_seed(
        cls,
        seed: int,
        nodes: int,
        ticks: int = 200,
        snapshots: bool | None = None,
        membership: bool | None = None,
    ) -> SimConfig:
        """A config whose fault mix and raft options vary with the seed (deterministically).

        ``snapshots``/``membership`` force those features on or off (None: the seed decides; about
        two thirds of the seeds compact their logs, half change membership).
        """
        r = random.Random(seed ^ 0x5EED)
        churn = r.random() < 0.3  # a third of the seeds: frequent leader loss, so many terms overlap
        r2 = random.Random(seed ^ 0x5AA9)  # separate stream: the older knobs stay what they were per seed
        snaps = r2.random() < 0.65 if snapshots is None else snapshots
        members = r2.random() < 0.5 if membership is None else membership
        p_compact = r2.choice((0.05, 0.15, 0.4)) if snaps else 0.0
        keep_tail = r2.choice(((0,), (0, 2), (0, 5, 20)))
        p_snap_fail = r2.choice((0.0, 0.1, 0.3))
        p_conf = r2.choice((0.03, 0.08)) if members else 0.0
        return cls(
            p_compact=p_compact,
            keep_tail=keep_tail,
            p_snap_fail=p_snap_fail,
            p_conf=p_conf,
            max_members=nodes + 4 if members else nodes,
            nodes=nodes,
            ticks=ticks,
            pre_vote=r.random() < 0.8,
            check_quorum=r.random() < 0.8,
            max_inflight=r.choice((1, 2, 4, 256)),
            max_msg_entries=r.choice((1, 3, 64)),
            p_propose=0.9 if churn else 0.3,
            p_drop=r.choice((0.0, 0.02, 0.1, 0.25)),
            p_dup=r.choice((0.0, 0.03, 0.1)),
            p_delay=r.choice((0.0, 0.2, 0.5)),
            p_partition=r.choice((0.0, 0.01, 0.03)),
            p_crash=r.choice((0.0, 0.006, 0.02)) + (0.03 if churn else 0.0),
            p_restart=0.05 + (0.1 if churn else 0.0),
            p_heal=0.04 + (0.06 if churn else 0.0),
            p_isolate_leader=0.03 if churn else 0.0,
            leader_crash_bias=0.7 if churn else 0.0,
            p_crash_new_leader=0.3 if churn else 0.0,
        )


@dataclass
class SimNode:
    """A node: its 'disk' (MemoryLog + durably applied entries) survives crashes, its core does not."""

    id: int
    disk: MemoryLog
    bootstrap: tuple[int, ...] = ()  # the configuration it was started with (empty for a joiner)
    applied: list[Entry] = field(default_factory=list)  # the durable state machine: entries applied in order
    removed: set[int] = field(default_factory=set)  # ids whose removal this state machine applied
    snap: tuple[Snapshot, tuple[Entry, ...]] | None = None  # the newest checkpoint: metadata and data
    # snapshot data received and not installed yet, by (index, term): several transfers (from leaders of
    # different terms) may complete before a Ready says which one the core accepted
    staged: dict[tuple[int, int], tuple[Entry, ...]] = field(default_factory=dict)
    core: RaftCore | None = None
    stopped: bool = False  # removed, told so by a member, and shut down for good
    dirty: bool = False  # steps happened whose Ready was not processed yet
    crash_after_persist: bool = False
    incarnation: int = 0
    commit_seen: int = 0  # commit index already checked against the global committed map
    last_persisted_commit: int = 0
    last_persisted_term: int = 0


class Sim:
    """One seeded run; ``run()`` returns statistics or raises :class:`SimFailure`."""

    def __init__(self, seed: int, cfg: SimConfig) -> None:
        self.seed = seed
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.ids = list(range(1, cfg.nodes + 1))  # every node ever started
        boot = tuple(self.ids)
        self.nodes = {i: SimNode(i, MemoryLog(), boot) for i in self.ids}
        self.next_id = cfg.nodes + 1
        self.now = 0
        self.net: list[tuple[int, float, int, Message]] = []
        self.transfers: list[tuple[int, int, Message, tuple[Entry, ...], int]] = []  # snapshot streams
        self.seq = 0
        self.cut: set[tuple[int, int]] = set()  # directed links that drop messages
        self.faulty = True
        # oracle state
        self.leaders: dict[int, int] = {}  # term -> leader id
        # (index, term) -> (previous entry's term, type, data)
        self.entry_map: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self.committed: list[Entry | None] = [None]  # index -> the committed entry (by any node)
        self.commit_terms: list[int] = [0]  # index -> term of the leader that committed it
        self.conf_index: list[int] = [0]  # committed configurations: from index conf_index[k] on ...
        self.conf_states: list[ConfState] = [ConfState(boot, ())]  # ... conf_states[k] is in force
        self.votes: dict[tuple[int, int], int] = {}  # (node, term) -> persisted vote
        self.proposed: dict[bytes, int] = {}  # value -> proposing node
        self.acked: set[bytes] = set()
        self.reads: dict[bytes, tuple[int, int]] = {}  # ctx -> (node, least acceptable read index)
        self.next_value = 0
        self.stats = {
            "steps": 0,
            "msgs": 0,
            "elections": 0,
            "acked": 0,
            "reads": 0,
            "crashes": 0,
            "compactions": 0,
            "snap_sent": 0,
            "snap_failed": 0,
            "snap_installed": 0,
            "conf_proposed": 0,
            "conf_committed": 0,
        }
        self.trace: list[tuple] = []
        for n in self.nodes.values():
            self._start(n)

    # ------------------------------------------------------------------ infrastructure

    def fail(self, what: str) -> None:
        """Raise with enough context to replay."""
        tail = "\n".join(f"  {t}" for t in self.trace[-40:])
        where = f"seed={self.seed} nodes={self.cfg.nodes} tick={self.now}"
        raise SimFailure(f"{where}: {what}\nlast events:\n{tail}")

    def _note(self, *ev: object) -> None:
        tr = self.trace
        tr.append((self.now, *ev))
        if len(tr) > 400:
            del tr[:200]

    def conf_at(self, index: int) -> ConfState:
        """The committed configuration in force at ``index``."""
        return self.conf_states[bisect.bisect_right(self.conf_index, index) - 1]

    def _start(self, n: SimNode) -> None:
        cfg = self.cfg
        n.incarnation += 1
        n.core = RaftCore(
            n.id,
            n.bootstrap,
            n.disk,
            random.Random(self.rng.getrandbits(64)),
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            pre_vote=cfg.pre_vote,
            check_quorum=cfg.check_quorum,
            max_inflight=cfg.max_inflight,
            max_msg_entries=cfg.max_msg_entries,
            applied=len(n.applied),
        )
        n.dirty = False
        n.crash_after_persist = False
        n.staged = {}
        n.commit_seen = n.core.commit_index
        self._check_conf(n, "restart")

    def _check_conf(self, n: SimNode, when: str) -> None:
        applied = n.core.applied_index
        if applied >= len(self.committed):
            return
        got = n.core.conf_state
        want = self.conf_at(applied)
        inner = ConfState(tuple(n.core.voters), tuple(n.core.learners))
        if got == want and inner == want:
            return
        first_change = self.conf_index[1] if len(self.conf_index) > 1 else len(self.committed)
        if not n.bootstrap and not got.voters and not got.learners and applied < first_change:
            return  # a joiner knows no configuration until it applies a change or installs a snapshot
        self.fail(f"{when}: {n.id} has configuration {got} ({inner}) at {applied}, committed {want}")

    def _crash(self, n: SimNode) -> None:
        self._note("crash", n.id)
        self.stats["crashes"] += 1
        n.core = None
        n.dirty = False
        n.staged = {}

    def _send(self, m: Message) -> None:
        cfg = self.cfg
        r = self.rng
        copies = 2 if r.random() < cfg.p_dup else 1
        for _ in range(copies):
            if r.random() < cfg.p_drop:
                continue
            at = self.now + (r.randint(1, cfg.max_delay) if r.random() < cfg.p_delay else 0)
            self.seq += 1
            heapq.heappush(self.net, (at, r.random(), self.seq, m))

    def _send_snapshot(self, n: SimNode, m: Message) -> None:
        """The shell streams the data of its newest checkpoint; the transfer takes a few ticks."""
        if n.snap is None or n.snap[0].index != m.index or n.snap[0].term != m.log_term:
            self.fail(f"{n.id} sends snapshot {m.index}/{m.log_term} but holds {n.snap and n.snap[0]}")
        self.stats["snap_sent"] += 1
        self._note("snap_send", n.id, m.to, m.index)
        at = self.now + self.rng.randint(0, self.cfg.max_delay + 2)
        self.seq += 1
        heapq.heappush(self.transfers, (at, self.seq, m, n.snap[1], n.incarnation))

    def _run_transfers(self) -> None:
        tr = self.transfers
        r = self.rng
        while tr and tr[0][0] <= self.now:
            _, _, m, data, inc = heapq.heappop(tr)
            src = self.nodes[m.frm]
            dst = self.nodes[m.to]
            ok = (
                not (self.faulty and r.random() < self.cfg.p_snap_fail)
                and dst.core is not None
                and (m.frm, m.to) not in self.cut
                and (m.to, m.frm) not in self.cut
                and m.frm not in dst.removed
            )
            if ok:
                dst.staged[(m.index, m.log_term)] = data
                dst.core.step(m)
                self._after_step(dst)
            else:
                self.stats["snap_failed"] += 1
            if src.core is not None and src.incarnation == inc:
                src.core.report_snapshot(m.to, ok)
                self._after_step(src)

    # ------------------------------------------------------------------ ready processing and checks

    def _after_step(self, n: SimNode) -> None:
        """Checks that read only the core's in-memory state, after any step/tick/proposal."""
        if n.core is None:
            return
        self.stats["steps"] += 1
        self._observe(n)
        if self.faulty and self.rng.random() < self.cfg.p_defer:
            n.dirty = True
        else:
            self._process_ready(n)

    def _observe(self, n: SimNode) -> None:
        """Election safety and commits, after anything that may change them (steps, applied changes)."""
        core = n.core
        if core.role == Role.LEADER:
            t = core.term
            other = self.leaders.get(t)
            if other is None:
                self.leaders[t] = n.id
                self.stats["elections"] += 1
                self._note("leader", n.id, t)
                self._check_new_leader(n)
                if self.faulty and self.rng.random() < self.cfg.p_crash_new_leader:
                    n.crash_after_persist = True
            elif other != n.id:
                self.fail(f"election safety: {other} and {n.id} both leaders in term {t}")
        c = core.commit_index
        if c < n.commit_seen:
            self.fail(f"commit of {n.id} went backwards: {n.commit_seen} -> {c}")
        if c > n.commit_seen:
            self._check_commits(n, n.commit_seen + 1, c)
            n.commit_seen = c

    def _check_new_leader(self, n: SimNode) -> None:
        log = n.core.raft_log
        term = n.core.term
        ct = self.commit_terms
        for i in range(max(1, log.first_index() - 1), len(self.committed)):
            e = self.committed[i]
            if ct[i] < term and log.term(i) != e.term:
                self.fail(
                    f"leader completeness: leader {n.id} (term {term}) lacks {i}/{e.term} of term {ct[i]}"
                )

    def _check_commits(self, n: SimNode, lo: int, hi: int) -> None:
        log = n.core.raft_log
        committed = self.committed
        first = log.first_index()
        if lo < first:
            # the commit index jumped over a snapshot received from the leader
            si = first - 1
            if si >= len(committed) or committed[si].term != log.term(si):
                self.fail(f"{n.id} commits snapshot {si}/{log.term(si)} that is not the committed prefix")
            lo = first
        ents = log.entries(lo, hi + 1)
        for e in ents:
            i = e.index
            if i < len(committed):
                c = committed[i]
                if c.term != e.term or c.data != e.data or c.type != e.type:
                    self.fail(
                        f"state machine safety: {n.id} commits {i}/{e.term}, {i}/{c.term} committed before"
                    )
            else:
                if i != len(committed):
                    self.fail(f"commit gap at {i}")
                committed.append(e)
                # The first node to see an index committed is the leader that committed it (followers
                # learn commits from it), so its term is the commit term. Leaders of later terms must hold it.
                if n.core.role != Role.LEADER:
                    self.fail(f"{n.id} ({n.core.role.value}) is the first to see {i}/{e.term} committed")
                cterm = n.core.term
                self.commit_terms.append(cterm)
                if e.type == ENTRY_CONF_CHANGE:
                    self._commit_conf(e)
                for m in self.nodes.values():
                    mc = m.core
                    if mc is not None and mc.role == Role.LEADER and mc.term > cterm:
                        try:
                            t = mc.raft_log.term(i)
                        except Compacted:
                            continue
                        if t != e.term:
                            self.fail(
                                f"leader completeness: leader {m.id} (term {mc.term}) lacks {i}/{e.term}"
                            )

    def _commit_conf(self, e: Entry) -> None:
        cc = ConfChange.from_entry(e)
        before = self.conf_states[-1]
        want = apply_to(before, cc)
        if cc.result != want:
            self.fail(
                f"change {e.index} records {cc.result}, {cc.type.name} {cc.node_id} of {before} is {want}"
            )
        self.stats["conf_committed"] += 1
        key = "conf_" + cc.type.name.lower()
        self.stats[key] = self.stats.get(key, 0) + 1
        self._note("conf_commit", e.index, cc.type.name, cc.node_id)
        if want != before:
            self.conf_index.append(e.index)
            self.conf_states.append(want)

    def _process_ready(self, n: SimNode) -> None:
        core = n.core
        n.dirty = False
        while core.has_ready():
            rd: Ready = core.ready()
            # a leader may send before its own write (see actors.raft.core): then a crash may come
            # after the sending and before the write
            early = rd.role == Role.LEADER and (
                rd.hard_state is None or rd.hard_state.term == n.last_persisted_term
            )
            if early:
                self._send_all(n, rd)
                if n.crash_after_persist:
                    self._crash(n)
                    return
            self._persist(n, rd)
            if n.crash_after_persist:
                self._crash(n)
                return
            if not early:
                self._send_all(n, rd)
            self._apply(n, rd)
            core.advance(rd)
            if rd.snapshot is not None:
                self._check_conf(n, "install")
            self._observe(n)  # an applied configuration change may commit entries (a smaller quorum)
        if n.id in n.removed and core.role == Role.LEADER:
            self.fail(f"{n.id} leads after applying its own removal")

    def _send_all(self, n: SimNode, rd: Ready) -> None:
        for m in rd.messages:
            self.stats["msgs"] += 1
            if m.type == MsgType.SNAP:
                self._send_snapshot(n, m)
            else:
                self._send(m)

    def _install(self, n: SimNode, snap: Snapshot) -> None:
        """The shell installs a snapshot: state machine first, then the log."""
        data = n.staged.get((snap.index, snap.term))
        if data is None:
            self.fail(
                f"{n.id} must install snapshot {snap.index}/{snap.term} without its data ({list(n.staged)})"
            )
        self._check_snapshot_data(n, snap, data, "install")
        n.staged = {}
        n.applied = list(data)
        n.removed = {
            cc.node_id
            for cc in (ConfChange.from_entry(e) for e in data if e.type == ENTRY_CONF_CHANGE)
            if cc.type == ConfChangeType.REMOVE
        }
        n.snap = (snap, data)
        n.disk.apply_snapshot(snap)
        self.stats["snap_installed"] += 1
        self._note("snap_install", n.id, snap.index)

    def _check_snapshot_data(self, n: SimNode, snap: Snapshot, data: tuple[Entry, ...], when: str) -> None:
        committed = self.committed
        if len(data) != snap.index or snap.index >= len(committed):
            self.fail(
                f"{when}: {n.id} snapshot {snap.index} has {len(data)} entries, {len(committed) - 1} known"
            )
        if data and data[-1].term != snap.term:
            self.fail(f"{when}: {n.id} snapshot term {snap.term}, its last entry has {data[-1].term}")
        for e in data:
            c = committed[e.index]
            if c.term != e.term or c.data != e.data:
                self.fail(f"{when}: {n.id} snapshot holds {e.index}/{e.term}, committed {c.term}")
        if snap.conf_state != self.conf_at(snap.index):
            self.fail(f"{when}: {n.id} snapshot conf {snap.conf_state}, committed {self.conf_at(snap.index)}")

    def _persist(self, n: SimNode, rd: Ready) -> None:
        hs = rd.hard_state
        if hs is not None:
            if hs.term < n.last_persisted_term:
                self.fail(f"term of {n.id} went backwards on disk: {n.last_persisted_term} -> {hs.term}")
            if hs.commit < n.last_persisted_commit:
                self.fail(f"commit of {n.id} went backwards on disk: {n.last_persisted_commit}->{hs.commit}")
            n.last_persisted_term = hs.term
            n.last_persisted_commit = hs.commit
            if hs.vote:
                prev = self.votes.setdefault((n.id, hs.term), hs.vote)
                if prev != hs.vote:
                    self.fail(f"{n.id} voted for {prev} and {hs.vote} in term {hs.term}")
        if rd.snapshot is not None:
            self._install(n, rd.snapshot)
        if rd.entries:
            emap = self.entry_map
            log = n.core.raft_log
            first = rd.entries[0].index
            prev_term = log.term(first - 1)
            for e in rd.entries:
                key = (e.index, e.term)
                val = (prev_term, e.type, e.data)
                have = emap.setdefault(key, val)
                if have != val:
                    self.fail(f"log matching: {n.id} holds {e.index}/{e.term} with {val}, elsewhere {have}")
                prev_term = e.term
        n.disk.save(hs, rd.entries)

    def _apply(self, n: SimNode, rd: Ready) -> None:
        applied = n.applied
        committed = self.committed
        for e in rd.committed_entries:
            if e.index != len(applied) + 1:
                self.fail(f"{n.id} applies {e.index} after {len(applied)}")
            if e.index >= len(committed):
                self.fail(f"{n.id} applies {e.index} that no one saw committed")
            c = committed[e.index]
            if c.term != e.term or c.data != e.data:
                self.fail(f"state machine safety: {n.id} applies {e.index}/{e.term}, committed {c.term}")
            applied.append(e)
            if e.type == ENTRY_NORMAL:
                if self.proposed.get(e.data) == n.id and e.data not in self.acked:
                    self.acked.add(e.data)
            elif e.type == ENTRY_CONF_CHANGE:
                cc = ConfChange.from_entry(e)
                was_leader = n.core.role == Role.LEADER
                cs = n.core.apply_conf_change(cc)
                if was_leader and cc.type == ConfChangeType.REMOVE and cc.node_id == n.id:
                    self.stats["leader_removed"] = self.stats.get("leader_removed", 0) + 1
                    self._note("leader_removed", n.id)
                if cs != self.conf_at(e.index):
                    self.fail(f"{n.id} applies change {e.index} into {cs}, committed {self.conf_at(e.index)}")
                if cc.type == ConfChangeType.REMOVE:
                    n.removed.add(cc.node_id)
        for rs in rd.read_states:
            req = self.reads.pop(rs.context, None)
            if req is None:
                continue  # a duplicate answer
            node, min_index = req
            if node != n.id:
                self.fail(f"read {rs.context!r} of {node} answered on {n.id}")
            if rs.index < min_index:
                self.fail(f"stale read: {n.id} got read index {rs.index} < commit {min_index} known at issue")
            self.stats["reads"] += 1

    def _full_check(self) -> None:
        """Backstop for the incremental checks: every entry of every in-memory log against the global map."""
        emap = self.entry_map
        for n in self.nodes.values():
            if n.core is None:
                continue
            log = n.core.raft_log
            prev = log.term(log.first_index() - 1)
            for e in log.entries(log.first_index(), log.last_index() + 1):
                have = emap.get((e.index, e.term))
                if have is not None and have != (prev, e.type, e.data):
                    self.fail(f"log matching (full scan): {n.id} at {e.index}/{e.term}")
                prev = e.term
            if log.committed > len(self.committed) - 1:
                self.fail(f"{n.id} commit {log.committed} beyond known commits")

    # ------------------------------------------------------------------ events

    def _deliver(self, m: Message) -> None:
        n = self.nodes[m.to]
        if n.core is None or (m.frm, m.to) in self.cut:
            return
        if m.frm in n.removed:
            # like etcd's peer handler: refuse a member known to be removed, which then shuts down
            sender = self.nodes[m.frm]
            if sender.core is not None:
                self._note("stop_removed", m.frm, m.to)
                self._crash(sender)
            sender.stopped = True
            return
        n.core.step(m)
        self._after_step(n)

    def _tick_all(self) -> None:
        order = [n for n in self.nodes.values() if n.core is not None]
        self.rng.shuffle(order)
        for n in order:
            if n.core is not None:
                n.core.tick()
                self._after_step(n)

    def _drain(self) -> None:
        net = self.net
        budget = 20000
        while net and net[0][0] <= self.now:
            budget -= 1
            if budget == 0:
                self.fail("message storm: more than 20000 deliveries in one tick")
            m = heapq.heappop(net)[3]
            self._deliver(m)

    def _flush_dirty(self) -> None:
        for n in self.nodes.values():
            if n.core is not None and n.dirty:
                self._process_ready(n)

    def _faults(self) -> None:
        cfg = self.cfg
        r = self.rng
        live = [n for n in self.nodes.values() if n.core is not None]
        down = [n for n in self.nodes.values() if n.core is None and not n.stopped]
        ids = self.ids
        if r.random() < cfg.p_partition:
            if r.random() < 0.5:
                side = set(r.sample(ids, r.randint(1, len(ids) // 2)))
                for a in ids:
                    for b in ids:
                        if (a in side) != (b in side):
                            self.cut.add((a, b))
                self._note("partition", sorted(side))
            else:
                a, b = r.sample(ids, 2)
                self.cut.add((a, b))
                self._note("cut", a, b)
        if self.cut and r.random() < cfg.p_heal:
            self.cut.clear()
            self._note("heal")
        if live and r.random() < cfg.p_isolate_leader:
            leaders = [n for n in live if n.core.role == Role.LEADER]
            if leaders:
                n = r.choice(leaders)
                for b in ids:
                    if b != n.id:
                        self.cut.add((n.id, b))
                        self.cut.add((b, n.id))
                self._note("isolate", n.id)
        if live and r.random() < cfg.p_crash:
            leaders = [n for n in live if n.core.role == Role.LEADER]
            n = r.choice(leaders) if leaders and r.random() < cfg.leader_crash_bias else r.choice(live)
            if n.dirty or r.random() < 0.3:
                self._crash(n)  # loses whatever it has not persisted
            else:
                n.crash_after_persist = True  # persists its next Ready, then dies before sending/applying
                n.dirty = True
        if down and r.random() < cfg.p_restart:
            n = r.choice(down)
            self._note("restart", n.id)
            self._start(n)

    def _compact(self) -> None:
        """A random node snapshots its state machine at an applied index and drops its log prefix."""
        r = self.rng
        live = [n for n in self.nodes.values() if n.core is not None and not n.dirty]
        if not live:
            return
        n = r.choice(live)
        core = n.core
        if core.raft_log.pending_snapshot is not None:
            return
        lo = n.disk.snapshot().index + 1
        hi = core.applied_index
        if hi < lo:
            return
        index = hi if r.random() < 0.5 else r.randint(lo, hi)
        try:
            snap = core.compact(index)
        except ValueError:
            if n.bootstrap:
                raise
            return  # a joiner does not know the configuration before the first change it applied
        data = tuple(n.applied[:index])
        self._check_snapshot_data(n, snap, data, "compact")
        keep = r.choice(self.cfg.keep_tail)
        upto = max(n.disk.first_index(), index + 1 - keep)
        n.disk.compact(upto, snap)
        n.snap = (snap, data)
        self.stats["compactions"] += 1
        self._note("compact", n.id, index, upto)

    def _membership(self) -> None:
        """Ask the newest leader for a membership change (refusals are part of the test)."""
        r = self.rng
        leaders = [n for n in self.nodes.values() if n.core is not None and n.core.role == Role.LEADER]
        if not leaders:
            return
        lead = max(leaders, key=lambda n: n.core.term)
        core = lead.core
        cs = core.conf_state
        options: list[str] = []
        fresh = self.next_id <= self.cfg.max_members
        if fresh:
            options.append("add_learner")
            if len(cs.voters) < MAX_VOTERS:
                options.append("add_voter")
        if cs.learners:
            options += ["promote", "promote", "remove_learner"]
        if len(cs.voters) > 1:
            options.append("remove_voter")
            if len(cs.voters) > 2:
                options.append("remove_leader")
        if not options:
            return
        what = r.choice(options)
        if what == "add_learner" or what == "add_voter":
            node = self.next_id
            typ = ConfChangeType.ADD_LEARNER if what == "add_learner" else ConfChangeType.ADD_VOTER
        elif what == "promote":
            node, typ = r.choice(cs.learners), ConfChangeType.PROMOTE_LEARNER
        elif what == "remove_learner":
            node, typ = r.choice(cs.learners), ConfChangeType.REMOVE
        elif what == "remove_leader":
            node, typ = lead.id, ConfChangeType.REMOVE
        else:
            node, typ = r.choice([v for v in cs.voters if v != lead.id]), ConfChangeType.REMOVE
        try:
            index = core.propose_conf_change(ConfChange(typ, node, b"peer-url-%d" % node))
        except (ConfChangeError, NotLeader) as exc:
            key = "refused_" + type(exc).__name__
            self.stats[key] = self.stats.get(key, 0) + 1
            return
        self.stats["conf_proposed"] += 1
        self._note("conf_propose", lead.id, index, typ.name, node)
        if node == self.next_id:
            # like `etcdctl member add` followed by starting the new member: empty log, empty configuration
            self.next_id += 1
            self.ids.append(node)
            new = SimNode(node, MemoryLog(), ())
            self.nodes[node] = new
            self._start(new)
        self._after_step(lead)

    def _clients(self) -> None:
        cfg = self.cfg
        r = self.rng
        live = [n for n in self.nodes.values() if n.core is not None]
        if not live:
            return
        if r.random() < cfg.p_propose:
            n = r.choice(live)
            k = r.randint(1, 3)
            values = []
            for _ in range(k):
                self.next_value += 1
                values.append(b"v%d" % self.next_value)
            try:
                n.core.propose(values)
            except NotLeader:
                pass
            else:
                for v in values:
                    self.proposed[v] = n.id
                self._note("propose", n.id, len(values))
                self._after_step(n)
        live = [n for n in live if n.core is not None]  # a step above may have crashed one
        if live and r.random() < cfg.p_read:
            n = r.choice(live)
            self.next_value += 1
            ctx = b"r%d" % self.next_value
            min_index = len(self.committed) - 1
            try:
                n.core.read_index(ctx)
            except NotLeader:
                pass
            else:
                self.reads[ctx] = (n.id, min_index)
                self._after_step(n)
        if r.random() < cfg.p_transfer:
            leaders = [n for n in live if n.core is not None and n.core.role == Role.LEADER]
            if leaders:
                n = r.choice(leaders)
                others = [i for i in n.core.voters if i != n.id]
                if others:
                    to = r.choice(others)
                    self._note("transfer", n.id, to)
                    n.core.transfer_leader(to)
                    self._after_step(n)

    def _tick(self) -> None:
        cfg = self.cfg
        if self.faulty:
            self._faults()
        self._clients()
        if cfg.p_conf and self.rng.random() < cfg.p_conf:
            self._membership()
        if cfg.p_compact and self.rng.random() < cfg.p_compact:
            self._compact()
        self._tick_all()
        self._drain()
        self._run_transfers()
        self._flush_dirty()
        self._drain()
        self._flush_dirty()
        if self.now % cfg.full_check_every == 0:
            self._full_check()
        self.now += 1

    # ------------------------------------------------------------------ run

    def members(self) -> list[int]:
        """Voters and learners of the newest committed configuration."""
        cs = self.conf_states[-1]
        return sorted(cs.voters + cs.learners)

    def converged(self) -> bool:
        """One leader that every member follows, everything committed and applied on every member."""
        cs = self.conf_states[-1]
        members = [self.nodes[i] for i in self.members()]
        cores = [n.core for n in members]
        if any(c is None for c in cores):
            return False
        leaders = [c for c in cores if c.role == Role.LEADER]
        if len(leaders) != 1:
            return False
        lead = leaders[0]
        last = lead.last_index
        if lead.commit_index != last or lead.raft_log.term(last) != lead.term:
            return False
        return all(
            c.term == lead.term
            and c.leader_id == lead.id
            and c.last_index == last
            and c.commit_index == last
            and c.applied_index == last
            and c.conf_state == cs
            for c in cores
        )

    def run(self) -> dict[str, int]:
        """Faulty phase, then heal and require convergence and durability of acknowledged writes."""
        cfg = self.cfg
        for _ in range(cfg.ticks):
            self._tick()
        # heal: no more faults, everyone back, proposals and reads continue (they must still succeed)
        self.faulty = False
        self.cut.clear()
        for n in self.nodes.values():
            n.crash_after_persist = False
            if n.core is None and not n.stopped:
                self._start(n)
            elif n.dirty:
                self._process_ready(n)
        saved = (cfg.p_drop, cfg.p_dup, cfg.p_transfer, cfg.p_conf)
        cfg.p_drop = cfg.p_dup = cfg.p_transfer = cfg.p_conf = 0.0
        # a 2-voter configuration with one in-flight single-entry append per delayed round trip cannot
        # keep up with the churn seeds' proposal rate: the backlog would outlast the quiet half
        cfg.p_propose = min(cfg.p_propose, 0.3)
        quiet_from = cfg.heal_ticks // 2
        for k in range(cfg.heal_ticks):
            if k == quiet_from:
                cfg.p_propose = cfg.p_read = 0.0
            self._tick()
            if k > quiet_from and self.converged():
                break
        else:
            self.fail("no convergence after healing: " + self._describe())
        cfg.p_drop, cfg.p_dup, cfg.p_transfer, cfg.p_conf = saved
        self._full_check()
        self._final_check()
        self.stats["acked"] = len(self.acked)
        self.stats["ticks"] = self.now
        self.stats["committed"] = len(self.committed) - 1
        self.stats["members"] = len(self.members())
        return self.stats

    def _final_check(self) -> None:
        members = self.members()
        first = members[0]
        ref = self.nodes[first].applied
        for i in members:
            n = self.nodes[i]
            if len(n.applied) != len(ref):
                self.fail(f"{n.id} applied {len(n.applied)} entries, {first} applied {len(ref)}")
            for a, b in zip(n.applied, ref, strict=True):
                if a.term != b.term or a.data != b.data:
                    self.fail(f"{n.id} applied {a.index}/{a.term}, {first} applied {b.index}/{b.term}")
        if len(ref) < len(self.committed) - 1:
            self.fail(f"entries committed up to {len(self.committed) - 1}, applied only up to {len(ref)}")
        values = [e.data for e in ref if e.type == ENTRY_NORMAL]
        if len(values) != len(set(values)):
            self.fail("a proposal was applied twice")
        applied = set(values)
        lost = self.acked - applied
        if lost:
            self.fail(f"acknowledged proposals lost: {sorted(lost)[:5]}")
        unknown = applied - self.proposed.keys()
        if unknown:
            self.fail(f"applied values nobody proposed: {sorted(unknown)[:5]}")

    def _describe(self) -> str:
        parts = [f"members {self.members()}"]
        for n in self.nodes.values():
            c = n.core
            if c is None:
                parts.append(f"{n.id}:down")
            else:
                parts.append(
                    f"{n.id}:{c.role.value} t{c.term} lead{c.leader_id} last{c.last_index} "
                    f"commit{c.commit_index} applied{c.applied_index} conf{c.voters}/{c.learners}"
                )
        return "; ".join(parts)


def run_seed(
    seed: int, nodes: int, ticks: int = 200, snapshots: bool | None = None, membership: bool | None = None
) -> dict[str, int]:
    """Run one seed with its derived config; raises SimFailure on any broken invariant."""
    return Sim(seed, SimConfig.from_seed(seed, nodes, ticks, snapshots, membership)).run()


# ---------------------------------------------------------------------- a lossless harness for unit tests


@dataclass
class Member:
    """One node of a :class:`Cluster`: disk and state machine survive ``crash``/``restart``."""

    id: int
    bootstrap: tuple[int, ...]
    disk: MemoryLog = field(default_factory=MemoryLog)
    applied: list[Entry] = field(default_factory=list)
    snap: tuple[Snapshot, tuple[Entry, ...]] | None = None
    staged: dict[tuple[int, int], tuple[Entry, ...]] = field(default_factory=dict)
    core: RaftCore | None = None


class Cluster:
    """Nodes whose shells do all a real shell does, synchronously: persist, send, install snapshots,
    apply (configuration changes included), stream snapshots and report them. Messages are
    delivered in FIFO order unless ``drop`` says otherwise; a dropped SNAP is a failed transfer.
    """

    def __init__(self, voters: list[int], **kw: object) -> None:
        self.kw = kw
        self.members: dict[int, Member] = {}
        self.queue: list[Message] = []
        self.sent: list[Message] = []
        self.reports: list[tuple[int, int, bool]] = []  # (leader, peer, ok)
        self.reads: dict[int, list[tuple[int, bytes]]] = {}  # node -> (read index, context) answered
        self.drop = lambda m: False
        for i in voters:
            self.add(i, tuple(voters))

    def add(self, i: int, bootstrap: tuple[int, ...] = ()) -> Member:
        """Start node ``i`` (a joiner has an empty bootstrap configuration)."""
        m = Member(i, bootstrap)
        self.members[i] = m
        self.reads.setdefault(i, [])
        self.restart(i)
        return m

    def core(self, i: int) -> RaftCore:
        c = self.members[i].core
        assert c is not None
        return c

    def restart(self, i: int) -> RaftCore:
        m = self.members[i]
        m.core = RaftCore(i, m.bootstrap, m.disk, random.Random(i), applied=len(m.applied), **self.kw)
        m.staged = {}
        return m.core

    def crash(self, i: int) -> None:
        m = self.members[i]
        m.core = None
        m.staged = {}

    def isolate(self, *ids: int) -> None:
        cut = set(ids)
        self.drop = lambda m: (m.frm in cut) != (m.to in cut)

    def heal(self) -> None:
        self.drop = lambda m: False

    def process(self, i: int) -> None:
        m = self.members[i]
        core = m.core
        if core is None:
            return
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                data = m.staged[(rd.snapshot.index, rd.snapshot.term)]
                m.applied = list(data)
                m.snap = (rd.snapshot, data)
                m.staged = {}
                m.disk.apply_snapshot(rd.snapshot)
            m.disk.save(rd.hard_state, rd.entries)
            self.queue.extend(rd.messages)
            self.sent.extend(rd.messages)
            for e in rd.committed_entries:
                assert e.index == len(m.applied) + 1, (i, e.index, len(m.applied))
                m.applied.append(e)
                if e.type == ENTRY_CONF_CHANGE:
                    core.apply_conf_change(ConfChange.from_entry(e))
            self.reads[i].extend((r.index, r.context) for r in rd.read_states)
            core.advance(rd)

    def deliver(self, limit: int = 100000) -> None:
        for i in list(self.members):
            self.process(i)
        while self.queue and limit:
            limit -= 1
            msg = self.queue.pop(0)
            dst = self.members.get(msg.to)
            if msg.type == MsgType.SNAP:
                ok = not self.drop(msg) and dst is not None and dst.core is not None
                if ok:
                    src = self.members[msg.frm]
                    assert src.snap is not None and src.snap[0] == snapshot_of(msg)
                    dst.staged[(msg.index, msg.log_term)] = src.snap[1]
                    dst.core.step(msg)
                    self.process(msg.to)
                leader = self.members[msg.frm].core
                if leader is not None:
                    self.reports.append((msg.frm, msg.to, ok))
                    leader.report_snapshot(msg.to, ok)
                    self.process(msg.frm)
                continue
            if self.drop(msg) or dst is None or dst.core is None:
                continue
            dst.core.step(msg)
            self.process(msg.to)

    def tick(self, n: int = 1, only: list[int] | None = None) -> None:
        for _ in range(n):
            for i in only or list(self.members):
                c = self.members[i].core
                if c is not None:
                    c.tick()
            self.deliver()

    def elect(self, i: int) -> RaftCore:
        c = self.core(i)
        c.campaign()
        self.deliver()
        assert c.role == Role.LEADER
        return c

    def leader(self) -> RaftCore:
        leaders = [m.core for m in self.members.values() if m.core is not None and m.core.role == Role.LEADER]
        assert len(leaders) == 1, [(m.id, m.core and m.core.role) for m in self.members.values()]
        return leaders[0]

    def put(self, *values: bytes) -> None:
        """Propose on the leader and let everything settle (one heartbeat round spreads the commit)."""
        self.leader().propose(list(values))
        self.deliver()
        self.tick(self.kw.get("heartbeat_tick", 1))  # type: ignore[arg-type]

    def compact(self, i: int, index: int | None = None, keep: int = 0) -> Snapshot:
        """Node ``i`` snapshots its state machine at ``index`` (default: applied) and compacts its log."""
        m = self.members[i]
        core = self.core(i)
        index = core.applied_index if index is None else index
        snap = core.compact(index)
        m.snap = (snap, tuple(m.applied[:index]))
        m.disk.compact(max(m.disk.first_index(), index + 1 - keep), snap)
        return snap

    def values(self, i: int) -> list[bytes]:
        return [e.data for e in self.members[i].applied if e.type == ENTRY_NORMAL]
