"""DiskStorage: the durable state of one Raft server, behind one facade.

Layout of the directory::

    LOCK                      flock'd while open: one server per directory
    hardstate                 term, vote, newest WAL segment (and a commit lower bound), atomic
    snap/snap-<i>-<t>.snap    newest two snapshots
    wal/wal-<first>.seg       log segments (entries and commit records), preallocated

The Trio driver calls these blocking methods from a worker thread, one
at a time.  ``save`` persists one Ready and returns only once it is durable.

A log that lost entries this server had fsync'd (a cut or deleted segment)
is refused with ``LogLossError`` naming the file and index.  ``open(
allow_log_loss=True)`` (the operator's ``--recover-lost-log``) keeps the good
prefix instead and returns a hard state with ``recovering`` set, durably,
so the Raft core neither votes nor campaigns until a leader has given this
server back everything it may have acknowledged.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass

from coord.raft.types import Entry, HardState, Snapshot, SnapshotMeta
from coord.storage.errors import (
    InconsistentStateError,
    LogLossError,
    NoSpaceError,
    StorageClosedError,
    StorageError,
    StorageLockedError,
)
from coord.storage.fileio import FileIO
from coord.storage.hardstate import HardStateFile
from coord.storage.snapshots import SnapshotStore, release_pages
from coord.storage.wal import DEFAULT_SEGMENT_BYTES, WAL

__all__ = ["DiskStorage", "Recovered"]


@dataclass(slots=True)
class Recovered:
    """What open() found: the arguments RaftCore needs after a restart."""

    hard_state: HardState
    snapshot: Snapshot | None
    entries: list[Entry]  # contiguous, starting at (snapshot index or 0) + 1
    lost: str | None = None  # what open(allow_log_loss=True) dropped, if anything


class DiskStorage:
    """Durable storage of one server.

    ``fsync=False`` skips every fsync and is for unit tests only: a
    production server running with it can lose acknowledged writes and
    votes on power loss, which breaks Raft's safety.
    """

    def __init__(self, dirpath: str | os.PathLike, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True,
                 io: FileIO | None = None):
        self.dir = os.fspath(dirpath)
        self._io = io if io is not None else FileIO(fsync)  # ``io``: tests inject failures through it
        self._wal = WAL(os.path.join(self.dir, "wal"), segment_bytes, self._io)
        self._hsfile = HardStateFile(os.path.join(self.dir, "hardstate"), self._io)
        self._snaps = SnapshotStore(os.path.join(self.dir, "snap"), self._io)
        self._lock_fd: int | None = None
        self._saved = HardState()  # last hard state written to the hardstate file
        self._saved_tail: int | None = None  # WAL tail recorded in the hardstate file
        self._snapshot_index = 0  # index of the newest durable snapshot

    @property
    def fsync_count(self) -> int:
        """fsyncs done so far (files and directories), for benchmarks."""
        return self._io.fsync_count

    def open(self, *, allow_log_loss: bool = False) -> Recovered:
        """Lock the directory and recover everything in it.  Raises
        LogLossError if the log lost entries, unless ``allow_log_loss``."""
        if self._lock_fd is not None:
            raise StorageError(f"{self.dir}: already open")
        os.makedirs(self.dir, exist_ok=True)
        self._lock()
        try:
            return self._recover(allow_log_loss)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = os.path.join(self.dir, "LOCK")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock, unlike POSIX record locks, also excludes a second open
            # in the same process (locks belong to the open file description).
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageLockedError(f"{path} is held: another server is using {self.dir}") from None
        self._lock_fd = fd

    def _recover(self, allow_log_loss: bool) -> Recovered:
        snapshot = self._snaps.load_latest()
        snap_index, snap_term = (snapshot.meta.index, snapshot.meta.term) if snapshot else (0, 0)
        saved = self._hsfile.load()
        hs = saved.hard_state
        try:
            entries, wal_commit = self._wal.load(snap_index, snap_term, tail=saved.wal_tail, repair=allow_log_loss)
        except LogLossError as e:
            raise LogLossError(
                f"{e}. Starting on this log could lose committed writes. Restore the file from a backup, or "
                "start with --recover-lost-log to accept the loss: the server then rejoins without voting "
                "until the leader has sent it everything again."
            ) from None
        # The term is saved before entries or a snapshot of that term (see
        # save), so a newer term in the log means the term/vote file was
        # lost or replaced: continuing could mean voting twice.
        newest_term = entries[-1].term if entries else snap_term
        if newest_term > hs.term:
            raise InconsistentStateError(
                f"{self.dir}: saved term {hs.term} is older than term {newest_term} found in the log/snapshot; "
                "the hardstate file was lost or replaced"
            )
        last = entries[-1].index if entries else snap_index
        commit = min(max(hs.commit, wal_commit, snap_index), last)
        hs = HardState(hs.term, hs.vote, commit, hs.recovering or self._wal.loss is not None)
        self._wal.commit = commit  # lets the WAL refuse to overwrite committed entries
        self._snapshot_index = snap_index
        self._saved, self._saved_tail = saved.hard_state, saved.wal_tail
        if hs.recovering != self._saved.recovering or self._saved_tail != self._wal.tail:
            # Durable before anything else happens: a repaired log must keep
            # this server from voting even if it crashes again right away.
            self._write_hard_state(hs, self._wal.tail)
        self._wal.on_tail = self._record_tail
        return Recovered(hs, snapshot, entries, self._wal.loss)

    def _write_hard_state(self, hs: HardState, tail: int) -> None:
        self._hsfile.save(hs, tail)
        self._saved, self._saved_tail = hs, tail

    def _record_tail(self, tail: int) -> None:
        """The WAL created or is about to delete its newest segment."""
        if tail != self._saved_tail:
            self._write_hard_state(self._saved, tail)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None) -> None:
        """Persist one Ready; durable when this returns.

        Order, chosen so that every crash point leaves a consistent state:
        term/vote first (a term ahead of the log is normal; a log ahead of
        the term is not), then the snapshot (a complete file, and the log
        is reset if it does not continue from it), then entries and the
        commit index into the WAL, made durable by one fsync for the batch.

        On a full disk this raises ``NoSpaceError`` with the files as they
        were after the last successful save, plus at most some of this
        save's parts complete and durable (the hard state, the snapshot,
        whole WAL segments): the same call, made again, finishes the job.
        Any other failure raises ``DiskIOError`` and poisons the storage.
        """
        self._check_open()
        try:
            saved = self._saved
            if hard_state is not None and (hard_state.term, hard_state.vote, hard_state.recovering) != (
                    saved.term, saved.vote, saved.recovering):
                self._write_hard_state(hard_state, self._wal.tail)  # two extra fsyncs, only on term/vote changes
            if snapshot is not None:
                self.save_snapshot(snapshot)
                self._wal.install_snapshot(snapshot.meta.index, snapshot.meta.term)
            if self._saved_tail != self._wal.tail:  # an earlier save failed right after creating a segment
                self._write_hard_state(self._saved, self._wal.tail)
            self._wal.append(entries)
            if hard_state is not None:
                self._wal.append_commit(hard_state.commit)  # no-op unless it grew
            self._wal.sync()
        except NoSpaceError:
            self._wal.rollback()
            raise
        except StorageError:
            raise
        except OSError as e:  # a call outside FileIO: classified the same way
            err = self._io.error(f"writing the log in {self.dir}", e, getattr(e, "filename", None) or self.dir)
            if isinstance(err, NoSpaceError):
                self._wal.rollback()
            raise err from e

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably store a snapshot (of this server's own state machine, or
        an installed one via save()); follow with compact() to free the log."""
        self._check_open()
        self._snaps.save(snapshot)
        self._snapshot_index = max(self._snapshot_index, snapshot.meta.index)

    # -- snapshots written by a forked child (coord.server.snapshotter) ------------
    def write_snapshot_file(self, snapshot: Snapshot) -> None:
        """Write a snapshot file atomically and durably, and change nothing
        else: what a forked child runs (its own temp name, no pruning, no
        state of this object touched), while the parent's disk thread goes
        on.  The parent then calls ``adopt_snapshot``."""
        self._check_open()
        self._snaps.write(snapshot, tmp_suffix=f".{os.getpid()}.tmp")

    def adopt_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot file written by ``write_snapshot_file`` (in a child that
        has exited) is durable: count it as this server's newest snapshot
        (so ``compact`` may drop the log up to it) and prune older files."""
        self._check_open()
        self._snapshot_index = max(self._snapshot_index, meta.index)
        self._snaps.prune()

    def discard_snapshot_file(self, meta: SnapshotMeta, pid: int) -> None:
        """Remove what a failed or killed child left of its snapshot file."""
        try:
            os.unlink(self._snaps.path_for(meta) + f".{pid}.tmp")
        except FileNotFoundError:
            pass

    def release_snapshot_data(self, data: bytes | memoryview) -> None:
        """Snapshot data read from here has been used (restored): its pages may leave RSS."""
        release_pages(data)

    def snapshot_data(self, meta: SnapshotMeta) -> memoryview:
        """The data of the snapshot file of ``meta``, mapped read-only (see
        storage.snapshots: not a copy in the server's memory)."""
        self._check_open()
        return self._snaps.open_data(meta)

    def compact(self, index: int) -> None:
        """Delete WAL segments holding only entries <= index.  index must be
        covered by a durable snapshot, or committed entries would be lost."""
        self._check_open()
        if index > self._snapshot_index:
            raise StorageError(f"cannot compact through index {index}: the newest snapshot ends at {self._snapshot_index}")
        self._wal.compact(index)

    def close(self) -> None:
        """Release files and the lock.  Idempotent."""
        self._wal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise StorageClosedError(f"{self.dir}: storage is not open")
        self._io.check()
