"""The watch hub's logic: etcd 3.4's watchableStore + v3rpc watch stream, pure (no IO, no clock, no zmq).

The shell feeds it what happened and carries out what it returns, in order:

- ``on_revisions`` — the events of each new revision, as the storage actor applied them
  (:attr:`actors.storage.mvcc.MvccStore.watch_events`); fanned out to *synced* watchers.
- ``create`` / ``cancel`` / ``progress`` / ``close_stream`` — a gRPC Watch stream's requests.
- ``on_history`` — storage's answer to a :class:`ReadHistory` the hub asked for
  (:meth:`actors.storage.mvcc.MvccStore.history`): a watcher starting in the past, or one that
  fell behind, catches up from history (*unsynced*) and joins the live fan-out exactly where
  history ends.
- ``stream_blocked`` / ``stream_ready`` — a stream's send buffer is full / drained again.
- ``progress_tick`` — the shell's timer for ``progress_notify`` watchers (etcd: every 10 min).

Every method returns a list of :data:`Out`: :class:`Send` (a serialized ``WatchResponse`` for a
stream) and :class:`ReadHistory` (a read storage must answer through :meth:`WatchHub.on_history`,
exactly once). Sends for one stream must go out in the order returned.

Guarantees (etcd's): per watcher, events come in revision order, never twice, all events of a
revision in one response (or in one fragmented series), with no gap; a progress response (header
only) means every event up to its ``header.revision`` was sent before it.

``header.revision`` of an event response is the revision the watcher is complete up to: for live
events the hub's current revision (etcd: the event's revision, one revision per response; the
hub may put the revisions of one ``on_revisions`` call in one response, as etcd does when it
syncs a watcher), for history the last revision the read covered (etcd sends its current
revision even when more history follows; the hub never claims more than it sent). The hub's
revision is the last revision it was given, never the store's (which may be ahead): that is what
makes a progress response true. cluster_id, member_id and raft_term come from the hub's
attributes, which the shell sets.

A stream whose buffer is full costs nothing per event: a watcher that misses an event there
only remembers the revision to resume from and later catches up from history (etcd keeps one
pending batch per "victim" watcher instead). At most ``max_reads`` history reads are in flight.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from actors.proto import kv_pb2, rpc_pb2
from actors.protocol import varint

StreamId = Hashable
RevisionEvents = tuple[int, list[bytes]]  # (revision, serialized mvccpb.Events of it, in order)

INVALID_WATCH_ID = -1  # clientv3.InvalidWatchID: refused creates and stream-wide progress responses
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
DEFAULT_FRAGMENT_BYTES = 1572864 + 524288  # etcd: --max-request-bytes default + grpcOverheadBytes
DEFAULT_HISTORY_LIMIT = 1000  # events per history read (etcd: 1000 revisions per sync batch)
DEFAULT_MAX_READS = 64

_DELETE = kv_pb2.Event.DELETE
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE
_FRAGMENT_FLAG = b"\x38\x01"  # WatchResponse.fragment = true
_EVENT_TAG = b"\x5a"  # WatchResponse.events (field 11, length-delimited)


@dataclass(frozen=True, slots=True)
class Send:
    """A serialized ``etcdserverpb.WatchResponse`` to send on ``stream``."""

    stream: StreamId
    response: bytes


@dataclass(frozen=True, slots=True)
class ReadHistory:
    """Ask storage for ``history(key, range_end, start_rev, end_rev, limit)``; answer with
    ``on_history(read_id, ...)``. ``range_end`` uses etcd's conventions (b"" one key, b"\\0" from key)."""

    read_id: int
    stream: StreamId
    watch_id: int
    key: bytes
    range_end: bytes
    start_rev: int
    end_rev: int
    limit: int


Out = Send | ReadHistory


def _watch_id_field(watch_id: int) -> bytes:
    return b"\x10" + varint(watch_id & 0xFFFFFFFFFFFFFFFF) if watch_id else b""


class _Stream:
    __slots__ = ("blocked", "id", "next_id", "progress_pending", "unsynced", "watchers")

    def __init__(self, stream_id: StreamId) -> None:
        self.id = stream_id
        self.watchers: dict[int, _Watcher] = {}
        self.next_id = 0  # etcd's watchStream.nextID: auto ids count from 0, skipping taken ones
        self.unsynced = 0  # watchers of the stream not synced (catching up, or missed while blocked)
        self.blocked = False
        self.progress_pending = False  # a progress request waits for every watcher to sync


