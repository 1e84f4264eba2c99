"""Storage errors.

Every one of them but ``NoSpaceError`` means the durable state cannot be
trusted (or can no longer be written), so the server must stop rather than
carry on with a log that may be missing acknowledged entries.  The messages
name the file and offset so an operator can decide what to restore.

``NoSpaceError`` (ENOSPC, EDQUOT) is the one failure a server waits out:
the write that failed was rolled back (the files on disk are as they were
after the last successful write), nothing it carried was acknowledged, and
the same write can be tried again once space is freed.  ``DiskIOError`` is
every other failed write or fsync: after a failed fsync the kernel may have
dropped the dirty pages, so no retry can be trusted; the server stops and a
restart recovers from what is really on disk.
"""

from __future__ import annotations

import errno
import os

# errno values that mean "no room on the file system" (retryable), as opposed to an I/O error.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(Exception):
    """Base class: durable state is unusable; stop the server."""


class CorruptRecordError(StorageError):
    """A record's CRC or body is bad and it is not a torn write at the tail."""

    def __init__(self, source: str, offset: int, reason: str):
        super().__init__(f"{source}: corrupt record at offset {offset}: {reason}")
        self.source = source
        self.offset = offset
        self.reason = reason


class CorruptLogError(StorageError):
    """The WAL's records are well-formed but do not make a valid log."""


class LogGapError(CorruptLogError):
    """Entries are missing: a deleted segment, or a log that does not
    continue from the snapshot (or an append that would leave a hole)."""


class LogLossError(CorruptLogError):
    """Entries this server had written and fsync'd are gone (a WAL segment was
    cut or deleted).  Starting on the shorter log could let this server vote
    for a leader that lacks committed entries, so it refuses unless the
    operator accepts the loss (``coord serve --recover-lost-log``)."""


class CorruptHardStateError(StorageError):
    """The term/vote file is unreadable; guessing could mean voting twice."""


class CorruptSnapshotError(StorageError):
    """The newest snapshot is unreadable (older ones are no substitute: the
    log may already be compacted past them)."""


class InconsistentStateError(StorageError):
    """The files disagree with each other (e.g. the log holds a term newer
    than the saved term, which means the term/vote file was lost)."""


class NoSpaceError(StorageError):
    """The file system is full (ENOSPC) or the quota is used up (EDQUOT).
    The failed write was rolled back and may be retried as it was once
    space is freed; ``path`` is the file that could not be written."""

    def __init__(self, what: str, exc: OSError | None = None, *, path: str | None = None):
        super().__init__(f"{what} failed: no space left: {exc}" if exc is not None else what)
        self.path = path
        self.errno = exc.errno if exc is not None else errno.ENOSPC


class DiskIOError(StorageError):
    """A write or fsync failed for another reason than a full disk (EIO,
    ...).  Never retried: the server stops (exit status 74, EX_IOERR), and
    a restart recovers from what is really on disk.  ``path``: the file."""

    def __init__(self, what: str, exc: OSError | None = None, *, path: str | None = None):
        super().__init__(f"{what} failed: {exc}" if exc is not None else what)
        self.path = path


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError saying the file system (or quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def existing_dir(path: str) -> str:
    """The nearest existing directory at or above ``path`` (for free-space questions)."""
    d = path if os.path.isdir(path) else os.path.dirname(path) or "."
    while not os.path.isdir(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    return d


class StorageLockedError(StorageError):
    """Another process (or another DiskStorage) already uses the directory."""


class StorageClosedError(StorageError):
    """The storage was used before open() or after close()."""
