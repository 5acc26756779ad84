"""The etcd requests behind Redis commands: KV, txn and lease calls through ``node.api.Client``.

Everything here is etcd semantics spelled in etcd's own protobuf messages: a conditional SET is
a Txn whose compare is the key's create revision, a counter is a compare-and-swap Txn on the
mod revision, a TTL is a lease. Nothing is cached: every answer is the node's.
"""

from __future__ import annotations

import asyncio
import math

from actors import errors
from actors.errors import EtcdError
from actors.proto import kv_pb2, rpc_pb2
from actors.protocol import Method
from node.api import Client
from plugins.resp.codec import ReplyError

Compare = rpc_pb2.Compare
RequestOp = rpc_pb2.RequestOp

ALL_KEYS = (b"\0", b"\0")  # etcd's (key, range_end) for the whole key space


def range_op(key: bytes, count_only: bool = False) -> rpc_pb2.RequestOp:
    return RequestOp(request_range=rpc_pb2.RangeRequest(key=key, count_only=count_only))


def put_op(key: bytes, value: bytes, lease: int = 0, **flags: bool) -> rpc_pb2.RequestOp:
    return RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease, **flags))


def delete_op(key: bytes, prev_kv: bool = False) -> rpc_pb2.RequestOp:
    return RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, prev_kv=prev_kv))


def exists(key: bytes, present: bool = True) -> rpc_pb2.Compare:
    """A compare that holds when the key exists (``present``) or does not."""
    return Compare(
        key=key,
        target=Compare.CREATE,
        result=Compare.GREATER if present else Compare.EQUAL,
        create_revision=0,
    )


def unchanged(key: bytes, mod_revision: int) -> rpc_pb2.Compare:
    """A compare that holds while the key's mod revision is still ``mod_revision`` (0: still absent)."""
    return Compare(key=key, target=Compare.MOD, result=Compare.EQUAL, mod_revision=mod_revision)


def reply_error(error: EtcdError) -> ReplyError:
    """etcd's error as a Redis error reply: auth errors get Redis's codes, the rest ``ERR <etcd text>``."""
    if error == errors.USER_EMPTY:
        return ReplyError("NOAUTH Authentication required.")
    if error == errors.PERMISSION_DENIED:
        return ReplyError("NOPERM this user has no permissions to access one of the keys used as arguments")
    return ReplyError("ERR " + error.message)


class Store:
    """Typed etcd calls over the frontend's shared core client, as one connection's etcd user.

    After ``authenticate`` every call carries the user's token; a token the node has expired
    (simple tokens lapse after ``auth-token-ttl`` of inactivity) is renewed once, transparently,
    with the credentials the connection gave, as etcd's own clients do.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.token: str | None = None
        self._credentials: tuple[str, str] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate(self, name: str, password: str) -> None:
        request = rpc_pb2.AuthenticateRequest(name=name, password=password)
        response = await self.call(Method.AUTHENTICATE, request.SerializeToString())
        self.token = rpc_pb2.AuthenticateResponse.FromString(response).token
        self._credentials = (name, password)

    async def call(self, method: Method, body: bytes) -> bytes:
        try:
            return await self.client.call(method, body, self.token)
        except EtcdError as e:
            if e != errors.INVALID_AUTH_TOKEN or self._credentials is None:
                raise
        await self.authenticate(*self._credentials)
        return await self.client.call(method, body, self.token)

    async def range(self, key: bytes, range_end: bytes = b"", **options: object) -> rpc_pb2.RangeResponse:
        request = rpc_pb2.RangeRequest(key=key, range_end=range_end, **options)
        return rpc_pb2.RangeResponse.FromString(
            await self.call(Method.RANGE, request.SerializeToString())
        )

    async def get(self, key: bytes) -> kv_pb2.KeyValue | None:
        kvs = (await self.range(key)).kvs
        return kvs[0] if kvs else None

    async def put(self, key: bytes, value: bytes, lease: int = 0, **flags: bool) -> rpc_pb2.PutResponse:
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease, **flags)
        return rpc_pb2.PutResponse.FromString(await self.call(Method.PUT, request.SerializeToString()))

    async def txn(
        self,
        compare: list[rpc_pb2.Compare] | None = None,
        success: list[rpc_pb2.RequestOp] | None = None,
        failure: list[rpc_pb2.RequestOp] | None = None,
    ) -> rpc_pb2.TxnResponse:
        request = rpc_pb2.TxnRequest(compare=compare or [], success=success or [], failure=failure or [])
        return rpc_pb2.TxnResponse.FromString(await self.call(Method.TXN, request.SerializeToString()))

    async def count(self) -> int:
        return (await self.range(*ALL_KEYS, count_only=True)).count

    async def grant(self, ttl_ms: int) -> int:
        """A new lease living at least ``ttl_ms`` (leases count whole seconds: rounded up); its id."""
        request = rpc_pb2.LeaseGrantRequest(TTL=max(1, math.ceil(ttl_ms / 1000)))
        response = await self.call(Method.LEASE_GRANT, request.SerializeToString())
        return rpc_pb2.LeaseGrantResponse.FromString(response).ID

    async def time_to_live(self, lease: int, keys: bool = False) -> rpc_pb2.LeaseTimeToLiveResponse:
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease, keys=keys)
        response = await self.call(Method.LEASE_TIME_TO_LIVE, request.SerializeToString())
        return rpc_pb2.LeaseTimeToLiveResponse.FromString(response)

    async def revoke(self, lease: int) -> None:
        request = rpc_pb2.LeaseRevokeRequest(ID=lease)
        await self.call(Method.LEASE_REVOKE, request.SerializeToString())

    def release(self, lease: int) -> None:
        """Revoke, in the background, a lease this frontend granted once no key is attached to it.

        Redis drops a key's TTL when the key is overwritten or persisted; in etcd the key leaves
        its lease, which would otherwise live on, empty, until its TTL ran out.
        """
        if lease:
            task = asyncio.get_running_loop().create_task(self._release(lease))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _release(self, lease: int) -> None:
        try:
            if not (await self.time_to_live(lease, keys=True)).keys:
                await self.revoke(lease)
        except Exception:  # gone already, or the node is stopping: the lease expires by itself
            return

    async def status(self) -> rpc_pb2.StatusResponse:
        response = await self.call(Method.STATUS, rpc_pb2.StatusRequest().SerializeToString())
        return rpc_pb2.StatusResponse.FromString(response)