class _Watcher:
    __slots__ = (
        "fragment",
        "id",
        "interval",
        "key",
        "min_rev",
        "nodelete",
        "noput",
        "prev_kv",
        "progress_due",
        "range_end",
        "read_id",
        "removed",
        "stream",
        "synced",
    )

    def __init__(self, stream: _Stream, watch_id: int, req: rpc_pb2.WatchCreateRequest, key: bytes) -> None:
        self.stream = stream
        self.id = watch_id
        self.key = key
        self.range_end = req.range_end  # etcd's wire convention, for history reads
        # None: one key; (start, end) a range, end None = unbounded (from key)
        self.interval: tuple[bytes, bytes | None] | None = None
        self.noput = _NOPUT in req.filters
        self.nodelete = _NODELETE in req.filters
        self.prev_kv = req.prev_kv
        self.fragment = req.fragment
        self.min_rev = 0  # the first revision whose events it still needs (etcd's minRev)
        self.synced = True
        self.read_id = 0  # the history read in flight, if any
        self.progress_due = True  # no events sent since the last progress tick
        self.removed = False


class _Intervals:
    """Which watched ranges contain a key: ranges grouped by (start, end), in a centered interval
    tree that is rebuilt lazily after a change (creates and cancels are rare next to events), so a
    lookup costs O(log ranges + matches)."""

    __slots__ = ("_dirty", "_groups", "_root")

    def __init__(self) -> None:
        self._groups: dict[tuple[bytes, bytes | None], dict[_Watcher, None]] = {}
        self._root: tuple | None = None
        self._dirty = False

    def __bool__(self) -> bool:
        return bool(self._groups)

    def add(self, interval: tuple[bytes, bytes | None], watcher: _Watcher) -> None:
        group = self._groups.get(interval)
        if group is None:
            self._groups[interval] = group = {}
            self._dirty = True
        group[watcher] = None

    def remove(self, interval: tuple[bytes, bytes | None], watcher: _Watcher) -> None:
        group = self._groups[interval]
        del group[watcher]
        if not group:
            del self._groups[interval]
            self._dirty = True

    def stab(self, key: bytes) -> list[dict[_Watcher, None]]:
        """The watcher groups whose range contains ``key``."""
        if self._dirty:
            self._root = _build(list(self._groups))
            self._dirty = False
        groups = self._groups
        out = []
        node = self._root
        while node is not None:
            center, by_start, by_end, left, right = node
            if key < center:
                for interval in by_start:
                    if interval[0] > key:
                        break
                    out.append(groups[interval])
                node = left
            else:
                for interval in by_end:
                    end = interval[1]
                    if end is not None and end <= key:
                        break
                    out.append(groups[interval])
                node = right
        return out


