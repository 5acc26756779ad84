"""A linearizability checker for histories of key-value registers (put, get, compare-and-swap).

The algorithm is Wing & Gong's search as improved by Lowe and implemented by Porcupine: walk the
history's call and return events in time order, keep a linked list of the events not linearized
yet, linearize any operation whose call comes before the first pending return when the model
accepts it, backtrack when a return is reached whose operation could not be linearized, and
memoize (set of linearized operations, model state) so that no configuration is explored twice.
Registers of different keys are independent, so the history is split by key and each key checked
on its own (linearizability is compositional).

An operation that failed or timed out is *indeterminate*: it may have taken effect at any moment
after its call, or never. As in Porcupine and Knossos its return time is open-ended; a history is
accepted once every determinate operation is linearized (an indeterminate one left over "never
happened", which is the same as linearizing it after everything else). An indeterminate get
constrains nothing and is dropped.

Two reductions keep timed-out writes from making the search exponential. Values written are
expected to be unique, so a written value that no operation ever reads or compares against is
indistinguishable from any other such value: they all become one state, GARBAGE. Indeterminate
writes of such values are interchangeable once called (they can still happen at any later moment),
so instead of one bit each they are counted per kind (put, or CAS from one expected value): the
configuration records how many of each kind were used, and one more can be used while fewer have
been than were called before the current frontier. Linearizing an indeterminate write where it
changes nothing (a CAS whose comparison fails, a garbage put onto garbage) is never tried: leaving
it pending is always at least as good.

Operations (see `Op`):

- put:  input = value; output ignored.
- get:  output = the value read, None if the key was absent.
- cas:  input = (expected, new); output = True (swapped) or False (not swapped), or
        (False, current) when the failed CAS also read the current value (None if absent).
        As in etcd, comparing the value of an absent key fails, so expected None never swaps.

`check(ops)` returns a `Result`; it is pure and deterministic (no clock, no randomness).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

GARBAGE = -1  # state id of every written value nobody ever observes
ABSENT = 0  # state id of "key absent" (the initial state)
NIL = -1  # end of the event list


@dataclass(frozen=True)
class Op:
    """One client operation: `ret` is None when it failed or timed out (indeterminate)."""

    client: Hashable
    kind: str  # "put" | "get" | "cas"
    key: Hashable
    input: Any
    output: Any
    call: float
    ret: float | None

    @property
    def indeterminate(self) -> bool:
        return self.ret is None

    def describe(self) -> str:
        end = "..." if self.ret is None else f"{self.ret:.4f}"
        if self.kind == "put":
            what = f"put({self.input!r})" + ("" if self.ret is not None else " -> ?")
        elif self.kind == "get":
            what = f"get() -> {self.output!r}" if self.ret is not None else "get() -> ?"
        else:
            exp, new = self.input
            out = "?" if self.ret is None else repr(self.output)
            what = f"cas({exp!r} -> {new!r}) -> {out}"
        return f"[{self.call:.4f}, {end}] client {self.client} key {self.key!r}: {what}"


@dataclass
class KeyResult:
    key: Hashable
    ok: bool | None  # None: gave up (search budget exhausted)
    ops: int  # operations checked (indeterminate gets excluded)
    configurations: int  # configurations explored
    # On failure: the longest prefix that could be linearized, the state it leaves, and the
    # operations that were pending at that point (the first of them, `blocked`, must be linearized
    # next and cannot be).
    prefix: list[Op] = field(default_factory=list)
    state: Any = None
    pending: list[Op] = field(default_factory=list)
    blocked: Op | None = None

    def explain(self, context: int = 10) -> str:
        if self.ok:
            return f"key {self.key!r}: linearizable ({self.ops} ops)"
        if self.ok is None:
            return f"key {self.key!r}: gave up after {self.configurations} configurations ({self.ops} ops)"
        lines = [
            f"key {self.key!r}: NOT linearizable ({self.ops} ops, {self.configurations} configurations)",
            f"  longest linearizable prefix: {len(self.prefix)} ops; its last {context}:",
            *(f"    {op.describe()}" for op in self.prefix[-context:]),
            f"  state after it: {self.state!r}",
            f"  cannot linearize next: {self.blocked.describe() if self.blocked else '?'}",
            "  pending (called, not linearized) at that point:",
            *(f"    {op.describe()}" for op in self.pending),
        ]
        return "\n".join(lines)


@dataclass
class Result:
    keys: list[KeyResult]

    @property
    def ok(self) -> bool | None:
        if any(k.ok is False for k in self.keys):
            return False
        if any(k.ok is None for k in self.keys):
            return None
        return True

    @property
    def ops(self) -> int:
        return sum(k.ops for k in self.keys)

    def explain(self) -> str:
        bad = [k for k in self.keys if not k.ok]
        if not bad:
            return f"linearizable: {self.ops} ops on {len(self.keys)} keys"
        return "\n".join(k.explain() for k in bad)


def check(ops: Iterable[Op], max_configurations: int = 2_000_000) -> Result:
    """Check a whole history, key by key (each key is an independent register)."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return Result([check_register(k, by_key[k], max_configurations) for k in sorted(by_key, key=repr)])


