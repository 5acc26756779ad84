"""The node's message schema: how requests, results and raft entries travel as ZeroMQ frames.

Request and response bodies are etcd's own protobuf messages (``actors.proto``): the gRPC
frontend already holds them serialized, the REST gateway maps JSON onto the same messages, and a
raft entry stores a request exactly as a client sent it. What this module adds is the envelope:
one frame carries many records (pyzmq's cost is per frame, not per byte), each record a fixed
struct header followed by raw bytes. No base64, no pickle, no per-record allocation beyond slicing.

Frame layout::

    kind:u8  aux:u64  ( id:u64  code:u8  length:u32  body[length] )*

``kind`` says what the records are (:class:`Kind`), ``aux`` is one number for the whole frame
(the raft term on committed entries, otherwise 0). A record's ``code`` is a :class:`Method` on
requests and a gRPC status code on results (0 = ok and the body is the response message; any
other code and the body is etcd's UTF-8 error text).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum, unique

FRAME_HEADER = struct.Struct("<BQ")
RECORD_HEADER = struct.Struct("<QBI")
PROPOSAL_HEADER = struct.Struct("<QB")

Record = tuple[int, int, bytes]


@unique  # two branches picking the same number would otherwise alias silently
class Kind(IntEnum):
    """What the records of a frame are."""

    REQUEST = 1  # frontend -> session: (client request id, Method, request message)
    RESULT = 2  # any actor -> session -> frontend: (request id, status code, response or error text)
    PROPOSE = 3  # session -> raft: (request key, Method, request message)
    READ = 4  # session -> raft (linearizable) or -> storage (serializable, or after a ReadIndex)
    COMMITTED = 5  # raft -> storage: (raft index, EntryType, entry data); aux = raft term
    APPLIED_DURABLE = 6  # storage -> raft, no records: aux = highest index whose effects are fsynced
    LEADER = 7  # raft -> lease, no records: aux = the leader's member id (0 = none), on every change
    LEASE_EVENTS = 8  # storage -> lease: (0, LeaseEvent, LEASE_EVENT body)
    PUSH = 9  # watch -> session -> frontend: (stream id, 0, WatchResponse) sent without a request
    WATCH_EVENTS = 10  # storage -> watch: (revision, 0, pack_blobs(serialized Events)); aux = raft term
    TOKEN_REQUEST = 11  # frontend -> session: as REQUEST, each body is encode_with_token(token, request)
    SNAPSHOT_INSTALL = 12  # raft -> storage: (index, 0, pack_blobs((unpacked kv dir, Snapshot.encode())))
    SNAPSHOT_INSTALLED = 13  # storage -> raft: (applied index, 0, pack_blobs(member table rows))
    DB_SIZE = 31  # storage -> session, no records: aux = the backend's size in bytes (space quota)
    # Lease actor to lease actor across members, relayed by the raft actors over the peer link. To
    # raft, aux is the member to deliver to; delivered to a lease actor, aux is the member it came from.
    LEASE_FORWARD = 20  # a follower's lease reads for the leader's clock: (request key, Method, body)
    LEASE_REPLY = 21  # the leader's answers to them: (request key, status code, response or error text)


class Method(IntEnum):
    """Every operation the node serves; the numbers are part of the native wire protocol."""

    RANGE = 1
    PUT = 2
    DELETE_RANGE = 3
    TXN = 4
    COMPACT = 5
    LEASE_GRANT = 6
    LEASE_REVOKE = 7
    LEASE_CHECKPOINT = 8  # a raft entry only (the leader's lease actor proposes it), never from clients
    LEASE_KEEPALIVE = 9
    LEASE_TIME_TO_LIVE = 10
    LEASE_LEASES = 11
    # Watch stream records: the record id is the frontend's stream id, and nothing answers them
    # except the pushes of that stream.
    WATCH = 12  # body: a WatchRequest (create, cancel or progress)
    WATCH_CLOSE = 13  # the client went away: drop the stream's watchers
    WATCH_BLOCKED = 14  # the frontend holds too many unsent responses: stop live sending
    WATCH_READY = 15  # drained again: catch up and resume
    WATCH_HISTORY = 16  # watch -> storage (READ) and back (RESULT): past events for a catching-up watcher
    STATUS = 20
    MEMBER_LIST = 21
    MEMBER_ADD = 22
    MEMBER_REMOVE = 23
    MEMBER_UPDATE = 24
    MEMBER_PROMOTE = 25
    MEMBER_PUBLISH = 26  # a raft entry only: a member records its name and client URLs (etcd's publish)
    MOVE_LEADER = 27
    RAFT_SNAPSHOT = 28  # raft -> storage (READ, id = peer) and back (RESULT): a checkpoint to send a follower
    SNAPSHOT = 30  # answered with actors.storage.checkpoint.ticket(): the frontend streams the files
    DEFRAGMENT = 31  # per member, not replicated: compacts this member's RocksDB
    HASH = 32  # per member: crc32c of the whole backend
    HASH_KV = 33  # per member: etcd's HashKV of the MVCC rows up to a revision
    ALARM = 34  # a raft entry, GET included (as in etcd)
    # Auth service (etcd's Auth RPCs), 50-65
    AUTH_ENABLE = 50
    AUTH_DISABLE = 51
    AUTHENTICATE = 52
    USER_ADD = 53
    USER_GET = 54
    USER_LIST = 55
    USER_DELETE = 56
    USER_CHANGE_PASSWORD = 57
    USER_GRANT_ROLE = 58
    USER_REVOKE_ROLE = 59
    ROLE_ADD = 60
    ROLE_GET = 61
    ROLE_LIST = 62
    ROLE_DELETE = 63
    ROLE_GRANT_PERMISSION = 64
    ROLE_REVOKE_PERMISSION = 65
    GET_MANY = 66  # frontends' batched point reads, one linearizable read (actors/point_reads.py)


STREAM_METHODS = frozenset({Method.WATCH, Method.WATCH_CLOSE, Method.WATCH_BLOCKED, Method.WATCH_READY})

MEMBERSHIP_CHANGES = frozenset(
    {Method.MEMBER_ADD, Method.MEMBER_REMOVE, Method.MEMBER_UPDATE, Method.MEMBER_PROMOTE}
)

WRITES = (
    frozenset(
        {
            Method.PUT,
            Method.DELETE_RANGE,
            Method.TXN,
            Method.COMPACT,
            Method.LEASE_GRANT,
            Method.LEASE_REVOKE,
            Method.ALARM,
        }
    )
    | MEMBERSHIP_CHANGES
)


AUTH_METHODS = frozenset(m for m in Method if 50 <= m <= Method.ROLE_REVOKE_PERMISSION)

AUTH_RPCS: dict[str, Method] = {
    "AuthEnable": Method.AUTH_ENABLE,
    "AuthDisable": Method.AUTH_DISABLE,
    "Authenticate": Method.AUTHENTICATE,
    "UserAdd": Method.USER_ADD,
    "UserGet": Method.USER_GET,
    "UserList": Method.USER_LIST,
    "UserDelete": Method.USER_DELETE,
    "UserChangePassword": Method.USER_CHANGE_PASSWORD,
    "UserGrantRole": Method.USER_GRANT_ROLE,
    "UserRevokeRole": Method.USER_REVOKE_ROLE,
    "RoleAdd": Method.ROLE_ADD,
    "RoleGet": Method.ROLE_GET,
    "RoleList": Method.ROLE_LIST,
    "RoleDelete": Method.ROLE_DELETE,
    "RoleGrantPermission": Method.ROLE_GRANT_PERMISSION,
    "RoleRevokePermission": Method.ROLE_REVOKE_PERMISSION,
}
"""The etcdserverpb.Auth service's RPC names and the method each is (gRPC and REST serve them all)."""

