"""The session actor: the core's front door, where frontend requests enter and answers leave.

It owns the ROUTER socket the frontend processes connect to. Each request gets a node-wide key
(this member's 16-bit prefix + a counter, like etcd's request ids) that travels with it through
raft and storage, so whichever actor finishes a request can answer it here. Requests that can be
refused without consulting anyone (too large, malformed, etcd's pre-proposal checks) are refused
here; the rest are routed: writes and linearizable reads to raft, serializable reads to storage.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
import zmq

from actors import errors, metrics, point_reads
from actors.auth.gate import AuthGate, TokenNotApplied
from actors.learner import served_by_learner
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import (
    AUTH_METHODS,
    STREAM_METHODS,
    WRITES,
    Kind,
    MalformedFrame,
    Method,
    Record,
    decode_with_token,
    pack,
    unpack,
)
from actors.storage.mvcc import is_txn_readonly
from actors.storage.quota import CHARGED, SpaceQuota
from actors.storage.validate import LEASE_REQUESTS, REQUEST_TYPES, check_message, decode, parse

log = structlog.get_logger()

CLIENT_METHODS = frozenset(int(m) for m in Method) - {Method.LEASE_CHECKPOINT, Method.MEMBER_PUBLISH}


TOKEN_RETRY = 0.005  # seconds between retries of requests whose token this member has not applied yet
KEY_MASK = (1 << 48) - 1  # a request key: the member's 16-bit prefix, then 48 bits of counter
FRONTEND_TIMEOUT = 5.0  # seconds without a frame (frontends send one every 0.5 s) before one is gone
ALARM_RETRY = 1.0  # seconds between two NOSPACE alarm proposals of this member
MEMBER_LOCAL = frozenset(  # served by this member's storage
    {Method.DEFRAGMENT, Method.HASH, Method.HASH_KV, Method.SNAPSHOT}
)
MAINTENANCE_REQUESTS = {
    Method.DEFRAGMENT: rpc_pb2.DefragmentRequest,
    Method.HASH: rpc_pb2.HashRequest,
    Method.HASH_KV: rpc_pb2.HashKVRequest,
    Method.ALARM: rpc_pb2.AlarmRequest,
}  # parsed here only so that bytes which are no such message are refused before going further


@dataclass(slots=True, frozen=True)
class Limits:
    max_request_bytes: int = 1572864
    max_txn_ops: int = 128
    request_timeout: float = 7.0
    quota_backend_bytes: int = 0  # etcd's --quota-backend-bytes: 0 = 2 GiB, negative = none


def _varint_size(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def proposal_size(key: int, body: bytes) -> int:
    """The size etcd checks against ``max-request-bytes``: the request wrapped in its raft entry.

    etcd measures the marshaled InternalRaftRequest: the request as one field (tag + length + body)
    plus a RequestHeader in field 100 that carries the request id. Matching it makes the limit
    fall on the same byte for the same request.
    """
    header = 1 + _varint_size(key)  # RequestHeader{ID}
    return 2 + _varint_size(header) + header + 1 + _varint_size(len(body)) + len(body)


def key_prefix(member_id: int) -> int:
    """The high 16 bits of every request key this member issues."""
    return (member_id & 0xFFFF) << 48


class SessionActor(Actor):
    name = "session"

    def __init__(
        self, ctx: zmq.Context, url: str, member_id: int, limits: Limits, gate: AuthGate | None = None
    ) -> None:
        self.front = ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.SNDHWM, 0)
        self.front.setsockopt(zmq.RCVHWM, 0)
        self.front.bind(url)
        self.url = self.front.getsockopt(zmq.LAST_ENDPOINT).decode()
        # stamped in the aux of every frame to the frontends: a new number tells them this core
        # restarted and forgot their calls and watch streams (docs/architecture.md)
        self.incarnation = secrets.randbits(63) | 1
        self.inbox = inbox(ctx, self.name)
        self.raft = Mailbox(ctx, "raft")
        self.storage = Mailbox(ctx, "storage")
        self.lease = Mailbox(ctx, "lease")
        self.watch = Mailbox(ctx, "watch")
        self.auth = Mailbox(ctx, "auth")
        self.gate = gate
        self.limits = limits
        self.prefix = key_prefix(member_id)
        self.member_id = member_id
        self.quota = SpaceQuota(limits.quota_backend_bytes)
        metrics.core().quota_backend_bytes.set(self.quota.limit)
        self.alarm_raised = float("-inf")  # when this member last proposed its NOSPACE alarm
        # like etcd's request ids: start from the clock, so keys of a restarted member never repeat
        # those of its previous run (a late result for an old key would answer a new request)
        self.counter = (int(time.time() * 1000) & 0xFF_FFFF_FFFF) << 8
        self.waiting: dict[int, tuple[bytes, int, float]] = {}
        self.replies: dict[bytes, list[Record]] = {}
        self.pushes: dict[bytes, list[Record]] = {}
        # watch streams: the node-wide stream key <-> (frontend identity, frontend's stream id)
        self.streams: dict[int, tuple[bytes, int]] = {}
        self.stream_keys: dict[tuple[bytes, int], int] = {}
        self.last_seen: dict[bytes, float] = {}
        self.next_sweep = time.monotonic() + 1.0
        # requests held until this member applies their token's Authenticate entry
        self.parked: list[tuple[bytes, int, int, bytes, float, str | None]] = []
        self.next_retry = 0.0
        self.is_learner: Callable[[], bool] = lambda: False  # set by the node: the raft actor's view

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.front, self.inbox)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        if sock is self.front:
            now = time.monotonic()
            deadline = now + self.limits.request_timeout
            for message in messages:
                if len(message) != 2:
                    log.warning("frontend_message_malformed", parts=len(message))
                    continue
                identity, frame = message
                self.last_seen[identity] = now
                try:
                    kind, _, records = unpack(frame)
                except MalformedFrame as e:
                    log.warning("frontend_frame_malformed", error=str(e))
                    continue
                if kind == Kind.REQUEST:
                    if not records:  # a frontend's heartbeat: answered, so it hears our incarnation
                        self.replies.setdefault(identity, [])
                    for rid, method, body in records:
                        if method in STREAM_METHODS:
                            self._stream_request(identity, rid, method, body)
                        else:
                            self._request(identity, rid, method, body, deadline)
                elif kind == Kind.TOKEN_REQUEST:
                    self._token_requests(identity, records, deadline)
            return
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            if kind == Kind.DB_SIZE:
                self.quota.report(aux)
            elif kind == Kind.PUSH:
                for key, _, body in records:
                    self._push(key, body)
            else:
                for key, status, body in records:
                    self._answer(key, status, body)

    def _token_requests(self, identity: bytes, records: list[Record], deadline: float) -> None:
        for rid, method, body in records:
            try:
                token, request = decode_with_token(body)
            except MalformedFrame as e:
                self._fail(identity, rid, errors.EtcdError(errors.Code.INVALID_ARGUMENT, f"cairn: {e}"))
                continue
            if method in STREAM_METHODS:
                self._stream_request(identity, rid, method, request, token)
            else:
                self._request(identity, rid, method, request, deadline, token)

    def _reply(self, identity: bytes, record: Record) -> None:
        self.replies.setdefault(identity, []).append(record)

    def _stream_request(
        self, identity: bytes, stream_id: int, method: int, body: bytes, token: str | None = None
    ) -> None:
        """Watch stream traffic goes to the watch actor under a node-wide stream key."""
        if method == Method.WATCH and self.is_learner():  # etcd's stream interceptor: the stream fails
            error = errors.NOT_SUPPORTED_FOR_LEARNER
            self.pushes.setdefault(identity, []).append((stream_id, error.code, error.message.encode()))
            return
        if method == Method.WATCH and self.gate is not None:
            denial = self.gate.watch_denial(body, token)
            if denial is not None:  # etcd answers a refused create on the stream, which stays open
                self.pushes.setdefault(identity, []).append((stream_id, 0, denial))
                return
        key = self.stream_keys.get((identity, stream_id))
        if key is None:
            if method == Method.WATCH_CLOSE:
                return
            key = self._next_key()
            self.stream_keys[(identity, stream_id)] = key
            self.streams[key] = (identity, stream_id)
        if method == Method.WATCH_CLOSE:
            del self.stream_keys[(identity, stream_id)]
            del self.streams[key]
        self.watch.put(Kind.REQUEST, (key, method, body))

    def _push(self, key: int, body: bytes) -> None:
        stream = self.streams.get(key)
        if stream is not None:
            identity, stream_id = stream
            self.pushes.setdefault(identity, []).append((stream_id, 0, body))

    def _fail(self, identity: bytes, rid: int, error: errors.EtcdError) -> None:
        self._reply(identity, (rid, error.code, error.message.encode()))

    def _request(
        self, identity: bytes, rid: int, method: int, body: bytes, deadline: float, token: str | None = None
    ) -> None:
        if method not in CLIENT_METHODS:
            self._fail(identity, rid, errors.EtcdError(errors.Code.UNIMPLEMENTED, f"unknown method {method}"))
            return
        key = self._next_key()
        # follows one request through the logs: the frontend logs request_id, the actors log key
        log.debug("request_received", frontend=identity.hex(), request_id=rid, key=f"{key:x}", method=method)
        try:
            # etcd's order: the quota (its gRPC interceptor), the request's own checks, the size
            message = decode(method, body) if method in REQUEST_TYPES else None
            if self.is_learner() and not served_by_learner(method, message):
                raise errors.NOT_SUPPORTED_FOR_LEARNER.copy()  # etcd's interceptors: before anything else
            if method in CHARGED and not self.quota.fits(method, message):
                self._raise_nospace()
                raise errors.NO_SPACE.copy()
            if message is not None:
                check_message(method, message, self.limits.max_txn_ops)
            elif method in MAINTENANCE_REQUESTS:
                parse(MAINTENANCE_REQUESTS[method], body)
            elif method in LEASE_REQUESTS:
                parse(LEASE_REQUESTS[method], body)
            elif method == Method.GET_MANY:
                point_reads.check_request(body)  # then a linearizable read like any other
            proposed = method in WRITES or method in AUTH_METHODS
            if proposed and proposal_size(key, body) > self.limits.max_request_bytes:
                raise errors.REQUEST_TOO_LARGE.copy()
            routed, body = (method, body) if self.gate is None else self.gate.tag(method, body, token)
        except TokenNotApplied:
            self.parked.append((identity, rid, method, body, deadline, token))
            return
        except errors.EtcdError as e:
            self._fail(identity, rid, e)
            return
        if method in CHARGED:
            self.quota.charge(key, method, message)  # until its result comes back
        self.waiting[key] = (identity, rid, deadline)
        if method in AUTH_METHODS:
            if method in (Method.AUTHENTICATE, Method.USER_ADD, Method.USER_CHANGE_PASSWORD):
                self.auth.put(Kind.REQUEST, (key, routed, body))  # password hashing, off this loop
            else:
                self.raft.put(Kind.PROPOSE, (key, routed, body))  # applied in log order, as etcd
            return
        if method == Method.TXN and is_txn_readonly(message):
            self.raft.put(Kind.READ, (key, routed, body))  # etcd serves read-only txns as reads
        elif method in WRITES:
            if method == Method.LEASE_GRANT:
                body = self._with_lease_id(body)
            self.raft.put(Kind.PROPOSE, (key, routed, body))
        elif (
            method == Method.LEASE_KEEPALIVE
            or (method == Method.RANGE and message.serializable)
            or method in MEMBER_LOCAL
        ):
            self.storage.put(Kind.READ, (key, routed, body))  # a keep-alive: header, then lease actor
        else:
            self.raft.put(Kind.READ, (key, routed, body))

    def _raise_nospace(self) -> None:
        """Propose this member's NOSPACE alarm (etcd's quotaAlarmer), at most once per ALARM_RETRY.

        Nobody waits for its answer: the alarm takes effect when every member applies it.
        """
        now = time.monotonic()
        if now - self.alarm_raised < ALARM_RETRY:
            return
        self.alarm_raised = now
        log.warning("space_quota_exceeded", db_size=self.quota.db_size, quota=self.quota.limit)
        alarm = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=rpc_pb2.NOSPACE
        )
        self.raft.put(Kind.PROPOSE, (self._next_key(), Method.ALARM, alarm.SerializeToString()))

    def _next_key(self) -> int:
        self.counter = (self.counter + 1) & KEY_MASK or 1  # low bits 0: the lease actor's proposals
        return self.prefix | self.counter

    def _with_lease_id(self, body: bytes) -> bytes:
        """A grant without an ID gets one here, before proposing, so every member applies the same."""
        request = rpc_pb2.LeaseGrantRequest.FromString(body)
        if request.ID:
            return body
        # a positive int64 like etcd's ids: the member prefix without the sign bit, then time and a counter
        high = self.prefix & (0x7FFF << 48)
        low = ((int(time.time() * 1000) << 8) | (self.counter & 0xFF)) & ((1 << 48) - 1)
        request.ID = high | low
        return request.SerializeToString()

    def _answer(self, key: int, status: int, body: bytes) -> None:
        self.quota.settle(key)
        waiting = self.waiting.pop(key, None)
        if waiting is not None:
            identity, rid, _ = waiting
            self._reply(identity, (rid, status, body))

    def deadline(self) -> float | None:
        return min(self.next_sweep, self.next_retry) if self.parked else self.next_sweep

    def on_time(self, now: float) -> None:
        """Answer requests that raft never committed in time (a lost leader) with etcd's timeout,
        and close the watch streams of frontends that went away (crashed or restarted)."""
        if self.parked and now >= self.next_retry:
            self._retry_parked(now)
        if now < self.next_sweep:
            return
        self.next_sweep = now + 1.0
        late = [key for key, (_, _, deadline) in self.waiting.items() if deadline < now]
        for key in late:
            self._answer(key, errors.TIMEOUT.code, errors.TIMEOUT.message.encode())
        gone = {identity for identity, seen in self.last_seen.items() if now - seen > FRONTEND_TIMEOUT}
        if gone:
            log.info("frontends_gone", count=len(gone))
            for identity, stream_id in [s for s in self.stream_keys if s[0] in gone]:
                self._stream_request(identity, stream_id, Method.WATCH_CLOSE, b"")
            for identity in gone:
                del self.last_seen[identity]

    def _retry_parked(self, now: float) -> None:
        self.next_retry = now + TOKEN_RETRY
        parked, self.parked = self.parked, []
        for identity, rid, method, body, deadline, token in parked:
            if deadline < now:
                self._fail(identity, rid, errors.INVALID_AUTH_TOKEN)
            else:
                self._request(identity, rid, method, body, deadline, token)

    def flush(self) -> None:
        self.raft.flush()
        self.storage.flush()
        self.lease.flush()
        self.watch.flush()
        self.auth.flush()
        for kind, batches in ((Kind.RESULT, self.replies), (Kind.PUSH, self.pushes)):
            if batches:
                for identity, records in batches.items():
                    self.front.send_multipart([identity, pack(kind, records, self.incarnation)], copy=False)
                batches.clear()

    def close(self) -> None:
        for sock in (self.front, self.inbox):
            sock.close(linger=0)
        for mailbox in (self.raft, self.storage, self.lease, self.watch, self.auth):
            mailbox.close()
