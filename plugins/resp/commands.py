"""The Redis command table: arity checks, MULTI queueing, and the commands that are not string ops.

String commands (``plugins.resp.strings``) run through :func:`plugins.resp.transaction.execute`;
a plain ``SET key value`` is one Put, and the server batches GETs (``plugins.resp.reads``).
Error replies use Redis's exact forms, because clients and scripts match on them.
"""

from __future__ import annotations

import os
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from actors import errors
from actors.errors import EtcdError
from node.api import Client
from plugins.resp.codec import OK, Push, ReplyError, Status
from plugins.resp.glob import key_range, matches
from plugins.resp.keyspace import Subscriptions
from plugins.resp.reads import ReadBatcher
from plugins.resp.store import ALL_KEYS, Store, reply_error
from plugins.resp.strings import STRING_COMMANDS, parse_int
from plugins.resp.transaction import execute, read

REDIS_VERSION = "7.0.0"  # the Redis whose commands and replies this frontend follows
QUEUED = Status("QUEUED")
SUBSCRIBED_ALLOWED = {
    b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"
}
CURSORS_KEPT = 10_000  # SCAN cursors remembered (oldest forgotten first)


class Several(list):
    """More than one top-level reply from one command (SUBSCRIBE a b c)."""


@dataclass
class Shared:
    """What every connection of the frontend shares."""

    client: Client
    reads: ReadBatcher
    listen: str
    cursors: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    connections: set = field(default_factory=set)  # the server's open RespConnections
    next_client_id: int = 1


@dataclass
class ClientState:
    """One connection's session state."""

    shared: Shared
    id: int
    store: Store
    subscriptions: Subscriptions
    resp3: bool = False
    name: bytes = b""
    multi: list[list[bytes]] | None = None
    multi_failed: bool = False
    watched: dict[bytes, int] = field(default_factory=dict)
    closing: bool = False


Handler = Callable[[ClientState, list[bytes]], Awaitable[object]]


def unknown_command(args: list[bytes]) -> ReplyError:
    """Redis's text, args quoted while the list stays under 128 characters."""
    shown = ""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += "'" + arg.decode(errors="replace")[: 128 - len(shown)] + "' "
    name = args[0].decode(errors="replace")[:128]
    return ReplyError(f"ERR unknown command '{name}', with args beginning with: {shown}")


def wrong_arity(name: bytes) -> ReplyError:
    return ReplyError(f"ERR wrong number of arguments for '{name.decode(errors='replace').lower()}' command")