def _cas_output(output: Any) -> tuple[bool, bool, Any]:
    """(swapped, saw current value, current value) from a CAS output."""
    if isinstance(output, tuple):
        swapped, current = output
        return bool(swapped), not swapped, current
    return bool(output), False, None


def check_register(key: Hashable, ops: Sequence[Op], max_configurations: int = 2_000_000) -> KeyResult:
    """Is this history of one register linearizable? (Lowe's WGL search, memoized.)"""
    for op in ops:
        if op.kind not in ("put", "get", "cas"):
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before its call: {op}")
    ops = [op for op in ops if not (op.kind == "get" and op.ret is None)]
    ops.sort(key=lambda op: (op.call, -1 if op.ret is None else op.ret))

    # -- values to state ids: observed values get their own id, everything else is GARBAGE ----------
    ids: dict[Any, int] = {None: ABSENT}

    def observe(value: Any) -> int:
        if value not in ids:
            ids[value] = len(ids)
        return ids[value]

    for op in ops:
        if op.kind == "get":
            observe(op.output)
        elif op.kind == "cas":
            observe(op.input[0])
            if op.ret is not None:
                _, saw, current = _cas_output(op.output)
                if saw:
                    observe(current)
    names = {v: k for k, v in ids.items()}
    names[GARBAGE] = "<a value nobody observed>"

    def written(value: Any) -> int:
        return ids.get(value, GARBAGE)

    # -- operations as small tuples the search steps through ------------------------------------------
    # entry ops (determinate, or indeterminate writes of observed values): one bit each, in the list.
    # group ops (indeterminate writes of unobserved values): counted per (kind, expected).
    PUT, GET, CAS_OK, CAS_FAIL_SEEN, CAS_FAIL_BLIND, PUT_MAYBE, CAS_MAYBE = range(7)
    steps: list[tuple[int, int, int]] = []  # (code, a, b) per entry op
    entry_ops: list[Op] = []
    groups: dict[tuple[str, int], list[Op]] = {}
    for op in ops:
        if op.kind == "put":
            value = written(op.input)
            if op.ret is None and value == GARBAGE:
                groups.setdefault(("put", ABSENT), []).append(op)
                continue
            steps.append((PUT if op.ret is not None else PUT_MAYBE, value, 0))
        elif op.kind == "get":
            steps.append((GET, ids[op.output], 0))
        else:
            expected, new = ids[op.input[0]], written(op.input[1])
            if op.ret is None:
                if expected == ABSENT:
                    continue  # can never swap: no effect whether or not it happened
                if new == GARBAGE:
                    groups.setdefault(("cas", expected), []).append(op)
                    continue
                steps.append((CAS_MAYBE, expected, new))
            else:
                swapped, saw, current = _cas_output(op.output)
                if swapped:
                    steps.append((CAS_OK, expected, new))
                else:
                    steps.append(
                        (CAS_FAIL_SEEN, expected, ids[current]) if saw else (CAS_FAIL_BLIND, expected, 0)
                    )
        entry_ops.append(op)
    group_keys = sorted(groups)
    group_calls = [sorted(op.call for op in groups[g]) for g in group_keys]

    # -- the event list: call and return entries in time order, doubly linked -----------------------
    events: list[tuple[float, int, int]] = []  # (time, 0 call | 1 return, entry op index)
    for i, op in enumerate(entry_ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            events.append((op.ret, 1, i))
    events.sort()
    n = len(events)
    HEAD = n  # sentinel
    nxt = [*range(1, n), NIL, 0 if n else NIL]
    prv = [HEAD, *range(n - 1), NIL]
    call_event = [0] * len(entry_ops)
    return_event = [NIL] * len(entry_ops)
    for e, (_, kind, i) in enumerate(events):
        if kind == 0:
            call_event[i] = e
        else:
            return_event[i] = e
    is_call = [kind == 0 for _, kind, _ in events]
    event_op = [i for _, _, i in events]
    event_time = [t for t, _, _ in events]
    remaining_returns = sum(1 for op in entry_ops if op.ret is not None)

    def unlink(e: int) -> None:
        nxt[prv[e]] = nxt[e]
        if nxt[e] != NIL:
            prv[nxt[e]] = prv[e]

    def relink(e: int) -> None:
        nxt[prv[e]] = e
        if nxt[e] != NIL:
            prv[nxt[e]] = e

    # -- the search ------------------------------------------------------------------------------------
    # A configuration is (linearized entry ops, state, group uses). At each one the candidates are the
    # pending calls before the frontier (the first pending return; NIL when none is left), then the
    # group moves. An indeterminate write is only linearized just before an operation in the window
    # that needs it: one that needs its value, or a blind failed CAS whose expected value is the
    # current state (any valid linearization can be rearranged so, by delaying such a write until
    # the first operation that tells it happened; it has no return to respect).

    def scan() -> tuple[list[int], int]:
        window = []
        e = nxt[HEAD]
        while e != NIL and is_call[e]:
            window.append(e)
            e = nxt[e]
        return window, e

    def needs(window: list[int]) -> tuple[set[int], set[int]]:
        needed, blind = set(), set()
        for e in window:
            code, a, b = steps[event_op[e]]
            if code in (GET, CAS_OK, CAS_MAYBE):
                needed.add(a)
            elif code == CAS_FAIL_SEEN:
                needed.add(b)
            elif code == CAS_FAIL_BLIND and a != ABSENT:
                blind.add(a)
        return needed, blind

    state = ABSENT
    linearized = 0  # bitset of entry ops
    used = [0] * len(group_keys)
    seen: set[tuple[int, int, tuple[int, ...]]] = {(0, ABSENT, tuple(used))}
    configurations = 1
    # frames: (move: entry op index, or -1 - group index; state before; what to resume the scan with)
    Frame = tuple[int, int, list[int], int, int, set[int], set[int]]
    stack: list[Frame] = []
    best_depth, best_prefix, best_state, best_frontier = -1, [], ABSENT, NIL
    window, frontier = scan()
    needed, blind = needs(window)
    i = 0

    def outcome(ok: bool | None) -> KeyResult:
        result = KeyResult(key, ok, len(ops), configurations)
        if ok is False:
            # a group move shows as the group's first op (they are interchangeable)
            result.prefix = [
                entry_ops[f[0]] if f[0] >= 0 else groups[group_keys[-1 - f[0]]][0] for f in best_prefix
            ]
            result.state = names.get(best_state, best_state)
            done = {f[0] for f in best_prefix if f[0] >= 0}
            limit = event_time[best_frontier] if best_frontier != NIL else float("inf")
            result.pending = [op for k, op in enumerate(entry_ops) if k not in done and op.call <= limit]
            result.blocked = entry_ops[event_op[best_frontier]] if best_frontier != NIL else None
        return result

    while True:
        if remaining_returns == 0:
            return outcome(True)
        if configurations > max_configurations:
            return outcome(None)
        moved = False
        while i < len(window):
            e = window[i]
            i += 1
            k = event_op[e]
            code, a, b = steps[k]
            if code == PUT:
                ok, new = True, a
            elif code == GET:
                ok, new = state == a, state
            elif code == CAS_OK:
                ok, new = state == a and a != ABSENT, b
            elif code == CAS_FAIL_SEEN:
                ok, new = state == b and (state != a or a == ABSENT), state
            elif code == CAS_FAIL_BLIND:
                ok, new = state != a or a == ABSENT, state
            elif code == PUT_MAYBE:
                ok, new = state != a and (a in needed or state in blind), a
            else:  # CAS_MAYBE
                ok, new = state == a and (b in needed or state in blind), b
            if not ok:
                continue
            config = (linearized | (1 << k), new, tuple(used))
            if config in seen:
                continue
            seen.add(config)
            configurations += 1
            stack.append((k, state, window, i, frontier, needed, blind))
            unlink(e)
            r = return_event[k]
            if r != NIL:
                unlink(r)
                remaining_returns -= 1
            state, linearized = new, config[0]
            moved = True
            break
        if not moved:
            while i - len(window) < len(group_keys):
                g = i - len(window)
                i += 1
                kind, expected = group_keys[g]
                if state not in blind or (kind == "cas" and state != expected):
                    continue
                limit = event_time[frontier] if frontier != NIL else float("inf")
                if bisect.bisect_right(group_calls[g], limit) <= used[g]:
                    continue
                used[g] += 1
                config = (linearized, GARBAGE, tuple(used))
                if config in seen:
                    used[g] -= 1
                    continue
                seen.add(config)
                configurations += 1
                stack.append((-1 - g, state, window, i, frontier, needed, blind))
                state = GARBAGE
                moved = True
                break
        if moved:
            window, frontier = scan()
            needed, blind = needs(window)
            i = 0
            continue
        # nothing can be linearized here: backtrack
        if len(stack) > best_depth:
            best_depth, best_prefix, best_state, best_frontier = len(stack), list(stack), state, frontier
        if not stack:
            return outcome(False)
        f, state, window, i, frontier, needed, blind = stack.pop()
        if f >= 0:
            r = return_event[f]
            if r != NIL:
                relink(r)
                remaining_returns += 1
            relink(call_event[f])
            linearized &= ~(1 << f)
        else:
            used[-1 - f] -= 1
