"""A simulated disk for the production driver (``coord.server.raftnode``).

Three pieces, all deterministic and in memory:

* ``SimStore``: a ``LogStore`` (and ``SnapshotFiles``) with the contract of
  ``coord.storage.disk.DiskStorage``.  Writes land in a volatile buffer;
  ``sync`` makes them durable; ``crash`` keeps only what was synced (and,
  for a torn write, a random prefix of the rest); ``recover`` returns what
  ``DiskStorage.open`` would: the newest snapshot file, the log after it
  (dropped if it does not continue from it), the hard state.
* ``SimDisk``: a ``DiskPipeline`` replacing the disk thread.  Batches are
  queued by the driver; the simulator picks them up and completes them at
  times it chooses, FIFO, writing them with the real group-commit policy
  (``DiskWriter.write_batch``) and reporting each run back through the
  driver's own callbacks, as the thread does.
* ``SimChild``: what ``snapshotter.fork_snapshot`` returns, without a
  process: the state is serialized at the "fork", the file appears (durable)
  when the simulator says the child exited, or the child fails.

Planted bugs (``bug=``) make the disk lie, so tests can check that the
simulation notices: ``"ack-before-fsync"`` reports a run done before it is
durable, ``"double-ack"`` reports each run twice (the driver then applies
entries twice).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from coord.raft.types import Entry, HardState, Snapshot, SnapshotMeta
from coord.server.diskwriter import DiskWork, DiskWriter
from coord.server.snapshotter import SnapshotFailed

from .checkers import LogView

BUGS = ("ack-before-fsync", "double-ack")


class SimStorageError(Exception):
    """The driver broke the storage contract (DiskStorage would raise too)."""


class SimStore:
    """Durable state of one server, plus the writes not yet synced."""

    def __init__(self) -> None:
        # Durable.
        self.term_vote = HardState()  # term, vote, recovering (commit kept apart, as the WAL's commit records)
        self.commit = 0
        self.log = LogView()  # base = the index the log continues from
        self.files: dict[int, Snapshot] = {}  # snapshot files by index
        # Volatile: written, not yet fsync'd.
        self.unsynced: list[tuple] = []
        # What DiskStorage keeps in memory between calls (rebuilt by recover).
        self.snapshot_index = 0
        self.saves = 0

    # -- LogStore --------------------------------------------------------------
    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None) -> None:
        self.saves += 1
        if hard_state is not None:
            self.unsynced.append(("tv", hard_state))
        if snapshot is not None:
            self.unsynced.append(("install", snapshot))
            self.snapshot_index = max(self.snapshot_index, snapshot.meta.index)
        if entries:
            self.unsynced.append(("entries", list(entries)))
        if hard_state is not None:
            self.unsynced.append(("commit", hard_state.commit))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self.unsynced.append(("file", snapshot))
        self.snapshot_index = max(self.snapshot_index, snapshot.meta.index)

    def compact(self, index: int) -> None:
        if index > self.snapshot_index:
            raise SimStorageError(f"cannot compact through index {index}: the newest snapshot ends at "
                                  f"{self.snapshot_index}")
        self.unsynced.append(("compact", index))

    # -- SnapshotFiles ---------------------------------------------------------
    def write_snapshot_file(self, snapshot: Snapshot) -> None:
        """In the "child": the file is complete and durable at once."""
        self.files[snapshot.meta.index] = snapshot

    def adopt_snapshot(self, meta: SnapshotMeta) -> None:
        if meta.index not in self.files and meta.index > max(self.files, default=0):
            raise SimStorageError(f"adopting a snapshot file at {meta.index} that was never written")
        self.snapshot_index = max(self.snapshot_index, meta.index)
        self._prune()

    def discard_snapshot_file(self, meta: SnapshotMeta, pid: int) -> None:
        pass  # a failed child wrote no final file

    def snapshot_data(self, meta: SnapshotMeta) -> bytes:
        snap = self.files.get(meta.index)
        if snap is None or snap.meta.term != meta.term:
            raise SimStorageError(f"no snapshot file for {meta}")
        return snap.data

    def release_snapshot_data(self, data: Any) -> None:
        pass

    # -- the simulated hardware ------------------------------------------------
    def sync(self) -> None:
        """fsync: everything written so far is durable."""
        for op in self.unsynced:
            self._apply(op)
        self.unsynced.clear()

    def crash(self, rng: random.Random, torn_prob: float) -> int:
        """Power loss: unsynced writes are gone, except (a torn write) a
        prefix of them.  Returns how many writes were kept."""
        kept = 0
        if self.unsynced and rng.random() < torn_prob:
            kept = rng.randint(0, len(self.unsynced))
            for op in self.unsynced[:kept]:
                self._apply(op)
        self.unsynced.clear()
        return kept

    def _apply(self, op: tuple) -> None:
        kind, val = op
        if kind == "tv":
            self.term_vote = HardState(val.term, val.vote, 0, val.recovering)
        elif kind == "commit":
            self.commit = max(self.commit, val)
        elif kind == "install":
            meta = val.meta
            self.files[meta.index] = val
            self._prune()
            if not (self.log.base_index <= meta.index <= self.log.last_index
                    and self.log.term_at(meta.index) == meta.term):
                self.log = LogView(meta.index, meta.term)  # the log does not continue from it: reset
        elif kind == "entries":
            first = val[0].index
            if first > self.log.last_index + 1:
                raise SimStorageError(f"entries from {first} written after a log ending at {self.log.last_index}")
            self.log.append(val)
        elif kind == "file":
            self.files[val.meta.index] = val
            self._prune()
        elif kind == "compact":
            t = self.log.term_at(val)
            if t is not None:
                self.log.compact(val, t)
        else:  # pragma: no cover
            raise AssertionError(op)

    def _prune(self) -> None:
        while len(self.files) > 2:
            del self.files[min(self.files)]

    def lose_log_after(self, index: int, *, recovering: bool) -> None:
        """Disk damage (a cut WAL): the durable log ends at ``index``."""
        log = self.log
        keep = max(index, log.base_index)
        log.entries = log.entries[:keep - log.base_index]
        self.commit = min(self.commit, keep)
        if recovering:
            tv = self.term_vote
            self.term_vote = HardState(tv.term, tv.vote, 0, True)

    def recover(self) -> tuple[HardState, Snapshot | None, list[Entry], str | None]:
        """What DiskStorage.open() returns after a restart: (hard state,
        newest snapshot, entries after it, a reason the server would refuse
        to start or None)."""
        self.unsynced.clear()
        snap = self.files[max(self.files)] if self.files else None
        si, st = (snap.meta.index, snap.meta.term) if snap is not None else (0, 0)
        log = self.log
        refuse = None
        if log.last_index > si and log.base_index > si:
            refuse = f"the log starts at {log.base_index + 1} but the snapshot ends at {si}"
        if not (log.base_index <= si <= log.last_index and log.term_at(si) == st):
            self.log = log = LogView(si, st)  # a stale log (an interrupted install): dropped
        entries = log.after(si)
        last = entries[-1].index if entries else si
        tv = self.term_vote
        newest = entries[-1].term if entries else st
        if newest > tv.term:
            refuse = f"saved term {tv.term} is older than term {newest} in the log/snapshot"
        commit = min(max(self.commit, si), last)
        self.snapshot_index = si
        return HardState(tv.term, tv.vote, commit, tv.recovering), snap, entries, refuse


class SimDisk:
    """A ``DiskPipeline`` whose "thread" is the simulator.

    ``submit`` queues a batch and tells the simulator (``kick``); the
    simulator calls ``pick_up`` when the thread would take everything queued
    (one run, as ``DiskWriter._run`` does), then ``complete`` when its fsyncs
    are done.  ``crash`` loses what is not durable."""

    def __init__(self, store: SimStore, durable: HardState, stats: Any, *, kick: Callable[["SimDisk"], None],
                 bug: str | None = None, on_batch: Callable[[list[DiskWork]], None] | None = None):
        self.store = store
        self.writer = DiskWriter(store, durable, stats=stats)  # its write_batch: the real policy
        self.kick = kick
        self.bug = bug
        self.on_batch = on_batch  # the simulator watches every batch handed over (for its checkers)
        self.queue: list[DiskWork] = []
        self.running: list[DiskWork] | None = None  # picked up, being written
        self.dead = False
        self.stopped = False
        self._done: Callable | None = None
        self._failed: Callable | None = None

    @property
    def fsyncs(self) -> int:
        return self.writer.fsyncs

    # -- the driver's side -----------------------------------------------------
    def start(self, on_done: Callable[[list[DiskWork]], bool], on_failed: Callable[[BaseException], None],
              on_full: Callable[[Any], None] | None = None) -> None:
        self._done, self._failed = on_done, on_failed  # the simulated disk never fills up: on_full is not called

    def retry(self) -> None:
        """Never asked for: this disk does not report a full disk."""

    def submit(self, batch: list[DiskWork]) -> None:
        if self.dead:
            return
        if self.stopped:
            raise RuntimeError("work submitted to a stopped disk pipeline")
        if self.on_batch is not None:
            self.on_batch(batch)
        self.queue.extend(batch)
        if self.running is None:
            self.kick(self)

    def set_lazy(self, hs: HardState) -> None:
        self.writer.set_lazy(hs)

    def stop(self) -> None:
        self.stopped = True

    def join(self) -> None:
        pass

    # -- the simulator's side --------------------------------------------------
    @property
    def idle(self) -> bool:
        return self.running is None and not self.queue

    def pick_up(self) -> int | None:
        """The thread takes everything queued and writes it (unsynced).
        Returns the number of fsyncs the run needs, or None if there was
        nothing to do or the write failed (reported to the driver)."""
        if self.dead or self.running is not None or not self.queue:
            return None
        batch, self.queue = self.queue, []
        before = self.writer.fsyncs
        try:
            self.writer.write_batch(batch)
        except Exception as exc:  # noqa: BLE001 - as the thread: handed to the loop, which stops the server
            self.dead = True
            self._failed(exc)
            return None
        self.running = batch
        if self.bug == "ack-before-fsync":
            self._done(batch)
        return self.writer.fsyncs - before

    def complete(self) -> None:
        """The run's fsyncs are done: durable, reported back."""
        if self.dead or self.running is None:
            return
        batch, self.running = self.running, None
        self.store.sync()
        if self.bug != "ack-before-fsync":
            self._done(batch)
            if self.bug == "double-ack":
                self._done(batch)
        if self.queue:
            self.kick(self)

    def crash(self, rng: random.Random, torn_prob: float) -> int:
        self.dead = True
        self.queue = []
        self.running = None
        return self.store.crash(rng, torn_prob)


class SimChild:
    """A snapshot "child process": ``ChildSnapshot``'s interface, no process."""

    __slots__ = ("pid", "fork_seconds", "started", "data", "write", "error", "finished", "killed", "_event",
                 "meta_index")

    def __init__(self, pid: int, data: bytes, write: Callable[[bytes], None], event: Any):
        self.pid = pid
        self.fork_seconds = 0.0
        self.started = 0.0
        self.data = data  # serialized at the fork, as a copy-on-write child would see the state
        self.write = write
        self.error: str | None = None
        self.finished = False
        self.killed = False
        self._event = event

    def exit(self, *, fail: str | None = None) -> None:
        """The simulator ends the child: it wrote the file, or failed."""
        if self.finished or self.killed:
            return
        self.finished = True
        if fail is None:
            self.write(self.data)
        else:
            self.error = fail
        self._event.set()

    async def wait(self) -> None:
        try:
            await self._event.wait()
        except BaseException:
            self.kill()
            raise
        if self.error is not None:
            raise SnapshotFailed(self.error)

    def kill(self) -> None:
        if not self.finished:
            self.killed = True
