"""A log that lost entries this server had fsync'd is never served silently.

Every test here damages a data directory the way an operator or a failing
disk does (a segment cut short, a segment deleted, the whole WAL deleted)
and checks that the server's storage refuses to open, names the file and the
index, and changes nothing; or, with the operator's explicit consent
(``allow_log_loss``), keeps the good prefix and marks the server durably as
``recovering`` so that the Raft core does not vote until it is repaired.
"""

import os

import pytest

from coord.raft.types import Entry, HardState
from coord.storage import DiskStorage, LogLossError
from coord.storage.errors import InconsistentStateError
from coord.storage.fileio import FileIO
from coord.storage.hardstate import HardStateFile
from coord.storage.records import encode_record, entry_payload
from coord.storage.wal import legacy_segment_name, segment_name


def ents(lo, hi, term=1):
    return [Entry(term=term, index=i, data=b"command-%04d" % i) for i in range(lo, hi + 1)]


def seg_dir(path):
    return path / "wal"


def segments(path):
    return sorted(n for n in os.listdir(seg_dir(path)) if n.startswith("wal-"))


def write_log(path, last=60, segment_bytes=512, commit=True):
    s = DiskStorage(path, fsync=False, segment_bytes=segment_bytes)
    s.open()
    s.save(HardState(1, 1, 0), ents(1, 10), None)
    for lo in range(11, last + 1, 10):
        s.save(HardState(1, 1, lo - 1 if commit else 0), ents(lo, min(lo + 9, last)), None)
    s.close()
    return segments(path)


def open_storage(path, **kw):
    s = DiskStorage(path, fsync=False, segment_bytes=512)
    try:
        return s.open(**kw)
    finally:
        s.close()


def snapshot_of_files(path):
    return {n: (seg_dir(path) / n).read_bytes() for n in segments(path)} | {
        "hardstate": (path / "hardstate").read_bytes()}


def test_a_cut_tail_segment_is_refused_naming_the_file_and_index(tmp_path):
    names = write_log(tmp_path)
    last = seg_dir(tmp_path) / names[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    before = snapshot_of_files(tmp_path)
    with pytest.raises(LogLossError) as ei:
        open_storage(tmp_path)
    msg = str(ei.value)
    assert names[-1] in msg and "was cut" in msg and "--recover-lost-log" in msg
    kept = int(msg.split("after index ")[1].split()[0])
    assert int(names[-1][4:24]) - 1 <= kept < 60
    assert snapshot_of_files(tmp_path) == before  # nothing was changed


def test_a_deleted_tail_segment_is_refused(tmp_path):
    names = write_log(tmp_path)
    assert len(names) >= 3
    os.unlink(seg_dir(tmp_path) / names[-1])
    with pytest.raises(LogLossError) as ei:
        open_storage(tmp_path)
    first = int(names[-1][4:24])
    assert names[-1] in str(ei.value) and f"from index {first}" in str(ei.value)


def test_a_deleted_wal_is_refused(tmp_path):
    write_log(tmp_path)
    for n in segments(tmp_path):
        os.unlink(seg_dir(tmp_path) / n)
    with pytest.raises(LogLossError, match="missing"):
        open_storage(tmp_path)


def test_a_cut_middle_segment_is_refused(tmp_path):
    names = write_log(tmp_path)
    mid = seg_dir(tmp_path) / names[1]
    mid.write_bytes(mid.read_bytes()[:100])
    with pytest.raises(LogLossError, match=names[1]):
        open_storage(tmp_path)


def test_recovery_keeps_the_good_prefix_and_stays_recovering_until_cleared(tmp_path):
    names = write_log(tmp_path)
    last = seg_dir(tmp_path) / names[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    r = open_storage(tmp_path, allow_log_loss=True)
    assert r.hard_state.recovering and r.lost and names[-1] in r.lost
    kept = r.entries[-1].index
    assert r.entries == ents(1, kept) and kept < 60
    assert r.hard_state.commit <= kept
    # The flag is durable and the repaired log opens without the operator's flag.
    r2 = open_storage(tmp_path)
    assert r2.hard_state.recovering and r2.lost is None and r2.entries == r.entries
    # The server catches up: appends continue where the good log ends, and
    # the core clears the flag once a leader has repaired it.
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=512)
    s.open()
    s.save(HardState(2, 0, kept, recovering=True), ents(kept + 1, 70, term=2), None)
    s.save(HardState(2, 0, 70, recovering=False), [], None)
    s.close()
    r3 = open_storage(tmp_path)
    assert not r3.hard_state.recovering and r3.entries == ents(1, kept) + ents(kept + 1, 70, term=2)


def test_recovery_from_a_deleted_tail_segment(tmp_path):
    names = write_log(tmp_path)
    os.unlink(seg_dir(tmp_path) / names[-1])
    r = open_storage(tmp_path, allow_log_loss=True)
    assert r.hard_state.recovering
    assert r.entries == ents(1, int(names[-1][4:24]) - 1)
    assert open_storage(tmp_path).entries == r.entries  # the new tail was recorded


def test_recovery_from_a_gap_drops_everything_after_it(tmp_path):
    names = write_log(tmp_path)
    os.unlink(seg_dir(tmp_path) / names[2])
    r = open_storage(tmp_path, allow_log_loss=True)
    assert r.entries == ents(1, int(names[2][4:24]) - 1)
    assert segments(tmp_path) == names[:2]


def test_a_leftover_of_an_interrupted_segment_creation_is_ignored(tmp_path):
    names = write_log(tmp_path)
    (seg_dir(tmp_path) / (segment_name(61) + ".tmp")).write_bytes(b"\0" * 100)
    assert open_storage(tmp_path).entries == ents(1, 60)
    assert segments(tmp_path) == names


def test_a_segment_created_just_before_a_crash_is_used(tmp_path):
    """The segment is durable before the hard state records it: a crash in
    between leaves a newer segment than the recorded tail, which is fine."""
    write_log(tmp_path)
    hs = HardStateFile(tmp_path / "hardstate", FileIO(fsync=False))
    saved = hs.load()
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=512)
    s.open()
    s.save(HardState(1, 1, 60), ents(61, 90), None)
    s.close()
    assert hs.load().wal_tail > saved.wal_tail
    hs.save(saved.hard_state, saved.wal_tail)  # as if the crash came before this write
    assert open_storage(tmp_path).entries == ents(1, 90)


