"""KeyIndex: etcd's key -> revision history (generations, ranges at a revision, compaction rules)."""

from __future__ import annotations

import random

import pytest

from actors.storage.keyindex import (
    TOMBSTONE,
    KeyIndex,
    is_tombstone,
    main_revision,
    prefix_end,
    revision_bound,
    revision_key,
    sub_revision,
)


def rk(main: int, sub: int = 0) -> bytes:
    return revision_key(main, sub)


def put(index: KeyIndex, key: bytes, main: int, sub: int = 0) -> tuple[int, int]:
    return index.put(key, rk(main, sub))


def delete(index: KeyIndex, key: bytes, main: int, sub: int = 0) -> bytes | None:
    return index.tombstone(key, rk(main, sub))


# -- revision encoding -----------------------------------------------------------------------------


def test_revision_key_is_etcds_layout_and_sorts_like_revisions() -> None:
    assert rk(1, 2) == (1).to_bytes(8, "big") + (2).to_bytes(8, "big")
    assert main_revision(rk(300, 7)) == 300 and sub_revision(rk(300, 7)) == 7
    revs = [(5, 0), (2, 1), (2, 0), (1 << 40, 3), (256, 0), (255, 65535)]
    assert sorted(rk(m, s) for m, s in revs) == [rk(m, s) for m, s in sorted(revs)]
    # a tombstone row sorts right after the same revision, before the next sub revision
    assert rk(3, 0) < rk(3, 0) + TOMBSTONE < rk(3, 1)
    assert is_tombstone(rk(3) + TOMBSTONE) and not is_tombstone(rk(3))


def test_revision_bound_separates_main_revisions() -> None:
    bound = revision_bound(7)
    assert rk(7, 1 << 40) + TOMBSTONE < bound <= rk(8, 0)
    assert rk(0) < revision_bound(0) <= rk(1)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"a/", b"a0"),
        (b"a\xff", b"b"),
        (b"a\xfe\xff\xff", b"a\xff"),
        (b"\xff\xff", b"\0"),
        (b"\xff", b"\0"),
        (b"", b"\0"),
        (b"\x00", b"\x01"),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


# -- puts, tombstones, generations ---------------------------------------------------------------


def test_versions_and_create_revision_across_delete_and_recreate() -> None:
    index = KeyIndex()
    assert put(index, b"k", 2) == (2, 1)
    assert put(index, b"k", 3) == (2, 2)
    assert index.latest(b"k") == (rk(3), 2, 2)
    assert delete(index, b"k", 4) == rk(4) + TOMBSTONE
    assert index.latest(b"k") is None
    assert put(index, b"k", 5, 1) == (5, 1)  # a new generation starts at version 1
    assert put(index, b"k", 6) == (5, 2)
    assert index.latest(b"k") == (rk(6), 5, 2)


def test_tombstone_of_a_missing_or_deleted_key_records_nothing() -> None:
    index = KeyIndex()
    assert delete(index, b"nope", 2) is None
    assert len(index) == 0
    put(index, b"k", 2)
    delete(index, b"k", 3)
    assert delete(index, b"k", 4) is None
    assert index.range(b"k", b"", 10) == []


def test_put_refuses_going_back_in_time() -> None:
    index = KeyIndex()
    put(index, b"k", 5)
    with pytest.raises(ValueError):
        put(index, b"k", 5)
    with pytest.raises(ValueError):
        put(index, b"k", 4)


def test_get_at_old_revisions() -> None:
    index = KeyIndex()
    put(index, b"k", 2)
    put(index, b"k", 4)
    delete(index, b"k", 6)
    put(index, b"k", 8)
    expected = {1: None, 2: rk(2), 3: rk(2), 4: rk(4), 5: rk(4), 6: None, 7: None, 8: rk(8), 100: rk(8)}
    for at, want in expected.items():
        assert index.get(b"k", at) == want, at
    assert index.get(b"other", 100) is None


# -- ranges ----------------------------------------------------------------------------------------


