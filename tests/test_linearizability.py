"""The linearizability checker (tests/linearizability.py) on hand-made and generated histories."""

from __future__ import annotations

import random
import time

import pytest
from linearizability import Op, check, check_register

IND = None  # the return time of an operation that failed or timed out


def put(value, call, ret, client=0, key="k"):
    return Op(client, "put", key, value, None, call, ret)


def get(value, call, ret, client=0, key="k"):
    return Op(client, "get", key, None, value, call, ret)


def cas(expected, new, output, call, ret, client=0, key="k"):
    return Op(client, "cas", key, (expected, new), output, call, ret)


def ok(*ops: Op) -> bool | None:
    return check(ops).ok


# -- hand-made histories ---------------------------------------------------------------------------------


def test_empty_and_sequential() -> None:
    assert ok()
    assert ok(get(None, 0, 1))
    assert ok(put("a", 0, 1), get("a", 2, 3), cas("a", "b", True, 4, 5), get("b", 6, 7))
    assert ok(put("a", 0, 1), cas("x", "b", False, 2, 3), get("a", 4, 5))


def test_stale_read_is_illegal() -> None:
    assert not ok(put("a", 0, 1), put("b", 2, 3), get("a", 4, 5))
    # the same read concurrent with the second put may see either value
    assert ok(put("a", 0, 1), put("b", 2, 5), get("a", 3, 4))
    assert ok(put("a", 0, 1), put("b", 2, 5), get("b", 3, 4))


def test_read_order_between_clients() -> None:
    # two reads during one put: once the new value is seen, a later read cannot see the old one
    assert not ok(put("a", 0, 1), put("b", 2, 10), get("b", 3, 4, client=1), get("a", 5, 6, client=2))
    assert ok(put("a", 0, 1), put("b", 2, 10), get("a", 3, 4, client=1), get("b", 5, 6, client=2))


def test_lost_write_is_illegal() -> None:
    assert not ok(put("a", 0, 1), get(None, 2, 3))
    assert not ok(put("a", 0, 1), put("b", 1.5, 1.8), get("a", 2, 3), get("b", 4, 5))


def test_read_from_the_future_is_illegal() -> None:
    assert not ok(get("a", 0, 1), put("a", 2, 3))
    assert not ok(get("b", 0, 1), put("b", 2, IND))  # an indeterminate write is not before its call


def test_never_written_value_is_illegal() -> None:
    assert not ok(put("a", 0, 1), get("zzz", 2, 3))
    assert not ok(put("a", 0, IND), get("zzz", 2, 3))


def test_cas_succeeding_twice_is_illegal() -> None:
    assert not ok(
        put("a", 0, 1), cas("a", "b", True, 2, 3, client=1), cas("a", "c", True, 2.5, 3.5, client=2)
    )
    # one of two concurrent CASes from the same value wins
    assert ok(put("a", 0, 1), cas("a", "b", True, 2, 3, client=1), cas("a", "c", False, 2.5, 3.5, client=2))
    assert ok(
        put("a", 0, 1),
        cas("a", "b", False, 2, 3, client=1),
        cas("a", "c", True, 2.5, 3.5, client=2),
        get("c", 4, 5),
    )


def test_cas_on_an_absent_key_never_swaps() -> None:
    assert not ok(cas(None, "a", True, 0, 1))
    assert ok(cas(None, "a", False, 0, 1), get(None, 2, 3))


def test_failed_cas_with_the_value_it_saw() -> None:
    assert ok(put("a", 0, 1), cas("b", "c", (False, "a"), 2, 3))
    assert not ok(put("a", 0, 1), cas("b", "c", (False, None), 2, 3))
    assert not ok(put("a", 0, 1), cas("a", "c", (False, "a"), 2, 3))  # it should have swapped
    assert not ok(put("a", 0, 1), cas("a", "c", False, 2, 3))


def test_indeterminate_write_that_appears_later_is_legal() -> None:
    assert ok(put("a", 0, 1), put("b", 2, IND), get("a", 3, 4), get("b", 5, 6))
    assert ok(put("a", 0, 1), put("b", 2, IND), get("a", 3, 4), get("b", 50, 60))
    assert ok(put("a", 0, 1), cas("a", "b", IND, 2, IND), get("a", 3, 4), get("b", 5, 6))


