"""Leases inside the MVCC store: grant/revoke/checkpoint as applied raft entries, attachments kept by
puts and deletes, and everything rebuilt on open.

etcd 3.4.23 facts pinned here (checked against the real server): a revoke of a lease holding no
key takes no revision (header = current revision); a revoke of a lease holding k2, k1, k3 deleted
all three in ONE revision, one watch response with the DELETE events in key order (k1, k2, k3),
each with only key and mod_revision; LeaseGrant answers the current revision and the TTL granted
(2 for ``grant 1``); TimeToLive of a revoked lease answers TTL -1, grantedTTL 0, no keys;
LeaseLeases lists the remaining ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors import errors
from actors.errors import Code, EtcdError
from actors.lease.table import LeaseTable
from actors.proto import kv_pb2
from actors.proto import rpc_pb2 as R
from actors.protocol import Method
from actors.storage.backend import Backend
from actors.storage.mvcc import EVENT_DELETE, EVENT_PUT, MvccStore

Op = R.RequestOp


class Node:
    """A Backend + LeaseTable + MvccStore on one directory, reopenable like a restarted process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.open()

    def open(self) -> None:
        self.backend = Backend(str(self.path))
        self.table = LeaseTable(self.backend, min_ttl=2)
        self.store = MvccStore(self.backend, self.table)

    def reopen(self, commit: int | None = None) -> None:
        if commit is not None:
            self.backend.commit(commit)
        self.backend.close()
        self.open()

    def apply(self, method: Method, req):
        return self.store.apply(method, req.SerializeToString())

    def grant(self, lease_id: int, ttl: int) -> R.LeaseGrantResponse:
        return self.apply(Method.LEASE_GRANT, R.LeaseGrantRequest(ID=lease_id, TTL=ttl))

    def revoke(self, lease_id: int) -> R.LeaseRevokeResponse:
        return self.apply(Method.LEASE_REVOKE, R.LeaseRevokeRequest(ID=lease_id))

    def checkpoint(self, *pairs: tuple[int, int]) -> R.LeaseCheckpointResponse:
        cps = [R.LeaseCheckpoint(ID=i, remaining_TTL=ttl) for i, ttl in pairs]
        return self.apply(Method.LEASE_CHECKPOINT, R.LeaseCheckpointRequest(checkpoints=cps))

    def put(self, key: bytes, value: bytes = b"", **kw) -> R.PutResponse:
        return self.apply(Method.PUT, R.PutRequest(key=key, value=value, **kw))

    def delete(self, key: bytes, end: bytes = b"", **kw) -> R.DeleteRangeResponse:
        return self.apply(Method.DELETE_RANGE, R.DeleteRangeRequest(key=key, range_end=end, **kw))

    def txn(self, compare=(), success=(), failure=()) -> R.TxnResponse:
        return self.apply(Method.TXN, R.TxnRequest(compare=compare, success=success, failure=failure))

    def keys(self, lease_id: int) -> set[bytes] | None:
        lease = self.table.get(lease_id)
        return None if lease is None else lease.keys

    def kvs(self) -> list[tuple[bytes, bytes, int, int]]:
        resp = self.store.range(R.RangeRequest(key=b"\0", range_end=b"\0"))
        return [(kv.key, kv.value, kv.mod_revision, kv.lease) for kv in resp.kvs]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path / "db")
    yield n
    n.backend.close()


def error_of(fn, *args, **kw) -> EtcdError:
    with pytest.raises(EtcdError) as info:
        fn(*args, **kw)
    return info.value


def put_op(key: bytes, value: bytes = b"", **kw) -> R.RequestOp:
    return Op(request_put=R.PutRequest(key=key, value=value, **kw))


def delete_op(key: bytes, end: bytes = b"", **kw) -> R.RequestOp:
    return Op(request_delete_range=R.DeleteRangeRequest(key=key, range_end=end, **kw))


def txn_op(success=()) -> R.RequestOp:
    return Op(request_txn=R.TxnRequest(success=success))


# -- grant / checkpoint -------------------------------------------------------------------------------


