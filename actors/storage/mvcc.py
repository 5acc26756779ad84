"""etcd's MVCC key-value model (mvcc/ and etcdserver/apply.go of etcd 3.4) over a :class:`Backend`.

Every write transaction that changes something takes the next store revision; each change in
it gets a sub revision. A row of the ``kv`` column family is keyed by that revision (see
:mod:`actors.storage.keyindex`) and holds the serialized ``mvccpb.KeyValue``, exactly as etcd
stores it in bolt; deletions are tombstone rows. The in-memory :class:`KeyIndex`, rebuilt from
those rows on open, maps keys to revisions, so a range is an index walk plus one multi-get.

Responses copy etcd byte for byte where a client can see it: which revision each header of a
txn's sub-responses carries, ``count`` versus ``more`` under a limit, sort order, prev_kv.
Applying is deterministic and a refused request leaves no trace: every check runs before the
first write, and the one failure etcd's checks cannot foresee (inside a txn) is rolled back.
Writes go into the backend's pending batch, which the caller commits once per batch of entries.

Leases are replicated state applied here too (etcd's lessor without its clock, see
:mod:`actors.lease.table`): a put naming a lease checks it exists at apply time and attaches the
key, deletes detach, and a revoke deletes every attached key in one revision of the same batch.
What the lease actor must mirror (grants, checkpoints, revokes) is queued on :attr:`lease_events`.

Watch: every revision applied queues its ``mvccpb.Event`` messages on :attr:`MvccStore.watch_events`
for the watch hub, each with ``prev_kv`` (known here for the price of one row read), and
:meth:`MvccStore.history` reads the events of past revisions back from the ``kv`` rows for
watchers that start in the past or fell behind.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from google.protobuf.message import Message

from actors import errors
from actors.errors import Code, EtcdError
from actors.lease.table import LeaseTable
from actors.proto import kv_pb2, rpc_pb2
from actors.protocol import Method, varint
from actors.storage.backend import META, Backend
from actors.storage.hashes import hash_kv
from actors.storage.keyindex import REVISION_SIZE, KeyIndex, main_revision, revision_bound, revision_key
from actors.storage.validate import decode, parse

KeyValue = kv_pb2.KeyValue
RangeRequest = rpc_pb2.RangeRequest
RangeResponse = rpc_pb2.RangeResponse
Compare = rpc_pb2.Compare

COMPACT_REVISION = b"compact_revision"  # meta key: i64 big-endian

EVENT_PUT = kv_pb2.Event.PUT
EVENT_DELETE = kv_pb2.Event.DELETE

_SORT_KEYS = {
    RangeRequest.KEY: attrgetter("key"),
    RangeRequest.VERSION: attrgetter("version"),
    RangeRequest.CREATE: attrgetter("create_revision"),
    RangeRequest.MOD: attrgetter("mod_revision"),
    RangeRequest.VALUE: attrgetter("value"),
}
_EMPTY_KV = KeyValue()

_LEASE_REQUESTS: dict[int, type[Message]] = {
    Method.LEASE_GRANT: rpc_pb2.LeaseGrantRequest,
    Method.LEASE_REVOKE: rpc_pb2.LeaseRevokeRequest,
    Method.LEASE_CHECKPOINT: rpc_pb2.LeaseCheckpointRequest,
}

LeaseChange = tuple[str, int] | tuple[str, int, int, int]  # ("grant", id, ttl, remaining) | ("revoke", id)
RevisionEvents = tuple[int, list[bytes]]  # (revision, serialized mvccpb.Events in sub revision order)

HISTORY_SCAN_ROWS = 10_000
"""Rows one :meth:`MvccStore.history` call reads at most (it stops at a revision boundary after
that), so catching a watcher up never stalls the storage actor's loop for long."""


def _event(kind: int, kv: bytes, prev: bytes | None) -> bytes:
    """Wire bytes of an ``mvccpb.Event`` (fields in number order, as protobuf writes them)."""
    out = (b"\x08\x01\x12" if kind == EVENT_DELETE else b"\x12") + varint(len(kv)) + kv
    if prev is not None:
        out += b"\x1a" + varint(len(prev)) + prev
    return out


