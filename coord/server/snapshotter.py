"""State machine snapshots taken by a forked child, off the event loop.

Why a child process (measured, 1M nodes, 2-core machine): serializing on
the loop stopped it for 1.1-2 s (no heartbeats, no replies; S1 saw gaps of
2.6-4.0 s between a client's gets).  A thread does not help in Python: the
serializer holds the GIL for the whole of each C call, so the loop got the
GIL back only between chunks and ran at about half speed (p99 gap 5-9 ms,
half the iterations), and it first needed a consistent copy of the tree,
60 ms on the loop.  ``os.fork`` gives the child a copy-on-write image of
the state at the fork, for a pause of the fork itself (11-16 ms at 440 MB of
RSS, page tables); the child serializes and writes on the other core while
the parent goes on serving.

The child only serializes, writes the file (atomically, fsync'd) and
``_exit``s: it closes every descriptor it inherited (the parent's client,
peer and listening sockets must close when the parent closes them, not when
the child exits), restores default signal handling, asks to die with its
parent, lowers its priority so the parents' loops keep the CPU, and never
runs a garbage collection (which would touch, and so copy, every object).
The disk thread exists while it forks; the child never uses it, nor any
lock another thread may have held.  The parent learns of the end from a
pipe (EOF at the child's exit, an error message before it) and reaps it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
import warnings
from typing import Callable

import trio

log = logging.getLogger("coord.snapshotter")

__all__ = ["ChildSnapshot", "SnapshotFailed", "fork_snapshot"]

_MAX_ERROR = 4096  # bytes of the child's error message the parent reads
_PR_SET_PDEATHSIG = 1

try:  # loaded before any fork: the child must not import
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except (ImportError, OSError):  # pragma: no cover - no ctypes or no libc: the child just outlives a killed parent
    _libc = None


class SnapshotFailed(Exception):
    """The child did not write the snapshot (its error, or how it ended)."""


class ChildSnapshot:
    """One snapshot being written by a child process."""

    __slots__ = ("pid", "fd", "fork_seconds", "started", "_done")

    def __init__(self, pid: int, fd: int, fork_seconds: float, started: float) -> None:
        self.pid = pid
        self.fd = fd  # read end of the pipe the child writes its error to
        self.fork_seconds = fork_seconds  # how long fork() held the loop
        self.started = started
        self._done = False

    async def wait(self) -> None:
        """Until the child has exited; raises SnapshotFailed unless it wrote
        the snapshot.  Cancelled: the child is killed and reaped."""
        try:
            message = b""
            while True:
                await trio.lowlevel.wait_readable(self.fd)
                try:
                    chunk = os.read(self.fd, _MAX_ERROR)
                except BlockingIOError:
                    continue
                if not chunk:
                    break  # EOF: the child has exited
                if len(message) < _MAX_ERROR:
                    message += chunk
        except BaseException:
            self.kill()
            raise
        status = self._reap()
        if status != 0 or message:
            why = message.decode(errors="replace").strip() or _describe(status)
            raise SnapshotFailed(why)

    def kill(self) -> None:
        """Stop the child now (shutdown) and reap it."""
        if self._done:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reap()

    def _reap(self) -> int:
        if self._done:
            return 0
        self._done = True
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            _, status = os.waitpid(self.pid, 0)  # it has closed its pipe: exiting, or already gone
        except ChildProcessError:
            return 0
        return status


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"the snapshot process was killed by signal {os.WTERMSIG(status)}"
    return f"the snapshot process exited with status {os.waitstatus_to_exitcode(status)}"


def fork_snapshot(serialize: Callable[[], bytes], write: Callable[[bytes], None], *, nice: int = 5) -> ChildSnapshot:
    """Fork a child that runs ``write(serialize())`` and exits; returns at
    once in the parent.  Call from the thread that owns the state (the
    Trio thread), right after applying what the snapshot must contain.
    Raises OSError if the process cannot be forked."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    parent = os.getpid()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: "fork() with threads"; see the module doc
            pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # the child: never returns
        status = 1
        try:
            gc.disable()
            os.close(r)
            _detach(w, parent, nice)
            write(serialize())
            status = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
            try:
                os.write(w, f"{type(e).__name__}: {e}".encode(errors="replace")[:_MAX_ERROR])
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(status)
    fork_seconds = time.perf_counter() - t0
    os.close(w)
    os.set_blocking(r, False)
    return ChildSnapshot(pid, r, fork_seconds, t0)


def _detach(keep_fd: int, parent: int, nice: int) -> None:
    """In the child: let go of everything of the parent's it does not need."""
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
    try:
        signal.set_wakeup_fd(-1)  # the loop's wakeup socket is closed; only the main thread may do this
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
    except ValueError:
        pass  # forked from another thread: signals stay as they were
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before prctl
    if nice:
        os.nice(nice)
