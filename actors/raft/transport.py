"""Raft's peer links: ZeroMQ over tcp between the raft actors of a cluster's members.

Each member binds a ROUTER on its ``listen-peer-urls`` and keeps one DEALER per peer, connected
to the peer's advertised URL. Sends never block: raft tolerates lost messages (it retries), so a
peer that is down or slow loses messages instead of stalling the loop (``ZMQ_IMMEDIATE`` keeps
nothing queued for a peer that is not connected; the high-water mark bounds the rest).

Peer frames, each kind behind its own magic: raft messages (:mod:`actors.raft.codec`);
proposals a follower forwards to the leader (the envelope of :mod:`actors.protocol`), and the
errors the leader answers for those it refuses before proposing (membership changes); the lease
actors' frames (a follower's keep-alives to the leader's lease clock, and the answers, handed to
and from the lease actor unopened); a new member's request for the cluster it joins (answered on
the same connection); the notice a member sends to a member that was removed; snapshot chunks and
their acknowledgements.
"""

from __future__ import annotations

import os
import struct
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import structlog
import zmq

from actors.curve import ZapHandler, secure_client, secure_server
from actors.protocol import Kind, MalformedFrame, Record, pack, unpack
from actors.raft import codec
from actors.raft.core import Message
from actors.raft.curve import ZAP_DOMAIN, CurveSettings

log = structlog.get_logger()

FORWARD_MAGIC = b"CRNF"
RESULT_MAGIC = b"CRNR"  # + pack(Kind.RESULT, records, aux=cluster id): answers to forwarded proposals
JOIN_MAGIC = b"CRNJ"  # a joining member asks; the answer is JOIN_MAGIC + MemberListResponse
REMOVED_MAGIC = b"CRNX"  # + cluster id:u64 + member id:u64: "you were removed from this cluster"
SNAP_CHUNK_MAGIC = b"CRNS"  # + actors.raft.snapsend chunk
SNAP_ACK_MAGIC = b"CRNA"  # + actors.raft.snapsend acknowledgement
_IDS = struct.Struct("<QQ")
LEASE_MAGIC = b"CRNL"  # + sender id:u64 + pack(Kind.LEASE_FORWARD or LEASE_REPLY, records, aux=cluster id)
LEASE_KINDS = frozenset({Kind.LEASE_FORWARD, Kind.LEASE_REPLY})
PEER_HWM = 10000
RELINK_AFTER = 2.0  # seconds of sending to a CURVE peer and hearing nothing before its link is rebuilt
FAULT_FILE_ENV = "CAIRN_FAULT_FILE"  # tests only: a file naming peers to cut this member off from


