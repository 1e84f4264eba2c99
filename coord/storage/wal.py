"""Write-ahead log of Raft entries, kept in preallocated segment files.

Each segment ``wal-<first_index:020d>.seg`` starts with a header record
(``records.SegmentHeader``: its first index and the size it was allocated)
followed by a run of records (see records.py): entries, and commit-index
records that ride along for free.  The name is the index of the first entry
the segment holds, so a sorted listing is the log in order and compaction is
deleting whole files.

Why preallocated: a segment is created at its full size (header written,
space allocated, fsync'd, then renamed into place) before any entry goes
into it, and later writes go *into* that space.  So the file never changes
size while in use, which makes every fsync cheaper (no size update), and it
makes a cut detectable: a segment shorter than its header says has lost
data this server wrote and acknowledged.  The hard state records the newest
segment (``on_tail``), so a deleted tail segment is detectable too.  A log
that lost acknowledged entries must never be served silently: a server
starting on it could vote for a leader that lacks committed entries.
``load`` raises ``LogLossError`` naming the file and index, unless the
operator asked for ``repair`` (then the damaged suffix is dropped and the
caller must keep the server from voting until it has caught up again).

Invariant on disk at every moment: the entries, read in name order, are
contiguous.  An append that overwrites a suffix (a follower whose log
conflicts with a new leader's) first erases the stored suffix physically
(delete later segments, zero the rest of the last one), so recovery never
has to pick between two versions of an index.

Durability: ``append`` only writes; ``sync`` fsyncs, once per batch (group
commit).  Nothing is acknowledged before ``sync`` returns, so a crash can
only tear the last records of the last segment, which ``load`` erases with a
warning; the unused part of a segment is zeros, which marks the end.

Segments named ``wal-<first>.log`` are the older append-only format (no
header, no preallocation): they are read as before and never appended to
again; the next append starts a new segment.
"""

from __future__ import annotations

import logging
import os
import re
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coord.raft.types import Entry
from coord.storage.errors import (
    CorruptLogError,
    CorruptRecordError,
    LogGapError,
    LogLossError,
    NoSpaceError,
    StorageError,
)
from coord.storage.fileio import FileIO
from coord.storage.records import (
    TORN,
    commit_payload,
    encode_record,
    entry_payload,
    parse_segment_header,
    parse_wal_payload,
    read_record,
    scan_records,
    segment_header_payload,
)

__all__ = ["WAL", "DEFAULT_SEGMENT_BYTES", "segment_name", "legacy_segment_name"]

log = logging.getLogger("coord.storage")

DEFAULT_SEGMENT_BYTES = 64 << 20
_NAME = re.compile(r"^wal-(\d{20})\.(seg|log)$")
_TMP = re.compile(r"^wal-\d{20}\.seg\.tmp$")
# Room kept free at the end of a segment for the commit record of a batch.
_COMMIT_ROOM = 32
_HEADER_ROOM = 48  # a segment header record is at most 8 + 1 + 2 + 1 + 9 + 9 bytes
_PAGE = 4096  # zeroing goes page by page (see _zero)


def segment_name(first_index: int) -> str:
    return f"wal-{first_index:020d}.seg"


def legacy_segment_name(first_index: int) -> str:
    return f"wal-{first_index:020d}.log"


@dataclass(slots=True)
class _Segment:
    first: int  # from the name: the first entry it holds (or will hold)
    path: str
    alloc: int | None  # bytes allocated at creation; None for a legacy append-only segment
    size: int = 0  # bytes of header and good records: where the next record goes
    # offsets[i] is the file offset of entry first+i: 8 bytes per entry, so
    # truncating at any index is a lookup, not a scan.
    offsets: array = field(default_factory=lambda: array("Q"))

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1


class _Damage(Exception):
    """What load found wrong, and how much of the log before it is good:
    segments[:keep_segments] in full, then ``keep_bytes`` of the next one
    (None: none of it)."""

    def __init__(self, error: StorageError, keep_segments: int, keep_bytes: int | None = None):
        super().__init__(str(error))
        self.error = error
        self.keep_segments = keep_segments
        self.keep_bytes = keep_bytes


