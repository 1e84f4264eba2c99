"""Snapshot files.

``snap-<index:020d>-<term:020d>.snap`` holds one CRC'd header record
``["s", index, term, membership wire, data length, crc32(data)]`` followed by
the raw state-machine data (kept outside CBOR so it is never copied into a
second encoding).  Files are written atomically; the newest ``keep`` are
kept so that a crash while writing a new one always leaves a complete one.

A corrupt newest snapshot is an error, not a reason to fall back to an
older one: the log may already be compacted past the older snapshot, so
falling back would silently lose committed entries.
"""

from __future__ import annotations

import os
import re
import zlib

from coord.raft.types import Membership, Snapshot, SnapshotMeta
from coord.storage.errors import CorruptSnapshotError, StorageError
from coord.storage.fileio import FileIO
from coord.storage.records import encode_record, read_record

__all__ = ["SnapshotStore", "snapshot_name"]

_NAME = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")


def snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:020d}-{term:020d}.snap"


class SnapshotStore:
    def __init__(self, dirpath: str | os.PathLike, io: FileIO | None = None, keep: int = 2):
        self.dir = os.fspath(dirpath)
        self.io = io if io is not None else FileIO()
        self.keep = keep

    def _names(self) -> list[str]:
        """Snapshot file names, oldest first."""
        return sorted(n for n in os.listdir(self.dir) if _NAME.match(n))  # fixed-width numbers sort as text

    def save(self, snap: Snapshot) -> None:
        """Durable when this returns; then older snapshots beyond ``keep`` are deleted."""
        os.makedirs(self.dir, exist_ok=True)
        m = snap.meta
        header = ["s", m.index, m.term, m.membership.to_wire(), len(snap.data), zlib.crc32(snap.data)]
        self.io.atomic_write(os.path.join(self.dir, snapshot_name(m.index, m.term)), [encode_record(header), snap.data])
        # Deleting is not fsync'd: a resurrected old snapshot is harmless, the newest wins.
        for name in self._names()[: -self.keep]:
            os.unlink(os.path.join(self.dir, name))

    def load_latest(self) -> Snapshot | None:
        """The newest snapshot, None if there is none; raises CorruptSnapshotError if it is bad."""
        os.makedirs(self.dir, exist_ok=True)
        for name in os.listdir(self.dir):
            if name.endswith(".snap.tmp"):  # an interrupted save; the rename never happened
                os.unlink(os.path.join(self.dir, name))
        names = self._names()
        if not names:
            return None
        path = os.path.join(self.dir, names[-1])
        with open(path, "rb") as f:
            buf = f.read()
        try:
            header, end = read_record(buf, 0, path)
        except StorageError as e:
            raise CorruptSnapshotError(f"newest snapshot unreadable (not falling back to an older one): {e}") from None
        m = _NAME.match(names[-1])
        index, term = int(m[1]), int(m[2])
        if not (
            type(header) is list
            and len(header) == 6
            and header[0] == "s"
            and type(header[3]) is dict
            and all(type(header[i]) is int for i in (1, 2, 4, 5))
        ):
            raise CorruptSnapshotError(f"{path}: not a snapshot header")
        _, h_index, h_term, wire, length, crc = header
        if (h_index, h_term) != (index, term):
            raise CorruptSnapshotError(f"{path}: header says index {h_index} term {h_term}, the name disagrees")
        data = buf[end:]
        if len(data) != length or zlib.crc32(data) != crc:
            raise CorruptSnapshotError(
                f"{path}: data is {len(data)} bytes with crc {zlib.crc32(data):#x}, header says {length} bytes crc {crc:#x}"
            )
        try:
            membership = Membership.from_wire(wire)
        except (TypeError, ValueError) as e:
            raise CorruptSnapshotError(f"{path}: bad membership in header: {e}") from None
        return Snapshot(SnapshotMeta(index=index, term=term, membership=membership), data)
