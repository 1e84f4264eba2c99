"""The simulator's checkers catch planted violations.

A checker that never fires proves nothing, so each invariant is fed a short
hand-written history that breaks it (and a near miss that must not).  None
of this needs the Raft core: only ``coord.raft.types``.
"""

import pytest

from coord.raft.types import Entry, EntryKind, HardState, Membership, Message, MsgType, Ready, Snapshot, SnapshotMeta
from tests.sim.checkers import GENESIS, InvariantViolation, LogView, SafetyChecker, chain_hash
from tests.sim.network import Network, copy_message
from tests.sim.statemachine import FakeDisk, HashChainSM, decode_snapshot, encode_snapshot, ready_ops


def E(index, term, data=b"", kind=EntryKind.NORMAL):
    return Entry(term, index, kind, data)


def log_of(terms, base_index=0, base_term=0):
    """A LogView with entries of the given terms after the snapshot position."""
    return LogView(base_index, base_term, [E(base_index + 1 + k, t, b"%d" % (base_index + 1 + k)) for k, t in enumerate(terms)])


def raises(invariant):
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(InvariantViolation)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *exc):
            r = self.cm.__exit__(*exc)
            assert self.info.value.invariant == invariant, str(self.info.value)
            return r

    return _Ctx()


# ----------------------------------------------------------------------
# election safety
# ----------------------------------------------------------------------
def test_two_leaders_in_one_term():
    c = SafetyChecker()
    c.on_leader(1, 5, log_of([1, 5]))
    c.on_leader(1, 5, log_of([1, 5]))  # the same leader observed again is fine
    c.on_leader(2, 6, log_of([1, 5, 6]))
    with raises("election-safety") as info:
        c.on_leader(3, 5, log_of([1, 5]))
    assert "term 5" in str(info.value)


def test_same_leader_of_one_term_in_two_lives():
    c = SafetyChecker()
    c.on_leader(1, 5, log_of([1, 5]), life=1)
    c.on_leader(1, 5, log_of([1, 5, 5]), life=1)
    with raises("election-safety") as info:
        c.on_leader(1, 5, log_of([1, 5]), life=2)
    assert "twice" in str(info.value)


# ----------------------------------------------------------------------
# log matching
# ----------------------------------------------------------------------
def test_divergent_entries_at_same_index_and_term():
    c = SafetyChecker()
    c.on_entries(1, [E(1, 1, b"a"), E(2, 1, b"b")], 0)
    c.on_entries(2, [E(1, 1, b"a"), E(2, 1, b"b")], 0)  # identical copies are fine
    with raises("log-matching"):
        c.on_entries(3, [E(2, 1, b"X")], 1)


def test_divergent_kind_at_same_index_and_term():
    c = SafetyChecker()
    c.on_entries(1, [E(1, 2, b"", EntryKind.NOOP)], 0)
    with raises("log-matching"):
        c.on_entries(2, [E(1, 2, b"", EntryKind.NORMAL)], 0)


def test_same_entry_after_different_predecessor():
    c = SafetyChecker()
    c.on_entries(1, [E(3, 4, b"x")], 2)
    c.on_entries(2, [E(3, 4, b"x")], None)  # predecessor unknown (compacted): no claim
    with raises("log-matching"):
        c.on_entries(3, [E(3, 4, b"x")], 3)


def test_log_terms_must_not_decrease_and_indexes_must_be_contiguous():
    c = SafetyChecker()
    with raises("log-matching"):
        c.on_entries(1, [E(1, 3), E(2, 2)], 0)
    with raises("log-matching"):
        c.on_entries(1, [E(1, 1), E(3, 1)], 0)


# ----------------------------------------------------------------------
# leader completeness / lost committed entries
# ----------------------------------------------------------------------
def test_new_leader_missing_a_committed_entry():
    c = SafetyChecker()
    c.on_commit(1, 1, 1, observer_term=1)
    c.on_commit(1, 2, 2, observer_term=2)
    with raises("leader-completeness") as info:
        c.on_leader(2, 3, log_of([1]))  # lost index 2
    assert "index 2" in str(info.value)


def test_new_leader_with_other_term_at_committed_index():
    c = SafetyChecker()
    c.on_commit(1, 1, 1, observer_term=2)
    c.on_commit(1, 2, 2, observer_term=2)
    with raises("leader-completeness"):
        c.on_leader(3, 4, log_of([1, 3, 4]))


