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
  * ReadIndex: a read's index is at least the commit index known anywhere when it was issued.
At the end the network heals and every node restarts; the run must converge (one leader, equal
logs applied everywhere) and every acknowledged proposal must be applied on every node.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from actors.raft.core import Entry, Message, NotLeader, RaftCore, Ready, Role
from actors.raft.log import MemoryLog

ENTRY_NORMAL = 0


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
    full_check_every: int = 25

    @classmethod
    def from_seed(cls, seed: int, nodes: int, ticks: int = 200) -> SimConfig:
        """A config whose fault mix and raft options vary with the seed (deterministically)."""
        r = random.Random(seed ^ 0x5EED)
        churn = r.random() < 0.3  # a third of the seeds: frequent leader loss, so many terms overlap
        return cls(
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
    applied: list[Entry] = field(default_factory=list)  # the durable state machine: entries applied in order
    core: RaftCore | None = None
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
        self.ids = list(range(1, cfg.nodes + 1))
        self.nodes = {i: SimNode(i, MemoryLog()) for i in self.ids}
        self.now = 0
        self.net: list[tuple[int, float, int, Message]] = []
        self.seq = 0
        self.cut: set[tuple[int, int]] = set()  # directed links that drop messages
        self.faulty = True
        # oracle state
        self.leaders: dict[int, int] = {}  # term -> leader id
        # (index, term) -> (previous entry's term, type, data)
        self.entry_map: dict[tuple[int, int], tuple[int, int, bytes]] = {}
        self.committed: list[Entry | None] = [None]  # index -> the committed entry (by any node)
        self.commit_terms: list[int] = [0]  # index -> term of the leader that committed it
        self.votes: dict[tuple[int, int], int] = {}  # (node, term) -> persisted vote
        self.proposed: dict[bytes, int] = {}  # value -> proposing node
        self.acked: set[bytes] = set()
        self.reads: dict[bytes, tuple[int, int]] = {}  # ctx -> (node, least acceptable read index)
        self.next_value = 0
        self.stats = {"steps": 0, "msgs": 0, "elections": 0, "acked": 0, "reads": 0, "crashes": 0}
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

    def _start(self, n: SimNode) -> None:
        cfg = self.cfg
        n.incarnation += 1
        n.core = RaftCore(
            n.id,
            self.ids,
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
        n.commit_seen = n.core.commit_index

    def _crash(self, n: SimNode) -> None:
        self._note("crash", n.id)
        self.stats["crashes"] += 1
        n.core = None
        n.dirty = False

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

    # ------------------------------------------------------------------ ready processing and checks

    def _after_step(self, n: SimNode) -> None:
        """Checks that read only the core's in-memory state, after any step/tick/proposal."""
        core = n.core
        assert core is not None
        self.stats["steps"] += 1
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
        if self.faulty and self.rng.random() < self.cfg.p_defer:
            n.dirty = True
        else:
            self._process_ready(n)

    def _check_new_leader(self, n: SimNode) -> None:
        log = n.core.raft_log
        term = n.core.term
        ct = self.commit_terms
        for i in range(1, len(self.committed)):
            e = self.committed[i]
            if ct[i] < term and log.term(i) != e.term:
                self.fail(
                    f"leader completeness: leader {n.id} (term {term}) lacks {i}/{e.term} of term {ct[i]}"
                )

    def _check_commits(self, n: SimNode, lo: int, hi: int) -> None:
        ents = n.core.raft_log.entries(lo, hi + 1)
        committed = self.committed
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
                for m in self.nodes.values():
                    mc = m.core
                    if (
                        mc is not None
                        and mc.role == Role.LEADER
                        and mc.term > cterm
                        and mc.raft_log.term(i) != e.term
                    ):
                        self.fail(f"leader completeness: leader {m.id} (term {mc.term}) lacks {i}/{e.term}")

    def _process_ready(self, n: SimNode) -> None:
        core = n.core
        n.dirty = False
        while core.has_ready():
            rd: Ready = core.ready()
            self._persist(n, rd)
            if n.crash_after_persist:
                self._crash(n)
                return
            for m in rd.messages:
                self.stats["msgs"] += 1
                self._send(m)
            self._apply(n, rd)
            core.advance(rd)

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
            if e.type == ENTRY_NORMAL and self.proposed.get(e.data) == n.id and e.data not in self.acked:
                self.acked.add(e.data)
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
        down = [n for n in self.nodes.values() if n.core is None]
        if r.random() < cfg.p_partition:
            if r.random() < 0.5:
                side = set(r.sample(self.ids, r.randint(1, len(self.ids) // 2)))
                for a in self.ids:
                    for b in self.ids:
                        if (a in side) != (b in side):
                            self.cut.add((a, b))
                self._note("partition", sorted(side))
            else:
                a, b = r.sample(self.ids, 2)
                self.cut.add((a, b))
                self._note("cut", a, b)
        if self.cut and r.random() < cfg.p_heal:
            self.cut.clear()
            self._note("heal")
        if live and r.random() < cfg.p_isolate_leader:
            leaders = [n for n in live if n.core.role == Role.LEADER]
            if leaders:
                n = r.choice(leaders)
                for b in self.ids:
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
                to = r.choice([i for i in self.ids if i != n.id])
                self._note("transfer", n.id, to)
                n.core.transfer_leader(to)
                self._after_step(n)

    def _tick(self) -> None:
        if self.faulty:
            self._faults()
        self._clients()
        self._tick_all()
        self._drain()
        self._flush_dirty()
        self._drain()
        self._flush_dirty()
        if self.now % self.cfg.full_check_every == 0:
            self._full_check()
        self.now += 1

    # ------------------------------------------------------------------ run

    def converged(self) -> bool:
        """One leader that every node follows, everything committed and applied everywhere."""
        cores = [n.core for n in self.nodes.values()]
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
            if n.core is None:
                self._start(n)
            elif n.dirty:
                self._process_ready(n)
        saved = (cfg.p_drop, cfg.p_dup, cfg.p_transfer)
        cfg.p_drop = cfg.p_dup = cfg.p_transfer = 0.0
        quiet_from = cfg.heal_ticks // 2
        for k in range(cfg.heal_ticks):
            if k == quiet_from:
                cfg.p_propose = cfg.p_read = 0.0
            self._tick()
            if k > quiet_from and self.converged():
                break
        else:
            self.fail("no convergence after healing: " + self._describe())
        cfg.p_drop, cfg.p_dup, cfg.p_transfer = saved
        self._full_check()
        self._final_check()
        self.stats["acked"] = len(self.acked)
        self.stats["ticks"] = self.now
        self.stats["committed"] = len(self.committed) - 1
        return self.stats

    def _final_check(self) -> None:
        ref = self.nodes[self.ids[0]].applied
        for n in self.nodes.values():
            if len(n.applied) != len(ref):
                self.fail(f"{n.id} applied {len(n.applied)} entries, {self.ids[0]} applied {len(ref)}")
            for a, b in zip(n.applied, ref, strict=True):
                if a.term != b.term or a.data != b.data:
                    self.fail(f"{n.id} applied {a.index}/{a.term}, {self.ids[0]} applied {b.index}/{b.term}")
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
        parts = []
        for n in self.nodes.values():
            c = n.core
            if c is None:
                parts.append(f"{n.id}:down")
            else:
                parts.append(
                    f"{n.id}:{c.role.value} t{c.term} lead{c.leader_id} last{c.last_index} "
                    f"commit{c.commit_index} applied{c.applied_index}"
                )
        return "; ".join(parts)


def run_seed(seed: int, nodes: int, ticks: int = 200) -> dict[str, int]:
    """Run one seed with its derived config; raises SimFailure on any broken invariant."""
    return Sim(seed, SimConfig.from_seed(seed, nodes, ticks)).run()
