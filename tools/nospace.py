"""What cairnctl tells an operator who meets "database space exceeded": the way out, step by step.

etcd answers that error once a member's database reached ``--quota-backend-bytes``; from then on
the NOSPACE alarm makes every member refuse puts, txns that put and lease grants, until someone
frees space, gives it back to the disk and disarms the alarm. That sequence is the question etcd
users ask most, so cairnctl spells it out with this cluster's own figures.
"""

from __future__ import annotations

import grpc

from actors.errors import NO_SPACE
from actors.proto import rpc_pb2, rpc_pb2_grpc


def is_nospace(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error.details() == NO_SPACE.message


def explain_nospace(endpoint: str, timeout: float) -> str:
    """The recovery steps, with the member's size, alarms and current revision when it answers."""
    figures, revision = "", "<revision>"
    try:
        with grpc.insecure_channel(endpoint) as channel:
            status = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=timeout)
        revision = str(status.header.revision)
        alarms = "; ".join(e.strip() for e in status.errors) or "none"
        figures = f"\nThis member's database: {status.dbSize} bytes on disk. Active alarms: {alarms}."
    except grpc.RpcError:
        pass  # the steps hold without the figures
    return (
        "The database reached its space quota (--quota-backend-bytes). Until the NOSPACE alarm is\n"
        "disarmed, every member refuses puts, txns that put and lease grants; reads, deletes,\n"
        f"compaction and defragmentation still work.{figures}\n"
        "To get out:\n"
        "  1. delete what you no longer need:    etcdctl del --prefix <old/prefix>\n"
        f"  2. drop old history:                  etcdctl compaction {revision}\n"
        "  3. give the space back, every member: etcdctl defrag --cluster\n"
        "  4. disarm the alarm:                  etcdctl alarm disarm\n"
        "If the data really needs more room, raise --quota-backend-bytes on every member, restart\n"
        "them, then disarm. A put refused again right after disarming means the database is still\n"
        "over the quota: check `etcdctl endpoint status -w table` (DB SIZE) against it."
    )
