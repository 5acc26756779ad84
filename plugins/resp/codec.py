"""RESP2/RESP3 without sockets: a request parser fed raw bytes, and a reply encoder.

The parser takes whatever one read brought (a whole pipeline, or half a command) and returns
every complete command in it, so the server handles a pipelined read as one batch. It accepts
Redis's two request forms: multibulk arrays (``*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n``, what
clients send) and inline commands (``PING\\r\\n``, what a person types into telnet). Input that is
not RESP raises :class:`ProtocolError` with Redis's own text; the server then answers it as an
error and closes the connection, exactly as Redis does, because the stream cannot be re-synced.

Replies are plain Python values (see :func:`encode`); the same value encodes as RESP2 or RESP3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INLINE_MAX = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE: longest inline command or length line
MULTIBULK_MAX = 1024 * 1024  # Redis refuses more arguments than this in one command


class ProtocolError(Exception):
    """Bytes that are not a RESP request; the text is what Redis answers (after ``-ERR ``).

    ``commands`` holds the complete commands that came before the bad bytes: they are answered.
    """

    commands: list[list[bytes]] = []


class ReplyError(Exception):
    """An error reply; ``text`` starts with its code (``ERR``, ``WRONGTYPE``, ``EXECABORT``...)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(slots=True, frozen=True)
class Status:
    """A simple string reply (``+OK``)."""

    text: str


@dataclass(slots=True, frozen=True)
class Push:
    """Out-of-band data (pub/sub messages): a push in RESP3, a plain array in RESP2."""

    items: list


class NullArray:
    """The null array (``*-1``, e.g. EXEC after a WATCH conflict); RESP3 has one null for all."""


OK = Status("OK")
NULL_ARRAY = NullArray()


class Parser:
    """Incremental request parser: :meth:`feed` bytes, get back the complete commands so far."""

    def __init__(self, max_bulk: int) -> None:
        self.max_bulk = max_bulk
        self.buffer = b""
        # the multibulk being read across feeds: arguments so far and how many are still due
        self.args: list[bytes] = []
        self.due = 0
        self.held = 0  # bytes of self.args

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Every complete command in the bytes received so far; raise :class:`ProtocolError`."""
        commands: list[list[bytes]] = []
        try:
            return self._parse(data, commands)
        except ProtocolError as e:
            e.commands = commands
            raise

    def _parse(self, data: bytes, commands: list[list[bytes]]) -> list[list[bytes]]:
        buf = self.buffer + data if self.buffer else data
        pos, end = 0, len(buf)
        args, due, held = self.args, self.due, self.held
        max_bulk = self.max_bulk
        while pos < end:
            if not due:
                # the commonest command whole in the buffer: a GET, taken in one step; anything
                # else, or a GET not all here yet, goes the general way below
                get = _GET(buf, pos)
                if get is not None:
                    start = get.end()
                    stop = start + int(get[2])
                    if stop + 2 <= end and stop - start <= max_bulk and buf[stop : stop + 2] == b"\r\n":
                        commands.append([get[1], buf[start:stop]])
                        pos = stop + 2
                        continue
                if buf[pos] != 42:  # not '*': an inline command
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if end - pos > INLINE_MAX:
                            raise ProtocolError("Protocol error: too big inline request")
                        break
                    line = buf[pos:nl].rstrip(b"\r")
                    pos = nl + 1
                    words = split_inline(line)
                    if words:
                        commands.append(words)
                    continue
                nl = _line_end(buf, pos, end, "mbulk count string")
                if nl < 0:
                    break
                count = _number(buf, pos + 1, nl)
                if count is None or count > MULTIBULK_MAX:
                    raise ProtocolError("Protocol error: invalid multibulk length")
                pos = nl + 2
                if count <= 0:
                    continue  # Redis ignores empty and null arrays
                due = count
                args, held = [], 0
            # one bulk argument of the multibulk in progress
            if pos >= end:
                break
            if buf[pos] != 36:  # '$'
                raise ProtocolError(f"Protocol error: expected '$', got '{chr(buf[pos])}'")
            nl = _line_end(buf, pos, end, "bulk count string")
            if nl < 0:
                break
            length = _number(buf, pos + 1, nl)
            if length is None or length < 0 or length > max_bulk:
                raise ProtocolError("Protocol error: invalid bulk length")
            start = nl + 2
            if end - start < length + 2:
                break  # the argument has not all arrived
            if buf[start + length : start + length + 2] != b"\r\n":
                raise ProtocolError("Protocol error: bulk argument does not end with CRLF")
            args.append(buf[start : start + length])
            held += length
            pos = start + length + 2
            due -= 1
            if not due:
                commands.append(args)
                args, held = [], 0
        self.buffer = buf[pos:]
        self.args, self.due, self.held = args, due, held
        return commands

    @property
    def pending_bytes(self) -> int:
        """Bytes held for a command not yet complete (the server bounds this)."""
        return len(self.buffer) + self.held


_GET = re.compile(rb"\*2\r\n\$3\r\n(GET|get|Get)\r\n\$([0-9]{1,20})\r\n").match


def _line_end(buf: bytes, pos: int, end: int, what: str) -> int:
    """Where the CRLF ending the length line at ``pos`` is; -1 while it has not arrived."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0 and end - pos > INLINE_MAX:
        raise ProtocolError(f"Protocol error: too big {what}")
    return nl