def test_indeterminate_write_that_never_appears_is_legal() -> None:
    assert ok(put("a", 0, 1), put("b", 2, IND), get("a", 3, 4), get("a", 5, 6))
    assert ok(put("a", 0, 1), put("b", 2, IND), cas("a", "c", True, 3, 4), get("c", 5, 6))


def test_indeterminate_write_cannot_appear_then_vanish() -> None:
    assert not ok(put("a", 0, 1), put("b", 2, IND), get("b", 3, 4), get("a", 5, 6))


def test_indeterminate_cas_only_swaps_from_its_expected_value() -> None:
    assert not ok(put("a", 0, 1), cas("x", "b", IND, 2, IND), get("b", 3, 4))
    assert not ok(cas("x", "b", IND, 2, IND), get("b", 3, 4))


def test_indeterminate_get_constrains_nothing() -> None:
    assert ok(put("a", 0, 1), get("zzz", 2, IND), get("a", 3, 4))
    assert check([get("zzz", 2, IND)]).ops == 0


def test_unobserved_indeterminate_write_can_explain_a_failed_cas() -> None:
    # the failed CAS from "u" needs the value to be something else at that moment: the timed-out put
    assert ok(put("u", 0, 1), put("v", 1.5, IND), cas("u", "w", False, 2, 3), put("x", 5, 6), get("x", 7, 8))
    # ... but not when that put was called after the CAS returned
    assert not ok(
        put("u", 0, 1), cas("u", "w", False, 2, 3), put("v", 4, IND), put("x", 5, 6), get("x", 7, 8)
    )
    # an unobserved timed-out CAS from "u" can explain it too; one from another value cannot
    assert ok(put("u", 0, 1), cas("u", "z", IND, 1.5, IND), cas("u", "w", False, 2, 3), get("u", 2.5, 2.6))
    assert (
        ok(put("u", 0, 1), cas("u", "z", IND, 1.5, IND), cas("u", "w", False, 2, 3), get(None, 9, 9.1))
        is False
    )
    assert not ok(put("u", 0, 1), cas("q", "z", IND, 1.5, IND), cas("u", "w", False, 2, 3))


def test_an_overwritten_value_cannot_come_back() -> None:
    # two failed CASes from "u" around a read of "u": nothing can make "u" current again
    history = [
        put("u", 0, 1),
        cas("u", "w1", False, 2, 3),
        get("u", 4, 5),
        cas("u", "w2", False, 6, 7),
    ]
    assert not ok(*history)
    assert not ok(*history, put("g1", 1.5, IND))
    assert not ok(*history, put("g1", 1.5, IND), put("g2", 1.6, IND))  # "u" cannot come back
    assert ok(*history[:2], put("g1", 1.5, IND), put("g2", 1.6, IND), cas("u", "w2", False, 6, 7))


def test_keys_are_independent() -> None:
    legal = [put("a", 0, 1, key="x"), get("a", 2, 3, key="x")]
    illegal = [put("a", 0, 1, key="y"), get(None, 2, 3, key="y")]
    result = check(legal + illegal)
    assert result.ok is False
    assert [k.ok for k in result.keys] == [True, False]
    assert "'y'" in result.explain() and "'x'" not in result.explain()
    # the same values on different keys do not interfere
    assert ok(
        put("a", 0, 1, key="x"), put("b", 0, 1, key="y"), get("a", 2, 3, key="x"), get("b", 2, 3, key="y")
    )


def test_failure_explanation_names_the_blocked_operation() -> None:
    result = check([put("a", 0, 1), put("b", 2, 3), get("a", 4, 5, client=7)])
    text = result.explain()
    assert result.ok is False
    assert "NOT linearizable" in text and "client 7" in text and "get() -> 'a'" in text
    assert result.keys[0].blocked == get("a", 4, 5, client=7)


def test_budget_exhausted_is_unknown_not_ok() -> None:
    rng = random.Random(5)
    history, _ = legal_history(rng, clients=6, ops=300, indeterminate=0.2)
    result = check_register("k", history, max_configurations=10)
    assert result.ok is None


