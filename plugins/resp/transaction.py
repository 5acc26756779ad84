"""Running string commands as etcd transactions: read the keys, run the commands, commit once.

One command, or a whole MULTI/EXEC block, becomes: one consistent read of every key it touches
(plus the WATCHed keys), the commands run against that :class:`~plugins.resp.strings.View`, then
ONE Txn carrying every change, guarded by "each key's mod revision is still what was read". If
another client changed one of those keys in between, the Txn fails and everything runs again on a
fresh read; a WATCHed key that changed since WATCH aborts instead (EXEC answers the null array).
Reads and writes are therefore linearizable and a MULTI block is atomic, in etcd's terms.
"""

from __future__ import annotations

import asyncio
import random

import structlog

from actors.errors import EtcdError
from actors.proto import kv_pb2
from plugins.resp.codec import NULL_ARRAY, NullArray, ReplyError
from plugins.resp.store import Store, delete_op, put_op, range_op, reply_error, unchanged
from plugins.resp.strings import STRING_COMMANDS, Entry, View, command_keys

log = structlog.get_logger()

MAX_ATTEMPTS = 64  # a key this contended makes the command fail rather than spin forever
MAX_BACKOFF = 0.05  # seconds: the most a loser waits before reading again


class Leases:
    """The leases granted while running commands, so the ones no commit used can be revoked."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.granted: list[int] = []

    async def grant(self, ttl_ms: int) -> int:
        lease = await self.store.grant(ttl_ms)
        self.granted.append(lease)
        return lease

    async def ttl_ms(self, lease: int) -> int:
        ttl = (await self.store.time_to_live(lease)).TTL
        return -2 if ttl < 0 else ttl * 1000

    def revoke_unused(self, used: set[int]) -> None:
        for lease in self.granted:
            if lease not in used:
                self.store.release(lease)
        self.granted = []


async def read(store: Store, keys: list[bytes]) -> dict[bytes, kv_pb2.KeyValue | None]:
    """Every key at one revision (a single Range, or one read-only Txn of ranges)."""
    if not keys:
        return {}  # ECHO, PING: nothing to read
    if len(keys) == 1:
        return {keys[0]: await store.get(keys[0])}
    response = await store.txn(success=[range_op(k) for k in keys])
    return {
        key: (r.response_range.kvs[0] if r.response_range.kvs else None)
        for key, r in zip(keys, response.responses, strict=True)
    }


async def execute(
    store: Store, commands: list[list[bytes]], watched: dict[bytes, int] | None = None
) -> list[object] | NullArray:
    """The replies of ``commands`` run atomically; :data:`NULL_ARRAY` when a watched key changed."""
    watched = watched or {}
    keys = list(dict.fromkeys(k for args in commands for k in command_keys(args)))
    leases = Leases(store)
    try:
        for attempt in range(MAX_ATTEMPTS):
            if attempt:  # lost a race: wait a random, growing while, so contenders stop colliding
                await asyncio.sleep(random.uniform(0, min(MAX_BACKOFF, 0.001 * 2**attempt)))
            kvs = await read(store, list(dict.fromkeys([*keys, *watched])))
            if any((kvs[k].mod_revision if kvs[k] else 0) != rev for k, rev in watched.items()):
                return NULL_ARRAY
            view = View(
                {k: None if kv is None else Entry(kv.value, kv.lease) for k, kv in kvs.items()},
                leases.grant,
                leases.ttl_ms,
            )
            replies = [await _run(view, args) for args in commands]
            ops = _changes(view, keys)
            if not ops:
                return replies  # nothing to write: the read was one linearizable snapshot
            guards = [unchanged(k, kv.mod_revision if kv else 0) for k, kv in kvs.items()]
            if (await store.txn(guards, ops)).succeeded:
                used = {e.lease for e in view.after.values() if e is not None}
                leases.revoke_unused(used)
                for key in keys:
                    old = view.before[key]
                    if old is not None and old.lease and old.lease not in used:
                        store.release(old.lease)
                return replies
            leases.revoke_unused(set())
            log.debug("resp_txn_retry", keys=len(keys))
        raise ReplyError("ERR cairn: too much contention on these keys, try again")
    except EtcdError as e:
        raise reply_error(e) from None
    finally:
        leases.revoke_unused(set())


async def _run(view: View, args: list[bytes]) -> object:
    """One command's reply; a failing command leaves the view as it found it (Redis's EXEC goes on)."""
    saved = dict(view.after)
    try:
        return await STRING_COMMANDS[args[0].upper()][0](view, args)
    except ReplyError as e:
        view.after = saved
        return e


def _changes(view: View, keys: list[bytes]) -> list:
    ops = []
    for key in keys:
        before, after = view.before[key], view.after[key]
        if after is before:
            continue
        if after is None:
            ops.append(delete_op(key))
        else:
            ops.append(put_op(key, after.value, after.lease))
    return ops
