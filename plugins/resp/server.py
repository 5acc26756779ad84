"""The RESP frontend: Redis clients on ``plugins: {resp: {listen: host:port}}`` (default 127.0.0.1:6380).

Each connection parses every command that one read brought and answers them in order with one
write, so a pipelining client costs one syscall per batch. GETs (what a read load is) are read
together with the other connections' GETs of the same event-loop turn: ONE core request
(``GET_MANY``), a single linearizable read at one revision instead of one per key (``reads``).
Bad bytes get Redis's protocol error and the connection is closed (the stream cannot be
re-synced); the node itself never notices.

Settings: ``listen`` (``host:port`` or a list of them), ``enabled``, ``tls`` (true: the listeners
speak TLS with the node's ``cert-file``/``key-file``/``trusted-ca-file``/``client-cert-auth``, as
``redis-cli --tls`` expects; with client-cert-auth a connection acts as its certificate's CN until
it sends ``AUTH``).
"""

from __future__ import annotations

import asyncio

import structlog

from actors.auth.backends import request_token
from actors.errors import EtcdError
from node import tls
from node.api import Client
from node.config import ConfigError, NodeConfig
from plugins.resp.codec import INLINE_MAX, Parser, ProtocolError, Push, ReplyError, bulk, encode
from plugins.resp.commands import ClientState, Several, Shared, dispatch
from plugins.resp.keyspace import Subscriptions
from plugins.resp.reads import BATCH_KEYS, ReadBatcher
from plugins.resp.store import Store, reply_error

log = structlog.get_logger()

DEFAULT_LISTEN = "127.0.0.1:6380"
PAUSE_AT = 4096  # parsed commands waiting on one connection before it stops reading
WRITE_HIGH = 4 << 20  # bytes of replies buffered for a slow reader before processing pauses


def parse_listen(listen: object) -> list[tuple[str, int]]:
    items = [listen] if isinstance(listen, str) else list(listen)  # type: ignore[call-overload]
    result = []
    for item in items:
        host, _, port = str(item).rpartition("://")[2].rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"plugins.resp.listen: {item!r} is not host:port")
        result.append((host.strip("[]"), int(port)))
    return result


