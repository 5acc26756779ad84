"""The member table (pure): applying conf changes and publishes, persistence rows, a leader's checks."""

from __future__ import annotations

import pytest
import zmq

from actors import errors
from actors.proto import rpc_pb2
from actors.protocol import Method
from actors.raft.confchange import ConfChange, ConfChangeType, LearnerNotReady, MemberExists
from actors.raft.members import (
    MemberTable,
    change_response,
    decode_context,
    encode_context,
    etcd_error,
    new_member_id,
)

CLUSTER = 0xC1


def founders() -> MemberTable:
    return MemberTable(
        rpc_pb2.Member(ID=i, name=f"n{i}", peerURLs=[f"http://127.0.0.1:{2380 + i}"]) for i in (1, 2, 3)
    )


def add(table: MemberTable, url: str, learner: bool, key: int = 7, salt: int = 0) -> ConfChange:
    body = rpc_pb2.MemberAddRequest(peerURLs=[url], isLearner=learner).SerializeToString()
    return table.conf_change(Method.MEMBER_ADD, body, key, CLUSTER, salt)


def request(method: Method, **fields) -> bytes:
    cls = {
        Method.MEMBER_REMOVE: rpc_pb2.MemberRemoveRequest,
        Method.MEMBER_UPDATE: rpc_pb2.MemberUpdateRequest,
        Method.MEMBER_PROMOTE: rpc_pb2.MemberPromoteRequest,
    }[method]
    return cls(**fields).SerializeToString()


def test_learner_added_promoted_updated_removed_and_rows_round_trip() -> None:
    table = founders()
    change = add(table, "http://127.0.0.1:2390", learner=True)
    assert change.type == ConfChangeType.ADD_LEARNER
    new = change.node_id
    table.apply_change(ConfChange(change.type, new, change.context, index=10))
    assert table.get(new).isLearner and table.get(new).name == ""
    key, response = change_response(table, change)
    assert (key, response.member.ID, len(response.members)) == (7, new, 4)

    table.publish(rpc_pb2.Member(ID=new, name="n4", clientURLs=["http://127.0.0.1:2490"]))
    promote = table.conf_change(Method.MEMBER_PROMOTE, request(Method.MEMBER_PROMOTE, ID=new), 8, CLUSTER, 0)
    table.apply_change(promote)
    assert not table.get(new).isLearner
    update = table.conf_change(
        Method.MEMBER_UPDATE,
        request(Method.MEMBER_UPDATE, ID=new, peerURLs=["http://127.0.0.1:2391"]),
        9,
        CLUSTER,
        0,
    )
    table.apply_change(update)
    assert list(table.get(new).peerURLs) == ["http://127.0.0.1:2391"]
    assert table.get(new).name == "n4"  # an update keeps the published attributes

    rows = table.apply_change(
        table.conf_change(Method.MEMBER_REMOVE, request(Method.MEMBER_REMOVE, ID=1), 10, CLUSTER, 0)
    )
    assert (b"member/" + (1).to_bytes(8, "big"), None) in rows
    assert table.get(1) is None and 1 in table.removed
    again = MemberTable.from_rows([(k, v) for k, v in table.rows() if v is not None])
    assert again.listing() == table.listing() and again.removed == {1}
    # a removed id never comes back, even through a stale add
    table.apply_change(ConfChange(ConfChangeType.ADD_VOTER, 1, encode_context(0, rpc_pb2.Member(ID=1))))
    assert table.get(1) is None
    with pytest.raises(errors.EtcdError) as e:
        table.conf_change(Method.MEMBER_REMOVE, request(Method.MEMBER_REMOVE, ID=1), 11, CLUSTER, 0)
    assert e.value == errors.MEMBER_NOT_FOUND


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("foo", errors.MEMBER_BAD_URLS),
        ("http://127.0.0.1", errors.MEMBER_BAD_URLS),
        ("http://127.0.0.1:1/path", errors.MEMBER_BAD_URLS),
        ("ftp://127.0.0.1:1", errors.MEMBER_BAD_URLS),
        ("http://127.0.0.1:2381", errors.PEER_URL_EXIST),
    ],
)
def test_add_refused_with_etcds_errors(url: str, error: errors.EtcdError) -> None:
    with pytest.raises(errors.EtcdError) as e:
        add(founders(), url, learner=False)
    assert e.value == error


