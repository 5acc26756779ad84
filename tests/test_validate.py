"""validate(): the checks etcd's gRPC layer makes before proposing a KV request (v3rpc/key.go).

The expected errors of the txn cases were checked against a real etcd 3.4.23.
"""

from __future__ import annotations

import pytest

from actors import errors
from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2 as R
from actors.protocol import Method
from actors.storage.mvcc import is_txn_readonly
from actors.storage.validate import decode, validate

Op = R.RequestOp


def check(method: Method, req, max_txn_ops: int = 128) -> EtcdError | None:
    try:
        validate(method, req.SerializeToString(), max_txn_ops)
    except EtcdError as exc:
        return exc
    return None


def put(key: bytes, **kw) -> R.RequestOp:
    return Op(request_put=R.PutRequest(key=key, **kw))


def rng(key: bytes, end: bytes = b"") -> R.RequestOp:
    return Op(request_range=R.RangeRequest(key=key, range_end=end))


def delete(key: bytes, end: bytes = b"") -> R.RequestOp:
    return Op(request_delete_range=R.DeleteRangeRequest(key=key, range_end=end))


def txn(success=(), failure=(), compare=()) -> R.RequestOp:
    return Op(request_txn=R.TxnRequest(success=list(success), failure=list(failure), compare=list(compare)))


def TXN(success=(), failure=(), compare=()) -> R.TxnRequest:
    return R.TxnRequest(success=list(success), failure=list(failure), compare=list(compare))


def test_valid_requests_pass() -> None:
    assert check(Method.RANGE, R.RangeRequest(key=b"a")) is None
    assert check(Method.PUT, R.PutRequest(key=b"\x00", value=b"\xff")) is None
    assert check(Method.PUT, R.PutRequest(key=b"a", ignore_value=True, ignore_lease=True)) is None
    assert check(Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"a", range_end=b"\0")) is None
    assert check(Method.COMPACT, R.CompactionRequest(revision=-5)) is None  # checked at apply
    assert check(Method.TXN, R.TxnRequest()) is None
    assert check(Method.STATUS, R.StatusRequest()) is None  # not a KV request: nothing to check


@pytest.mark.parametrize(
    ("method", "req"),
    [
        (Method.RANGE, R.RangeRequest(range_end=b"z")),
        (Method.PUT, R.PutRequest(value=b"v")),
        (Method.DELETE_RANGE, R.DeleteRangeRequest(range_end=b"\0")),
        (Method.TXN, TXN(compare=[R.Compare(target=R.Compare.VERSION)])),
        (Method.TXN, TXN(success=[rng(b"")])),
        (Method.TXN, TXN(failure=[put(b"")])),
        (Method.TXN, TXN(success=[delete(b"")])),
        (Method.TXN, TXN(success=[txn(failure=[put(b"")])])),
    ],
)
def test_empty_key(method: Method, req) -> None:
    assert check(method, req) == errors.EMPTY_KEY


def test_ignore_value_and_ignore_lease() -> None:
    assert check(Method.PUT, R.PutRequest(key=b"a", value=b"v", ignore_value=True)) == errors.VALUE_PROVIDED
    assert check(Method.PUT, R.PutRequest(key=b"a", lease=7, ignore_lease=True)) == errors.LEASE_PROVIDED
    assert check(Method.TXN, TXN(success=[put(b"a", value=b"v", ignore_value=True)])) == errors.VALUE_PROVIDED
    assert check(Method.TXN, TXN(failure=[put(b"a", lease=1, ignore_lease=True)])) == errors.LEASE_PROVIDED


def test_empty_request_op_is_key_not_found() -> None:
    assert check(Method.TXN, TXN(success=[Op()])) == errors.KEY_NOT_FOUND
    assert check(Method.TXN, TXN(success=[txn(failure=[Op()])])) == errors.KEY_NOT_FOUND