def test_grant_answers_the_granted_ttl_and_the_current_revision(node: Node) -> None:
    node.put(b"a", b"1")  # revision 2
    resp = node.grant(7, 1)
    assert (resp.ID, resp.TTL, resp.header.revision) == (7, 2, 2)  # etcd: grant 1 -> TTL 2
    assert node.grant(8, 60).TTL == 60
    assert node.store.revision == 2  # leases are not KV data: no revision taken
    assert node.store.lease_events == [("grant", 7, 2, 0), ("grant", 8, 60, 0)]


def test_grant_errors_leave_no_trace(node: Node) -> None:
    node.grant(7, 10)
    node.store.lease_events.clear()
    pending = node.backend.pending
    assert error_of(node.grant, 7, 10) == errors.LEASE_EXIST
    assert error_of(node.grant, 9, 9_000_000_001) == errors.LEASE_TTL_TOO_LARGE
    assert error_of(node.grant, 0, 10) == errors.LEASE_NOT_FOUND  # the proposer never sends 0
    assert node.store.lease_events == [] and node.backend.pending == pending
    assert node.table.ids() == [7]


def test_checkpoint_records_remaining_ttls_and_skips_unknown_leases(node: Node) -> None:
    node.grant(1, 300)
    node.grant(2, 300)
    node.store.lease_events.clear()
    resp = node.checkpoint((1, 240), (99, 5), (2, 120))
    assert resp.header.revision == 1
    assert node.table.get(1).remaining_ttl == 240 and node.table.get(2).remaining_ttl == 120
    # a checkpoint reaches the lease actor as a grant upsert: followers need it on promotion
    assert node.store.lease_events == [("grant", 1, 300, 240), ("grant", 2, 300, 120)]


def test_bad_lease_request_bytes_are_invalid_argument(node: Node) -> None:
    with pytest.raises(EtcdError) as info:
        node.store.apply(Method.LEASE_GRANT, b"\xff\xff\xff")
    assert info.value.code == Code.INVALID_ARGUMENT
    assert "LeaseGrantRequest" in info.value.message


# -- attachments ------------------------------------------------------------------------------------


def test_puts_and_deletes_keep_attachments(node: Node) -> None:
    node.grant(1, 10)
    node.grant(2, 10)
    node.put(b"a", b"1", lease=1)
    node.put(b"b", b"1", lease=1)
    assert node.keys(1) == {b"a", b"b"}
    node.put(b"a", b"2", lease=2)  # moves to the new lease
    assert node.keys(1) == {b"b"} and node.keys(2) == {b"a"}
    node.put(b"a", b"3", ignore_lease=True)  # keeps its lease
    assert node.keys(2) == {b"a"} and node.kvs()[0] == (b"a", b"3", 5, 2)
    node.put(b"a", b"4")  # no lease: detached
    assert node.keys(2) == set() and node.table.lease_of(b"a") == 0
    node.put(b"a", b"5", lease=2)
    node.delete(b"a", b"c")  # deletes detach
    assert node.keys(1) == set() and node.keys(2) == set()


def test_txn_ops_keep_attachments(node: Node) -> None:
    node.grant(1, 10)
    node.grant(2, 10)
    node.put(b"x", lease=2)
    node.txn(success=[put_op(b"a", lease=1), delete_op(b"x"), txn_op([put_op(b"b", lease=2)])])
    assert node.keys(1) == {b"a"} and node.keys(2) == {b"b"}


def test_put_with_an_unknown_lease_leaves_no_trace(node: Node) -> None:
    node.grant(1, 10)
    node.put(b"k", b"v", lease=1)  # 2
    node.store.events = []
    node.store.lease_events.clear()
    pending = node.backend.pending
    assert error_of(node.put, b"k", b"w", lease=99) == errors.LEASE_NOT_FOUND
    assert error_of(node.txn, success=[put_op(b"z"), put_op(b"k", lease=99)]) == errors.LEASE_NOT_FOUND
    assert node.store.revision == 2 and node.backend.pending == pending
    assert node.store.events == [] and node.store.lease_events == []
    assert node.kvs() == [(b"k", b"v", 2, 1)] and node.keys(1) == {b"k"} and 99 not in node.table


