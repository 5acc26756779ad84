"""etcd's v3election service (Campaign, Proclaim, Leader, Observe, Resign), served in the frontend.

A candidate puts ``<name>/<lease hex>`` holding its proclamation on its lease and waits in line by
create revision (:mod:`plugins.grpc.waitline`); the leader is the key with the lowest create
revision, and its ``LeaderKey`` (key + create revision) is what Proclaim and Resign are guarded by.
Observe streams the leader's value each time it is proclaimed, and each new leader in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from actors.errors import Code, EtcdError
from actors.proto import kv_pb2, rpc_pb2, v3election_pb2
from node.api import Client
from plugins.grpc.waitline import (
    DELETE,
    PUT,
    Caller,
    SessionExpired,
    contender,
    created_at,
    etcd_method,
    join_line,
    owner_range,
    parse,
    prefix_of,
    prefix_range_end,
    range_kv,
    release,
    release_later,
    session_lease,
    txn,
    unknown,
    wait_for_turn,
    watch_responses,
)

log = structlog.get_logger()

# etcd's texts (v3election.ErrMissingLeaderKey, concurrency.ErrElectionNotLeader / NoLeader)
MISSING_LEADER = EtcdError(Code.UNKNOWN, '"leader" field must be provided')
NOT_LEADER = EtcdError(Code.UNKNOWN, "election: not leader")
NO_LEADER = EtcdError(Code.UNKNOWN, "election: no leader")

Leadership = tuple[rpc_pb2.ResponseHeader, kv_pb2.KeyValue]


class ElectionService:
    """The Election methods on serialized v3electionpb messages; errors as etcd words them."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- Campaign ----------------------------------------------------------------------------------------
    @etcd_method(v3election_pb2.CampaignRequest)
    async def campaign(
        self, core: Caller, req: v3election_pb2.CampaignRequest
    ) -> v3election_pb2.CampaignResponse:
        lease, prefix, key = await contender(core, req.name, req.lease)
        answer, rev = await join_line(core, rpc_pb2.PutRequest(key=key, value=req.value, lease=lease))
        # the same lease campaigned before: it keeps its place, with the new value
        if not answer.succeeded and answer.responses[0].response_range.kvs[0].value != req.value:
            await proclaim_as(core, key, rev, lease, req.value)
        try:
            await wait_for_turn(core, prefix, key, rev)
        except SessionExpired:
            log.info("campaign_session_expired", key=key.decode(errors="replace"), rev=rev)
            raise NOT_LEADER.copy() from None
        except asyncio.CancelledError:
            release_later(core, key, rev)  # the candidate went away: leave the line
            raise
        log.info("campaign_won", key=key.decode(errors="replace"), rev=rev)
        leader = v3election_pb2.LeaderKey(name=req.name, key=key, rev=rev, lease=lease)
        return v3election_pb2.CampaignResponse(header=answer.header, leader=leader)

    # -- Proclaim, Resign --------------------------------------------------------------------------------
    @etcd_method(v3election_pb2.ProclaimRequest)
    async def proclaim(
        self, core: Caller, req: v3election_pb2.ProclaimRequest
    ) -> v3election_pb2.ProclaimResponse:
        if not req.HasField("leader"):
            raise MISSING_LEADER.copy()
        leader = req.leader
        lease = await session_lease(core, leader.lease)
        answer = await proclaim_as(core, leader.key, leader.rev, lease, req.value)
        return v3election_pb2.ProclaimResponse(header=answer.header)

    @etcd_method(v3election_pb2.ResignRequest)
    async def resign(self, core: Caller, req: v3election_pb2.ResignRequest) -> v3election_pb2.ResignResponse:
        if not req.HasField("leader"):
            raise MISSING_LEADER.copy()
        answer = await release(core, req.leader.key, req.leader.rev)
        if answer.succeeded:
            log.info("campaign_resigned", key=req.leader.key.decode(errors="replace"), rev=req.leader.rev)
        return v3election_pb2.ResignResponse(header=answer.header)

    # -- Leader, Observe ---------------------------------------------------------------------------------
    @etcd_method(v3election_pb2.LeaderRequest)
    async def leader(self, core: Caller, req: v3election_pb2.LeaderRequest) -> v3election_pb2.LeaderResponse:
        answer = await range_kv(core, owner_range(prefix_of(req.name)))
        if not answer.kvs:
            raise NO_LEADER.copy()
        return v3election_pb2.LeaderResponse(header=answer.header, kv=answer.kvs[0])

    async def observe(self, request: bytes, token: str | None = None) -> AsyncIterator[bytes]:
        """Each leader as it is elected and each value it proclaims, in order; the stream ends (as
        etcd's does) when a watch under it is cancelled, e.g. by a compaction."""
        req = parse(v3election_pb2.LeaderRequest, request)
        try:
            async for header, kv in leaderships(Caller(self.client, token), prefix_of(req.name)):
                yield v3election_pb2.LeaderResponse(header=header, kv=kv).SerializeToString()
        except EtcdError as e:
            raise unknown(e) from None


async def proclaim_as(core: Caller, key: bytes, rev: int, lease: int, value: bytes) -> rpc_pb2.TxnResponse:
    """Put ``value`` on the leader key if it is still the one created at ``rev``."""
    put = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
    answer = await txn(
        core,
        rpc_pb2.TxnRequest(compare=[created_at(key, rev)], success=[rpc_pb2.RequestOp(request_put=put)]),
    )
    if not answer.succeeded:
        raise NOT_LEADER.copy()
    return answer


async def leaderships(core: Caller, prefix: bytes) -> AsyncIterator[Leadership]:
    """etcd's Election.observe: each leader under ``prefix`` and each value it proclaims."""
    while True:
        current = await range_kv(core, owner_range(prefix))
        if current.kvs:
            leadership: Leadership | None = (current.header, current.kvs[0])
        else:
            leadership = await first_candidate(core, prefix, current.header.revision)
        if leadership is None:
            return
        yield leadership
        header, kv = leadership
        deleted = False
        leader = rpc_pb2.WatchCreateRequest(key=kv.key, start_revision=header.revision + 1)
        async with contextlib.aclosing(watch_responses(core, leader)) as responses:
            async for response in responses:
                for event in response.events:
                    if event.type == DELETE:
                        deleted = True
                        break
                    yield response.header, event.kv
                if deleted:
                    break
        if not deleted:
            return  # the watch was cancelled (a compaction): the stream ends, as etcd's does


async def first_candidate(core: Caller, prefix: bytes, rev: int) -> Leadership | None:
    """The first key put under ``prefix`` from ``rev`` on, at its own revision (None: watch lost)."""
    candidates = rpc_pb2.WatchCreateRequest(
        key=prefix, range_end=prefix_range_end(prefix), start_revision=rev
    )
    async with contextlib.aclosing(watch_responses(core, candidates)) as responses:
        async for response in responses:
            for event in response.events:
                if event.type == PUT:
                    header = rpc_pb2.ResponseHeader()
                    header.CopyFrom(response.header)
                    header.revision = event.kv.mod_revision
                    return header, event.kv
    return None