@pytest.fixture
def abc() -> KeyIndex:
    index = KeyIndex()
    for main, key in enumerate([b"a", b"b", b"c", b"\x00", b"\xff\xff", b"b\x00", b"\xff\xfe"], start=2):
        put(index, key, main)
    return index


def keys(pairs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k for k, _ in pairs]


def test_range_end_conventions(abc: KeyIndex) -> None:
    everything = [b"\x00", b"a", b"b", b"b\x00", b"c", b"\xff\xfe", b"\xff\xff"]
    assert keys(abc.range(b"b", b"", 100)) == [b"b"]  # empty range_end: just the key
    assert keys(abc.range(b"zz", b"", 100)) == []
    assert keys(abc.range(b"b", b"c", 100)) == [b"b", b"b\x00"]
    assert keys(abc.range(b"b", b"\0", 100)) == [b"b", b"b\x00", b"c", b"\xff\xfe", b"\xff\xff"]
    assert keys(abc.range(b"\0", b"\0", 100)) == everything  # key "\0", end "\0": all keys
    assert keys(abc.range(b"\xff\xff", prefix_end(b"\xff\xff"), 100)) == [b"\xff\xff"]
    assert keys(abc.range(b"\xff", prefix_end(b"\xff"), 100)) == [b"\xff\xfe", b"\xff\xff"]
    assert abc.range(b"c", b"b", 100) == []  # range_end before key: nothing
    assert abc.range(b"c", b"c", 100) == []
    assert abc.count(b"\0", b"\0", 100) == 7
    assert abc.revisions(b"a", b"c", 100) == [rk(2), rk(3), rk(7)]


def test_range_at_a_revision_sees_that_moment(abc: KeyIndex) -> None:
    assert keys(abc.range(b"\0", b"\0", 3)) == [b"a", b"b"]
    assert abc.range(b"\0", b"\0", 1) == []
    delete(abc, b"a", 20)
    put(abc, b"b", 21)
    assert abc.range(b"a", b"c", 19) == [(b"a", rk(2)), (b"b", rk(3)), (b"b\x00", rk(7))]
    assert abc.range(b"a", b"c", 20) == [(b"b", rk(3)), (b"b\x00", rk(7))]
    assert abc.range(b"a", b"c", 21) == [(b"b", rk(21)), (b"b\x00", rk(7))]
    assert abc.count(b"a", b"c", 21) == 2
    assert abc.revisions(b"a", b"", 20) == [] and abc.revisions(b"a", b"", 19) == [rk(2)]


# -- compaction ------------------------------------------------------------------------------------

# One key's life: put 2, put 4, delete 6, put 8, put 10, delete 12, put 14.
HISTORY = [(2, False), (4, False), (6, True), (8, False), (10, False), (12, True), (14, False)]


def history_index() -> KeyIndex:
    index = KeyIndex()
    for main, tomb in HISTORY:
        (delete if tomb else put)(index, b"k", main)
    return index


def row(main: int) -> bytes:
    return rk(main) + (TOMBSTONE if dict(HISTORY)[main] else b"")


@pytest.mark.parametrize(
    ("at", "removed"),
    [
        (1, []),
        (2, []),  # the latest revision <= 2 (2 itself) is kept
        (3, []),
        (4, [2]),
        (5, [2]),
        (6, [2, 4, 6]),  # the latest is a tombstone: its whole generation goes
        (7, [2, 4, 6]),
        (8, [2, 4, 6]),
        (9, [2, 4, 6]),
        (10, [2, 4, 6, 8]),
        (12, [2, 4, 6, 8, 10, 12]),
        (13, [2, 4, 6, 8, 10, 12]),
        (14, [2, 4, 6, 8, 10, 12]),
        (99, [2, 4, 6, 8, 10, 12]),
    ],
)
def test_compact_follows_etcds_rules(at: int, removed: list[int]) -> None:
    index = history_index()
    before = {rev: index.get(b"k", rev) for rev in range(at, 20)}
    assert index.compact(at) == [row(m) for m in removed]
    assert {rev: index.get(b"k", rev) for rev in range(at, 20)} == before  # reads >= at unchanged
    assert index.latest(b"k") == (rk(14), 14, 1)