def test_a_txn_rolled_back_restores_attachments(node: Node) -> None:
    # the one failure found inside a txn (see test_mvcc): the delete's detach must be undone too
    node.grant(1, 10)
    node.grant(2, 10)
    node.put(b"k", b"v", lease=1)  # 2
    node.put(b"m", b"v", lease=1)  # 3
    ops = [put_op(b"m", b"w", lease=2), delete_op(b"k"), txn_op([put_op(b"k", ignore_value=True)])]
    assert error_of(node.txn, success=ops) == errors.KEY_NOT_FOUND
    assert node.keys(1) == {b"k", b"m"} and node.keys(2) == set()
    assert node.table.lease_of(b"m") == 1
    node.revoke(1)
    assert node.kvs() == []


# -- revoke -------------------------------------------------------------------------------------------


def test_revoke_deletes_every_attached_key_in_one_revision(node: Node) -> None:
    node.grant(1, 100)
    node.put(b"k2", b"v", lease=1)  # 2
    node.put(b"k1", b"v", lease=1)  # 3
    node.put(b"k3", b"v", lease=1)  # 4
    node.put(b"other", b"v")  # 5
    node.store.events = []
    node.store.lease_events.clear()
    resp = node.revoke(1)
    assert resp.header.revision == 6 and node.store.revision == 6
    deleted = [(kind, kv_pb2.KeyValue.FromString(row)) for kind, row in node.store.events]
    assert [(kind, kv.key, kv.mod_revision) for kind, kv in deleted] == [
        (EVENT_DELETE, b"k1", 6),
        (EVENT_DELETE, b"k2", 6),
        (EVENT_DELETE, b"k3", 6),
    ]
    assert all(kv == kv_pb2.KeyValue(key=kv.key, mod_revision=6) for _, kv in deleted)
    assert node.store.lease_events == [("revoke", 1)]
    assert node.kvs() == [(b"other", b"v", 5, 0)]
    assert 1 not in node.table and node.table.lease_of(b"k1") == 0
    assert error_of(node.revoke, 1) == errors.LEASE_NOT_FOUND
    # the history of the revoked keys is still readable below the revoke
    old = node.store.range(R.RangeRequest(key=b"k1", revision=5))
    assert [(kv.key, kv.lease) for kv in old.kvs] == [(b"k1", 1)]


def test_revoke_of_a_lease_without_keys_takes_no_revision(node: Node) -> None:
    node.put(b"a", b"1")  # 2
    node.grant(1, 100)
    node.put(b"b", lease=1)  # 3
    node.delete(b"b")  # 4: detached
    node.store.events = []
    assert node.revoke(1).header.revision == 4 and node.store.revision == 4
    assert node.store.events == []
    assert node.put(b"c").header.revision == 5


def test_a_key_moved_to_another_lease_survives_the_old_ones_revoke(node: Node) -> None:
    node.grant(1, 10)
    node.grant(2, 10)
    node.put(b"k", lease=1)
    node.put(b"k", lease=2)
    node.revoke(1)
    assert [kv[0] for kv in node.kvs()] == [b"k"]
    node.revoke(2)
    assert node.kvs() == []


# -- reads ----------------------------------------------------------------------------------------------


def test_time_to_live_and_leases(node: Node) -> None:
    node.grant(5, 100)
    node.grant(3, 30)
    node.put(b"b", lease=5)
    node.put(b"a", lease=5)  # revision 3
    ttl = node.store.lease_time_to_live(R.LeaseTimeToLiveRequest(ID=5, keys=True))
    assert (ttl.ID, ttl.grantedTTL, list(ttl.keys), ttl.header.revision) == (5, 100, [b"a", b"b"], 3)
    assert ttl.TTL == 100  # placeholder until the lease actor fills the real remaining time
    node.checkpoint((5, 40))
    assert node.store.lease_time_to_live(R.LeaseTimeToLiveRequest(ID=5)).TTL == 40
    assert list(node.store.lease_time_to_live(R.LeaseTimeToLiveRequest(ID=5)).keys) == []
    gone = node.store.lease_time_to_live(R.LeaseTimeToLiveRequest(ID=9, keys=True))
    assert gone == R.LeaseTimeToLiveResponse(ID=9, TTL=-1, header=R.ResponseHeader(revision=3))
    leases = node.store.lease_leases()
    assert [s.ID for s in leases.leases] == [3, 5] and leases.header.revision == 3