def test_leader_completeness_covers_snapshot_and_accepts_complete_log():
    c = SafetyChecker()
    for i, t in enumerate([1, 1, 2, 2], start=1):
        c.on_commit(1, i, t, observer_term=2)
    c.on_leader(2, 3, log_of([2, 3], base_index=3, base_term=2))  # 1..3 in its snapshot
    c2 = SafetyChecker()
    c2.on_commit(1, 3, 2, observer_term=2)
    with raises("leader-completeness"):
        c2.on_leader(2, 3, log_of([3], base_index=3, base_term=1))  # snapshot disagrees


def test_commit_learnt_later_checks_leaders_already_elected():
    c = SafetyChecker()
    c.on_leader(2, 4, log_of([1, 3, 4]))
    with raises("leader-completeness"):
        c.on_commit(1, 2, 2, observer_term=2)  # committed by term 2, yet leader 4 lacked it


def test_stale_commit_observation_does_not_condemn_earlier_leader():
    """An entry first seen committed at term 6 may legitimately be missing from
    a (stale) leader of term 5: only terms above the commit bound are checked."""
    c = SafetyChecker()
    c.on_commit(1, 2, 2, observer_term=6)
    c.on_leader(5, 5, log_of([1, 4]))
    c.on_leader(6, 7, log_of([1, 2, 7]))


def test_commit_of_two_terms_at_one_index():
    c = SafetyChecker()
    c.on_commit(1, 3, 1, observer_term=1)
    with raises("state-machine-safety"):
        c.on_commit(2, 3, 2, observer_term=2)


# ----------------------------------------------------------------------
# state machine safety
# ----------------------------------------------------------------------
def test_divergent_applies():
    c = SafetyChecker()
    c.on_apply(1, E(1, 1, b"a"))
    c.on_apply(2, E(1, 1, b"a"))
    with raises("state-machine-safety"):
        c.on_apply(3, E(1, 1, b"b"))


def test_apply_must_be_in_order():
    c = SafetyChecker()
    c.on_apply(1, E(1, 1, b"a"))
    with raises("state-machine-safety"):
        c.on_apply(1, E(3, 1, b"c"))


def test_apply_conflicting_with_commit():
    c = SafetyChecker()
    c.on_commit(1, 1, 2, observer_term=2)
    with raises("state-machine-safety"):
        c.on_apply(2, E(1, 1, b"a"))


def test_snapshot_restore_must_match_the_committed_prefix():
    c = SafetyChecker()
    c.on_apply(1, E(1, 1, b"a"))
    c.on_apply(1, E(2, 1, b"b"))
    h = chain_hash(chain_hash(GENESIS, 1, 1, EntryKind.NORMAL, b"a"), 2, 1, EntryKind.NORMAL, b"b")
    c.on_restore(2, 2, h)
    c.on_apply(2, E(3, 1, b"c"))  # continues after the snapshot
    with raises("state-machine-safety"):
        c.on_restore(3, 2, b"\x01" * 16)
    with raises("state-machine-safety"):
        c.on_restore(3, 9, h)  # beyond anything applied anywhere


def test_command_committed_twice():
    c = SafetyChecker(unique_data=True)
    c.on_apply(1, E(1, 1, b"cmd"))
    with raises("state-machine-safety"):
        c.on_apply(1, E(2, 1, b"cmd"))


# ----------------------------------------------------------------------
# durability across restarts
# ----------------------------------------------------------------------
def test_restart_with_commit_beyond_durable_log():
    c = SafetyChecker()
    with raises("durability"):
        c.on_restart(1, HardState(2, 1, 5), 0, 0, [E(1, 1), E(2, 2)])


def test_restart_with_committed_entry_changed():
    c = SafetyChecker()
    c.on_commit(2, 1, 1, observer_term=1)
    c.on_commit(2, 2, 1, observer_term=1)
    with raises("durability"):
        c.on_restart(1, HardState(2, 1, 2), 0, 0, [E(1, 1), E(2, 2)])
    c.on_restart(3, HardState(2, 1, 1), 0, 0, [E(1, 1), E(2, 2)])  # entry 2 above its commit: fine


def test_restart_with_snapshot_of_other_term():
    c = SafetyChecker()
    c.on_commit(2, 4, 3, observer_term=3)
    with raises("durability"):
        c.on_restart(1, HardState(3, 0, 4), 4, 2, [])


# ----------------------------------------------------------------------
# linearizable reads
# ----------------------------------------------------------------------
def test_stale_read_index():
    c = SafetyChecker()
    for i in range(1, 11):
        c.on_commit(1, i, 1, observer_term=1)
    c.on_read_start(2, b"r1")
    c.on_read_start(2, b"r2")
    c.on_read_state(2, b"r1", 10)  # fine
    with raises("linearizable-read") as info:
        c.on_read_state(2, b"r2", 8)
    assert "10" in str(info.value)