async def dispatch(state: ClientState, args: list[bytes]) -> object:
    """Run (or queue, inside MULTI) one command; return its reply."""
    name = args[0].upper()
    spec = COMMANDS.get(name)
    if spec is None:
        return _refuse_in_multi(state, unknown_command(args))
    handler, arity = spec
    if (arity >= 0 and len(args) != arity) or len(args) < -arity:
        return _refuse_in_multi(state, wrong_arity(name))
    if not state.resp3 and state.subscriptions.count and name not in SUBSCRIBED_ALLOWED:
        return ReplyError(
            f"ERR Can't execute '{name.decode(errors='replace').lower()}': only (P|S)SUBSCRIBE / "
            "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        )
    if state.multi is not None and name not in (b"EXEC", b"DISCARD", b"MULTI", b"WATCH", b"QUIT", b"RESET"):
        if name not in STRING_COMMANDS:
            return _refuse_in_multi(
                state, ReplyError(f"ERR cairn runs only string commands inside MULTI, not '{name.decode()}'")
            )
        state.multi.append(args)
        return QUEUED
    try:
        return await handler(state, args)
    except ReplyError as e:
        return e
    except EtcdError as e:
        return reply_error(e)


def _refuse_in_multi(state: ClientState, error: ReplyError) -> ReplyError:
    if state.multi is not None:
        state.multi_failed = True
    return error


# -- strings ------------------------------------------------------------------------------------------


async def string_command(state: ClientState, args: list[bytes]) -> object:
    if len(args) == 3 and args[0].upper() == b"SET":  # a plain SET is one Put, no read first
        response = await state.store.put(args[1], args[2], prev_kv=True)
        if response.prev_kv.lease:
            state.store.release(response.prev_kv.lease)
        return OK
    return (await execute(state.store, [args]))[0]  # type: ignore[index]


async def cmd_keys(state: ClientState, args: list[bytes]) -> object:
    key, end = key_range(args[1])
    response = await state.store.range(key, end, keys_only=True)
    return [kv.key for kv in response.kvs if matches(args[1], kv.key)]


async def cmd_scan(state: ClientState, args: list[bytes]) -> object:
    """SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]: cursors name the next key, kept here."""
    cursor = parse_int(args[1], "ERR invalid cursor")
    start = b""
    if cursor:
        found = state.shared.cursors.get(cursor)
        if found is None:
            raise ReplyError("ERR invalid cursor")
        start = found
    pattern, count, kind = None, 10, None
    options = args[2:]
    for i in range(0, len(options), 2):
        option = options[i].upper()
        if i + 1 >= len(options):
            raise ReplyError("ERR syntax error")
        if option == b"MATCH":
            pattern = options[i + 1]
        elif option == b"COUNT":
            count = parse_int(options[i + 1])
            if count < 1:
                raise ReplyError("ERR syntax error")
        elif option == b"TYPE":
            kind = options[i + 1].lower()
        else:
            raise ReplyError("ERR syntax error")
    key, end = key_range(pattern) if pattern else ALL_KEYS
    if start > key:
        key = start
    response = await state.store.range(key, end, limit=count, keys_only=True)
    keys = [kv.key for kv in response.kvs if pattern is None or matches(pattern, kv.key)]
    if kind is not None and kind != b"string":
        keys = []
    following = 0
    if response.more:
        following = secrets.randbits(63) or 1
        state.shared.cursors[following] = response.kvs[-1].key + b"\0"
        while len(state.shared.cursors) > CURSORS_KEPT:
            state.shared.cursors.popitem(last=False)
    return [b"%d" % following, keys]


async def cmd_dbsize(state: ClientState, args: list[bytes]) -> object:
    return await state.store.count()


# -- transactions -------------------------------------------------------------------------------------


async def cmd_multi(state: ClientState, args: list[bytes]) -> object:
    if state.multi is not None:
        raise ReplyError("ERR MULTI calls can not be nested")
    state.multi, state.multi_failed = [], False
    return OK


async def cmd_exec(state: ClientState, args: list[bytes]) -> object:
    if state.multi is None:
        raise ReplyError("ERR EXEC without MULTI")
    queued, failed, watched = state.multi, state.multi_failed, state.watched
    state.multi, state.multi_failed, state.watched = None, False, {}
    if failed:
        raise ReplyError("EXECABORT Transaction discarded because of previous errors.")
    return await execute(state.store, queued, watched)


async def cmd_discard(state: ClientState, args: list[bytes]) -> object:
    if state.multi is None:
        raise ReplyError("ERR DISCARD without MULTI")
    state.multi, state.multi_failed, state.watched = None, False, {}
    return OK


async def cmd_watch(state: ClientState, args: list[bytes]) -> object:
    if state.multi is not None:
        raise ReplyError("ERR WATCH inside MULTI is not allowed")
    fresh = [k for k in dict.fromkeys(args[1:]) if k not in state.watched]
    if fresh:
        for key, kv in (await read(state.store, fresh)).items():
            state.watched[key] = kv.mod_revision if kv else 0
    return OK


async def cmd_unwatch(state: ClientState, args: list[bytes]) -> object:
    state.watched = {}
    return OK


# -- pub/sub ------------------------------------------------------------------------------------------


async def cmd_subscribe(state: ClientState, args: list[bytes]) -> object:
    pattern = args[0].upper() == b"PSUBSCRIBE"
    kind = b"psubscribe" if pattern else b"subscribe"
    replies = Several()
    for channel in args[1:]:
        state.subscriptions.subscribe(channel, pattern)
        replies.append(Push([kind, channel, state.subscriptions.count]))
    return replies


async def cmd_unsubscribe(state: ClientState, args: list[bytes]) -> object:
    pattern = args[0].upper() == b"PUNSUBSCRIBE"
    kind = b"punsubscribe" if pattern else b"unsubscribe"
    table = state.subscriptions.patterns if pattern else state.subscriptions.channels
    channels = args[1:] or list(table)
    if not channels:
        return Push([kind, None, state.subscriptions.count])
    replies = Several()
    for channel in channels:
        state.subscriptions.unsubscribe(channel, pattern)
        replies.append(Push([kind, channel, state.subscriptions.count]))
    return replies


# -- connection and server ----------------------------------------------------------------------------


async def cmd_ping(state: ClientState, args: list[bytes]) -> object:
    if len(args) > 2:
        raise wrong_arity(b"ping")
    if not state.resp3 and state.subscriptions.count:
        return [b"pong", args[1] if len(args) > 1 else b""]
    return args[1] if len(args) > 1 else Status("PONG")


async def cmd_select(state: ClientState, args: list[bytes]) -> object:
    if parse_int(args[1]) != 0:
        raise ReplyError("ERR DB index is out of range")
    return OK


async def cmd_quit(state: ClientState, args: list[bytes]) -> object:
    state.closing = True
    return OK


async def cmd_reset(state: ClientState, args: list[bytes]) -> object:
    state.multi, state.multi_failed, state.watched, state.name = None, False, {}, b""
    state.subscriptions.close()
    state.subscriptions.channels.clear()
    state.subscriptions.patterns.clear()
    state.resp3 = False
    return Status("RESET")


async def _authenticate(state: ClientState, args: list[bytes]) -> None:
    """AUTH [user] password: the etcd user (``AUTH password`` is user ``default``, as in Redis).

    While the node's auth is disabled, the default user takes any password (Redis's ``nopass``)
    and a bare password gets Redis's "no password configured" error, as a Redis without one.
    """
    name, password = (b"default", args[0]) if len(args) == 1 else (args[0], args[1])
    try:
        await state.store.authenticate(name.decode(errors="replace"), password.decode(errors="replace"))
    except EtcdError as e:
        if e == errors.AUTH_FAILED:
            raise ReplyError("WRONGPASS invalid username-password pair or user is disabled.") from None
        if e != errors.AUTH_NOT_ENABLED:
            raise
        if len(args) == 1:
            raise ReplyError(
                "ERR AUTH <password> called without any password configured for the default user. "
                "Are you sure your configuration is correct?"
            ) from None
        if name != b"default":
            raise ReplyError("WRONGPASS invalid username-password pair or user is disabled.") from None


async def cmd_auth(state: ClientState, args: list[bytes]) -> object:
    if len(args) > 3:
        raise ReplyError("ERR syntax error")
    await _authenticate(state, args[1:])
    return OK


def _set_name(state: ClientState, name: bytes) -> None:
    if any(c <= 32 or c > 126 for c in name):
        raise ReplyError("ERR Client names cannot contain spaces, newlines or special characters.")
    state.name = name


async def cmd_hello(state: ClientState, args: list[bytes]) -> object:
    resp3 = state.resp3
    if len(args) > 1:
        version = parse_int(args[1], "ERR Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise ReplyError("NOPROTO unsupported protocol version")
        resp3 = version == 3
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == b"AUTH" and i + 2 < len(args):
                await _authenticate(state, args[i + 1 : i + 3])
                i += 3
            elif option == b"SETNAME" and i + 1 < len(args):
                _set_name(state, args[i + 1])
                i += 2
            else:
                raise ReplyError(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    state.resp3 = resp3
    return {
        b"server": b"redis",
        b"version": REDIS_VERSION.encode(),
        b"proto": 3 if resp3 else 2,
        b"id": state.id,
        b"mode": b"standalone",
        b"role": (await _role(state)).encode(),
        b"modules": [],
    }


async def cmd_client(state: ClientState, args: list[bytes]) -> object:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        _set_name(state, args[2])
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return state.name or None
    if sub == b"ID" and len(args) == 2:
        return state.id
    if sub == b"SETINFO" and len(args) == 4:
        return OK
    if sub in (b"SETNAME", b"GETNAME", b"ID", b"SETINFO"):
        raise ReplyError(f"ERR wrong number of arguments for 'client|{sub.decode().lower()}' command")
    raise ReplyError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CLIENT HELP.")


async def _role(state: ClientState) -> str:
    status = await state.store.status()
    return "master" if status.leader == status.header.member_id else "slave"


async def cmd_info(state: ClientState, args: list[bytes]) -> object:
    status = await state.store.status()
    keys = await state.store.count()
    port = state.shared.listen.rpartition(":")[2]
    sections = {
        "server": [
            f"redis_version:{REDIS_VERSION}",
            "redis_mode:standalone",
            "cairn_version:" + status.version,
            f"process_id:{os.getpid()}",
            f"tcp_port:{port}",
        ],
        "replication": [
            "role:" + ("master" if status.leader == status.header.member_id else "slave"),
            f"cairn_member_id:{status.header.member_id:x}",
            f"cairn_leader_id:{status.leader:x}",
            f"cairn_raft_term:{status.raftTerm}",
            f"cairn_revision:{status.header.revision}",
        ],
        "keyspace": [f"db0:keys={keys},expires=0,avg_ttl=0"] if keys else [],
    }
    wanted = {a.decode(errors="replace").lower() for a in args[1:]} - {"all", "default", "everything"}
    text = "\r\n".join(
        f"# {name.capitalize()}\r\n" + "".join(line + "\r\n" for line in lines)
        for name, lines in sections.items()
        if not wanted or name in wanted
    )
    return text.encode()


async def cmd_command(state: ClientState, args: list[bytes]) -> object:
    """COMMAND, COMMAND COUNT, COMMAND INFO name..., COMMAND DOCS (empty: no docs), COMMAND LIST."""
    if len(args) == 1:
        return [_command_info(name) for name in COMMANDS]
    sub = args[1].upper()
    if sub == b"COUNT":
        return len(COMMANDS)
    if sub == b"LIST":
        return [name.lower() for name in COMMANDS]
    if sub == b"INFO":
        return [_command_info(n.upper()) if n.upper() in COMMANDS else None for n in args[2:]]
    if sub == b"DOCS":
        return {}
    raise ReplyError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try COMMAND HELP.")


def _command_info(name: bytes) -> list:
    first, last, step = KEY_SPECS.get(name, (0, 0, 0))
    flags = [Status("readonly" if name in READONLY else "write")] if first else []
    return [name.lower(), COMMANDS[name][1], flags, first, last, step]


KEY_SPECS = {**{name: spec[2:] for name, spec in STRING_COMMANDS.items()}, b"WATCH": (1, -1, 1)}
READONLY = {b"GET", b"EXISTS", b"MGET", b"STRLEN", b"TTL", b"PTTL", b"TYPE"}

COMMANDS: dict[bytes, tuple[Handler, int]] = {
    **{name: (string_command, spec[1]) for name, spec in STRING_COMMANDS.items()},
    b"KEYS": (cmd_keys, 2),
    b"SCAN": (cmd_scan, -2),
    b"DBSIZE": (cmd_dbsize, 1),
    b"MULTI": (cmd_multi, 1),
    b"EXEC": (cmd_exec, 1),
    b"DISCARD": (cmd_discard, 1),
    b"WATCH": (cmd_watch, -2),
    b"UNWATCH": (cmd_unwatch, 1),
    b"SUBSCRIBE": (cmd_subscribe, -2),
    b"PSUBSCRIBE": (cmd_subscribe, -2),
    b"UNSUBSCRIBE": (cmd_unsubscribe, -1),
    b"PUNSUBSCRIBE": (cmd_unsubscribe, -1),
    b"PING": (cmd_ping, -1),
    b"SELECT": (cmd_select, 2),
    b"QUIT": (cmd_quit, -1),
    b"RESET": (cmd_reset, 1),
    b"AUTH": (cmd_auth, -2),
    b"HELLO": (cmd_hello, -1),
    b"CLIENT": (cmd_client, -2),
    b"INFO": (cmd_info, -1),
    b"COMMAND": (cmd_command, -1),
}
