"""Raft peer framing: round trips, and refusal of foreign, truncated or garbage frames."""

from __future__ import annotations

import random

import pytest

from actors.protocol import MalformedFrame
from actors.raft.codec import decode, encode
from actors.raft.core import Message, MsgType
from actors.raft.log import Entry

CLUSTER = 0xC0FFEE


def random_message(rng: random.Random) -> Message:
    entries = [
        Entry(rng.randrange(9), rng.randrange(1, 99), rng.randrange(3), rng.randbytes(rng.randrange(30)))
        for _ in range(rng.randrange(4))
    ]
    return Message(
        rng.choice(list(MsgType)),
        rng.getrandbits(64),
        rng.getrandbits(64),
        rng.getrandbits(40),
        rng.getrandbits(40),
        rng.getrandbits(40),
        entries,
        rng.getrandbits(40),
        rng.random() < 0.5,
        rng.getrandbits(40),
        rng.randbytes(rng.randrange(10)),
    )


@pytest.mark.parametrize("seed", range(50))
def test_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    messages = [random_message(rng) for _ in range(rng.randrange(5))]
    assert decode(CLUSTER, encode(CLUSTER, messages)) == messages, f"seed {seed}"


@pytest.mark.parametrize("seed", range(50))
def test_every_truncation_is_refused(seed: int) -> None:
    rng = random.Random(seed)
    frame = encode(CLUSTER, [random_message(rng) for _ in range(1 + rng.randrange(3))])
    with pytest.raises(MalformedFrame):
        decode(CLUSTER, frame[: rng.randrange(len(frame))])


def test_foreign_cluster_and_garbage_are_refused() -> None:
    frame = encode(CLUSTER, [])
    with pytest.raises(MalformedFrame, match="cluster"):
        decode(CLUSTER + 1, frame)
    with pytest.raises(MalformedFrame):
        decode(CLUSTER, b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(MalformedFrame, match="trailing"):
        decode(CLUSTER, frame + b"x")
