"""DiskStorage: the facade the server uses, with real fsyncs where it matters."""

import os

import pytest

from coord.raft.types import Entry, HardState, Membership, Snapshot, SnapshotMeta
from coord.storage import (
    CorruptHardStateError,
    CorruptSnapshotError,
    DiskStorage,
    InconsistentStateError,
    StorageClosedError,
    StorageError,
    StorageLockedError,
)


def ents(lo, hi, term=1):
    return [Entry(term=term, index=i, data=b"cmd%d" % i) for i in range(lo, hi + 1)]


def snap(index, term, data=b"state", voters=(1, 2, 3)):
    m = Membership(voters=frozenset(voters), addrs={v: ["127.0.0.1", 7000 + v] for v in voters})
    return Snapshot(SnapshotMeta(index, term, m), data)


def reopen(path, **kw):
    s = DiskStorage(path, fsync=False, **kw)
    r = s.open()
    s.close()
    return r


def wal_segments(path):
    return sorted(os.listdir(path / "wal"))


def test_round_trip_with_fsync_and_group_commit(tmp_path):
    s = DiskStorage(tmp_path)
    assert s.open().entries == []
    s.save(HardState(term=1, vote=1, commit=0), ents(1, 3), None)
    n = s.fsync_count
    s.save(HardState(term=1, vote=1, commit=3), ents(4, 103), None)
    assert s.fsync_count == n + 1  # 100 entries and a commit record: one fsync
    s.save(HardState(term=1, vote=1, commit=50), [], None)  # commit only: WAL, not hardstate
    assert s.fsync_count == n + 2
    s.save(HardState(term=2, vote=3, commit=50), [], None)  # term change: hardstate file + dir
    assert s.fsync_count == n + 4
    s.save_snapshot(snap(40, 1))
    s.close()
    r = reopen(tmp_path)
    assert r.hard_state == HardState(term=2, vote=3, commit=50)
    assert r.snapshot == snap(40, 1)
    assert r.snapshot.meta.membership.addrs == {1: ["127.0.0.1", 7001], 2: ["127.0.0.1", 7002], 3: ["127.0.0.1", 7003]}
    assert r.entries == ents(41, 103)


def test_layout(tmp_path):
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=64)
    s.open()
    s.save(HardState(1, 1, 0), ents(1, 6), None)
    s.save_snapshot(snap(3, 1))
    s.close()
    assert sorted(os.listdir(tmp_path)) == ["LOCK", "hardstate", "snap", "wal"]
    assert os.listdir(tmp_path / "snap") == ["snap-%020d-%020d.snap" % (3, 1)]
    assert wal_segments(tmp_path)[0] == "wal-%020d.seg" % 1 and len(wal_segments(tmp_path)) > 1


def test_overwrite_then_reload(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(1, 1, 2), ents(1, 6), None)
    s.save(HardState(2, 0, 3), ents(4, 5, term=2), None)
    with pytest.raises(StorageError, match="committed"):
        s.save(None, ents(3, 3, term=3), None)
    s.close()
    r = reopen(tmp_path)
    assert r.entries == ents(1, 3) + ents(4, 5, term=2)
    assert r.hard_state == HardState(2, 0, 3)


def test_commit_is_capped_at_the_log_and_floored_at_the_snapshot(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(1, 1, 9), ents(1, 5), None)  # commit beyond the log is not trusted
    s.close()
    assert reopen(tmp_path).hard_state.commit == 5
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(None, [], snap(20, 1))
    s.close()
    r = reopen(tmp_path)
    assert (r.hard_state.commit, r.entries) == (20, [])


def test_installed_snapshot_replaces_a_log_that_does_not_continue(tmp_path):
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=80)
    s.open()
    s.save(HardState(1, 1, 2), ents(1, 10), None)
    s.save(HardState(3, 0, 2), [], snap(20, 3))
    assert wal_segments(tmp_path) == []
    s.save(HardState(3, 0, 21), ents(21, 22, term=3), None)
    s.close()
    r = reopen(tmp_path)
    assert (r.snapshot.meta.index, r.entries, r.hard_state.commit) == (20, ents(21, 22, term=3), 21)


def test_installed_snapshot_keeps_a_log_that_continues(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(1, 1, 2), ents(1, 10), None)
    s.save(HardState(1, 1, 6), [], snap(6, 1))
    s.close()
    assert reopen(tmp_path).entries == ents(7, 10)


