"""WAL layout, overwrite, rotation, compaction and crash recovery."""

import logging
import os

import pytest

from coord.raft.types import Entry
from coord.storage.errors import CorruptLogError, CorruptRecordError, LogGapError, StorageError
from coord.storage.fileio import FileIO
from coord.storage.records import encode_record, entry_payload, segment_header_payload
from coord.storage.wal import WAL, legacy_segment_name, segment_name


def ents(lo, hi, term=1, size=10):
    return [Entry(term=term, index=i, data=bytes([i % 256]) * size) for i in range(lo, hi + 1)]


def new_wal(path, segment_bytes=1 << 20, snapshot_index=0, snapshot_term=0):
    w = WAL(path, segment_bytes, FileIO(fsync=False))
    w.load(snapshot_index, snapshot_term)
    return w


def reload(path, snapshot_index=0, snapshot_term=0):
    w = WAL(path, 1 << 20, FileIO(fsync=False))
    try:
        return w.load(snapshot_index, snapshot_term)
    finally:
        w.close()


def segments(path):
    return sorted(n for n in os.listdir(path) if n.startswith("wal-"))


def test_round_trip_with_commit_records(tmp_path):
    w = new_wal(tmp_path)
    w.append(ents(1, 5))
    w.append_commit(3)
    w.append(ents(6, 7))
    w.append_commit(6)
    w.sync()
    w.close()
    assert reload(tmp_path) == (ents(1, 7), 6)
    assert segments(tmp_path) == [segment_name(1)]


def test_overwrite_erases_the_old_suffix(tmp_path):
    w = new_wal(tmp_path)
    w.append(ents(1, 10))
    w.append_commit(4)
    w.append(ents(6, 8, term=2))  # conflicting suffix from a new leader
    w.sync()
    assert w.last_index == 8
    w.close()
    assert reload(tmp_path) == (ents(1, 5) + ents(6, 8, term=2), 4)
    # Nothing of the old suffix is left on disk: only zeros after the records.
    data = (tmp_path / segment_name(1)).read_bytes()
    used = len(encode_record(segment_header_payload(1, len(data))))
    used += sum(len(encode_record(entry_payload(e))) for e in ents(1, 5) + ents(6, 8, term=2))
    used += len(encode_record(["c", 4])) * 2  # before the cut, and again after it
    assert data[used:].count(0) == len(data) - used
    assert len(data) == 1 << 20  # the segment keeps its allocated size
    w = new_wal(tmp_path)
    w.append(ents(9, 9, term=2))
    w.sync()
    w.close()
    assert reload(tmp_path)[0] == ents(1, 5) + ents(6, 9, term=2)


def test_rotation_and_overwrite_across_segments(tmp_path):
    w = new_wal(tmp_path, segment_bytes=100)
    for lo in range(1, 60, 7):
        w.append(ents(lo, lo + 6))
    w.sync()
    names = segments(tmp_path)
    assert len(names) > 5
    firsts = [int(n[4:24]) for n in names]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    w.close()
    entries, _ = reload(tmp_path)
    assert entries == ents(1, 63)
    # Reopen, overwrite from the middle of an early segment: later segments go.
    w = new_wal(tmp_path, segment_bytes=100)
    cut = firsts[2] + 1
    w.append(ents(cut, cut + 2, term=5))
    w.sync()
    w.close()
    after = [int(n[4:24]) for n in segments(tmp_path)]
    assert after[:3] == firsts[:3] and all(f > cut for f in after[3:])  # later segments were rewritten
    assert reload(tmp_path)[0] == ents(1, cut - 1) + ents(cut, cut + 2, term=5)
    # Overwrite from exactly a segment's first entry: that segment is replaced.
    w = new_wal(tmp_path, segment_bytes=100)
    w.append(ents(firsts[1], firsts[1], term=6))
    w.sync()
    w.close()
    assert reload(tmp_path)[0] == ents(1, firsts[1] - 1) + ents(firsts[1], firsts[1], term=6)


def test_append_errors(tmp_path):
    w = new_wal(tmp_path)
    w.append(ents(1, 3))
    w.append_commit(2)
    with pytest.raises(StorageError, match="committed"):
        w.append(ents(2, 2, term=2))
    with pytest.raises(LogGapError):
        w.append(ents(5, 6))
    with pytest.raises(LogGapError):
        w.append([Entry(1, 4), Entry(1, 6)])
    w.close()


