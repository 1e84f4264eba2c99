"""The term/vote file.

Term and vote must survive a crash exactly (forgetting a vote lets a server
vote twice in one term), and they change rarely, so they live in a small
file replaced atomically: one CRC'd record ``["h", term, vote, commit]``.
The commit index is stored too but is only a lower bound; the WAL's commit
records carry the up-to-date value without extra fsyncs.
"""

from __future__ import annotations

import os

from coord.raft.types import HardState
from coord.storage.errors import CorruptHardStateError, StorageError
from coord.storage.fileio import FileIO
from coord.storage.records import encode_record, read_record

__all__ = ["HardStateFile"]

_U63 = 1 << 63


class HardStateFile:
    def __init__(self, path: str | os.PathLike, io: FileIO | None = None):
        self.path = os.fspath(path)
        self.io = io if io is not None else FileIO()

    def load(self) -> HardState:
        """The saved state, or HardState() if none was ever saved."""
        try:
            with open(self.path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return HardState()
        try:
            payload, end = read_record(buf, 0, self.path)
        except StorageError as e:
            raise CorruptHardStateError(f"hard state unreadable, refusing to guess term/vote: {e}") from None
        if end != len(buf):
            raise CorruptHardStateError(f"{self.path}: {len(buf) - end} unexpected bytes after the record")
        if not (
            type(payload) is list
            and len(payload) == 4
            and payload[0] == "h"
            and all(type(v) is int and 0 <= v < _U63 for v in payload[1:])
        ):
            raise CorruptHardStateError(f"{self.path}: not a hard-state record")
        _, term, vote, commit = payload
        return HardState(term=term, vote=vote, commit=commit)

    def save(self, hs: HardState) -> None:
        """Durable when this returns (two fsyncs: the file and the directory)."""
        self.io.atomic_write(self.path, [encode_record(["h", hs.term, hs.vote, hs.commit])])
