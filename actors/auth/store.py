"""The replicated auth state (etcd's auth/store.go): users, roles, permissions, on/off, revision.

It changes only by applying raft entries, in log order, on every member alike; rows go into the
storage backend's pending batch (column family ``auth``) with the KV rows of the same turn. Every
change that can take a permission away bumps :attr:`AuthStore.revision`; a request carries the
revision its token was checked at, and one checked before a change is refused after it ("revision
of auth store is old"), so a revoked permission is never used once the revoke is applied.

Rows: ``user/<name>`` -> ``authpb.User``, ``role/<name>`` -> ``authpb.Role``, ``enabled`` -> 0/1,
``revision`` -> u64. Users and roles are kept in memory too (a handful of rows; read per request).

Entries with a body cairn builds itself (never a client's bytes, see :mod:`actors.auth.actor`):
UserAdd and UserChangePassword carry ``pack_blobs((request without password, bcrypt hash))``,
Authenticate carries ``pack_blobs((name, proposed token, password hash fingerprint))``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from google.protobuf.message import DecodeError, Message

from actors import errors
from actors.auth.perms import READ, WRITE, RangePermissions
from actors.auth.tokens import SimpleTokens, TokenProvider
from actors.errors import EtcdError
from actors.proto import auth_pb2, rpc_pb2
from actors.protocol import Method, unpack_blobs
from actors.storage.backend import AUTH, Backend

ROOT = "root"
ENABLED = b"enabled"
REVISION = b"revision"
USER_PREFIX = b"user/"
ROLE_PREFIX = b"role/"

REQUESTS: dict[int, type[Message]] = {
    Method.AUTH_ENABLE: rpc_pb2.AuthEnableRequest,
    Method.AUTH_DISABLE: rpc_pb2.AuthDisableRequest,
    Method.USER_ADD: rpc_pb2.AuthUserAddRequest,
    Method.USER_GET: rpc_pb2.AuthUserGetRequest,
    Method.USER_LIST: rpc_pb2.AuthUserListRequest,
    Method.USER_DELETE: rpc_pb2.AuthUserDeleteRequest,
    Method.USER_CHANGE_PASSWORD: rpc_pb2.AuthUserChangePasswordRequest,
    Method.USER_GRANT_ROLE: rpc_pb2.AuthUserGrantRoleRequest,
    Method.USER_REVOKE_ROLE: rpc_pb2.AuthUserRevokeRoleRequest,
    Method.ROLE_ADD: rpc_pb2.AuthRoleAddRequest,
    Method.ROLE_GET: rpc_pb2.AuthRoleGetRequest,
    Method.ROLE_LIST: rpc_pb2.AuthRoleListRequest,
    Method.ROLE_DELETE: rpc_pb2.AuthRoleDeleteRequest,
    Method.ROLE_GRANT_PERMISSION: rpc_pb2.AuthRoleGrantPermissionRequest,
    Method.ROLE_REVOKE_PERMISSION: rpc_pb2.AuthRoleRevokePermissionRequest,
}
# etcd's needAdminPermission: only root may, once auth is on (UserGet/RoleGet have their own rule)
ADMIN = frozenset(REQUESTS) - {Method.USER_GET, Method.ROLE_GET}

# Requests whose permissions are checked (KV, and leases through their keys), see check_request
CHECKED = frozenset(
    {
        Method.RANGE,
        Method.PUT,
        Method.DELETE_RANGE,
        Method.TXN,
        Method.LEASE_REVOKE,
        Method.LEASE_TIME_TO_LIVE,
        Method.GET_MANY,  # per key, by the storage actor (one denied key fails only its own read)
    }
)
# etcd's authMaintenanceServer: only root may, once auth is on (checked by the storage actor)
ROOT_MAINTENANCE = frozenset({Method.SNAPSHOT, Method.DEFRAGMENT, Method.HASH, Method.HASH_KV})
# Requests that carry who asked once auth is on
IDENTIFIED = CHECKED | frozenset(REQUESTS) | ROOT_MAINTENANCE

LeaseKeys = Callable[[int], Iterable[bytes]]


def fingerprint(password_hash: bytes) -> bytes:
    """Names a password hash in an Authenticate entry without putting the hash in the log."""
    return hashlib.sha256(password_hash).digest()[:8]


def _parse(cls: type[Message], body: bytes) -> Message:
    try:
        return cls.FromString(body)
    except DecodeError as exc:
        raise EtcdError(
            errors.Code.INVALID_ARGUMENT, f"cairn: request is not a valid etcdserverpb.{cls.__name__}: {exc}"
        ) from None


class AuthStore:
    """Users, roles and permissions; applies auth entries and answers permission questions."""

    def __init__(self, backend: Backend, tokens: TokenProvider | None = None) -> None:
        self._backend = backend
        self.tokens: TokenProvider = tokens if tokens is not None else SimpleTokens()
        self.users: dict[str, auth_pb2.User] = {}
        self.roles: dict[str, auth_pb2.Role] = {}
        self.enabled = False
        self.revision = 1  # etcd commits revision 1 when it creates the store
        for key, value in backend.scan(AUTH):
            if key.startswith(USER_PREFIX):
                user = auth_pb2.User.FromString(value)
                self.users[user.name.decode()] = user
            elif key.startswith(ROLE_PREFIX):
                role = auth_pb2.Role.FromString(value)
                self.roles[role.name.decode()] = role
            elif key == ENABLED:
                self.enabled = value == b"\x01"
            elif key == REVISION:
                self.revision = int.from_bytes(value, "big")
        self._perms: dict[str, RangePermissions] = {}
        self.applied_index = 0
        """The raft index applied so far (the storage actor keeps it current): a simple token names
        the index of its Authenticate entry, so a member can tell "not applied yet" from "unknown"."""

    # -- who is asking --------------------------------------------------------------------------------

    def identify(self, token: str | None, now: float, wall_now: float) -> tuple[str, int]:
        """``(user, auth revision)`` of a request's token; ``("", 0)`` without one (etcd's empty
        AuthInfo). An unknown, expired or forged token is etcd's "invalid auth token"."""
        if token is None:
            return "", 0
        found = self.tokens.identify(token, self.revision, now, wall_now)
        if found is None:
            raise errors.INVALID_AUTH_TOKEN.copy()
        return found

    # -- permission checks (etcd's isOpPermitted and the auth applier) --------------------------------

    def check(self, user: str, revision: int, perm_type: int, key: bytes, range_end: bytes = b"") -> None:
        if not self.enabled:
            return
        if revision == 0:
            raise errors.USER_EMPTY.copy()
        if revision < self.revision:
            raise errors.AUTH_OLD_REVISION.copy()
        record = self.users.get(user)
        if record is None:
            raise errors.PERMISSION_DENIED.copy()
        if ROOT in record.roles:
            return
        perms = self._perms.get(user)
        if perms is None:
            perms = self._perms[user] = RangePermissions(
                p for name in record.roles if (role := self.roles.get(name)) for p in role.keyPermission
            )
        if not perms.allows(perm_type, key, range_end):
            raise errors.PERMISSION_DENIED.copy()

    def check_admin(self, user: str) -> None:
        """etcd's IsAdminPermitted: only a user with the root role (no revision check, as etcd)."""
        if not self.enabled:
            return
        if not user:
            raise errors.USER_EMPTY.copy()
        record = self.users.get(user)
        if record is None:
            raise errors.USER_NOT_FOUND.copy()
        if ROOT not in record.roles:
            raise errors.PERMISSION_DENIED.copy()

    def check_request(
        self, method: int, body: bytes, user: str, revision: int, lease_keys: LeaseKeys
    ) -> None:
        """Raise the error etcd's auth applier answers for a KV or lease request, if any."""
        if not self.enabled:
            return
        if method == Method.RANGE:
            req = _parse(rpc_pb2.RangeRequest, body)
            self.check(user, revision, READ, req.key, req.range_end)
        elif method == Method.PUT:
            self._check_put(_parse(rpc_pb2.PutRequest, body), user, revision, lease_keys)
        elif method == Method.DELETE_RANGE:
            self._check_delete(_parse(rpc_pb2.DeleteRangeRequest, body), user, revision)
        elif method == Method.TXN:
            self._check_txn(_parse(rpc_pb2.TxnRequest, body), user, revision)
        elif method == Method.LEASE_REVOKE:
            for key in lease_keys(_parse(rpc_pb2.LeaseRevokeRequest, body).ID):
                self.check(user, revision, WRITE, key)
        elif method == Method.LEASE_TIME_TO_LIVE:  # etcd 3.5's rule: read access to every attached key
            for key in lease_keys(_parse(rpc_pb2.LeaseTimeToLiveRequest, body).ID):
                self.check(user, revision, READ, key)

    def _check_put(self, req: rpc_pb2.PutRequest, user: str, revision: int, lease_keys: LeaseKeys) -> None:
        self.check(user, revision, WRITE, req.key)
        if req.lease:
            for key in lease_keys(req.lease):
                self.check(user, revision, WRITE, key)
        if req.prev_kv:
            self.check(user, revision, READ, req.key)

    def _check_delete(self, req: rpc_pb2.DeleteRangeRequest, user: str, revision: int) -> None:
        self.check(user, revision, WRITE, req.key, req.range_end)
        if req.prev_kv:
            self.check(user, revision, READ, req.key, req.range_end)

    def _check_txn(self, req: rpc_pb2.TxnRequest, user: str, revision: int) -> None:
        for cmp in req.compare:
            self.check(user, revision, READ, cmp.key, cmp.range_end)
        for op in (*req.success, *req.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.check(user, revision, READ, op.request_range.key, op.request_range.range_end)
            elif kind == "request_put":
                self.check(user, revision, WRITE, op.request_put.key)
            elif kind == "request_delete_range":
                self._check_delete(op.request_delete_range, user, revision)
            elif kind == "request_txn":  # etcd 3.4 skips nested txns; they are checked here
                self._check_txn(op.request_txn, user, revision)

    # -- applying auth entries -----------------------------------------------------------------------

    def apply(self, method: int, body: bytes, user: str, index: int, now: float) -> Message:
        """Apply one auth entry; ``user`` is who asked ("" when auth was off or nobody said)."""
        if method == Method.AUTHENTICATE:
            return self._authenticate(body, index, now)
        hashed = b""
        if method in (Method.USER_ADD, Method.USER_CHANGE_PASSWORD):
            body, hashed = unpack_blobs(body)
        req = _parse(REQUESTS[method], body)
        if method in ADMIN:
            self.check_admin(user)
        elif method == Method.USER_GET:
            self._check_self_or_admin(user, req.name == user)
        elif method == Method.ROLE_GET:
            self._check_self_or_admin(user, req.role in getattr(self.users.get(user), "roles", ()))
        handler = getattr(self, "_" + Method(method).name.lower())
        if method in (Method.USER_ADD, Method.USER_CHANGE_PASSWORD):
            return handler(req, hashed)
        return handler(req)

    def _check_self_or_admin(self, user: str, own: bool) -> None:
        """etcd lets a user read its own record and the roles it has without being root."""
        try:
            self.check_admin(user)
        except EtcdError:
            if not own:
                raise

    def _authenticate(self, body: bytes, index: int, now: float) -> rpc_pb2.AuthenticateResponse:
        name, proposed, checked = (b.decode() if i < 2 else b for i, b in enumerate(unpack_blobs(body)))
        if not self.enabled:
            raise errors.AUTH_NOT_ENABLED.copy()
        record = self.users.get(name)
        # the password was checked against this hash before proposing: a change since refuses it;
        # an empty fingerprint is a plugin backend's word, good only for a no-password user
        vouched = not checked
        if record is None or record.options.no_password != vouched or (
            checked and fingerprint(record.password) != checked
        ):
            raise errors.AUTH_FAILED.copy()
        return rpc_pb2.AuthenticateResponse(token=self.tokens.assign(name, proposed, index, now))

    def _auth_enable(self, req: rpc_pb2.AuthEnableRequest) -> rpc_pb2.AuthEnableResponse:
        if not self.enabled:
            root = self.users.get(ROOT)
            if root is None:
                raise errors.ROOT_USER_NOT_EXIST.copy()
            if ROOT not in root.roles:
                raise errors.ROOT_ROLE_NOT_EXIST.copy()
            self.enabled = True
            self._backend.put(AUTH, ENABLED, b"\x01")
        return rpc_pb2.AuthEnableResponse()

    def _auth_disable(self, req: rpc_pb2.AuthDisableRequest) -> rpc_pb2.AuthDisableResponse:
        if self.enabled:
            self.enabled = False
            self._backend.put(AUTH, ENABLED, b"\x00")
            self.tokens.disable()
            self._bump()
        return rpc_pb2.AuthDisableResponse()

    def _user_add(self, req: rpc_pb2.AuthUserAddRequest, hashed: bytes) -> rpc_pb2.AuthUserAddResponse:
        if not req.name:
            raise errors.USER_EMPTY.copy()
        if req.name in self.users:
            raise errors.USER_ALREADY_EXIST.copy()
        user = auth_pb2.User(name=req.name.encode(), options=req.options)
        if not req.options.no_password:
            user.password = hashed
        self._put_user(user)
        return rpc_pb2.AuthUserAddResponse()

    def _user_get(self, req: rpc_pb2.AuthUserGetRequest) -> rpc_pb2.AuthUserGetResponse:
        record = self.users.get(req.name)
        if record is None:
            raise errors.USER_NOT_FOUND.copy()
        return rpc_pb2.AuthUserGetResponse(roles=record.roles)

    def _user_list(self, req: rpc_pb2.AuthUserListRequest) -> rpc_pb2.AuthUserListResponse:
        return rpc_pb2.AuthUserListResponse(users=sorted(self.users))

    def _user_delete(self, req: rpc_pb2.AuthUserDeleteRequest) -> rpc_pb2.AuthUserDeleteResponse:
        if self.enabled and req.name == ROOT:
            raise errors.INVALID_AUTH_MGMT.copy()
        if req.name not in self.users:
            raise errors.USER_NOT_FOUND.copy()
        del self.users[req.name]
        self._backend.delete(AUTH, USER_PREFIX + req.name.encode())
        self.tokens.invalidate_user(req.name)
        self._bump()
        return rpc_pb2.AuthUserDeleteResponse()

    def _user_change_password(
        self, req: rpc_pb2.AuthUserChangePasswordRequest, hashed: bytes
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        record = self.users.get(req.name)
        if record is None:
            raise errors.USER_NOT_FOUND.copy()
        user = auth_pb2.User()
        user.CopyFrom(record)
        user.password = hashed
        self._put_user(user)
        self.tokens.invalidate_user(req.name)
        return rpc_pb2.AuthUserChangePasswordResponse()

    def _user_grant_role(self, req: rpc_pb2.AuthUserGrantRoleRequest) -> rpc_pb2.AuthUserGrantRoleResponse:
        record = self.users.get(req.user)
        if record is None:
            raise errors.USER_NOT_FOUND.copy()
        if req.role != ROOT and req.role not in self.roles:
            raise errors.ROLE_NOT_FOUND.copy()
        if req.role not in record.roles:
            user = auth_pb2.User()
            user.CopyFrom(record)
            roles = sorted([*user.roles, req.role])
            del user.roles[:]
            user.roles.extend(roles)
            self._put_user(user)
        return rpc_pb2.AuthUserGrantRoleResponse()

    def _user_revoke_role(self, req: rpc_pb2.AuthUserRevokeRoleRequest) -> rpc_pb2.AuthUserRevokeRoleResponse:
        if self.enabled and req.name == ROOT and req.role == ROOT:
            raise errors.INVALID_AUTH_MGMT.copy()
        record = self.users.get(req.name)
        if record is None:
            raise errors.USER_NOT_FOUND.copy()
        if req.role not in record.roles:
            raise errors.ROLE_NOT_GRANTED.copy()
        user = auth_pb2.User()
        user.CopyFrom(record)
        user.roles.remove(req.role)
        self._put_user(user)
        return rpc_pb2.AuthUserRevokeRoleResponse()

    def _role_add(self, req: rpc_pb2.AuthRoleAddRequest) -> rpc_pb2.AuthRoleAddResponse:
        if not req.name:
            raise errors.ROLE_EMPTY.copy()
        if req.name in self.roles:
            raise errors.ROLE_ALREADY_EXIST.copy()
        self._put_role(auth_pb2.Role(name=req.name.encode()))
        return rpc_pb2.AuthRoleAddResponse()

    def _role_get(self, req: rpc_pb2.AuthRoleGetRequest) -> rpc_pb2.AuthRoleGetResponse:
        role = self.roles.get(req.role)
        if role is None:
            raise errors.ROLE_NOT_FOUND.copy()
        return rpc_pb2.AuthRoleGetResponse(perm=role.keyPermission)

    def _role_list(self, req: rpc_pb2.AuthRoleListRequest) -> rpc_pb2.AuthRoleListResponse:
        return rpc_pb2.AuthRoleListResponse(roles=sorted(self.roles))

    def _role_delete(self, req: rpc_pb2.AuthRoleDeleteRequest) -> rpc_pb2.AuthRoleDeleteResponse:
        if self.enabled and req.role == ROOT:
            raise errors.INVALID_AUTH_MGMT.copy()
        if req.role not in self.roles:
            raise errors.ROLE_NOT_FOUND.copy()
        del self.roles[req.role]
        self._backend.delete(AUTH, ROLE_PREFIX + req.role.encode())
        for record in [u for u in self.users.values() if req.role in u.roles]:
            user = auth_pb2.User()
            user.CopyFrom(record)
            user.roles.remove(req.role)
            self._put_user(user, bump=False)
        self._bump()
        return rpc_pb2.AuthRoleDeleteResponse()

    def _role_grant_permission(
        self, req: rpc_pb2.AuthRoleGrantPermissionRequest
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        role = self.roles.get(req.name)
        if role is None:
            raise errors.ROLE_NOT_FOUND.copy()
        updated = auth_pb2.Role()
        updated.CopyFrom(role)
        for perm in updated.keyPermission:
            if perm.key == req.perm.key and perm.range_end == req.perm.range_end:
                perm.permType = req.perm.permType
                break
        else:
            perms = sorted([*updated.keyPermission, req.perm], key=lambda p: p.key)
            del updated.keyPermission[:]
            updated.keyPermission.extend(perms)
        self._put_role(updated)
        return rpc_pb2.AuthRoleGrantPermissionResponse()

    def _role_revoke_permission(
        self, req: rpc_pb2.AuthRoleRevokePermissionRequest
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        role = self.roles.get(req.role)
        if role is None:
            raise errors.ROLE_NOT_FOUND.copy()
        kept = [p for p in role.keyPermission if p.key != req.key or p.range_end != req.range_end]
        if len(kept) == len(role.keyPermission):
            raise errors.PERMISSION_NOT_GRANTED.copy()
        self._put_role(auth_pb2.Role(name=role.name, keyPermission=kept))
        return rpc_pb2.AuthRoleRevokePermissionResponse()

    # -- rows ------------------------------------------------------------------------------------------

    def _put_user(self, user: auth_pb2.User, bump: bool = True) -> None:
        self.users[user.name.decode()] = user
        self._backend.put(AUTH, USER_PREFIX + user.name, user.SerializeToString())
        if bump:
            self._bump()

    def _put_role(self, role: auth_pb2.Role) -> None:
        self.roles[role.name.decode()] = role
        self._backend.put(AUTH, ROLE_PREFIX + role.name, role.SerializeToString())
        self._bump()

    def _bump(self) -> None:
        self.revision += 1
        self._backend.put(AUTH, REVISION, self.revision.to_bytes(8, "big"))
        self._perms.clear()