def test_compaction_and_reload(tmp_path):
    w = new_wal(tmp_path, segment_bytes=100)
    w.append(ents(1, 40))
    w.sync()
    firsts = [int(n[4:24]) for n in segments(tmp_path)]
    upto = firsts[3]  # segments 0..2 hold only entries < firsts[3]
    w.compact(upto)
    assert [int(n[4:24]) for n in segments(tmp_path)] == firsts[3:]
    assert w.first_index == firsts[3]
    with pytest.raises(LogGapError):  # cannot overwrite what is compacted
        w.append(ents(firsts[3] - 1, firsts[3] - 1, term=2))
    assert reload(tmp_path, snapshot_index=upto, snapshot_term=1)[0] == ents(upto + 1, 40)
    with pytest.raises(LogGapError):  # the snapshot must cover what was compacted
        reload(tmp_path, snapshot_index=upto - 2, snapshot_term=1)
    w.compact(10**9)  # never deletes the active segment
    assert segments(tmp_path) == [segment_name(firsts[-1])]
    w.append(ents(41, 42))
    w.sync()
    w.close()
    assert reload(tmp_path, snapshot_index=40, snapshot_term=1)[0] == ents(41, 42)


def crash_at(path, data, cut):
    """What a crash leaves in a preallocated segment: the bytes that reached
    the disk, and the zeros it was allocated with after them."""
    path.write_bytes(data[:cut] + bytes(len(data) - cut))


def test_crash_inside_the_last_record_at_every_offset(tmp_path, caplog):
    src = tmp_path / "src"
    w = new_wal(src, segment_bytes=4096)
    w.append(ents(1, 4))
    w.append(ents(5, 5, size=30))
    w.sync()
    w.close()
    data = (src / segment_name(1)).read_bytes()
    end = len(data.rstrip(b"\0"))
    start = end - len(encode_record(entry_payload(ents(5, 5, size=30)[0])))
    for cut in range(start, end):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        crash_at(d / segment_name(1), data, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="coord.storage"):
            assert reload(d) == (ents(1, 4), 0)
        if data[start:cut].count(0) == cut - start:
            assert not caplog.records  # only zeros reached the disk: nothing to erase
        else:
            (rec,) = caplog.records
            msg = rec.getMessage()
            assert segment_name(1) in msg and f"offset {start}" in msg and "torn" in msg
        after = (d / segment_name(1)).read_bytes()
        assert len(after) == len(data) and after[start:].count(0) == len(data) - start
    # After the erase, the log is clean and appendable.
    w = new_wal(d, segment_bytes=4096)
    w.append(ents(5, 6, term=2))
    w.sync()
    w.close()
    assert reload(d)[0] == ents(1, 4) + ents(5, 6, term=2)


def test_zero_fill_after_the_records_is_the_end_not_damage(tmp_path, caplog):
    w = new_wal(tmp_path)
    w.append(ents(1, 3))
    w.sync()
    w.close()
    with caplog.at_level(logging.WARNING, logger="coord.storage"):
        assert reload(tmp_path)[0] == ents(1, 3)
    assert not caplog.records


def test_older_append_only_segments_are_read_and_never_appended_to(tmp_path, caplog):
    """A data directory from before preallocation: ``.log`` segments without a
    header.  They load as before (a torn tail is cut off), and the next append
    starts a preallocated segment."""
    old = b"".join(encode_record(entry_payload(e)) for e in ents(1, 4))
    (tmp_path / legacy_segment_name(1)).write_bytes(old + encode_record(["c", 2]) + b"\x01\x02")
    with caplog.at_level(logging.WARNING, logger="coord.storage"):
        assert reload(tmp_path) == (ents(1, 4), 2)
    assert "torn" in caplog.text
    w = new_wal(tmp_path)
    assert w.tail == 0
    w.append(ents(5, 6))
    w.sync()
    w.close()
    assert segments(tmp_path) == [legacy_segment_name(1), segment_name(5)]
    assert (tmp_path / legacy_segment_name(1)).read_bytes() == old + encode_record(["c", 2])
    assert reload(tmp_path)[0] == ents(1, 6)
    w = new_wal(tmp_path)  # an overwrite reaching into the old segment cuts it
    w.append(ents(3, 3, term=2))
    w.sync()
    w.close()
    assert segments(tmp_path) == [legacy_segment_name(1), segment_name(3)]
    assert reload(tmp_path)[0] == ents(1, 2) + ents(3, 3, term=2)