def test_compact_is_incremental() -> None:
    index = history_index()
    assert index.compact(4) == [row(2)]
    assert index.compact(5) == []
    assert index.compact(8) == [row(4), row(6)]
    assert index.compact(14) == [row(8), row(10), row(12)]
    assert index.compact(20) == []


def test_compact_removes_keys_deleted_at_or_before_the_revision() -> None:
    index = KeyIndex()
    put(index, b"gone", 2)
    delete(index, b"gone", 3)
    put(index, b"kept", 4)
    delete(index, b"kept", 6)
    put(index, b"single", 5)
    assert index.compact(3) == [rk(2), rk(3) + TOMBSTONE]
    assert len(index) == 2
    assert keys(index.range(b"\0", b"\0", 5)) == [b"kept", b"single"]
    assert index.compact(6) == [rk(4), rk(6) + TOMBSTONE]
    assert len(index) == 1
    put(index, b"gone", 7)  # a compacted-away key comes back as a brand new key
    assert index.latest(b"gone") == (rk(7), 7, 1)


# -- revert and restore ----------------------------------------------------------------------------


def test_revert_undoes_puts_and_tombstones() -> None:
    index = KeyIndex()
    put(index, b"k", 2)
    put(index, b"k", 3)
    snapshot = index.latest(b"k")
    delete(index, b"k", 4)
    assert index.revert(b"k", 3 - 1, 2) == rk(4) + TOMBSTONE
    assert index.latest(b"k") == snapshot
    put(index, b"k", 4)
    assert index.revert(b"k", 2, 2) == rk(4)
    assert index.latest(b"k") == snapshot
    put(index, b"new", 4)
    assert index.revert(b"new", 0, 0) == rk(4)
    assert len(index) == 1 and index.range(b"new", b"", 10) == []
    assert index.compact(10) == [rk(2)]  # history bookkeeping survived the reverts


def test_restore_trusts_stored_counters() -> None:
    index = KeyIndex()
    # rows of a key whose first revisions were compacted away: its version is not a count of rows
    index.restore(b"k", rk(7), 3, 5)
    index.restore(b"k", rk(9), 3, 6)
    assert index.latest(b"k") == (rk(9), 3, 6)
    index.restore_tombstone(b"k", rk(10) + TOMBSTONE)
    assert index.latest(b"k") is None
    assert put(index, b"k", 11) == (11, 1)
    assert index.get(b"k", 9) == rk(9) and index.get(b"k", 10) is None
    assert index.compact(10) == [rk(7), rk(9), rk(10) + TOMBSTONE]


# -- randomized ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_against_a_naive_model(seed: int) -> None:
    rng = random.Random(seed)
    names = [b"", b"\x00", b"a", b"ab", b"b", b"\x80", b"\xff", b"\xff\xff"]
    index = KeyIndex()
    states: dict[int, dict[bytes, bytes]] = {1: {}}  # revision -> {key: revision of its value}
    compacted = 0
    for main in range(2, 1500):
        state = dict(states[main - 1])
        for sub in range(rng.randint(1, 3)):
            key = b"k" + rng.choice(names)
            if rng.random() < 0.3:
                assert (index.tombstone(key, rk(main, sub)) is None) == (key not in state), seed
                state.pop(key, None)
            elif key not in state or rk(main, 0) > state[key]:  # one change per key per revision
                index.put(key, rk(main, sub))
                state[key] = rk(main, sub)
        states[main] = state
        if rng.random() < 0.02:
            compacted = rng.randint(compacted, main)
            index.compact(compacted)
        at = rng.randint(max(compacted, 1), main)
        lo, hi = sorted(b"k" + rng.choice(names) for _ in range(2))
        want = sorted((k, r) for k, r in states[at].items() if lo <= k < hi)
        assert index.range(lo, hi, at) == want, f"seed {seed}, revision {at}"
        single = [(lo, states[at][lo])] if lo in states[at] else []
        assert index.range(lo, b"", at) == single, f"seed {seed}, revision {at}"
