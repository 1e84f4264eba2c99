"""Write-ahead log of Raft entries, kept in segment files.

Each segment ``wal-<first_index:020d>.log`` is a run of records (see
records.py): entries, and commit-index records that ride along for free.
The name is the index of the first entry the segment holds, so a sorted
listing is the log in order and compaction is deleting whole files.

Invariant on disk at every moment: the entries, read in name order, are
contiguous.  An append that overwrites a suffix (a follower whose log
conflicts with a new leader's) first cuts the stored log physically
(delete later segments, ftruncate), so recovery never has to pick between
two versions of an index.

Durability: ``append`` only writes; ``sync`` fsyncs, once per batch (group
commit).  Nothing is acknowledged before ``sync`` returns, so a crash can
only tear the tail of the last segment, which ``load`` cuts off with a
warning.  Anything else that is wrong is corruption and raises.
"""

from __future__ import annotations

import logging
import os
import re
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from coord.raft.types import Entry
from coord.storage.errors import CorruptLogError, LogGapError, StorageError
from coord.storage.fileio import FileIO
from coord.storage.records import (
    TORN,
    commit_payload,
    encode_record,
    entry_payload,
    parse_wal_payload,
    read_record,
    scan_records,
)

__all__ = ["WAL", "DEFAULT_SEGMENT_BYTES", "segment_name"]

log = logging.getLogger("coord.storage")

DEFAULT_SEGMENT_BYTES = 64 << 20
_NAME = re.compile(r"^wal-(\d{20})\.log$")


def segment_name(first_index: int) -> str:
    return f"wal-{first_index:020d}.log"


@dataclass(slots=True)
class _Segment:
    first: int  # from the name: the first entry it holds (or will hold)
    path: str
    size: int = 0  # bytes of good records
    # offsets[i] is the file offset of entry first+i: 8 bytes per entry, so
    # truncating at any index is a lookup, not a scan.
    offsets: array = field(default_factory=lambda: array("Q"))

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1


