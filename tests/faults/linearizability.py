"""Linearizability of single-key operations: a Wing-Gong / Porcupine search.

The model is one versioned register per key, with ZooKeeper's rules: a
node is created at version 0, every set adds 1, a conditional set (cas) or
delete names the version it expects, delete makes the node absent.  The
history is split by key (operations touch one key each, so the whole
history is linearizable iff every key's part is: P-compositionality) and
each part is searched with Porcupine's algorithm:

* call and return events sorted by time in a doubly linked list; the search
  repeatedly tries to linearize the next pending call whose effect is
  legal, removing its call and return from the list ("lifting"), and
  backtracks when it meets the return of a call it has not linearized;
* a cache of (set of linearized ops, model state) configurations already
  explored prunes repeated work -- the bitset is a Python int.

Operations with an unknown outcome (timeouts, lost connections) return at
"infinity" with an unconstrained result: they may take effect at any point
after their invocation, or never.

States are tuples ``(exists, value, version)``; ``None`` in a field means
"not known yet".  The search starts from ``ABSENT`` (every key is fresh);
``ANY`` (nothing known) is used to prove that a small *window* of the
history is non-linearizable on its own, whatever came before it.  The model
may be non-deterministic from a partly known state, so the search runs
over sets of states (the powerset construction), which stays a singleton
for a concrete start.

When a key fails, ``explain`` finds the first completed operation that
cannot be explained (binary search over prefixes of the history) and then
the latest start from which the operations up to it are non-linearizable
even from ``ANY``: that window is printed, the whole history saved.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from tests.faults.history import Op

State = tuple  # (exists: bool | None, value: str | None, version: int | None)
ABSENT: State = (False, None, None)
ANY: State = (None, None, None)
DEFAULT_BUDGET = 2_000_000  # search steps per key before giving up (verdict: unknown)


def step(s: State, op: Op) -> list[State]:
    """Possible states after ``op`` takes effect in ``s``; empty if its
    outcome is impossible there."""
    ex, val, ver = s
    f, status, e = op.f, op.status, op.expect
    if status == "unknown":  # it took effect (placing it last models "never"); result unconstrained
        if f == "set":
            if ex is False:
                return [s]
            out = [(True, op.value, None if ver is None else ver + 1)]
            return out + [ABSENT] if ex is None else out
        if f == "cas":
            applied = (True, op.value, e + 1)
            if ex is False:
                return [s]
            if ver == e:
                return [applied]
            return [applied, s] if ver is None else [s]
        if f == "create":
            if ex is None:
                return [(True, op.value, 0), (True, None, None)]
            return [(True, op.value, 0)] if ex is False else [s]
        if f == "delete":
            if ex is False:
                return [s]
            if e == -1 or ver == e:
                return [ABSENT] if ex else [ABSENT, s]
            return [ABSENT, s] if ver is None else [s]
        raise ValueError(f"unknown operation {f!r}")
    out = op.out
    if f == "get":
        if out is None:
            return [ABSENT] if ex is not True else []
        v, n = out
        if ex is False or (val is not None and val != v) or (ver is not None and ver != n):
            return []
        return [(True, v, n)]
    if status == "ok":
        if f == "set":
            if ex is False or (ver is not None and ver != out - 1):
                return []
            return [(True, op.value, out)]
        if f == "cas":
            if out != e + 1 or ex is False or (ver is not None and ver != e):
                return []
            return [(True, op.value, out)]
        if f == "create":
            return [(True, op.value, 0)] if ex is not True else []
        if f == "delete":
            if ex is False or (e != -1 and ver is not None and ver != e):
                return []
            return [ABSENT]
    else:  # a definite failure: no change, but it says something about the state
        if out == "NoNode" and f in ("set", "cas", "delete"):
            return [ABSENT] if ex is not True else []
        if out == "NodeExists" and f == "create":
            return [(True, val, ver)] if ex is not False else []
        if out == "BadVersion" and f in ("cas", "delete") and e != -1:
            if ex is False or ver == e:
                return []
            return [(True, val, ver)]
    return []


def _step_all(states: frozenset, op: Op) -> frozenset:
    nxt: set = set()
    for s in states:
        nxt.update(step(s, op))
    return frozenset(nxt)


class BudgetExceeded(Exception):
    """The search took more steps than allowed: no verdict."""


def search(ops: Sequence[Op], init: State = ABSENT, budget: int = DEFAULT_BUDGET) -> bool:
    """Is this single-key history linearizable from ``init``?

    ``ops``: definite ops (``ok``/``fail``) return at ``complete``; ``unknown``
    ones return at infinity unless ``complete`` is set and the op is marked
    as *erased* (see ``_erase``), which ``explain`` uses.
    """
    n = len(ops)
    events = []
    free = [False] * n  # returns at infinity: can always be linearized last
    for i, op in enumerate(ops):
        ret = op.complete if (op.status != "unknown" or getattr(op, "_erased", False)) else None
        free[i] = ret is None
        events.append((op.invoke, 0, i))
        events.append((math.inf if ret is None else ret, 1, i))
    definite = n - sum(free)
    if definite == 0:
        return True
    events.sort()  # at equal times calls come first: overlapping is the permissive reading
    size = len(events)
    # Positions 1..size in a doubly linked list; 0 is the head, size + 1 the tail.
    nxt = list(range(1, size + 2)) + [size + 1]
    prv = [0] + list(range(0, size + 1))
    is_ret = [False] * (size + 2)
    op_at = [0] * (size + 2)
    call_pos = [0] * n
    ret_pos = [0] * n
    for p, (_, kind, i) in enumerate(events, start=1):
        is_ret[p] = bool(kind)
        op_at[p] = i
        if kind:
            ret_pos[i] = p
        else:
            call_pos[i] = p

    def lift(p: int) -> None:
        nxt[prv[p]] = nxt[p]
        prv[nxt[p]] = prv[p]

    def unlift(p: int) -> None:
        nxt[prv[p]] = p
        prv[nxt[p]] = p

    state = frozenset([init])
    bits = 0
    seen: set = set()
    stack: list[tuple[int, frozenset]] = []
    p = nxt[0]
    steps = 0
    # Done once every op with a finite return is linearized: the free ones
    # left can all go last (their step never fails).
    while definite:
        steps += 1
        if steps > budget:
            raise BudgetExceeded(f"{steps} search steps over {n} operations")
        i = op_at[p]
        if not is_ret[p]:
            new = _step_all(state, ops[i])
            # A free op that changes nothing here is better left for later:
            # any linearization using it now works with it moved to the end.
            if new and not (free[i] and new == state):
                nbits = bits | (1 << i)
                key = (nbits, new)
                if key not in seen:
                    seen.add(key)
                    stack.append((i, state))
                    state, bits = new, nbits
                    lift(call_pos[i])
                    lift(ret_pos[i])
                    definite -= not free[i]
                    p = nxt[0]
                    continue
            p = nxt[p]
        else:
            if not stack:
                return False
            i, state = stack.pop()
            bits &= ~(1 << i)
            unlift(ret_pos[i])
            unlift(call_pos[i])
            definite += not free[i]
            p = nxt[call_pos[i]]
    return True


@dataclass
class KeyResult:
    key: str
    ok: bool | None  # None: the search budget ran out
    ops: int
    culprit: Op | None = None
    window: list[Op] = field(default_factory=list)
    window_from_any: bool = False  # the window fails whatever the state before it
    note: str = ""

    def report(self, t0: float = 0.0) -> str:
        if self.ok:
            return f"key {self.key}: linearizable ({self.ops} ops)"
        if self.ok is None:
            return f"key {self.key}: no verdict ({self.note})"
        head = (f"key {self.key}: NOT linearizable ({self.ops} ops). First operation that cannot be "
                f"explained: {self.culprit.describe(t0) if self.culprit else '?'}\n")
        if self.window_from_any:
            head += (f"Minimal window: these {len(self.window)} operations admit no linearization whatever "
                     "the state before them ('erased' = a write completed before the window's last start, "
                     "kept without its result):\n")
        else:
            head += f"Window (from the start of the history, {len(self.window)} operations):\n"
        return head + "\n".join("  " + op.describe(t0) + ("  (erased)" if getattr(op, "_erased", False) else "")
                                for op in sorted(self.window, key=lambda o: o.invoke))


def lin_ops(ops: Iterable[Op]) -> dict[str, list[Op]]:
    """The operations the model judges, by key: linearizable reads and all
    writes; unknown reads (they constrain nothing) and plain reads are out."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.f == "read" or (op.f == "get" and op.status != "ok"):
            continue
        if op.status == "pending":
            op = replace(op, status="unknown")
        by_key[op.key].append(op)
    return by_key


