"""The RESP parser and encoder without sockets, and Redis glob patterns: examples plus seeded fuzzing."""

from __future__ import annotations

import os
import random
import re

import pytest

from plugins.resp import codec
from plugins.resp.codec import (
    INLINE_MAX,
    NULL_ARRAY,
    OK,
    Parser,
    ProtocolError,
    Push,
    ReplyError,
    Status,
    encode,
    split_inline,
)
from plugins.resp.glob import key_range, matches

MAX_BULK = 1 << 20


def request(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def parse_all(data: bytes) -> list[list[bytes]]:
    return Parser(MAX_BULK).feed(data)


def test_multibulk_and_inline_commands() -> None:
    data = request(b"SET", b"k", b"v\r\nwith crlf") + b"PING\r\n" + request(b"GET", b"") + b"ECHO  hi \n"
    assert parse_all(data) == [[b"SET", b"k", b"v\r\nwith crlf"], [b"PING"], [b"GET", b""], [b"ECHO", b"hi"]]


def test_empty_and_null_arrays_and_blank_lines_are_ignored() -> None:
    assert parse_all(b"*0\r\n*-1\r\n\r\n" + request(b"PING")) == [[b"PING"]]


def test_every_split_point_gives_the_same_commands() -> None:
    data = request(b"SET", b"key", b"value") + request(b"GET", b"key") + b"PING\r\n"
    whole = parse_all(data)
    for cut in range(len(data) + 1):
        parser = Parser(MAX_BULK)
        assert parser.feed(data[:cut]) + parser.feed(data[cut:]) == whole, cut


def test_byte_by_byte() -> None:
    data = request(b"MSET", b"a", b"1", b"b", b"2") * 3
    parser = Parser(MAX_BULK)
    commands = [c for i in range(len(data)) for c in parser.feed(data[i : i + 1])]
    assert commands == [[b"MSET", b"a", b"1", b"b", b"2"]] * 3
    assert parser.pending_bytes == 0


def test_incomplete_command_is_held_not_refused() -> None:
    parser = Parser(MAX_BULK)
    assert parser.feed(b"*2\r\n$3\r\nGET\r\n$5\r\nab") == []
    assert parser.pending_bytes > 0
    assert parser.feed(b"cde\r\n") == [[b"GET", b"abcde"]]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"*abc\r\n", "Protocol error: invalid multibulk length"),
        (b"*99999999999\r\n", "Protocol error: invalid multibulk length"),
        (b"*1\r\n+GET\r\n", "Protocol error: expected '$', got '+'"),
        (b"*1\r\n$-5\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$2000000\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
        (b"*1\r\n$3\r\nGETXX", "Protocol error: bulk argument does not end with CRLF"),
        (b'SET "abc\r\n', "Protocol error: unbalanced quotes in request"),
        (b"x" * (INLINE_MAX + 1), "Protocol error: too big inline request"),
        (b"*" + b"1" * (INLINE_MAX + 1), "Protocol error: too big mbulk count string"),
        (b"*1\r\n$" + b"1" * (INLINE_MAX + 1), "Protocol error: too big bulk count string"),
    ],
)
def test_bad_input_gets_redis_protocol_errors(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError) as e:
        parse_all(data)
    assert str(e.value) == error


def test_inline_quoting_as_redis_cli_types_it() -> None:
    assert split_inline(b'SET "a b" \'c d\' "x\\ny" "\\x41"') == [b"SET", b"a b", b"c d", b"x\ny", b"A"]
    assert split_inline(b"  GET   k  ") == [b"GET", b"k"]


