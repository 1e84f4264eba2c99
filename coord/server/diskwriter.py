"""The disk pipeline of one server: Readies and snapshots, written in order with group commit.

The Raft loop hands work to one long-lived thread (``DiskWriter.submit``,
once per loop iteration); the thread takes everything queued, writes it
with as few fsyncs as possible and reports the whole run back
(``on_done(batch)`` or, once, ``on_failed(error)``).  While one fsync runs,
later work piles up and goes out with the next: that is group commit, and
it is why throughput grows with load instead of being capped at one fsync
per proposal.  (A dedicated thread, not ``trio.to_thread`` per batch: the
thread handoff was a visible share of the CPU per write.)

A hard state whose only change is the commit index needs no fsync of its
own (``Ready.needs_sync``): the loop hands it over with ``set_lazy`` and it
is written with the next batch that syncs anyway.

``write_batch`` is the whole policy and runs without a thread too, which is
how the tests drive it.

A full disk (``NoSpaceError``) is waited out, not fatal: the run is planned
as steps first (``_plan``: each a save, a snapshot or an adoption), and the
step that failed stays at the head of ``_pending`` with the steps after it,
exactly as planned, nothing skipped and nothing reported done.  The thread
tells the loop (``on_full``) and waits; the loop decides when to try again
(``retry``, with the back-off of ``coord.server.diskspace``, on Trio's
clock) and the thread then carries on from that step (``resume``).  The
storage rolled back what the failed step had half written, so doing the
same step again is safe.  Any other error still ends the thread
(``on_failed``): the server stops.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union, runtime_checkable

from coord.raft.types import Entry, HardState, Ready, Snapshot, SnapshotMeta
from coord.storage.errors import NoSpaceError

log = logging.getLogger("coord.disk")

__all__ = ["AdoptSnapshot", "DiskPipeline", "DiskWriter", "LogStore", "SaveSnapshot", "SnapshotFiles", "DiskWork",
           "merge_entries"]


class LogStore(Protocol):
    """The blocking storage API (coord.storage.disk.DiskStorage)."""

    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None) -> None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...

    def compact(self, index: int) -> None: ...


@runtime_checkable
class SnapshotFiles(Protocol):
    """A LogStore whose snapshot files a forked child can write
    (coord.server.snapshotter); DiskStorage is one."""

    def write_snapshot_file(self, snapshot: Snapshot) -> None:
        """In the child: write the file atomically and durably, touch nothing else."""

    def adopt_snapshot(self, meta: SnapshotMeta) -> None:
        """In the disk thread, once the child has exited: the file is this server's newest snapshot."""

    def discard_snapshot_file(self, meta: SnapshotMeta, pid: int) -> None:
        """What a failed child ``pid`` left behind goes."""

    def snapshot_data(self, meta: SnapshotMeta) -> bytes | memoryview:
        """The file's data for the Raft core (mapped, not copied)."""

    def release_snapshot_data(self, data: bytes | memoryview) -> None:
        """Data from here was used up (restored): its pages may leave the process's RSS."""


@dataclass(slots=True, frozen=True)
class SaveSnapshot:
    """A snapshot of this server's own state machine: store it, then drop the
    log up to ``compact_to`` (the WAL keeps those entries until the snapshot
    file is durable, which the FIFO order guarantees)."""

    snapshot: Snapshot
    compact_to: int


@dataclass(slots=True, frozen=True)
class AdoptSnapshot:
    """A snapshot file a child process has written and made durable: adopt
    it, then drop the log up to ``compact_to`` (only now: the file is
    durable before this is queued)."""

    meta: SnapshotMeta
    compact_to: int


DiskWork = Union[Ready, SaveSnapshot, AdoptSnapshot]


@dataclass(slots=True, frozen=True)
class _Save:
    """One ``store.save`` call of a planned run (group commit of its readies)."""

    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None


class DiskPipeline(Protocol):
    """What ``RaftNode`` needs from its disk pipeline (``DiskWriter`` is the
    production one; tests/sim/simdisk.py has a simulated one).

    Work is written strictly in submission order; each run of it is reported
    back, after it is durable, with ``on_done(batch)`` (returning False once
    the loop is gone), or the first error with ``on_failed(error)``.  The
    callbacks may be called from any thread (the node hands them to its loop
    with ``run_sync_soon``)."""

    store: LogStore
    fsyncs: int

    def start(self, on_done: Callable[[list[DiskWork]], bool], on_failed: Callable[[BaseException], None],
              on_full: Callable[[NoSpaceError], None] | None = None) -> None: ...

    def retry(self) -> None: ...

    def submit(self, batch: list[DiskWork]) -> None: ...

    def set_lazy(self, hs: HardState) -> None: ...

    def stop(self) -> None: ...

    def join(self) -> None: ...


def merge_entries(acc: list[Entry], new: list[Entry]) -> list[Entry]:
    """Combine two consecutive entry writes into one (the later may overwrite a
    suffix of the earlier, as after a follower's log truncation)."""
    if not acc:
        return list(new)
    if not new:
        return acc
    first = new[0].index
    if first <= acc[-1].index:
        del acc[max(0, first - acc[0].index):]
    acc.extend(new)
    return acc