def test_a_kv_only_store_refuses_lease_requests(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"))
    store = MvccStore(backend, lease_exists={4}.__contains__)
    assert store.leases is None and store.lease_snapshot() == []
    store.apply(Method.PUT, R.PutRequest(key=b"k", lease=4).SerializeToString())
    with pytest.raises(EtcdError) as info:
        store.apply(Method.LEASE_GRANT, R.LeaseGrantRequest(ID=1, TTL=5).SerializeToString())
    assert info.value.code == Code.UNIMPLEMENTED
    backend.close()


def test_a_store_without_a_table_makes_its_own(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"))
    store = MvccStore(backend)
    resp = store.apply(Method.LEASE_GRANT, R.LeaseGrantRequest(ID=1, TTL=1).SerializeToString())
    assert resp.TTL == 2 and store.leases is not None and store.leases.exists(1)
    backend.close()


# -- restart --------------------------------------------------------------------------------------------


def test_restart_rebuilds_leases_attachments_and_checkpoints(node: Node) -> None:
    node.grant(1, 300)
    node.grant(2, 60)
    node.grant(3, 10)
    node.put(b"a", b"1", lease=1)
    node.put(b"b", b"1", lease=1)
    node.put(b"b", b"2", lease=2)  # moved
    node.put(b"c", b"1", lease=2)
    node.put(b"c", b"2")  # detached by a put without lease
    node.put(b"d", b"1", lease=2)
    node.delete(b"d")  # detached by a delete
    node.put(b"d", b"2")  # recreated without a lease
    node.put(b"e", b"1", lease=3)
    node.revoke(3)
    node.checkpoint((1, 250))
    node.reopen(commit=20)
    assert node.table.ids() == [1, 2]
    assert node.keys(1) == {b"a"} and node.keys(2) == {b"b"}
    assert node.table.get(1).remaining_ttl == 250 and node.table.get(2).remaining_ttl == 0
    assert node.store.lease_snapshot() == [("grant", 1, 300, 250), ("grant", 2, 60, 0)]
    assert node.store.lease_events == []
    # and the rebuilt attachments act: a revoke after the restart deletes in one revision
    rev = node.store.revision
    node.store.events = []
    assert node.revoke(1).header.revision == rev + 1
    assert [kind for kind, _ in node.store.events] == [EVENT_DELETE]
    assert [kv[0] for kv in node.kvs()] == [b"b", b"c", b"d"]


def test_restart_after_compaction_still_finds_attachments(node: Node) -> None:
    node.grant(1, 300)
    node.put(b"a", b"1", lease=1)
    node.put(b"a", b"2", ignore_lease=True)
    node.put(b"b", b"1")
    node.apply(Method.COMPACT, R.CompactionRequest(revision=node.store.revision))
    node.reopen(commit=5)
    assert node.keys(1) == {b"a"}
    node.store.events = []
    node.revoke(1)
    assert [(kind, kv_pb2.KeyValue.FromString(row).key) for kind, row in node.store.events] == [
        (EVENT_DELETE, b"a")
    ]


def test_uncommitted_lease_changes_are_lost_together_with_their_kv_rows(node: Node) -> None:
    node.grant(1, 300)
    node.put(b"a", b"1", lease=1)
    node.reopen(commit=3)
    node.revoke(1)  # never committed: both the lease row delete and the tombstone are lost
    node.reopen()
    assert node.keys(1) == {b"a"} and [kv[0] for kv in node.kvs()] == [b"a"]


def test_put_events_carry_the_lease(node: Node) -> None:
    node.grant(1, 10)
    node.store.events = []
    node.put(b"a", b"1", lease=1)
    ((kind, row),) = node.store.events
    assert kind == EVENT_PUT and kv_pb2.KeyValue.FromString(row).lease == 1
