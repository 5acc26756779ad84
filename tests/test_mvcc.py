"""MvccStore and Backend: etcd's revision model on RocksDB, checked against etcd 3.4's behaviour.

Byte strings pinned below were produced by a real etcd 3.4.23 (cluster_id, member_id and
raft_term zeroed, as the storage layer leaves them for the caller to fill).
"""

from __future__ import annotations

import gc
import random
from pathlib import Path

import pytest
from rocksdict import Options, Rdict, ReadOptions

from actors import errors
from actors.errors import EtcdError
from actors.proto import kv_pb2
from actors.proto import rpc_pb2 as R
from actors.protocol import Method
from actors.storage.backend import LEASE, META, Backend
from actors.storage.keyindex import TOMBSTONE, prefix_end, revision_key
from actors.storage.mvcc import EVENT_DELETE, EVENT_PUT, MvccStore

Op = R.RequestOp
Cmp = R.Compare
RR = R.RangeRequest


class Node:
    """A Backend + MvccStore on one directory, reopenable like a restarted process."""

    def __init__(self, path: Path, leases: set[int] | None = None) -> None:
        self.path = path
        self.leases = leases if leases is not None else set()
        self.open()

    def open(self) -> None:
        self.backend = Backend(str(self.path))
        self.store = MvccStore(self.backend, lease_exists=self.leases.__contains__)

    def reopen(self, commit: int | None = None) -> None:
        if commit is not None:
            self.backend.commit(commit)
        self.backend.close()
        self.open()

    def apply(self, method: Method, req):
        return self.store.apply(method, req.SerializeToString())

    def put(self, key: bytes, value: bytes = b"", **kw) -> R.PutResponse:
        return self.apply(Method.PUT, R.PutRequest(key=key, value=value, **kw))

    def delete(self, key: bytes, end: bytes = b"", **kw) -> R.DeleteRangeResponse:
        return self.apply(Method.DELETE_RANGE, R.DeleteRangeRequest(key=key, range_end=end, **kw))

    def txn(self, compare=(), success=(), failure=()) -> R.TxnResponse:
        return self.apply(Method.TXN, R.TxnRequest(compare=compare, success=success, failure=failure))

    def compact(self, revision: int) -> R.CompactionResponse:
        return self.apply(Method.COMPACT, R.CompactionRequest(revision=revision))

    def range(self, key: bytes, end: bytes = b"", **kw) -> R.RangeResponse:
        return self.store.range(RR(key=key, range_end=end, **kw))

    def kvs(self, key: bytes = b"\0", end: bytes | None = None, **kw) -> list[tuple]:
        """The range's KeyValues as tuples; one key unless told otherwise (all keys by default)."""
        if end is None:
            end = b"\0" if key == b"\0" else b""
        return [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in self.range(key, end, **kw).kvs
        ]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path / "db")
    yield n
    n.backend.close()


def kv(**fields) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(**fields)


def error_of(fn, *args, **kw) -> EtcdError:
    with pytest.raises(EtcdError) as info:
        fn(*args, **kw)
    return info.value


def put_op(key: bytes, value: bytes = b"", **kw) -> R.RequestOp:
    return Op(request_put=R.PutRequest(key=key, value=value, **kw))


def range_op(key: bytes, end: bytes = b"", **kw) -> R.RequestOp:
    return Op(request_range=RR(key=key, range_end=end, **kw))


def delete_op(key: bytes, end: bytes = b"", **kw) -> R.RequestOp:
    return Op(request_delete_range=R.DeleteRangeRequest(key=key, range_end=end, **kw))


def txn_op(compare=(), success=(), failure=()) -> R.RequestOp:
    return Op(request_txn=R.TxnRequest(compare=compare, success=success, failure=failure))


# -- rocksdict 0.3.29 bugs: these tests pin the BUGGY behaviour; when one fails, the bug is fixed -----


def _raw_db(path: Path) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return Rdict(str(path), opts)


def test_rocksdict_bug_set_iterate_lower_bound_overwrites_the_upper_bound(tmp_path: Path) -> None:
    db = _raw_db(tmp_path / "bug1")
    for k in (b"a", b"b", b"c", b"d", b"e"):
        db[k] = b"1"
    ro = ReadOptions()
    ro.set_iterate_upper_bound(b"d")
    ro.set_iterate_lower_bound(b"b")  # should give [b, d); 0.3.29 turns it into an upper bound of b
    seen = list(db.keys(read_opt=ro))
    assert seen == [b"a"], "rocksdict's set_iterate_lower_bound bug is fixed: revisit Backend.scan_kv"
    del ro
    db.close()