def test_flipped_byte_in_an_old_record_is_corruption(tmp_path):
    w = new_wal(tmp_path)
    w.append(ents(1, 5))
    w.sync()
    w.close()
    path = tmp_path / segment_name(1)
    data = bytearray(path.read_bytes())
    data[len(encode_record(entry_payload(ents(1, 1)[0]))) + 12] ^= 0x40  # inside entry 2
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match=segment_name(1)):
        reload(tmp_path)
    assert path.read_bytes() == bytes(data)  # nothing was cut away


def _three_segments(path):
    w = new_wal(path, segment_bytes=60)
    w.append(ents(1, 9))
    w.sync()
    w.close()
    names = segments(path)
    assert len(names) >= 3
    return names


def test_torn_record_in_a_non_last_segment_is_corruption(tmp_path):
    names = _three_segments(tmp_path)
    p = tmp_path / names[0]
    data = bytearray(p.read_bytes())
    end = len(bytes(data).rstrip(b"\0"))
    data[end - 3:end] = b"\0\0\0"  # damage the last record, keep the size
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match="not the last"):
        reload(tmp_path)


def test_missing_middle_segment(tmp_path):
    names = _three_segments(tmp_path)
    os.unlink(tmp_path / names[1])
    with pytest.raises(LogGapError, match="missing"):
        reload(tmp_path)


def test_missing_first_segment_without_snapshot(tmp_path):
    names = _three_segments(tmp_path)
    os.unlink(tmp_path / names[0])
    with pytest.raises(LogGapError):
        reload(tmp_path)


def test_log_must_continue_from_the_snapshot(tmp_path):
    names = _three_segments(tmp_path)
    second = int(names[1][4:24])
    os.unlink(tmp_path / names[0])
    assert reload(tmp_path, snapshot_index=second - 1, snapshot_term=1)[0] == ents(second, 9)
    with pytest.raises(LogGapError, match="snapshot"):
        reload(tmp_path, snapshot_index=second - 2, snapshot_term=1)


def test_stale_or_conflicting_log_is_dropped_for_a_snapshot(tmp_path, caplog):
    # A crash after an installed snapshot was saved but before the log was reset.
    w = new_wal(tmp_path)
    w.append(ents(1, 5))
    w.sync()
    w.close()
    with caplog.at_level(logging.WARNING, logger="coord.storage"):
        assert reload(tmp_path, snapshot_index=4, snapshot_term=1)[0] == ents(5, 5)  # matches: kept
        assert not caplog.records
        assert reload(tmp_path, snapshot_index=4, snapshot_term=2) == ([], 0)  # conflicts
    assert "dropping log entries 1..5" in caplog.text
    assert segments(tmp_path) == []
    w = new_wal(tmp_path, snapshot_index=4, snapshot_term=2)
    assert w.last_index == 4
    w.append(ents(5, 6, term=2))
    w.sync()
    w.close()
    assert reload(tmp_path, snapshot_index=9, snapshot_term=3) == ([], 0)  # behind the snapshot


def test_install_snapshot_keeps_a_matching_log(tmp_path):
    w = new_wal(tmp_path)
    w.append(ents(1, 10, term=2))
    assert w.install_snapshot(6, 2) is False
    assert w.last_index == 10
    assert w.install_snapshot(8, 3) is True
    assert (w.first_index, w.last_index, segments(tmp_path)) == (9, 8, [])
    with pytest.raises(LogGapError):
        w.append(ents(5, 5))
    w.append(ents(9, 9, term=3))
    w.sync()
    w.close()
    assert reload(tmp_path, 8, 3)[0] == ents(9, 9, term=3)


def test_failed_fsync_poisons_the_wal(tmp_path, monkeypatch):
    w = WAL(tmp_path, io=FileIO(fsync=True))
    w.load()
    w.append(ents(1, 1))

    def boom(fd):
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StorageError, match="EIO"):
        w.sync()
    monkeypatch.undo()
    with pytest.raises(StorageError, match="earlier I/O failure"):
        w.append(ents(2, 2))
    w.close()
