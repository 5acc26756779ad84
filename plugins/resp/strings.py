"""Redis's string commands, run against a :class:`View`: the keys they touch as read at one revision.

Each command reads and changes the view only; :mod:`plugins.resp.transaction` then commits every
change of a command (or of a whole MULTI) as ONE etcd Txn that holds only if none of the keys read
changed meanwhile. So a command's logic is written once, the same for a lone INCR and for one
inside MULTI/EXEC, and Redis's atomicity is etcd's compare-and-swap.

TTLs are leases: a key's ``lease`` is its etcd lease id (0: no TTL). A lease is granted (through
``View.grant``) before the commit that attaches it; one the commit does not use is revoked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from plugins.resp.codec import OK, ReplyError, Status

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}\Z")
NOT_INTEGER = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"


@dataclass(slots=True)
class Entry:
    """A key's state in the view: its value and lease id."""

    value: bytes
    lease: int = 0


class View:
    """The keys a command touches, as read (``before``) and as the command leaves them (``after``).

    ``grant(ttl_ms)`` returns a lease id, ``ttl_ms(lease)`` the remaining time of one (-2: gone):
    both reach the node, which is why commands are coroutines.
    """

    def __init__(
        self,
        before: dict[bytes, Entry | None],
        grant: Callable[[int], Awaitable[int]],
        ttl_ms: Callable[[int], Awaitable[int]],
    ) -> None:
        self.before = before
        self.after = dict(before)
        self.grant = grant
        self.ttl_ms = ttl_ms

    def get(self, key: bytes) -> Entry | None:
        return self.after[key]

    def set(self, key: bytes, entry: Entry | None) -> None:
        self.after[key] = entry


def parse_int(text: bytes, error: str = NOT_INTEGER) -> int:
    """Redis's string2ll: an int64 in canonical decimal, else ``error``."""
    if INTEGER.match(text) is None:
        raise ReplyError(error)
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ReplyError(error)
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


async def cmd_get(view: View, args: list[bytes]) -> object:
    entry = view.get(args[1])
    return None if entry is None else entry.value


