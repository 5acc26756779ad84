"""The auth state machine and its pure helpers: permission intervals (randomized against a
brute-force oracle, seed printed), the per-user limiter, simple tokens, and the store's apply rules
and persistence."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import bcrypt
import pytest

from actors import errors
from actors.auth.limiter import FailureLimiter
from actors.auth.perms import READ, READWRITE, WRITE, RangePermissions
from actors.auth.store import AuthStore, fingerprint
from actors.auth.tokens import SimpleTokens, TokenConfigError, parse_duration, token_provider
from actors.errors import EtcdError
from actors.proto import auth_pb2, rpc_pb2
from actors.protocol import Method, pack_blobs
from actors.storage.backend import Backend

# -- permission intervals -----------------------------------------------------------------------------

# Permissions and requests name keys of length <= 2 over "abc"; their boundaries (a key, a range
# end, a key + "\x00") have length <= 3. Coverage can only change at a boundary, and every segment
# between two boundaries contains its first boundary, so checking every key of length <= 3 over
# "\x00abc" decides coverage exactly.
ALPHABET = b"abc"


def _keys(alphabet: bytes, longest: int) -> list[bytes]:
    keys = [b""]
    for length in range(1, longest + 1):
        frontier = [k for k in keys if len(k) == length - 1]
        keys += [k + bytes([c]) for k in frontier for c in alphabet]
    return sorted(set(keys))


NAMES = _keys(ALPHABET, 2)[1:]
UNIVERSE = _keys(b"\x00" + ALPHABET, 3)


def _members(key: bytes, range_end: bytes) -> list[bytes]:
    if range_end == b"\x00":
        return [k for k in UNIVERSE if k >= key]
    if not range_end:
        return [key]
    return [k for k in UNIVERSE if key <= k < range_end]


def _random_key(rng: random.Random) -> bytes:
    return rng.choice(NAMES)


def _random_range(rng: random.Random) -> tuple[bytes, bytes]:
    key = _random_key(rng)
    shape = rng.random()
    if shape < 0.3:
        return key, b""
    if shape < 0.4:
        return key, b"\x00"
    return key, max(key, _random_key(rng)) + rng.choice([b"", b"a"])


def test_range_permissions_match_a_brute_force_oracle() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"seed={seed}")
    rng = random.Random(seed)
    for _ in range(400):
        perms = []
        for _ in range(rng.randint(0, 4)):
            key, end = _random_range(rng)
            perms.append(
                auth_pb2.Permission(key=key, range_end=end, permType=rng.choice([READ, WRITE, READWRITE]))
            )
        table = RangePermissions(perms)
        for _ in range(20):
            kind = rng.choice([READ, WRITE])
            granted = {
                k for p in perms if p.permType in (kind, READWRITE) for k in _members(p.key, p.range_end)
            }
            key, end = _random_range(rng)
            wanted = _members(key, end)
            if not wanted:
                continue  # an empty range (end <= key): etcd's interval tree has no answer either
            expected = all(k in granted for k in wanted)
            assert table.allows(kind, key, end) == expected, (seed, perms, kind, key, end)


def test_prefix_and_from_key_permissions() -> None:
    table = RangePermissions(
        [
            auth_pb2.Permission(key=b"/app/", range_end=b"/app0", permType=READWRITE),
            auth_pb2.Permission(key=b"z", range_end=b"\x00", permType=READ),
        ]
    )
    assert table.allows(WRITE, b"/app/x", b"")
    assert table.allows(READ, b"/app/", b"/app0")
    assert not table.allows(READ, b"/app/", b"/app1")
    assert not table.allows(WRITE, b"/other", b"")
    assert table.allows(READ, b"zz", b"\x00")
    assert not table.allows(WRITE, b"zz", b"")


# -- limiter and tokens --------------------------------------------------------------------------------


def test_limiter_gives_a_burst_then_a_rate_per_user() -> None:
    limiter = FailureLimiter(burst=3, rate=1.0)
    assert [limiter.take("u", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.take("other", 0.0)  # users are independent
    assert not limiter.take("u", 0.5)
    assert limiter.take("u", 1.1)
    limiter.give_back("u", 1.1)  # a right password does not count
    assert limiter.take("u", 1.1)


def test_simple_tokens_expire_unless_used_and_die_with_their_user() -> None:
    tokens = SimpleTokens(ttl=10)
    token = tokens.assign("svc", "abcdefghijklmnop", 42, now=0.0)
    assert token == "abcdefghijklmnop.42"
    assert tokens.identify(token, 7, now=9.0, wall_now=0.0) == ("svc", 7)
    assert tokens.identify(token, 7, now=18.0, wall_now=0.0) == ("svc", 7)  # the use at 9 renewed it
    assert tokens.identify(token, 7, now=28.5, wall_now=0.0) is None
    other = tokens.assign("svc", "x" * 16, 43, now=0.0)
    tokens.invalidate_user("svc")
    assert tokens.identify(other, 7, now=1.0, wall_now=0.0) is None
    assert len(tokens) == 0


def test_token_options_are_checked() -> None:
    assert parse_duration("5m") == 300.0
    assert parse_duration("1h30m") == 5400.0
    for bad in ("jwt", "jwt,sign-method=HS256,pub-key=x", "opaque", "simple,ttl=5", "jwt,bogus=1"):
        with pytest.raises(TokenConfigError):
            token_provider(bad)
    with pytest.raises(TokenConfigError, match="cannot read"):
        token_provider("jwt,sign-method=ES256,pub-key=/nonexistent.pem")


# -- the store -------------------------------------------------------------------------------------------

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(4))


@pytest.fixture
def backend(tmp_path: Path):
    b = Backend(str(tmp_path / "kv"))
    yield b
    b.close()


def apply(store: AuthStore, method: Method, request: object, user: str = "", index: int = 1) -> object:
    body = request.SerializeToString()  # type: ignore[attr-defined]
    if method in (Method.USER_ADD, Method.USER_CHANGE_PASSWORD):
        body = pack_blobs((body, HASH))
    return store.apply(method, body, user, index, now=0.0)


def enabled_store(backend: Backend) -> AuthStore:
    store = AuthStore(backend)
    apply(store, Method.USER_ADD, rpc_pb2.AuthUserAddRequest(name="root"))
    apply(store, Method.ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="app"))
    apply(store, Method.USER_ADD, rpc_pb2.AuthUserAddRequest(name="svc"))
    perm = auth_pb2.Permission(key=b"/app/", range_end=b"/app0", permType=READWRITE)
    apply(store, Method.ROLE_GRANT_PERMISSION, rpc_pb2.AuthRoleGrantPermissionRequest(name="app", perm=perm))
    apply(store, Method.USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="svc", role="app"))
    with pytest.raises(EtcdError) as refused:
        apply(store, Method.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    assert refused.value == errors.ROOT_ROLE_NOT_EXIST
    apply(store, Method.USER_GRANT_ROLE, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    apply(store, Method.AUTH_ENABLE, rpc_pb2.AuthEnableRequest())
    return store


def test_checks_follow_etcd_rules(backend: Backend) -> None:
    store = enabled_store(backend)
    rev = store.revision
    store.check("svc", rev, WRITE, b"/app/x")
    store.check("root", rev, WRITE, b"/anything")
    for args, error in [
        (("svc", rev, WRITE, b"/other"), errors.PERMISSION_DENIED),
        (("", 0, READ, b"/app/x"), errors.USER_EMPTY),
        (("svc", rev - 1, READ, b"/app/x"), errors.AUTH_OLD_REVISION),
        (("ghost", rev, READ, b"/app/x"), errors.PERMISSION_DENIED),
    ]:
        with pytest.raises(EtcdError) as e:
            store.check(*args)
        assert e.value == error
    txn = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"/app/x")],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/app/y"))],
        failure=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/secret"))],
    )
    with pytest.raises(EtcdError) as e:  # every branch is checked, not only the one taken
        store.check_request(Method.TXN, txn.SerializeToString(), "svc", rev, lambda lease: [])
    assert e.value == errors.PERMISSION_DENIED
    revoke = rpc_pb2.LeaseRevokeRequest(ID=7).SerializeToString()
    store.check_request(Method.LEASE_REVOKE, revoke, "svc", rev, lambda lease: [b"/app/a"])
    with pytest.raises(EtcdError):
        store.check_request(Method.LEASE_REVOKE, revoke, "svc", rev, lambda lease: [b"/app/a", b"/x"])


def test_admin_only_and_self_service(backend: Backend) -> None:
    store = enabled_store(backend)
    with pytest.raises(EtcdError) as e:
        apply(store, Method.ROLE_ADD, rpc_pb2.AuthRoleAddRequest(name="r2"), user="svc")
    assert e.value == errors.PERMISSION_DENIED
    assert list(apply(store, Method.USER_GET, rpc_pb2.AuthUserGetRequest(name="svc"), user="svc").roles) == [
        "app"
    ]
    with pytest.raises(EtcdError):
        apply(store, Method.USER_GET, rpc_pb2.AuthUserGetRequest(name="root"), user="svc")
    apply(store, Method.ROLE_GET, rpc_pb2.AuthRoleGetRequest(role="app"), user="svc")
    with pytest.raises(EtcdError) as e:
        apply(store, Method.USER_DELETE, rpc_pb2.AuthUserDeleteRequest(name="root"), user="root")
    assert e.value == errors.INVALID_AUTH_MGMT


def test_revoking_a_role_bumps_the_revision_and_denies(backend: Backend) -> None:
    store = enabled_store(backend)
    before = store.revision
    apply(store, Method.USER_REVOKE_ROLE, rpc_pb2.AuthUserRevokeRoleRequest(name="svc", role="app"), "root")
    assert store.revision == before + 1
    with pytest.raises(EtcdError) as e:
        store.check("svc", before, WRITE, b"/app/x")  # a request checked before the revoke
    assert e.value == errors.AUTH_OLD_REVISION
    with pytest.raises(EtcdError) as e:
        store.check("svc", store.revision, WRITE, b"/app/x")
    assert e.value == errors.PERMISSION_DENIED


def test_authenticate_entry_needs_the_hash_that_was_checked(backend: Backend) -> None:
    store = enabled_store(backend)
    body = pack_blobs((b"svc", b"p" * 16, fingerprint(HASH)))
    answer = store.apply(Method.AUTHENTICATE, body, "", 99, now=0.0)
    assert answer.token == "p" * 16 + ".99"
    assert store.identify(answer.token, now=1.0, wall_now=0.0) == ("svc", store.revision)
    stale = pack_blobs((b"svc", b"q" * 16, fingerprint(b"another hash")))  # the password changed since
    with pytest.raises(EtcdError) as e:
        store.apply(Method.AUTHENTICATE, stale, "", 100, now=0.0)
    assert e.value == errors.AUTH_FAILED
    apply(store, Method.USER_DELETE, rpc_pb2.AuthUserDeleteRequest(name="svc"), user="root")
    with pytest.raises(EtcdError) as e:
        store.identify(answer.token, now=1.0, wall_now=0.0)
    assert e.value == errors.INVALID_AUTH_TOKEN


def test_state_survives_a_restart(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "kv"))
    store = enabled_store(backend)
    revision = store.revision
    backend.commit(10)
    backend.close()
    backend = Backend(str(tmp_path / "kv"))
    try:
        again = AuthStore(backend)
        assert again.enabled and again.revision == revision
        assert sorted(again.users) == ["root", "svc"] and sorted(again.roles) == ["app"]
        assert again.users["svc"].password == HASH
        again.check("svc", revision, WRITE, b"/app/x")
    finally:
        backend.close()


def test_gate_holds_tokens_this_member_has_not_applied_yet(backend: Backend) -> None:
    from actors.auth.gate import AuthGate, TokenNotApplied

    store = enabled_store(backend)
    gate = AuthGate(store, cluster_id=1, member_id=2)
    store.applied_index = 10
    body = rpc_pb2.PutRequest(key=b"/app/x").SerializeToString()
    with pytest.raises(TokenNotApplied):  # issued at index 11 through another member
        gate.tag(Method.PUT, body, "a" * 16 + ".11")
    with pytest.raises(EtcdError) as e:  # index 9 is applied here: a token nobody issued
        gate.tag(Method.PUT, body, "a" * 16 + ".9")
    assert e.value == errors.INVALID_AUTH_TOKEN and not isinstance(e.value, TokenNotApplied)
    token = store.tokens.assign("svc", "a" * 16, 11, now=time.monotonic())
    method, tagged = gate.tag(Method.PUT, body, token)
    assert method == Method.PUT | 0x80 and tagged.endswith(body)
    denial = gate.watch_denial(
        rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/other")).SerializeToString(),
        token,
    )
    response = rpc_pb2.WatchResponse.FromString(denial)
    assert response.canceled and response.created and response.watch_id == -1
    assert response.cancel_reason == "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
