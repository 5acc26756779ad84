"""The in-memory key -> revision history index (etcd's treeIndex/keyIndex), pure: no IO.

A *revision* here is the row key of the ``kv`` column family, so what the index hands out
can be multi-got from RocksDB as is, with no conversion: 16 bytes, the main revision then the
sub revision, both 8-byte big-endian (byte order = revision order), and one more byte,
:data:`TOMBSTONE`, on the row of a deletion. etcd's *generations* are implicit: a tombstone
closes one, the next put opens another (version 1 again).

Per key the index keeps ``[create_revision, version, revisions]``: the create revision and
version of the key's live generation (both 0 while it is deleted) and every revision still
kept, oldest first. That makes a put O(1) and answers "which revision holds the value at
revision R" with one comparison for the latest value and a bisection for older ones.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from sortedcontainers import SortedList

TOMBSTONE = b"t"
"""Appended to the revision of a deletion's row (etcd's ``markTombstone``)."""

REVISION_SIZE = 16


def revision_key(main: int, sub: int = 0) -> bytes:
    """The row key of revision ``(main, sub)``."""
    return ((main << 64) | sub).to_bytes(REVISION_SIZE, "big")


def main_revision(rev: bytes) -> int:
    """The main (store-wide) revision of a row key."""
    return int.from_bytes(rev[:8], "big")


def sub_revision(rev: bytes) -> int:
    """The position of a change inside its write transaction."""
    return int.from_bytes(rev[8:REVISION_SIZE], "big")


def is_tombstone(rev: bytes) -> bool:
    """Whether a row key is the row of a deletion."""
    return len(rev) != REVISION_SIZE


def revision_bound(at_rev: int) -> bytes:
    """A bytes bound that every row key of a main revision <= ``at_rev`` sorts below."""
    return (at_rev + 1).to_bytes(8, "big")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix`` (clientv3's GetPrefixRangeEnd).

    Bumps the last byte that is not 0xff and cuts after it; a prefix of only 0xff bytes (or an
    empty one) has no such end, so it becomes ``b"\\0"``: every key >= prefix.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes((stripped[-1] + 1,))


class KeyIndex:
    """Every key's revision history, in key order, for ranges at any kept revision."""

    __slots__ = ("_entries", "_history", "_keys")

    def __init__(self) -> None:
        self._keys: SortedList = SortedList()
        # key -> [create_revision, version, revisions]; see the module docstring.
        self._entries: dict[bytes, list] = {}
        # Keys holding more than one revision: the only ones a compaction can shrink.
        self._history: set[bytes] = set()

    def __len__(self) -> int:
        """Keys known to the index, deleted ones still holding history included."""
        return len(self._entries)

    def live_count(self) -> int:
        """Keys that exist now (not deleted): one pass over the entries, no range walk."""
        return sum(1 for entry in self._entries.values() if entry[1])

    def put(self, key: bytes, rev: bytes) -> tuple[int, int]:
        """Record a put of ``key`` at ``rev``; return the key's (create_revision, version) after it."""
        entry = self._entries.get(key)
        if entry is None:
            created = int.from_bytes(rev[:8], "big")
            self._entries[key] = [created, 1, [rev]]
            self._keys.add(key)
            return created, 1
        revs = entry[2]
        if rev <= revs[-1]:
            raise ValueError(f"put of {key!r} at a revision not after its last one")
        revs.append(rev)
        self._history.add(key)
        if entry[1]:
            entry[1] += 1
        else:  # the first put after a deletion opens a new generation
            entry[0] = int.from_bytes(rev[:8], "big")
            entry[1] = 1
        return entry[0], entry[1]

    def restore(self, key: bytes, rev: bytes, create_revision: int, version: int) -> None:
        """Re-add a put row read back from disk (revision order), trusting its stored counters.

        A compaction may have dropped the start of a generation, so the version and create
        revision cannot be recounted from the kept rows.
        """
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = [create_revision, version, [rev]]
            self._keys.add(key)
            return
        entry[2].append(rev)
        self._history.add(key)
        entry[0] = create_revision
        entry[1] = version

    def tombstone(self, key: bytes, rev: bytes) -> bytes | None:
        """Record the deletion of a live ``key`` at ``rev``; return the tombstone's row key.

        ``None`` when the key is not live (etcd's ErrRevisionNotFound): nothing is recorded.
        """
        entry = self._entries.get(key)
        if entry is None or not entry[1]:
            return None
        row = rev + TOMBSTONE
        revs = entry[2]
        if row <= revs[-1]:
            raise ValueError(f"tombstone of {key!r} at a revision not after its last one")
        revs.append(row)
        self._history.add(key)
        entry[0] = 0
        entry[1] = 0
        return row

    def restore_tombstone(self, key: bytes, row: bytes) -> None:
        """Re-add a tombstone row read back from disk."""
        entry = self._entries.get(key)
        if entry is None:  # its generation's puts were compacted away: nothing to close
            return
        entry[2].append(row)
        self._history.add(key)
        entry[0] = 0
        entry[1] = 0

    def revert(self, key: bytes, create_revision: int, version: int) -> bytes:
        """Undo the last :meth:`put` or :meth:`tombstone` of ``key``, given the counters it had
        before; return the revision dropped. Lets a txn that fails half-way leave no trace."""
        entry = self._entries[key]
        revs = entry[2]
        rev = revs.pop()
        if revs:
            entry[0] = create_revision
            entry[1] = version
            if len(revs) == 1:
                self._history.discard(key)
        else:
            del self._entries[key]
            self._keys.remove(key)
            self._history.discard(key)
        return rev

    def latest(self, key: bytes) -> tuple[bytes, int, int] | None:
        """The live key's (revision, create_revision, version), or None when it does not exist."""
        entry = self._entries.get(key)
        if entry is None or not entry[1]:
            return None
        return entry[2][-1], entry[0], entry[1]

    def latest_revisions(self, keys: list[bytes]) -> list[bytes | None]:
        """Each live key's latest revision (None where it does not exist): point reads' first step."""
        entries = self._entries
        return [e[2][-1] if (e := entries.get(key)) is not None and e[1] else None for key in keys]

    def get(self, key: bytes, at_rev: int) -> bytes | None:
        """The revision holding ``key``'s value at ``at_rev``, or None if it did not exist then."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        return _visible(entry[2], revision_bound(at_rev))

    def keys(self, key: bytes, range_end: bytes) -> Iterable[bytes]:
        """Keys of the index that a (key, range_end) request selects, in order, live or not."""
        if not range_end:
            return (key,) if key in self._entries else ()
        if range_end == b"\0":
            return self._keys.irange(key)
        if range_end <= key:
            return ()
        return self._keys.irange(key, range_end, (True, False))

    def range(self, key: bytes, range_end: bytes, at_rev: int) -> list[tuple[bytes, bytes]]:
        """``(key, revision)`` of every key existing at ``at_rev`` in the requested range, in key order.

        ``range_end`` follows etcd: empty = just ``key``; ``b"\\0"`` = every key >= ``key``;
        otherwise the half-open ``[key, range_end)``.
        """
        bound = revision_bound(at_rev)
        entries = self._entries
        visible = ((k, _visible(entries[k][2], bound)) for k in self.keys(key, range_end))
        return [(k, rev) for k, rev in visible if rev is not None]

    def revisions(self, key: bytes, range_end: bytes, at_rev: int) -> list[bytes]:
        """Like :meth:`range` but only the revisions (what a multi-get of the rows needs)."""
        bound = revision_bound(at_rev)
        entries = self._entries
        if not range_end:
            entry = entries.get(key)
            if entry is None:
                return []
            rev = _visible(entry[2], bound)
            return [] if rev is None else [rev]
        visible = (_visible(entries[k][2], bound) for k in self.keys(key, range_end))
        return [rev for rev in visible if rev is not None]

    def count(self, key: bytes, range_end: bytes, at_rev: int) -> int:
        """How many keys of the range existed at ``at_rev``."""
        return len(self.revisions(key, range_end, at_rev))

    def keep(self, at_rev: int) -> set[bytes]:
        """The put revisions a compaction at ``at_rev`` would keep at or below it (etcd's Keep):
        each key's revision visible at ``at_rev``, if the key existed then."""
        bound = revision_bound(at_rev)
        visible = (_visible(entry[2], bound) for entry in self._entries.values())
        return {rev for rev in visible if rev is not None}

    def compact(self, at_rev: int) -> list[bytes]:
        """Forget history older than ``at_rev``; return the row keys that can be deleted from disk.

        etcd's rule, per key: keep the latest revision <= ``at_rev`` and everything after it,
        unless that revision is a tombstone, in which case its whole generation goes (and a key
        left with no revision leaves the index). Reads at ``at_rev`` or later are unchanged.
        """
        bound = revision_bound(at_rev)
        entries = self._entries
        removed: list[bytes] = []
        done = []
        for key in self._history:
            revs = entries[key][2]
            i = bisect_left(revs, bound)
            if not i:
                continue
            if len(revs[i - 1]) != REVISION_SIZE:  # deleted at or before at_rev: drop it all
                removed.extend(revs[:i])
                del revs[:i]
            elif i > 1:
                removed.extend(revs[: i - 1])
                del revs[: i - 1]
            else:
                continue
            if len(revs) <= 1:
                done.append(key)
                if not revs:
                    del entries[key]
                    self._keys.remove(key)
        self._history.difference_update(done)
        return removed


def _visible(revs: list[bytes], bound: bytes) -> bytes | None:
    """The put revision in ``revs`` that is current below ``bound``, if the key existed there."""
    rev = revs[-1]
    if rev >= bound:
        i = bisect_left(revs, bound)
        if not i:
            return None
        rev = revs[i - 1]
    return rev if len(rev) == REVISION_SIZE else None