# -- generated histories ---------------------------------------------------------------------------------


def legal_history(
    rng: random.Random, clients: int, ops: int, indeterminate: float, key: str = "k", realistic: bool = False
) -> tuple[list[Op], list[Op]]:
    """A legal history: a sequential execution whose operations get overlapping real-time intervals.

    Each operation gets a call time, a linearization point after it and a return after that; outputs
    come from applying the operations in linearization order. Some writes and reads time out: a
    timed-out write took effect at its point or not at all (chosen at random). Returns the history
    and the determinate gets (for mutation).

    A CAS expects the current value or one of the last few written, and a failed one reports the
    current value half of the time; `realistic` makes them behave as the fault run's clients do
    instead: expect the last value the client saw, and always report the current value on failure.
    """
    free = [0.0] * clients
    shells = []
    for _ in range(ops):
        c = min(range(clients), key=lambda i: free[i])
        call = free[c] + rng.expovariate(10)
        point = call + rng.expovariate(rng.choice((1, 5, 20)))
        ret = point + rng.expovariate(5)
        free[c] = ret
        kind = rng.choices(("put", "get", "cas"), (3, 4, 3))[0]
        timed_out = rng.random() < indeterminate
        applied = not timed_out or rng.random() < 0.5
        shells.append((point, c, kind, call, ret, timed_out, applied))
    shells.sort()
    state = None
    written: list[str] = []
    history: list[Op] = []
    saw: dict[int, str | None] = {}
    for n, (_, c, kind, call, ret, timed_out, applied) in enumerate(shells):
        end = None if timed_out else ret
        if realistic and kind == "cas" and saw.get(c) is None:
            kind = "put"
        if kind == "put":
            value = f"v{n}"
            written.append(value)
            if applied:
                state = value
            if not timed_out:
                saw[c] = value
            history.append(Op(c, "put", key, value, None, call, end))
        elif kind == "get":
            if not timed_out:
                saw[c] = state
            history.append(Op(c, "get", key, None, state, call, end))
        else:
            if realistic:
                expected = saw[c]
            else:
                expected = state if (rng.random() < 0.6 or not written) else rng.choice(written[-5:])
            new = f"v{n}"
            written.append(new)
            swapped = expected is not None and state == expected
            output = True if swapped else (False, state) if realistic or rng.random() < 0.5 else False
            if swapped and applied:
                state = new
            if not timed_out:
                saw[c] = new if swapped else state
            history.append(Op(c, "cas", key, (expected, new), output, call, end))
    rng.shuffle(history)
    reads = [op for op in history if op.kind == "get" and op.ret is not None]
    return history, reads


@pytest.mark.parametrize("seed", range(60))
def test_generated_legal_histories_pass(seed: int) -> None:
    rng = random.Random(seed)
    clients = rng.randint(1, 8)
    history, _ = legal_history(
        rng, clients, rng.randint(1, 200), rng.choice((0.0, 0.05, 0.2)), realistic=seed % 2 == 1
    )
    result = check(history)
    assert result.ok is True, f"seed {seed}:\n{result.explain()}"


@pytest.mark.parametrize("seed", range(60))
def test_generated_histories_with_a_never_written_read_fail(seed: int) -> None:
    rng = random.Random(1000 + seed)
    history, reads = legal_history(
        rng, rng.randint(1, 8), rng.randint(5, 200), rng.choice((0.0, 0.05, 0.2)), realistic=seed % 2 == 1
    )
    if not reads:
        pytest.skip("no determinate read to mutate")
    victim = rng.choice(reads)
    mutated = [
        op if op is not victim else Op(op.client, "get", op.key, None, "never", op.call, op.ret)
        for op in history
    ]
    result = check(mutated)
    assert result.ok is False, f"seed {seed}: a read of a never-written value passed"


@pytest.mark.parametrize("seed", range(20))
def test_generated_histories_with_a_stale_read_fail(seed: int) -> None:
    """Append, after everything returned, a read of a value older than the last determinate write."""
    rng = random.Random(2000 + seed)
    history, _ = legal_history(rng, rng.randint(1, 6), rng.randint(20, 150), 0.0)
    end = max(op.ret for op in history)
    writes = sorted((op for op in history if op.kind == "put"), key=lambda op: op.call)
    last = max(writes, key=lambda op: op.ret)
    older = [w for w in writes if w.ret < last.call]  # entirely before the last put
    if not older:
        pytest.skip("no put entirely before another")
    stale = rng.choice(older).input
    assert check([*history, get(stale, end + 1, end + 2)]).ok is False


