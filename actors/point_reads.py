"""``Method.GET_MANY``: the current values of many keys, read together as ONE linearizable read.

A pipelined Redis read load is hundreds of point GETs per event-loop turn. As a read-only Txn of
ranges each GET paid for protobuf messages at both ends, Txn validation, the quota's look at the
Txn, branch selection and a RangeResponse; here a request is just the keys and an answer just the
values, in flat layouts that one ``struct`` call splits. The read is served like every
linearizable read (after a ReadIndex, at one revision), and each key gets its own answer: a
value, "no such key", or the error etcd would give a Range of that key alone (an empty key, a key
the user may not read), so one bad key never fails the others.

Request::   count:u32  length:u32 * count  key bytes, one after the other
Response::  revision:u64  count:u32  length:i32 * count  data

In the response a length >= 0 is a value of that many bytes, ``MISSING`` (-1) a key that does not
exist, and ``-(2 + n)`` an error: ``n`` bytes of data holding the gRPC code (u8) and etcd's text.
All integers little-endian. Pure functions, no I/O: both the core and frontends use them.
"""

from __future__ import annotations

import struct

from actors import errors
from actors.errors import EtcdError

MAX_KEYS = 4096  # keys in one request: bounds the work of one read in the core's loop
MISSING = -1
COUNT = struct.Struct("<I")
RESPONSE_HEAD = struct.Struct("<QI")

Result = bytes | None | EtcdError  # a value, a key that does not exist, or that key's error


def encode_request(keys: list[bytes]) -> bytes:
    n = len(keys)
    return struct.pack(f"<I{n}I", n, *map(len, keys)) + b"".join(keys)


def _malformed(why: str) -> EtcdError:
    return EtcdError(errors.Code.INVALID_ARGUMENT, f"cairn: malformed GET_MANY request: {why}")


def check_request(body: bytes) -> tuple[int, ...]:
    """The key lengths of a request; raise etcd-style INVALID_ARGUMENT on bytes that do not fit."""
    if len(body) < COUNT.size:
        raise _malformed("shorter than its count")
    (n,) = COUNT.unpack_from(body, 0)
    if n > MAX_KEYS:
        raise _malformed(f"{n} keys, more than {MAX_KEYS}")
    pos = COUNT.size + 4 * n
    if len(body) < pos:
        raise _malformed("truncated key lengths")
    lengths = struct.unpack_from(f"<{n}I", body, COUNT.size)
    if pos + sum(lengths) != len(body):
        raise _malformed("key lengths do not add up to the body")
    return lengths


def decode_request(body: bytes) -> list[bytes]:
    """The keys of a request (see :func:`check_request` for what it refuses)."""
    lengths = check_request(body)
    pos = COUNT.size + 4 * len(lengths)
    keys = []
    for length in lengths:
        keys.append(body[pos : pos + length])
        pos += length
    return keys


def encode_response(revision: int, results: list[Result]) -> bytes:
    lengths: list[int] = []
    data: list[bytes] = []
    for result in results:
        if result is None:
            lengths.append(MISSING)
        elif type(result) is bytes:
            lengths.append(len(result))
            data.append(result)
        else:
            record = bytes((result.code,)) + result.message.encode()  # type: ignore[union-attr]
            lengths.append(-2 - len(record))
            data.append(record)
    n = len(lengths)
    return RESPONSE_HEAD.pack(revision, n) + struct.pack(f"<{n}i", *lengths) + b"".join(data)


def decode_response(body: bytes) -> tuple[int, list[Result]]:
    """``(revision, one result per key)``; raise ValueError on bytes that do not fit the layout."""
    revision, n = RESPONSE_HEAD.unpack_from(body, 0)
    pos = RESPONSE_HEAD.size + 4 * n
    results: list[Result] = []
    append = results.append
    for length in struct.unpack_from(f"<{n}i", body, RESPONSE_HEAD.size):
        if length >= 0:
            append(body[pos : pos + length])
            pos += length
        elif length == MISSING:
            append(None)
        else:
            end = pos - 2 - length
            append(EtcdError(errors.Code(body[pos]), body[pos + 1 : end].decode()))
            pos = end
    if pos != len(body):
        raise ValueError("GET_MANY response: lengths do not add up to the body")
    return revision, results
