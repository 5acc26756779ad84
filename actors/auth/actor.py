"""The auth actor: password work (bcrypt) off the core's loop, then the raft proposal.

bcrypt at etcd's default cost takes ~50 ms of CPU per hash or check. The core is one thread that
must keep serving everyone, so the session hands Authenticate, UserAdd and UserChangePassword to
this actor, which runs the hashing on ONE worker thread (the ``bcrypt`` package releases the GIL
while it hashes, so the loop keeps running) and proposes the outcome: a token (Authenticate) or
the request with its password replaced by the hash (UserAdd/ChangePassword, so no plain password
reaches the raft log). Hashing in the core rather than in a frontend keeps password hashes inside
the core and gives every frontend (gRPC, REST, RESP, ZeroMQ) the same limits:

- a per-user bucket of password checks (:class:`FailureLimiter`): a few checks of one user run at
  once, a right password gives its token back, a wrong one keeps it (refilled at ``rate`` a
  second). Checks beyond the bucket wait in the user's line (``user_waiting`` at most, for
  ``wait_seconds`` at most); beyond that, "etcdserver: too many requests" at no hashing cost. So
  many clients of one account logging in at once are served in turn, while a guesser gets a
  handful of checks;
- a bounded job queue across users: beyond it, requests are refused at once rather than queued
  behind seconds of hashing. So a flood costs the node at most the one worker thread's core.

This is where a pluggy auth-backend hook will sit: a name and credentials in, "authenticated
user" (then a token proposal) out.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import bcrypt
import structlog
import zmq
from google.protobuf.message import DecodeError

from actors import errors
from actors.auth.limiter import FailureLimiter
from actors.auth.store import AuthStore, fingerprint
from actors.errors import EtcdError
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import AUTHED, Kind, Method, Record, decode_authed, encode_authed, pack_blobs, unpack

log = structlog.get_logger()

DONE_URL = "inproc://cairn/auth-done"
RETRY_INTERVAL = 0.1  # seconds between looks at the users whose checks wait for their bucket
BCRYPT_MAX_BYTES = 72  # bcrypt looks at the first 72 bytes of a password (Go's bcrypt truncated too)


@dataclass(slots=True, frozen=True)
class AuthSettings:
    bcrypt_cost: int = 10
    queue_size: int = 64  # password jobs waiting for the worker before new ones are refused
    burst: int = 5  # password checks a user may have in a row ...
    rate: float = 1.0  # ... then this many a second (right passwords do not count)
    user_waiting: int = 32  # checks of one user waiting for the bucket, beyond which they are refused
    wait_seconds: float = 5.0  # ... and how long one waits (the session times requests out at 7 s)


@dataclass(slots=True)
class _Check:
    key: int
    name: str
    password: bytes
    stored: bytes
    revision: int
    deadline: float = 0.0  # monotonic: refused with "too many requests" if it cannot start by then
    ok: bool = False
    token: str = ""
    error: str = ""


@dataclass(slots=True)
class _Hash:
    key: int
    method: int
    user: str | None
    revision: int
    request: bytes
    password: bytes
    hashed: bytes = b""


def _password(text: str) -> bytes:
    return text.encode()[:BCRYPT_MAX_BYTES]


class AuthActor(Actor):
    name = "auth"

    def __init__(self, ctx: zmq.Context, store: AuthStore, settings: AuthSettings) -> None:
        self.store = store
        self.settings = settings
        self.inbox = inbox(ctx, self.name)
        self.done = ctx.socket(zmq.PULL)
        self.done.bind(DONE_URL)
        self.raft = Mailbox(ctx, "raft")
        self.session = Mailbox(ctx, "session")
        self.limiter = FailureLimiter(settings.burst, settings.rate)
        self.waiting: dict[str, deque[_Check]] = {}  # per user: checks waiting for the bucket
        self.next_retry = 0.0
        self.jobs: queue.Queue[_Check | _Hash | None] = queue.Queue(settings.queue_size)
        self.results: queue.SimpleQueue[_Check | _Hash] = queue.SimpleQueue()
        self.worker = threading.Thread(target=self._work, args=(ctx,), name="bcrypt", daemon=True)
        self.worker.start()

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox, self.done)

    # -- the loop's side ------------------------------------------------------------------------------

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        if sock is self.done:
            while True:
                try:
                    job = self.results.get_nowait()
                except queue.Empty:
                    return
                self._finish(job)
        for (frame,) in messages:
            _, _, records = unpack(frame)
            for record in records:
                try:
                    self._request(record)
                except EtcdError as e:
                    self._fail(record[0], e)

    def _fail(self, key: int, error: EtcdError) -> None:
        self.session.put(Kind.RESULT, (key, error.code, error.message.encode()))

    def _request(self, record: Record) -> None:
        key, method, body = record
        user, revision = None, 0
        if method & AUTHED:
            user, revision, body = decode_authed(body)
            method &= ~AUTHED
        try:
            if method == Method.AUTHENTICATE:
                self._authenticate(key, rpc_pb2.AuthenticateRequest.FromString(body))
            elif method == Method.USER_ADD:
                self._user_add(key, user, revision, rpc_pb2.AuthUserAddRequest.FromString(body))
            elif method == Method.USER_CHANGE_PASSWORD:
                req = rpc_pb2.AuthUserChangePasswordRequest.FromString(body)
                self.store.check_admin(user or "")
                self._queue_hash(key, method, user, revision, req)
            else:
                raise EtcdError(
                    errors.Code.UNIMPLEMENTED, f"cairn: method {method} is not for the auth actor"
                )
        except DecodeError as exc:
            raise EtcdError(errors.Code.INVALID_ARGUMENT, f"cairn: malformed auth request: {exc}") from None

    def _authenticate(self, key: int, req: rpc_pb2.AuthenticateRequest) -> None:
        """etcd's CheckPassword, with the hash comparison handed to the worker."""
        store = self.store
        if not store.enabled:
            raise errors.AUTH_NOT_ENABLED.copy()
        record = store.users.get(req.name)
        if record is None:
            raise errors.AUTH_FAILED.copy()
        if record.options.no_password:
            raise errors.NO_PASSWORD_USER.copy()
        line = self.waiting.setdefault(req.name, deque())
        if len(line) >= self.settings.user_waiting:
            log.warning("authenticate_rate_limited", user=req.name)
            raise errors.TOO_MANY_REQUESTS.copy()
        now = time.monotonic()
        deadline = now + self.settings.wait_seconds
        line.append(_Check(key, req.name, _password(req.password), record.password, store.revision, deadline))
        self._dispatch(req.name, now)

    def _dispatch(self, name: str, now: float) -> None:
        """Start the user's waiting checks its bucket allows; refuse those that waited too long."""
        line = self.waiting.get(name)
        while line:
            job = line[0]
            if job.deadline < now:
                line.popleft()
                self._fail(job.key, errors.TOO_MANY_REQUESTS)
            elif self.limiter.take(name, now):
                line.popleft()
                if not self._submit(job):
                    self.limiter.give_back(name, now)
                    self._fail(job.key, errors.TOO_MANY_REQUESTS)
            else:
                return
        self.waiting.pop(name, None)

    def deadline(self) -> float | None:
        return self.next_retry if self.waiting else None

    def on_time(self, now: float) -> None:
        """Buckets refill with time: start (or refuse) what waits."""
        self.next_retry = now + RETRY_INTERVAL
        for name in list(self.waiting):
            self._dispatch(name, now)

    def _user_add(self, key: int, user: str | None, revision: int, req: rpc_pb2.AuthUserAddRequest) -> None:
        self.store.check_admin(user or "")
        if not req.name:
            raise errors.USER_EMPTY.copy()
        if req.options.no_password:
            req.password = ""
            self._propose(key, Method.USER_ADD, user, revision, pack_blobs((req.SerializeToString(), b"")))
            return
        self._queue_hash(key, Method.USER_ADD, user, revision, req)

    def _queue_hash(self, key: int, method: int, user: str | None, revision: int, req: object) -> None:
        password = _password(req.password)  # type: ignore[attr-defined]
        req.password = ""  # type: ignore[attr-defined]
        job = _Hash(key, method, user, revision, req.SerializeToString(), password)  # type: ignore[attr-defined]
        if not self._submit(job):
            raise errors.TOO_MANY_REQUESTS.copy()

    def _submit(self, job: _Check | _Hash) -> bool:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            log.warning("auth_queue_full", size=self.settings.queue_size)
            return False
        return True

    def _finish(self, job: _Check | _Hash) -> None:
        if isinstance(job, _Hash):
            self._propose(job.key, job.method, job.user, job.revision, pack_blobs((job.request, job.hashed)))
            return
        if job.ok:  # a right password does not count against the user
            self.limiter.give_back(job.name, time.monotonic())
        if job.error:
            log.error("authenticate_token_failed", user=job.name, error=job.error)
            self._fail(job.key, EtcdError(errors.Code.INTERNAL, job.error))
        elif job.ok:
            body = pack_blobs((job.name.encode(), job.token.encode(), fingerprint(job.stored)))
            self.raft.put(Kind.PROPOSE, (job.key, Method.AUTHENTICATE, body))
        else:
            log.info("authenticate_failed", user=job.name)
            self._fail(job.key, errors.AUTH_FAILED)
        self._dispatch(job.name, time.monotonic())

    def _propose(self, key: int, method: int, user: str | None, revision: int, body: bytes) -> None:
        if user is None:
            self.raft.put(Kind.PROPOSE, (key, method, body))
        else:
            self.raft.put(Kind.PROPOSE, (key, method | AUTHED, encode_authed(user, revision, body)))

    # -- the worker thread ----------------------------------------------------------------------------

    def _work(self, ctx: zmq.Context) -> None:
        wake = ctx.socket(zmq.PUSH)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect(DONE_URL)
        tokens = self.store.tokens
        try:
            while (job := self.jobs.get()) is not None:
                if isinstance(job, _Hash):
                    job.hashed = bcrypt.hashpw(job.password, bcrypt.gensalt(self.settings.bcrypt_cost))
                else:
                    job.ok = _checkpw(job.password, job.stored)
                    if job.ok:
                        try:
                            job.token = tokens.new_token(job.name, job.revision, time.time())
                        except Exception as e:  # a verify-only JWT key, a signing failure
                            job.error = f"cairn: cannot issue a token: {e}"
                self.results.put(job)
                wake.send(b"")
        finally:
            wake.close(linger=0)

    def flush(self) -> None:
        self.raft.flush()
        self.session.flush()

    def close(self) -> None:
        while True:  # drop waiting jobs, so the stop sentinel fits and the worker closes its socket
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        self.jobs.put_nowait(None)
        self.worker.join(timeout=1.0)
        self.inbox.close(linger=0)
        self.done.close(linger=0)
        self.raft.close()
        self.session.close()


def _checkpw(password: bytes, stored: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, stored)
    except ValueError:  # not a bcrypt hash (a damaged row): a failed check, not a crash
        return False
