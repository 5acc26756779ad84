"""Raft's peer links: ZeroMQ over tcp between the raft actors of a cluster's members.

Each member binds a ROUTER on its ``listen-peer-urls`` and keeps one DEALER per peer, connected
to the peer's advertised URL. Sends never block: raft tolerates lost messages (it retries), so a
peer that is down or slow loses messages instead of stalling the loop (``ZMQ_IMMEDIATE`` keeps
nothing queued for a peer that is not connected; the high-water mark bounds the rest).

Two kinds of peer frames travel here: raft messages (:mod:`actors.raft.codec`) and proposals a
follower forwards to the leader (the envelope of :mod:`actors.protocol`, behind its own magic).
The lease actors use the link too (a follower's keep-alives to the leader's lease clock, and its
answers): the same envelope behind LEASE_MAGIC, handed to and from the lease actor unopened.
"""

from __future__ import annotations

import os
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
LEASE_MAGIC = b"CRNL"  # + sender id:u64 + pack(Kind.LEASE_FORWARD or LEASE_REPLY, records, aux=cluster id)
LEASE_KINDS = frozenset({Kind.LEASE_FORWARD, Kind.LEASE_REPLY})
PEER_HWM = 10000
FAULT_FILE_ENV = "CAIRN_FAULT_FILE"  # tests only: a file naming peers to cut this member off from


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
        if sock is None or peer in self.cut:
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
        sender = self.member_id.to_bytes(8, "big")
        self._send(leader, FORWARD_MAGIC + sender + pack(Kind.PROPOSE, proposals, aux=self.cluster_id))
        return True

    def send_lease(self, peer: int, kind: int, records: list[Record]) -> None:
        """A frame for ``peer``'s lease actor; lost if the link is down (the lease actor resends)."""
        sender = self.member_id.to_bytes(8, "big")
        self._send(peer, LEASE_MAGIC + sender + pack(kind, records, aux=self.cluster_id))

    def receive(
        self, messages: list[list[bytes]]
    ) -> tuple[list[Message], list[Record], list[tuple[int, int, list[Record]]]]:
        """Decode what arrived: raft messages for the core, proposals forwarded by followers, and
        ``(sender, kind, records)`` for the lease actor."""
        raft: list[Message] = []
        forwarded: list[Record] = []
        lease: list[tuple[int, int, list[Record]]] = []
        for parts in messages:
            frame = parts[-1]
            try:
                if frame.startswith(LEASE_MAGIC):
                    start = len(LEASE_MAGIC) + 8
                    sender = int.from_bytes(frame[len(LEASE_MAGIC) : start], "big")
                    kind, cluster, records = unpack(frame[start:])
                    if kind not in LEASE_KINDS or cluster != self.cluster_id:
                        raise MalformedFrame("lease frame of another kind or cluster")
                    if sender not in self.cut:
                        lease.append((sender, kind, records))
                elif frame.startswith(FORWARD_MAGIC):
                    start = len(FORWARD_MAGIC) + 8
                    sender = int.from_bytes(frame[len(FORWARD_MAGIC) : start], "big")
                    kind, cluster, records = unpack(frame[start:])
                    if kind != Kind.PROPOSE or cluster != self.cluster_id:
                        raise MalformedFrame("forwarded proposals from another cluster")
                    if sender not in self.cut:
                        forwarded.extend(records)
                else:
                    raft.extend(
                        m
                        for m in codec.decode(self.cluster_id, frame)
                        if m.to == self.member_id and m.frm not in self.cut
                    )
            except MalformedFrame as e:
                log.warning("peer_frame_dropped", error=str(e), size=len(frame))
        return raft, forwarded, lease

    def close(self) -> None:
        self.inbound.close(linger=0)
        for sock in self.outbound.values():
            sock.close(linger=0)
