"""Snapshot files.

``snap-<index:020d>-<term:020d>.snap`` holds one CRC'd header record
``["s", index, term, membership wire, data length, crc32(data)]`` followed by
the raw state-machine data (kept outside CBOR so it is never copied into a
second encoding).  Files are written atomically; the newest ``keep`` are
kept so that a crash while writing a new one always leaves a complete one.

A corrupt newest snapshot is an error, not a reason to fall back to an
older one: the log may already be compacted past the older snapshot, so
falling back would silently lose committed entries.

Data read back is a memoryview of the mapped file, not a copy: the Raft
core keeps the newest snapshot to send to lagging followers, and holding it
as bytes cost the whole snapshot in every server's RSS (51 MB for 1M
nodes); mapped, its pages are read only while a follower is sent them and
are the page cache's to drop afterwards.  (A mapping stays valid after the
file is pruned.)
"""

from __future__ import annotations

import mmap
import os
import re
import zlib

from coord.raft.types import Membership, Snapshot, SnapshotMeta
from coord.storage.errors import CorruptSnapshotError, StorageError
from coord.storage.fileio import FileIO
from coord.storage.records import encode_record, read_record

__all__ = ["SnapshotStore", "release_pages", "snapshot_name"]

_NAME = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")


def snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:020d}-{term:020d}.snap"


def release_pages(data: bytes | memoryview) -> None:
    """Let the pages of a mapped snapshot leave this process's RSS (they stay
    in the page cache and are read back if a follower needs them): after a
    restart, the 88 MB a 1M-node snapshot's CRC check and restore touched."""
    obj = data.obj if isinstance(data, memoryview) else None
    if isinstance(obj, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            obj.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed, or refused: only memory accounting is at stake
            pass


class SnapshotStore:
    def __init__(self, dirpath: str | os.PathLike, io: FileIO | None = None, keep: int = 2):
        self.dir = os.fspath(dirpath)
        self.io = io if io is not None else FileIO()
        self.keep = keep

    def _names(self) -> list[str]:
        """Snapshot file names, oldest first."""
        return sorted(n for n in os.listdir(self.dir) if _NAME.match(n))  # fixed-width numbers sort as text

    def path_for(self, meta: SnapshotMeta) -> str:
        return os.path.join(self.dir, snapshot_name(meta.index, meta.term))

    def save(self, snap: Snapshot) -> None:
        """Durable when this returns; then older snapshots beyond ``keep`` are deleted."""
        self.write(snap)
        self.prune()

    def write(self, snap: Snapshot, tmp_suffix: str = ".tmp") -> None:
        """Write the file atomically and durably, and nothing else (no
        pruning): safe in a forked child while the parent's disk thread
        uses the same directory, given a ``tmp_suffix`` of its own."""
        os.makedirs(self.dir, exist_ok=True)
        m = snap.meta
        header = ["s", m.index, m.term, m.membership.to_wire(), len(snap.data), zlib.crc32(snap.data)]
        self.io.atomic_write(self.path_for(m), [encode_record(header), snap.data], tmp_suffix=tmp_suffix)

    def prune(self) -> None:
        """Delete snapshots older than the newest ``keep``.  Not fsync'd: a
        resurrected old snapshot is harmless, the newest wins."""
        for name in self._names()[: -self.keep]:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass

    def open_data(self, meta: SnapshotMeta) -> memoryview:
        """The data of the snapshot file ``meta`` names, mapped (read-only).
        Checks its header, not its CRC: for a file this server just wrote."""
        path = self.path_for(meta)
        view, header = self._map(path)
        if header[1:3] != [meta.index, meta.term]:
            raise CorruptSnapshotError(f"{path}: header says index {header[1]} term {header[2]}")
        return view

    def _map(self, path: str) -> tuple[memoryview, list]:
        """(data, header) of a snapshot file; the data a view of its mapping."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            header, end = read_record(mm, 0, path)
        except StorageError as e:
            raise CorruptSnapshotError(f"newest snapshot unreadable (not falling back to an older one): {e}") from None
        if not (
            type(header) is list
            and len(header) == 6
            and header[0] == "s"
            and type(header[3]) is dict
            and all(type(header[i]) is int for i in (1, 2, 4, 5))
        ):
            raise CorruptSnapshotError(f"{path}: not a snapshot header")
        length = header[4]
        if len(mm) - end != length:
            raise CorruptSnapshotError(f"{path}: data is {len(mm) - end} bytes, header says {length} bytes")
        return memoryview(mm)[end:], header

    def load_latest(self) -> Snapshot | None:
        """The newest snapshot, None if there is none; raises CorruptSnapshotError if it is bad."""
        os.makedirs(self.dir, exist_ok=True)
        for name in os.listdir(self.dir):
            if name.startswith("snap-") and name.endswith(".tmp"):  # an interrupted save; the rename never happened
                os.unlink(os.path.join(self.dir, name))
        names = self._names()
        if not names:
            return None
        path = os.path.join(self.dir, names[-1])
        data, header = self._map(path)
        m = _NAME.match(names[-1])
        index, term = int(m[1]), int(m[2])
        _, h_index, h_term, wire, length, crc = header
        if (h_index, h_term) != (index, term):
            raise CorruptSnapshotError(f"{path}: header says index {h_index} term {h_term}, the name disagrees")
        if zlib.crc32(data) != crc:
            raise CorruptSnapshotError(
                f"{path}: data is {len(data)} bytes with crc {zlib.crc32(data):#x}, header says {length} bytes crc {crc:#x}"
            )
        try:
            membership = Membership.from_wire(wire)
        except (TypeError, ValueError) as e:
            raise CorruptSnapshotError(f"{path}: bad membership in header: {e}") from None
        return Snapshot(SnapshotMeta(index=index, term=term, membership=membership), data)
