"""The storage actor: applies committed raft entries to the MVCC store and serves reads.

Entries arrive in log order and are applied deterministically, a whole turn's worth into one
RocksDB WriteBatch that also records the applied index (exactly-once apply across restarts). The
batch is written without fsync: the raft log already made the entries durable, and a restart
replays the log from the stored applied index. Once a second, the WAL is synced and the raft actor
told which index is now durable here, so it may drop older log entries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
import zmq

from actors import errors, metrics, point_reads
from actors.auth.perms import READ
from actors.auth.store import CHECKED, ROOT_MAINTENANCE, AuthStore
from actors.auth.tokens import TokenProvider
from actors.lease.table import LeaseTable, min_lease_ttl
from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import (
    AUTH_METHODS,
    AUTHED,
    LEASE_EVENT,
    EntryType,
    Kind,
    LeaseEvent,
    Method,
    Record,
    decode_authed,
    decode_history_query,
    decode_proposal,
    encode_history,
    pack_blobs,
    unpack,
    unpack_blobs,
)
from actors.raft.confchange import ConfChange
from actors.raft.members import MemberTable, change_response
from actors.storage.alarms import AlarmTable, alarm_text
from actors.storage.backend import APPLIED_INDEX, AUTH, KV, LEASE, META, Backend
from actors.storage.checkpoint import checkpoints_dir, clear_checkpoints, take_checkpoint, ticket
from actors.storage.defrag import Defragmenter
from actors.storage.hashes import hash_backend
from actors.storage.install import INSTALLED_SNAPSHOT, recover_swap, swap_in
from actors.storage.mvcc import MvccStore
from actors.storage.quota import CHARGED
from actors.storage.validate import parse

log = structlog.get_logger()

MEMBER_PUBLISH_BYTE = bytes((Method.MEMBER_PUBLISH,))  # the method byte of a proposal (decode_proposal)
FLUSH_POLL = 0.005  # seconds between looks at a memtable flush a snapshot waits for
FLUSH_WAIT = 2.0  # ... and how long at most (then the checkpoint flushes what is left itself)
REQUEST_COUNTER = (1 << 48) - 1  # the low bits of a request key; 0 for the lease actor's own proposals
VERSION = "3.4.0"  # the etcd API version cairn speaks; clients read it from Status


@dataclass(slots=True, frozen=True)
class StorageSettings:
    member_id: int
    cluster_id: int
    data_dir: str
    key_prefix: int  # request keys issued by this member's session actor carry it
    heartbeat_ms: int = 100
    election_ms: int = 1000
    initial_members: tuple[rpc_pb2.Member, ...] = ()  # the member table of a new store...
    replace_members: bool = False  # ...or of a store restored from a backup of another cluster


class StorageActor(Actor):
    name = "storage"

    def __init__(
        self, ctx: zmq.Context, settings: StorageSettings, tokens: TokenProvider | None = None
    ) -> None:
        self.settings = settings
        path = os.path.join(settings.data_dir, "member", "kv")
        os.makedirs(path, exist_ok=True)
        recover_swap(path)
        self.backend = Backend(path)
        clear_checkpoints(settings.data_dir)
        self.checkpoints = 0
        self.install_waiting: Record | None = None  # a raft snapshot install waiting for a defragment
        self.snapshot_waiting: list[int] = []  # Maintenance.Snapshot requests waiting for the flush
        self.snapshot_give_up = 0.0
        self.tokens = tokens
        self.store = self._open_store()
        self.members = self._open_members()
        self.inbox = inbox(ctx, self.name)
        self.session = Mailbox(ctx, "session")
        self.raft = Mailbox(ctx, "raft")
        self.lease = Mailbox(ctx, "lease")
        self.watch = Mailbox(ctx, "watch")
        self._send_lease_events(self.store.lease_snapshot())  # the lease actor starts from this
        self.term = 0
        self.applied = self.backend.applied_index
        self.uncommitted = False
        self.synced = self.applied
        self.metrics = metrics.core()
        # a run defragments the backend of the moment it starts (a raft snapshot install swaps it)
        self.defrag = Defragmenter(ctx, lambda: self.backend.defragment(), self.metrics.defrag)
        self.metrics.proposals_applied.set(self.applied)
        self._export_sizes()
        self.next_sync = time.monotonic() + 1.0
        log.info("storage_opened", revision=self.store.revision, applied=self.applied)

    def _open_store(self) -> MvccStore:
        """The MVCC store, the auth store and the alarms on the backend (again after a snapshot install)."""
        settings = self.settings
        leases = LeaseTable(self.backend, min_lease_ttl(settings.heartbeat_ms, settings.election_ms))
        self.auth = AuthStore(self.backend, self.tokens)
        self.auth.applied_index = self.backend.applied_index
        self.alarms = AlarmTable(self.backend)
        return MvccStore(self.backend, leases)

    def _install(self, record: Record) -> None:
        """Raft snapshot install: the kv DB becomes the leader's checkpoint (unpacked by raft), the
        indexes are rebuilt from it, and raft hears the member table it brought."""
        if self.defrag.running:  # its thread works on the backend about to be replaced: after it
            self.install_waiting = record
            return
        _, _, body = record
        directory, snapshot = unpack_blobs(body)
        self._commit()
        before = {event[1] for event in self.store.lease_snapshot()}
        path = self.backend.path
        self.backend.close()
        incoming = Backend(directory.decode())  # tagged before the swap: a restart finishes raft's part
        incoming.put(META, INSTALLED_SNAPSHOT, snapshot)
        incoming.commit(incoming.applied_index, sync=True)
        incoming.close()
        swap_in(path, directory.decode())
        self.backend = Backend(path)
        self.store = self._open_store()
        self.applied = self.synced = self.backend.applied_index
        self.members = MemberTable.from_rows(self.backend.scan(META))
        leases = self.store.lease_snapshot()
        gone = before - {event[1] for event in leases}
        self._send_lease_events([("revoke", lease_id) for lease_id in gone] + leases)
        log.info("snapshot_installed", applied=self.applied, revision=self.store.revision)
        rows = [part for row in self.members.rows() for part in (row[0], row[1] or b"")]
        self.raft.put(Kind.SNAPSHOT_INSTALLED, (self.applied, 0, pack_blobs(rows)))

    def _open_members(self) -> MemberTable:
        """The member table in ``meta``; a new store is seeded with the founding (or joined) members."""
        table = MemberTable.from_rows(self.backend.scan(META))
        settings = self.settings
        if settings.initial_members and (settings.replace_members or not table.members):
            stale = [(key, None) for key, _ in table.rows()]
            table = MemberTable(settings.initial_members)
            self._persist(stale + table.rows())
            self.backend.commit(self.backend.applied_index, sync=True)
        return table

    def _persist(self, rows: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in rows:
            if value is None:
                self.backend.delete(META, key)
            else:
                self.backend.put(META, key, value)

    def _apply_membership(self, index: int, entry_type: int, data: bytes) -> Record | None:
        """A CONF_CHANGE or MEMBER_PUBLISH entry: the member table changes in this batch; the member
        whose client asked for a change gets the answer (key 0: nobody waits)."""
        if entry_type == EntryType.CONF_CHANGE:
            change = ConfChange.decode(data, index)
            self._persist(self.members.apply_change(change))
            key, response = change_response(self.members, change)
            self._header(response)
            response.header.revision = 0  # the Cluster service's headers carry no revision in etcd
            return key, 0, response.SerializeToString()
        self._persist(self.members.publish(rpc_pb2.Member.FromString(decode_proposal(data)[2])))
        return None

    @property
    def applied_index(self) -> int:
        return self.applied

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox, self.defrag.done)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        if sock is self.defrag.done:
            for (report,) in messages:
                self._defragmented(report)
            return
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            if kind == Kind.COMMITTED:
                if aux != self.term:
                    self.term = aux
                    self.watch.signal(Kind.WATCH_EVENTS, aux)  # the hub's headers carry the term
                self._apply(records)
            elif kind == Kind.READ:
                self._commit()
                for record in records:
                    self._read(record)
            elif kind == Kind.SNAPSHOT_INSTALL:
                self._install(*records)
        self._commit()

    def _header(self, response: object) -> None:
        header = response.header  # type: ignore[attr-defined]
        header.cluster_id = self.settings.cluster_id
        header.member_id = self.settings.member_id
        header.revision = self.store.revision
        header.raft_term = self.term

    def _apply(self, entries: list[Record]) -> None:
        mine = self.settings.key_prefix
        results = []
        grew = False
        for index, entry_type, data in entries:
            if index <= self.applied:
                continue  # replayed after a restart: already in the store
            self.applied = index
            self.uncommitted = True
            if entry_type == EntryType.CONF_CHANGE or (
                entry_type == EntryType.NORMAL and data[8:9] == MEMBER_PUBLISH_BYTE
            ):
                result = self._apply_membership(index, entry_type, data)
                if result is not None and result[0] & 0xFFFF_0000_0000_0000 == mine:
                    results.append(result)
                continue
            if entry_type != EntryType.NORMAL:
                continue
            key, method, request = decode_proposal(data)
            grew = grew or (method & ~AUTHED) in CHARGED
            try:
                response = self._apply_one(key, method, request, index)
            except errors.EtcdError as e:
                result = (key, e.code, e.message.encode())
            except Exception:
                # a bug, not bad input: every member fails the entry the same way, so answer it and
                # go on rather than crash, which would replay the same entry on restart, forever
                log.exception("apply_failed", index=index, method=method)
                result = (key, errors.Code.INTERNAL, b"cairn: internal error applying this request")
            else:
                if method != Method.ALARM:  # etcd's AlarmResponse carries no header at all
                    self._header(response)
                result = (key, 0, response.SerializeToString())
            if key & 0xFFFF_0000_0000_0000 == mine:
                results.append(result)
        self._commit()
        self.auth.applied_index = self.applied
        self.session.extend(Kind.RESULT, results)
        if grew:  # behind the results: the session stops charging them as it learns the new size
            self.session.signal(Kind.DB_SIZE, self.backend.size_bytes())
        if self.store.lease_events:
            self._send_lease_events(self.store.lease_events)
            self.store.lease_events.clear()
        if self.store.watch_events:
            revisions = [(rev, 0, pack_blobs(events)) for rev, events in self.store.watch_events]
            self.watch.extend(Kind.WATCH_EVENTS, revisions, aux=self.term)
            self.store.watch_events.clear()

    def _apply_one(self, key: int, method: int, request: bytes, index: int) -> object:
        """Check who asked (etcd's auth applier), then apply to the auth or the KV store."""
        auth = self.auth
        user = ""
        if method & AUTHED:
            user, revision, request = decode_authed(request)
            method &= ~AUTHED
            if auth.enabled and method in CHECKED:
                auth.check_request(method, request, user, revision, self._lease_keys)
        elif auth.enabled and method in CHECKED and key & REQUEST_COUNTER:
            # proposed while auth was off, applied after it was turned on: nobody said who asked
            raise errors.USER_EMPTY.copy()
        if method in AUTH_METHODS:
            return auth.apply(method, request, user, index, time.monotonic())
        if method == Method.ALARM:
            return self.alarms.apply(request)
        refusal = self.alarms.refusal(method, request)
        if refusal is not None:
            raise refusal.copy()
        return self.store.apply(Method(method), request)

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        table = self.store.leases
        lease = table.get(lease_id) if table is not None else None
        return sorted(lease.keys) if lease is not None else []

    def _send_lease_events(self, events: list[tuple]) -> None:
        records = []
        for event in events:
            if event[0] == "grant":
                _, lease_id, ttl, remaining = event
                records.append((0, LeaseEvent.GRANTED, LEASE_EVENT.pack(lease_id, ttl, remaining)))
            else:
                records.append((0, LeaseEvent.REVOKED, LEASE_EVENT.pack(event[1], 0, 0)))
        self.lease.extend(Kind.LEASE_EVENTS, records)

    def _commit(self) -> None:
        if self.uncommitted:
            start = time.perf_counter()
            self.backend.commit(self.applied)
            self.metrics.backend_commit.observe(time.perf_counter() - start)
            self.metrics.proposals_applied.set(self.applied)
            self.uncommitted = False

    def _history(self, read_id: int, query: bytes) -> None:
        """Past events for the watch hub: a watcher starting in the past or catching up."""
        key, range_end, start, end, limit = decode_history_query(query)
        try:
            revisions, next_rev = self.store.history(key, range_end, start, end, limit)
            answer = encode_history(revisions, next_rev)
        except errors.EtcdError:  # compacted: the hub cancels the watcher as etcd does
            answer = encode_history([], start, compacted=self.store.compact_revision)
        self.watch.put(Kind.RESULT, (read_id, 0, answer))

    def _admitted(self, key: int, method: int, body: bytes) -> bytes | None:
        """Snapshot, Defragment, Hash, HashKV: root only once auth is on (etcd's IsAdminPermitted,
        with the Maintenance service's "auth: ..." errors). The request's body, or None once refused."""
        if not method & AUTHED:
            return body
        user, _, body = decode_authed(body)
        try:
            self.auth.check_admin(user)
        except errors.EtcdError as e:
            refused = errors.maintenance_auth_error(e)
            self.session.put(Kind.RESULT, (key, refused.code, refused.message.encode()))
            return None
        return body

    def _snapshot_request(self, key: int) -> None:
        """Maintenance.Snapshot: the checkpoint waits for a memtable flush that RocksDB's own
        threads do (see :meth:`on_time`)."""
        if not self.snapshot_waiting:
            self.backend.start_flush()
            self.snapshot_give_up = time.monotonic() + FLUSH_WAIT
        self.snapshot_waiting.append(key)

    def _checkpoint(self, key: int, reply: Mailbox | None = None) -> None:
        """Maintenance.Snapshot: a checkpoint of what is applied now, for the frontend to stream
        (or for the raft actor to send a follower: ``reply``)."""
        reply = reply or self.session
        self.checkpoints += 1
        directory = os.path.join(
            checkpoints_dir(self.settings.data_dir), f"{self.applied}-{self.checkpoints}"
        )
        store = self.store
        start = time.perf_counter()
        try:
            meta = take_checkpoint(
                self.backend,
                directory,
                store.revision,
                store.compact_revision,
                store.live_key_count,
                self.settings.member_id,
                self.settings.cluster_id,
            )
        except Exception as e:  # disk full, permissions: the client gets the reason, the node goes on
            log.error("snapshot_checkpoint_failed", error=str(e))
            reply.put(Kind.RESULT, (key, errors.Code.INTERNAL, f"cairn: checkpoint failed: {e}".encode()))
            return
        log.info(
            "snapshot_checkpoint_taken",
            revision=meta.revision,
            bytes=meta.data_size,
            path=directory,
            ms=round((time.perf_counter() - start) * 1000, 1),  # the time the core's loop was busy with it
        )
        reply.put(Kind.RESULT, (key, 0, ticket(directory, meta)))

    def _read(self, record: Record) -> None:
        key, method, body = record
        if method == Method.WATCH_HISTORY:
            self._history(key, body)
            return
        if method & ~AUTHED == Method.GET_MANY:
            self._get_many(key, method, body)
            return
        if method & ~AUTHED in ROOT_MAINTENANCE:
            admitted = self._admitted(key, method, body)
            if admitted is None:
                return
            method, body = method & ~AUTHED, admitted
        if method == Method.SNAPSHOT:
            self._snapshot_request(key)
            return
        if method == Method.DEFRAGMENT:
            log.info(
                "defragment_requested", db_size=self.backend.size_bytes(), running=bool(self.defrag.running)
            )
            self.defrag.request(key)
            return
        if method == Method.RAFT_SNAPSHOT:
            self._checkpoint(key, self.raft)
            return
        answer = self.session
        try:
            if method & AUTHED:  # checked now, against the auth state this read is served at
                user, revision, body = decode_authed(body)
                method &= ~AUTHED
                self.auth.check_request(method, body, user, revision, self._lease_keys)
            if method == Method.RANGE:
                response = self.store.range(rpc_pb2.RangeRequest.FromString(body))
            elif method == Method.TXN:  # read-only (the session proposes every other txn)
                response = self.store.txn(rpc_pb2.TxnRequest.FromString(body))
            elif method == Method.LEASE_TIME_TO_LIVE:
                response = self.store.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest.FromString(body))
                if response.TTL != -1:
                    answer = self.lease  # the leader's clock knows the remaining TTL
            elif method == Method.LEASE_LEASES:
                response = self.store.lease_leases()
            elif method == Method.LEASE_KEEPALIVE:
                # the header before the renewal, as etcd: its revision is never one after the renewal
                lease_id = rpc_pb2.LeaseKeepAliveRequest.FromString(body).ID
                response = rpc_pb2.LeaseKeepAliveResponse(ID=lease_id)
                answer = self.lease  # the leader's clock renews it
            elif method == Method.STATUS:
                response = rpc_pb2.StatusResponse.FromString(body)
                response.version = VERSION
                response.dbSize = self.backend.size_bytes()
                response.dbSizeInUse = self.backend.size_in_use_bytes()
                response.errors.extend(alarm_text(alarm, member) for alarm, member in self.alarms.active())
                response.raftAppliedIndex = self.applied
            elif method == Method.MEMBER_LIST:
                response = rpc_pb2.MemberListResponse.FromString(body)
                response.members.extend(self.members.listing())
            elif method == Method.HASH_KV:
                response = self._hash_kv(body)
            elif method == Method.HASH:
                response = rpc_pb2.HashResponse(hash=self._hash_backend())
            else:
                raise errors.EtcdError(errors.Code.UNIMPLEMENTED, f"method {method} is not a read")
        except errors.EtcdError as e:
            self.session.put(Kind.RESULT, (key, e.code, e.message.encode()))
            return
        self._header(response)
        if method == Method.MEMBER_LIST:
            response.header.revision = 0  # the Cluster service's headers carry no revision in etcd
        if answer is self.session:
            answer.put(Kind.RESULT, (key, 0, response.SerializeToString()))
        else:
            answer.put(Kind.READ, (key, method, response.SerializeToString()))

    def _get_many(self, key: int, method: int, body: bytes) -> None:
        """Point reads of many keys at this revision, each answered on its own (actors/point_reads.py)."""
        user, revision = "", 0
        if method & AUTHED:
            user, revision, body = decode_authed(body)
        try:
            keys = point_reads.decode_request(body)
        except errors.EtcdError as e:
            self.session.put(Kind.RESULT, (key, e.code, e.message.encode()))
            return
        results: list[point_reads.Result] = self.store.values(keys)  # type: ignore[assignment]
        check = self.auth.check if self.auth.enabled else None
        for i, name in enumerate(keys):
            if not name:
                results[i] = errors.EMPTY_KEY
            elif check is not None:
                try:
                    check(user, revision, READ, name)
                except errors.EtcdError as e:
                    results[i] = e
        self.session.put(Kind.RESULT, (key, 0, point_reads.encode_response(self.store.revision, results)))

    def _hash_kv(self, body: bytes) -> rpc_pb2.HashKVResponse:
        request = parse(rpc_pb2.HashKVRequest, body)
        start = time.perf_counter()
        value, compact = self.store.hash_kv(request.revision)
        seconds = time.perf_counter() - start
        self.metrics.hash_rev.observe(seconds)
        log.info("hash_kv", revision=request.revision, seconds=round(seconds, 3))
        return rpc_pb2.HashKVResponse(hash=value, compact_revision=compact)

    def _hash_backend(self) -> int:
        """Every replicated row of the backend; the applied index is this member's own progress."""
        start = time.perf_counter()
        scan = self.backend.scan
        column_families = (
            (KV, self.backend.scan_kv()),
            (META, scan(META)),
            (LEASE, scan(LEASE)),
            (AUTH, scan(AUTH)),
        )
        value = hash_backend(column_families, frozenset({(META, APPLIED_INDEX)}))
        self.metrics.hash.observe(time.perf_counter() - start)
        return value

    def _defragmented(self, report: bytes) -> None:
        """A defragment run finished: answer the requests it served."""
        answered, error = self.defrag.finished(report)
        if self.install_waiting is not None and not self.defrag.running:
            record, self.install_waiting = self.install_waiting, None
            self._install(record)
        size = self._export_sizes()
        log.info("defragment_answered", requests=len(answered), db_size=size, error=error)
        for key in answered:
            if error is None:  # etcd's DefragmentResponse has no header: empty
                self.session.put(Kind.RESULT, (key, 0, b""))
            else:
                self.session.put(Kind.RESULT, (key, errors.Code.INTERNAL, error.encode()))

    def deadline(self) -> float | None:
        if self.snapshot_waiting:
            return min(self.next_sync, time.monotonic() + FLUSH_POLL)
        return self.next_sync

    def on_time(self, now: float) -> None:
        """Checkpoint once the memtable flush is done; sync the WAL once a second and tell raft which
        entries no longer need the log."""
        if self.snapshot_waiting and (not self.backend.flushing() or now > self.snapshot_give_up):
            for key in self.snapshot_waiting:
                self._checkpoint(key)
            self.snapshot_waiting.clear()
        if now < self.next_sync:
            return
        self.next_sync = now + 1.0
        self.auth.tokens.expire(now)
        self._export_sizes()
        if self.applied > self.synced:
            self.backend.commit(self.applied, sync=True)  # an empty synced write syncs the whole WAL
            self.synced = self.applied
            self.raft.signal(Kind.APPLIED_DURABLE, self.synced)

    def _export_sizes(self) -> int:
        """Measure the backend for the metrics and for the session's space quota; return its size."""
        size = self.backend.size_bytes()
        self.metrics.db_size.set(size)
        self.metrics.db_size_in_use.set(self.backend.size_in_use_bytes())
        self.metrics.keys_total.set(self.store.key_count)
        self.session.signal(Kind.DB_SIZE, size)
        return size

    def flush(self) -> None:
        self.session.flush()
        self.raft.flush()
        self.lease.flush()
        self.watch.flush()

    def close(self) -> None:
        self.defrag.close()
        self._commit()
        self.inbox.close(linger=0)
        for mailbox in (self.session, self.raft, self.lease, self.watch):
            mailbox.close()
        self.backend.close()