AUTHED = 0x80
"""Set on a record's method byte (PROPOSE and READ records inside the core, raft entries) when its
body starts with an auth header: who asked and at which auth store revision (etcd's
RequestHeader.Username and AuthRevision). The storage actor checks permissions against it."""
AUTH_HEADER = struct.Struct("<QI")  # auth revision, length of the user name (UTF-8) that follows


def encode_authed(user: str, auth_revision: int, body: bytes) -> bytes:
    name = user.encode()
    return AUTH_HEADER.pack(auth_revision, len(name)) + name + body


def decode_authed(body: bytes) -> tuple[str, int, bytes]:
    """Inverse of :func:`encode_authed`: ``(user, auth revision, request)``."""
    revision, length = AUTH_HEADER.unpack_from(body, 0)
    start = AUTH_HEADER.size
    return body[start : start + length].decode(), revision, body[start + length :]


TOKEN_LENGTH = struct.Struct("<H")


def encode_with_token(token: str, request: bytes) -> bytes:
    """A TOKEN_REQUEST record body: the client's auth token (u16 length + UTF-8), then the request.

    A token too long for its length field is no token any member issued: it travels as the empty
    token, which the core refuses as "invalid auth token" like any other unknown one."""
    raw = token.encode("utf-8", "replace")
    if len(raw) > 0xFFFF:
        raw = b""
    return TOKEN_LENGTH.pack(len(raw)) + raw + request


def decode_with_token(body: bytes) -> tuple[str, bytes]:
    """Inverse of :func:`encode_with_token`; raises :class:`MalformedFrame` on bad bytes."""
    if len(body) < TOKEN_LENGTH.size:
        raise MalformedFrame("token request shorter than its token length")
    (length,) = TOKEN_LENGTH.unpack_from(body, 0)
    end = TOKEN_LENGTH.size + length
    if len(body) < end:
        raise MalformedFrame("token runs past the end of the record")
    return body[TOKEN_LENGTH.size : end].decode("utf-8", "replace"), body[end:]