def test_too_many_ops_counts_the_longest_list_and_gives_nested_txns_the_rest() -> None:
    ranges = [rng(b"k%d" % i) for i in range(128)]
    assert check(Method.TXN, TXN(success=ranges)) is None
    assert check(Method.TXN, TXN(success=[*ranges, rng(b"x")])) == errors.TOO_MANY_OPS
    assert check(Method.TXN, TXN(success=ranges, failure=ranges)) is None  # per branch, not the sum
    compares = [R.Compare(key=b"c")] * 129
    assert check(Method.TXN, TXN(compare=compares)) == errors.TOO_MANY_OPS
    assert check(Method.TXN, TXN(compare=compares[:4]), max_txn_ops=3) == errors.TOO_MANY_OPS
    # 100 ops at the top leave 28 for a nested txn (verified on etcd 3.4.23)
    top = [rng(b"k%d" % i) for i in range(99)]
    assert check(Method.TXN, TXN(success=[*top, txn(failure=[rng(b"x")] * 28)])) is None
    assert check(Method.TXN, TXN(success=[*top, txn(failure=[rng(b"x")] * 29)])) == errors.TOO_MANY_OPS


def test_too_many_ops_is_checked_before_empty_keys() -> None:
    assert check(Method.TXN, TXN(success=[put(b"")] * 3), max_txn_ops=2) == errors.TOO_MANY_OPS


@pytest.mark.parametrize(
    ("ops", "error"),
    [
        ([put(b"a"), put(b"a")], errors.DUPLICATE_KEY),
        ([put(b"a"), put(b"b")], None),
        ([delete(b"a"), put(b"a")], errors.DUPLICATE_KEY),
        ([put(b"b"), delete(b"a", b"c")], errors.DUPLICATE_KEY),
        ([put(b"c"), delete(b"a", b"c")], None),  # range_end is exclusive
        ([delete(b"a"), delete(b"a")], None),  # deletes may overlap each other
        ([rng(b"a"), put(b"a"), rng(b"a")], None),
        # etcd 3.4 quirk (verified): a from-key delete is the interval [key, "\0"), which is
        # inverted, so it overlaps no put
        ([delete(b"a", b"\0"), put(b"b")], None),
        # nested txns: only one branch runs, so then/else may put the same key
        ([txn(success=[put(b"z")], failure=[put(b"z")])], None),
        ([put(b"z"), txn(success=[put(b"z")])], errors.DUPLICATE_KEY),
        ([txn(failure=[put(b"z")]), put(b"z")], errors.DUPLICATE_KEY),
        ([delete(b"y", b"zz"), txn(failure=[put(b"z")])], errors.DUPLICATE_KEY),
        ([txn(success=[delete(b"y", b"zz")]), put(b"z")], errors.DUPLICATE_KEY),
        ([txn(success=[put(b"z")]), txn(failure=[put(b"z")])], errors.DUPLICATE_KEY),
        ([txn(success=[put(b"z")], failure=[put(b"q")]), txn(success=[put(b"q")])], errors.DUPLICATE_KEY),
        ([txn(success=[txn(success=[put(b"z")])]), put(b"z")], errors.DUPLICATE_KEY),
        ([txn(success=[put(b"z"), put(b"z")])], errors.DUPLICATE_KEY),
    ],
)
def test_duplicate_keys(ops: list[R.RequestOp], error: EtcdError | None) -> None:
    assert check(Method.TXN, TXN(success=ops)) == error
    assert check(Method.TXN, TXN(failure=ops)) == error


def test_invalid_protobuf_bytes() -> None:
    with pytest.raises(EtcdError) as info:
        validate(Method.PUT, b"\xff\xff\xff", 128)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert "PutRequest" in info.value.message
    with pytest.raises(EtcdError) as info:
        decode(Method.TXN, b"\x0a\x05ab")  # a length running past the end
    assert info.value.code == Code.INVALID_ARGUMENT


def test_decode_refuses_non_kv_methods() -> None:
    with pytest.raises(EtcdError) as info:
        decode(Method.STATUS, b"")
    assert info.value.code == Code.UNIMPLEMENTED


def test_is_txn_readonly_is_etcds_shallow_check() -> None:
    assert is_txn_readonly(TXN(success=[rng(b"a")], failure=[rng(b"b")]))
    assert is_txn_readonly(TXN())
    assert not is_txn_readonly(TXN(failure=[put(b"a")]))
    assert not is_txn_readonly(TXN(success=[txn(success=[rng(b"a")])]))  # a nested txn counts as a write
