"""The member table: who is in the cluster, under which name and URLs (etcd's RaftCluster).

It is replicated state: every member applies the same CONF_CHANGE entries and MEMBER_PUBLISH
entries in log order, so every member holds the same table at the same index. The storage actor
keeps it in the kv DB's ``meta`` column family, in the write batch of the entries that changed it
(so a snapshot of the kv DB carries it, and a restart finds exactly the table of its applied
index); the raft actor keeps an in-memory copy for its peer links and for the checks a leader
makes before proposing a change. Pure: no IO, no clock (the caller passes the salt of a new id).

A CONF_CHANGE entry's context is ``request key:u64`` (so the member that asked can answer its
client when the entry is applied) followed by a serialized ``etcdserverpb.Member``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from google.protobuf.message import DecodeError, Message

from actors import errors
from actors.curve import check_key
from actors.proto import rpc_pb2
from actors.protocol import Method
from actors.raft.confchange import (
    ERR_LAST_VOTER,
    ERR_PENDING,
    ConfChange,
    ConfChangeError,
    ConfChangePending,
    ConfChangeType,
    LastVoter,
    LearnerNotReady,
    MemberExists,
    MemberNotFound,
    MemberNotLearner,
)

MEMBER_ROW = b"member/"  # meta key prefix: + id:u64be -> serialized Member
REMOVED_ROW = b"removed/"  # meta key prefix: + id:u64be -> b"" (a removed id never comes back)
_KEY = struct.Struct("<Q")
MAX_LEARNERS = 1  # etcd 3.4's membership.maxLearners
URL_SCHEMES = ("http", "https", "unix", "unixs")

Row = tuple[bytes, bytes | None]  # (meta key, value or None to delete)


def encode_context(key: int, member: rpc_pb2.Member) -> bytes:
    return _KEY.pack(key) + member.SerializeToString()


def decode_context(context: bytes) -> tuple[int, rpc_pb2.Member]:
    """``(request key, member)`` of a change's context; ValueError if it is not one of ours."""
    if len(context) < _KEY.size:
        raise ValueError("conf change context shorter than its request key")
    try:
        member = rpc_pb2.Member.FromString(context[_KEY.size :])
    except DecodeError as e:
        raise ValueError(f"conf change context holds no member: {e}") from None
    return _KEY.unpack_from(context)[0], member


def new_member_id(peer_urls: Iterable[str], cluster_id: int, salt: int) -> int:
    """A fresh member id, like etcd's NewMember: a hash of the peer URLs, the cluster and a time
    (``salt``: Unix seconds, as etcd, so the same URLs added twice in one second clash)."""
    text = "".join(sorted(peer_urls)) + f"{cluster_id:x}{salt}"
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") or 1


def check_urls(urls: Iterable[str]) -> list[str]:
    """etcd's ``types.NewURLs``: scheme://host:port, nothing else; MEMBER_BAD_URLS otherwise."""
    out = []
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise errors.MEMBER_BAD_URLS.copy() from None
        if parts.scheme not in URL_SCHEMES or not parts.hostname or port is None:
            raise errors.MEMBER_BAD_URLS.copy()
        if parts.path or parts.query or parts.fragment:
            raise errors.MEMBER_BAD_URLS.copy()
        out.append(url)
    if not out:
        raise errors.MEMBER_BAD_URLS.copy()
    return out


def etcd_error(e: ConfChangeError) -> errors.EtcdError:
    """The client-visible error for a change the raft core refused."""
    if isinstance(e, MemberExists):
        return errors.MEMBER_EXIST.copy()
    if isinstance(e, MemberNotFound):
        return errors.MEMBER_NOT_FOUND.copy()
    if isinstance(e, LearnerNotReady):
        return errors.LEARNER_NOT_READY.copy()
    if isinstance(e, MemberNotLearner):
        return errors.MEMBER_NOT_LEARNER.copy()
    if isinstance(e, ConfChangePending):
        return errors.EtcdError(errors.Code.FAILED_PRECONDITION, ERR_PENDING)
    if isinstance(e, LastVoter):
        return errors.EtcdError(errors.Code.FAILED_PRECONDITION, ERR_LAST_VOTER)
    return errors.EtcdError(errors.Code.FAILED_PRECONDITION, str(e))


