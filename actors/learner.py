"""What a learner member serves: etcd 3.4's ``isRPCSupportedForLearner`` and stream interceptor.

A learner is not a voter and may lag the leader, so etcd answers only Maintenance.Status and
serializable ranges on it; every other unary RPC, and every stream (Watch, LeaseKeepAlive,
Snapshot), gets "etcdserver: rpc not supported for learner" before anything else is checked.
"""

from __future__ import annotations

from google.protobuf.message import Message

from actors.protocol import Method


def served_by_learner(method: int, message: Message | None) -> bool:
    """Whether a learner answers ``method`` (``message``: the decoded request, when it is a range)."""
    if method == Method.STATUS:
        return True
    return method == Method.RANGE and message is not None and bool(message.serializable)
