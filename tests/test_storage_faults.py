"""The storage layer under a full disk (ENOSPC) and failing fsyncs (EIO).

Failures are injected into the file-I/O layer (``FaultyIO`` overrides
``FileIO``'s system calls).  A full disk raises ``NoSpaceError``, poisons
nothing and rolls back: a restart right then finds a consistent log (what
was durable before, plus at most a prefix of the failed write), and the
same save made again finishes the job with nothing lost or doubled.  Any
other failure raises ``DiskIOError`` naming the file and poisons the
storage.  Every write and fsync of a save is tried as the failing one.
"""

from __future__ import annotations

import errno
import os

import pytest

from coord.raft.types import Entry, HardState, Membership, Snapshot, SnapshotMeta
from coord.storage import DiskIOError, DiskStorage, NoSpaceError
from coord.storage.fileio import FileIO

PAGE = 4096


class FaultyIO(FileIO):
    """FileIO whose system calls fail on demand.  Calls are numbered from
    1; with ``fail_from(n, err)`` call n and every later one fails with
    ``err`` until ``heal()`` (a full disk stays full).  A failing write has
    first written the whole pages before the middle of its data, as the
    kernel does when it runs out of space part-way."""

    def __init__(self) -> None:
        super().__init__(fsync=True)
        self.calls = 0
        self._from: int | None = None
        self._errno = errno.ENOSPC
        self._times: int | None = None
        self.only: set[str] | None = None  # fail only these operations (None: all)

    def fail_from(self, n: int, err: int = errno.ENOSPC, only: set[str] | None = None,
                  times: int | None = None) -> None:
        """Fail call ``n`` and later ones (of the kinds in ``only``), ``times`` of them (None: all)."""
        self._from, self._errno, self.only, self._times = n, err, only, times

    def heal(self) -> None:
        self._from = None

    def _check_fault(self, op: str) -> bool:
        self.calls += 1
        if self._from is None or self.calls < self._from or (self.only is not None and op not in self.only):
            return False
        if self._times is not None:
            self._times -= 1
            if self._times < 0:
                return False
        return True

    def _raise(self) -> None:
        raise OSError(self._errno, os.strerror(self._errno))

    def _partial(self, fd: int, data: memoryview, offset: int | None) -> None:
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        cut = (offset + len(data) // 2) // PAGE * PAGE - offset
        if cut > 0:
            os.pwrite(fd, data[:cut], offset)

    def _sys_write(self, fd, data):
        if self._check_fault("write"):
            self._partial(fd, data, None)
            self._raise()
        return super()._sys_write(fd, data)

    def _sys_pwrite(self, fd, data, offset):
        if self._check_fault("pwrite"):
            self._partial(fd, data, offset)
            self._raise()
        return super()._sys_pwrite(fd, data, offset)

    def _sys_fsync(self, fd):
        if self._check_fault("fsync"):
            self._raise()
        return super()._sys_fsync(fd)

    def _sys_fallocate(self, fd, size):
        if self._check_fault("fallocate"):
            self._raise()
        return super()._sys_fallocate(fd, size)

    def _sys_open(self, path, flags, mode):
        if self._check_fault("open"):
            self._raise()
        return super()._sys_open(path, flags, mode)

    def _sys_replace(self, src, dst):
        if self._check_fault("replace"):
            self._raise()
        return super()._sys_replace(src, dst)


def ents(lo, hi, term=1, size=300):
    return [Entry(term, i, data=bytes([i % 251]) * size) for i in range(lo, hi + 1)]


def snap(index, term, data=b"state"):
    return Snapshot(SnapshotMeta(index, term, Membership(voters=frozenset({1, 2, 3}))), data)


def open_store(path, io=None, segment_bytes=4096):
    st = DiskStorage(path, segment_bytes=segment_bytes, io=io or FaultyIO())
    rec = st.open()
    return st, rec


def reopen(path):
    st, rec = open_store(path, FileIO(fsync=True))
    st.close()
    return rec


def leftovers(path):
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names
                  if n.endswith(".tmp"))


