"""The fault suite's checkers catch planted violations (and pass near misses).

A checker that never fires proves nothing.  Each one gets a short history
that breaks its property -- a stale read, a lost write, an overlap, a
skipped event -- and one that comes close without breaking it.  The
linearizability search also gets large random histories generated from a
sequential execution (linearizable by construction), to show it is fast
enough for a soak's few thousand operations per key.
"""

import random
import time

import pytest

from tests.faults import checkers
from tests.faults.history import History, Op
from tests.faults.linearizability import ABSENT, ANY, check, search


def H(*rows):
    """Rows: (process, f, key, invoke, complete, status, out[, value, expect])."""
    h = History()
    for row in rows:
        p, f, key, t0, t1, status, out, *rest = row
        value = rest[0] if rest else None
        expect = rest[1] if len(rest) > 1 else None
        op = h.invoke(p, p, f, key, t0, value=value, expect=expect)
        if status == "ok":
            h.ok(op, t1, out, out[1] + 100 if f in ("get", "read") and out else None)
        elif status == "fail":
            h.error(op, t1, out)
        elif status == "unknown":
            h.error(op, t1, "ConnectionLoss")
    return h.ops


def verdict(ops):
    (r,) = check(ops)
    return r


# -- linearizability: planted violations ------------------------------------------


def test_stale_read_is_caught_with_a_two_op_window():
    r = verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "set", "k", 2, 3, "ok", 1, "b"),
        (3, "get", "k", 4, 5, "ok", ["a", 0]),  # b was acknowledged before this read began
    ))
    assert r.ok is False
    assert r.culprit.f == "get" and r.window_from_any
    assert sorted(op.f for op in r.window) == ["get", "set"]
    assert "NOT linearizable" in r.report()


def test_lost_write_is_caught():
    r = verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "set", "k", 2, 3, "ok", 1, "b"),
        (3, "get", "k", 10, 11, "ok", ["a", 0]),
        (3, "get", "k", 12, 13, "ok", ["a", 0]),
    ))
    assert r.ok is False


def test_read_of_deleted_node_and_double_create_are_caught():
    assert verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "delete", "k", 2, 3, "ok", None, None, -1),
        (3, "get", "k", 4, 5, "ok", ["a", 0]),
    )).ok is False
    assert verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "create", "k", 2, 3, "ok", None, "b"),  # no delete in between
    )).ok is False


def test_cas_and_version_rules_are_enforced():
    # a cas that succeeded against a version the node never had
    assert verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "cas", "k", 2, 3, "ok", 6, "b", 5),
    )).ok is False
    # BadVersion although the expected version was current and nothing ran concurrently
    assert verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "cas", "k", 2, 3, "fail", "BadVersion", "b", 0),
    )).ok is False
    # set returned a version that skips one
    assert verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "set", "k", 2, 3, "ok", 2, "b"),
    )).ok is False


def test_value_nobody_wrote_is_caught():
    assert verdict(H((1, "get", "k", 0, 1, "ok", ["ghost", 0]))).ok is False


# -- linearizability: near misses ------------------------------------------------


def test_concurrent_read_may_see_old_or_new():
    for seen in (["a", 0], ["b", 1]):
        assert verdict(H(
            (1, "create", "k", 0, 1, "ok", None, "a"),
            (2, "set", "k", 2, 5, "ok", 1, "b"),
            (3, "get", "k", 3, 4, "ok", seen),
        )).ok is True


def test_unknown_write_may_or_may_not_have_happened():
    base = [(1, "create", "k", 0, 1, "ok", None, "a"), (2, "set", "k", 2, 3, "unknown", None, "b")]
    assert verdict(H(*base, (3, "get", "k", 10, 11, "ok", ["b", 1]))).ok is True
    assert verdict(H(*base, (3, "get", "k", 10, 11, "ok", ["a", 0]))).ok is True
    # ... but not both in that order: once b is seen it cannot be undone
    assert verdict(H(*base, (3, "get", "k", 10, 11, "ok", ["b", 1]),
                     (3, "get", "k", 12, 13, "ok", ["a", 0]))).ok is False


def test_unknown_write_can_take_effect_long_after_it_was_sent():
    assert verdict(H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "set", "k", 2, 3, "unknown", None, "b"),
        (3, "get", "k", 10, 11, "ok", ["a", 0]),
        (3, "get", "k", 20, 21, "ok", ["b", 1]),
    )).ok is True


def test_failed_ops_are_explained_by_the_state():
    assert verdict(H(
        (1, "set", "k", 0, 1, "fail", "NoNode", "x"),
        (1, "create", "k", 2, 3, "ok", None, "a"),
        (2, "create", "k", 4, 5, "fail", "NodeExists", "b"),
        (2, "cas", "k", 6, 7, "fail", "BadVersion", "c", 3),
        (2, "cas", "k", 8, 9, "ok", 1, "d", 0),
        (1, "delete", "k", 10, 11, "fail", "BadVersion", None, 0),
        (1, "delete", "k", 12, 13, "ok", None, None, 1),
        (1, "get", "k", 14, 15, "ok", None),
    )).ok is True


