"""etcd's client-visible errors: one gRPC status code and one exact text each.

Clients match on the text (etcdctl prints it, clientv3 maps it back to a typed error), so the
texts are wire facts copied from etcd's rpctypes package and must not be reworded.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """gRPC status codes (the numbering is fixed by gRPC)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An error a client sees: a gRPC code and etcd's text for it."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def copy(self) -> EtcdError:
        """A fresh instance to raise: a shared constant would carry one raise's traceback into the next."""
        return EtcdError(self.code, self.message)


def _error(code: Code, text: str) -> EtcdError:
    return EtcdError(code, "etcdserver: " + text)


def maintenance_auth_error(error: EtcdError) -> EtcdError:
    """etcd 3.4's Maintenance service (Snapshot, Defragment, Hash, HashKV) answers a refused user
    with its auth store's own error, not an rpctypes one: gRPC code Unknown, text "auth: ..."."""
    return EtcdError(Code.UNKNOWN, "auth: " + error.message.removeprefix("etcdserver: "))


EMPTY_KEY = _error(Code.INVALID_ARGUMENT, "key is not provided")
KEY_NOT_FOUND = _error(Code.INVALID_ARGUMENT, "key not found")
VALUE_PROVIDED = _error(Code.INVALID_ARGUMENT, "value is provided")
LEASE_PROVIDED = _error(Code.INVALID_ARGUMENT, "lease is provided")
TOO_MANY_OPS = _error(Code.INVALID_ARGUMENT, "too many operations in txn request")
DUPLICATE_KEY = _error(Code.INVALID_ARGUMENT, "duplicate key given in txn request")
COMPACTED = _error(Code.OUT_OF_RANGE, "mvcc: required revision has been compacted")
FUTURE_REV = _error(Code.OUT_OF_RANGE, "mvcc: required revision is a future revision")
NO_SPACE = _error(Code.RESOURCE_EXHAUSTED, "mvcc: database space exceeded")
LEASE_NOT_FOUND = _error(Code.NOT_FOUND, "requested lease not found")
LEASE_EXIST = _error(Code.FAILED_PRECONDITION, "lease already exists")
LEASE_TTL_TOO_LARGE = _error(Code.OUT_OF_RANGE, "too large lease TTL")
REQUEST_TOO_LARGE = _error(Code.INVALID_ARGUMENT, "request is too large")
TOO_MANY_REQUESTS = _error(Code.RESOURCE_EXHAUSTED, "too many requests")
NO_LEADER = _error(Code.UNAVAILABLE, "no leader")
NOT_LEADER = _error(Code.FAILED_PRECONDITION, "not leader")
LEADER_CHANGED = _error(Code.UNAVAILABLE, "leader changed")
STOPPED = _error(Code.UNAVAILABLE, "server stopped")
TIMEOUT = _error(Code.UNAVAILABLE, "request timed out")
MEMBER_NOT_FOUND = _error(Code.NOT_FOUND, "member not found")
PERMISSION_DENIED = _error(Code.PERMISSION_DENIED, "permission denied")
INVALID_AUTH_TOKEN = _error(Code.UNAUTHENTICATED, "invalid auth token")
MEMBER_EXIST = _error(Code.FAILED_PRECONDITION, "member ID already exist")
PEER_URL_EXIST = _error(Code.FAILED_PRECONDITION, "Peer URLs already exists")
MEMBER_BAD_URLS = _error(Code.INVALID_ARGUMENT, "given member URLs are invalid")
MEMBER_NOT_LEARNER = _error(Code.FAILED_PRECONDITION, "can only promote a learner member")
LEARNER_NOT_READY = _error(
    Code.FAILED_PRECONDITION, "can only promote a learner member which is in sync with leader"
)
TOO_MANY_LEARNERS = _error(Code.FAILED_PRECONDITION, "too many learner members in cluster")
MEMBER_NOT_ENOUGH_STARTED = _error(
    Code.FAILED_PRECONDITION, "re-configuration failed due to not enough started members"
)
NOT_SUPPORTED_FOR_LEARNER = _error(Code.UNAVAILABLE, "rpc not supported for learner")
UNHEALTHY = _error(Code.UNAVAILABLE, "unhealthy cluster")  # a change that would break the active quorum
BAD_LEADER_TRANSFEREE = _error(Code.FAILED_PRECONDITION, "bad leader transferee")
# not in etcd's gRPC error table: it reaches clients with code Unknown and this text
LEADER_TRANSFER_TIMEOUT = _error(Code.UNKNOWN, "request timed out, leader transfer took too long")
ROOT_USER_NOT_EXIST = _error(Code.FAILED_PRECONDITION, "root user does not exist")
ROOT_ROLE_NOT_EXIST = _error(Code.FAILED_PRECONDITION, "root user does not have root role")
USER_ALREADY_EXIST = _error(Code.FAILED_PRECONDITION, "user name already exists")
USER_EMPTY = _error(Code.INVALID_ARGUMENT, "user name is empty")
USER_NOT_FOUND = _error(Code.FAILED_PRECONDITION, "user name not found")
ROLE_ALREADY_EXIST = _error(Code.FAILED_PRECONDITION, "role name already exists")
ROLE_NOT_FOUND = _error(Code.FAILED_PRECONDITION, "role name not found")
ROLE_EMPTY = _error(Code.INVALID_ARGUMENT, "role name is empty")
AUTH_FAILED = _error(Code.INVALID_ARGUMENT, "authentication failed, invalid user ID or password")
ROLE_NOT_GRANTED = _error(Code.FAILED_PRECONDITION, "role is not granted to the user")
PERMISSION_NOT_GRANTED = _error(Code.FAILED_PRECONDITION, "permission is not granted to the role")
AUTH_NOT_ENABLED = _error(Code.FAILED_PRECONDITION, "authentication is not enabled")
INVALID_AUTH_MGMT = _error(Code.INVALID_ARGUMENT, "invalid auth management")
AUTH_OLD_REVISION = _error(Code.INVALID_ARGUMENT, "revision of auth store is old")
# not in etcd's rpctypes table, so etcd answers its auth package's text with code Unknown
NO_PASSWORD_USER = EtcdError(
    Code.UNKNOWN, "auth: authentication failed, password was given for no password user"
)
