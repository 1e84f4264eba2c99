"""The term/vote file.

Term and vote must survive a crash exactly (forgetting a vote lets a server
vote twice in one term), and they change rarely, so they live in a small
file replaced atomically: one CRC'd record
``["h", term, vote, commit, wal_tail, recovering]``.

The commit index is stored too but is only a lower bound; the WAL's commit
records carry the up-to-date value without extra fsyncs.  ``wal_tail`` is
the first index of the newest WAL segment (recorded when one is created or
deleted, which is rare), so a deleted tail segment is noticed at start.
``recovering`` is the Raft core's flag for a server that accepted a lost
log suffix.  Files written before these two existed hold only the first
four fields; they read as "tail unknown" and "not recovering".
"""

from __future__ import annotations

import os

from dataclasses import dataclass

from coord.raft.types import HardState
from coord.storage.errors import CorruptHardStateError, StorageError
from coord.storage.fileio import FileIO
from coord.storage.records import encode_record, read_record

__all__ = ["HardStateFile", "SavedState"]

_U63 = 1 << 63


@dataclass(slots=True, frozen=True)
class SavedState:
    hard_state: HardState
    wal_tail: int | None  # None: not recorded (an older file, or none saved yet)


class HardStateFile:
    def __init__(self, path: str | os.PathLike, io: FileIO | None = None):
        self.path = os.fspath(path)
        self.io = io if io is not None else FileIO()

    def load(self) -> SavedState:
        """The saved state, or an empty one if none was ever saved."""
        try:
            with open(self.path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return SavedState(HardState(), None)
        try:
            payload, end = read_record(buf, 0, self.path)
        except StorageError as e:
            raise CorruptHardStateError(f"hard state unreadable, refusing to guess term/vote: {e}") from None
        if end != len(buf):
            raise CorruptHardStateError(f"{self.path}: {len(buf) - end} unexpected bytes after the record")
        if not (
            type(payload) is list
            and len(payload) in (4, 6)
            and payload[0] == "h"
            and all(type(v) is int and 0 <= v < _U63 for v in payload[1:])
            and (len(payload) == 4 or payload[5] in (0, 1))
        ):
            raise CorruptHardStateError(f"{self.path}: not a hard-state record")
        term, vote, commit = payload[1:4]
        if len(payload) == 4:
            return SavedState(HardState(term=term, vote=vote, commit=commit), None)
        return SavedState(HardState(term, vote, commit, bool(payload[5])), payload[4])

    def save(self, hs: HardState, wal_tail: int) -> None:
        """Durable when this returns (two fsyncs: the file and the directory)."""
        record = ["h", hs.term, hs.vote, hs.commit, wal_tail, int(hs.recovering)]
        self.io.atomic_write(self.path, [encode_record(record)])