def test_snapshot_then_compact(tmp_path):
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=64)
    s.open()
    s.save(HardState(1, 1, 30), ents(1, 30), None)
    before = wal_segments(tmp_path)
    with pytest.raises(StorageError, match="snapshot"):
        s.compact(20)  # nothing covers it yet
    s.save_snapshot(snap(20, 1))
    s.compact(20)
    after = wal_segments(tmp_path)
    assert len(after) < len(before) and int(after[0][4:24]) <= 21
    s.save(HardState(1, 1, 31), ents(31, 32), None)
    s.close()
    r = reopen(tmp_path, segment_bytes=64)
    assert (r.snapshot.meta.index, r.entries, r.hard_state.commit) == (20, ents(21, 32), 31)


def test_keeps_two_snapshots_and_never_falls_back(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(1, 1, 9), ents(1, 9), None)
    for i in (3, 6, 9):
        s.save_snapshot(snap(i, 1, data=b"s%d" % i))
    s.close()
    names = sorted(os.listdir(tmp_path / "snap"))
    assert names == ["snap-%020d-%020d.snap" % (i, 1) for i in (6, 9)]
    newest = tmp_path / "snap" / names[-1]
    data = bytearray(newest.read_bytes())
    data[-1] ^= 1
    newest.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match="snap-0+9-"):
        reopen(tmp_path)


def test_a_snapshot_file_written_apart_then_adopted(tmp_path):
    """What a forked child does (write_snapshot_file: the file only, under a
    temp name of its own), then the parent (adopt_snapshot: only then may
    the log be compacted); data comes back mapped, not copied, and stays
    readable after its pages are released."""
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=64)
    s.open()
    s.save(HardState(1, 1, 30), ents(1, 30), None)
    for i in (5, 10):
        s.save_snapshot(snap(i, 1))
    big = snap(20, 1, data=bytes(range(256)) * 1000)
    s.write_snapshot_file(big)
    with pytest.raises(StorageError, match="snapshot"):
        s.compact(20)  # written, not adopted: the log stays
    data = s.snapshot_data(big.meta)
    assert isinstance(data, memoryview) and data == big.data
    s.adopt_snapshot(big.meta)
    s.compact(20)
    assert sorted(os.listdir(tmp_path / "snap")) == ["snap-%020d-%020d.snap" % (i, 1) for i in (10, 20)]
    s.discard_snapshot_file(big.meta, 12345)  # nothing left behind: no error
    s.close()
    r = reopen(tmp_path, segment_bytes=64)
    assert isinstance(r.snapshot.data, memoryview) and r.snapshot == big and r.entries == ents(21, 30)
    DiskStorage(tmp_path, fsync=False).release_snapshot_data(r.snapshot.data)
    assert r.snapshot.data == big.data


def test_a_child_s_leftover_temp_file_is_removed_at_open(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.close()
    (tmp_path / "snap" / ("snap-%020d-%020d.snap.4242.tmp" % (7, 1))).write_bytes(b"half a snapshot")
    assert reopen(tmp_path).snapshot is None
    assert os.listdir(tmp_path / "snap") == []


def test_corrupt_hard_state(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(4, 2, 0), [], None)
    s.close()
    p = tmp_path / "hardstate"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(CorruptHardStateError, match="hardstate"):
        reopen(tmp_path)


def test_lost_hard_state_is_detected(tmp_path):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(4, 2, 0), ents(1, 2, term=4), None)
    s.close()
    os.unlink(tmp_path / "hardstate")
    with pytest.raises(InconsistentStateError, match="term"):
        reopen(tmp_path)


def test_torn_tail_is_recovered_through_open(tmp_path, caplog):
    s = DiskStorage(tmp_path, fsync=False)
    s.open()
    s.save(HardState(1, 1, 0), ents(1, 5), None)
    s.close()
    seg = tmp_path / "wal" / wal_segments(tmp_path)[0]
    data = seg.read_bytes()
    end = len(data.rstrip(b"\0"))
    seg.write_bytes(data[:end - 2] + bytes(len(data) - end + 2))  # the last 2 bytes never reached the disk
    assert reopen(tmp_path).entries == ents(1, 4)
    assert "torn" in caplog.text


def test_lock_prevents_double_open(tmp_path):
    a = DiskStorage(tmp_path, fsync=False)
    a.open()
    b = DiskStorage(tmp_path, fsync=False)
    with pytest.raises(StorageLockedError, match="LOCK"):
        b.open()
    with pytest.raises(StorageClosedError):
        b.save(None, ents(1, 1), None)
    a.close()
    b.open()
    b.close()