def zmq_url(url: str) -> str:
    """``http://host:port`` (etcd's peer URL form) as the tcp endpoint ZeroMQ binds or connects."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"peer URL {url!r} has no host:port")
    return f"tcp://{parts.hostname}:{parts.port}"


@dataclass(slots=True)
class Inbound:
    """What one batch of peer frames brought, by kind."""

    raft: list[Message] = field(default_factory=list)
    forwarded: list[tuple[int, list[Record]]] = field(default_factory=list)  # (sender, proposals)
    results: list[Record] = field(default_factory=list)
    joins: list[bytes] = field(default_factory=list)  # routing ids of joining members asking
    removed: bool = False  # a member told us we were removed
    snapshot_chunks: list[tuple[int, bytes]] = field(default_factory=list)  # (sender, chunk)
    snapshot_acks: list[tuple[int, bytes]] = field(default_factory=list)  # (sender, ack)
    lease: list[tuple[int, int, list[Record]]] = field(default_factory=list)  # (sender, kind, records)


class PeerTransport:
    def __init__(
        self,
        ctx: zmq.Context,
        cluster_id: int,
        member_id: int,
        listen_urls: Sequence[str],
        peers: dict[int, Sequence[str]],
        curve: CurveSettings | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.curve = curve
        self.zap: ZapHandler | None = None
        self.keys: dict[int, bytes] = {}  # member id -> CURVE public key: who may connect, whom we dial
        if curve is not None:
            # a context of their own: the ZAP handler then guards the peer sockets and nothing else
            ctx = zmq.Context()
            self.keys = dict(curve.peers)
            self.zap = ZapHandler(ctx, ZAP_DOMAIN, set(self.keys.values()), "peer_refused")
        self.inbound = ctx.socket(zmq.ROUTER)
        self.inbound.setsockopt(zmq.LINGER, 0)
        self.inbound.setsockopt(zmq.RCVHWM, PEER_HWM)
        if curve is not None:
            secure_server(self.inbound, ZAP_DOMAIN, curve.public, curve.secret)
        for url in listen_urls:
            self.inbound.bind(zmq_url(url))
        self.ctx = ctx
        self.outbound: dict[int, zmq.Socket] = {}
        self.retired: dict[int, zmq.Socket] = {}  # links to removed members
        self.urls: dict[int, str] = {}
        # monotonic times per peer, to find CURVE links libzmq gave up on (relink_silent)
        self.sent: dict[int, float] = {}
        self.heard: dict[int, float] = {}
        self.linked: dict[int, float] = {}
        for peer, urls in peers.items():
            if peer != member_id and urls:
                self.connect(peer, urls[0])
        self.dropped = 0
        # Fault injection for tests (never set in production): peers listed (hex ids, one per
        # line) in this file are unreachable in both directions, which makes network partitions.
        self.fault_file = os.environ.get(FAULT_FILE_ENV)
        self.fault_mtime = 0.0
        self.cut: frozenset[int] = frozenset()

    def refresh_faults(self) -> None:
        """Re-read the fault file if it changed (called on every raft tick, so partitions apply fast)."""
        if not self.fault_file:
            return
        try:
            mtime = os.stat(self.fault_file).st_mtime
            if mtime == self.fault_mtime:
                return
            with open(self.fault_file) as f:
                cut = frozenset(int(line, 16) for line in f.read().split())
        except (OSError, ValueError):
            cut, mtime = frozenset(), 0.0
        if cut != self.cut:
            log.warning("peer_faults_injected", cut=sorted(f"{p:x}" for p in cut))
        self.cut, self.fault_mtime = cut, mtime

    def admit(self, keys: dict[int, bytes]) -> None:
        """The members' CURVE keys changed (a member added or removed): admit exactly these."""
        if self.zap is not None:
            self.keys = keys
            self.zap.allowed = set(keys.values())

    def connect(self, peer: int, url: str) -> None:
        old = self.outbound.pop(peer, None)
        if old is not None:
            old.close(linger=0)
        server_key = self.keys.get(peer)
        if self.curve is not None and server_key is None:
            log.error("peer_curve_key_unknown", peer=f"{peer:x}", url=url)
            return  # no key to authenticate it by: no link (member add --curve-public-key)
        self.urls[peer] = url
        self.linked[peer] = time.monotonic()
        sock = self.ctx.socket(zmq.DEALER)
        if self.curve is not None and server_key is not None:
            secure_client(sock, server_key, self.curve.public, self.curve.secret)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, PEER_HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(zmq_url(url))
        self.outbound[peer] = sock

    def relink_silent(self, now: float) -> None:
        """Rebuild the link to a CURVE peer we keep sending to without hearing back.

        libzmq does not retry a connection whose CURVE handshake failed (an impostor held the
        peer's address, or the peer had another key); when the real member returns, only a new
        socket reaches it. Plain tcp links reconnect by themselves.
        """
        if self.curve is None:
            return
        for peer, url in list(self.urls.items()):
            if peer not in self.outbound:
                continue  # retired
            quiet_since = max(self.heard.get(peer, 0.0), self.linked.get(peer, 0.0))
            if self.sent.get(peer, 0.0) > quiet_since and now - quiet_since > RELINK_AFTER:
                log.debug("peer_relinked", peer=f"{peer:x}", url=url)
                self.connect(peer, url)

    def retire(self, peer: int) -> None:
        """A member was removed: no more raft traffic, but keep its link to tell it so if it calls."""
        sock = self.outbound.pop(peer, None)
        if sock is not None:
            old = self.retired.pop(peer, None)
            if old is not None:
                old.close(linger=0)
            self.retired[peer] = sock

    def _send(self, peer: int, frame: bytes) -> None:
        sock = self.outbound.get(peer)
        if sock is None or peer in self.cut:
            self.dropped += 1
            return
        if self.curve is not None:
            self.sent[peer] = time.monotonic()
        try:
            sock.send(frame, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1

    def send(self, messages: list[Message]) -> None:
        """One frame per peer for all of its messages of this turn."""
        by_peer: dict[int, list[Message]] = defaultdict(list)
        for m in messages:
            by_peer[m.to].append(m)
        for peer, batch in by_peer.items():
            self._send(peer, codec.encode(self.cluster_id, batch))

    def forward(self, leader: int, proposals: list[Record]) -> bool:
        """Hand proposals to the leader; False when there is no link to it."""
        if leader not in self.outbound:
            return False
        sender = self.member_id.to_bytes(8, "big")
        self._send(leader, FORWARD_MAGIC + sender + pack(Kind.PROPOSE, proposals, aux=self.cluster_id))
        return True

    def send_lease(self, peer: int, kind: int, records: list[Record]) -> None:
        """A frame for ``peer``'s lease actor; lost if the link is down (the lease actor resends)."""
        sender = self.member_id.to_bytes(8, "big")
        self._send(peer, LEASE_MAGIC + sender + pack(kind, records, aux=self.cluster_id))

    def answer_failed(self, origin: int, results: list[Record]) -> None:
        """Errors for proposals ``origin`` forwarded and this leader refused before proposing."""
        self._send(origin, RESULT_MAGIC + pack(Kind.RESULT, results, aux=self.cluster_id))

    def answer_join(self, routing_id: bytes, answer: bytes) -> None:
        """Answer a joining member on the connection it asked on (it is in no one's table yet)."""
        try:
            self.inbound.send_multipart([routing_id, JOIN_MAGIC + answer], zmq.NOBLOCK)
        except zmq.ZMQError:
            self.dropped += 1

    def tell_removed(self, peer: int) -> None:
        """Tell a removed member (over its retired link) that it is out, so it stops."""
        sock = self.retired.get(peer)
        if sock is None:
            return
        try:
            sock.send(REMOVED_MAGIC + _IDS.pack(self.cluster_id, peer), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def send_raw(self, peer: int, magic: bytes, payload: bytes) -> bool:
        """A snapshot chunk or acknowledgement; False when the link is full or missing."""
        sock = self.outbound.get(peer)
        if sock is None or peer in self.cut:
            return False
        try:
            sock.send(magic + self.member_id.to_bytes(8, "big") + payload, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def receive(self, messages: list[list[bytes]]) -> Inbound:
        """Decode what arrived; anything malformed or from another cluster is logged and dropped."""
        got = Inbound()
        for parts in messages:
            frame = parts[-1]
            try:
                self._decode(parts[0], frame, got)
            except (MalformedFrame, struct.error) as e:
                log.warning("peer_frame_dropped", error=str(e), size=len(frame))
        if self.curve is not None:
            now = time.monotonic()
            for m in got.raft:
                self.heard[m.frm] = now
        return got

    def _decode(self, routing_id: bytes, frame: bytes, got: Inbound) -> None:
        magic = frame[:4]
        if magic in (FORWARD_MAGIC, LEASE_MAGIC, SNAP_CHUNK_MAGIC, SNAP_ACK_MAGIC):
            start = len(magic) + 8
            sender = int.from_bytes(frame[len(magic) : start], "big")
            if sender in self.cut:
                return
            if magic == LEASE_MAGIC:
                kind, cluster, records = unpack(frame[start:])
                if kind not in LEASE_KINDS or cluster != self.cluster_id:
                    raise MalformedFrame("lease frame of another kind or cluster")
                got.lease.append((sender, kind, records))
            elif magic == SNAP_CHUNK_MAGIC:
                got.snapshot_chunks.append((sender, frame[start:]))
            elif magic == SNAP_ACK_MAGIC:
                got.snapshot_acks.append((sender, frame[start:]))
            else:
                kind, cluster, records = unpack(frame[start:])
                if kind != Kind.PROPOSE or cluster != self.cluster_id:
                    raise MalformedFrame("forwarded proposals from another cluster")
                got.forwarded.append((sender, records))
        elif magic == RESULT_MAGIC:
            kind, cluster, records = unpack(frame[4:])
            if kind != Kind.RESULT or cluster != self.cluster_id:
                raise MalformedFrame("forwarded results from another cluster")
            got.results.extend(records)
        elif magic == JOIN_MAGIC:
            got.joins.append(routing_id)
        elif magic == REMOVED_MAGIC:
            cluster, member = _IDS.unpack_from(frame, 4)
            if cluster == self.cluster_id and member == self.member_id:
                got.removed = True
        else:
            me, cut = self.member_id, self.cut
            got.raft.extend(
                m for m in codec.decode(self.cluster_id, frame) if m.to == me and m.frm not in cut
            )

    def close(self) -> None:
        self.inbound.close(linger=0)
        for sock in (*self.outbound.values(), *self.retired.values()):
            sock.close(linger=0)
        if self.zap is not None:
            self.zap.close()
            self.ctx.term()