class RespConnection(asyncio.Protocol):
    """One client connection: parse, run in order (GET runs folded), answer in one write per batch."""

    def __init__(self, shared: Shared, max_bulk: int, certificate_users: bool = False) -> None:
        self.shared = shared
        self.certificate_users = certificate_users
        self.parser = Parser(max_bulk)
        self.query_limit = 2 * max_bulk + INLINE_MAX
        self.pending: list[list[bytes] | ProtocolError] = []
        self.transport: asyncio.Transport | None = None
        self.loop = shared.reads.loop
        self.worker: asyncio.Task[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading = True
        store = Store(shared.client)
        self.state = ClientState(shared, shared.next_client_id, store, Subscriptions(store, self._deliver))
        shared.next_client_id += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        self.shared.connections.add(self)
        if self.certificate_users:
            common_name = tls.common_name(transport.get_extra_info("peercert"))
            self.state.store.token = request_token(None, common_name)

    def data_received(self, data: bytes) -> None:
        try:
            self.pending.extend(self.parser.feed(data))
            if self.parser.pending_bytes > self.query_limit:
                raise ProtocolError("Protocol error: query buffer limit exceeded")
        except ProtocolError as e:
            self.pending.extend(e.commands)
            self.pending.append(e)
            assert self.transport is not None
            self.transport.pause_reading()  # nothing after a protocol error is read
            self.reading = False
        if self.reading and len(self.pending) > PAUSE_AT:
            assert self.transport is not None
            self.transport.pause_reading()
            self.reading = False
        if self.worker is None and self.pending:
            self.worker = self.loop.create_task(self._work())

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.connections.discard(self)
        self.state.subscriptions.close()
        if self.worker is not None:
            self.worker.cancel()

    def _deliver(self, push: Push) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(push, self.state.resp3))

    async def _work(self) -> None:
        transport = self.transport
        assert transport is not None
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                out: list[bytes] = []
                close = await self._run(batch, out)
                transport.write(b"".join(out))
                if close:
                    transport.close()
                    return
                if not self.reading and len(self.pending) < PAUSE_AT // 2:
                    self.reading = True
                    transport.resume_reading()
                await self.writable.wait()
        finally:
            self.worker = None

    async def _run(self, batch: list[list[bytes] | ProtocolError], out: list[bytes]) -> bool:
        """Answer a batch into ``out``; True when the connection must close after it."""
        state = self.state
        i, n = 0, len(batch)
        while i < n:
            args = batch[i]
            if isinstance(args, ProtocolError):
                log.info("resp_protocol_error", client=state.id, error=str(args))
                out.append(encode(ReplyError("ERR " + str(args)), state.resp3))
                return True
            if _is_get(args) and state.multi is None and (state.resp3 or not state.subscriptions.count):
                j = i + 1
                while j < n and j - i < BATCH_KEYS and _is_get(batch[j]):  # type: ignore[arg-type]
                    j += 1
                await self._get_run([a[1] for a in batch[i:j]], out)  # type: ignore[index]
                i = j
                continue
            if _is_plain_set(args) and state.multi is None:
                j = i + 1
                while j < n and _is_plain_set(batch[j]):  # type: ignore[arg-type]
                    j += 1
                if j - i > 1:  # independent writes: all sent at once, raft keeps their order
                    replies = await asyncio.gather(*(dispatch(state, a) for a in batch[i:j]))  # type: ignore[arg-type]
                    out.extend(encode(r, state.resp3) for r in replies)
                    i = j
                    continue
            reply = await dispatch(state, args)
            if type(reply) is Several:
                out.extend(encode(r, state.resp3) for r in reply)
            else:
                out.append(encode(reply, state.resp3))
            if state.closing:
                return True
            i += 1
        return False

    async def _get_run(self, keys: list[bytes], out: list[bytes]) -> None:
        """Consecutive GETs: read with every other connection's GETs of this turn (``reads``)."""
        try:
            values = await self.shared.reads.get(self.state.store, keys)
        except EtcdError as e:
            error = encode(reply_error(e), self.state.resp3)
            out.extend(error for _ in keys)
            return
        resp3 = self.state.resp3
        null = b"_\r\n" if resp3 else b"$-1\r\n"
        for value in values:
            if type(value) is bytes:
                out.append(bulk(value))
            elif value is None:
                out.append(null)
            else:  # this key's own error (an empty key, one the user may not read)
                out.append(encode(reply_error(value), resp3))


def _is_get(args: list[bytes]) -> bool:
    return len(args) == 2 and args[0] in (b"GET", b"get", b"Get")


def _is_plain_set(args: list[bytes]) -> bool:
    return len(args) == 3 and args[0] in (b"SET", b"set", b"Set")


class RespFrontend:
    name = "resp"

    def __init__(self, config: NodeConfig, settings: dict) -> None:
        self.addresses = parse_listen(settings.get("listen") or DEFAULT_LISTEN)
        self.config = config
        self.tls = bool(settings.get("tls", False))
        self.max_bulk = 2 * config.max_request_bytes  # larger values get etcd's "request is too large"
        self.servers: list[asyncio.Server] = []
        self.shared: Shared | None = None

    async def start(self, client: Client) -> None:
        listen = f"{self.addresses[0][0]}:{self.addresses[0][1]}"
        loop = asyncio.get_running_loop()
        shared = self.shared = Shared(client, ReadBatcher(loop), listen)

        context = tls.server_context(self.config) if self.tls else None
        certificate_users = self.tls and self.config.client_cert_auth

        def connection() -> RespConnection:
            return RespConnection(shared, self.max_bulk, certificate_users)

        for host, port in self.addresses:
            self.servers.append(
                await loop.create_server(
                    connection, host, port, reuse_address=True, ssl=context,
                    ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT if context else None,
                )
            )  # fmt: skip
        log.info("resp_serving", addresses=[f"{h}:{p}" for h, p in self.addresses], tls=self.tls)

    async def stop(self, grace: float) -> None:
        """Stop listening, let commands being run finish for up to ``grace`` s, close every connection."""
        for server in self.servers:
            server.close()
        if self.shared is None:
            return
        running = [c.worker for c in self.shared.connections if c.worker is not None]
        if running:
            await asyncio.wait(running, timeout=grace)
        for connection in list(self.shared.connections):
            connection.state.subscriptions.close()
            if connection.transport is not None:
                connection.transport.close()
        await asyncio.sleep(0)  # the watch streams' close records leave before the core client closes
        log.info("resp_stopped")