class WAL:
    def __init__(self, dirpath: str | os.PathLike, segment_bytes: int = DEFAULT_SEGMENT_BYTES, io: FileIO | None = None):
        self.dir = os.fspath(dirpath)
        self.segment_bytes = segment_bytes
        self.io = io if io is not None else FileIO()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # writes go to self._segments[-1] through it
        self._next = 1  # index the next appended entry must have
        self.commit = 0  # highest commit index logged (or found by load)
        self.loss: str | None = None  # what load(repair=True) dropped, if anything
        # Told the first index of the newest preallocated segment (0: none)
        # after one is created and before one is deleted, so the owner can
        # record it durably and notice a deleted tail segment at the next start.
        self.on_tail: Callable[[int], None] | None = None
        self._dirty = False  # _fd written since its last fsync
        # What is durable (see rollback): the last segment's size and entry
        # count at the last sync, and the commit index logged by then.
        self._synced: tuple[int, int] = (0, 0)
        self._synced_commit = 0
        self._erase_to = 0  # bytes of the last segment from its size up to this may be stale: zero before writing
        self._dir_pending = False  # a segment was renamed into place but the directory not yet fsync'd

    @property
    def first_index(self) -> int:
        """First entry on disk (== last_index + 1 when there is none)."""
        return self._segments[0].first if self._segments else self._next

    @property
    def last_index(self) -> int:
        return self._next - 1

    @property
    def tail(self) -> int:
        """First index of the newest preallocated segment, 0 if there is none."""
        if self._segments and self._segments[-1].alloc is not None:
            return self._segments[-1].first
        return 0

    def segment_paths(self) -> list[str]:
        return [s.path for s in self._segments]

    # --- recovery -------------------------------------------------------------

    def load(self, snapshot_index: int = 0, snapshot_term: int = 0, *, tail: int | None = None,
             repair: bool = False) -> tuple[list[Entry], int]:
        """Read the log back: (entries after snapshot_index, highest commit record).

        ``tail`` is the newest segment as last recorded by ``on_tail`` (None:
        unknown, as in data directories written before it was recorded).

        Erases a torn tail of the last segment (logged as a warning).  Drops
        the whole log, with a warning, when it is stale relative to the
        snapshot (a crash between saving an installed snapshot and resetting
        the log).  Anything else wrong raises: corruption, a cut or missing
        segment, a log that starts after snapshot_index + 1.  With
        ``repair``, it keeps the good prefix instead, drops the rest from
        disk, and describes what it dropped in ``self.loss``.
        """
        os.makedirs(self.dir, exist_ok=True)
        self.close()
        self._segments = []
        self.loss = None
        for name in os.listdir(self.dir):
            if _TMP.match(name):  # a segment whose creation a crash interrupted: it never held an entry
                os.unlink(os.path.join(self.dir, name))
        found = sorted((int(m.group(1)), m.group(2) == "log", m.group(0))
                       for m in map(_NAME.match, os.listdir(self.dir)) if m)
        entries: list[Entry] = []
        self.commit = 0
        try:
            self._load_segments(found, snapshot_index, entries)
            self._check_tail(tail, found)
        except _Damage as d:
            if not repair:
                raise d.error from None
            self._drop_damage(d, found, entries)
        self._next = self._segments[-1].last + 1 if self._segments else snapshot_index + 1
        if self.last_index > snapshot_index and self.first_index > snapshot_index + 1:
            err = LogGapError(
                f"{self.dir}: the log starts at index {self.first_index} but the snapshot ends at "
                f"{snapshot_index}: entries {snapshot_index + 1}..{self.first_index - 1} are missing"
            )
            if not repair:
                raise err
            self._note_loss(str(err))
            self.reset(snapshot_index + 1)
            entries = []
        self._activate()
        if not self._continues(snapshot_index, snapshot_term):
            log.warning(
                "%s: dropping log entries %d..%d: they do not continue from the snapshot at index %d term %d "
                "(a crash interrupted installing that snapshot)",
                self.dir, self.first_index, self.last_index, snapshot_index, snapshot_term,
            )
            self.reset(snapshot_index + 1)
            entries = []
        self._erase_to = 0
        self._dir_pending = False
        self._mark_synced()
        return entries, self.commit

    def _load_segments(self, found: list[tuple[int, bool, str]], snapshot_index: int, entries: list[Entry]) -> None:
        for k, (first, legacy, name) in enumerate(found):
            path = os.path.join(self.dir, name)
            last_seg = k == len(found) - 1
            if self._segments and first != self._segments[-1].last + 1:
                prev = self._segments[-1].last
                raise _Damage(LogGapError(
                    f"{path}: segment starts at index {first} but the previous one ends at {prev}: "
                    f"entries {prev + 1}..{first - 1} are missing"
                ), k)
            with open(path, "rb") as f:
                buf = f.read()
            seg = _Segment(first, path, None)
            start = 0
            if not legacy:
                try:
                    payload, start = read_record(buf, 0, path)
                    hdr = parse_segment_header(payload)
                    if hdr.first != first:
                        raise ValueError(f"its header says it starts at index {hdr.first}")
                except (StorageError, ValueError) as e:
                    raise _Damage(LogLossError(
                        f"{path}: the segment header is missing or damaged ({len(buf)} bytes on disk: {e}); "
                        f"entries from index {first} on are lost"
                    ), k) from None
                seg.alloc = hdr.alloc
            try:
                items, seg.size, status = scan_records(buf, path, start)
            except CorruptRecordError as e:
                items, _, _ = scan_records(buf[:e.offset], path, start)
                self._take(seg, items, snapshot_index, entries, k)
                raise _Damage(e, k, e.offset) from None
            self._take(seg, items, snapshot_index, entries, k)
            cut = seg.alloc is not None and len(buf) < seg.alloc
            if cut:
                after = f"; the next segment starts at index {found[k + 1][0]}" if not last_seg else ""
                raise _Damage(LogLossError(
                    f"{path} was cut: {len(buf)} of its {seg.alloc} bytes are left; entries this server "
                    f"wrote after index {seg.last} are lost{after}"
                ), k, seg.size)
            if status == TORN:
                if not last_seg:
                    raise _Damage(CorruptLogError(
                        f"{path}: bad record at offset {seg.size} in a segment that is not the last; "
                        "later segments exist, so this is not an interrupted write"
                    ), k, seg.size)
                self._erase_torn_tail(seg, buf)
            self._segments.append(seg)

    def _take(self, seg: _Segment, items: list, snapshot_index: int, entries: list[Entry], k: int) -> None:
        """Index the records of ``seg`` (stopping, as damage, at a record that is not the next entry)."""
        for off, payload in items:
            try:
                item = parse_wal_payload(payload)
            except ValueError as e:
                raise _Damage(CorruptLogError(f"{seg.path}: offset {off}: {e}"), k, off) from None
            if type(item) is int:
                self.commit = max(self.commit, item)
                continue
            if item.index != seg.first + len(seg.offsets):
                raise _Damage(CorruptLogError(
                    f"{seg.path}: offset {off}: entry index {item.index}, expected {seg.first + len(seg.offsets)}"
                ), k, off)
            seg.offsets.append(off)
            if item.index > snapshot_index:
                entries.append(item)

    def _check_tail(self, tail: int | None, found: list[tuple[int, bool, str]]) -> None:
        if not tail:
            return
        firsts = {first for first, legacy, _ in found if not legacy}
        if tail not in firsts and not any(f > tail for f in firsts):
            last = self._segments[-1].last if self._segments else 0
            raise _Damage(LogLossError(
                f"{os.path.join(self.dir, segment_name(tail))} is missing: the hard state records it as the "
                f"newest segment, so entries this server wrote from index {tail} on are lost "
                f"(the log on disk ends at index {last})"
            ), len(self._segments))

    def _drop_damage(self, d: _Damage, found: list[tuple[int, bool, str]], entries: list[Entry]) -> None:
        """Repair: keep the good prefix that ``d`` describes, remove the rest from disk."""
        keep = self._segments[:d.keep_segments]
        partial = None
        if d.keep_bytes is not None and d.keep_segments < len(found):
            first, legacy, name = found[d.keep_segments]
            partial = self._segments[d.keep_segments] if d.keep_segments < len(self._segments) else None
            if partial is None:  # the damage was found while indexing it: rebuild its good part
                partial = self._reindex(first, legacy, os.path.join(self.dir, name), d.keep_bytes)
        drop_from = d.keep_segments + (1 if partial is not None else 0)
        dropped = [os.path.join(self.dir, name) for _, _, name in found[drop_from:]]
        self._segments = keep + ([partial] if partial is not None else [])
        last = self._segments[-1].last if self._segments else 0
        del entries[len(entries) - sum(1 for e in entries if e.index > last):]
        self._note_loss(f"{d.error} -- kept the log up to index {last}"
                        + (f", removed {', '.join(os.path.basename(p) for p in dropped)}" if dropped else ""))
        for path in reversed(dropped):
            os.unlink(path)
        if dropped:
            self.io.fsync_dir(self.dir)
        if partial is not None:
            self._restore_segment(partial)

    def _reindex(self, first: int, legacy: bool, path: str, end: int) -> _Segment:
        with open(path, "rb") as f:
            buf = f.read(end)
        seg = _Segment(first, path, None)
        start = 0
        if not legacy:
            payload, start = read_record(buf, 0, path)
            seg.alloc = parse_segment_header(payload).alloc
        items, seg.size, _ = scan_records(buf, path, start)
        for off, payload in items:
            item = parse_wal_payload(payload)
            if type(item) is not int and item.index == seg.first + len(seg.offsets):
                seg.offsets.append(off)
        return seg

    def _restore_segment(self, seg: _Segment) -> None:
        """After a repair: nothing but zeros after the kept records, and the
        full allocated size again, so the segment can be appended to."""
        fd = os.open(seg.path, os.O_RDWR)
        try:
            if seg.alloc is None:
                os.ftruncate(fd, seg.size)
            else:
                self._zero(fd, seg.path, seg.size, os.fstat(fd).st_size)
                if os.fstat(fd).st_size < seg.alloc:
                    self.io.preallocate(fd, seg.alloc, seg.path)
            self.io.fsync(fd, seg.path)
        finally:
            os.close(fd)

    def _note_loss(self, what: str) -> None:
        log.error("%s: ACCEPTING LOST LOG ENTRIES (recovery was requested): %s", self.dir, what)
        self.loss = what if self.loss is None else f"{self.loss}; {what}"

    def _erase_torn_tail(self, seg: _Segment, buf: bytes) -> None:
        end = seg.size
        garbage = len(buf.rstrip(b"\0")) - end
        log.warning(
            "%s: erasing a torn write left by a crash: offset %d, %d bytes (never acknowledged: it was not fsync'd)",
            seg.path, end, max(garbage, len(buf) - end if seg.alloc is None else 0),
        )
        fd = os.open(seg.path, os.O_WRONLY)
        try:
            if seg.alloc is None:
                os.ftruncate(fd, end)
            else:
                self._zero(fd, seg.path, end, end + garbage)
            self.io.fsync(fd, seg.path)
        finally:
            os.close(fd)

    def _zero(self, fd: int, what: str, start: int, end: int) -> None:
        """Overwrite [start, end) with zeros (the file keeps its size), from
        the end backwards, one page at a time.  A write within one page
        either happens or not (a full disk fails it before any byte), so if
        this stops half-way what is left is old bytes followed by zeros:
        read back, a run of records whose last may be torn (the end of the
        log), never zeros with records after them (corruption)."""
        zeros = bytes(_PAGE)
        pos = end
        while pos > start:
            lo = max(start, (pos - 1) // _PAGE * _PAGE)
            self.io.pwrite_all(fd, zeros[:pos - lo], lo, what)
            pos = lo

    # --- writing --------------------------------------------------------------
    #
    # A failed write (a full disk: NoSpaceError) must leave a WAL that a retry
    # or a restart can trust.  What is durable is known exactly: everything
    # up to the last successful sync (``_mark_synced``), plus whole earlier
    # segments (each is synced before the next one is created).  ``rollback``
    # goes back to that point in memory; the bytes written after it are not
    # durable and are zeroed (now if possible, else before the next write:
    # ``_erase_to``), so no half record is ever followed by newer ones.  The
    # retried append then finds the entries that did become durable (same
    # index and term: by Log Matching the same entries) and writes only the
    # rest.

    def append(self, entries: Sequence[Entry]) -> None:
        """Write contiguous entries; if they start at or before last_index,
        the stored log is cut at entries[0].index first (entries already
        stored with the same term are kept as they are).  Not durable until
        sync()."""
        if not entries:
            return
        first = entries[0].index
        if any(e.index != first + i for i, e in enumerate(entries)):
            raise LogGapError(f"appended entries are not contiguous (first index {first})")
        if first > self._next:
            raise LogGapError(f"append at index {first} would leave a gap after index {self._next - 1}")
        if first < self._next:
            k = 0
            while (k < len(entries) and entries[k].index < self._next
                   and self.first_index <= entries[k].index and self.term_at(entries[k].index) == entries[k].term):
                k += 1  # already stored (a write retried after part of it became durable)
            entries = entries[k:]
            if not entries:
                return
            first = entries[0].index
            if first < self._next:
                self._truncate(first)
        chunks: list[bytes] = []
        seg = self._segments[-1] if self._segments else None
        for e in entries:
            rec = encode_record(entry_payload(e))
            if seg is None or seg.alloc is None or seg.size + len(rec) + _COMMIT_ROOM > seg.alloc:
                self._write(chunks)
                seg = self._new_segment(e.index, len(rec))
            seg.offsets.append(seg.size)
            seg.size += len(rec)
            chunks.append(rec)
        self._next = first + len(entries)
        self._write(chunks)

    def append_commit(self, commit: int) -> None:
        """Log the commit index if it grew (durable with the next sync()).
        Only a restart hint (see DiskStorage), so it is skipped where there is
        no room for it: while the log is empty (then commit <= the snapshot
        index, which the snapshot already implies), in an old-format segment,
        or at the very end of a full segment."""
        if commit > self.commit:
            self.commit = commit
            self._write_commit()

    def _write_commit(self) -> None:
        seg = self._segments[-1] if self._segments else None
        if seg is None or seg.alloc is None:
            return
        rec = encode_record(commit_payload(self.commit))
        if seg.size + len(rec) <= seg.alloc:
            seg.size += len(rec)
            self._write([rec])

    def sync(self) -> None:
        """Make everything appended so far durable: one fsync of the active
        segment (segments are created durable, so the directory needs none,
        unless a failure came between a segment's rename and its directory
        fsync)."""
        if self._dir_pending:
            self.io.fsync_dir(self.dir)
            self._dir_pending = False
        if self._dirty:
            self.io.fsync(self._fd, self._segments[-1].path)
            self._dirty = False
        self._mark_synced()

    def _mark_synced(self) -> None:
        """Everything in the segments as indexed in memory is durable now."""
        seg = self._segments[-1] if self._segments else None
        self._synced = (seg.size, len(seg.offsets)) if seg is not None else (0, 0)
        self._synced_commit = self.commit

    def rollback(self) -> None:
        """After a failed write (NoSpaceError): forget what was written since
        the last sync, so memory matches what is durable, and zero those
        bytes (before the next write at the latest).  A retry of the same
        append then rewrites exactly what is missing."""
        seg = self._segments[-1] if self._segments else None
        if seg is not None and seg.alloc is not None:
            size, count = self._synced
            if seg.size > size:
                self._erase_to = max(self._erase_to, seg.size)
                seg.size = size
                del seg.offsets[count:]
        if seg is not None:
            self._next = seg.last + 1
        self.commit = self._synced_commit
        self._dirty = False
        if self._fd is None:
            self._activate()
        try:
            self._erase()
        except NoSpaceError:  # still no room: done before the next write instead
            pass

    def _erase(self) -> None:
        """Zero (durably) bytes after the last segment's records that a
        failed write left behind."""
        seg = self._segments[-1] if self._segments else None
        if seg is None or seg.alloc is None or self._fd is None or self._erase_to <= seg.size:
            self._erase_to = 0
            return
        self._zero(self._fd, seg.path, seg.size, self._erase_to)
        self.io.fsync(self._fd, seg.path)
        self._erase_to = 0

    def _write(self, chunks: list[bytes]) -> None:
        """Write the records in ``chunks`` (already counted in the last
        segment's size) at their place in it."""
        if chunks:
            data = b"".join(chunks)
            seg = self._segments[-1]
            if self._erase_to:
                self._erase()
            self.io.pwrite_all(self._fd, data, seg.size - len(data), seg.path)
            chunks.clear()
            self._dirty = True

    def _new_segment(self, first: int, need: int) -> _Segment:
        """Create the next segment, durable and at its full size before any
        entry goes into it: written as a temporary file (header, allocation,
        fsync), renamed into place, then the directory fsync'd.  Where this
        fails for lack of space, the temporary file is removed again (a
        preallocated segment is the biggest single allocation coord makes)."""
        # Sync the previous segment first: then a torn record can only ever
        # be in the last segment.  Costs one fsync per segment.
        if self._erase_to:
            self._erase()
        self.sync()
        self._close_fd()
        alloc = max(self.segment_bytes, _HEADER_ROOM + need + _COMMIT_ROOM)
        header = encode_record(segment_header_payload(first, alloc))
        path = os.path.join(self.dir, segment_name(first))
        tmp = path + ".tmp"
        fd = self.io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self.io.pwrite_all(fd, header, 0, tmp)
            self.io.preallocate(fd, alloc, tmp)
            self.io.fsync(fd, tmp)
            self._dir_pending = True
            self.io.replace(tmp, path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # In place: from here on memory says so too, whatever fails next (a
        # retry fsyncs the directory first, see sync, and records the tail).
        self._fd = fd
        seg = _Segment(first, path, alloc, len(header))
        self._segments.append(seg)
        self._mark_synced()
        self.io.fsync_dir(self.dir)
        self._dir_pending = False
        if self.on_tail is not None:
            self.on_tail(first)
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
        keep = len(self._segments)
        while keep and self._segments[keep - 1].first >= index:
            keep -= 1
        if keep < len(self._segments):
            self._close_fd()
            if self.on_tail is not None:  # before the deletion: the recorded tail must always exist
                last = self._segments[keep - 1] if keep else None
                self.on_tail(last.first if last is not None and last.alloc is not None else 0)
            removed = self._segments[keep:]
            del self._segments[keep:]
            if not self._segments or self._segments[-1].last < index:
                self._next = index
            self._erase_to = 0  # any leftovers were in the removed segment
            self._mark_synced()  # what is left was synced above
            for seg in reversed(removed):  # newest first: a crash midway leaves a contiguous prefix
                os.unlink(seg.path)
            self.io.fsync_dir(self.dir)
            self._activate()
        if self._segments and index <= self._segments[-1].last:
            seg = self._segments[-1]
            cut = seg.offsets[index - seg.first]
            if seg.alloc is None:
                fd = os.open(seg.path, os.O_WRONLY)
                try:
                    os.ftruncate(fd, cut)
                    self.io.fsync(fd, seg.path)
                finally:
                    os.close(fd)
                del seg.offsets[index - seg.first:]
                seg.size = cut
            else:
                # Cut in memory first, then zero the rest durably; if that
                # fails, it stays owed (_erase_to) and comes before any write.
                self._erase_to = max(self._erase_to, seg.size)
                del seg.offsets[index - seg.first:]
                seg.size = cut
                self._next = index
                self._mark_synced()
                self._erase()
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
        if self._segments and self.on_tail is not None:
            self.on_tail(0)  # before the deletion (and before memory forgets them): no segment is required any more
        self._close_fd()
        segments, self._segments = self._segments, []
        self._erase_to = 0
        for seg in reversed(segments):  # newest first: a crash midway leaves a prefix, still stale
            os.unlink(seg.path)
        self._next = next_index
        self._mark_synced()
        if segments:
            self.io.fsync_dir(self.dir)

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
        """Open the last segment for writing (after load or truncation).  An
        old-format segment is never written again: the next append starts a
        new one."""
        self._close_fd()
        if self._segments and self._segments[-1].alloc is not None:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._dirty = False

    def close(self) -> None:
        """Release the file handle.  Does not sync: unsynced writes were never acknowledged."""
        self._close_fd()
