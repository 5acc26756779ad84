"""Raft peer messages on the wire: the project's own struct framing (no pickle, no protobuf).

A peer frame is ``magic  cluster_id:u64  count:u32`` followed by ``count`` messages. The magic
and the cluster id let a member drop, with a log line, anything that is not a raft message of
its own cluster: a stray client, another cluster's member, or garbage. Decoding checks every
length against the frame, so a truncated or hostile frame raises :class:`MalformedFrame` and
never half-decodes into the core.
"""

from __future__ import annotations

import struct

from actors.protocol import MalformedFrame
from actors.raft.core import Message, MsgType
from actors.raft.log import Entry

MAGIC = b"CRN1"
FRAME = struct.Struct("<4sQI")
MESSAGE = struct.Struct(
    "<BQQQQQQBQII"
)  # type to frm term log_term index commit reject hint ctx_len n_entries
ENTRY = struct.Struct("<QQBI")  # term index type data_len
MESSAGE_TYPES = frozenset(int(t) for t in MsgType)


def encode(cluster_id: int, messages: list[Message]) -> bytes:
    parts = [FRAME.pack(MAGIC, cluster_id, len(messages))]
    for m in messages:
        parts.append(
            MESSAGE.pack(
                m.type,
                m.to,
                m.frm,
                m.term,
                m.log_term,
                m.index,
                m.commit,
                m.reject,
                m.reject_hint,
                len(m.context),
                len(m.entries),
            )
        )
        parts.append(m.context)
        for e in m.entries:
            parts.append(ENTRY.pack(e.term, e.index, e.type, len(e.data)))
            parts.append(e.data)
    return b"".join(parts)


def decode(cluster_id: int, frame: bytes) -> list[Message]:
    """The messages of a peer frame; :class:`MalformedFrame` if it is not one of ours."""
    if len(frame) < FRAME.size:
        raise MalformedFrame("peer frame shorter than its header")
    magic, cluster, count = FRAME.unpack_from(frame, 0)
    if magic != MAGIC:
        raise MalformedFrame("not a cairn raft frame")
    if cluster != cluster_id:
        raise MalformedFrame(f"frame from cluster {cluster:x}, this is {cluster_id:x}")
    offset, end = FRAME.size, len(frame)
    messages = []
    for _ in range(count):
        if end - offset < MESSAGE.size:
            raise MalformedFrame("truncated message header")
        mtype, to, frm, term, log_term, index, commit, reject, hint, ctx_len, n_entries = MESSAGE.unpack_from(
            frame, offset
        )
        offset += MESSAGE.size
        if mtype not in MESSAGE_TYPES:
            raise MalformedFrame(f"unknown raft message type {mtype}")
        if end - offset < ctx_len:
            raise MalformedFrame("message context runs past the frame")
        context = frame[offset : offset + ctx_len]
        offset += ctx_len
        entries = []
        for _ in range(n_entries):
            if end - offset < ENTRY.size:
                raise MalformedFrame("truncated entry header")
            e_term, e_index, e_type, length = ENTRY.unpack_from(frame, offset)
            offset += ENTRY.size
            if end - offset < length:
                raise MalformedFrame("entry data runs past the frame")
            entries.append(Entry(e_term, e_index, e_type, frame[offset : offset + length]))
            offset += length
        messages.append(
            Message(
                MsgType(mtype), to, frm, term, log_term, index, entries, commit, bool(reject), hint, context
            )
        )
    if offset != end:
        raise MalformedFrame("trailing bytes after the last message")
    return messages