class MemberTable:
    """Members by id plus the ids removed for good; rows to persist come back from each change."""

    def __init__(self, members: Iterable[rpc_pb2.Member] = (), removed: Iterable[int] = ()) -> None:
        self.members: dict[int, rpc_pb2.Member] = {m.ID: m for m in members}
        self.removed: set[int] = set(removed)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[bytes, bytes]]) -> MemberTable:
        """The table stored in ``meta`` rows (other rows are skipped)."""
        table = cls()
        for key, value in rows:
            if key.startswith(MEMBER_ROW):
                member = rpc_pb2.Member.FromString(value)
                table.members[member.ID] = member
            elif key.startswith(REMOVED_ROW):
                table.removed.add(int.from_bytes(key[len(REMOVED_ROW) :], "big"))
        return table

    def copy(self) -> MemberTable:
        return MemberTable((_clone(m) for m in self.members.values()), self.removed)

    def rows(self) -> list[Row]:
        """Every row of the table (to seed an empty store)."""
        return [self._row(i) for i in self.members] + [_removed_row(i) for i in self.removed]

    def _row(self, member_id: int) -> Row:
        member = self.members.get(member_id)
        key = MEMBER_ROW + member_id.to_bytes(8, "big")
        return key, None if member is None else member.SerializeToString()

    def listing(self) -> list[rpc_pb2.Member]:
        """Members in id order, as MemberList shows them."""
        return [self.members[i] for i in sorted(self.members)]

    def get(self, member_id: int) -> rpc_pb2.Member | None:
        return self.members.get(member_id)

    def peer_urls(self) -> dict[int, list[str]]:
        return {i: list(m.peerURLs) for i, m in self.members.items()}

    def find_by_peer_urls(self, urls: Iterable[str]) -> rpc_pb2.Member | None:
        wanted = sorted(urls)
        return next((m for m in self.members.values() if sorted(m.peerURLs) == wanted), None)

    def curve_keys(self, configured: Mapping[int, bytes]) -> dict[int, bytes]:
        """The CURVE public key of every current member: the one it was added with, else the one
        ``peer-curve-public-keys`` gives the founders. A removed member has none (refused)."""
        keys = {}
        for member_id, member in self.members.items():
            key = member.curvePublicKey.encode() or configured.get(member_id)
            if key:
                keys[member_id] = key
        return keys

    # -- applying entries ----------------------------------------------------------------------

    def apply_change(self, cc: ConfChange) -> list[Row]:
        """Apply a CONF_CHANGE entry; returns the rows it changed. A change that does not fit the
        table (possible only for entries proposed by an old leader) changes nothing."""
        try:
            _, member = decode_context(cc.context)
        except ValueError:
            member = rpc_pb2.Member(ID=cc.node_id)
        n = cc.node_id
        t = cc.type
        current = self.members.get(n)
        if t in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER):
            if n in self.removed:
                return []
            new = _clone(current) if current is not None else rpc_pb2.Member(ID=n)
            new.ClearField("peerURLs")
            new.peerURLs.extend(member.peerURLs)
            new.isLearner = t == ConfChangeType.ADD_LEARNER
            new.curvePublicKey = member.curvePublicKey
            self.members[n] = new
        elif current is None:
            return []
        elif t == ConfChangeType.PROMOTE_LEARNER:
            current.isLearner = False
        elif t == ConfChangeType.UPDATE:
            current.ClearField("peerURLs")
            current.peerURLs.extend(member.peerURLs)
        elif t == ConfChangeType.REMOVE:
            del self.members[n]
            self.removed.add(n)
            return [self._row(n), _removed_row(n)]
        return [self._row(n)]

    def publish(self, attributes: rpc_pb2.Member) -> list[Row]:
        """A MEMBER_PUBLISH entry: a started member's name and client URLs."""
        current = self.members.get(attributes.ID)
        if current is None:
            return []
        current.name = attributes.name
        current.ClearField("clientURLs")
        current.clientURLs.extend(attributes.clientURLs)
        return [self._row(attributes.ID)]

    # -- a leader's checks before proposing (etcd's ValidateConfigurationChange and strict checks) ---

    def conf_change(self, method: int, body: bytes, key: int, cluster_id: int, salt: int) -> ConfChange:
        """The change a membership request asks for; the EtcdError etcd answers if it cannot be made.

        The raft core checks what it knows best (exists, not found, learner in sync, one change at a
        time); this checks URLs, the learner limit, and that enough members are started.
        """
        try:
            if method == Method.MEMBER_ADD:
                add = rpc_pb2.MemberAddRequest.FromString(body)
                urls = check_urls(add.peerURLs)
                member = rpc_pb2.Member(ID=new_member_id(urls, cluster_id, salt), peerURLs=urls)
                if member.ID in self.members:  # the same URLs added twice within a second, as in etcd
                    raise errors.MEMBER_EXIST.copy()
                self._check_urls_free(urls, 0)
                if add.isLearner:
                    if sum(1 for m in self.members.values() if m.isLearner) + 1 > MAX_LEARNERS:
                        raise errors.TOO_MANY_LEARNERS.copy()
                elif not self._ready_to_add_voter():
                    raise errors.MEMBER_NOT_ENOUGH_STARTED.copy()
                member.isLearner = add.isLearner
                if add.curvePublicKey:
                    member.curvePublicKey = _curve_key(add.curvePublicKey)
                ctype = ConfChangeType.ADD_LEARNER if add.isLearner else ConfChangeType.ADD_VOTER
                return ConfChange(ctype, member.ID, encode_context(key, member))
            if method == Method.MEMBER_REMOVE:
                target = rpc_pb2.MemberRemoveRequest.FromString(body).ID
                self._check_known(target)
                if not self.members[target].isLearner and not self._ready_to_remove_voter(target):
                    raise errors.MEMBER_NOT_ENOUGH_STARTED.copy()
                context = encode_context(key, rpc_pb2.Member(ID=target))
                return ConfChange(ConfChangeType.REMOVE, target, context)
            if method == Method.MEMBER_UPDATE:
                update = rpc_pb2.MemberUpdateRequest.FromString(body)
                urls = check_urls(update.peerURLs)
                self._check_known(update.ID)
                self._check_urls_free(urls, update.ID)
                member = rpc_pb2.Member(ID=update.ID, peerURLs=urls)
                return ConfChange(ConfChangeType.UPDATE, update.ID, encode_context(key, member))
            if method == Method.MEMBER_PROMOTE:
                target = rpc_pb2.MemberPromoteRequest.FromString(body).ID
                self._check_known(target)
                if not self.members[target].isLearner:
                    raise errors.MEMBER_NOT_LEARNER.copy()
                if not self._ready_to_promote():
                    raise errors.MEMBER_NOT_ENOUGH_STARTED.copy()
                context = encode_context(key, rpc_pb2.Member(ID=target))
                return ConfChange(ConfChangeType.PROMOTE_LEARNER, target, context)
        except DecodeError as e:
            text = f"cairn: malformed membership request: {e}"
            raise errors.EtcdError(errors.Code.INVALID_ARGUMENT, text) from None
        raise errors.EtcdError(errors.Code.UNIMPLEMENTED, f"cairn: method {method} is no membership change")

    def _check_known(self, member_id: int) -> None:
        if member_id not in self.members:
            raise errors.MEMBER_NOT_FOUND.copy()

    def _check_urls_free(self, urls: list[str], owner: int) -> None:
        taken = {u for i, m in self.members.items() if i != owner for u in m.peerURLs}
        if taken.intersection(urls):
            raise errors.PEER_URL_EXIST.copy()

    def _voters(self) -> list[rpc_pb2.Member]:
        return [m for m in self.members.values() if not m.isLearner]

    def _ready_to_add_voter(self) -> bool:
        """etcd's IsReadyToAddVotingMember: started voters stay a quorum of the grown cluster."""
        voters = self._voters()
        started = sum(1 for m in voters if m.name)
        size = len(voters) + 1
        if started == 1 and size == 2:
            return True
        return started >= size // 2 + 1

    def _ready_to_remove_voter(self, target: int) -> bool:
        """etcd's IsReadyToRemoveVotingMember: the started voters left are a quorum of the rest."""
        rest = [m for i, m in self.members.items() if not m.isLearner and i != target]
        return sum(1 for m in rest if m.name) >= len(rest) // 2 + 1

    def _ready_to_promote(self) -> bool:
        """etcd's IsReadyToPromoteMember: like adding a voter, counting the learner as started."""
        voters = self._voters()
        return sum(1 for m in voters if m.name) + 1 >= (len(voters) + 1) // 2 + 1