def check(ops: Iterable[Op], budget: int = DEFAULT_BUDGET, explain_failures: bool = True) -> list[KeyResult]:
    """Check every key; failing keys are explained (culprit and window)."""
    results = []
    for key, kops in sorted(lin_ops(ops).items()):
        try:
            ok = search(kops, ABSENT, budget)
        except BudgetExceeded as e:
            results.append(KeyResult(key, None, len(kops), note=str(e)))
            continue
        r = KeyResult(key, ok, len(kops))
        if not ok and explain_failures:
            explain(r, kops, budget)
        results.append(r)
    return results


def _cut(ops: Sequence[Op], t: float) -> list[Op]:
    """The history as it stood at time ``t``: later calls dropped, calls
    still in flight unknown (reads among them dropped)."""
    out = []
    for op in ops:
        if op.invoke > t:
            continue
        if op.complete is not None and op.complete <= t and op.status != "unknown":
            out.append(op)
        elif not op.is_read:
            out.append(replace(op, status="unknown", complete=None))
    return out


def _erase(op: Op) -> Op:
    """A write kept without its result: it happened before its completion,
    with whatever effect the state then allowed."""
    return _Erased(replace(op, status="unknown"))


class _Erased(Op):
    """An ``Op`` marked erased (slots dataclasses take no ad-hoc attributes)."""

    __slots__ = ("_erased",)

    def __init__(self, op: Op):
        super().__init__(**{f: getattr(op, f) for f in Op.__dataclass_fields__})
        self._erased = True