def test_plain_reads_are_not_judged_by_linearizability_but_by_session_order():
    ops = H(
        (1, "create", "k", 0, 1, "ok", None, "a"),
        (2, "set", "k", 2, 3, "ok", 1, "b"),
        (3, "read", "k", 4, 5, "ok", ["a", 0]),  # stale, but plain reads may be
    )
    assert all(r.ok for r in check(ops))
    assert checkers.check_session_order(ops) == []


def test_window_search_from_any_state():
    ops = H((2, "set", "k", 2, 3, "ok", 1, "b"), (3, "get", "k", 4, 5, "ok", ["a", 0]))
    assert search(ops, ANY) is False
    assert search(H((3, "get", "k", 4, 5, "ok", ["a", 0])), ANY) is True
    assert search(H((3, "get", "k", 4, 5, "ok", ["a", 0])), ABSENT) is False


# -- linearizability: scale -------------------------------------------------------------


def random_history(n_ops: int, processes: int, seed: int, unknown_rate: float = 0.02) -> list[Op]:
    """A linearizable history by construction: each op takes effect at a
    random instant inside its interval, applied in that order to a register."""
    rng = random.Random(seed)
    clock = [0.0] * processes
    pending = []
    for i in range(n_ops):
        p = rng.randrange(processes)
        t0 = clock[p] + rng.uniform(0, 2)
        t1 = t0 + rng.uniform(0.1, 5)
        clock[p] = t1
        f = rng.choice(["get", "get", "set", "cas", "create", "delete"])
        pending.append((t0 + rng.uniform(0, t1 - t0), p, t0, t1, f, f"{p}.{i}", rng.randrange(5)))
    h = History()
    state = None  # (value, version)
    for at, p, t0, t1, f, value, guess in sorted(pending):
        expect = None
        if f == "cas":
            expect = state[1] if state and rng.random() < 0.6 else guess
        elif f == "delete":
            expect = -1 if rng.random() < 0.5 else guess
        op = h.invoke(p, p, f, "k", t0, value=value if f in ("set", "cas", "create") else None, expect=expect)
        lost = f != "get" and rng.random() < unknown_rate
        if f == "get":
            h.ok(op, t1, None if state is None else list(state))
        elif f in ("set", "cas"):
            if state is None:
                h.error(op, t1, "NoNode")
            elif f == "cas" and expect != state[1]:
                h.error(op, t1, "BadVersion")
            else:
                state = (value, state[1] + 1)
                h.ok(op, t1, state[1])
        elif f == "create":
            if state is not None:
                h.error(op, t1, "NodeExists")
            else:
                state = (value, 0)
                h.ok(op, t1)
        else:
            if state is None:
                h.error(op, t1, "NoNode")
            elif expect not in (-1, state[1]):
                h.error(op, t1, "BadVersion")
            else:
                state = None
                h.ok(op, t1)
        if lost:
            op.status, op.out = "unknown", "ConnectionLoss"
    h.ops.sort(key=lambda o: o.invoke)
    return h.ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thousands_of_ops_check_quickly(seed):
    ops = random_history(3000, 8, seed)
    t = time.monotonic()
    assert verdict(ops).ok is True
    assert time.monotonic() - t < 20


def test_planted_stale_read_in_a_large_history_gets_a_small_window():
    ops = random_history(2000, 6, 7, unknown_rate=0.0)
    last_write = max((o for o in ops if o.f in ("set", "cas", "create") and o.status == "ok"), key=lambda o: o.complete)
    h = History()
    h.ops = list(ops)
    read = h.invoke(99, 99, "get", "k", last_write.complete + 100)
    h.ok(read, last_write.complete + 101, ["never-written", 0])
    r = verdict(h.ops)
    assert r.ok is False and r.culprit is read
    assert r.window_from_any and len(r.window) <= 10


# -- session order ------------------------------------------------------------------------


def test_plain_read_going_back_in_time_is_caught():
    ops = H((1, "read", "k", 0, 1, "ok", ["b", 5]), (1, "read", "k", 2, 3, "ok", ["a", 2]))
    (v,) = checkers.check_session_order(ops)
    assert "back in time" in v.message
    # concurrent reads of one session may come back in either order
    ops = H((1, "read", "k", 0, 3, "ok", ["b", 5]), (1, "read", "k", 1, 2, "ok", ["a", 2]))
    assert checkers.check_session_order(ops) == []


# -- creates --------------------------------------------------------------------------------


def test_lost_duplicated_and_phantom_creates_are_caught():
    acked = [["n1-0000000001", "n1-"], ["k2", "k2"], ["n3-0000000004", "n3-"]]
    unknown = [[None, "n5-"], [None, "k6"]]
    good = ["n1-0000000001", "k2", "n3-0000000004", "n5-0000000007"]
    assert checkers.check_creates(acked, unknown, good) == []
    assert "lost" in checkers.check_creates(acked, unknown, good[1:])[0].message
    assert "more than once" in checkers.check_creates(acked, unknown, good + ["n3-0000000005"])[0].message
    assert "nobody created" in checkers.check_creates(acked, unknown, good + ["k9"])[0].message