def test_encode_resp2_and_resp3() -> None:
    assert encode(b"v", False) == b"$1\r\nv\r\n"
    assert encode(None, False) == b"$-1\r\n"
    assert encode(None, True) == b"_\r\n"
    assert encode(OK, True) == b"+OK\r\n"
    assert encode(-5, False) == b":-5\r\n"
    assert encode(ReplyError("ERR bad\r\nthing"), False) == b"-ERR bad  thing\r\n"
    assert encode([b"a", 1, None], False) == b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n"
    assert encode({b"k": 1}, False) == b"*2\r\n$1\r\nk\r\n:1\r\n"
    assert encode({b"k": 1}, True) == b"%1\r\n$1\r\nk\r\n:1\r\n"
    assert encode(Push([b"message", b"c", b"m"]), True).startswith(b">3\r\n")
    assert encode(Push([b"message", b"c", b"m"]), False).startswith(b"*3\r\n")
    assert encode(NULL_ARRAY, False) == b"*-1\r\n"
    assert encode(NULL_ARRAY, True) == b"_\r\n"
    assert encode(True, True) == b"#t\r\n"
    assert encode(Status("QUEUED"), False) == b"+QUEUED\r\n"


def test_fuzz_round_trip_in_random_chunks() -> None:
    seed = int(os.environ.get("RESP_FUZZ_SEED", random.randrange(1 << 30)))
    print(f"RESP_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(200):
        commands = [
            [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 6))]
            for _ in range(rng.randrange(1, 20))
        ]
        data = b"".join(request(*c) for c in commands)
        parser = Parser(MAX_BULK)
        got, pos = [], 0
        while pos < len(data):
            step = rng.randrange(1, 64)
            got.extend(parser.feed(data[pos : pos + step]))
            pos += step
        assert got == commands, seed


def test_fuzz_garbage_only_ever_raises_protocol_error() -> None:
    seed = int(os.environ.get("RESP_FUZZ_SEED", random.randrange(1 << 30)))
    print(f"RESP_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    alphabet = b"*$:+-\r\n0123456789 \"'\\xGETS"
    for _ in range(2000):
        if rng.random() < 0.5:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))
        else:  # a valid request with one byte changed
            data = bytearray(request(b"SET", rng.randbytes(5), rng.randbytes(9)))
            data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        parser = Parser(MAX_BULK)
        try:
            for command in parser.feed(data):
                assert command and all(isinstance(a, bytes) for a in command)
        except ProtocolError:
            pass


def _outcome(data: bytes, rng: random.Random) -> tuple[list[list[bytes]], str | None, int]:
    """The commands, error and bytes held of ``data`` fed in random chunks."""
    parser, got = Parser(MAX_BULK), []
    pos = 0
    try:
        while pos < len(data):
            step = rng.randrange(1, 80)
            got.extend(parser.feed(data[pos : pos + step]))
            pos += step
    except ProtocolError as e:
        return got + e.commands, str(e), -1
    return got, None, parser.pending_bytes


def test_fuzz_pipelined_gets_parse_as_the_general_path_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-step GET path gives exactly what the general parser gives, bad bytes included."""
    seed = int(os.environ.get("RESP_FUZZ_SEED", random.randrange(1 << 30)))
    print(f"RESP_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    cases = []
    for _ in range(500):
        names = (b"GET", b"get", b"Get", b"gET")
        commands = (request(rng.choice(names), rng.randbytes(rng.randrange(0, 30))) for _ in range(8))
        data = bytearray(b"".join(commands))
        if rng.random() < 0.5:
            data[rng.randrange(len(data))] = rng.choice(b"*$\r\n0123456789-x")
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        cases.append((bytes(data), rng.randrange(1 << 30)))
    fast = [_outcome(data, random.Random(split)) for data, split in cases]
    monkeypatch.setattr(codec, "_GET", re.compile(b"(?!)").match)  # the general path only
    general = [_outcome(data, random.Random(split)) for data, split in cases]
    assert fast == general, seed


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        (b"/config/*", b"/config/a", True),
        (b"/config/*", b"/other/a", False),
        (b"h?llo", b"hello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"*", b"\x00\xff", True),
        (b"a.b", b"axb", False),
    ],
)
def test_glob(pattern: bytes, key: bytes, expected: bool) -> None:
    assert matches(pattern, key) is expected


def test_glob_key_range() -> None:
    assert key_range(b"/config/*") == (b"/config/", b"/config0")
    assert key_range(b"*") == (b"\0", b"\0")
    assert key_range(b"exact") == (b"exact", b"")
    assert key_range(b"a\xff*") == (b"a\xff", b"b")