def test_an_overwrite_that_deletes_the_tail_records_the_new_one(tmp_path):
    names = write_log(tmp_path, commit=False)
    first_of_third = int(names[2][4:24])
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=512)
    s.open()
    s.save(HardState(2, 2, 0), ents(first_of_third - 1, first_of_third - 1, term=2), None)
    s.close()
    r = open_storage(tmp_path)
    assert r.entries == ents(1, first_of_third - 2) + ents(first_of_third - 1, first_of_third - 1, term=2)


def test_a_data_directory_from_before_the_tail_record_opens(tmp_path):
    """Old format: a four-field hard state and append-only ``.log`` segments."""
    os.makedirs(seg_dir(tmp_path))
    (seg_dir(tmp_path) / legacy_segment_name(1)).write_bytes(
        b"".join(encode_record(entry_payload(e)) for e in ents(1, 5)))
    (tmp_path / "hardstate").write_bytes(encode_record(["h", 1, 1, 3]))
    r = open_storage(tmp_path)
    assert r.entries == ents(1, 5) and r.hard_state == HardState(1, 1, 3)
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=512)
    s.open()
    s.save(HardState(1, 1, 5), ents(6, 8), None)
    s.close()
    assert segments(tmp_path) == [legacy_segment_name(1), segment_name(6)]
    assert HardStateFile(tmp_path / "hardstate").load().wal_tail == 6
    os.unlink(seg_dir(tmp_path) / segment_name(6))  # now a deletion is noticed
    with pytest.raises(LogLossError, match=segment_name(6)):
        open_storage(tmp_path)


def test_a_deleted_hard_state_is_still_refused(tmp_path):
    write_log(tmp_path)
    s = DiskStorage(tmp_path, fsync=False, segment_bytes=512)
    s.open()
    s.save(HardState(3, 1, 60), ents(61, 61, term=3), None)
    s.close()
    os.unlink(tmp_path / "hardstate")
    with pytest.raises(InconsistentStateError):
        open_storage(tmp_path)