def test_read_from_before_a_crash_is_forgotten():
    c = SafetyChecker()
    c.on_commit(1, 1, 1, observer_term=1)
    c.on_read_start(2, b"r1")
    c.on_crash(2)
    c.on_read_state(2, b"r1", 0)  # unknown to this incarnation: not judged


# ----------------------------------------------------------------------
# the simulator's building blocks
# ----------------------------------------------------------------------
def test_logview_truncates_installs_and_compacts():
    v = log_of([1, 1, 2, 2])
    v.append([E(3, 3), E(4, 3), E(5, 3)])
    assert [v.term_at(i) for i in range(0, 7)] == [0, 1, 1, 3, 3, 3, None]
    with pytest.raises(ValueError):
        v.append([E(9, 3)])
    v.install_snapshot(4, 3)  # matches: the suffix is kept
    assert (v.base_index, v.last_index) == (4, 5)
    v.install_snapshot(7, 5)  # does not match: the log is replaced
    assert (v.base_index, v.last_index, v.term_at(7), v.term_at(5)) == (7, 7, 5, None)
    v.append([E(8, 5), E(9, 5), E(10, 6)])
    v.compact(9, 5)
    assert v.term_at(8) is None and v.term_at(9) == 5 and v.term_at(10) == 6
    v.append([E(9, 5), E(10, 7)])  # entries covered by the snapshot are skipped
    assert v.term_at(10) == 7 and v.last_index == 10
    assert v.runs() == ([10], [7])


def test_hash_chain_state_machine_and_snapshot_payload():
    sm = HashChainSM()
    c = SafetyChecker()
    for e in [E(1, 1, b"a"), E(2, 1, b"b", EntryKind.NOOP)]:
        sm.apply(e)
        c.on_apply(1, e)
    assert sm.hash == c.applied_hash(2)
    data = sm.snapshot_data(bytes(range(100)))
    assert decode_snapshot(data) == (2, sm.hash) and len(data) > 100
    other_bytes = sm.snapshot_data(bytes(100))
    with pytest.raises(ValueError):  # stitched from two transfers of the same state
        decode_snapshot(data[:64] + other_bytes[64:])
    with pytest.raises(ValueError):
        decode_snapshot(data + b"x")
    other = HashChainSM()
    other.restore(Snapshot(SnapshotMeta(2, 1, Membership(frozenset({1}))), data))
    assert (other.applied, other.hash) == (2, sm.hash)
    with pytest.raises(ValueError):
        other.restore(Snapshot(SnapshotMeta(3, 1), data))
    with pytest.raises(ValueError):
        decode_snapshot(b"junk")
    assert encode_snapshot(5, bytes(16))[:4] == b"SIMS"


def test_fake_disk_applies_ready_in_order_and_torn_prefixes():
    d = FakeDisk()
    d.write(Ready(hard_state=HardState(1, 1, 0), entries=[E(1, 1), E(2, 1)]))
    rd = Ready(hard_state=HardState(2, 0, 2), entries=[E(2, 2), E(3, 2)])
    ops = ready_ops(rd)
    # the term is on disk before its entries, the commit index after them
    assert [k for k, _ in ops] == ["tv", "ent", "ent", "commit"]
    d.apply_op(ops[0])  # crash after the first write reached the disk: the new term, no entries yet
    assert d.hard_state.term == 2 and d.hard_state.commit == 0 and d.log.term_at(2) == 1
    d.apply_op(ops[1])  # ... and then the first entry, which overwrites index 2
    assert d.log.term_at(2) == 2 and d.log.last_index == 2
    snap = Snapshot(SnapshotMeta(5, 3), encode_snapshot(5, bytes(16)))
    d.write(Ready(snapshot=snap, entries=[E(6, 3)]))
    hs, meta, ents = d.recovery_state()
    assert meta.index == 5 and [e.index for e in ents] == [6]


def test_network_copies_and_partitions():
    import random

    net = Network(random.Random(1), delay_us=(1, 2), long_delay_prob=0.0, long_delay_us=10,
                  drop_prob=0.0, dup_prob=0.0)
    m = Message(MsgType.APPEND, 1, 2, 3, entries=[E(1, 1)])
    c = copy_message(m)
    c.entries.append(E(2, 1))
    c.term = 9
    assert len(m.entries) == 1 and m.term == 3
    assert len(net.plan(m)) == 1
    net.block([(1, 2)])
    net.block([(1, 2)])
    net.unblock([(1, 2)])
    assert net.blocked(1, 2) and not net.blocked(2, 1) and net.plan(m) == []
    net.unblock([(1, 2)])
    assert not net.blocked(1, 2)
