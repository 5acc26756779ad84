"""Unit tests of the sans-IO raft core, on a tiny lossless in-test network."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from actors.raft.core import Entry, HardState, Message, MsgType, NotLeader, RaftCore, Ready, Role
from actors.raft.log import MemoryLog

NORMAL, EMPTY = 0, 1


class Net:
    """Nodes that process each Ready at once and deliver messages in FIFO order unless filtered."""

    def __init__(self, n: int, logs: dict[int, MemoryLog] | None = None, **kw: object) -> None:
        self.ids = list(range(1, n + 1))
        self.logs = logs or {i: MemoryLog() for i in self.ids}
        self.kw = kw
        self.nodes = {i: self._make(i) for i in self.ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.reads: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.ids}
        self.queue: list[Message] = []
        self.sent: list[Message] = []
        self.drop: Callable[[Message], bool] = lambda m: False

    def _make(self, i: int) -> RaftCore:
        return RaftCore(i, self.ids, self.logs[i], random.Random(i), **self.kw)

    def isolate(self, *ids: int) -> None:
        cut = set(ids)
        self.drop = lambda m: (m.frm in cut) != (m.to in cut)

    def heal(self) -> None:
        self.drop = lambda m: False

    def process(self, i: int) -> None:
        core = self.nodes[i]
        while core.has_ready():
            rd = core.ready()
            self.logs[i].save(rd.hard_state, rd.entries)
            self.queue.extend(rd.messages)
            self.sent.extend(rd.messages)
            self.applied[i].extend(rd.committed_entries)
            self.reads[i].extend((r.index, r.context) for r in rd.read_states)
            core.advance(rd)

    def deliver(self, limit: int = 100000) -> None:
        for i in self.ids:
            self.process(i)
        while self.queue and limit:
            limit -= 1
            m = self.queue.pop(0)
            if self.drop(m):
                continue
            self.nodes[m.to].step(m)
            self.process(m.to)

    def tick(self, n: int = 1, only: list[int] | None = None) -> None:
        for _ in range(n):
            for i in only or self.ids:
                self.nodes[i].tick()
            self.deliver()

    def leader(self) -> RaftCore:
        leaders = [c for c in self.nodes.values() if c.role == Role.LEADER]
        assert len(leaders) == 1, [(c.id, c.role, c.term) for c in self.nodes.values()]
        return leaders[0]

    def elect(self, i: int) -> RaftCore:
        self.nodes[i].campaign()
        self.deliver()
        assert self.nodes[i].role == Role.LEADER
        return self.nodes[i]


def datas(entries: list[Entry]) -> list[bytes]:
    return [e.data for e in entries if e.type == NORMAL]


def test_single_voter_commits_once_its_write_is_durable() -> None:
    log = MemoryLog()
    core = RaftCore(1, [1], log, random.Random(0))
    core.campaign()
    assert core.role == Role.LEADER and core.term == 1
    rd = core.ready()
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync
    assert [e.type for e in rd.entries] == [EMPTY] and rd.committed_entries == []
    log.save(rd.hard_state, rd.entries)
    core.advance(rd)  # the no-op is durable: now it counts, and commits
    rd = core.ready()
    assert rd.hard_state == HardState(1, 1, 1) and [e.index for e in rd.committed_entries] == [1]
    core.advance(rd)
    core.propose([b"a", b"b"])
    rd = core.ready()
    assert [e.data for e in rd.entries] == [b"a", b"b"] and rd.committed_entries == []
    log.save(rd.hard_state, rd.entries)
    core.advance(rd)
    rd = core.ready()
    assert [e.data for e in rd.committed_entries] == [b"a", b"b"]
    assert rd.messages == [] and rd.hard_state == HardState(1, 1, 3)
    log.save(rd.hard_state, rd.entries)
    core.advance(rd)
    assert not core.has_ready()
    core.read_index(b"r")
    rd = core.ready()
    assert [(r.index, r.context) for r in rd.read_states] == [(3, b"r")]
    core.advance(rd)


def test_single_voter_elects_itself_on_timeout() -> None:
    core = RaftCore(1, [1], MemoryLog(), random.Random(0))
    for _ in range(20):
        core.tick()
    assert core.role == Role.LEADER


def test_ready_contract() -> None:
    log = MemoryLog()
    core = RaftCore(1, [1], log, random.Random(0))
    with pytest.raises(RuntimeError):
        core.advance(Ready(None, [], [], [], [], 0, Role.FOLLOWER, 0))
    core.campaign()
    rd = core.ready()
    with pytest.raises(RuntimeError):
        core.ready()
    log.save(rd.hard_state, rd.entries)
    core.advance(rd)
    core.propose([b"x"])
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 1  # x counts once written
    log.save(rd.hard_state, rd.entries)
    core.advance(rd)
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 2 and not rd.must_sync
    log.save(rd.hard_state, rd.entries)
    core.advance(rd)
    core.tick()
    rd = core.ready()  # only the commit index moved since the last persisted hard state? no: nothing
    core.advance(rd)
    core.tick()
    assert not core.has_ready()


def test_election_and_replication() -> None:
    net = Net(3)
    net.tick(30)
    lead = net.leader()
    assert all(c.term == lead.term and c.leader_id == lead.id for c in net.nodes.values())
    lead.propose([b"a", b"b", b"c"])
    net.deliver()
    net.tick(2)  # heartbeats carry the commit index to followers
    for i in net.ids:
        assert datas(net.applied[i]) == [b"a", b"b", b"c"]
        assert net.nodes[i].commit_index == lead.last_index


def test_not_leader_hint() -> None:
    net = Net(3)
    net.elect(2)
    with pytest.raises(NotLeader) as exc:
        net.nodes[1].propose([b"x"])
    assert exc.value.leader_id == 2
    fresh = RaftCore(9, [9, 10, 11], MemoryLog(), random.Random(0))
    with pytest.raises(NotLeader) as exc:
        fresh.propose([b"x"])
    assert exc.value.leader_id == 0
    with pytest.raises(NotLeader):
        fresh.read_index(b"r")


def test_votes_persist_before_grant_is_sent() -> None:
    net = Net(3)
    net.nodes[1].campaign()  # pre-vote round first
    for i in net.ids:
        net.process(i)
    # run message by message and check that every vote grant leaves its node with the vote on disk
    while net.queue:
        m = net.queue.pop(0)
        net.nodes[m.to].step(m)
        rd = net.nodes[m.to].ready()
        for out in rd.messages:
            if out.type == MsgType.VOTE_RESP and not out.reject:
                assert rd.hard_state is not None and rd.hard_state.vote == out.to and rd.must_sync
        net.logs[m.to].save(rd.hard_state, rd.entries)
        net.queue.extend(rd.messages)
        net.nodes[m.to].advance(rd)
    assert net.nodes[1].role == Role.LEADER


def _log_with(terms: list[int]) -> MemoryLog:
    log = MemoryLog()
    ents = [Entry(t, i, NORMAL, b"%d/%d" % (i, t)) for i, t in enumerate(terms, 1)]
    log.save(HardState(max(terms, default=0), 0, 0), ents)
    return log


def test_log_divergence_repair_with_fast_backoff() -> None:
    # etcd's Figure 7 flavour: a leader with a long log, followers missing a suffix or holding a
    # long divergent tail of a stale term. Fast back-off needs a few rejections, not one per entry.
    leader_terms = [1] * 5 + [4] * 40 + [6] * 5
    logs = {
        1: _log_with(leader_terms),
        2: _log_with([1] * 5),  # missing
        3: _log_with([1] * 5 + [2] * 30 + [3] * 30),  # divergent, longer
    }
    net = Net(3, logs=logs)
    net.elect(1)
    net.tick(3)
    want = [(e.index, e.term) for e in net.nodes[1].raft_log.entries(1, 1000)]
    for i in (2, 3):
        got = [(e.index, e.term) for e in net.nodes[i].raft_log.entries(1, 1000)]
        assert got == want
        assert logs[i].last_index() == len(want)
    rejects = [m for m in net.sent if m.type == MsgType.APP_RESP and m.reject and m.frm == 3]
    assert 1 <= len(rejects) <= 3
    for i in net.ids:
        assert net.nodes[i].commit_index == len(want)


def test_leader_only_commits_by_counting_in_its_own_term() -> None:
    # Raft paper Figure 8: an old-term entry replicated to a majority is not committed by counting.
    logs = {1: _log_with([1, 2]), 2: _log_with([1]), 3: _log_with([1])}
    for log in logs.values():
        log.save(HardState(3, 0, 1), [])
    net = Net(3, logs=logs, max_msg_entries=1)
    lead = net.nodes[1]
    probed: set[int] = set()

    def hold_noop(m: Message) -> bool:
        # the first append to each follower is rejected (it lacks entry 2); later ones carrying the
        # term-4 no-op are dropped, so only entry 2 gets through
        if m.type != MsgType.APP or not any(e.term == 4 for e in m.entries):
            return False
        if m.to in probed:
            return True
        probed.add(m.to)
        return False

    net.drop = hold_noop
    lead.campaign()
    net.deliver()
    assert lead.role == Role.LEADER and lead.term == 4 and lead.last_index == 3
    # entry 2 (term 2) is now on every node, entry 3 (term 4, the no-op) on the leader only
    assert all(net.nodes[i].raft_log.last_index() == 2 for i in (2, 3))
    assert lead.commit_index == 1
    net.heal()
    net.tick(2)
    assert lead.commit_index == 3
    assert all(net.nodes[i].commit_index == 3 for i in net.ids)


def test_read_index_one_round_serves_queued_reads() -> None:
    net = Net(3)
    lead = net.elect(1)
    net.tick(2)
    hb_before = sum(1 for m in net.sent if m.type == MsgType.HEARTBEAT)
    lead.read_index(b"a")  # starts a round at once
    lead.read_index(b"b")  # queued while that round is in flight
    lead.read_index(b"c")
    net.deliver()
    assert [c for _, c in net.reads[1]] == [b"a", b"b", b"c"]
    hbs = sum(1 for m in net.sent if m.type == MsgType.HEARTBEAT) - hb_before
    assert hbs == 2 * 2  # one round for "a", one more for "b" and "c"; two followers each
    assert all(idx == lead.commit_index for idx, _ in net.reads[1])


def test_read_index_waits_for_commit_in_term() -> None:
    net = Net(3)
    net.drop = lambda m: m.type == MsgType.APP_RESP
    lead = net.elect(1)
    assert lead.commit_index == 0  # its no-op is not acknowledged
    lead.read_index(b"late")
    net.deliver()
    assert net.reads[1] == []
    assert not any(m.type == MsgType.HEARTBEAT and m.context for m in net.sent)
    net.heal()
    net.tick(1)
    assert net.reads[1] == [(lead.commit_index, b"late")] and lead.commit_index == 1


def test_read_index_from_follower() -> None:
    net = Net(3)
    net.elect(1)
    net.nodes[1].propose([b"x"])
    net.deliver()
    net.nodes[3].read_index(b"f")
    net.deliver()
    assert net.reads[3] == [(net.nodes[1].commit_index, b"f")]


def test_check_quorum_step_down() -> None:
    net = Net(3, election_tick=10)
    lead = net.elect(1)
    net.isolate(1)
    net.tick(21, only=[1])
    assert lead.role == Role.FOLLOWER and lead.leader_id == 0
    with pytest.raises(NotLeader):
        lead.propose([b"x"])


def test_prevote_does_not_disrupt() -> None:
    net = Net(3)
    lead = net.elect(1)
    term = lead.term
    net.isolate(3)
    net.tick(100)
    assert net.nodes[3].term == term  # pre-votes failed, the term never moved
    assert net.nodes[3].role == Role.PRE_CANDIDATE
    net.heal()
    net.tick(5)
    assert net.leader() is lead and lead.term == term
    assert net.nodes[3].role == Role.FOLLOWER and net.nodes[3].leader_id == 1


def test_leader_lease_ignores_votes() -> None:
    net = Net(3, pre_vote=False)
    lead = net.elect(1)
    term = lead.term
    # a node with a higher term asks for votes while followers hear from a live leader
    net.nodes[3].step(Message(MsgType.VOTE, 2, 3, term + 5, log_term=lead.term, index=lead.last_index))
    net.process(2)
    assert net.nodes[2].term == term and net.nodes[2].vote == 1


def test_stale_leader_steps_down_on_higher_term_reply() -> None:
    net = Net(3)
    old = net.elect(1)
    net.isolate(1)
    net.tick(30, only=[2, 3])
    new = next(c for c in net.nodes.values() if c.role == Role.LEADER and c.id != 1)
    assert old.role == Role.LEADER  # it has not ticked, so it has not noticed yet
    net.heal()
    old.propose([b"stale"])
    net.deliver()
    assert old.role == Role.FOLLOWER and old.term == new.term
    net.tick(3)
    assert b"stale" not in datas(net.applied[1])


def test_leader_transfer() -> None:
    net = Net(3)
    lead = net.elect(1)
    lead.propose([b"a"])
    net.deliver()
    net.drop = lambda m: m.to == 3 and m.type == MsgType.APP
    lead.transfer_leader(3)  # 3 is behind: first caught up, then told to campaign
    with pytest.raises(NotLeader) as exc:
        lead.propose([b"b"])
    assert exc.value.leader_id == 0
    net.heal()
    net.tick(2)
    assert net.leader().id == 3
    assert net.nodes[3].term == 2 and lead.role == Role.FOLLOWER
    net.nodes[3].propose([b"c"])
    net.deliver()
    net.tick(1)
    for i in net.ids:
        assert datas(net.applied[i]) == [b"a", b"c"]


def test_leader_transfer_times_out() -> None:
    net = Net(3, election_tick=10)
    lead = net.elect(1)
    net.isolate(3)
    lead.transfer_leader(3)
    net.tick(12)
    assert lead.role == Role.LEADER
    lead.propose([b"after"])  # the transfer was abandoned after an election timeout


def test_flow_control_bounds_inflight() -> None:
    net = Net(3, max_inflight=2, max_msg_entries=1)
    lead = net.elect(1)
    net.tick(1)
    net.drop = lambda m: m.to == 3  # follower 3 gets nothing: its progress is stuck in replicate
    sent_before = len(net.sent)
    for k in range(10):
        lead.propose([b"%d" % k])
        net.deliver()
    to3 = [m for m in net.sent[sent_before:] if m.to == 3 and m.type == MsgType.APP and m.entries]
    assert len(to3) == 2
    to2 = [m for m in net.sent[sent_before:] if m.to == 2 and m.type == MsgType.APP and m.entries]
    assert len(to2) == 10
    net.heal()
    net.tick(3)
    assert net.nodes[3].raft_log.last_index() == lead.last_index


def test_restart_keeps_term_vote_and_log() -> None:
    net = Net(3)
    net.elect(2)
    net.nodes[2].propose([b"a"])
    net.deliver()
    net.tick(1)
    log = net.logs[1]
    applied = len(net.applied[1])
    again = RaftCore(1, net.ids, log, random.Random(5), applied=applied)
    assert again.term == net.nodes[1].term and again.vote == 2
    assert again.last_index == net.nodes[1].last_index and again.commit_index == net.nodes[1].commit_index
    assert not again.has_ready() or again.ready().committed_entries == []


def test_restart_reapplies_from_applied() -> None:
    log = MemoryLog()
    core = RaftCore(1, [1], log, random.Random(0))
    core.campaign()
    core.propose([b"a", b"b"])
    for _ in range(2):  # the write, then the commit it allows
        rd = core.ready()
        log.save(rd.hard_state, rd.entries)
        core.advance(rd)
    again = RaftCore(1, [1], log, random.Random(0), applied=1)
    rd = again.ready()
    assert [e.data for e in rd.committed_entries] == [b"a", b"b"]


def test_restart_with_applied_ahead_of_saved_commit() -> None:
    # commit-only hard states are saved without fsync: after a power loss the applied index
    # (from the state machine) may be ahead of the saved commit, and it is committed by definition
    log = MemoryLog()
    core = RaftCore(1, [1], log, random.Random(0))
    core.campaign()
    core.propose([b"a", b"b"])
    rd = core.ready()
    log.save(HardState(rd.hard_state.term, rd.hard_state.vote, 0), rd.entries)
    again = RaftCore(1, [1], log, random.Random(0), applied=2)
    assert again.commit_index == 2 and again.applied_index == 2
    with pytest.raises(ValueError):
        RaftCore(1, [1], log, random.Random(0), applied=4)


def test_entry_types_match_the_protocol() -> None:
    from actors.protocol import EntryType
    from actors.raft import core

    assert (core.ENTRY_NORMAL, core.ENTRY_EMPTY, core.ENTRY_CONF_CHANGE) == (
        EntryType.NORMAL,
        EntryType.EMPTY,
        EntryType.CONF_CHANGE,
    )
