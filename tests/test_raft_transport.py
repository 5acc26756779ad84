"""The peer transport's frame kinds: each decoded to its place, anything malformed or foreign dropped."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
import zmq
from servers import free_port

from actors.protocol import Kind, pack
from actors.raft.transport import (
    FORWARD_MAGIC,
    JOIN_MAGIC,
    REMOVED_MAGIC,
    RESULT_MAGIC,
    SNAP_ACK_MAGIC,
    SNAP_CHUNK_MAGIC,
    PeerTransport,
)

CLUSTER, ME, PEER = 0xC0FFEE, 7, 9


@pytest.fixture
def transport() -> Iterator[PeerTransport]:
    ctx = zmq.Context()
    t = PeerTransport(ctx, CLUSTER, ME, [f"http://127.0.0.1:{free_port()}"], {})
    yield t
    t.close()
    ctx.term()


def test_each_kind_lands_in_its_place(transport: PeerTransport) -> None:
    sender = PEER.to_bytes(8, "big")
    got = transport.receive(
        [
            [b"r1", JOIN_MAGIC],
            [b"r2", REMOVED_MAGIC + struct.pack("<QQ", CLUSTER, ME)],
            [b"r3", RESULT_MAGIC + pack(Kind.RESULT, [(5, 9, b"no")], aux=CLUSTER)],
            [b"r4", FORWARD_MAGIC + sender + pack(Kind.PROPOSE, [(6, 2, b"put")], aux=CLUSTER)],
            [b"r5", SNAP_CHUNK_MAGIC + sender + b"chunk"],
            [b"r6", SNAP_ACK_MAGIC + sender + b"ack"],
        ]
    )
    assert got.joins == [b"r1"] and got.removed
    assert got.results == [(5, 9, b"no")] and got.forwarded == [(PEER, [(6, 2, b"put")])]
    assert got.snapshot_chunks == [(PEER, b"chunk")] and got.snapshot_acks == [(PEER, b"ack")]


def test_malformed_and_foreign_frames_are_dropped(transport: PeerTransport) -> None:
    got = transport.receive(
        [
            [b"r", REMOVED_MAGIC + b"\x01"],  # truncated
            [b"r", REMOVED_MAGIC + struct.pack("<QQ", CLUSTER, ME + 1)],  # about someone else
            [b"r", REMOVED_MAGIC + struct.pack("<QQ", CLUSTER + 1, ME)],  # another cluster
            [b"r", RESULT_MAGIC + pack(Kind.RESULT, [(5, 9, b"no")], aux=CLUSTER + 1)],
            [b"r", RESULT_MAGIC + b"\xff"],
            [b"r", FORWARD_MAGIC + b"\x00" * 8 + b"garbage"],
            [b"r", b"GET / HTTP/1.1\r\n\r\n"],
        ]
    )
    assert not got.removed and not got.results and not got.forwarded and not got.raft
