"""The maintenance logic without a server: alarms, the space quota's arithmetic, HashKV and Hash.

The hashes are checked against real etcd byte for byte in test_maintenance.py; here they are held
to what a corruption check needs: equal for stores that applied the same operations (whatever
happened to their files: restarts, defragmentation), different when one row differs.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from actors import errors
from actors.errors import EtcdError
from actors.proto import rpc_pb2 as R
from actors.protocol import Method
from actors.storage.alarms import CORRUPT_CLUSTER, AlarmTable, alarm_text
from actors.storage.backend import Backend
from actors.storage.hashes import etcd_revision, hash_kv
from actors.storage.keyindex import revision_key
from actors.storage.mvcc import MvccStore
from actors.storage.quota import DEFAULT_QUOTA_BYTES, SpaceQuota, request_cost

GET, ACTIVATE, DEACTIVATE = R.AlarmRequest.GET, R.AlarmRequest.ACTIVATE, R.AlarmRequest.DEACTIVATE


def alarm(table: AlarmTable, action: int, member: int = 0, kind: int = R.NONE) -> list[tuple[int, int]]:
    resp = table.apply(R.AlarmRequest(action=action, memberID=member, alarm=kind).SerializeToString())
    return [(a.memberID, a.alarm) for a in resp.alarms]


def test_alarms_activate_list_deactivate_and_survive_a_restart(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path))
    table = AlarmTable(backend)
    assert alarm(table, GET) == []
    assert alarm(table, ACTIVATE, 7, R.NOSPACE) == [(7, R.NOSPACE)]
    assert alarm(table, ACTIVATE, 7, R.NOSPACE) == [(7, R.NOSPACE)]  # again: reported, not doubled
    assert alarm(table, ACTIVATE, 3, R.NOSPACE) == [(3, R.NOSPACE)]
    assert alarm(table, ACTIVATE, 3, R.CORRUPT) == [(3, R.CORRUPT)]
    assert alarm(table, GET) == [(3, R.NOSPACE), (7, R.NOSPACE), (3, R.CORRUPT)]
    assert alarm(table, GET, 99, R.CORRUPT) == [(3, R.CORRUPT)]  # GET filters by type, not member
    assert alarm(table, DEACTIVATE, 3, R.CORRUPT) == [(3, R.CORRUPT)]
    assert alarm(table, DEACTIVATE, 3, R.CORRUPT) == []  # not active: nothing to report
    backend.commit(5)
    backend.close()
    backend = Backend(str(tmp_path))
    assert alarm(AlarmTable(backend), GET) == [(3, R.NOSPACE), (7, R.NOSPACE)]
    backend.close()


def test_alarm_requests_etcd_would_crash_on_are_refused(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path))
    table = AlarmTable(backend)
    for request in (
        R.AlarmRequest(action=5, memberID=1, alarm=R.NOSPACE),  # etcd 3.4 panics on this one
        R.AlarmRequest(action=ACTIVATE, memberID=1, alarm=9),
        R.AlarmRequest(action=ACTIVATE, memberID=1, alarm=R.NONE),
    ):
        with pytest.raises(EtcdError) as e:
            table.apply(request.SerializeToString())
        assert e.value.code == errors.Code.INVALID_ARGUMENT
    with pytest.raises(EtcdError):
        table.apply(b"\xff\xff")
    assert table.active() == []
    backend.close()


def _txn(*ops: R.RequestOp) -> bytes:
    return R.TxnRequest(success=list(ops)).SerializeToString()


def test_nospace_refuses_what_etcd_capped_applier_refuses(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path))
    table = AlarmTable(backend)
    put = R.RequestOp(request_put=R.PutRequest(key=b"k", value=b"v"))
    get = R.RequestOp(request_range=R.RangeRequest(key=b"k"))
    delete = R.RequestOp(request_delete_range=R.DeleteRangeRequest(key=b"k"))
    cases = {
        "put": (Method.PUT, b""),
        "txn put": (Method.TXN, _txn(get, put)),
        "txn get": (Method.TXN, _txn(get)),
        "txn delete": (Method.TXN, _txn(delete)),
        "delete": (Method.DELETE_RANGE, b""),
        "compact": (Method.COMPACT, b""),
        "grant": (Method.LEASE_GRANT, b""),
        "revoke": (Method.LEASE_REVOKE, b""),
        "checkpoint": (Method.LEASE_CHECKPOINT, b""),
    }
    assert all(table.refusal(*case) is None for case in cases.values())
    alarm(table, ACTIVATE, 1, R.NOSPACE)
    refused = {name for name, case in cases.items() if table.refusal(*case) == errors.NO_SPACE}
    assert refused == {"put", "txn put", "grant"}
    alarm(table, ACTIVATE, 2, R.CORRUPT)
    corrupt = {name for name, case in cases.items() if table.refusal(*case) == CORRUPT_CLUSTER}
    assert corrupt == {"put", "txn put", "txn get", "txn delete", "delete", "compact", "grant", "revoke"}
    assert alarm_text(R.NOSPACE, 42) == "memberID:42 alarm:NOSPACE "
    backend.close()


def test_quota_costs_are_etcds() -> None:
    put = R.PutRequest(key=b"abc", value=b"x" * 100)
    assert request_cost(Method.PUT, put) == 256 + 3 + 100
    small = R.RequestOp(request_put=R.PutRequest(key=b"a", value=b"1"))
    txn = R.TxnRequest(success=[small, small], failure=[R.RequestOp(request_put=put)])
    assert request_cost(Method.TXN, txn) == 2 * (256 + 2)  # the costlier branch
    txn = R.TxnRequest(success=[small], failure=[R.RequestOp(request_put=put)])
    assert request_cost(Method.TXN, txn) == 256 + 3 + 100
    assert request_cost(Method.TXN, R.TxnRequest(success=[small, small])) == 2 * (256 + 2)
    assert request_cost(Method.LEASE_GRANT, R.LeaseGrantRequest(TTL=5)) == 64
    assert request_cost(Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"a")) == 0


def test_quota_admits_below_the_limit_and_counts_requests_in_flight() -> None:
    quota = SpaceQuota(10_000)
    put = R.PutRequest(key=b"k", value=b"v" * 743)  # costs 1000
    quota.report(7_000)
    assert quota.fits(Method.PUT, put)  # 7000 + 1000 < 10000
    quota.charge(1, Method.PUT, put)
    quota.charge(2, Method.PUT, put)  # 7000 + 2 x 1000 in flight
    assert not quota.fits(Method.PUT, put)  # would reach the limit: etcd's test is size + cost < quota
    assert quota.fits(Method.DELETE_RANGE, R.DeleteRangeRequest(key=b"k"))  # costs nothing
    quota.settle(1)
    assert quota.fits(Method.PUT, put)
    quota.settle(1)  # settling twice (a late result) changes nothing
    quota.charge(3, Method.PUT, put)
    assert not quota.fits(Method.PUT, put)
    quota.report(1_000)
    assert quota.fits(Method.PUT, put)
    assert SpaceQuota(0).limit == DEFAULT_QUOTA_BYTES
    unlimited = SpaceQuota(-1)
    unlimited.report(1 << 60)
    assert unlimited.fits(Method.PUT, put)


def test_etcd_row_key_layout() -> None:
    assert etcd_revision(revision_key(5, 2)) == (5).to_bytes(8, "big") + b"_" + (2).to_bytes(8, "big")
    assert etcd_revision(revision_key(5, 2) + b"t").endswith(b"t")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = 0
        self.open()

    def open(self) -> None:
        self.backend = Backend(str(self.path))
        self.store = MvccStore(self.backend, lease_exists=lambda _: False)
        self.store.watch_events = None

    def apply(self, method: Method, request: object) -> None:
        with contextlib.suppress(EtcdError):  # refused requests are part of a history too
            self.store.apply(method, request.SerializeToString())
        self.index += 1
        self.backend.commit(self.index)

    def hash(self, rev: int = 0) -> int:
        return self.store.hash_kv(rev)[0]

    def close(self) -> None:
        self.backend.close()


def random_ops(rng: random.Random, n: int) -> list[tuple[Method, object]]:
    ops: list[tuple[Method, object]] = []
    for i in range(n):
        key = f"k{rng.randrange(12)}".encode()
        roll = rng.random()
        if roll < 0.55:
            ops.append((Method.PUT, R.PutRequest(key=key, value=f"v{i}".encode())))
        elif roll < 0.75:
            end = b"k9" if rng.random() < 0.3 else b""
            ops.append((Method.DELETE_RANGE, R.DeleteRangeRequest(key=key, range_end=end)))
        elif roll < 0.9:
            put = R.RequestOp(request_put=R.PutRequest(key=key, value=b"t"))
            other = R.RequestOp(
                request_delete_range=R.DeleteRangeRequest(key=b"k11" if key != b"k11" else b"k10")
            )
            ops.append((Method.TXN, R.TxnRequest(success=[put, other])))
        else:
            ops.append((Method.COMPACT, None))  # revision chosen when applied
    return ops


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_hash_kv_is_equal_for_equal_histories_and_catches_a_changed_row(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    print(f"seed={seed}")
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    for method, request in random_ops(rng, 300):
        if method == Method.COMPACT:
            back = rng.randrange(0, 5)
            request = R.CompactionRequest(revision=max(1, a.store.revision - back))
        a.apply(method, request)
        b.apply(method, request)
        if rng.random() < 0.05:
            b.close()  # a restart rebuilds the index from the rows: the hash must not move
            b.open()
        if rng.random() < 0.03:
            b.backend.defragment()
    assert a.store.revision == b.store.revision, f"seed={seed}"
    compact, current = a.store.compact_revision, a.store.revision
    for rev in {0, current, max(compact, 1), (compact + current) // 2}:
        if rev and rev <= compact:
            continue
        assert a.hash(rev) == b.hash(rev), f"seed={seed} rev={rev}"
    with pytest.raises(EtcdError) as e:
        a.hash(current + 1)
    assert e.value == errors.FUTURE_REV
    if compact > 0:
        with pytest.raises(EtcdError) as e:
            a.hash(compact)
        assert e.value == errors.COMPACTED
    # one changed value in one row: the check must see it
    row, value = next(iter(b.backend.scan_kv(revision_key(max(compact, 0) + 1))))
    b.backend.put_kv(row, value + b"!")
    b.backend.commit(b.index)
    assert a.hash() != b.hash(), f"seed={seed}"
    a.close()
    b.close()


def test_hash_kv_skips_rows_a_compaction_would_drop(tmp_path: Path) -> None:
    """etcd's rule: at or below the compact revision, only the revisions ``Keep(rev)`` names count."""
    s = Store(tmp_path)
    for value in (b"1", b"2", b"3"):
        s.apply(Method.PUT, R.PutRequest(key=b"a", value=value))  # revisions 2, 3, 4
    s.apply(Method.PUT, R.PutRequest(key=b"b", value=b"x"))  # 5
    s.apply(Method.COMPACT, R.CompactionRequest(revision=3))  # keeps a@3 on disk
    rows = list(s.backend.scan_kv())
    assert len(rows) == 3
    keep = {revision_key(4), revision_key(5)}  # at revision 5, a@3 is superseded by a@4
    assert s.hash(5) == hash_kv(iter(rows[1:]), keep, 3)
    assert s.hash(5) != hash_kv(iter(rows), set(), 3)  # with a@3 it would differ
    s.close()