def _row_key(row: bytes) -> bytes:
    """The key of a serialized KeyValue without parsing all of it (field 1 comes first)."""
    if row[:1] == b"\x0a":
        n, shift, i = 0, 0, 1
        while True:
            b = row[i]
            n |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                return row[i : i + n]
            shift += 7
    return KeyValue.FromString(row).key


def _embed(tag: bytes, rows: list[bytes]) -> list[bytes]:
    """Wire bytes of a repeated KeyValue field holding the serialized ``rows``."""
    parts = []
    for row in rows:
        parts += (tag, varint(len(row)), row)
    return parts


class MvccStore:
    """The key-value state machine: applies KV writes, serves ranges at any kept revision."""

    def __init__(
        self,
        backend: Backend,
        leases: LeaseTable | None = None,
        *,
        lease_exists: Callable[[int], bool] | None = None,
    ) -> None:
        """``leases`` defaults to a :class:`LeaseTable` on ``backend`` with etcd's default minimum
        TTL. ``lease_exists`` is for KV-only tests: it stands in for the table (existence checks
        only, no attachments, lease requests refused)."""
        self._backend = backend
        if lease_exists is not None and leases is None:
            self._leases: LeaseTable | None = None
            self._lease_exists = lease_exists
        else:
            self._leases = leases if leases is not None else LeaseTable(backend)
            self._lease_exists = self._leases.exists
        self.lease_events: list[LeaseChange] = []
        """What the lease actor must mirror, in apply order: ``("grant", id, ttl, remaining_ttl)``
        when a lease is granted *or checkpointed* (an upsert: the lease exists with these values),
        ``("revoke", id)``. The storage actor drains it after each batch."""
        self._index = KeyIndex()
        self.revision = 1
        """The store revision: that of the last write that changed something (1 when empty)."""
        self.compact_revision = -1
        """Revision of the last compaction (-1 before any, as in etcd); reads below it are refused."""
        self._changes = 0  # changes made so far by the write in progress = the next sub revision
        # While a txn applies: (key, create_revision, version) before each of its changes
        self._undo: list[tuple[bytes, int, int]] | None = None
        self._lease_undo: list[tuple[bytes, int]] = []  # while a txn applies: (key, lease before)
        self.events: list[tuple[int, bytes]] | None = None
        """Set to a list to collect ``(Event.EventType, serialized KeyValue as watch sends it)``
        for every change applied; the watch hub drains it."""
        self.watch_events: list[RevisionEvents] | None = []
        """``(revision, [serialized mvccpb.Event, ...])`` for every revision applied, events in sub
        revision order, each with ``prev_kv`` when etcd's watch would find one (the key's value at
        revision - 1; none for a create). The storage actor drains it after each batch and hands
        it to the watch hub; set to None to stop collecting (saves a row read per put)."""
        self._rev_events: list[bytes] = []  # events of the write in progress
        # While a write applies: key -> its row before this revision (None: absent), for prev_kv
        self._before: dict[bytes, bytes | None] = {}
        self._handlers: dict[int, Callable[[Message], Message]] = {
            Method.RANGE: self.range,
            Method.PUT: self.put,
            Method.DELETE_RANGE: self.delete_range,
            Method.TXN: self.txn,
            Method.COMPACT: self.compact,
            Method.LEASE_GRANT: self.lease_grant,
            Method.LEASE_REVOKE: self.lease_revoke,
            Method.LEASE_CHECKPOINT: self.lease_checkpoint,
        }
        self._restore()

    def _restore(self) -> None:
        """Rebuild the index from the committed rows (revision order) and the meta values."""
        raw = self._backend.get(META, COMPACT_REVISION)
        if raw is not None:
            self.compact_revision = int.from_bytes(raw, "big", signed=True)
        index = self._index
        last = b""
        parse = KeyValue.FromString
        key_lease: dict[bytes, int] = {}  # each live key's lease, from its latest row (as etcd restores)
        for row, value in self._backend.scan_kv():
            kv = parse(value)
            if len(row) == REVISION_SIZE:
                index.restore(kv.key, row, kv.create_revision, kv.version)
                if kv.lease:
                    key_lease[kv.key] = kv.lease
                else:
                    key_lease.pop(kv.key, None)
            else:
                index.restore_tombstone(kv.key, row)
                key_lease.pop(kv.key, None)
            last = row
        self.revision = max(main_revision(last) if last else 1, self.compact_revision, 1)
        table = self._leases
        if table is not None:
            for key, lease in key_lease.items():
                if table.exists(lease):  # always, unless the store was damaged: etcd skips those too
                    table.attach(lease, key)

    # -- entry points ----------------------------------------------------------------------------

    def apply(self, method: int, request: bytes) -> Message:
        """Apply one committed KV or lease request (its serialized etcd message); return etcd's response.

        Raises the :class:`EtcdError` etcd would answer; the store is then unchanged.
        """
        handler = self._handlers.get(method)
        if handler is None:
            raise EtcdError(Code.UNIMPLEMENTED, f"cairn: method {method} is not a KV request")
        cls = _LEASE_REQUESTS.get(method)
        return handler(decode(method, request) if cls is None else parse(cls, request))

    @property
    def key_count(self) -> int:
        """Keys in the index (etcd_debugging_mvcc_keys_total), deleted ones with history included."""
        return len(self._index)

    @property
    def live_key_count(self) -> int:
        """Keys that exist at the current revision (a snapshot's "total keys")."""
        return self._index.live_count()

    def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """Serve a Range at the current revision (header.revision set; the caller adds the rest)."""
        resp = RangeResponse()
        self._range(req, self.revision, resp)
        return resp

    def put(self, req: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        """Apply a Put."""
        if req.lease and not self._lease_exists(req.lease):
            raise errors.LEASE_NOT_FOUND
        resp = rpc_pb2.PutResponse()
        self._put(req, resp)
        self._end_write()
        return resp

    def delete_range(self, req: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        """Apply a DeleteRange (deleting nothing does not take a revision)."""
        resp = rpc_pb2.DeleteRangeResponse()
        self._delete_range(req, resp)
        self._end_write()
        return resp

    def txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """Apply a Txn: one revision for all its writes, if it writes anything.

        Every compare, nested ones included, is evaluated first against the state before the
        txn (etcd's compareToPath); the ranges it runs then see its own earlier writes.
        Read-only txns (see :func:`is_txn_readonly`) may be served here outside the raft log.
        """
        path = self._path(req)
        if not is_txn_readonly(req):
            self._check_puts(req, path)
        self._check_ranges(req, path)
        resp = rpc_pb2.TxnResponse()
        self._lease_undo.clear()
        # etcd checks its puts against the state *before* the txn, so a put with ignore_value
        # of a key that an earlier op of the same txn deleted passes the checks and then fails
        # (etcd 3.4 panics there, on every member). cairn undoes the txn and refuses it instead.
        self._undo = []
        events = len(self.events) if self.events is not None else 0
        try:
            self._txn(req, path, resp)
        except EtcdError:
            self._rollback(events)
            raise
        finally:
            self._undo = None
        resp.header.revision = self.revision + 1 if self._changes else self.revision
        self._end_write()
        return resp

    def compact(self, req: rpc_pb2.CompactionRequest) -> rpc_pb2.CompactionResponse:
        """Drop history before ``req.revision``: from the index and, in the pending batch, from disk."""
        rev = req.revision
        if rev <= self.compact_revision:
            raise errors.COMPACTED
        if rev > self.revision:
            raise errors.FUTURE_REV
        delete = self._backend.delete_kv
        for row in self._index.compact(rev):
            delete(row)
        self._backend.put(META, COMPACT_REVISION, rev.to_bytes(8, "big", signed=True))
        self.compact_revision = rev
        resp = rpc_pb2.CompactionResponse()
        resp.header.revision = self.revision
        return resp

    def hash_kv(self, rev: int) -> tuple[int, int]:
        """etcd's HashByRev: ``(hash of the rows up to rev, compact revision)``; 0 = current revision.

        Only committed rows are read: the caller commits first.
        """
        compact = self.compact_revision
        if 0 < rev <= compact:
            raise errors.COMPACTED.copy()
        if rev > self.revision:
            raise errors.FUTURE_REV.copy()
        if rev == 0:
            rev = self.revision
        rev = max(rev, -1)  # etcd hashes no row at all for a negative revision
        rows = self._backend.scan_kv(b"", revision_bound(rev))
        return hash_kv(rows, self._index.keep(rev), compact), compact

    # -- leases ----------------------------------------------------------------------------------

    @property
    def leases(self) -> LeaseTable | None:
        """The lease table (None only in the KV-only ``lease_exists`` mode)."""
        return self._leases

    def _table(self) -> LeaseTable:
        if self._leases is None:
            raise EtcdError(Code.UNIMPLEMENTED, "cairn: this store keeps no lease table")
        return self._leases

    def lease_grant(self, req: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse:
        """Apply a LeaseGrant (the proposer already picked a non-zero ID); TTL is the granted one.

        Takes no revision: leases are not KV data (etcd answers the current revision).
        """
        ttl = self._table().grant(req.ID, req.TTL)
        self.lease_events.append(("grant", req.ID, ttl, 0))
        resp = rpc_pb2.LeaseGrantResponse(ID=req.ID, TTL=ttl)
        resp.header.revision = self.revision
        return resp

    def lease_revoke(self, req: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
        """Apply a LeaseRevoke: delete every attached key, sorted, in ONE revision (none if the lease
        holds no key), as etcd's lessor.Revoke does in one write txn."""
        keys = self._table().revoke(req.ID)
        scratch = rpc_pb2.DeleteRangeResponse()
        for key in keys:
            self._delete_range(rpc_pb2.DeleteRangeRequest(key=key), scratch)
        self._end_write()
        self.lease_events.append(("revoke", req.ID))
        resp = rpc_pb2.LeaseRevokeResponse()
        resp.header.revision = self.revision
        return resp

    def lease_checkpoint(self, req: rpc_pb2.LeaseCheckpointRequest) -> rpc_pb2.LeaseCheckpointResponse:
        """Apply a LeaseCheckpoint: record remaining TTLs (unknown leases are skipped, as in etcd)."""
        table = self._table()
        for cp in req.checkpoints:
            if table.checkpoint(cp.ID, cp.remaining_TTL):
                self.lease_events.append(("grant", cp.ID, table.get(cp.ID).ttl, cp.remaining_TTL))
        resp = rpc_pb2.LeaseCheckpointResponse()
        resp.header.revision = self.revision
        return resp

    def lease_snapshot(self) -> list[LeaseChange]:
        """A ``("grant", id, ttl, remaining_ttl)`` for every lease, in id order: what the lease actor
        needs to start from (on open, or after the store is replaced by a snapshot)."""
        if self._leases is None:
            return []
        return [("grant", lease.id, lease.ttl, lease.remaining_ttl) for lease in self._leases]

    def lease_time_to_live(self, req: rpc_pb2.LeaseTimeToLiveRequest) -> rpc_pb2.LeaseTimeToLiveResponse:
        """The replicated half of LeaseTimeToLive: ID, grantedTTL, keys (sorted) if asked.

        TTL is -1 for an unknown lease (etcd's answer, not an error); for a known one it holds the
        TTL the lease would get on a new leader (checkpointed remaining, else granted) until the
        lease actor, which owns the clock, overwrites it with the real remaining time.
        """
        resp = rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID)
        lease = self._table().get(req.ID)
        if lease is None:
            resp.TTL = -1
        else:
            resp.TTL = lease.remaining_ttl or lease.ttl
            resp.grantedTTL = lease.ttl
            if req.keys:
                resp.keys.extend(sorted(lease.keys))
        resp.header.revision = self.revision
        return resp

    def lease_leases(self) -> rpc_pb2.LeaseLeasesResponse:
        """Every lease id (etcd lists them by expiry; the replicated state has no clock: id order)."""
        resp = rpc_pb2.LeaseLeasesResponse()
        add = resp.leases.add
        for lease_id in self._table().ids():
            add(ID=lease_id)
        resp.header.revision = self.revision
        return resp

    # -- reads -----------------------------------------------------------------------------------

    def _range(self, req: rpc_pb2.RangeRequest, cur: int, resp: rpc_pb2.RangeResponse) -> None:
        """Fill ``resp`` for ``req`` as seen at revision ``cur`` (etcd's applierV3backend.Range)."""
        rev = req.revision
        if rev > cur:
            raise errors.FUTURE_REV
        if rev <= 0:
            rev = cur
        if rev < self.compact_revision:
            raise errors.COMPACTED
        revs = self._index.revisions(req.key, req.range_end, rev)
        count = len(revs)
        rows: list[bytes] = []
        more = False
        if count and not req.count_only:
            order, target, limit = req.sort_order, req.sort_target, req.limit
            if order == RangeRequest.NONE and target != RangeRequest.KEY:
                order = RangeRequest.ASCEND  # etcd sorts ascending by default on other targets
            filtered = req.min_mod_revision or req.max_mod_revision
            filtered = filtered or req.min_create_revision or req.max_create_revision
            if target == RangeRequest.KEY and not filtered:
                # rows come in key order already and keys are unique: no need to parse them
                if order == RangeRequest.DESCEND:
                    revs.reverse()
                if 0 < limit < count:
                    del revs[limit:]
                    more = True
                rows = self._rows(revs)
            else:
                if req.sort_order == RangeRequest.NONE and not filtered and limit > 0:
                    # etcd's quirk: it tests the *requested* order, so an unsorted-by-request range
                    # on another target sorts only the first limit+1 keys (key order), then cuts
                    del revs[limit + 1 :]
                kvs = [(KeyValue.FromString(row), row) for row in self._rows(revs)]
                if filtered:
                    kvs = [pair for pair in kvs if _passes(req, pair[0])]
                sort_key = _SORT_KEYS.get(target)
                if order != RangeRequest.NONE and sort_key is not None:
                    # stable, as Go's sort.Sort is on up to 12 rows (insertion sort); on more rows
                    # etcd's pdqsort may order equal sort keys differently
                    kvs.sort(key=lambda pair: sort_key(pair[0]), reverse=order == RangeRequest.DESCEND)
                if 0 < limit < len(kvs):
                    del kvs[limit:]
                    more = True
                rows = [row for _, row in kvs]
        parts = _embed(b"\x12", rows)
        if more:
            parts.append(b"\x18\x01")
        if count:
            parts.append(b"\x20" + varint(count))
        resp.MergeFromString(b"".join(parts))
        if req.keys_only:
            for kv in resp.kvs:
                kv.value = b""
        resp.header.revision = cur

    def values(self, keys: list[bytes]) -> list[bytes | None]:
        """The current value of each key (None: no such key), as a Range of each key alone would
        give it, with one multi-get and no RangeResponse (``Method.GET_MANY``)."""
        revs = self._index.latest_revisions(keys)
        present = [rev for rev in revs if rev is not None]
        rows = iter(self._rows(present) if present else ())
        parse = KeyValue.FromString
        return [None if rev is None else parse(next(rows)).value for rev in revs]

    def _rows(self, revs: list[bytes]) -> list[bytes]:
        rows = self._backend.get_kv(revs)
        if None in rows:
            raise RuntimeError("cairn: kv index points at a revision with no row (corrupt store)")
        return rows

    def _current(self, key: bytes, range_end: bytes) -> list[KeyValue]:
        """The live KeyValues of a range at the current revision."""
        revs = self._index.revisions(key, range_end, self.revision)
        return [KeyValue.FromString(row) for row in self._rows(revs)] if revs else []

    # -- watch history ---------------------------------------------------------------------------

    def history(
        self, key: bytes, range_end: bytes, start_rev: int, end_rev: int, limit: int
    ) -> tuple[list[RevisionEvents], int]:
        """The events of revisions ``[start_rev, end_rev]`` on keys of the range, as
        :attr:`watch_events` has them (``prev_kv`` filled), for a watcher catching up.

        ``range_end`` follows etcd: empty = just ``key``, ``b"\\0"`` = every key >= ``key``. Only
        whole revisions, and only committed rows (the caller commits first). Stops at the first
        revision boundary once about ``limit`` events are found or :data:`HISTORY_SCAN_ROWS` rows
        were read; returns ``(revisions, next_rev)``, ``next_rev`` being the first revision not
        read yet (> ``end_rev`` when done).

        Raises ``COMPACTED`` when ``start_rev < compact_revision``: etcd's rule (watcher_group.go
        chooseAll, ``w.minRev < compactRev``), so a watch may restart AT the compact revision, as
        clients do after a compaction. Like etcd, that revision then holds only what compaction
        kept of it: no tombstones, no values superseded in it, no prev_kv (revision - 1 is gone).
        """
        if start_rev < self.compact_revision:
            raise errors.COMPACTED.copy()
        if start_rev > end_rev:
            return [], max(start_rev, end_rev + 1)
        single, from_key = not range_end, range_end == b"\0"
        found: list[tuple[int, int, bytes, bytes | None]] = []  # (revision, kind, kv row, prev_kv revision)
        compact, index = self.compact_revision, self._index
        scanned = 0
        next_rev = end_rev + 1
        current = -1
        for row_key, value in self._backend.scan_kv(revision_key(max(start_rev, 0)), revision_bound(end_rev)):
            main = main_revision(row_key)
            if main != current:
                if scanned and (len(found) >= limit or scanned >= HISTORY_SCAN_ROWS):  # >= 1 revision
                    next_rev = main
                    break
                current = main
            scanned += 1
            k = _row_key(value)
            if (k != key) if single else (k < key or not (from_key or k < range_end)):
                continue
            # prev_kv as etcd's watch server finds it: a range at revision - 1, none when compacted
            before = index.get(k, main - 1) if main - 1 >= compact else None
            if len(row_key) == REVISION_SIZE:
                kv = KeyValue.FromString(value)
                found.append((main, EVENT_PUT, value, None if kv.create_revision == main else before))
            else:
                gone = KeyValue(key=k, mod_revision=main).SerializeToString()
                found.append((main, EVENT_DELETE, gone, before))
        prev_revs = [rev for _, _, _, rev in found if rev is not None]
        prev_rows = iter(self._rows(prev_revs) if prev_revs else ())
        out: list[RevisionEvents] = []
        for main, kind, row, rev in found:
            ev = _event(kind, row, None if rev is None else next(prev_rows))
            if out and out[-1][0] == main:
                out[-1][1].append(ev)
            else:
                out.append((main, [ev]))
        return out, next_rev

    # -- writes ----------------------------------------------------------------------------------

    def _end_write(self) -> None:
        if self._changes:
            self.revision += 1
            self._changes = 0
            if self._rev_events:
                if self.watch_events is not None:
                    self.watch_events.append((self.revision, self._rev_events))
                self._rev_events = []
            self._before.clear()

    def _prev(self, key: bytes, read: bytes | None) -> bytes | None:
        """The row of ``key`` before the write in progress (``read``: its latest row, if known).

        A key changed twice in one revision (a from-key delete and a put in one txn, which
        etcd's overlap check lets through) gets, like in etcd, the value at revision - 1 both times.
        """
        before = self._before
        if key in before:
            return before[key]
        if read is None:
            latest = self._index.latest(key)
            if latest is not None:
                read = self._rows([latest[0]])[0]
        before[key] = read
        return read

    def _rollback(self, events: int) -> None:
        """Forget every change of the txn in progress (index, pending rows, events)."""
        for key, created, version in reversed(self._undo):
            self._backend.delete_kv(self._index.revert(key, created, version))
        table = self._leases
        if table is not None:
            for key, lease in reversed(self._lease_undo):
                current = table.lease_of(key)
                if current:
                    table.detach(current, key)
                if lease:
                    table.attach(lease, key)
        self._lease_undo.clear()
        self._changes = 0
        self._rev_events = []
        self._before.clear()
        if self.events is not None:
            del self.events[events:]

    def _put(self, req: rpc_pb2.PutRequest, resp: rpc_pb2.PutResponse) -> None:
        """The body of a put (lease existence already checked); raises before writing anything."""
        key, value, lease = req.key, req.value, req.lease
        ignore_value, ignore_lease = req.ignore_value, req.ignore_lease
        prev_row = None
        if ignore_value or ignore_lease or req.prev_kv:
            latest = self._index.latest(key)
            if latest is None:
                if ignore_value or ignore_lease:
                    raise errors.KEY_NOT_FOUND
            else:
                row = prev_row = self._rows([latest[0]])[0]
                if req.prev_kv:
                    resp.prev_kv.ParseFromString(row)
                if ignore_value or ignore_lease:
                    prev = KeyValue.FromString(row)
                    if ignore_value:
                        value = prev.value
                    if ignore_lease:
                        lease = prev.lease
        main = self.revision + 1
        watch = self.watch_events is not None
        if watch:
            prev_row = self._prev(key, prev_row)
        rev = ((main << 64) | self._changes).to_bytes(REVISION_SIZE, "big")
        created, version = self._index.put(key, rev)
        if self._undo is not None:
            self._undo.append((key, created, version - 1) if version > 1 else (key, 0, 0))
        row = KeyValue(
            key=key, create_revision=created, mod_revision=main, version=version, value=value, lease=lease
        ).SerializeToString()
        self._backend.put_kv(rev, row)
        self._changes += 1
        table = self._leases
        if table is not None:
            old = table.lease_of(key)
            if old != lease:
                if self._undo is not None:
                    self._lease_undo.append((key, old))
                if old:
                    table.detach(old, key)
                if lease:
                    table.attach(lease, key)
        if self.events is not None:
            self.events.append((EVENT_PUT, row))
        if watch:  # a create event has no prev_kv in etcd, even when the key lived at revision - 1
            self._rev_events.append(_event(EVENT_PUT, row, None if created == main else prev_row))
        resp.header.revision = main

    def _delete_range(self, req: rpc_pb2.DeleteRangeRequest, resp: rpc_pb2.DeleteRangeResponse) -> None:
        at = self.revision + 1 if self._changes else self.revision
        live = self._index.range(req.key, req.range_end, at)
        if live:
            parts = [b"\x10" + varint(len(live))]
            watch = self.watch_events is not None
            rows = self._rows([rev for _, rev in live]) if req.prev_kv or watch else []
            if req.prev_kv:
                parts += _embed(b"\x1a", rows)
            resp.MergeFromString(b"".join(parts))
            main = self.revision + 1
            index, put_kv, events = self._index, self._backend.put_kv, self.events
            undo, table = self._undo, self._leases
            for i, (key, _) in enumerate(live):
                if undo is not None:
                    _, created, version = index.latest(key)
                    undo.append((key, created, version))
                prev_row = self._prev(key, rows[i]) if watch else None
                tomb = index.tombstone(key, ((main << 64) | self._changes).to_bytes(REVISION_SIZE, "big"))
                put_kv(tomb, KeyValue(key=key).SerializeToString())
                self._changes += 1
                if table is not None:
                    lease = table.lease_of(key)
                    if lease:
                        if undo is not None:
                            self._lease_undo.append((key, lease))
                        table.detach(lease, key)
                if events is not None or watch:
                    gone = KeyValue(key=key, mod_revision=main).SerializeToString()
                    if events is not None:
                        events.append((EVENT_DELETE, gone))
                    if watch:
                        self._rev_events.append(_event(EVENT_DELETE, gone, prev_row))
        resp.header.revision = self.revision + 1 if self._changes else self.revision

    # -- txn -------------------------------------------------------------------------------------

    def _path(self, req: rpc_pb2.TxnRequest) -> tuple[bool, list]:
        """Which branch each (nested) txn takes: ``(succeeded, [paths of the branch's nested txns])``."""
        ok = all(self._compare(cmp) for cmp in req.compare)
        ops = req.success if ok else req.failure
        return ok, [self._path(op.request_txn) for op in ops if op.WhichOneof("request") == "request_txn"]

    def _compare(self, cmp: rpc_pb2.Compare) -> bool:
        target = cmp.target
        if not cmp.range_end and target in (Compare.VERSION, Compare.CREATE, Compare.MOD):
            latest = self._index.latest(cmp.key)  # answered by the index, no row read
            if latest is None:
                have = 0
            elif target == Compare.VERSION:
                have = latest[2]
            elif target == Compare.CREATE:
                have = latest[1]
            else:
                have = main_revision(latest[0])
            want = (
                cmp.version
                if target == Compare.VERSION
                else cmp.create_revision
                if target == Compare.CREATE
                else cmp.mod_revision
            )
            return _holds(cmp.result, (have > want) - (have < want))
        kvs = self._current(cmp.key, cmp.range_end)
        if not kvs:
            if target == Compare.VALUE:
                return False  # a missing key has no value, not even b""
            kvs = [_EMPTY_KV]
        return all(_compare_kv(cmp, kv) for kv in kvs)

    def _branch(self, req: rpc_pb2.TxnRequest, path: tuple[bool, list]):
        """``(op, nested path or None)`` for every op of the branch ``path`` chose, recursively."""
        ok, nested = path
        nested_paths = iter(nested)
        for op in req.success if ok else req.failure:
            if op.WhichOneof("request") == "request_txn":
                sub = next(nested_paths)
                yield op, sub
                yield from self._branch(op.request_txn, sub)
            else:
                yield op, None

    def _check_puts(self, req: rpc_pb2.TxnRequest, path: tuple[bool, list]) -> None:
        for op, _ in self._branch(req, path):
            if op.WhichOneof("request") != "request_put":
                continue
            put = op.request_put
            if (put.ignore_value or put.ignore_lease) and self._index.latest(put.key) is None:
                raise errors.KEY_NOT_FOUND
            if put.lease and not self._lease_exists(put.lease):
                raise errors.LEASE_NOT_FOUND

    def _check_ranges(self, req: rpc_pb2.TxnRequest, path: tuple[bool, list]) -> None:
        for op, _ in self._branch(req, path):
            if op.WhichOneof("request") != "request_range":
                continue
            rev = op.request_range.revision
            # etcd's checkRequestRange, quirk included: a negative revision is "compacted"
            if rev == 0:
                continue
            if rev > self.revision:
                raise errors.FUTURE_REV
            if rev < self.compact_revision:
                raise errors.COMPACTED

    def _txn(self, req: rpc_pb2.TxnRequest, path: tuple[bool, list], resp: rpc_pb2.TxnResponse) -> None:
        ok, nested = path
        resp.succeeded = ok
        nested_paths = iter(nested)
        add = resp.responses.add
        for op in req.success if ok else req.failure:
            kind = op.WhichOneof("request")
            out = add()
            if kind == "request_range":
                cur = self.revision + 1 if self._changes else self.revision
                self._range(op.request_range, cur, out.response_range)
            elif kind == "request_put":
                self._put(op.request_put, out.response_put)
            elif kind == "request_delete_range":
                self._delete_range(op.request_delete_range, out.response_delete_range)
            elif kind == "request_txn":
                sub = out.response_txn
                sub.header.SetInParent()  # nested txns answer an empty header, as etcd does
                self._txn(op.request_txn, next(nested_paths), sub)
            # an empty RequestOp (refused by validation) answers an empty ResponseOp


def is_txn_readonly(req: rpc_pb2.TxnRequest) -> bool:
    """etcd's isTxnReadonly: only ranges in both branches (a nested txn counts as a write)."""
    return all(op.WhichOneof("request") == "request_range" for op in req.success) and all(
        op.WhichOneof("request") == "request_range" for op in req.failure
    )


def _passes(req: rpc_pb2.RangeRequest, kv: KeyValue) -> bool:
    """The min/max mod/create revision filters of a range (0 = no bound)."""
    if req.max_mod_revision and kv.mod_revision > req.max_mod_revision:
        return False
    if req.min_mod_revision and kv.mod_revision < req.min_mod_revision:
        return False
    if req.max_create_revision and kv.create_revision > req.max_create_revision:
        return False
    return not (req.min_create_revision and kv.create_revision < req.min_create_revision)


def _compare_kv(cmp: rpc_pb2.Compare, kv: KeyValue) -> bool:
    target = cmp.target
    if target == Compare.VALUE:
        have, want = kv.value, cmp.value
    elif target == Compare.VERSION:
        have, want = kv.version, cmp.version
    elif target == Compare.CREATE:
        have, want = kv.create_revision, cmp.create_revision
    elif target == Compare.MOD:
        have, want = kv.mod_revision, cmp.mod_revision
    elif target == Compare.LEASE:
        have, want = kv.lease, cmp.lease
    else:
        have = want = 0
    return _holds(cmp.result, (have > want) - (have < want))


def _holds(result: int, sign: int) -> bool:
    if result == Compare.EQUAL:
        return sign == 0
    if result == Compare.NOT_EQUAL:
        return sign != 0
    if result == Compare.GREATER:
        return sign > 0
    if result == Compare.LESS:
        return sign < 0
    return True
