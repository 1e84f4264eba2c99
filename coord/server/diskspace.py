"""A full disk: what the server does while it lasts, and when it tries again.

Why a full disk is waited out rather than fatal: a file system fills up
for reasons that have nothing to do with coord (a log file, a backup, a
core dump), and stopping the server for it takes one more member out of the
ensemble until somebody restarts it.  Nothing is at risk by waiting: the
write that failed was rolled back by the storage layer
(``coord.storage.wal.WAL.rollback``), nothing it carried was acknowledged,
and the disk thread keeps it at the head of its queue (``diskwriter``) to
be written again, as it was, in the same order.  So the server:

* refuses new writes with ``NoSpace`` (``coordclient.NoSpaceError``), and
  a leader refuses what followers forward (they retry: the leadership is
  about to move);
* keeps serving what needs no disk of its own: local reads, sessions'
  keepalives and resumes;
* as leader, hands leadership to an up-to-date voter (``transfer_target``),
  so the ensemble goes on taking writes on the others; as follower it just
  stops acknowledging (the leader commits with the others);
* says so once (``DISK FULL``, the file and the free space), then every
  ``REMIND_SECONDS`` at most, and in its metrics, ``/ready`` and status;
* tries the same write again after a back-off (``Backoff``: 50 ms doubling
  to 2 s), and resumes by itself as soon as it succeeds.

A failed fsync for any other reason (EIO, ...) is not handled here: it
stops the server (``coord.storage.errors.DiskIOError``).

The Raft core knows nothing of this (it does no I/O); the driver
(``raftnode``) keeps a ``DiskSpace`` and asks it.  Time comes from a clock
function (Trio's in the server, so tests run it on a MockClock).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from coord.storage.errors import NoSpaceError, existing_dir

__all__ = ["Backoff", "DiskSpace", "free_bytes", "transfer_target"]

log = logging.getLogger("coord.disk")

FIRST_RETRY_SECONDS = 0.05
MAX_RETRY_SECONDS = 2.0
REMIND_SECONDS = 60.0


class Backoff:
    """Delays between retries of a write that failed for lack of space:
    ``first``, doubling, at most ``cap``.  Short at first (space freed by an
    operator should be used at once), capped so that a long outage costs a
    retry every two seconds, not a busy loop."""

    def __init__(self, first: float = FIRST_RETRY_SECONDS, cap: float = MAX_RETRY_SECONDS):
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


def free_bytes(path: str | None) -> int | None:
    """Bytes available to this process on the file system holding ``path``
    (None if it cannot be told)."""
    if not path:
        return None
    try:
        st = os.statvfs(existing_dir(os.fspath(path)))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class DiskSpace:
    """Whether this server's disk is full, since when, and what to say about it.

    ``failed`` is called for every write that fails for lack of space (the
    first one and each retry), ``recovered`` when a write succeeds again.
    The counters feed the metrics ``coord_disk_full``,
    ``coord_disk_full_episodes_total`` and ``coord_disk_full_seconds_total``."""

    def __init__(self, server_id: int, clock: Callable[[], float], *, remind_seconds: float = REMIND_SECONDS,
                 backoff: Backoff | None = None, free: Callable[[str | None], int | None] = free_bytes):
        self.server_id = server_id
        self.clock = clock
        self.remind_seconds = remind_seconds
        self.backoff = backoff or Backoff()
        self._free = free
        self.full = False
        self.since = 0.0  # clock time the current spell began
        self.path: str | None = None  # the file the last failed write was for
        self.error = ""
        self.free_bytes: int | None = None
        self.times_full = 0  # spells so far (coord_disk_full_episodes_total)
        self._seconds_before = 0.0  # length of the spells that have ended
        self._said_at = 0.0
        self.retries = 0  # failed retries in the current spell

    @property
    def seconds_full(self) -> float:
        """Seconds spent with a full disk, the current spell included."""
        return self._seconds_before + (self.clock() - self.since if self.full else 0.0)

    def failed(self, exc: NoSpaceError) -> float:
        """A write failed for lack of space: log (once, then a reminder at
        most every ``remind_seconds``) and return the delay before the next try."""
        now = self.clock()
        self.path = getattr(exc, "path", None) or self.path
        self.error = str(exc)
        if not self.full:
            self.full = True
            self.since = now
            self.times_full += 1
            self.retries = 0
            self.backoff.reset()
            self.free_bytes = self._free(self.path)
            self._said_at = now
            log.error("server %d: DISK FULL: %s (%s free on its file system). Writes are refused (NoSpace) "
                      "until space is freed; reads and sessions are still served; the write is retried by itself",
                      self.server_id, self.error, _size(self.free_bytes))
        else:
            self.retries += 1
            if now - self._said_at >= self.remind_seconds:
                self._said_at = now
                self.free_bytes = self._free(self.path)
                log.error("server %d: DISK FULL for %.0f s now: %s (%s free); %d retries so far; writes still "
                          "refused", self.server_id, now - self.since, self.path or self.error,
                          _size(self.free_bytes), self.retries)
        return self.backoff.next()

    def recovered(self) -> None:
        """A write succeeded: the disk is no longer full."""
        if not self.full:
            return
        now = self.clock()
        self._seconds_before += now - self.since
        self.full = False
        self.backoff.reset()
        log.warning("server %d: disk space is back after %.1f s (%s free): the waiting write is done, writes "
                    "are accepted again", self.server_id, now - self.since, _size(self._free(self.path)))

    def describe(self) -> str:
        """One line for /ready and errors."""
        if not self.full:
            return "the disk accepts writes"
        return (f"disk full for {self.clock() - self.since:.0f} s ({self.path or 'data directory'}: "
                f"{_size(self.free_bytes)} free): writes are refused until space is freed")


def transfer_target(self_id: int, voters: Iterable[int], progress: dict[int, dict[str, Any]],
                    last_index: int) -> int | None:
    """Whom a leader whose disk is full should hand leadership to: a voter
    that answered recently (``active``: a server whose own disk is full
    stops answering) and is the furthest along (the core catches it up the
    rest of the way before it sends TIMEOUT_NOW).  None if there is nobody."""
    best: tuple | None = None
    for pid in voters:
        if pid == self_id:
            continue
        p = progress.get(pid)
        if p is None or p.get("recovering"):
            continue
        key = (bool(p.get("active", True)), p.get("match", 0) >= last_index, p.get("match", 0), -pid)
        if best is None or key > best[0]:
            best = (key, pid)
    return best[1] if best is not None else None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"