# -- one failure at a time ------------------------------------------------------------

def test_enospc_on_fsync_is_no_space_rolled_back_and_retried(tmp_path):
    io = FaultyIO()
    st, _ = open_store(tmp_path, io)
    st.save(HardState(1, 1, 0), ents(1, 5), None)
    io.fail_from(io.calls + 1, only={"fsync"})
    with pytest.raises(NoSpaceError) as info:
        st.save(HardState(1, 1, 3), ents(6, 8), None)
    assert info.value.path and info.value.path.endswith(".seg")
    io.heal()
    st.save(HardState(1, 1, 3), ents(6, 8), None)  # the same write again: not poisoned
    st.close()
    rec = reopen(tmp_path)
    assert rec.entries == ents(1, 8) and rec.hard_state.commit == 3


def test_a_half_written_record_is_zeroed_by_the_rollback(tmp_path):
    io = FaultyIO()
    st, _ = open_store(tmp_path, io, segment_bytes=64 << 10)
    st.save(HardState(1, 1, 0), ents(1, 5), None)
    seg = os.path.join(tmp_path, "wal", sorted(os.listdir(os.path.join(tmp_path, "wal")))[0])
    durable_end = len(open(seg, "rb").read().rstrip(b"\0"))
    # The pwrite of the records fails after writing whole pages; the
    # rollback's zeroing then goes through (only that one call fails).
    io.fail_from(io.calls + 1, only={"pwrite"}, times=1)
    with pytest.raises(NoSpaceError):
        st.save(None, ents(6, 40, size=600), None)
    with open(seg, "rb") as f:
        assert f.read()[durable_end:].count(0) == os.path.getsize(seg) - durable_end  # nothing left behind
    st.close()
    assert reopen(tmp_path).entries == ents(1, 5)


def test_no_room_for_a_new_segment_leaves_no_temp_file_and_the_retry_goes_on(tmp_path):
    io = FaultyIO()
    st, _ = open_store(tmp_path, io)
    st.save(HardState(1, 1, 0), ents(1, 5), None)
    io.fail_from(io.calls + 1, only={"fallocate"})
    with pytest.raises(NoSpaceError, match="allocating"):
        st.save(HardState(1, 1, 4), ents(6, 20), None)  # needs more segments than one
    assert leftovers(tmp_path) == []
    io.heal()
    st.save(HardState(1, 1, 4), ents(6, 20), None)
    st.close()
    rec = reopen(tmp_path)
    assert rec.entries == ents(1, 20) and rec.hard_state.commit == 4


def test_a_hard_state_that_cannot_be_written_is_left_as_it_was(tmp_path):
    io = FaultyIO()
    st, _ = open_store(tmp_path, io)
    st.save(HardState(1, 1, 0), ents(1, 2), None)
    before = open(os.path.join(tmp_path, "hardstate"), "rb").read()
    io.fail_from(io.calls + 1, only={"write"})
    with pytest.raises(NoSpaceError):
        st.save(HardState(2, 3, 0), ents(3, 3, term=2), None)
    assert open(os.path.join(tmp_path, "hardstate"), "rb").read() == before and leftovers(tmp_path) == []
    io.heal()
    st.save(HardState(2, 3, 0), ents(3, 3, term=2), None)
    st.close()
    rec = reopen(tmp_path)
    assert (rec.hard_state.term, rec.hard_state.vote) == (2, 3) and rec.entries == ents(1, 2) + ents(3, 3, term=2)


def test_a_snapshot_that_cannot_be_written_leaves_the_older_one_and_no_temp_file(tmp_path):
    io = FaultyIO()
    st, _ = open_store(tmp_path, io)
    st.save(HardState(1, 1, 4), ents(1, 8), None)
    st.save_snapshot(snap(4, 1, b"four"))
    io.fail_from(io.calls + 3, only={"write"})  # open, the header goes out, the data only half
    with pytest.raises(NoSpaceError):
        st.save_snapshot(snap(8, 1, b"eight" * 5000))
    assert leftovers(tmp_path) == []
    st.close()
    rec = reopen(tmp_path)
    assert rec.snapshot.meta.index == 4 and bytes(rec.snapshot.data) == b"four" and rec.entries == ents(5, 8)


