"""Redis glob patterns (KEYS, SCAN MATCH, PSUBSCRIBE) over byte keys, and the key range they can match.

Redis's stringmatchlen: ``*`` any run, ``?`` one byte, ``[abc]``, ``[^a-z]`` classes, ``\\x`` a
literal x. The literal prefix before the first wildcard bounds the keys a pattern can match, so
``KEYS /config/*`` reads the range ``[/config/, /config0)`` instead of the whole key space.
"""

from __future__ import annotations

import re
from functools import lru_cache

WILDCARDS = b"*?[\\"


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> re.Pattern[bytes]:
    """The pattern as an anchored bytes regex."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif c == b"[":
            j = pattern.find(b"]", i + 2 if pattern[i + 1 : i + 2] in (b"^", b"]") else i + 1)
            if j < 0:
                out.append(re.escape(pattern[i:]))  # Redis treats an unclosed class as running to the end
                break
            body = pattern[i + 1 : j]
            negate = body.startswith(b"^")
            if negate:
                body = body[1:]
            members = b"".join(
                b"\\" + body[k : k + 1] if body[k : k + 1] in b"\\]^[" else body[k : k + 1]
                for k in range(len(body))
            )
            out.append(b"[" + (b"^" if negate else b"") + members + b"]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out) + b"\\Z", re.DOTALL)


def matches(pattern: bytes, key: bytes) -> bool:
    return compile_glob(pattern).match(key) is not None


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match starts with."""
    cut = min((i for i in (pattern.find(w) for w in (b"*", b"?", b"[", b"\\")) if i >= 0), default=None)
    return pattern if cut is None else pattern[:cut]


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix" (``b"\\0"`` = to the end of the key space)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def key_range(pattern: bytes) -> tuple[bytes, bytes]:
    """(key, range_end) of the etcd range holding every key the pattern can match."""
    prefix = literal_prefix(pattern)
    if prefix == pattern:
        return pattern, b""  # no wildcard: one key
    return (prefix or b"\0"), prefix_end(prefix)