def test_rocksdict_bug_snapshot_iteration_ignores_the_snapshot(tmp_path: Path) -> None:
    db = _raw_db(tmp_path / "bug2")
    db[b"a"] = b"old"
    snap = db.snapshot()
    db[b"a"] = b"new"
    db[b"b"] = b"later"
    assert snap[b"a"] == b"old"  # point reads honour the snapshot
    seen = dict(snap.items())
    assert seen == {b"a": b"new", b"b": b"later"}, "rocksdict's Snapshot iteration bug is fixed"
    del snap
    gc.collect()
    db.close()


# -- Backend -------------------------------------------------------------------------------------------


def test_backend_commit_writes_the_batch_with_the_applied_index(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"))
    assert backend.applied_index == 0
    backend.put_kv(b"r1", b"v1")
    backend.put(LEASE, b"l", b"x")
    assert backend.get_kv([b"r1", b"nope"]) == [b"v1", None]  # pending rows are readable
    assert backend.get(LEASE, b"l") is None  # other CFs: committed data only
    assert backend.pending == 2
    backend.commit(5)
    assert backend.applied_index == 5 and backend.pending == 0
    backend.put_kv(b"r2", b"v2")  # never committed: lost on close
    backend.delete_kv(b"r1")
    assert backend.get_kv([b"r1", b"r2"]) == [None, b"v2"]
    backend.close()
    backend = Backend(str(tmp_path / "db"))
    assert backend.applied_index == 5
    assert backend.get_kv([b"r1", b"r2"]) == [b"v1", None]
    assert backend.get(LEASE, b"l") == b"x"
    assert list(backend.scan_kv()) == [(b"r1", b"v1")]
    backend.commit(6, sync=True)
    assert backend.size_bytes() > 0
    backend.defragment()
    backend.close()
    backend.close()  # closing twice is harmless


def test_backend_scan_kv_bounds(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"))
    for i in range(10):
        backend.put_kv(revision_key(i), b"%d" % i)
    backend.commit(1)
    rows = list(backend.scan_kv(revision_key(3), revision_key(6)))
    assert rows == [(revision_key(i), b"%d" % i) for i in (3, 4, 5)]
    assert len(list(backend.scan_kv(revision_key(8)))) == 2
    backend.close()


def test_backend_meta_reads_through_the_pending_batch(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"))
    backend.put(META, b"m", b"1")
    assert backend.get(META, b"m") == b"1"
    backend.delete(META, b"m")
    assert backend.get(META, b"m") is None
    backend.close()


# -- revisions, versions --------------------------------------------------------------------------


def test_revision_numbering_starts_at_one_and_the_first_put_gets_two(node: Node) -> None:
    assert node.store.revision == 1 and node.store.compact_revision == -1
    assert node.put(b"a", b"1").header.revision == 2
    assert node.put(b"b", b"2").header.revision == 3
    assert node.store.revision == 3
    assert node.range(b"a").header.revision == 3


def test_versions_and_revisions_across_delete_and_recreate(node: Node) -> None:
    node.put(b"k", b"1")  # 2
    node.put(b"k", b"2")  # 3
    assert node.kvs(b"k", b"") == [(b"k", b"2", 2, 3, 2, 0)]
    assert node.delete(b"k").deleted == 1  # 4
    assert node.kvs(b"k", b"") == []
    node.put(b"k", b"3")  # 5
    assert node.kvs(b"k", b"") == [(b"k", b"3", 5, 5, 1, 0)]
    assert node.kvs(b"k", b"", revision=3) == [(b"k", b"2", 2, 3, 2, 0)]
    assert node.kvs(b"k", b"", revision=4) == []


def test_a_write_that_changes_nothing_takes_no_revision(node: Node) -> None:
    node.put(b"a")
    resp = node.delete(b"missing")
    assert resp.header.revision == 2 and resp.deleted == 0 and node.store.revision == 2
    resp = node.txn(success=[delete_op(b"missing")])
    assert resp.header.revision == 2 and node.store.revision == 2
    assert node.txn(success=[range_op(b"a")]).header.revision == 2


# -- put ---------------------------------------------------------------------------------------------


def test_put_prev_kv_ignore_value_ignore_lease(node: Node) -> None:
    node.leases.update({7, 8})
    assert not node.put(b"k", b"v1", prev_kv=True).HasField("prev_kv")  # no previous key
    resp = node.put(b"k", b"v2", lease=7, prev_kv=True)
    assert resp.prev_kv == kv(key=b"k", value=b"v1", create_revision=2, mod_revision=2, version=1)
    node.put(b"k", ignore_value=True, lease=8)
    assert node.kvs(b"k") == [(b"k", b"v2", 2, 4, 3, 8)]
    node.put(b"k", b"v3", ignore_lease=True)
    assert node.kvs(b"k") == [(b"k", b"v3", 2, 5, 4, 8)]
    node.put(b"k", ignore_value=True, ignore_lease=True)
    assert node.kvs(b"k") == [(b"k", b"v3", 2, 6, 5, 8)]


def test_put_errors_leave_no_trace(node: Node) -> None:
    node.put(b"k", b"v")
    pending = node.backend.pending
    assert error_of(node.put, b"k", b"v", lease=99) == errors.LEASE_NOT_FOUND
    assert error_of(node.put, b"missing", ignore_value=True) == errors.KEY_NOT_FOUND
    assert error_of(node.put, b"missing", ignore_lease=True) == errors.KEY_NOT_FOUND
    # etcd checks the lease before the key
    assert error_of(node.put, b"missing", ignore_value=True, lease=99) == errors.LEASE_NOT_FOUND
    node.delete(b"k")
    assert error_of(node.put, b"k", ignore_value=True) == errors.KEY_NOT_FOUND  # deleted = missing
    assert node.store.revision == 3 and node.backend.pending == pending + 1


def test_apply_refuses_bad_bytes_and_unknown_methods(node: Node) -> None:
    assert error_of(node.store.apply, Method.PUT, b"\xff\xff").code == errors.Code.INVALID_ARGUMENT
    assert error_of(node.store.apply, Method.STATUS, b"").code == errors.Code.UNIMPLEMENTED
    assert node.store.revision == 1


# -- delete ------------------------------------------------------------------------------------------


def test_delete_range_prev_kvs_and_one_revision_for_all(node: Node) -> None:
    for key in (b"a", b"b", b"c", b"d"):
        node.put(key, key.upper())  # 2..5
    resp = node.delete(b"b", b"d", prev_kv=True)
    assert resp.deleted == 2 and resp.header.revision == 6
    assert [(kv.key, kv.value, kv.mod_revision) for kv in resp.prev_kvs] == [(b"b", b"B", 3), (b"c", b"C", 4)]
    assert not node.delete(b"a").prev_kvs
    assert node.delete(b"\0", b"\0").deleted == 1  # only d is left
    assert node.kvs() == []
    # the deletion rows: one revision, sub revisions in key order, tombstone marker
    node.backend.commit(1)
    rows = [row for row, _ in node.backend.scan_kv()]
    assert revision_key(6, 0) + TOMBSTONE in rows and revision_key(6, 1) + TOMBSTONE in rows


# -- range -------------------------------------------------------------------------------------------


@pytest.fixture
def abcde(node: Node) -> Node:
    # key: value, then mod revisions 2..6 in this order; "c" gets version 2 at revision 7
    for key, value in [(b"c", b"3"), (b"a", b"5"), (b"e", b"1"), (b"b", b"4"), (b"d", b"2")]:
        node.put(key, value)
    node.put(b"c", b"3")
    return node


def test_range_limit_more_and_count(abcde: Node) -> None:
    resp = abcde.range(b"a", b"\0", limit=2)
    assert [kv.key for kv in resp.kvs] == [b"a", b"b"] and resp.more and resp.count == 5
    resp = abcde.range(b"a", b"\0", limit=5)
    assert len(resp.kvs) == 5 and not resp.more and resp.count == 5
    resp = abcde.range(b"b", b"d", count_only=True, limit=1)
    assert not resp.kvs and resp.count == 2 and not resp.more
    resp = abcde.range(b"a", b"\0", keys_only=True, limit=1)
    assert resp.kvs[0] == kv(key=b"a", create_revision=3, mod_revision=3, version=1)
    assert abcde.range(b"x", b"\0") == R.RangeResponse(header=R.ResponseHeader(revision=7))


@pytest.mark.parametrize(
    ("target", "order", "limit", "keys"),
    [
        (RR.KEY, RR.NONE, 0, b"abcde"),
        (RR.KEY, RR.ASCEND, 0, b"abcde"),
        (RR.KEY, RR.DESCEND, 0, b"edcba"),
        (RR.KEY, RR.DESCEND, 2, b"ed"),
        (RR.VALUE, RR.ASCEND, 0, b"edcba"),
        (RR.VALUE, RR.DESCEND, 0, b"abcde"),
        (RR.MOD, RR.ASCEND, 0, b"aebdc"),
        (RR.MOD, RR.DESCEND, 3, b"cdb"),
        (RR.CREATE, RR.ASCEND, 0, b"caebd"),
        (RR.CREATE, RR.DESCEND, 0, b"dbeac"),
        (RR.VERSION, RR.DESCEND, 0, b"cabde"),  # ties keep key order (stable, as etcd on <= 12 rows)
        (RR.VERSION, RR.ASCEND, 0, b"abdec"),
        (RR.MOD, RR.NONE, 0, b"aebdc"),  # order NONE on another target sorts ascending
        # etcd's quirk: with order NONE it fetches limit+1 keys in key order, then sorts those
        (RR.MOD, RR.NONE, 2, b"ab"),
        (RR.VALUE, RR.NONE, 2, b"cb"),
    ],
)
def test_range_sort(abcde: Node, target: int, order: int, limit: int, keys: bytes) -> None:
    resp = abcde.range(b"a", b"\0", sort_target=target, sort_order=order, limit=limit)
    assert b"".join(kv.key for kv in resp.kvs) == keys
    assert resp.count == 5 and resp.more == (0 < limit < 5)


def test_range_revision_filters_prune_after_counting(abcde: Node) -> None:
    resp = abcde.range(b"a", b"\0", min_mod_revision=4, max_mod_revision=6)
    assert [kv.key for kv in resp.kvs] == [b"b", b"d", b"e"] and resp.count == 5
    resp = abcde.range(b"a", b"\0", max_create_revision=3)
    assert [kv.key for kv in resp.kvs] == [b"a", b"c"]
    resp = abcde.range(b"a", b"\0", min_create_revision=5, limit=1)
    assert [kv.key for kv in resp.kvs] == [b"b"] and resp.more and resp.count == 5


def test_range_at_old_revisions_and_its_errors(abcde: Node) -> None:
    assert [kv.key for kv in abcde.range(b"a", b"\0", revision=4).kvs] == [b"a", b"c", b"e"]
    resp = abcde.range(b"c", revision=6)
    assert resp.kvs[0].version == 1 and resp.header.revision == 7  # the header shows the current one
    assert abcde.range(b"c", revision=-3).kvs[0].version == 2  # <= 0 means current
    assert error_of(abcde.range, b"a", revision=8) == errors.FUTURE_REV
    abcde.compact(4)
    assert error_of(abcde.range, b"a", revision=3) == errors.COMPACTED
    assert [kv.key for kv in abcde.range(b"a", b"\0", revision=4).kvs] == [b"a", b"c", b"e"]


def test_arbitrary_bytes_keys_and_values(node: Node) -> None:
    keys = [b"\x00", b"\x00\x00", b"\xff", b"\xff\xff", b"\xff\xff\x00", b"\x80\x81invalid utf8", b"a\x00b"]
    for key in keys:
        node.put(key, key[::-1] + b"\x00\xff")
    assert [kv.key for kv in node.range(b"\0", b"\0").kvs] == sorted(keys)
    assert node.range(b"\x80\x81invalid utf8").kvs[0].value == b"8ftu dilavni\x81\x80\x00\xff"
    assert prefix_end(b"\xff\xff") == b"\0"
    got = [kv.key for kv in node.range(b"\xff\xff", prefix_end(b"\xff\xff")).kvs]
    assert got == [b"\xff\xff", b"\xff\xff\x00"]
    assert [kv.key for kv in node.range(b"\x00", prefix_end(b"\x00")).kvs] == [b"\x00", b"\x00\x00"]
    assert node.delete(b"\xff", b"\0").deleted == 3
    node.reopen(commit=1)
    assert [kv.key for kv in node.range(b"\0", b"\0").kvs] == sorted(keys)[:4]


# -- txn ---------------------------------------------------------------------------------------------


def cmp(key: bytes, target: int, result: int, end: bytes = b"", **value) -> R.Compare:
    return Cmp(key=key, target=target, result=result, range_end=end, **value)


def holds(node: Node, compare: R.Compare) -> bool:
    return node.txn(compare=[compare]).succeeded


def test_txn_compares(node: Node) -> None:
    node.leases.add(9)
    node.put(b"a", b"m", lease=9)  # 2
    node.put(b"a", b"m")  # 3: version 2
    node.put(b"b", b"z")  # 4
    E, G, L, N = Cmp.EQUAL, Cmp.GREATER, Cmp.LESS, Cmp.NOT_EQUAL
    assert holds(node, cmp(b"a", Cmp.VALUE, E, value=b"m"))
    assert holds(node, cmp(b"a", Cmp.VALUE, G, value=b"l"))
    assert holds(node, cmp(b"a", Cmp.VALUE, L, value=b"mm"))
    assert holds(node, cmp(b"a", Cmp.VERSION, E, version=2))
    assert holds(node, cmp(b"a", Cmp.CREATE, E, create_revision=2))
    assert holds(node, cmp(b"a", Cmp.MOD, G, mod_revision=2))
    assert holds(node, cmp(b"a", Cmp.LEASE, E, lease=0))
    assert holds(node, cmp(b"a", Cmp.MOD, N, mod_revision=2))
    assert not holds(node, cmp(b"a", Cmp.MOD, N, mod_revision=3))
    # a missing key: version/create/mod/lease compare as 0, a value compare always fails
    assert holds(node, cmp(b"x", Cmp.CREATE, E, create_revision=0))
    assert holds(node, cmp(b"x", Cmp.VERSION, L, version=1))
    assert holds(node, cmp(b"x", Cmp.LEASE, E, lease=0))
    assert not holds(node, cmp(b"x", Cmp.VALUE, E, value=b""))
    assert not holds(node, cmp(b"x", Cmp.VALUE, N, value=b"q"))
    # a range compare must hold for every key in it
    assert holds(node, cmp(b"a", Cmp.MOD, G, b"c", mod_revision=2))
    assert not holds(node, cmp(b"a", Cmp.VALUE, E, b"c", value=b"m"))
    assert holds(node, cmp(b"a", Cmp.VERSION, G, b"\0", version=0))
    assert holds(node, cmp(b"c", Cmp.VERSION, E, b"\0", version=0))  # empty range: compares to 0
    # every compare must hold
    assert not node.txn(
        compare=[cmp(b"a", Cmp.VERSION, E, version=2), cmp(b"b", Cmp.VERSION, E, version=2)]
    ).succeeded


def test_txn_one_revision_sub_revisions_and_branches(node: Node) -> None:
    node.put(b"a", b"1")  # 2
    resp = node.txn(
        compare=[cmp(b"a", Cmp.VALUE, Cmp.EQUAL, value=b"1")],
        success=[put_op(b"b", b"2"), put_op(b"c", b"3"), delete_op(b"a")],
        failure=[put_op(b"x", b"x")],
    )
    assert resp.succeeded and resp.header.revision == 3
    assert node.kvs() == [(b"b", b"2", 3, 3, 1, 0), (b"c", b"3", 3, 3, 1, 0)]
    node.backend.commit(1)
    rows = [row for row, _ in node.backend.scan_kv(revision_key(3))]
    assert rows == [revision_key(3, 0), revision_key(3, 1), revision_key(3, 2) + TOMBSTONE]
    resp = node.txn(compare=[cmp(b"a", Cmp.VERSION, Cmp.GREATER, version=0)], failure=[put_op(b"x", b"x")])
    assert not resp.succeeded and resp.header.revision == 4 and node.kvs(b"x")[0][3] == 4


def test_txn_ranges_see_earlier_writes_and_nested_compares_do_not(node: Node) -> None:
    node.put(b"a", b"1")  # 2
    resp = node.txn(
        success=[
            range_op(b"a"),
            put_op(b"a", b"2", prev_kv=True),
            range_op(b"a"),
            delete_op(b"missing"),
            # evaluated before the txn ran: "a" still had version 1 then
            txn_op(
                compare=[cmp(b"a", Cmp.VERSION, Cmp.EQUAL, version=1)],
                success=[range_op(b"a", count_only=True)],
            ),
        ]
    )
    first, put_resp, second, delete_resp, nested = (op for op in resp.responses)
    assert first.response_range.header.revision == 2 and first.response_range.kvs[0].value == b"1"
    assert put_resp.response_put.header.revision == 3 and put_resp.response_put.prev_kv.value == b"1"
    assert second.response_range.header.revision == 3 and second.response_range.kvs[0].value == b"2"
    assert delete_resp.response_delete_range.header.revision == 3
    inner = nested.response_txn
    assert inner.succeeded and inner.HasField("header") and inner.header == R.ResponseHeader()
    assert inner.responses[0].response_range.count == 1


def test_txn_check_errors_leave_no_trace(node: Node) -> None:
    node.put(b"a")  # 2
    node.compact(2)
    node.put(b"b")  # 3
    pending = node.backend.pending
    cases = [
        ([put_op(b"x"), put_op(b"missing", ignore_value=True)], errors.KEY_NOT_FOUND),
        ([put_op(b"x"), txn_op(success=[put_op(b"a", lease=5)])], errors.LEASE_NOT_FOUND),
        ([put_op(b"x"), range_op(b"a", revision=4)], errors.FUTURE_REV),
        ([put_op(b"x"), range_op(b"a", revision=1)], errors.COMPACTED),
        ([range_op(b"a", revision=-1)], errors.COMPACTED),  # etcd's quirk for negative revisions in txns
    ]
    for ops, error in cases:
        assert error_of(node.txn, success=ops) == error
    # put checks come before range checks, each in op order (nested ones included)
    assert (
        error_of(node.txn, success=[range_op(b"a", revision=9), put_op(b"a", lease=5)])
        == errors.LEASE_NOT_FOUND
    )
    # only the branch that runs is checked
    assert node.txn(failure=[put_op(b"missing", ignore_value=True)]).succeeded
    assert node.store.revision == 3 and node.backend.pending == pending
    assert node.kvs(b"x") == []


def test_txn_failing_half_way_is_rolled_back(node: Node) -> None:
    # etcd 3.4 checks ignore_value against the state before the txn, so this passes the checks and
    # then fails inside the txn (etcd panics). cairn undoes the txn and answers key not found.
    node.put(b"k", b"v")  # 2
    node.store.events = []
    ops = [put_op(b"other", b"1"), delete_op(b"k"), txn_op(success=[put_op(b"k", ignore_value=True)])]
    assert error_of(node.txn, success=ops) == errors.KEY_NOT_FOUND
    assert node.store.revision == 2 and node.store.events == []
    assert node.kvs() == [(b"k", b"v", 2, 2, 1, 0)]
    assert node.put(b"other", b"2").header.revision == 3
    assert node.kvs(b"other") == [(b"other", b"2", 3, 3, 1, 0)]
    node.reopen(commit=1)
    assert node.kvs() == [(b"k", b"v", 2, 2, 1, 0), (b"other", b"2", 3, 3, 1, 0)]


# -- exact bytes, as etcd 3.4.23 answered the same sequence ---------------------------------------------

ETCD_SEQUENCE = [
    (Method.PUT, R.PutRequest(key=b"a", value=b"1")),
    (Method.PUT, R.PutRequest(key=b"b", value=b"2")),
    (Method.PUT, R.PutRequest(key=b"a", value=b"3", prev_kv=True)),
    (Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"b", prev_kv=True)),
    (Method.PUT, R.PutRequest(key=b"b", value=b"4")),
    (
        Method.TXN,
        R.TxnRequest(
            compare=[Cmp(key=b"a", target=Cmp.VERSION, result=Cmp.EQUAL, version=2)],
            success=[
                range_op(b"a", b"c"),
                put_op(b"c", b"5", prev_kv=True),
                range_op(b"a", b"\0"),
                delete_op(b"a", prev_kv=True),
                range_op(b"a"),
                txn_op(
                    compare=[Cmp(key=b"c", target=Cmp.CREATE, result=Cmp.EQUAL, create_revision=0)],
                    success=[range_op(b"c", count_only=True)],
                    failure=[put_op(b"d", b"6")],
                ),
            ],
            failure=[put_op(b"x", b"x")],
        ),
    ),
    (Method.RANGE, RR(key=b"a", range_end=b"\0", limit=1, sort_target=RR.MOD, sort_order=RR.DESCEND)),
    (Method.RANGE, RR(key=b"a", range_end=b"\0", revision=3)),
    (Method.RANGE, RR(key=b"\0", range_end=b"\0", keys_only=True, limit=2)),
    (Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"nothing")),
    (
        Method.TXN,
        R.TxnRequest(
            compare=[Cmp(key=b"zz", target=Cmp.VALUE, result=Cmp.NOT_EQUAL, value=b"")],
            success=[put_op(b"y", b"y")],
            failure=[range_op(b"b")],
        ),
    ),
    (Method.COMPACT, R.CompactionRequest(revision=4)),
    (Method.RANGE, RR(key=b"a", range_end=b"\0", revision=4, count_only=True)),
]

ETCD_ANSWERS = [
    b"\n\x02\x18\x02",
    b"\n\x02\x18\x03",
    b"\n\x02\x18\x04\x12\x0c\n\x01a\x10\x02\x18\x02 \x01*\x011",
    b"\n\x02\x18\x05\x10\x01\x1a\x0c\n\x01b\x10\x03\x18\x03 \x01*\x012",
    b"\n\x02\x18\x06",
    b'\n\x02\x18\x07\x10\x01\x1a$\n"\n\x02\x18\x06\x12\x0c\n\x01a\x10\x02\x18\x04 \x02*\x013\x12\x0c\n\x01b'
    b"\x10\x06\x18\x06 \x01*\x014 \x02\x1a\x06\x12\x04\n\x02\x18\x07\x1a2\n0\n\x02\x18\x07\x12\x0c\n\x01a\x10"
    b"\x02\x18\x04 \x02*\x013\x12\x0c\n\x01b\x10\x06\x18\x06 \x01*\x014\x12\x0c\n\x01c\x10\x07\x18\x07 \x01*"
    b"\x015 \x03\x1a\x16\x1a\x14\n\x02\x18\x07\x10\x01\x1a\x0c\n\x01a\x10\x02\x18\x04 \x02*\x013"
    b"\x1a\x06\n\x04"
    b'\n\x02\x18\x07\x1a\x10"\x0e\n\x00\x10\x01\x1a\x08\n\x06\n\x02\x18\x07 \x01',
    b"\n\x02\x18\x07\x12\x0c\n\x01c\x10\x07\x18\x07 \x01*\x015\x18\x01 \x02",
    b"\n\x02\x18\x07\x12\x0c\n\x01a\x10\x02\x18\x02 \x01*\x011"
    b"\x12\x0c\n\x01b\x10\x03\x18\x03 \x01*\x012 \x02",
    b"\n\x02\x18\x07\x12\t\n\x01b\x10\x06\x18\x06 \x01\x12\t\n\x01c\x10\x07\x18\x07 \x01 \x02",
    b"\n\x02\x18\x07",
    b"\n\x02\x18\x07\x1a\x16\n\x14\n\x02\x18\x07\x12\x0c\n\x01b\x10\x06\x18\x06 \x01*\x014 \x01",
    b"\n\x02\x18\x07",
    b"\n\x02\x18\x07 \x02",
]


def test_responses_match_etcd_byte_for_byte(node: Node) -> None:
    for (method, req), want in zip(ETCD_SEQUENCE, ETCD_ANSWERS, strict=True):
        assert node.apply(method, req).SerializeToString() == want, (method, req)


# -- compaction ----------------------------------------------------------------------------------------


def test_compaction(node: Node) -> None:
    assert node.compact(0).header.revision == 1  # allowed once on a new store, as in etcd
    assert error_of(node.compact, 0) == errors.COMPACTED
    node.put(b"k", b"1")  # 2
    node.put(b"k", b"2")  # 3
    node.put(b"gone", b"x")  # 4
    node.delete(b"gone")  # 5
    node.put(b"k", b"3")  # 6
    assert error_of(node.compact, 7) == errors.FUTURE_REV
    assert node.compact(5).header.revision == 6 and node.store.compact_revision == 5
    assert error_of(node.compact, 5) == errors.COMPACTED
    assert error_of(node.compact, 4) == errors.COMPACTED
    assert error_of(node.range, b"k", revision=4) == errors.COMPACTED
    assert node.kvs(b"\0", b"\0", revision=5) == [(b"k", b"2", 2, 3, 2, 0)]  # history at the compact rev
    assert node.kvs(b"k", revision=6) == [(b"k", b"3", 2, 6, 3, 0)]
    node.backend.commit(9)
    rows = [row for row, _ in node.backend.scan_kv()]
    assert rows == [revision_key(3), revision_key(6)]  # the rest was physically deleted
    node.reopen()
    assert node.store.compact_revision == 5 and node.store.revision == 6
    assert error_of(node.range, b"k", revision=4) == errors.COMPACTED
    assert node.kvs(b"\0", b"\0", revision=5) == [(b"k", b"2", 2, 3, 2, 0)]
    assert node.put(b"k", b"4").header.revision == 7
    assert node.kvs(b"k") == [(b"k", b"4", 2, 7, 4, 0)]  # the version survives compaction + restart


def test_compacting_everything_keeps_the_revision_across_restart(node: Node) -> None:
    node.put(b"a")  # 2
    node.delete(b"a")  # 3
    node.compact(3)
    node.reopen(commit=1)
    assert list(node.backend.scan_kv()) == []
    assert node.store.revision == 3 and node.store.compact_revision == 3
    assert node.put(b"a").header.revision == 4
    assert node.kvs(b"a") == [(b"a", b"", 4, 4, 1, 0)]


# -- restart, events -------------------------------------------------------------------------------------


def test_restart_gives_identical_answers_and_keeps_the_applied_index(node: Node) -> None:
    for i in range(30):
        node.put(b"k%d" % (i % 7), b"v%d" % i)
        if i % 5 == 0:
            node.delete(b"k%d" % (i % 3))
    node.txn(success=[put_op(b"t1"), put_op(b"t2"), delete_op(b"k1")])
    node.compact(12)
    revision = node.store.revision
    before = [node.range(b"\0", b"\0", revision=r).SerializeToString() for r in range(12, revision + 1)]
    node.reopen(commit=42)
    assert node.backend.applied_index == 42 and node.store.revision == revision
    after = [node.range(b"\0", b"\0", revision=r).SerializeToString() for r in range(12, revision + 1)]
    assert after == before
    node.put(b"lost")  # applied but never committed: a crash forgets it, raft replays it
    node.reopen()
    assert node.backend.applied_index == 42 and node.store.revision == revision and node.kvs(b"lost") == []


def test_events_are_collected_when_asked(node: Node) -> None:
    node.put(b"before")
    node.store.events = []
    node.put(b"a", b"1")
    node.txn(success=[put_op(b"b", b"2"), delete_op(b"before")])
    assert node.store.events == [
        (
            EVENT_PUT,
            kv(key=b"a", value=b"1", create_revision=3, mod_revision=3, version=1).SerializeToString(),
        ),
        (
            EVENT_PUT,
            kv(key=b"b", value=b"2", create_revision=4, mod_revision=4, version=1).SerializeToString(),
        ),
        (EVENT_DELETE, kv(key=b"before", mod_revision=4).SerializeToString()),
    ]


# -- randomized, against a tiny model ------------------------------------------------------------------


class Model:
    """etcd's semantics the slow, obvious way: a full copy of the live keys at every revision."""

    def __init__(self) -> None:
        self.states: list[dict[bytes, tuple]] = [{}, {}]  # revision -> {key: (value, create, mod, ver)}
        self.compacted = -1

    @property
    def revision(self) -> int:
        return len(self.states) - 1

    def write(self, puts: list[tuple[bytes, bytes]], deletes: list[tuple[bytes, bytes]]) -> None:
        state = dict(self.states[-1])
        rev = self.revision + 1
        changed = False
        for key, end in deletes:
            for k in [k for k in state if in_range(k, key, end)]:
                del state[k]
                changed = True
        for key, value in puts:
            old = state.get(key)
            state[key] = (value, old[1] if old else rev, rev, old[3] + 1 if old else 1)
            changed = True
        if changed:
            self.states.append(state)

    def range(self, key: bytes, end: bytes, rev: int) -> list[tuple]:
        state = self.states[rev]
        return sorted((k, *v) for k, v in state.items() if in_range(k, key, end))


def in_range(k: bytes, key: bytes, end: bytes) -> bool:
    if not end:
        return k == key
    if end == b"\0":
        return k >= key
    return key <= k < end


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_random_ops_against_a_model(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    node = Node(tmp_path / "db")
    model = Model()
    names = [b"a", b"b", b"ab", b"\x00", b"\xff", b"\xff\xff", b"a\x00", b"\x80"]

    def some_range() -> tuple[bytes, bytes]:
        key = rng.choice(names)
        end = rng.choice([b"", b"", b"\0", rng.choice(names), prefix_end(key)])
        return key, end

    try:
        for step in range(3000):
            where = f"seed {seed}, step {step}"
            roll = rng.random()
            if roll < 0.45:
                key, value = rng.choice(names), rng.randbytes(rng.randint(0, 3))
                assert node.put(key, value).header.revision == model.revision + 1, where
                model.write([(key, value)], [])
            elif roll < 0.6:
                key, end = some_range()
                want = len(model.range(key, end, model.revision))
                assert node.delete(key, end).deleted == want, where
                model.write([], [(key, end)])
            elif roll < 0.8:
                # a txn guarded by a version compare: puts of distinct keys, plus maybe a delete
                key = rng.choice(names)
                version = rng.randint(0, 2)
                have = model.states[-1].get(key)
                ok = (have[3] if have else 0) == version
                keys = rng.sample(names, rng.randint(0, 3))
                puts = [(k, rng.randbytes(2)) for k in keys]
                dels = [(k, b"") for k in names if k not in keys and rng.random() < 0.2]
                resp = node.txn(
                    compare=[cmp(key, Cmp.VERSION, Cmp.EQUAL, version=version)],
                    success=[put_op(k, v) for k, v in puts] + [delete_op(k) for k, _ in dels],
                    failure=[range_op(key)],
                )
                assert resp.succeeded == ok, where
                if ok:
                    model.write(puts, dels)
                assert resp.header.revision == model.revision, where
            elif roll < 0.82 and model.revision > model.compacted + 1:
                rev = rng.randint(model.compacted + 1, model.revision)
                node.compact(rev)
                model.compacted = rev
            elif roll < 0.83:
                node.reopen(commit=step)
            else:
                key, end = some_range()
                rev = rng.randint(max(model.compacted, 1), model.revision)
                got = node.kvs(key, end, revision=rev)
                assert got == [(*kv, 0) for kv in model.range(key, end, rev)], where
                assert node.range(key, end, count_only=True, revision=rev).count == len(got), where
            assert node.store.revision == model.revision, where
        node.reopen(commit=99999)
        for rev in range(max(model.compacted, 1), model.revision + 1):
            got = node.kvs(b"\0", b"\0", revision=rev)
            assert got == [(*kv, 0) for kv in model.range(b"\0", b"\0", rev)], f"seed {seed}, revision {rev}"
    finally:
        node.backend.close()


def test_kv_column_family_holds_etcds_rows(node: Node) -> None:
    node.put(b"k", b"v")
    node.delete(b"k")
    node.backend.commit(1)
    rows = dict(node.backend.scan_kv())
    stored = kv(key=b"k", value=b"v", create_revision=2, mod_revision=2, version=1)
    assert rows[revision_key(2)] == stored.SerializeToString()
    assert rows[revision_key(3) + TOMBSTONE] == kv(key=b"k").SerializeToString()