class DiskWriter:
    def __init__(self, store: LogStore, durable: HardState, *, name: str = "coord-disk", stats: Any = None):
        self.store = store
        self.stats = stats  # coord.observe.stats.RaftStats (fsync durations, batch sizes), optional
        self.name = name
        self.fsyncs = 0  # store.save calls (each one fsync of the log)
        self._disk_hs = durable  # the last hard state written (thread only, after start)
        self._lazy: HardState | None = None  # newest commit-only change, written with the next save
        self._pending: collections.deque = collections.deque()  # planned steps not yet done (head: next/failed)
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._ctl: queue.SimpleQueue = queue.SimpleQueue()  # True: retry the failed step now; False: stop
        self._thread: threading.Thread | None = None

    # -- the loop's side ---------------------------------------------------
    def start(self, on_done: Callable[[list[DiskWork]], None], on_failed: Callable[[BaseException], None],
              on_full: Callable[[NoSpaceError], None] | None = None) -> None:
        """Start the thread; the callbacks run in it (hand them to the loop).
        ``on_full(error)``: a write failed for lack of space and waits for
        ``retry``; without it, a full disk is a failure like any other."""
        self._thread = threading.Thread(target=self._run, args=(on_done, on_failed, on_full), name=self.name,
                                        daemon=True)
        self._thread.start()

    def submit(self, batch: list[DiskWork]) -> None:
        self._q.put(batch)

    def set_lazy(self, hs: HardState) -> None:
        """A commit-only hard state, already acted upon: written with the next batch."""
        self._lazy = hs

    def retry(self) -> None:
        """Try the write that failed for lack of space again (after ``on_full``)."""
        self._ctl.put(True)

    def stop(self) -> None:
        """Ask the thread to finish what is queued and exit (join with
        ``join``).  A write waiting out a full disk is abandoned: it was
        never reported done, so nothing it carried was acknowledged."""
        self._q.put(None)
        self._ctl.put(False)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    # -- the thread -----------------------------------------------------------
    def _run(self, on_done: Callable, on_failed: Callable, on_full: Callable | None) -> None:
        q = self._q
        while True:
            batch = q.get()
            stop = batch is None
            batch = [] if stop else list(batch)
            while True:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.extend(more)
            try:
                try:
                    self.write_batch(batch)
                except NoSpaceError as exc:
                    if on_full is None:
                        raise
                    if not self._wait_out(exc, on_full):
                        log.warning("%s: stopping with a write still waiting for disk space (never acknowledged)",
                                    self.name)
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which stops the server
                on_failed(exc)
                return
            if batch and not on_done(batch):
                return  # the loop is gone
            if stop:
                return

    def _wait_out(self, exc: NoSpaceError, on_full: Callable) -> bool:
        """Report the full disk and retry the failed step (then the rest of
        the run) each time the loop says so.  False: told to stop first."""
        while True:
            on_full(exc)
            if not self._ctl.get():
                return False
            try:
                self.resume()
                return True
            except NoSpaceError as e:
                exc = e

    def write_batch(self, batch: list[DiskWork]) -> None:
        """Write a run of work with as few fsyncs as possible (one, unless a
        snapshot splits the run; none if all that changed is the commit
        index).  On NoSpaceError the failed step and the ones after it stay
        pending: ``resume`` does them, in order, as planned."""
        if self._pending:
            raise RuntimeError("a failed write is pending: resume() it before writing more")
        self._pending.extend(self._plan(batch))
        self.resume()

    def resume(self) -> None:
        """Do the pending steps, the first of them the one that failed."""
        steps = self._pending
        while steps:
            self._do(steps[0])  # raises: the step stays at the head, to be done again as it is
            steps.popleft()

    def _do(self, step: Any) -> None:
        t = type(step)
        if t is _Save:
            t0 = time.perf_counter()
            self.store.save(step.hard_state, step.entries, step.snapshot)
            if self.stats is not None:
                self.stats.fsync_done(t0, len(step.entries))  # observability
            self.fsyncs += 1
            if step.hard_state is not None:
                self._disk_hs = step.hard_state
        elif t is SaveSnapshot:
            self.store.save_snapshot(step.snapshot)
            self.store.compact(step.compact_to)
        else:  # AdoptSnapshot
            self.store.adopt_snapshot(step.meta)
            self.store.compact(step.compact_to)

    def _plan(self, batch: list[DiskWork]) -> list[Any]:
        """The steps that write ``batch``: readies merged into as few saves
        as possible, snapshots between them in order.  No I/O."""
        steps: list[Any] = []
        disk_hs = self._disk_hs  # as it will be once the steps before are done
        hs: HardState | None = None
        entries: list[Entry] = []
        snap: Snapshot | None = None
        dirty = False

        def flush() -> None:
            nonlocal hs, entries, snap, dirty, disk_hs
            lazy = self._lazy  # set by the loop; only its commit may be newer
            if lazy is not None and (lazy.term, lazy.vote) == (disk_hs.term, disk_hs.vote) and (
                    hs is None or ((hs.term, hs.vote) == (lazy.term, lazy.vote) and lazy.commit > hs.commit)):
                hs = lazy
            steps.append(_Save(hs, entries, snap))
            if hs is not None:
                disk_hs = hs
            hs, entries, snap, dirty = None, [], None, False

        for work in batch:
            if type(work) is SaveSnapshot or type(work) is AdoptSnapshot:
                if dirty:
                    flush()
                steps.append(work)
                continue
            rd = work
            if rd.snapshot is not None:
                if dirty:
                    flush()
                snap = rd.snapshot
                dirty = True
            if rd.entries:
                entries = merge_entries(entries, rd.entries)
                dirty = True
            if rd.hard_state is not None:
                hs = rd.hard_state
                if (hs.term, hs.vote, hs.recovering) != (disk_hs.term, disk_hs.vote, disk_hs.recovering):
                    dirty = True
        if dirty:
            flush()
        elif hs is not None:
            # Only commit-only readies, queued behind a write: like lazy ones.
            # (The loop may have set a newer one meanwhile; keep the newest.)
            cur = self._lazy
            if cur is None or hs.commit > cur.commit:
                self._lazy = hs
        return steps
