"""The native ZeroMQ frontend: the node's own message protocol on a ``tcp://`` ROUTER socket.

Clients in any language speak the envelope of :mod:`actors.protocol` (``kind aux records``) with
etcd's protobuf messages as bodies, exactly what the frontend process already sends the core; the
relay here forwards each record through the shared :class:`node.api.Client`, so a native client's
requests are batched with gRPC's and REST's. A direct path to the core was the alternative: it
would save one hop, but the core's session actor would then face untrusted peers, per-peer limits
and watch backpressure in the one thread every actor shares. The wire format is documented frame
by frame in ``docs/zmq-protocol.md``.

Every frame this server sends carries the peer's *session number* in ``aux``. It changes when the
server forgot the peer (a frontend restart, or silence longer than ``peer-timeout``) or the core
process restarted under it, which is how a client learns that its watch streams are gone and must
be re-created from its last revision.

Settings (``plugins: {zmq: {...}}``): ``listen`` (``tcp://host:port`` or ``ipc://path``, default
``tcp://127.0.0.1:2390``), ``peer-timeout`` (seconds of silence before a peer's streams are
dropped, default 10), ``max-frame-bytes`` (larger frames close the connection, default 16 MiB),
``max-in-flight`` (unanswered requests per peer, default 10000), ``max-streams`` (watch streams
per peer, default 1000), and CURVE (``curve: true`` and its keys: :mod:`plugins.zmq.curve`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque

import structlog
import zmq
from google.protobuf.message import DecodeError

from actors import errors
from actors.auth.backends import request_token
from actors.proto import rpc_pb2
from actors.protocol import AUTH_RPCS, Kind, MalformedFrame, Method, Record, decode_with_token, pack, unpack
from node.api import CORE_LOST, Client, Stream
from node.config import ConfigError
from plugins.zmq.curve import ClientGate, client_curve

log = structlog.get_logger()

DEFAULT_LISTEN = "tcp://127.0.0.1:2390"

#: Methods a native client may call with one request and one response.
UNARY_METHODS = frozenset(
    {
        Method.RANGE,
        Method.PUT,
        Method.DELETE_RANGE,
        Method.TXN,
        Method.COMPACT,
        Method.LEASE_GRANT,
        Method.LEASE_REVOKE,
        Method.LEASE_KEEPALIVE,
        Method.LEASE_TIME_TO_LIVE,
        Method.LEASE_LEASES,
        Method.STATUS,
        Method.MEMBER_LIST,
        *AUTH_RPCS.values(),
    }
)

FRAME_ERROR_ID = 0  # the record id of errors about a whole frame rather than one request
SEND_RETRY, MAX_SEND_RETRY = 0.005, 0.2  # seconds between tries to send to a peer whose queue is full
BACKLOG_FRAMES = 16  # frames held for a slow peer before its watch streams stop pulling
RECV_BATCH = 1024  # messages handled per turn before yielding to the event loop


def _positive(settings: dict, key: str, default: float) -> float:
    value = settings.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"plugins.zmq.{key}: {value!r} is not a positive number")
    return value


def listen_url(settings: dict) -> str:
    url = settings.get("listen", DEFAULT_LISTEN)
    if not isinstance(url, str) or not url.startswith(("tcp://", "ipc://")):
        raise ConfigError(f"plugins.zmq.listen: {url!r} is not a tcp://host:port or ipc:// URL")
    return url


def error_record(rid: int, error: errors.EtcdError) -> Record:
    return (rid, error.code, error.message.encode())


def frame_error(text: str) -> Record:
    return (FRAME_ERROR_ID, errors.Code.INVALID_ARGUMENT, text.encode())


class Peer:
    """What the server holds for one connected client (one ZeroMQ routing id)."""

    __slots__ = (
        "backlog",
        "identity",
        "in_flight",
        "key",
        "last_seen",
        "pumps",
        "pushes",
        "replies",
        "retry",
        "retry_delay",
        "session",
        "streams",
        "wants_reply",
        "writable",
    )

    def __init__(self, identity: bytes, session: int, now: float, key: str | None = None) -> None:
        self.identity = identity
        self.key = key  # the CURVE public key it connected with (None without CURVE)
        self.session = session
        self.last_seen = now
        self.in_flight = 0
        self.replies: list[Record] = []
        self.pushes: list[Record] = []
        self.wants_reply = False  # a heartbeat came in: answer even with no records
        self.backlog: deque[bytes] = deque()
        self.writable = asyncio.Event()
        self.writable.set()
        self.retry: asyncio.TimerHandle | None = None  # a send retry is scheduled: the peer is full
        self.retry_delay = SEND_RETRY / 2
        self.streams: dict[int, Stream] = {}
        self.pumps: dict[int, asyncio.Task[None]] = {}


class ZmqFrontend:
    name = "zmq"

    def __init__(self, settings: dict, data_dir: str) -> None:
        self.url = listen_url(settings)
        self.curve = client_curve(settings, data_dir)
        self.gate: ClientGate | None = None
        self.peer_timeout = _positive(settings, "peer-timeout", 10.0)
        self.max_frame_bytes = int(_positive(settings, "max-frame-bytes", 16 << 20))
        self.max_in_flight = int(_positive(settings, "max-in-flight", 10000))
        self.max_streams = int(_positive(settings, "max-streams", 1000))
        self.client: Client | None = None
        self.sock: zmq.Socket | None = None
        self.peers: dict[bytes, Peer] = {}
        self.dirty: set[bytes] = set()
        self.flush_scheduled = False
        # sessions start from a random base, so a restarted server never reuses a number
        self.next_session = secrets.randbits(62) << 1 | 1
        self.tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop  # the loop `start` ran in

    async def start(self, client: Client) -> None:
        self.client = client
        # a plain socket watched with add_reader, as node.api.Client does: zmq.asyncio's futures
        # would cost more than the relay itself
        if self.curve is not None:
            # a context of its own: its ZAP handler then guards this socket and nothing else
            self.gate = ClientGate(zmq.Context(), self.curve)
            sock = self.gate.zap.socket.context.socket(zmq.ROUTER)
            self.gate.secure(sock)
        else:
            sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or vanished peer is an error, not a silent drop
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client reconnecting with its routing id takes over
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        sock.setsockopt(zmq.SNDHWM, 100)  # frames queued per peer; beyond, the relay holds back
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)  # ZMTP pings find half-open TCP connections
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)  # a connection that never completes ZMTP's greeting
        try:
            sock.bind(self.url)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            if self.gate is not None:
                self.gate.close()
            raise ConfigError(f"plugins.zmq.listen: cannot bind {self.url}: {e}") from None
        self.sock = sock
        self.url = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.loop = loop = asyncio.get_running_loop()
        if self.gate is not None:
            self.gate.start(loop)
        loop.add_reader(sock.getsockopt(zmq.FD), self._receive)
        loop.call_soon(self._receive)  # the FD is edge-triggered: take what came before we watched
        self.tasks = [asyncio.create_task(self._sweep())]
        log.info("zmq_serving", url=self.url)

    async def stop(self, grace: float) -> None:
        """Take no new requests, answer those in flight (for up to ``grace`` s), then close."""
        assert self.sock is not None
        self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
        deadline = time.monotonic() + grace
        while any(p.in_flight or p.backlog for p in self.peers.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self.tasks:
            task.cancel()
        for identity in list(self.peers):
            self._forget(identity)
        await asyncio.sleep(0)  # let the client send the streams' closes before it is closed
        self.sock.close(linger=0)
        if self.gate is not None:
            self.gate.close()
            self.gate.zap.socket.context.term()

    # -- receiving -----------------------------------------------------------------------------------
    def _receive(self) -> None:
        """Take what is waiting (the loop calls this when the socket's FD signals), a turn's worth
        at a time so that one busy client cannot keep the others waiting."""
        sock = self.sock
        assert sock is not None
        for _ in range(RECV_BATCH):
            if sock.closed or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            if self.gate is None:
                self._handle(sock.recv_multipart(zmq.NOBLOCK))
            else:  # the key libzmq attached to the connection (the ZAP reply's user id)
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                self._handle([f.bytes for f in frames], frames[-1].get("User-Id"))
        self.loop.call_soon(self._receive)

    def _handle(self, message: list[bytes], key: str | None = None) -> None:
        """One peer's message; a bug it triggers is logged and answered, never fatal to the others."""
        try:
            self._on_message(message, key)
        except Exception as e:
            log.exception("zmq_message_failed", peer=message[0].hex(), error=repr(e))
            peer = self.peers.get(message[0])
            if peer is not None:
                self._reply(
                    peer, (FRAME_ERROR_ID, errors.Code.INTERNAL, f"cairn: internal error: {e!r}".encode())
                )

    def _peer(self, identity: bytes, now: float, key: str | None) -> Peer:
        peer = self.peers.get(identity)
        if peer is not None and peer.key != key:
            # another CURVE key took this routing id over: it gets a new session, not the streams
            log.warning("zmq_routing_id_taken_over", peer=identity.hex(), old_key=peer.key, new_key=key)
            self._forget(identity)
            peer = None
        if peer is None:
            peer = self.peers[identity] = Peer(identity, self._new_session(), now, key)
            log.info("zmq_peer_connected", peer=identity.hex(), session=peer.session)
        peer.last_seen = now
        return peer

    def _new_session(self) -> int:
        session = self.next_session
        self.next_session = (self.next_session + 2) & ((1 << 64) - 1) or 1
        return session

    def _on_message(self, message: list[bytes], key: str | None) -> None:
        identity = message[0]
        peer = self._peer(identity, time.monotonic(), key)
        if len(message) != 2:
            log.warning("zmq_frame_malformed", peer=identity.hex(), error="multipart", parts=len(message))
            self._reply(
                peer, frame_error(f"cairn: a message must be exactly one frame, not {len(message) - 1}")
            )
            return
        try:
            kind, _, records = unpack(message[1])
        except MalformedFrame as e:
            log.warning("zmq_frame_malformed", peer=identity.hex(), error=str(e))
            self._reply(peer, frame_error(f"cairn: malformed frame: {e}"))
            return
        if kind != Kind.REQUEST and kind != Kind.TOKEN_REQUEST:
            log.warning("zmq_frame_malformed", peer=identity.hex(), error="kind", kind=kind)
            self._reply(peer, frame_error(f"cairn: unknown frame kind {kind}"))
            return
        if not records:
            peer.wants_reply = True  # a heartbeat
            self._mark(peer)
        for rid, method, body in records:
            token = None
            if kind == Kind.TOKEN_REQUEST:
                try:
                    raw, body = decode_with_token(body)
                    token = request_token(raw, None)  # a client's token never names a certificate
                except MalformedFrame as e:
                    self._reply(
                        peer, (rid, errors.Code.INVALID_ARGUMENT, f"cairn: malformed frame: {e}".encode())
                    )
                    continue
            if method in UNARY_METHODS:
                self._call(peer, rid, method, body, token)
            elif method == Method.WATCH or method == Method.WATCH_CLOSE:
                self._stream(peer, rid, method, body, token)
            else:
                log.warning("zmq_unknown_method", peer=identity.hex(), method=method)
                self._reply(peer, (rid, errors.Code.UNIMPLEMENTED, f"unknown method {method}".encode()))

    def _call(self, peer: Peer, rid: int, method: int, body: bytes, token: str | None) -> None:
        if peer.in_flight >= self.max_in_flight:
            self._reply(peer, error_record(rid, errors.TOO_MANY_REQUESTS))
            return
        assert self.client is not None
        peer.in_flight += 1
        future = self.client.submit(method, body, token)
        future.add_done_callback(lambda f: self._answered(peer, rid, f))

    def _answered(self, peer: Peer, rid: int, future: asyncio.Future[bytes]) -> None:
        peer.in_flight -= 1
        if future.cancelled():
            return
        error = future.exception()  # retrieved even when nobody is left to tell
        if self.peers.get(peer.identity) is not peer:
            return
        if error is None:
            self._reply(peer, (rid, 0, future.result()))
        elif isinstance(error, errors.EtcdError):
            self._reply(peer, error_record(rid, error))
        else:
            self._reply(peer, error_record(rid, errors.EtcdError(errors.Code.INTERNAL, str(error))))

    # -- watch streams -------------------------------------------------------------------------------
    def _stream(self, peer: Peer, sid: int, method: int, body: bytes, token: str | None) -> None:
        """Watch stream records; a stream runs with the token of the record that opened it."""
        stream = peer.streams.get(sid)
        if method == Method.WATCH_CLOSE:
            if stream is not None:
                self._close_stream(peer, sid)
            return
        try:
            rpc_pb2.WatchRequest.FromString(body)
        except DecodeError:
            self._reply(peer, (sid, errors.Code.INVALID_ARGUMENT, b"cairn: malformed WatchRequest"))
            return
        if stream is None:
            if len(peer.streams) >= self.max_streams:
                self._reply(peer, error_record(sid, errors.TOO_MANY_REQUESTS))
                return
            assert self.client is not None
            stream = peer.streams[sid] = self.client.open_stream(token)
            peer.pumps[sid] = asyncio.create_task(self._pump(peer, sid, stream))
        stream.send(body)

    async def _pump(self, peer: Peer, sid: int, stream: Stream) -> None:
        """Move one stream's responses to its peer, no faster than the peer takes them: while the
        peer's backlog is full this stops pulling, the stream fills and tells the watch hub."""
        while True:
            try:
                response = await stream.get()
            except errors.EtcdError as e:
                if e.message == CORE_LOST.message:  # the core restarted and lost every stream it had
                    self._renew_session(peer)
                else:  # the core refused this stream (a learner's)
                    peer.streams.pop(sid, None)
                    peer.pumps.pop(sid, None)
                    self._reply(peer, error_record(sid, e))
                return
            if not peer.writable.is_set():
                await peer.writable.wait()
            peer.pushes.append((sid, 0, response))
            self._mark(peer)

    def _renew_session(self, peer: Peer) -> None:
        """Drop the peer's streams and give it a new session number: that is how a native client
        learns its watches are gone, and it re-creates each one from its last revision."""
        for sid in list(peer.streams):
            self._close_stream(peer, sid)
        peer.session = self._new_session()
        peer.wants_reply = True  # tell it now, even with nothing else to send
        self._mark(peer)
        log.info("zmq_peer_session_renewed", peer=peer.identity.hex(), session=peer.session)

    def _close_stream(self, peer: Peer, sid: int) -> None:
        peer.streams.pop(sid).close()
        peer.pumps.pop(sid).cancel()

    # -- sending -------------------------------------------------------------------------------------
    def _reply(self, peer: Peer, record: Record) -> None:
        peer.replies.append(record)
        self._mark(peer)

    def _mark(self, peer: Peer) -> None:
        self.dirty.add(peer.identity)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One RESULT and one PUSH frame per peer per turn, however many records they carry."""
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, set()
        for identity in dirty:
            peer = self.peers.get(identity)
            if peer is None:
                continue
            if peer.replies or peer.wants_reply:
                peer.backlog.append(pack(Kind.RESULT, peer.replies, peer.session))
                peer.replies = []
                peer.wants_reply = False
            if peer.pushes:
                peer.backlog.append(pack(Kind.PUSH, peer.pushes, peer.session))
                peer.pushes = []
            self._send_backlog(peer)

    def _send_backlog(self, peer: Peer) -> None:
        assert self.sock is not None
        if peer.retry is not None:  # blocked: the scheduled retry will send, in order
            return
        try:
            while peer.backlog:
                self.sock.send_multipart([peer.identity, peer.backlog[0]], zmq.NOBLOCK, copy=False)
                peer.backlog.popleft()
                peer.retry_delay = SEND_RETRY / 2
            peer.writable.set()
        except zmq.Again:  # the peer does not read fast enough: try again soon
            if len(peer.backlog) >= BACKLOG_FRAMES:
                peer.writable.clear()
            peer.retry_delay = min(peer.retry_delay * 2, MAX_SEND_RETRY)
            peer.retry = self.loop.call_later(peer.retry_delay, self._retry, peer)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the peer is not connected (ROUTER_MANDATORY)
            log.info("zmq_peer_unreachable", peer=peer.identity.hex(), error=str(e))
            self._forget(peer.identity)
        finally:
            # any operation on the socket may consume the FD's edge for input that is waiting
            if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self.loop.call_soon(self._receive)

    def _retry(self, peer: Peer) -> None:
        peer.retry = None
        if self.peers.get(peer.identity) is peer:
            self._send_backlog(peer)

    # -- peers that went away ------------------------------------------------------------------------
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for identity in [i for i, p in self.peers.items() if now - p.last_seen > self.peer_timeout]:
                log.info("zmq_peer_gone", peer=identity.hex())
                self._forget(identity)

    def _forget(self, identity: bytes) -> None:
        peer = self.peers.pop(identity)
        for sid in list(peer.streams):
            self._close_stream(peer, sid)
        peer.backlog.clear()
        peer.writable.set()
        if peer.retry is not None:
            peer.retry.cancel()
