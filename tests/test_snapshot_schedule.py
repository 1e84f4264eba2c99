"""When snapshots are due and how much log is kept (coord/server/snapshotschedule.py)."""

from __future__ import annotations

from coord.raft.types import Entry
from coord.server.snapshotschedule import SnapshotSchedule


def schedule(seed: int, **kw) -> SnapshotSchedule:
    args = dict(entries=10_000, jitter=0.25, log_bytes=64 << 20, retain=1_000, retain_bytes=4 << 20,
                last_index=0, seed=seed)
    args.update(kw)
    return SnapshotSchedule(**args)


def test_servers_spread_their_snapshots():
    """Three servers applying the same entries do not all snapshot at the same index."""
    dues = [schedule(seed).due_index for seed in (1, 2, 3)]
    assert all(10_000 <= d <= 12_500 for d in dues) and len(set(dues)) == 3
    s = schedule(1, jitter=0)
    assert s.due_index == 10_000 and not s.is_due(9_999) and s.is_due(10_000)
    s.taken(10_000)
    assert s.due_index == 20_000


def test_due_by_bytes_and_retried_after_a_failure():
    s = schedule(1, log_bytes=1_000)
    s.applied(999)
    assert not s.is_due(5)
    s.applied(1)
    assert s.is_due(5)
    s.started()
    assert not s.is_due(5)
    s.failed(5)
    assert s.due_index == 5 + 2_500 and s.is_due(2_505)


def test_entries_kept_are_bounded_in_count_and_bytes():
    log = {i: Entry(1, i, data=bytes(100)) for i in range(1, 2_001)}

    def entries(lo, hi):
        return [log[i] for i in range(lo, hi)]

    assert schedule(1).to_keep(2_000, 1, entries) == 1_000
    assert schedule(1, retain_bytes=1_240).to_keep(2_000, 1, entries) == 10
    assert schedule(1).to_keep(2_000, 1_995, entries) == 6  # only what the log still has
    assert schedule(1, retain=0).to_keep(2_000, 1, entries) == 0