def _build(intervals: list[tuple[bytes, bytes | None]]) -> tuple | None:
    """A centered interval tree node: (center, intervals holding it by start ascending, the same
    by end descending, left subtree (ending at or before center), right (starting after it))."""
    if not intervals:
        return None
    starts = sorted(start for start, _ in intervals)
    center = starts[len(starts) // 2]
    here, left, right = [], [], []
    for interval in intervals:
        start, end = interval
        if start > center:
            right.append(interval)
        elif end is not None and end <= center:
            left.append(interval)
        else:
            here.append(interval)
    by_start = sorted(here, key=lambda iv: iv[0])
    by_end = sorted(here, key=lambda iv: (iv[1] is None, iv[1] or b""), reverse=True)
    return center, by_start, by_end, _build(left), _build(right)


class WatchHub:
    """Every watcher of a member, grouped by stream; see the module docstring."""

    def __init__(
        self,
        revision: int,
        *,
        cluster_id: int = 0,
        member_id: int = 0,
        raft_term: int = 0,
        fragment_bytes: int = DEFAULT_FRAGMENT_BYTES,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        max_reads: int = DEFAULT_MAX_READS,
    ) -> None:
        """``revision``: the store's revision when the hub starts (events after it will come)."""
        self.revision = revision
        """The last revision whose events the hub was given."""
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.raft_term = raft_term
        """Set by the shell when the term changes; it goes into every response header."""
        self.fragment_bytes = fragment_bytes
        self.history_limit = history_limit
        self.max_reads = max_reads
        self._streams: dict[StreamId, _Stream] = {}
        self._keys: dict[bytes, dict[_Watcher, None]] = {}  # single-key watchers by key
        self._ranges = _Intervals()
        self._reads: dict[int, _Watcher] = {}  # history reads in flight
        self._next_read = 1
        self._wanting: dict[_Watcher, None] = {}  # unsynced watchers waiting for a read slot (FIFO)
        self._progress: dict[_Watcher, None] = {}  # progress_notify watchers
        self._header_key: tuple[int, int, int, int] | None = None
        self._header = b""

    # -- stream requests ---------------------------------------------------------------------

    def create(self, stream: StreamId, req: rpc_pb2.WatchCreateRequest) -> list[Out]:
        """A WatchCreateRequest (permission already checked by the shell): etcd's v3rpc + mvcc rules.

        An empty key means ``b"\\0"``; range_end b"" watches one key, ``b"\\0"`` every key >= key, and
        key >= range_end is refused (``created`` + ``canceled``, watch_id -1, etcd's reason), as is
        a watch_id already used on the stream. start_revision 0 means "after the current revision";
        one at or below it reads history first.
        """
        st = self._streams.get(stream)
        if st is None:
            st = self._streams[stream] = _Stream(stream)
        key = req.key or b"\0"
        end = req.range_end
        if end and end != b"\0" and key >= end:
            return [Send(stream, self._control(INVALID_WATCH_ID, created=True, reason=ERR_EMPTY_RANGE))]
        watch_id = req.watch_id
        if watch_id == 0:
            while st.next_id in st.watchers:
                st.next_id += 1
            watch_id = st.next_id
            st.next_id += 1
        elif watch_id in st.watchers:
            return [Send(stream, self._control(INVALID_WATCH_ID, created=True, reason=ERR_DUPLICATE_ID))]
        w = _Watcher(st, watch_id, req, key)
        st.watchers[watch_id] = w
        if not end:
            self._keys.setdefault(key, {})[w] = None
        else:
            w.interval = (key, None if end == b"\0" else end)
            self._ranges.add(w.interval, w)
        if req.progress_notify:
            self._progress[w] = None
        out: list[Out] = [Send(stream, self._control(watch_id, created=True))]
        start = req.start_revision
        if start == 0 or start > self.revision:
            w.min_rev = max(start, self.revision + 1)
        else:
            w.min_rev = start
            self._unsync(w)
            self._pump(out)
        return out

    def cancel(self, stream: StreamId, watch_id: int) -> list[Out]:
        """A WatchCancelRequest: the ``canceled`` response, or nothing for an unknown id (as etcd)."""
        st = self._streams.get(stream)
        w = st.watchers.get(watch_id) if st is not None else None
        if w is None:
            return []
        self._remove(w)
        out: list[Out] = [Send(stream, self._control(watch_id, canceled=True))]
        self._progress_if_synced(st, out)
        self._pump(out)
        return out

    def progress(self, stream: StreamId) -> list[Out]:
        """A WatchProgressRequest: a header-only response, watch_id -1, once every watcher of the
        stream is synced (at once if they are). etcd 3.4.23 answers at once even while a watcher
        catches up, which breaks the bookmark guarantee; later etcd (RequestProgressAll) defers
        like this."""
        st = self._streams.get(stream)
        if st is None or not st.unsynced:
            return [Send(stream, self._control(INVALID_WATCH_ID))]
        st.progress_pending = True
        return []

    def close_stream(self, stream: StreamId) -> list[Out]:
        """The gRPC stream ended: forget its watchers (no responses). May start reads for others."""
        st = self._streams.pop(stream, None)
        out: list[Out] = []
        if st is not None:
            for w in list(st.watchers.values()):
                self._remove(w)
            self._pump(out)
        return out

    def stream_blocked(self, stream: StreamId) -> list[Out]:
        """The stream's send buffer is full: stop sending it events (a watcher that misses one will
        catch up from history later). Control responses are still returned."""
        st = self._streams.get(stream)
        if st is None:
            st = self._streams[stream] = _Stream(stream)
        st.blocked = True
        return []

    def stream_ready(self, stream: StreamId) -> list[Out]:
        """The stream's send buffer drained: its watchers that missed events catch up."""
        st = self._streams.get(stream)
        out: list[Out] = []
        if st is None or not st.blocked:
            return out
        st.blocked = False
        for w in st.watchers.values():
            if not w.synced and not w.read_id:
                self._wanting[w] = None
        self._progress_if_synced(st, out)
        self._pump(out)
        return out

    def progress_tick(self) -> list[Out]:
        """The progress_notify timer fired: each such watcher that is synced and got no events
        since the last tick gets a header-only response with its watch_id (etcd's sendLoop)."""
        out: list[Out] = []
        for w in self._progress:
            if w.progress_due and w.synced and not w.stream.blocked:
                out.append(Send(w.stream.id, self._control(w.id)))
            w.progress_due = True
        return out

    # -- storage -----------------------------------------------------------------------------

    def on_revisions(self, revisions: Iterable[RevisionEvents]) -> list[Out]:
        """New revisions, in order: send each synced watcher its events (filters, prev_kv applied),
        all of one call in one response per watcher. Revisions not after the hub's are ignored; a
        gap (revisions never given) sends the watchers concerned to history rather than lose them."""
        batch: dict[_Watcher, list[bytes]] = {}
        keys, ranges = self._keys, self._ranges
        parse = kv_pb2.Event.FromString
        for rev, events in revisions:
            if rev <= self.revision:
                continue
            if rev > self.revision + 1:  # revisions were lost on the way: read them from history
                self._resync(rev - 1)
            self.revision = rev
            for raw in events:
                ev = parse(raw)
                key = ev.kv.key
                groups = ranges.stab(key) if ranges else []
                single = keys.get(key)
                if single:
                    groups.append(single)
                if not groups:
                    continue
                delete = ev.type == _DELETE
                has_prev = ev.HasField("prev_kv")
                full = bare = None
                for group in groups:
                    for w in group:
                        if not w.synced or rev < w.min_rev or (w.nodelete if delete else w.noput):
                            continue
                        if w.stream.blocked:  # remember where to resume; nothing is kept
                            w.min_rev = rev
                            self._unsync(w)
                            continue
                        if w.prev_kv or not has_prev:
                            if full is None:
                                full = _EVENT_TAG + varint(len(raw)) + raw
                            piece = full
                        else:
                            if bare is None:
                                ev.ClearField("prev_kv")
                                b = ev.SerializeToString()
                                bare = _EVENT_TAG + varint(len(b)) + b
                            piece = bare
                        pieces = batch.get(w)
                        if pieces is None:
                            batch[w] = [piece]
                        else:
                            pieces.append(piece)
        out: list[Out] = []
        for w, pieces in batch.items():
            self._emit(w, pieces, self.revision, out)
        self._pump(out)
        return out

    def on_history(
        self,
        read_id: int,
        revisions: list[RevisionEvents],
        next_rev: int,
        compact_revision: int | None = None,
    ) -> list[Out]:
        """Storage's answer to :class:`ReadHistory` ``read_id``: ``history()``'s result, or
        ``compact_revision`` (the store's) when it raised COMPACTED: then the watcher gets etcd's
        response (canceled, compact_revision set, header.revision 0) and is removed.

        The events are sent; the watcher goes live once history reached the hub's revision, else
        it reads on. Live events that came meanwhile were skipped for it and are read from history:
        nothing is buffered, nothing lost or repeated. Answers for cancelled watchers are ignored.
        """
        w = self._reads.pop(read_id, None)
        out: list[Out] = []
        if w is None or w.read_id != read_id:
            return out
        w.read_id = 0
        st = w.stream
        if compact_revision is not None:
            self._remove(w)
            response = rpc_pb2.WatchResponse(watch_id=w.id, canceled=True, compact_revision=compact_revision)
            response.header.CopyFrom(self._header_message(0))
            out.append(Send(st.id, response.SerializeToString()))
            self._progress_if_synced(st, out)
        elif st.blocked:
            pass  # dropped: read again from w.min_rev once the stream drains (memory stays bounded)
        else:
            pieces = []
            min_rev = w.min_rev
            parse = kv_pb2.Event.FromString
            for rev, events in revisions:
                if rev < min_rev or rev >= next_rev:
                    continue
                for raw in events:
                    if w.noput or w.nodelete or not w.prev_kv:
                        ev = parse(raw)
                        if w.nodelete if ev.type == _DELETE else w.noput:
                            continue
                        if not w.prev_kv and ev.HasField("prev_kv"):
                            ev.ClearField("prev_kv")
                            raw = ev.SerializeToString()
                    pieces.append(_EVENT_TAG + varint(len(raw)) + raw)
            w.min_rev = max(min_rev, next_rev)
            if pieces:
                self._emit(w, pieces, w.min_rev - 1, out)
            if w.min_rev > self.revision:
                w.synced = True
                st.unsynced -= 1
                self._progress_if_synced(st, out)
            else:
                self._wanting[w] = None
        self._pump(out)
        return out

    def reset(self, revision: int) -> list[Out]:
        """The store was replaced (a raft snapshot): its revision jumped to ``revision`` without
        events. Every synced watcher catches up from the new store's history (as etcd's Restore)."""
        out: list[Out] = []
        self._resync(revision)
        self.revision = revision
        self._pump(out)
        return out

    @property
    def watcher_count(self) -> int:
        """Watchers of every stream (for metrics)."""
        return sum(len(st.watchers) for st in self._streams.values())

    # -- internals ---------------------------------------------------------------------------

    def _resync(self, revision: int) -> None:
        """Revisions after the hub's up to ``revision`` will never be given to it: every synced
        watcher that wants any of them reads them from history instead."""
        for st in self._streams.values():
            for w in st.watchers.values():
                if w.synced:
                    w.min_rev = max(w.min_rev, self.revision + 1)
                    if w.min_rev <= revision:
                        self._unsync(w)

    def _unsync(self, w: _Watcher) -> None:
        """``w`` needs history from ``w.min_rev``: off the live fan-out, queued for a read."""
        w.synced = False
        w.stream.unsynced += 1
        if not w.stream.blocked:
            self._wanting[w] = None

    def _remove(self, w: _Watcher) -> None:
        st = w.stream
        del st.watchers[w.id]
        if w.interval is None:
            group = self._keys[w.key]
            del group[w]
            if not group:
                del self._keys[w.key]
        else:
            self._ranges.remove(w.interval, w)
        self._progress.pop(w, None)
        self._wanting.pop(w, None)
        if w.read_id:  # its slot is free now; the late answer will be ignored
            self._reads.pop(w.read_id, None)
            w.read_id = 0
        if not w.synced:
            st.unsynced -= 1
        w.removed = True

    def _pump(self, out: list[Out]) -> None:
        """Start history reads for waiting watchers, up to ``max_reads`` in flight."""
        wanting = self._wanting
        while wanting and len(self._reads) < self.max_reads:
            w = next(iter(wanting))
            del wanting[w]
            if w.removed or w.synced or w.read_id or w.stream.blocked:
                continue
            read_id = self._next_read
            self._next_read += 1
            w.read_id = read_id
            self._reads[read_id] = w
            st = w.stream
            out.append(
                ReadHistory(
                    read_id, st.id, w.id, w.key, w.range_end, w.min_rev, self.revision, self.history_limit
                )
            )

    def _progress_if_synced(self, st: _Stream, out: list[Out]) -> None:
        if st.progress_pending and not st.unsynced:
            st.progress_pending = False
            out.append(Send(st.id, self._control(INVALID_WATCH_ID)))

    def _header_message(self, revision: int) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(
            cluster_id=self.cluster_id, member_id=self.member_id, revision=revision, raft_term=self.raft_term
        )

    def _header_field(self, revision: int) -> bytes:
        key = (revision, self.raft_term, self.cluster_id, self.member_id)
        if key != self._header_key:
            header = self._header_message(revision).SerializeToString()
            self._header = b"\x0a" + varint(len(header)) + header
            self._header_key = key
        return self._header

    def _control(
        self, watch_id: int, *, created: bool = False, canceled: bool = False, reason: str = ""
    ) -> bytes:
        """A response without events at the hub's revision; a reason means refused (canceled)."""
        response = rpc_pb2.WatchResponse(
            watch_id=watch_id, created=created, canceled=canceled or bool(reason), cancel_reason=reason
        )
        return self._header_field(self.revision) + response.SerializeToString()

    def _emit(self, w: _Watcher, pieces: list[bytes], revision: int, out: list[Out]) -> None:
        """Send ``pieces`` (encoded events) to ``w`` in one response, or in fragments as etcd's
        sendFragments cuts them when the watcher asked for it and the response is too big."""
        w.progress_due = False
        head = self._header_field(revision) + _watch_id_field(w.id)
        sid = w.stream.id
        limit = self.fragment_bytes
        if not w.fragment or len(pieces) < 2 or len(head) + sum(map(len, pieces)) < limit:
            out.append(Send(sid, head + b"".join(pieces)))
            return
        base = len(head) + len(_FRAGMENT_FLAG)
        i, n = 0, len(pieces)
        while i < n:
            size = base
            first = i
            while i < n and (i == first or size + len(pieces[i]) < limit):
                size += len(pieces[i])
                i += 1
            flag = _FRAGMENT_FLAG if i < n else b""
            out.append(Send(sid, head + flag + b"".join(pieces[first:i])))

    def _audit(self) -> None:
        """Check the internal bookkeeping (tests)."""
        reads = set()
        for st in self._streams.values():
            assert st.unsynced == sum(not w.synced for w in st.watchers.values()), st.id
            for watch_id, w in st.watchers.items():
                assert w.id == watch_id and w.stream is st and not w.removed
                if w.synced:
                    assert w.read_id == 0
                if w.read_id:
                    assert self._reads[w.read_id] is w
                    reads.add(w.read_id)
                elif not w.synced and not st.blocked:
                    assert w in self._wanting, (st.id, w.id)
        assert reads == set(self._reads)
