"""Membership changes: the ConfChange carried by CONF_CHANGE log entries, and the errors etcd gives.

One change at a time (etcd's ``ConfChange``, not joint consensus): add a voter, add a learner,
promote a learner, remove a member, or update a member's peer URLs (no raft effect; the
``context`` carries what the shell needs: URLs, name). A change takes effect on every node when
the shell *applies* its entry and calls ``RaftCore.apply_conf_change``.

The entry data is this project's own struct encoding (never pickle)::

    version:u8  type:u8  flags:u8  node_id:u64  context_len:u32  context  [ConfState]

When the leader proposes a change it also records the configuration that results from it
(flag bit 0, then a ``ConfState`` encoding). A change is proposed only once every earlier change
is applied, so that result is exact; applying it makes every node's configuration at every index
exact too, even on a node that joined with an empty configuration and replays the log, or that
restarts and rebuilds its configuration history from a snapshot plus the log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from actors.raft.log import ConfState, Entry

_HEAD = struct.Struct("<BBBQI")
_VERSION = 1
_HAS_RESULT = 1


class ConfChangeType(IntEnum):
    """What a change does (numbers are a wire fact: they are stored in log entries)."""

    ADD_VOTER = 0
    ADD_LEARNER = 1
    PROMOTE_LEARNER = 2
    REMOVE = 3
    UPDATE = 4  # peer URLs / name in ``context``; no raft effect


@dataclass(slots=True, frozen=True)
class ConfChange:
    """One membership change. ``index`` (the log index) and ``result`` are filled in by the core."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    result: ConfState | None = None  # the configuration after this change (set by the proposing leader)
    index: int = 0  # the log index of the entry, set by :meth:`from_entry`

    def encode(self) -> bytes:
        """Entry data for this change."""
        flags = _HAS_RESULT if self.result is not None else 0
        head = _HEAD.pack(_VERSION, self.type, flags, self.node_id, len(self.context))
        tail = self.result.encode() if self.result is not None else b""
        return head + self.context + tail

    @classmethod
    def decode(cls, data: bytes, index: int = 0) -> ConfChange:
        """Inverse of :meth:`encode`; ValueError on anything malformed."""
        if len(data) < _HEAD.size:
            raise ValueError("truncated conf change")
        version, typ, flags, node_id, clen = _HEAD.unpack_from(data)
        if version != _VERSION:
            raise ValueError(f"unknown conf change version {version}")
        try:
            ctype = ConfChangeType(typ)
        except ValueError:
            raise ValueError(f"unknown conf change type {typ}") from None
        off = _HEAD.size
        if len(data) - off < clen:
            raise ValueError("conf change context runs past the data")
        context = bytes(data[off : off + clen])
        off += clen
        result = None
        if flags & _HAS_RESULT:
            result, off = ConfState.decode_from(data, off)
        if off != len(data):
            raise ValueError("trailing bytes after a conf change")
        return cls(ctype, node_id, context, result, index)

    @classmethod
    def from_entry(cls, entry: Entry) -> ConfChange:
        """The change carried by a CONF_CHANGE entry, with its index (what ``apply_conf_change`` needs)."""
        return cls.decode(entry.data, entry.index)


class ConfChangeError(Exception):
    """A membership change refused before it was proposed; ``str()`` is etcd's error text."""


class ConfChangePending(ConfChangeError):
    """Another change is proposed and not applied yet: only one change at a time."""


class MemberExists(ConfChangeError):
    """Adding an id that is already a voter or learner."""


class MemberNotFound(ConfChangeError):
    """Removing, promoting or updating an id that is not a member."""


class MemberNotLearner(ConfChangeError):
    """Promoting a member that is not a learner."""


class LearnerNotReady(ConfChangeError):
    """Promoting a learner that has not caught up with the leader."""


class LastVoter(ConfChangeError):
    """Removing the only voter would leave a cluster that can never elect a leader again."""


ERR_PENDING = "etcdserver: a membership change is already in progress"
ERR_MEMBER_EXIST = "etcdserver: member ID already exist"  # etcd's rpctypes.ErrGRPCMemberExist
ERR_MEMBER_NOT_FOUND = "etcdserver: member not found"  # rpctypes.ErrGRPCMemberNotFound
ERR_MEMBER_NOT_LEARNER = "etcdserver: can only promote a learner member"  # ErrGRPCMemberNotLearner
ERR_LEARNER_NOT_READY = "etcdserver: can only promote a learner member which is in sync with leader"
ERR_LAST_VOTER = "etcdserver: cannot remove the last voting member"

LEARNER_READY_PERCENT = 0.9  # etcd 3.4 etcdserver.readyPercent (isLearnerReady)


def learner_ready(learner_match: int, leader_match: int) -> bool:
    """etcd 3.4's ``isLearnerReady``: the learner's match is at least 90% of the leader's."""
    return float(learner_match) >= float(leader_match) * LEARNER_READY_PERCENT


def apply_to(cs: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after ``cc`` (a change that does not fit ``cs`` leaves it unchanged).

    Used when a change carries no ``result`` and to compute the result the leader records.
    """
    voters, learners = set(cs.voters), set(cs.learners)
    n = cc.node_id
    t = cc.type
    if t == ConfChangeType.ADD_VOTER:
        if n in voters or n in learners:
            return cs
        voters.add(n)
    elif t == ConfChangeType.ADD_LEARNER:
        if n in voters or n in learners:
            return cs
        learners.add(n)
    elif t == ConfChangeType.PROMOTE_LEARNER:
        if n not in learners:
            return cs
        learners.discard(n)
        voters.add(n)
    elif t == ConfChangeType.REMOVE:
        if n not in voters and n not in learners:
            return cs
        if voters == {n}:
            return cs  # never remove the last voter
        voters.discard(n)
        learners.discard(n)
    else:
        return cs
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
