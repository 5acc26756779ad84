"""What the session asks of the auth state as a request enters the core: who is asking.

etcd resolves a request's token before proposing it and writes the user and the auth revision
into the raft entry's header; the storage actor checks permissions when it applies the entry (or
serves the read), against the auth state of that moment. The session does the first half here:
a token becomes ``(user, auth revision)``, carried behind the ``AUTHED`` bit of the method.

The session and storage actors share one thread; the gate only reads the :class:`AuthStore` the
storage actor owns and changes (a simple token's TTL restarting on use is its only write), so no
message round trip sits in front of every request.

Watch creates are checked here, at create time, as etcd's watch server does.
"""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError

from actors import errors
from actors.auth.backends import CERTIFICATE_PREFIX, BackendChain
from actors.auth.perms import READ
from actors.auth.store import IDENTIFIED, ROOT_MAINTENANCE, AuthStore
from actors.errors import EtcdError
from actors.proto import rpc_pb2
from actors.protocol import AUTHED, MEMBERSHIP_CHANGES, Method, encode_authed

# etcd resolves the token of every request it proposes or serializes (an invalid token fails them
# even when nothing is checked); keep-alives, lease lists, status and member lists ignore it.
TOKEN_CHECKED = IDENTIFIED | {Method.COMPACT, Method.LEASE_GRANT, Method.ALARM}
# etcd's Maintenance service hands its auth store's errors back unconverted: "auth: ...", code Unknown
MAINTENANCE = ROOT_MAINTENANCE | {Method.ALARM}


class TokenNotApplied(EtcdError):
    """A simple token whose Authenticate entry this member has not applied yet (it was issued
    through another member): the session holds the request until it is, as etcd does."""

    def __init__(self) -> None:
        super().__init__(errors.INVALID_AUTH_TOKEN.code, errors.INVALID_AUTH_TOKEN.message)


class AuthGate:
    def __init__(
        self,
        store: AuthStore,
        cluster_id: int,
        member_id: int,
        backends: BackendChain | None = None,
        certificate_users: bool = False,
    ) -> None:
        self.store = store
        self.backends = backends or BackendChain()
        self.certificate_users = certificate_users  # client-cert-auth: a frontend may name a CN
        self.cluster_id = cluster_id
        self.member_id = member_id

    def _identify(self, token: str | None) -> tuple[str, int]:
        if token is not None and token.startswith(CERTIFICATE_PREFIX):
            if not self.certificate_users:  # no frontend verifies certificates: not from one
                raise errors.INVALID_AUTH_TOKEN.copy()
            # etcd's AuthInfoFromTLS: the certificate's user at the current auth revision
            user = self.backends.certificate_user(token[len(CERTIFICATE_PREFIX) :])
            return (user, self.store.revision) if user else ("", 0)
        try:
            return self.store.identify(token, time.monotonic(), time.time())
        except EtcdError:
            _, dot, index = (token or "").rpartition(".")
            if dot and index.isdigit() and int(index) > self.store.applied_index:
                raise TokenNotApplied() from None
            raise

    def tag(self, method: int, body: bytes, token: str | None) -> tuple[int, bytes]:
        """The method and body to route: with an auth header once auth is on; raises etcd's
        "invalid auth token" for a token no member issued or one that expired, and etcd's errors
        for a membership change asked by anyone but a root user."""
        store = self.store
        if method in MEMBERSHIP_CHANGES:
            if store.enabled:  # etcd's checkMembershipOperationPermission, at the API layer as etcd
                store.check_admin(self._identify(token)[0])
            return method, body
        if method not in TOKEN_CHECKED or (token is None and not store.enabled):
            return method, body
        try:
            user, revision = self._identify(token)
        except TokenNotApplied:
            raise
        except EtcdError as e:
            if method in MAINTENANCE:
                raise errors.maintenance_auth_error(e) from None
            raise
        if store.enabled and method in IDENTIFIED:
            return method | AUTHED, encode_authed(user, revision, body)
        return method, body

    def watch_denial(self, body: bytes, token: str | None) -> bytes | None:
        """etcd's answer to a watch create the user may not read (a canceled watch with the
        error as its reason), or None when the request may go on to the watch hub."""
        store = self.store
        if not store.enabled and token is None:
            return None
        try:
            request = rpc_pb2.WatchRequest.FromString(body)
        except DecodeError:
            return None  # the hub answers malformed requests
        if not request.HasField("create_request"):
            return None
        create = request.create_request
        try:
            user, revision = self._identify(token)
            store.check(user, revision, READ, create.key or b"\x00", create.range_end)
        except EtcdError as e:
            # etcd's reason is the gRPC status error's text: "rpc error: code = PermissionDenied desc = ..."
            code = "".join(part.title() for part in e.code.name.split("_"))
            reason = f"rpc error: code = {code} desc = {e.message}"
            response = rpc_pb2.WatchResponse(watch_id=-1, created=True, canceled=True, cancel_reason=reason)
            response.header.cluster_id = self.cluster_id
            response.header.member_id = self.member_id
            return response.SerializeToString()
        return None
