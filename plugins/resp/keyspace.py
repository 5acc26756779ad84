"""SUBSCRIBE/PSUBSCRIBE to Redis keyspace notifications, fed by the node's watch hub.

``__keyspace@0__:<key>`` carries the event name (``set``, ``del``, ``expired``) for that key and
``__keyevent@0__:<event>`` carries the key names, as Redis's notify-keyspace-events ``KEA``.
Each subscription is one etcd watcher on the connection's watch stream, on the key or on the range
its pattern can match (the literal prefix); events are matched against the glob here. A delete
of a key whose lease is gone is reported as ``expired`` (etcd deletes a lease's keys when it
expires or is revoked; both look alike to a watcher). Other channel names can be subscribed to
but carry nothing: cairn has no PUBLISH.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from actors.errors import EtcdError
from actors.proto import kv_pb2, rpc_pb2
from node.api import Stream
from plugins.resp.codec import Push
from plugins.resp.glob import key_range, matches
from plugins.resp.store import ALL_KEYS, Store

log = structlog.get_logger()

KEYSPACE = b"__keyspace@0__:"
KEYEVENT = b"__keyevent@0__:"


def watched_range(channel: bytes, pattern: bool) -> tuple[bytes, bytes] | None:
    """The etcd range a (pattern) channel needs to watch, or None if it never carries a notification."""
    if channel.startswith(KEYSPACE):
        key = channel[len(KEYSPACE) :]
        return key_range(key) if pattern else (key, b"")
    if channel.startswith(KEYEVENT) or (pattern and (channel[:1] in b"*?[" or channel == b"*")):
        return ALL_KEYS
    return None


class Subscriptions:
    """A connection's channels and patterns, and the watch stream that feeds them."""

    def __init__(self, store: Store, deliver: Callable[[Push], None]) -> None:
        self.store = store
        self.deliver = deliver
        self.channels: dict[bytes, int] = {}  # channel -> watch id (0: nothing to watch)
        self.patterns: dict[bytes, int] = {}
        # the revision each subscription's watcher is at: where it resumes if the stream is lost
        self.revisions: dict[tuple[bool, bytes], int] = {}
        self.stream: Stream | None = None
        self.creating: list[tuple[bool, bytes]] = []  # creates awaiting their watch id, in order
        self.reader: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return len(self.channels) + len(self.patterns)

    def subscribe(self, channel: bytes, pattern: bool) -> None:
        table = self.patterns if pattern else self.channels
        if channel in table:
            return
        table[channel] = 0
        self._create(pattern, channel)

    def _create(self, pattern: bool, channel: bytes) -> None:
        span = watched_range(channel, pattern)
        if span is None:
            return
        if self.stream is None:
            self.stream = self.store.client.open_stream(self.store.token)
            self.reader = asyncio.get_running_loop().create_task(self._read(self.stream))
        start = self.revisions.get((pattern, channel), 0)
        create = rpc_pb2.WatchCreateRequest(
            key=span[0], range_end=span[1], prev_kv=True, start_revision=start
        )
        self.creating.append((pattern, channel))
        self.stream.send(rpc_pb2.WatchRequest(create_request=create).SerializeToString())

    def unsubscribe(self, channel: bytes, pattern: bool) -> bool:
        table = self.patterns if pattern else self.channels
        if channel not in table:
            return False
        watch_id = table.pop(channel)
        self.revisions.pop((pattern, channel), None)
        if watch_id and self.stream is not None:
            cancel = rpc_pb2.WatchCancelRequest(watch_id=watch_id)
            self.stream.send(rpc_pb2.WatchRequest(cancel_request=cancel).SerializeToString())
        return True

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.stream is not None:
            self.stream.close()
        self.stream = self.reader = None

    def _reopen(self) -> None:
        """The core lost the stream (it restarted): every subscription gets a watcher again on a
        new stream, from the revision its old one had reached, so no notification is lost."""
        log.info("resp_keyspace_stream_reopened", subscriptions=self.count)
        self.stream = self.reader = None
        self.creating = []
        for pattern, table in ((False, self.channels), (True, self.patterns)):
            for channel in table:
                table[channel] = 0
                self._create(pattern, channel)

    async def _read(self, stream: Stream) -> None:
        watchers: dict[int, tuple[bool, bytes]] = {}
        while True:
            try:
                response = rpc_pb2.WatchResponse.FromString(await stream.get())
            except EtcdError:
                self._reopen()
                return
            if response.created:
                pattern, channel = self.creating.pop(0)
                table = self.patterns if pattern else self.channels
                if channel in table:
                    table[channel] = response.watch_id
                    watchers[response.watch_id] = (pattern, channel)
                    self.revisions.setdefault((pattern, channel), response.header.revision + 1)
                else:  # unsubscribed before the watcher existed
                    cancel = rpc_pb2.WatchCancelRequest(watch_id=response.watch_id)
                    stream.send(rpc_pb2.WatchRequest(cancel_request=cancel).SerializeToString())
                continue
            subscription = watchers.get(response.watch_id)
            if response.canceled or subscription is None:
                watchers.pop(response.watch_id, None)
                continue
            start = self.revisions.get(subscription, 0)
            for event in response.events:
                if event.kv.mod_revision < start:
                    continue  # a resumed watcher may repeat its last revision
                name = await self._event_name(event)
                self._notify(subscription, event.kv.key, name)
            if response.events and subscription in self.revisions:  # still subscribed
                self.revisions[subscription] = max(start, response.events[-1].kv.mod_revision + 1)

    async def _event_name(self, event: kv_pb2.Event) -> bytes:
        if event.type == kv_pb2.Event.PUT:
            return b"set"
        lease = event.prev_kv.lease
        if lease:
            try:
                if (await self.store.time_to_live(lease)).TTL < 0:
                    return b"expired"
            except Exception as e:  # the node is unreachable: report the plain delete
                log.warning("resp_lease_lookup_failed", error=str(e))
        return b"del"

    def _notify(self, subscription: tuple[bool, bytes], key: bytes, name: bytes) -> None:
        pattern, channel = subscription
        for candidate, payload in ((KEYSPACE + key, name), (KEYEVENT + name, key)):
            if not pattern and candidate == channel:
                self.deliver(Push([b"message", channel, payload]))
            elif pattern and matches(channel, candidate):
                self.deliver(Push([b"pmessage", channel, candidate, payload]))
