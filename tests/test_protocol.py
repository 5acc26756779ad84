"""The frame envelope: round trips with arbitrary bytes, and refusal of truncated or foreign frames."""

from __future__ import annotations

import random

import pytest

from actors.protocol import Kind, MalformedFrame, Method, decode_proposal, encode_proposal, pack, unpack


def test_round_trip_many_records_with_arbitrary_bytes() -> None:
    records = [(1, Method.PUT, b"\x00\xff\xfe"), (2**64 - 1, Method.RANGE, b""), (7, 255, bytes(range(256)))]
    kind, aux, got = unpack(pack(Kind.REQUEST, records, aux=42))
    assert (kind, aux, got) == (Kind.REQUEST, 42, records)


def test_empty_frame_has_no_records() -> None:
    assert unpack(pack(Kind.RESULT, [])) == (Kind.RESULT, 0, [])


@pytest.mark.parametrize("seed", range(200))
def test_every_truncation_is_refused_or_shorter(seed: int) -> None:
    rng = random.Random(seed)
    records = [(rng.getrandbits(64), rng.randrange(256), rng.randbytes(rng.randrange(40))) for _ in range(4)]
    frame = pack(Kind.PROPOSE, records)
    cut = rng.randrange(len(frame))
    try:
        _, _, got = unpack(frame[:cut])
    except MalformedFrame:
        return
    assert got == records[: len(got)], f"seed {seed}: a truncated frame decoded into different records"


def test_garbage_is_refused() -> None:
    with pytest.raises(MalformedFrame):
        unpack(b"\x01")
    with pytest.raises(MalformedFrame):
        unpack(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_proposal_round_trip() -> None:
    data = encode_proposal(0xABCD << 48 | 5, Method.TXN, b"\x00body")
    assert decode_proposal(data) == (0xABCD << 48 | 5, Method.TXN, b"\x00body")


def test_token_envelope_round_trip_and_bad_bytes() -> None:
    from actors.protocol import decode_with_token, encode_with_token

    assert decode_with_token(encode_with_token("tok.5", b"\x0a\x01k")) == ("tok.5", b"\x0a\x01k")
    assert decode_with_token(encode_with_token("x" * 70000, b"r")) == ("", b"r")  # unusable: empty
    for bad in (b"", b"\x05", b"\x05\x00ab"):
        with pytest.raises(MalformedFrame):
            decode_with_token(bad)