def test_several_thousand_ops_per_key_are_fast() -> None:
    rng = random.Random(42)
    history, _ = legal_history(rng, clients=6, ops=4000, indeterminate=0.05)
    start = time.monotonic()
    result = check(history)
    took = time.monotonic() - start
    assert result.ok is True, result.explain()
    assert took < 20, f"{took:.1f}s for 4000 ops"
    print(
        f"4000 ops (5% indeterminate) checked in {took:.2f}s, {result.keys[0].configurations} configurations"
    )


def test_refuting_a_long_realistic_history_is_fast() -> None:
    """A bad read in the middle of 4000 ops with 10% timeouts, as the fault run's clients make them."""
    rng = random.Random(7)
    history, reads = legal_history(rng, clients=6, ops=4000, indeterminate=0.1, realistic=True)
    victim = sorted(reads, key=lambda op: op.call)[len(reads) // 2]
    mutated = [op if op is not victim else get("never", op.call, op.ret, client=op.client) for op in history]
    start = time.monotonic()
    result = check(mutated)
    took = time.monotonic() - start
    assert result.ok is False
    assert result.keys[0].blocked == get("never", victim.call, victim.ret, client=victim.client)
    assert took < 20, f"{took:.1f}s"


# -- against a brute-force checker -----------------------------------------------------------------------


def brute_force(ops: list[Op]) -> bool:
    """Try every order that respects real time; timed-out writes may be left out (never happened)."""
    ops = [op for op in ops if not (op.kind == "get" and op.ret is None)]

    def step(state, op):
        if op.kind == "put":
            return True, op.input
        if op.kind == "get":
            return op.output == state, state
        expected, new = op.input
        swaps = expected is not None and state == expected
        if op.ret is None:
            return True, new if swaps else state
        if isinstance(op.output, tuple):
            return (not swaps and op.output[1] == state), state
        return op.output == swaps, new if swaps else state

    def search(state, remaining: frozenset[int]) -> bool:
        if all(ops[i].ret is None for i in remaining):
            return True
        for i in remaining:
            x = ops[i]
            if any(ops[j].ret is not None and ops[j].ret < x.call for j in remaining if j != i):
                continue
            ok, new = step(state, x)
            if ok and search(new, remaining - {i}):
                return True
        return False

    return search(None, frozenset(range(len(ops))))


def random_history(rng: random.Random, n: int, unique: bool) -> list[Op]:
    """Arbitrary (mostly illegal) small histories: random intervals, random outputs."""
    pool = ["a", "b", "c"]
    ops = []
    for i in range(n):
        call = rng.uniform(0, 10)
        ret = None if rng.random() < 0.25 else call + rng.expovariate(0.5)
        seen = [*pool, None]
        kind = rng.choice(("put", "get", "cas"))
        new = f"w{i}" if unique else rng.choice(pool)
        if unique:
            pool.append(new)
        if kind == "put":
            ops.append(put(new, call, ret, client=i))
        elif kind == "get":
            ops.append(get(rng.choice(seen), call, ret, client=i))
        else:
            output = rng.choice((True, False, (False, rng.choice(seen))))
            ops.append(cas(rng.choice(seen), new, output, call, ret, client=i))
    return ops


@pytest.mark.parametrize("unique", [True, False])
def test_agrees_with_brute_force_on_small_random_histories(unique: bool) -> None:
    rng = random.Random(99 + unique)
    verdicts = {True: 0, False: 0}
    for trial in range(3000):
        history = random_history(rng, rng.randint(1, 7), unique)
        expected = brute_force(history)
        verdicts[expected] += 1
        assert check(history).ok is expected, f"trial {trial}: brute force says {expected}:\n" + "\n".join(
            op.describe() for op in sorted(history, key=lambda op: op.call)
        )
    assert verdicts[True] > 200 and verdicts[False] > 200, verdicts