def test_one_learner_at_most_and_started_members_checked() -> None:
    table = founders()
    change = add(table, "http://127.0.0.1:2390", learner=True)
    table.apply_change(change)
    with pytest.raises(errors.EtcdError) as e:
        add(table, "http://127.0.0.1:2391", learner=True)
    assert e.value == errors.TOO_MANY_LEARNERS
    unstarted = MemberTable(rpc_pb2.Member(ID=i, peerURLs=[f"http://h:{i}"]) for i in (1, 2, 3))
    with pytest.raises(errors.EtcdError) as e:
        add(unstarted, "http://127.0.0.1:2390", learner=False)
    assert e.value == errors.MEMBER_NOT_ENOUGH_STARTED
    add(unstarted, "http://127.0.0.1:2390", learner=True)  # a learner does not need a quorum started
    with pytest.raises(errors.EtcdError) as e:
        founders().conf_change(Method.MEMBER_PROMOTE, request(Method.MEMBER_PROMOTE, ID=2), 1, CLUSTER, 0)
    assert e.value == errors.MEMBER_NOT_LEARNER


def test_same_urls_in_the_same_second_clash_like_etcd() -> None:
    assert new_member_id(["http://a:1"], CLUSTER, 100) == new_member_id(["http://a:1"], CLUSTER, 100)
    assert new_member_id(["http://a:1"], CLUSTER, 100) != new_member_id(["http://a:1"], CLUSTER, 101)
    table = founders()
    table.apply_change(add(table, "http://127.0.0.1:2390", learner=True, salt=5))
    with pytest.raises(errors.EtcdError) as e:
        add(table, "http://127.0.0.1:2390", learner=True, salt=6)  # another second: the URL is taken
    assert e.value == errors.PEER_URL_EXIST
    with pytest.raises(errors.EtcdError) as e:
        add(table, "http://127.0.0.1:2390", learner=True, salt=5)
    assert e.value == errors.MEMBER_EXIST


def test_core_refusals_map_to_etcd_texts_and_bad_contexts_are_refused() -> None:
    assert etcd_error(LearnerNotReady("x")) == errors.LEARNER_NOT_READY
    assert etcd_error(MemberExists("x")) == errors.MEMBER_EXIST
    with pytest.raises(ValueError):
        decode_context(b"\x01")
    with pytest.raises(ValueError):
        decode_context(b"\x00" * 8 + b"\xff\xff")
    with pytest.raises(errors.EtcdError) as e:
        founders().conf_change(Method.MEMBER_PROMOTE, b"\xff\xff", 1, CLUSTER, 0)
    assert e.value.code == errors.Code.INVALID_ARGUMENT


def test_curve_key_travels_with_the_add_and_leaves_with_the_remove() -> None:
    table = founders()
    configured = {1: zmq.curve_keypair()[0], 2: zmq.curve_keypair()[0]}  # n3: no key configured
    assert table.curve_keys(configured) == configured
    public = zmq.curve_keypair()[0].decode()
    body = rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:2390"], curvePublicKey=public)
    change = table.conf_change(Method.MEMBER_ADD, body.SerializeToString(), 7, CLUSTER, 0)
    assert decode_context(change.context)[1].curvePublicKey == public
    assert table.curve_keys(configured) == configured  # not admitted before the entry applies
    rows = table.apply_change(change)
    assert (
        MemberTable.from_rows([r for r in rows if r[1] is not None]).get(change.node_id).curvePublicKey
        == public
    )
    assert change_response(table, change)[1].member.curvePublicKey == public
    assert table.curve_keys(configured) == {**configured, change.node_id: public.encode()}
    remove = request(Method.MEMBER_REMOVE, ID=change.node_id)
    table.apply_change(table.conf_change(Method.MEMBER_REMOVE, remove, 8, CLUSTER, 0))
    table.apply_change(
        table.conf_change(Method.MEMBER_REMOVE, request(Method.MEMBER_REMOVE, ID=1), 9, CLUSTER, 0)
    )
    assert table.curve_keys(configured) == {2: configured[2]}  # removed members: refused


def test_member_add_with_a_malformed_curve_key_is_refused() -> None:
    for bad in ("short", "x" * 39 + "~"):
        body = rpc_pb2.MemberAddRequest(
            peerURLs=["http://127.0.0.1:2390"], curvePublicKey=bad
        ).SerializeToString()
        with pytest.raises(errors.EtcdError, match="curvePublicKey") as info:
            founders().conf_change(Method.MEMBER_ADD, body, 7, CLUSTER, 0)
        assert info.value.code == errors.Code.INVALID_ARGUMENT
