"""GET_MANY (actors/point_reads.py): its wire format, and MvccStore.values against a Range per key."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from actors import errors, point_reads
from actors.errors import EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Method
from actors.storage.backend import Backend
from actors.storage.mvcc import MvccStore

SEED = int(os.environ.get("POINT_READS_SEED", random.randrange(1 << 32)))


def _random_key(rng: random.Random) -> bytes:
    return rng.choice([b"", b"\r\n", bytes(range(256)), rng.randbytes(rng.randrange(0, 300))])


def test_request_round_trip() -> None:
    print(f"POINT_READS_SEED={SEED}")
    rng = random.Random(SEED)
    for _ in range(200):
        keys = [_random_key(rng) for _ in range(rng.randrange(0, 40))]
        assert point_reads.decode_request(point_reads.encode_request(keys)) == keys


def test_response_round_trip() -> None:
    print(f"POINT_READS_SEED={SEED}")
    rng = random.Random(SEED)
    choices = [None, errors.EMPTY_KEY, errors.PERMISSION_DENIED, b"", b"v", bytes(range(256)) * 9]
    for _ in range(200):
        results = [rng.choice(choices) for _ in range(rng.randrange(0, 40))]
        revision = rng.randrange(1 << 63)
        body = point_reads.encode_response(revision, results)
        assert point_reads.decode_response(body) == (revision, results)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01\x00",  # shorter than its count
        struct.pack("<I", point_reads.MAX_KEYS + 1) + b"\x00" * 4 * (point_reads.MAX_KEYS + 1),
        struct.pack("<I", 2) + struct.pack("<I", 1),  # a key length missing
        struct.pack("<II", 1, 3) + b"ab",  # the key shorter than its length
        struct.pack("<II", 1, 1) + b"ab",  # bytes after the last key
        struct.pack("<II", 1, 0xFFFFFFFF) + b"a",
    ],
)
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(EtcdError) as caught:
        point_reads.decode_request(body)
    assert caught.value.code == errors.Code.INVALID_ARGUMENT
    assert "malformed GET_MANY request" in caught.value.message


def test_truncated_response_is_refused() -> None:
    body = point_reads.encode_response(7, [b"value", None])
    with pytest.raises(ValueError):
        point_reads.decode_response(body[:-1])


def test_method_number_is_outside_the_auth_range() -> None:
    from actors.protocol import AUTH_METHODS

    assert Method.GET_MANY == 66 and Method.GET_MANY not in AUTH_METHODS


def test_values_match_a_range_of_each_key(tmp_path: Path) -> None:
    """Puts, overwrites, deletes and re-creates, seeded: each key's value is what a Range gives."""
    print(f"POINT_READS_SEED={SEED}")
    rng = random.Random(SEED)
    backend = Backend(str(tmp_path / "db"))
    store = MvccStore(backend, lease_exists=lambda _: False)
    names = [b"k%d" % i for i in range(30)] + [b"\x00bin\r\n", b"\xff"]

    def check() -> None:
        keys = [rng.choice(names) for _ in range(rng.randrange(1, 50))]
        expected = []
        for key in keys:
            kvs = store.range(rpc_pb2.RangeRequest(key=key)).kvs
            expected.append(kvs[0].value if kvs else None)
        assert store.values(keys) == expected

    try:
        for step in range(300):
            key = rng.choice(names)
            if rng.random() < 0.3:
                request = rpc_pb2.DeleteRangeRequest(key=key).SerializeToString()
                store.apply(Method.DELETE_RANGE, request)
            else:
                request = rpc_pb2.PutRequest(key=key, value=rng.randbytes(rng.randrange(0, 20)))
                store.apply(Method.PUT, request.SerializeToString())
            if step % 50 == 49:
                backend.commit(step)  # rows both in the pending batch and in RocksDB
            check()
    finally:
        backend.close()
