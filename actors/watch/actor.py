"""The watch hub actor: the IO shell around the pure :class:`WatchHub`.

It receives each applied revision's events from the storage actor (in order), watch stream
requests from the session actor (creates, cancels, progress requests, a frontend's "blocked" and
"ready", stream closes), and the storage actor's answers to its history reads; it does what the
hub returns: pushes responses to streams through the session actor, asks storage for history.
It runs on every member, so clients watch through whichever member they are connected to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
import zmq
from google.protobuf.message import DecodeError

from actors.loop import Actor
from actors.mailbox import Mailbox, inbox
from actors.proto import rpc_pb2
from actors.protocol import (
    Kind,
    Method,
    Record,
    decode_history,
    encode_history_query,
    unpack,
    unpack_blobs,
)
from actors.watch.hub import Out, ReadHistory, Send, WatchHub

log = structlog.get_logger()

PROGRESS_INTERVAL = 600.0  # seconds between progress notifications (etcd's default, 10 minutes)


class WatchActor(Actor):
    name = "watch"

    def __init__(self, ctx: zmq.Context, cluster_id: int, member_id: int, revision: int) -> None:
        self.inbox = inbox(ctx, self.name)
        self.session = Mailbox(ctx, "session")
        self.storage = Mailbox(ctx, "storage")
        self.hub = WatchHub(revision, cluster_id=cluster_id, member_id=member_id)
        self.next_progress = time.monotonic() + PROGRESS_INTERVAL

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox,)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        hub = self.hub
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            if kind == Kind.WATCH_EVENTS:
                hub.raft_term = aux
                self._do(hub.on_revisions([(rev, unpack_blobs(body)) for rev, _, body in records]))
            elif kind == Kind.REQUEST:
                for record in records:
                    self._stream_request(record)
            elif kind == Kind.RESULT:
                for read_id, _, body in records:
                    revisions, next_rev, compacted = decode_history(body)
                    self._do(hub.on_history(read_id, revisions, next_rev, compact_revision=compacted))

    def _stream_request(self, record: Record) -> None:
        stream, method, body = record
        hub = self.hub
        if method == Method.WATCH:
            try:
                request = rpc_pb2.WatchRequest.FromString(body)
            except DecodeError:
                log.warning("watch_request_malformed", stream=stream)
                return
            which = request.WhichOneof("request_union")
            if which == "create_request":
                self._do(hub.create(stream, request.create_request))
            elif which == "cancel_request":
                self._do(hub.cancel(stream, request.cancel_request.watch_id))
            elif which == "progress_request":
                self._do(hub.progress(stream))
        elif method == Method.WATCH_CLOSE:
            self._do(hub.close_stream(stream))
        elif method == Method.WATCH_BLOCKED:
            self._do(hub.stream_blocked(stream))
        elif method == Method.WATCH_READY:
            self._do(hub.stream_ready(stream))

    def _do(self, outs: list[Out]) -> None:
        for out in outs:
            if isinstance(out, Send):
                self.session.put(Kind.PUSH, (out.stream, 0, out.response))
            elif isinstance(out, ReadHistory):
                query = encode_history_query(out.key, out.range_end, out.start_rev, out.end_rev, out.limit)
                self.storage.put(Kind.READ, (out.read_id, Method.WATCH_HISTORY, query))

    def deadline(self) -> float | None:
        return self.next_progress

    def on_time(self, now: float) -> None:
        self.next_progress = now + PROGRESS_INTERVAL
        self._do(self.hub.progress_tick())

    def flush(self) -> None:
        self.session.flush()
        self.storage.flush()

    def close(self) -> None:
        self.inbox.close(linger=0)
        self.session.close()
        self.storage.close()
