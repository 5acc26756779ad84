"""Membership changes: one at a time, applied when applied, learners, promotion, removal (etcd's rules)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # raftsim lives next to this file

from raftsim import Cluster

from actors.raft.confchange import (
    ERR_LEARNER_NOT_READY,
    ERR_MEMBER_EXIST,
    ERR_MEMBER_NOT_FOUND,
    ERR_MEMBER_NOT_LEARNER,
    learner_ready,
)
from actors.raft.core import (
    ConfChange,
    ConfChangePending,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    LastVoter,
    LearnerNotReady,
    MemberExists,
    MemberNotFound,
    MemberNotLearner,
    Message,
    MsgType,
    NotLeader,
    RaftCore,
    Role,
)
from actors.raft.log import MemoryLog

ADD_VOTER = ConfChangeType.ADD_VOTER
ADD_LEARNER = ConfChangeType.ADD_LEARNER
PROMOTE = ConfChangeType.PROMOTE_LEARNER
REMOVE = ConfChangeType.REMOVE
UPDATE = ConfChangeType.UPDATE
CONF_CHANGE = 2


def change(c: Cluster, typ: ConfChangeType, node: int, context: bytes = b"") -> int:
    """Propose a change on the leader and let it commit and apply everywhere."""
    index = c.leader().propose_conf_change(ConfChange(typ, node, context))
    c.deliver()
    c.tick(1)
    return index


def test_conf_change_encoding() -> None:
    cc = ConfChange(ADD_LEARNER, 9, b"http://10.0.0.9:2380", ConfState((1, 2), (9,)))
    back = ConfChange.decode(cc.encode())
    assert back == cc
    assert ConfChange.from_entry(Entry(3, 17, CONF_CHANGE, cc.encode())).index == 17
    bare = ConfChange(REMOVE, 2)
    assert ConfChange.decode(bare.encode()) == bare
    for bad in (
        b"",
        cc.encode()[:-1],
        cc.encode() + b"!",
        b"\x02" + cc.encode()[1:],
        cc.encode()[:1] + b"\x09",
    ):
        with pytest.raises(ValueError):
            ConfChange.decode(bad)


def test_entry_type_matches_the_protocol() -> None:
    from actors.protocol import EntryType
    from actors.raft import core

    assert core.ENTRY_CONF_CHANGE == EntryType.CONF_CHANGE == CONF_CHANGE


def test_add_learner_replicates_but_does_not_count() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.add(4)  # a joiner: empty log, empty configuration
    index = change(c, ADD_LEARNER, 4, b"url4")
    assert c.core(1).learners == [4] and c.core(1).voters == [1, 2, 3]
    c.put(b"a")
    for i in (1, 2, 3, 4):
        assert c.core(i).conf_state == ConfState((1, 2, 3), (4,)), i
        assert c.values(i) == [b"a"]
    entry = c.members[4].applied[index - 1]
    assert entry.type == CONF_CHANGE and ConfChange.from_entry(entry).context == b"url4"
    # the learner's acknowledgement is not part of any quorum: with 2 and 3 cut off nothing commits
    c.drop = lambda m: m.frm in (2, 3) or m.to in (2, 3)
    lead = c.core(1)
    committed = lead.commit_index
    lead.propose([b"b"])
    c.deliver()
    assert lead.commit_index == committed and c.core(4).last_index == lead.last_index


def test_learner_never_campaigns_and_cannot_be_transfer_target() -> None:
    c = Cluster([1, 2])
    c.elect(1)
    c.add(3)
    change(c, ADD_LEARNER, 3)
    learner = c.core(3)
    c.crash(1)
    term = learner.term
    c.tick(50, only=[3])
    assert learner.role == Role.FOLLOWER and learner.term == term
    c.restart(1)
    c.tick(30)
    lead = c.leader()
    with pytest.raises(ValueError):
        lead.transfer_leader(3)
    learner.step(Message(MsgType.TIMEOUT_NOW, 3, lead.id, lead.term))
    assert learner.role == Role.FOLLOWER


def test_check_quorum_and_read_index_ignore_learners() -> None:
    c = Cluster([1, 2, 3], check_quorum=True)
    c.elect(1)
    c.add(4)
    change(c, ADD_LEARNER, 4)
    lead = c.core(1)
    c.drop = lambda m: m.frm in (2, 3) or m.to in (2, 3)
    lead.read_index(b"r")
    c.deliver()
    hb_acks = [m for m in c.sent if m.type == MsgType.HEARTBEAT_RESP and m.frm == 4 and m.context]
    assert hb_acks and c.reads[1] == []  # the learner's answer does not confirm the leadership
    c.tick(25, only=[1, 4])
    assert lead.role == Role.FOLLOWER  # only the learner was active: CheckQuorum steps down
    assert c.reads[1] == []


def test_one_change_at_a_time() -> None:
    c = Cluster([1, 2, 3])
    c.drop = lambda m: m.type == MsgType.APP_RESP
    lead = c.elect(1)
    c.add(4)
    c.add(5)
    with pytest.raises(ConfChangePending):  # this term's no-op is not applied yet
        lead.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    c.heal()
    c.tick(1)
    lead.propose_conf_change(ConfChange(ADD_LEARNER, 4))
    assert lead.pending_conf_index == lead.last_index
    with pytest.raises(ConfChangePending) as exc:
        lead.propose_conf_change(ConfChange(ADD_LEARNER, 5))
    assert "in progress" in str(exc.value)
    c.deliver()
    c.tick(1)
    assert lead.pending_conf_index == 0 and lead.learners == [4]
    change(c, ADD_LEARNER, 5)
    assert lead.learners == [4, 5]
    with pytest.raises(NotLeader):
        c.core(2).propose_conf_change(ConfChange(ADD_LEARNER, 6))


def test_member_checks_use_etcd_texts() -> None:
    c = Cluster([1, 2, 3])
    lead = c.elect(1)
    c.tick(1)
    for cc, exc, text in (
        (ConfChange(ADD_VOTER, 2), MemberExists, ERR_MEMBER_EXIST),
        (ConfChange(ADD_LEARNER, 3), MemberExists, ERR_MEMBER_EXIST),
        (ConfChange(REMOVE, 9), MemberNotFound, ERR_MEMBER_NOT_FOUND),
        (ConfChange(UPDATE, 9), MemberNotFound, ERR_MEMBER_NOT_FOUND),
        (ConfChange(PROMOTE, 9), MemberNotFound, ERR_MEMBER_NOT_FOUND),
        (ConfChange(PROMOTE, 2), MemberNotLearner, ERR_MEMBER_NOT_LEARNER),
    ):
        with pytest.raises(exc) as info:
            lead.propose_conf_change(cc)
        assert str(info.value) == text
    assert str(LearnerNotReady(ERR_LEARNER_NOT_READY)) == (
        "etcdserver: can only promote a learner member which is in sync with leader"
    )
    solo = Cluster([1])
    solo.elect(1)
    with pytest.raises(LastVoter):
        solo.core(1).propose_conf_change(ConfChange(REMOVE, 1))


def test_learner_ready_rule_is_etcd_34() -> None:
    # etcdserver.isLearnerReady: not ready when learnerMatch < leaderMatch * 0.9
    assert learner_ready(90, 100) and not learner_ready(89, 100)
    assert learner_ready(0, 0) and learner_ready(9, 10) and not learner_ready(8, 10)


def test_promote_only_when_in_sync() -> None:
    c = Cluster([1, 2, 3])
    lead = c.elect(1)
    c.put(*(b"v%d" % k for k in range(20)))
    c.add(4)
    c.drop = lambda m: m.to == 4 and m.type == MsgType.APP and bool(m.entries)  # the learner gets nothing
    change(c, ADD_LEARNER, 4)
    assert lead.learners == [4]
    with pytest.raises(LearnerNotReady) as exc:
        lead.propose_conf_change(ConfChange(PROMOTE, 4))
    assert str(exc.value) == ERR_LEARNER_NOT_READY
    c.heal()
    c.tick(3)
    pr = lead.progress(4)
    assert pr is not None and pr.match == lead.last_index
    change(c, PROMOTE, 4)
    assert lead.voters == [1, 2, 3, 4] and lead.learners == []
    assert c.core(4).voters == [1, 2, 3, 4]
    # now a voter: it can lead
    lead.transfer_leader(4)
    c.deliver()
    assert c.leader().id == 4


def test_add_voter_grows_the_quorum() -> None:
    c = Cluster([1])
    lead = c.elect(1)
    c.tick(1)
    c.add(2)
    c.drop = lambda m: m.to == 2 or m.frm == 2
    lead.propose_conf_change(ConfChange(ADD_VOTER, 2))
    c.deliver()
    assert lead.voters == [1, 2]  # applied at once: a single voter commits alone
    lead.propose([b"needs-2"])
    c.deliver()
    assert lead.commit_index < lead.last_index  # two voters now: 2 must acknowledge
    c.heal()
    c.tick(2)
    assert lead.commit_index == lead.last_index and c.values(2) == [b"needs-2"]
    assert c.core(2).conf_state == ConfState((1, 2), ())


def test_remove_follower_shrinks_the_quorum() -> None:
    c = Cluster([1, 2, 3])
    lead = c.elect(1)
    c.tick(1)
    change(c, REMOVE, 3)
    assert lead.voters == [1, 2] and lead.progress(3) is None
    c.crash(3)
    c.put(b"two-of-two")
    assert c.values(2)[-1] == b"two-of-two"
    with pytest.raises(ValueError):
        lead.transfer_leader(3)


def test_removed_leader_steps_down_and_hands_over() -> None:
    c = Cluster([1, 2, 3])
    old = c.elect(1)
    c.put(b"a")
    index = old.propose_conf_change(ConfChange(REMOVE, 1))
    c.deliver()
    assert old.applied_index >= index and old.voters == [2, 3]
    assert old.role == Role.FOLLOWER
    assert any(m.type == MsgType.TIMEOUT_NOW and m.frm == 1 for m in c.sent)
    new = c.leader()
    assert new.id in (2, 3) and new.voters == [2, 3]
    # the removed node never campaigns again, whatever happens
    term = old.term
    since = len(c.sent)
    c.crash(new.id)
    c.tick(60, only=[1])
    assert old.role == Role.FOLLOWER and old.term <= term + 1
    assert not [m for m in c.sent[since:] if m.frm == 1 and m.type in (MsgType.VOTE, MsgType.PRE_VOTE)]


def test_joiner_learns_configuration_from_the_log() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.tick(1)
    c.add(4)
    change(c, ADD_LEARNER, 4)
    change(c, REMOVE, 2)
    c.add(5)
    change(c, ADD_VOTER, 5)
    want = ConfState((1, 3, 5), (4,))
    for i in (1, 3, 4, 5):
        assert c.core(i).conf_state == want, i
    # a restart rebuilds the same configuration from the log (the bootstrap one is only the start)
    for i in (1, 4, 5):
        c.crash(i)
        assert c.restart(i).conf_state == want


def test_joiner_learns_configuration_from_a_snapshot() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.put(b"a")
    c.add(4)
    c.drop = lambda m: m.to == 4  # it hears nothing until the others have compacted
    change(c, ADD_LEARNER, 4)
    change(c, ADD_LEARNER, 6)
    for i in (1, 2, 3):
        c.compact(i)
    c.heal()
    c.tick(3)
    assert any(m.type == MsgType.SNAP and m.to == 4 for m in c.sent)
    assert c.core(4).conf_state == ConfState((1, 2, 3), (4, 6)) and c.values(4) == [b"a"]


def test_no_campaign_with_an_unapplied_committed_change() -> None:
    cc = ConfChange(REMOVE, 3, result=ConfState((1, 2), ()))
    log = MemoryLog()
    log.save(HardState(1, 0, 2), [Entry(1, 1, 1, b""), Entry(1, 2, CONF_CHANGE, cc.encode())])
    f = RaftCore(2, [1, 2, 3], log, random.Random(0), applied=1)
    f.campaign()
    assert f.role == Role.FOLLOWER and f.term == 1
    rd = f.ready()
    assert [e.index for e in rd.committed_entries] == [2]
    f.apply_conf_change(ConfChange.from_entry(rd.committed_entries[0]))
    f.advance(rd)
    f.campaign()
    assert f.role == Role.PRE_CANDIDATE and f.voters == [1, 2]


def test_apply_conf_change_needs_the_index_and_is_idempotent() -> None:
    core = RaftCore(1, [1], MemoryLog(), random.Random(0))
    with pytest.raises(ValueError):
        core.apply_conf_change(ConfChange(ADD_LEARNER, 2))
    cs = core.apply_conf_change(ConfChange(ADD_LEARNER, 2, index=5))
    assert cs == ConfState((1,), (2,))
    assert core.apply_conf_change(ConfChange(REMOVE, 2, index=5)) == cs  # index 5 is applied already
    # without a recorded result the change is computed from the current configuration
    assert core.apply_conf_change(ConfChange(PROMOTE, 2, index=6)) == ConfState((1, 2), ())


def test_update_changes_nothing_in_raft() -> None:
    c = Cluster([1, 2, 3])
    lead = c.elect(1)
    c.tick(1)
    index = change(c, UPDATE, 2, b"http://new:2380")
    assert lead.conf_state == ConfState((1, 2, 3), ()) and lead.applied_index >= index
    assert ConfChange.from_entry(c.members[3].applied[index - 1]).context == b"http://new:2380"


def test_compact_records_the_configuration_at_its_index() -> None:
    c = Cluster([1, 2, 3])
    c.elect(1)
    c.put(b"a")
    c.add(4)
    index = change(c, ADD_LEARNER, 4)
    c.put(b"b")
    core = c.core(1)
    before = core.compact(index - 1)
    assert before.conf_state == ConfState((1, 2, 3), ())
    at = core.compact(index)
    assert at.conf_state == ConfState((1, 2, 3), (4,))
    c.members[1].disk.compact(index, at)
    c.crash(1)
    again = c.restart(1)  # history rebuilt from the snapshot and the log
    assert again.compact(again.applied_index).conf_state == ConfState((1, 2, 3), (4,))


def test_joiner_cannot_snapshot_before_it_knows_the_configuration() -> None:
    c = Cluster([1, 2, 3], max_msg_entries=1)
    c.elect(1)
    c.put(b"a", b"b")
    c.add(4)
    c.drop = lambda m: m.to == 4 and m.type == MsgType.APP and any(e.type == CONF_CHANGE for e in m.entries)
    c.leader().propose_conf_change(ConfChange(ADD_LEARNER, 4))
    c.deliver()
    joiner = c.core(4)
    assert joiner.applied_index >= 3 and joiner.conf_state == ConfState()
    with pytest.raises(ValueError):
        joiner.compact(2)


def test_hand_over_waits_for_the_removal_to_be_applied() -> None:
    # the removed leader's last heartbeat (commit) and its MsgTimeoutNow arrive in one batch: the target
    # must not campaign with the old configuration, nor wait an election timeout: it campaigns on apply
    cc = ConfChange(REMOVE, 1, result=ConfState((2, 3), ()))
    log = MemoryLog()
    log.save(HardState(1, 1, 1), [Entry(1, 1, 1, b""), Entry(1, 2, CONF_CHANGE, cc.encode())])
    f = RaftCore(2, [1, 2, 3], log, random.Random(0), applied=1)
    f.step(Message(MsgType.HEARTBEAT, 2, 1, 1, commit=2))
    f.step(Message(MsgType.TIMEOUT_NOW, 2, 1, 1))
    assert f.role == Role.FOLLOWER
    rd = f.ready()
    f.apply_conf_change(ConfChange.from_entry(rd.committed_entries[0]))
    log.save(rd.hard_state, rd.entries)
    f.advance(rd)
    assert f.role == Role.CANDIDATE and f.term == 2 and f.voters == [2, 3]
    rd = f.ready()
    assert sorted(m.to for m in rd.messages if m.type == MsgType.VOTE) == [3]


def test_stale_leader_learns_a_higher_term_even_without_check_quorum() -> None:
    # a learner (it cannot campaign to spread its term) whose term was raised, e.g. by a removed member's
    # vote request: the stale leader must hear of it, or the learner would ignore it forever
    learner = RaftCore(
        4, [1, 2, 3], MemoryLog(), random.Random(0), learners=[4], check_quorum=False, pre_vote=False
    )
    learner.step(Message(MsgType.VOTE, 4, 9, 7, log_term=0, index=0))
    assert learner.term == 7 and learner.learners == [4]
    learner.advance(learner.ready())
    learner.step(Message(MsgType.APP, 4, 1, 3, log_term=0, index=0, commit=0))
    rd = learner.ready()
    assert [(m.type, m.to, m.term) for m in rd.messages] == [(MsgType.APP_RESP, 1, 7)]


def test_candidate_below_our_term_learns_it() -> None:
    # node 1 lags behind a change that made {1, 7} the voters: it campaigns in its old configuration
    # (never towards 7) at ever higher terms; 7 must learn 1's term from the refusal to win 1's vote
    lagging = RaftCore(1, [1, 2, 5], MemoryLog(), random.Random(0), pre_vote=False)
    for _ in range(3):
        lagging.campaign()
    assert lagging.term == 3
    lagging.advance(lagging.ready())
    lagging.step(Message(MsgType.VOTE, 1, 7, 2, log_term=1, index=9))
    rd = lagging.ready()
    assert [(m.type, m.to, m.term, m.reject) for m in rd.messages] == [(MsgType.VOTE_RESP, 7, 3, True)]
