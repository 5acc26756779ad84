"""etcd's v3lock service (Lock, Unlock): a mutex held by a lease, served in the frontend process.

Lock puts ``<name>/<lease hex>`` on the request's lease and waits in line by create revision
(:mod:`plugins.grpc.waitline`); the key it answers with is the holder's, and that key's create
revision is a fencing token (docs/locks.md). Unlock deletes the key. The REST gateway calls the
same methods, so both frontends behave alike.
"""

from __future__ import annotations

import asyncio

import structlog

from actors.errors import Code, EtcdError
from actors.proto import rpc_pb2, v3lock_pb2
from actors.protocol import Method
from node.api import Client
from plugins.grpc.waitline import (
    Caller,
    SessionExpired,
    contender,
    etcd_method,
    join_line,
    owner_range,
    release_later,
    wait_for_turn,
)

log = structlog.get_logger()

SESSION_EXPIRED = EtcdError(Code.UNKNOWN, "mutex: session is expired")  # clientv3's ErrSessionExpired


class LockService:
    """Lock and Unlock on serialized v3lockpb messages; errors are :class:`EtcdError` as etcd words them."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @etcd_method(v3lock_pb2.LockRequest)
    async def lock(self, core: Caller, req: v3lock_pb2.LockRequest) -> v3lock_pb2.LockResponse:
        lease, prefix, key = await contender(core, req.name, req.lease)
        answer, rev = await join_line(core, rpc_pb2.PutRequest(key=key, lease=lease), owner_range(prefix))
        holder = answer.responses[1].response_range.kvs
        if not holder or holder[0].create_revision == rev:
            log.info("lock_acquired", key=key.decode(errors="replace"), rev=rev, waited=False)
            return v3lock_pb2.LockResponse(header=answer.header, key=key)
        try:
            header = await wait_for_turn(core, prefix, key, rev)
        except SessionExpired:
            log.info("lock_session_expired", key=key.decode(errors="replace"), rev=rev)
            raise SESSION_EXPIRED.copy() from None
        except (EtcdError, asyncio.CancelledError):
            release_later(core, key, rev)  # leave the line, as etcd's Mutex does on any failure
            raise
        log.info("lock_acquired", key=key.decode(errors="replace"), rev=rev, waited=True)
        return v3lock_pb2.LockResponse(header=header, key=key)

    @etcd_method(v3lock_pb2.UnlockRequest)
    async def unlock(self, core: Caller, req: v3lock_pb2.UnlockRequest) -> v3lock_pb2.UnlockResponse:
        delete = rpc_pb2.DeleteRangeRequest(key=req.key)
        answer = await core.call(Method.DELETE_RANGE, delete.SerializeToString())
        log.info("lock_released", key=req.key.decode(errors="replace"))
        return v3lock_pb2.UnlockResponse(header=rpc_pb2.DeleteRangeResponse.FromString(answer).header)
