"""Raft's peer links: ZeroMQ over tcp between the raft actors of a cluster's members.

Each member binds a ROUTER on its ``listen-peer-urls`` and keeps one DEALER per peer, connected
to the peer's advertised URL. Sends never block: raft tolerates lost messages (it retries), so a
peer that is down or slow loses messages instead of stalling the loop (``ZMQ_IMMEDIATE`` keeps
nothing queued for a peer that is not connected; the high-water mark bounds the rest).

Two kinds of peer frames travel here: raft messages (:mod:`actors.raft.codec`) and proposals a
follower forwards to the leader (the envelope of :mod:`actors.protocol`, behind its own magic).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from urllib.parse import urlsplit

import structlog
import zmq

from actors.protocol import Kind, MalformedFrame, Record, pack, unpack
from actors.raft import codec
from actors.raft.core import Message

log = structlog.get_logger()

FORWARD_MAGIC = b"CRNF"
PEER_HWM = 10000


def zmq_url(url: str) -> str:
    """``http://host:port`` (etcd's peer URL form) as the tcp endpoint ZeroMQ binds or connects."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"peer URL {url!r} has no host:port")
    return f"tcp://{parts.hostname}:{parts.port}"


class PeerTransport:
    def __init__(
        self,
        ctx: zmq.Context,
        cluster_id: int,
        member_id: int,
        listen_urls: Sequence[str],
        peers: dict[int, Sequence[str]],
    ) -> None:
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.inbound = ctx.socket(zmq.ROUTER)
        self.inbound.setsockopt(zmq.LINGER, 0)
        self.inbound.setsockopt(zmq.RCVHWM, PEER_HWM)
        for url in listen_urls:
            self.inbound.bind(zmq_url(url))
        self.ctx = ctx
        self.outbound: dict[int, zmq.Socket] = {}
        for peer, urls in peers.items():
            if peer != member_id and urls:
                self.connect(peer, urls[0])
        self.dropped = 0

    def connect(self, peer: int, url: str) -> None:
        old = self.outbound.pop(peer, None)
        if old is not None:
            old.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, PEER_HWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(zmq_url(url))
        self.outbound[peer] = sock

    def disconnect(self, peer: int) -> None:
        sock = self.outbound.pop(peer, None)
        if sock is not None:
            sock.close(linger=0)

    def _send(self, peer: int, frame: bytes) -> None:
        sock = self.outbound.get(peer)
        if sock is None:
            self.dropped += 1
            return
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
        self._send(leader, FORWARD_MAGIC + pack(Kind.PROPOSE, proposals, aux=self.cluster_id))
        return True

    def receive(self, messages: list[list[bytes]]) -> tuple[list[Message], list[Record]]:
        """Decode what arrived: raft messages for the core, proposals forwarded by followers."""
        raft: list[Message] = []
        forwarded: list[Record] = []
        for parts in messages:
            frame = parts[-1]
            try:
                if frame.startswith(FORWARD_MAGIC):
                    kind, cluster, records = unpack(frame[len(FORWARD_MAGIC) :])
                    if kind != Kind.PROPOSE or cluster != self.cluster_id:
                        raise MalformedFrame("forwarded proposals from another cluster")
                    forwarded.extend(records)
                else:
                    raft.extend(m for m in codec.decode(self.cluster_id, frame) if m.to == self.member_id)
            except MalformedFrame as e:
                log.warning("peer_frame_dropped", error=str(e), size=len(frame))
        return raft, forwarded

    def close(self) -> None:
        self.inbound.close(linger=0)
        for sock in self.outbound.values():
            sock.close(linger=0)
