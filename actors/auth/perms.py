"""Which keys a user's roles let it read or write: etcd's range permission cache, as sorted intervals.

etcd merges every permission of every role of a user into two interval trees (read, write) and
asks whether a request's key is inside one interval, or whether its range is covered by the union
of them (auth/range_perm_cache.go). Here the intervals are kept sorted by their start and a range is
checked by sweeping them once: a user has a handful of permissions, so this is cheap and exact.
"""

from __future__ import annotations

from collections.abc import Iterable

from actors.proto import auth_pb2

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

Interval = tuple[bytes, bytes]  # [begin, end); end b"" means "to the end of the key space"


def interval(key: bytes, range_end: bytes) -> Interval:
    """The keys a permission (or a request) names, as etcd reads ``key`` and ``range_end``."""
    if range_end == b"\x00":
        return key, b""  # from key on
    if not range_end:
        return key, key + b"\x00"  # the single key
    return key, range_end


class RangePermissions:
    """The merged read and write intervals of one user."""

    __slots__ = ("read", "write")

    def __init__(self, permissions: Iterable[auth_pb2.Permission]) -> None:
        read: list[Interval] = []
        write: list[Interval] = []
        for perm in permissions:
            ivl = interval(perm.key, perm.range_end)
            if perm.permType in (READ, READWRITE):
                read.append(ivl)
            if perm.permType in (WRITE, READWRITE):
                write.append(ivl)
        self.read = sorted(read)
        self.write = sorted(write)

    def allows(self, perm_type: int, key: bytes, range_end: bytes) -> bool:
        """Whether every key of ``[key, range_end)`` (or the single ``key``) is granted."""
        intervals = self.read if perm_type == READ else self.write
        begin, end = interval(key, range_end)
        cursor = begin
        for start, stop in intervals:
            if start > cursor:
                return False  # a gap before this interval
            if not stop:
                return True  # reaches the end of the key space
            if stop > cursor:
                cursor = stop
                if end and cursor >= end:
                    return True
        return False
