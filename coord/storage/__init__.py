"""Durable storage for the Raft log: WAL segments, hard state and snapshots.

``DiskStorage`` (disk.py) is what servers use; ``records`` holds the pure
framing functions, shared with the in-memory simulator.
"""

from coord.storage.disk import DiskStorage, Recovered
from coord.storage.errors import (
    CorruptHardStateError,
    CorruptLogError,
    CorruptRecordError,
    CorruptSnapshotError,
    DiskIOError,
    InconsistentStateError,
    LogGapError,
    LogLossError,
    NoSpaceError,
    StorageClosedError,
    StorageError,
    StorageLockedError,
)

__all__ = [
    "DiskStorage",
    "Recovered",
    "StorageError",
    "CorruptRecordError",
    "CorruptLogError",
    "LogGapError",
    "LogLossError",
    "CorruptHardStateError",
    "CorruptSnapshotError",
    "InconsistentStateError",
    "StorageLockedError",
    "NoSpaceError",
    "DiskIOError",
    "StorageClosedError",
]