async def cmd_set(view: View, args: list[bytes]) -> object:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]."""
    key, value = args[1], args[2]
    nx = xx = get = keepttl = False
    expire_ms: int | None = None
    i = 3
    while i < len(args):
        option = args[i].upper()
        has_next = i + 1 < len(args)
        if option == b"NX" and not xx:
            nx = True
        elif option == b"XX" and not nx:
            xx = True
        elif option == b"GET":
            get = True
        elif option == b"KEEPTTL" and expire_ms is None:
            keepttl = True
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and has_next and expire_ms is None and not keepttl:
            number = parse_int(args[i + 1])
            if number <= 0:
                raise ReplyError("ERR invalid expire time in 'set' command")
            scale = 1 if option in (b"PX", b"PXAT") else 1000
            expire_ms = number * scale - (now_ms() if option in (b"EXAT", b"PXAT") else 0)
            i += 1
        else:
            raise ReplyError(SYNTAX)
        i += 1
    old = view.get(key)
    if (nx and old is not None) or (xx and old is None):
        return (None if old is None else old.value) if get else None
    if expire_ms is not None and expire_ms <= 0:
        view.set(key, None)  # an absolute time already past: set and expired at once, as Redis does
    elif expire_ms is not None:
        view.set(key, Entry(value, await view.grant(expire_ms)))
    else:
        view.set(key, Entry(value, old.lease if keepttl and old is not None else 0))
    if get:
        return None if old is None else old.value
    return OK


async def cmd_setnx(view: View, args: list[bytes]) -> object:
    if view.get(args[1]) is not None:
        return 0
    view.set(args[1], Entry(args[2]))
    return 1


async def cmd_setex(view: View, args: list[bytes]) -> object:
    """SETEX key seconds value / PSETEX key milliseconds value."""
    number = parse_int(args[2])
    if number <= 0:
        raise ReplyError(f"ERR invalid expire time in '{args[0].decode(errors='replace').lower()}' command")
    ttl = number if args[0].upper() == b"PSETEX" else number * 1000
    view.set(args[1], Entry(args[3], await view.grant(ttl)))
    return OK


async def cmd_getset(view: View, args: list[bytes]) -> object:
    old = view.get(args[1])
    view.set(args[1], Entry(args[2]))
    return None if old is None else old.value


async def cmd_getdel(view: View, args: list[bytes]) -> object:
    old = view.get(args[1])
    view.set(args[1], None)
    return None if old is None else old.value


async def cmd_del(view: View, args: list[bytes]) -> object:
    deleted = 0
    for key in dict.fromkeys(args[1:]):
        if view.get(key) is not None:
            view.set(key, None)
            deleted += 1
    return deleted


async def cmd_exists(view: View, args: list[bytes]) -> object:
    return sum(view.get(key) is not None for key in args[1:])


async def cmd_mget(view: View, args: list[bytes]) -> object:
    return [None if (e := view.get(key)) is None else e.value for key in args[1:]]


async def cmd_mset(view: View, args: list[bytes]) -> object:
    if len(args) % 2 == 0:
        raise ReplyError(f"ERR wrong number of arguments for '{args[0].decode().lower()}' command")
    pairs = list(zip(args[1::2], args[2::2], strict=True))
    if args[0].upper() == b"MSETNX" and any(view.get(k) is not None for k, _ in pairs):
        return 0
    for key, value in pairs:
        view.set(key, Entry(value))
    return 1 if args[0].upper() == b"MSETNX" else OK


async def cmd_incr(view: View, args: list[bytes]) -> object:
    """INCR, DECR, INCRBY, DECRBY: the key keeps its TTL, as in Redis."""
    name = args[0].upper()
    delta = parse_int(args[2]) if name in (b"INCRBY", b"DECRBY") else 1
    if name.startswith(b"DECR"):
        if delta == INT64_MIN:
            raise ReplyError("ERR decrement would overflow")
        delta = -delta
    old = view.get(args[1])
    current = 0 if old is None else parse_int(old.value)
    result = current + delta
    if not INT64_MIN <= result <= INT64_MAX:
        raise ReplyError("ERR increment or decrement would overflow")
    view.set(args[1], Entry(b"%d" % result, 0 if old is None else old.lease))
    return result


async def cmd_append(view: View, args: list[bytes]) -> object:
    old = view.get(args[1])
    value = (b"" if old is None else old.value) + args[2]
    view.set(args[1], Entry(value, 0 if old is None else old.lease))
    return len(value)


async def cmd_strlen(view: View, args: list[bytes]) -> object:
    entry = view.get(args[1])
    return 0 if entry is None else len(entry.value)


async def cmd_ttl(view: View, args: list[bytes]) -> object:
    """TTL / PTTL: -2 no key, -1 no TTL; leases count whole seconds, so PTTL is TTL * 1000."""
    entry = view.get(args[1])
    if entry is None:
        return -2
    if not entry.lease:
        return -1
    remaining = await view.ttl_ms(entry.lease)
    if remaining < 0:
        return -2
    return remaining if args[0].upper() == b"PTTL" else (remaining + 999) // 1000


async def cmd_expire(view: View, args: list[bytes]) -> object:
    """EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key time [NX|XX|GT|LT]: a new lease for the key."""
    name = args[0].upper()
    number = parse_int(args[2])
    ms = number if name.startswith(b"P") else number * 1000
    if name.endswith(b"AT"):
        ms -= now_ms()
    flags = set()
    for arg in args[3:]:
        if arg.upper() not in (b"NX", b"XX", b"GT", b"LT"):
            raise ReplyError(f"ERR Unsupported option {arg.decode(errors='replace')}")
        flags.add(arg.upper())
    if b"NX" in flags and len(flags) > 1:
        raise ReplyError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if {b"GT", b"LT"} <= flags:
        raise ReplyError("ERR GT and LT options at the same time are not compatible")
    entry = view.get(args[1])
    if entry is None:
        return 0
    current = await view.ttl_ms(entry.lease) if entry.lease else -1  # -1: no TTL, which GT/LT see as infinite
    if (
        (b"NX" in flags and entry.lease)
        or (b"XX" in flags and not entry.lease)
        or (b"GT" in flags and (current < 0 or ms <= current))
        or (b"LT" in flags and current >= 0 and ms >= current)
    ):
        return 0
    if ms <= 0:
        view.set(args[1], None)  # a time in the past deletes the key, as in Redis
    else:
        view.set(args[1], Entry(entry.value, await view.grant(ms)))
    return 1


async def cmd_persist(view: View, args: list[bytes]) -> object:
    entry = view.get(args[1])
    if entry is None or not entry.lease:
        return 0
    view.set(args[1], Entry(entry.value))
    return 1


async def cmd_type(view: View, args: list[bytes]) -> object:
    return Status("none" if view.get(args[1]) is None else "string")


async def cmd_echo(view: View, args: list[bytes]) -> object:
    """ECHO and PING touch no key; they are here so that MULTI can queue them."""
    if args[0].upper() == b"ECHO":
        return args[1]
    if len(args) > 2:
        raise ReplyError("ERR wrong number of arguments for 'ping' command")
    return args[1] if len(args) > 1 else Status("PONG")


StringCommand = Callable[[View, list[bytes]], Awaitable[object]]

# name -> (implementation, Redis arity, first key, last key, key step), as Redis's command table
STRING_COMMANDS: dict[bytes, tuple[StringCommand, int, int, int, int]] = {
    b"GET": (cmd_get, 2, 1, 1, 1),
    b"SET": (cmd_set, -3, 1, 1, 1),
    b"SETNX": (cmd_setnx, 3, 1, 1, 1),
    b"SETEX": (cmd_setex, 4, 1, 1, 1),
    b"PSETEX": (cmd_setex, 4, 1, 1, 1),
    b"GETSET": (cmd_getset, 3, 1, 1, 1),
    b"GETDEL": (cmd_getdel, 2, 1, 1, 1),
    b"DEL": (cmd_del, -2, 1, -1, 1),
    b"UNLINK": (cmd_del, -2, 1, -1, 1),
    b"EXISTS": (cmd_exists, -2, 1, -1, 1),
    b"MGET": (cmd_mget, -2, 1, -1, 1),
    b"MSET": (cmd_mset, -3, 1, -1, 2),
    b"MSETNX": (cmd_mset, -3, 1, -1, 2),
    b"INCR": (cmd_incr, 2, 1, 1, 1),
    b"DECR": (cmd_incr, 2, 1, 1, 1),
    b"INCRBY": (cmd_incr, 3, 1, 1, 1),
    b"DECRBY": (cmd_incr, 3, 1, 1, 1),
    b"APPEND": (cmd_append, 3, 1, 1, 1),
    b"STRLEN": (cmd_strlen, 2, 1, 1, 1),
    b"TTL": (cmd_ttl, 2, 1, 1, 1),
    b"PTTL": (cmd_ttl, 2, 1, 1, 1),
    b"EXPIRE": (cmd_expire, -3, 1, 1, 1),
    b"PEXPIRE": (cmd_expire, -3, 1, 1, 1),
    b"EXPIREAT": (cmd_expire, -3, 1, 1, 1),
    b"PEXPIREAT": (cmd_expire, -3, 1, 1, 1),
    b"PERSIST": (cmd_persist, 2, 1, 1, 1),
    b"TYPE": (cmd_type, 2, 1, 1, 1),
    b"ECHO": (cmd_echo, 2, 0, 0, 0),
    b"PING": (cmd_echo, -1, 0, 0, 0),
}


def command_keys(args: list[bytes]) -> list[bytes]:
    """The keys a string command touches, from its table entry."""
    _, _, first, last, step = STRING_COMMANDS[args[0].upper()]
    if not first:
        return []
    end = len(args) if last < 0 else last + 1
    return args[first:end:step]