def test_eio_on_fsync_is_a_disk_io_error_naming_the_file_and_poisons(tmp_path):
    io = FaultyIO()
    st, _ = open_store(tmp_path, io)
    st.save(HardState(1, 1, 0), ents(1, 2), None)
    io.fail_from(io.calls + 1, errno.EIO, only={"fsync"})
    with pytest.raises(DiskIOError) as info:
        st.save(None, ents(3, 3), None)
    assert "wal-" in str(info.value) and info.value.path.endswith(".seg") and not isinstance(info.value, NoSpaceError)
    io.heal()
    with pytest.raises(DiskIOError, match="earlier I/O failure"):  # never retried
        st.save(None, ents(3, 3), None)
    st.close()
    assert reopen(tmp_path).entries[:2] == ents(1, 2)  # a restart recovers from what is on disk


# -- every call of a save as the failing one --------------------------------------------

def _setup_append(st):
    st.save(HardState(1, 1, 0), ents(1, 5), None)


def _save_append(st):
    st.save(HardState(2, 1, 3), ents(6, 14, term=2), None)  # a new term; crosses into new segments


def _setup_overwrite(st):
    st.save(HardState(1, 1, 3), ents(1, 10), None)


def _save_overwrite(st):
    st.save(HardState(2, 0, 3), ents(6, 9, term=2), None)  # a new leader overwrites 6..10


SCENARIOS = {
    "append": (_setup_append, _save_append, ents(1, 5) + ents(6, 14, term=2), [ents(1, 5), ents(6, 14, term=2)]),
    "overwrite": (_setup_overwrite, _save_overwrite, ents(1, 5) + ents(6, 9, term=2),
                  [ents(1, 5), ents(6, 10), ents(6, 9, term=2)]),
}


def _count_calls(tmp_path, setup, save) -> tuple[int, int]:
    io = FaultyIO()
    st, _ = open_store(tmp_path / "count", io)
    setup(st)
    first = io.calls + 1
    save(st)
    st.close()
    return first, io.calls


def _is_prefix_log(entries, parts):
    """``entries`` = parts[0] + a prefix of one of parts[1:]."""
    base = parts[0]
    if entries[:len(base)] != base:
        return False
    rest = entries[len(base):]
    return any(rest == alt[:len(rest)] for alt in parts[1:])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("then", ["restart", "retry"])
def test_a_full_disk_at_any_call_of_a_save(tmp_path, scenario, then):
    setup, save, expected, parts = SCENARIOS[scenario]
    first, last = _count_calls(tmp_path, setup, save)
    assert last - first >= 6
    for k in range(first, last + 1):
        d = tmp_path / f"k{k}"
        io = FaultyIO()
        st, _ = open_store(d, io)
        setup(st)
        assert io.calls == first - 1
        io.fail_from(k)  # from the k-th call on, everything fails: the disk is full
        with pytest.raises(NoSpaceError):
            save(st)
        with pytest.raises(NoSpaceError):
            save(st)  # still full: fails the same way, still consistent
        if then == "retry":
            io.heal()
            save(st)  # space is back: the very same save
            st.close()
            rec = reopen(d)
            assert rec.entries == expected, f"call {k}"
            assert (rec.hard_state.term, rec.hard_state.commit) == (2, 3), f"call {k}"
        else:
            st.close()  # the server is restarted while the disk is still full
            rec = reopen(d)  # no torn record mid-log, no lost prefix
            assert _is_prefix_log(rec.entries, parts), f"call {k}: {[(e.index, e.term) for e in rec.entries]}"
        assert leftovers(d) == [], f"call {k}"
