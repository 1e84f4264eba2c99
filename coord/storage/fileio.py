"""The few file operations durability depends on, in one place.

Every fsync goes through FileIO so that ``fsync_count`` is exact (benchmarks
read it to check group commit) and ``fsync=False`` is honoured everywhere.
A failed write or fsync poisons the FileIO: after a failed fsync the kernel
may already have dropped the dirty pages, so retrying could report success
for data that is gone.  The only safe reaction is to stop the server.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from coord.storage.errors import StorageError


class FileIO:
    def __init__(self, fsync: bool = True):
        self.fsync_enabled = fsync
        self.fsync_count = 0
        self._failure: str | None = None

    def check(self) -> None:
        if self._failure is not None:
            raise StorageError(f"storage is unusable after an earlier I/O failure: {self._failure}")

    def _fail(self, what: str, exc: OSError) -> StorageError:
        self._failure = f"{what}: {exc}"
        return StorageError(f"{what} failed, stop the server: {exc}")

    def write_all(self, fd: int, data: bytes, what: str) -> None:
        self.check()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            raise self._fail(f"write to {what}", e) from e

    def pwrite_all(self, fd: int, data: bytes, offset: int, what: str) -> None:
        """Write all of ``data`` at ``offset`` (into a preallocated file)."""
        self.check()
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise self._fail(f"write to {what}", e) from e

    def preallocate(self, fd: int, size: int, what: str) -> None:
        """Give the file ``size`` bytes on disk now, so that later writes
        neither change its size nor fail for lack of space.  Falls back to
        extending it sparsely where the file system cannot allocate."""
        self.check()
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, size)
        except OSError as e:
            raise StorageError(f"allocating {size} bytes for {what} failed: {e}") from e

    def fsync(self, fd: int, what: str) -> None:
        self.check()
        if not self.fsync_enabled:
            return
        try:
            os.fsync(fd)
        except OSError as e:
            raise self._fail(f"fsync of {what}", e) from e
        self.fsync_count += 1

    def fsync_dir(self, path: str) -> None:
        """Make creations, renames and deletions in ``path`` durable."""
        if not self.fsync_enabled:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd, f"directory {path}")
        finally:
            os.close(fd)

    def atomic_write(self, path: str, chunks: Iterable[bytes], *, tmp_suffix: str = ".tmp") -> None:
        """Replace ``path`` so that a crash leaves either the old or the new
        content, never a mix: write a temp file (``path + tmp_suffix``),
        fsync, rename, fsync dir."""
        tmp = path + tmp_suffix
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for chunk in chunks:
                self.write_all(fd, chunk, tmp)
            self.fsync(fd, tmp)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self.fsync_dir(os.path.dirname(path))
