"""HPACK (plugins/grpc/hpack.py): RFC 7541 appendix C decoded byte for byte, round trips with and
without Huffman coding, dynamic table eviction, and malformed or oversized blocks refused with
HpackError (or the too-large flag), never another exception."""

from __future__ import annotations

import contextlib
import os
import random

import pytest

from plugins.grpc.hpack import Decoder, HpackError, encode, encode_integer, huffman_decode, huffman_encode


def dehex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def pairs(*items: str) -> list[tuple[bytes, bytes]]:
    return [(items[i].encode(), items[i + 1].encode()) for i in range(0, len(items), 2)]


REQUEST_1 = pairs(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "www.example.com")
REQUEST_2 = [*REQUEST_1, *pairs("cache-control", "no-cache")]
REQUEST_3 = pairs(
    ":method", "GET", ":scheme", "https", ":path", "/index.html", ":authority", "www.example.com",
    "custom-key", "custom-value",
)  # fmt: skip
RESPONSE_1 = pairs(
    ":status", "302", "cache-control", "private", "date", "Mon, 21 Oct 2013 20:13:21 GMT",
    "location", "https://www.example.com",
)  # fmt: skip
RESPONSE_2 = [(b":status", b"307"), *RESPONSE_1[1:]]
RESPONSE_3 = pairs(
    ":status", "200", "cache-control", "private", "date", "Mon, 21 Oct 2013 20:13:22 GMT",
    "location", "https://www.example.com", "content-encoding", "gzip",
    "set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
)  # fmt: skip

SERIES = {
    "C.3": (4096, [
        ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", REQUEST_1, 57),
        ("8286 84be 5808 6e6f 2d63 6163 6865", REQUEST_2, 110),
        ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65", REQUEST_3, 164),
    ]),
    "C.4": (4096, [
        ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", REQUEST_1, 57),
        ("8286 84be 5886 a8eb 1064 9cbf", REQUEST_2, 110),
        ("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", REQUEST_3, 164),
    ]),
    "C.5": (256, [
        ("""4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
            2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
            6c65 2e63 6f6d""", RESPONSE_1, 222),
        ("4803 3330 37c1 c0bf", RESPONSE_2, 222),
        ("""88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
            54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
            5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
            3d31""", RESPONSE_3, 215),
    ]),
    "C.6": (256, [
        ("""4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
            2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""", RESPONSE_1, 222),
        ("4883 640e ffc1 c0bf", RESPONSE_2, 222),
        ("""88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
            77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
            9587 3160 65c0 03ed 4ee5 b106 3d50 07""", RESPONSE_3, 215),
    ]),
}  # fmt: skip


@pytest.mark.parametrize("section", sorted(SERIES))
def test_rfc7541_appendix_c(section: str) -> None:
    table_size, steps = SERIES[section]
    decoder = Decoder(max_table_size=table_size)
    for block, headers, size in steps:
        assert decoder.decode(dehex(block)) == (headers, True)
        assert decoder.size == size  # the same evictions as the RFC's
    if section in ("C.5", "C.6"):  # after the third response only three entries are left
        assert decoder.entries == [RESPONSE_3[5], RESPONSE_3[4], RESPONSE_3[2]]


def test_huffman_round_trip_of_every_byte() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print("seed", seed)
    rng = random.Random(seed)
    assert huffman_decode(huffman_encode(bytes(range(256)))) == bytes(range(256))
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        assert huffman_decode(huffman_encode(data)) == data


def test_encoded_blocks_decode_to_what_was_encoded() -> None:
    headers = pairs(":status", "200", "content-type", "application/grpc", "grpc-status", "13",
                    "grpc-message", "x" * 300)  # fmt: skip
    for huffman in (False, True):
        assert Decoder().decode(encode(headers, huffman)) == (headers, True)


def test_integer_boundaries() -> None:
    decoder = Decoder()
    for value in (0, 14, 15, 16, 127, 128, 1337, 2**20):
        # a literal without indexing whose value is `value` bytes long
        block = b"\x00\x01a" + encode_integer(value, 7) + b"v" * value
        assert decoder.decode(block) == ([(b"a", b"v" * value)] if value < 60000 else [], value < 60000)


@pytest.mark.parametrize(
    "block",
    [
        "80",  # index 0
        "be",  # a dynamic index with an empty table
        "ff ff ff ff ff ff 0f",  # an integer over 2^32
        "ff",  # a truncated integer
        "00 05 61",  # a truncated name
        "00 81 ff",  # Huffman: EOS bits as the whole string (8 ones is over 7 bits of padding)
        "00 81 00",  # Huffman: padding that is not all ones
        "3f e2 1f",  # a table size update to 4097, over the advertised 4096
        "82 20",  # a table size update after a field
    ],
)
def test_malformed_blocks_are_hpack_errors(block: str) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(dehex(block))


def test_a_bomb_of_references_to_a_big_entry_is_bounded() -> None:
    """One 4 KB entry referenced 10,000 times: decoding drops the list once over the limit."""
    decoder = Decoder(max_header_list_size=64 * 1024)
    block = b"\x40\x01b" + encode_integer(4000, 7) + b"x" * 4000 + b"\xbe" * 10000
    headers, fits = decoder.decode(block)
    assert (headers, fits) == ([], False)
    assert decoder.decode(b"\xbe") == ([(b"b", b"x" * 4000)], True)  # the table is still in step


def test_table_size_update_evicts() -> None:
    decoder = Decoder()
    decoder.decode(b"\x40\x01a\x01b")
    assert decoder.size == 34
    decoder.decode(b"\x20")  # size 0: everything goes
    assert decoder.entries == [] and decoder.size == 0
    with pytest.raises(HpackError):
        decoder.decode(b"\xbe")


def test_random_bytes_never_raise_anything_but_hpack_error() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print("seed", seed)
    rng = random.Random(seed)
    for _ in range(3000):
        block = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        with contextlib.suppress(HpackError):
            Decoder().decode(block)