class WAL:
    def __init__(self, dirpath: str | os.PathLike, segment_bytes: int = DEFAULT_SEGMENT_BYTES, io: FileIO | None = None):
        self.dir = os.fspath(dirpath)
        self.segment_bytes = segment_bytes
        self.io = io if io is not None else FileIO()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # appends go to self._segments[-1] through it
        self._next = 1  # index the next appended entry must have
        self.commit = 0  # highest commit index logged (or found by load)
        self._dirty = False  # _fd written since its last fsync
        self._dir_dirty = False  # a segment created since the last directory fsync

    @property
    def first_index(self) -> int:
        """First entry on disk (== last_index + 1 when there is none)."""
        return self._segments[0].first if self._segments else self._next

    @property
    def last_index(self) -> int:
        return self._next - 1

    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]

    # --- recovery -------------------------------------------------------------

    def load(self, snapshot_index: int = 0, snapshot_term: int = 0) -> tuple[list[Entry], int]:
        """Read the log back: (entries after snapshot_index, highest commit record).

        Cuts a torn tail off the last segment (logged as a warning).  Drops
        the whole log, with a warning, when it is stale relative to the
        snapshot (a crash between saving an installed snapshot and resetting
        the log).  Raises on corruption, a missing segment, or a log that
        starts after snapshot_index + 1.
        """
        os.makedirs(self.dir, exist_ok=True)
        self.close()
        self._segments = []
        names = sorted(n for n in os.listdir(self.dir) if _NAME.match(n))
        entries: list[Entry] = []
        commit = 0
        for k, name in enumerate(names):
            seg = _Segment(int(name[4:24]), os.path.join(self.dir, name))
            with open(seg.path, "rb") as f:
                buf = f.read()
            items, seg.size, status = scan_records(buf, seg.path)
            if status == TORN:
                if k != len(names) - 1:
                    raise CorruptLogError(
                        f"{seg.path}: bad record at offset {seg.size} in a segment that is not the last; "
                        "later segments exist, so this is not an interrupted write"
                    )
                self._cut_torn_tail(seg.path, seg.size, len(buf))
            if self._segments and seg.first != self._segments[-1].last + 1:
                prev = self._segments[-1].last
                raise LogGapError(
                    f"{seg.path}: segment starts at index {seg.first} but the previous one ends at {prev}: "
                    f"entries {prev + 1}..{seg.first - 1} are missing"
                )
            for off, payload in items:
                try:
                    item = parse_wal_payload(payload)
                except ValueError as e:
                    raise CorruptLogError(f"{seg.path}: offset {off}: {e}") from None
                if type(item) is int:
                    commit = max(commit, item)
                    continue
                if item.index != seg.first + len(seg.offsets):
                    raise CorruptLogError(
                        f"{seg.path}: offset {off}: entry index {item.index}, expected {seg.first + len(seg.offsets)}"
                    )
                seg.offsets.append(off)
                if item.index > snapshot_index:
                    entries.append(item)
            self._segments.append(seg)
        self.commit = commit
        self._next = self._segments[-1].last + 1 if self._segments else snapshot_index + 1
        if self.last_index > snapshot_index and self.first_index > snapshot_index + 1:
            raise LogGapError(
                f"{self.dir}: the log starts at index {self.first_index} but the snapshot ends at "
                f"{snapshot_index}: entries {snapshot_index + 1}..{self.first_index - 1} are missing"
            )
        self._activate()
        if not self._continues(snapshot_index, snapshot_term):
            log.warning(
                "%s: dropping log entries %d..%d: they do not continue from the snapshot at index %d term %d "
                "(a crash interrupted installing that snapshot)",
                self.dir, self.first_index, self.last_index, snapshot_index, snapshot_term,
            )
            self.reset(snapshot_index + 1)
            entries = []
        return entries, commit

    def _cut_torn_tail(self, path: str, end: int, size: int) -> None:
        log.warning(
            "%s: cutting a torn write left by a crash: offset %d, %d bytes (never acknowledged: it was not fsync'd)",
            path, end, size - end,
        )
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, end)
            self.io.fsync(fd, path)
        finally:
            os.close(fd)

    # --- writing --------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Write contiguous entries; if they start at or before last_index,
        the stored log is cut at entries[0].index first.  Not durable until sync()."""
        if not entries:
            return
        first = entries[0].index
        if any(e.index != first + i for i, e in enumerate(entries)):
            raise LogGapError(f"appended entries are not contiguous (first index {first})")
        if first > self._next:
            raise LogGapError(f"append at index {first} would leave a gap after index {self._next - 1}")
        if first < self._next:
            self._truncate(first)
        chunks: list[bytes] = []
        seg = self._segments[-1] if self._segments else None
        for e in entries:
            if seg is None or seg.size >= self.segment_bytes:
                self._write(chunks)
                seg = self._new_segment(e.index)
            rec = encode_record(entry_payload(e))
            seg.offsets.append(seg.size)
            seg.size += len(rec)
            chunks.append(rec)
        self._next = first + len(entries)
        self._write(chunks)

    def append_commit(self, commit: int) -> None:
        """Log the commit index if it grew (durable with the next sync()).
        Not written while the log is empty: then commit <= the snapshot
        index, which the snapshot already implies."""
        if commit > self.commit:
            self.commit = commit
            if self._segments:
                self._write_commit()

    def _write_commit(self) -> None:
        rec = encode_record(commit_payload(self.commit))
        self._segments[-1].size += len(rec)
        self._write([rec])

    def sync(self) -> None:
        """Make everything appended so far durable: one fsync of the active
        segment, plus one of the directory if a segment was created."""
        if self._dirty:
            self.io.fsync(self._fd, self._segments[-1].path)
            self._dirty = False
        if self._dir_dirty:
            self.io.fsync_dir(self.dir)
            self._dir_dirty = False

    def _write(self, chunks: list[bytes]) -> None:
        if chunks:
            self.io.write_all(self._fd, b"".join(chunks), self._segments[-1].path)
            chunks.clear()
            self._dirty = True

    def _new_segment(self, first: int) -> _Segment:
        # Sync the previous segment first: then a torn record can only ever
        # be in the last segment, and no segment's name can vanish in a crash
        # while a later one survives.  Costs one fsync per segment_bytes.
        self.sync()
        self._close_fd()
        seg = _Segment(first, os.path.join(self.dir, segment_name(first)))
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._segments.append(seg)
        self._dir_dirty = True
        return seg

    def _truncate(self, index: int) -> None:
        """Physically drop entries >= index.  Rare (leader changes), so it
        syncs at once: later appends must not land on a file whose cut is
        not yet durable, or a crash could leave old and new records mixed."""
        if index < self.first_index:
            raise LogGapError(f"cannot overwrite from index {index}: the log starts at {self.first_index}")
        if index <= self.commit:
            raise StorageError(f"refusing to overwrite committed entries: overwrite from index {index}, commit is {self.commit}")
        self.sync()
        removed = []
        while self._segments and self._segments[-1].first >= index:
            removed.append(self._segments.pop())
        if removed:
            self._close_fd()
            for seg in removed:  # newest first: a crash midway leaves a contiguous prefix
                os.unlink(seg.path)
            self.io.fsync_dir(self.dir)
            self._activate()
        if self._segments and index <= self._segments[-1].last:
            seg = self._segments[-1]
            cut = seg.offsets[index - seg.first]
            os.ftruncate(self._fd, cut)
            self.io.fsync(self._fd, seg.path)
            del seg.offsets[index - seg.first :]
            seg.size = cut
            if self.commit:
                self._write_commit()  # commit records after the cut are gone; their value is not
        self._next = index

    # --- snapshots and compaction --------------------------------------------

    def term_at(self, index: int) -> int | None:
        """Term of the entry at index, read back from disk; None if not stored."""
        if not self.first_index <= index <= self.last_index:
            return None
        seg = self._segments[bisect_right(self._segments, index, key=lambda s: s.first) - 1]
        i = index - seg.first
        off = seg.offsets[i]
        end = seg.offsets[i + 1] if i + 1 < len(seg.offsets) else seg.size
        with open(seg.path, "rb") as f:
            f.seek(off)
            buf = f.read(end - off)
        payload, _ = read_record(buf, 0, f"{seg.path} (offset {off})")
        try:
            item = parse_wal_payload(payload)
        except ValueError as e:
            raise CorruptLogError(f"{seg.path}: offset {off}: {e}") from None
        if not isinstance(item, Entry) or item.index != index:
            raise CorruptLogError(f"{seg.path}: offset {off}: expected entry {index}, found {item!r}"[:300])
        return item.term

    def _continues(self, index: int, term: int) -> bool:
        """Whether the log can follow a snapshot ending at (index, term): it
        starts right after it, or it holds that very entry (then, by Log
        Matching, everything after it agrees with the snapshot too)."""
        if self.first_index == index + 1:
            return True
        return self.first_index <= index <= self.last_index and self.term_at(index) == term

    def install_snapshot(self, index: int, term: int) -> bool:
        """Keep the log if it continues from the snapshot, else drop it all
        so appends restart at index + 1.  Returns whether it was dropped."""
        if self._continues(index, term):
            return False
        self.reset(index + 1)
        return True

    def reset(self, next_index: int) -> None:
        """Delete every segment; the next append must be at next_index."""
        self._close_fd()
        for seg in reversed(self._segments):  # newest first: a crash midway leaves a prefix, still stale
            os.unlink(seg.path)
        if self._segments:
            self.io.fsync_dir(self.dir)
        self._segments = []
        self._next = next_index
        self._dir_dirty = False

    def compact(self, upto_index: int) -> None:
        """Delete segments whose entries are all <= upto_index; never the
        last one, which appends go to.  The caller must hold a durable
        snapshot covering upto_index."""
        n = 0
        while n + 1 < len(self._segments) and self._segments[n + 1].first - 1 <= upto_index:
            n += 1
        if n:
            for seg in self._segments[:n]:  # oldest first: a crash midway leaves a contiguous suffix
                os.unlink(seg.path)
            del self._segments[:n]
            self.io.fsync_dir(self.dir)

    # --- file handles ---------------------------------------------------------

    def _activate(self) -> None:
        """Open the last segment for appending (after load or truncation)."""
        self._close_fd()
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._dirty = False

    def close(self) -> None:
        """Release the file handle.  Does not sync: unsynced writes were never acknowledged."""
        self._close_fd()