class LeaseEvent(IntEnum):
    """What happened to a lease in the replicated state (the lease actor mirrors it)."""

    GRANTED = 1  # body: LEASE_EVENT (id, ttl, remaining ttl checkpointed or 0)
    REVOKED = 2  # body: LEASE_EVENT (id, 0, 0)


LEASE_EVENT = struct.Struct("<qqq")  # lease ids are int64 and may be negative: never a record id


class EntryType(IntEnum):
    """Raft log entry types as the storage actor sees them."""

    NORMAL = 0  # data is a proposal: encode_proposal(key, method, request)
    EMPTY = 1  # a new leader's no-op entry: only advances the applied index
    CONF_CHANGE = 2  # a membership change: data is actors.raft.confchange.ConfChange.encode()


def pack(kind: int, records: Iterable[Record], aux: int = 0) -> bytes:
    """Encode ``records`` as one frame."""
    parts = [FRAME_HEADER.pack(kind, aux)]
    header = RECORD_HEADER.pack
    for rid, code, body in records:
        parts.append(header(rid, code, len(body)))
        parts.append(body)
    return b"".join(parts)


class MalformedFrame(ValueError):
    """A frame whose bytes do not follow the layout (truncated, or not ours at all)."""


def unpack(frame: bytes) -> tuple[int, int, list[Record]]:
    """Decode a frame into ``(kind, aux, records)``; raise :class:`MalformedFrame` on bad bytes."""
    if len(frame) < FRAME_HEADER.size:
        raise MalformedFrame(f"frame of {len(frame)} bytes is shorter than its header")
    kind, aux = FRAME_HEADER.unpack_from(frame, 0)
    records: list[Record] = []
    view = memoryview(frame)
    offset, end = FRAME_HEADER.size, len(frame)
    size = RECORD_HEADER.size
    unpack_from = RECORD_HEADER.unpack_from
    while offset < end:
        if end - offset < size:
            raise MalformedFrame("truncated record header")
        rid, code, length = unpack_from(frame, offset)
        offset += size
        if end - offset < length:
            raise MalformedFrame("record body runs past the end of the frame")
        records.append((rid, code, bytes(view[offset : offset + length])))
        offset += length
    return kind, aux, records


BLOB_LENGTH = struct.Struct("<I")


def pack_blobs(blobs: Iterable[bytes]) -> bytes:
    """Several byte strings as one record body (each behind its u32 length)."""
    length = BLOB_LENGTH.pack
    return b"".join(length(len(b)) + b for b in blobs)


def unpack_blobs(data: bytes) -> list[bytes]:
    blobs, offset, end = [], 0, len(data)
    while offset < end:
        (length,) = BLOB_LENGTH.unpack_from(data, offset)
        offset += BLOB_LENGTH.size
        blobs.append(data[offset : offset + length])
        offset += length
    return blobs


HISTORY_QUERY = struct.Struct("<qqq")  # start revision, end revision, event limit
HISTORY_ANSWER = struct.Struct("<qBq")  # next revision to read, compacted?, the compacted revision
REVISION = struct.Struct("<q")


def encode_history_query(key: bytes, range_end: bytes, start: int, end: int, limit: int) -> bytes:
    return pack_blobs((key, range_end, HISTORY_QUERY.pack(start, end, limit)))


def decode_history_query(body: bytes) -> tuple[bytes, bytes, int, int, int]:
    key, range_end, numbers = unpack_blobs(body)
    return (key, range_end, *HISTORY_QUERY.unpack(numbers))


def encode_history(
    revisions: list[tuple[int, list[bytes]]], next_rev: int, compacted: int | None = None
) -> bytes:
    blobs = (REVISION.pack(rev) + pack_blobs(events) for rev, events in revisions)
    flag, value = (0, 0) if compacted is None else (1, compacted)  # -1 is a real compacted revision
    return HISTORY_ANSWER.pack(next_rev, flag, value) + pack_blobs(blobs)


def decode_history(body: bytes) -> tuple[list[tuple[int, list[bytes]]], int, int | None]:
    """``(revisions, next revision, compacted revision or None)``."""
    next_rev, flag, value = HISTORY_ANSWER.unpack_from(body, 0)
    compacted = value if flag else None
    revisions = [
        (REVISION.unpack_from(blob, 0)[0], unpack_blobs(blob[REVISION.size :]))
        for blob in unpack_blobs(body[HISTORY_ANSWER.size :])
    ]
    return revisions, next_rev, compacted


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int (for writing message bytes by hand)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_proposal(key: int, method: int, request: bytes) -> bytes:
    """The data of a NORMAL raft entry: who asked (a member-prefixed key), what, and the request."""
    return PROPOSAL_HEADER.pack(key, method) + request


def decode_proposal(data: bytes) -> tuple[int, int, bytes]:
    """Inverse of :func:`encode_proposal`: ``(key, method, request)``."""
    key, method = PROPOSAL_HEADER.unpack_from(data, 0)
    return key, method, data[PROPOSAL_HEADER.size :]