# -- ephemerals -------------------------------------------------------------------------


def test_ephemeral_rules():
    sessions = [{"sid": 1, "state": "live", "acked": ["/e/a", "/e/b"], "unknown": ["/e/c"]},
                {"sid": 2, "state": "expired", "acked": ["/e/x"], "unknown": []},
                {"sid": 3, "state": "unknown", "acked": ["/e/y"], "unknown": []}]
    assert checkers.check_ephemerals(sessions, {"/e/a": 1, "/e/b": 1}) == []
    assert checkers.check_ephemerals(sessions, {"/e/a": 1, "/e/b": 1, "/e/c": 1}) == []
    assert "missing" in checkers.check_ephemerals(sessions, {"/e/a": 1})[0].message
    assert "still present" in checkers.check_ephemerals(sessions, {"/e/a": 1, "/e/b": 1, "/e/x": 2})[0].message
    assert "nobody created" in checkers.check_ephemerals(sessions, {"/e/a": 1, "/e/b": 1, "/e/z": 1})[0].message


# -- locks ----------------------------------------------------------------------------------


def test_overlapping_critical_sections_are_caught():
    holds = [{"client": "a", "token": 1, "acquired": 0.0, "until": 2.0},
             {"client": "b", "token": 2, "acquired": 1.5, "until": 3.0}]
    (v,) = checkers.check_locks(holds, [], end=10)
    assert "overlapped" in v.message and checkers.SESSION_EXPIRED_UNSEEN not in v.message
    holds[0]["ended"] = "expired"  # the holder only learned at the end that its session was gone
    (v,) = checkers.check_locks(holds, [], end=10)
    assert checkers.SESSION_EXPIRED_UNSEEN in v.message
    holds[1]["acquired"] = 2.5
    assert checkers.check_locks(holds, [], end=10) == []


def test_fencing_tokens_must_grow_with_real_time():
    holds = [{"client": "a", "token": 5, "acquired": 0.0, "until": 1.0},
             {"client": "b", "token": 4, "acquired": 2.0, "until": 3.0}]
    (v,) = checkers.check_locks(holds, [], end=10)
    assert "did not increase" in v.message


def test_guarded_write_by_a_superseded_holder_is_caught():
    writes = [{"zxid": 10, "token": 1, "client": "a"}, {"zxid": 11, "token": 2, "client": "b"},
              {"zxid": 12, "token": 1, "client": "a"}]
    (v,) = checkers.check_locks([], writes, end=10)
    assert "superseded" in v.message
    assert checkers.check_locks([], writes[:2], end=10) == []


def test_hold_still_open_at_the_end_counts_until_the_end():
    holds = [{"client": "a", "token": 1, "acquired": 0.0, "until": None},
             {"client": "b", "token": 2, "acquired": 5.0, "until": 6.0}]
    assert checkers.check_locks(holds, [], end=10)


# -- watches ----------------------------------------------------------------------------------


REF = [[5, "created", "/l/k0"], [7, "changed", "/l/k0"], [9, "changed", "/l/k1"], [12, "deleted", "/l/k0"]]


def watcher(events, start=4, end=12, resyncs=()):
    return {"name": "w", "start": start, "end": end, "events": events, "resyncs": list(resyncs)}


def test_watch_rules_hold_for_a_faithful_watcher():
    assert checkers.check_watches([watcher(REF)], REF, 0, [[7, "changed", "/l/k0"]]) == []
    # a watcher that started late is only accountable from its start
    assert checkers.check_watches([watcher(REF[2:], start=8)], REF, 0, []) == []


def test_skipped_event_is_caught():
    (v,) = checkers.check_watches([watcher(REF[:1] + REF[2:])], REF, 0, [])
    assert "missing" in v.message and "7" in v.details[0]


def test_duplicate_and_out_of_order_events_are_caught():
    found = checkers.check_watches([watcher(REF[:2] + REF[1:2] + REF[2:])], REF, 0, [])
    assert any("duplicate" in v.message for v in found)
    found = checkers.check_watches([watcher([REF[1], REF[0]] + REF[2:])], REF, 0, [])
    assert any("order" in v.message for v in found)


def test_invented_event_and_acked_change_missing_from_history_are_caught():
    found = checkers.check_watches([watcher(REF + [[11, "changed", "/l/k2"]])], REF, 0, [])
    assert any("not in the history" in v.message for v in found)
    found = checkers.check_watches([], REF, 0, [[8, "changed", "/l/k1"]])
    assert any("missing from the replayed history" in v.message for v in found)


def test_without_a_replayed_history_acked_changes_must_be_delivered():
    (v,) = checkers.check_watches([watcher(REF[:1])], None, None, [[7, "changed", "/l/k0"]])
    assert "never delivered" in v.message
    # after a resync the watcher is only accountable from the resync on
    assert checkers.check_watches([watcher(REF[3:], resyncs=[10])], REF, 0, []) == []