def _number(buf: bytes, start: int, end: int) -> int | None:
    """The decimal integer in ``buf[start:end]``, or None if it is not one (as Redis's string2ll)."""
    text = buf[start:end]
    if not text or len(text) > 20 or not (text.isdigit() or (text[0] == 45 and text[1:].isdigit())):
        return None
    return int(text)


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command into words as Redis's sdssplitargs: quotes and escapes allowed."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    words: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i : i + 1].isspace():
            i += 1
        if i >= n:
            return words
        word = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                break
            c = line[i]
            if quote and c == quote:  # a closing quote must end the word
                if i + 1 < n and not line[i + 1 : i + 2].isspace():
                    raise ProtocolError("Protocol error: unbalanced quotes in request")
                i += 1
                break
            if quote == 34:  # inside "...": C escapes
                if c == 92 and i + 3 < n and line[i + 1] == 120 and _is_hex(line[i + 2 : i + 4]):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    word.append(_ESCAPES.get(line[i], line[i]))
                else:
                    word.append(c)
            elif quote == 39:  # inside '...': only \' is an escape
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                word.append(line[i])
            elif line[i : i + 1].isspace():
                break
            elif c in (34, 39):
                quote = c
            else:
                word.append(c)
            i += 1
        words.append(bytes(word))


_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(chr(c) in "0123456789abcdefABCDEF" for c in pair)


def encode(value: object, resp3: bool) -> bytes:
    """One reply as RESP3 (``resp3``) or RESP2 bytes.

    bytes -> bulk string, :class:`Status` -> simple string, int -> integer, None -> null,
    list/tuple -> array, dict -> map (a flat array in RESP2), :class:`Push` -> push,
    :class:`ReplyError` -> error, :data:`NULL_ARRAY` -> null array, float -> double, bool -> boolean
    (an integer in RESP2).
    """
    out: list[bytes] = []
    _encode(value, resp3, out)
    return b"".join(out)


def bulk(value: bytes) -> bytes:
    """A bulk string reply, the commonest reply of all (GET), without :func:`encode`'s dispatch."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _encode(value: object, resp3: bool, out: list[bytes]) -> None:
    kind = type(value)
    if kind is bytes:
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))  # type: ignore[arg-type]
    elif kind is int:
        out.append(b":%d\r\n" % value)  # type: ignore[operator]
    elif value is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif kind is Status:
        out.append(b"+%s\r\n" % value.text.encode())  # type: ignore[attr-defined]
    elif kind is list or kind is tuple:
        out.append(b"*%d\r\n" % len(value))  # type: ignore[arg-type]
        for item in value:  # type: ignore[attr-defined]
            _encode(item, resp3, out)
    elif isinstance(value, ReplyError):
        text = value.text.replace("\r", " ").replace("\n", " ")
        out.append(b"-%s\r\n" % text.encode())
    elif kind is dict:
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(value) * (1 if resp3 else 2)))  # type: ignore[arg-type]
        for k, v in value.items():  # type: ignore[attr-defined]
            _encode(k, resp3, out)
            _encode(v, resp3, out)
    elif kind is Push:
        out.append((b">%d\r\n" if resp3 else b"*%d\r\n") % len(value.items))  # type: ignore[attr-defined]
        for item in value.items:  # type: ignore[attr-defined]
            _encode(item, resp3, out)
    elif value is NULL_ARRAY:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")
    elif kind is bool:
        out.append((b"#t\r\n" if value else b"#f\r\n") if resp3 else (b":1\r\n" if value else b":0\r\n"))
    elif kind is float:
        out.append(b",%r\r\n" % value if resp3 else bulk(repr(value).encode()))
    else:
        raise TypeError(f"no RESP encoding for {kind.__name__}")
