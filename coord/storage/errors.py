"""Storage errors.

Every one of them means the durable state cannot be trusted (or can no
longer be written), so the server must stop rather than carry on with a log
that may be missing acknowledged entries.  The messages name the file and
offset so an operator can decide what to restore.
"""

from __future__ import annotations


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


class StorageLockedError(StorageError):
    """Another process (or another DiskStorage) already uses the directory."""


class StorageClosedError(StorageError):
    """The storage was used before open() or after close()."""
