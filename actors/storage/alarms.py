"""Cluster alarms (etcd's v3alarm store and applierV3backend.Alarm), replicated through raft.

An alarm is ``(member id, alarm type)``: NOSPACE when a member's backend passed its space quota,
CORRUPT when a member's data was found to differ. Every request of the Alarm RPC, GET included,
is a raft entry (as in etcd), so every member applies the same activations in the same order and
answers GET with what the log says at that point. While an alarm of a type is active, the store
refuses what that alarm forbids (:func:`refusal`), on every member alike: a member that is under
its quota still refuses puts while another member's NOSPACE alarm stands.

The active set is written into the ``meta`` column family in the same batch as the entry that
changed it, so a restart (which replays the log from the stored applied index) finds it as the
log left it.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from actors import errors
from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2
from actors.protocol import Method
from actors.storage.backend import META, Backend
from actors.storage.validate import parse

ALARMS = b"alarms"  # meta key: a serialized AlarmResponse whose ``alarms`` are the active set

AlarmRequest = rpc_pb2.AlarmRequest
NOSPACE = rpc_pb2.NOSPACE
CORRUPT = rpc_pb2.CORRUPT
NONE = rpc_pb2.NONE

CORRUPT_CLUSTER = EtcdError(Code.DATA_LOSS, "etcdserver: corrupt cluster")
"""etcd's ErrCorrupt as its gRPC layer answers it (rpctypes.ErrGRPCCorrupt)."""
CORRUPT_REFUSES = frozenset(
    {Method.PUT, Method.DELETE_RANGE, Method.TXN, Method.COMPACT, Method.LEASE_GRANT, Method.LEASE_REVOKE}
)
NOSPACE_REFUSES = frozenset({Method.PUT, Method.LEASE_GRANT})  # and txns that put


class AlarmTable:
    """The active alarms, kept in memory and in the backend's pending batch."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._active: set[tuple[int, int]] = set()  # (alarm type, member id)
        raw = backend.get(META, ALARMS)
        if raw is not None:
            stored = rpc_pb2.AlarmResponse.FromString(raw)
            self._active = {(a.alarm, a.memberID) for a in stored.alarms}

    def active(self, alarm: int = NONE) -> list[tuple[int, int]]:
        """``(alarm type, member id)`` of the active alarms of one type (NONE: all), sorted.

        etcd lists them in Go map order (random); sorted is one of the orders it may print.
        """
        return sorted(a for a in self._active if alarm == NONE or a[0] == alarm)

    def apply(self, request: bytes) -> rpc_pb2.AlarmResponse:
        """Apply one Alarm request; the response lists what it reports or changed, like etcd's."""
        req = parse(AlarmRequest, request)
        if req.alarm not in (NONE, NOSPACE, CORRUPT):
            raise EtcdError(Code.INVALID_ARGUMENT, f"cairn: unknown alarm type {req.alarm}")
        resp = rpc_pb2.AlarmResponse()
        if req.action == AlarmRequest.GET:
            found = self.active(req.alarm)
        elif req.action == AlarmRequest.ACTIVATE:
            if req.alarm == NONE:
                raise EtcdError(Code.INVALID_ARGUMENT, "cairn: an alarm to activate needs a type")
            found = [(req.alarm, req.memberID)]
            if found[0] not in self._active:
                self._active.add(found[0])
                self._save()
        elif req.action == AlarmRequest.DEACTIVATE:
            found = [(req.alarm, req.memberID)] if (req.alarm, req.memberID) in self._active else []
            if found:
                self._active.discard(found[0])
                self._save()
        else:
            raise EtcdError(Code.INVALID_ARGUMENT, f"cairn: unknown alarm action {req.action}")
        for alarm, member in found:
            resp.alarms.add(memberID=member, alarm=alarm)
        return resp

    def _save(self) -> None:
        stored = rpc_pb2.AlarmResponse()
        for alarm, member in sorted(self._active):
            stored.alarms.add(memberID=member, alarm=alarm)
        self._backend.put(META, ALARMS, stored.SerializeToString())

    def refusal(self, method: int, request: bytes) -> EtcdError | None:
        """The error an active alarm makes etcd answer for this committed request, if any.

        NOSPACE is etcd's applierV3Capped: puts, txns that would put, and lease grants fail;
        reads, deletes, compaction and revokes still work, which is how a cluster gets out.
        CORRUPT is applierV3Corrupt: every KV and lease write fails.
        """
        if not self._active:
            return None
        types = {alarm for alarm, _ in self._active}
        if CORRUPT in types and method in CORRUPT_REFUSES:
            return CORRUPT_CLUSTER
        if NOSPACE in types and (method in NOSPACE_REFUSES or (method == Method.TXN and txn_puts(request))):
            return errors.NO_SPACE
        return None


def alarm_text(alarm: int, member_id: int) -> str:
    """An alarm as etcd's Status lists it in ``errors`` (gogo's compact text, trailing space included)."""
    return f"memberID:{member_id} alarm:{rpc_pb2.AlarmType.Name(alarm)} "


def txn_puts(request: bytes) -> bool:
    """Whether a serialized TxnRequest holds a put in either branch (etcd's costTxn > 0).

    Only top-level ops count, as in etcd 3.4's quota: a put inside a nested txn costs nothing.
    """
    try:
        req = rpc_pb2.TxnRequest.FromString(request)
    except DecodeError:
        return False  # the store refuses it with its own error
    return any(op.HasField("request_put") for op in (*req.success, *req.failure))