def _curve_key(key: str) -> str:
    try:
        return check_key(key, "curvePublicKey").decode()
    except ValueError as e:
        raise errors.EtcdError(errors.Code.INVALID_ARGUMENT, f"cairn: {e}") from None


def _clone(member: rpc_pb2.Member) -> rpc_pb2.Member:
    copy = rpc_pb2.Member()
    copy.CopyFrom(member)
    return copy


def _removed_row(member_id: int) -> Row:
    return REMOVED_ROW + member_id.to_bytes(8, "big"), b""


def change_response(table: MemberTable, change: ConfChange) -> tuple[int, Message]:
    """``(request key, response)`` for a change just applied to ``table``: what the asking client gets."""
    try:
        key, member = decode_context(change.context)
    except ValueError:
        key, member = 0, rpc_pb2.Member(ID=change.node_id)
    listing = table.listing()
    t = change.type
    if t in (ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER):
        added = rpc_pb2.Member(ID=member.ID, peerURLs=member.peerURLs, isLearner=member.isLearner)
        added.curvePublicKey = member.curvePublicKey
        return key, rpc_pb2.MemberAddResponse(member=added, members=listing)
    if t == ConfChangeType.REMOVE:
        return key, rpc_pb2.MemberRemoveResponse(members=listing)
    if t == ConfChangeType.PROMOTE_LEARNER:
        return key, rpc_pb2.MemberPromoteResponse(members=listing)
    return key, rpc_pb2.MemberUpdateResponse(members=listing)