def explain(r: KeyResult, ops: Sequence[Op], budget: int, max_windows: int = 300) -> None:
    """Fill in the culprit and the smallest window that proves the failure."""
    definite = sorted((op for op in ops if op.status != "unknown" and op.complete is not None),
                      key=lambda o: o.complete)
    lo, hi = 0, len(definite) - 1  # the full history fails; find the first failing prefix
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            if search(_cut(ops, definite[mid].complete), ABSENT, budget):
                lo = mid + 1
            else:
                hi = mid
    except BudgetExceeded:
        r.note = "the search budget ran out while locating the culprit"
        r.window = list(ops)
        return
    culprit = definite[lo]
    t = culprit.complete
    cut = _cut(ops, t)
    r.culprit, r.window = culprit, cut
    starts = sorted({op.complete for op in cut if op.complete is not None and op.complete < culprit.invoke}
                    | {culprit.invoke}, reverse=True)
    for s in starts[:max_windows]:
        overlap = [op for op in cut if op.complete is None or op.complete >= s]
        # Ops that completed before every definite op of the window began are
        # linearized before all of them: the ANY start state stands for them.
        # (Unknown ops stay: they can always be placed last, i.e. never.)
        first = min(op.invoke for op in overlap if op.complete is not None)
        erased = [_erase(op) for op in cut
                  if op.complete is not None and first <= op.complete < s and not op.is_read]
        window = overlap + erased
        try:
            if not search(window, ANY, budget):
                r.window, r.window_from_any = window, True
                return
        except BudgetExceeded:
            break
