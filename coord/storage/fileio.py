"""The few file operations durability depends on, in one place.

Every fsync goes through FileIO so that ``fsync_count`` is exact (benchmarks
read it to check group commit) and ``fsync=False`` is honoured everywhere.

Failures come in two kinds (``coord.storage.errors``):

* ``NoSpaceError`` (ENOSPC, EDQUOT): the file system is full.  It does not
  poison anything: the caller rolls back what it had written (see
  ``WAL.rollback``, ``atomic_write``) and the same write is tried again
  once there is room.  A retry always *writes the data again* before the
  next fsync, never only re-fsyncs, so it is safe even where the kernel
  dropped the pages a failed fsync could not write back.
* ``DiskIOError`` (EIO and everything else): poisons the FileIO.  After a
  failed fsync the kernel may already have dropped the dirty pages, so
  retrying could report success for data that is gone.  The only safe
  reaction is to stop the server; a restart recovers from what is on disk.

The system calls themselves are the small ``_sys_*`` methods, so a test can
inject failures by overriding them (``tests/test_storage_faults.py``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from coord.storage.errors import DiskIOError, NoSpaceError, StorageError, is_no_space


class FileIO:
    def __init__(self, fsync: bool = True):
        self.fsync_enabled = fsync
        self.fsync_count = 0
        self._failure: str | None = None

    def check(self) -> None:
        if self._failure is not None:
            raise DiskIOError(f"storage is unusable after an earlier I/O failure: {self._failure}", path=None)

    def error(self, what: str, exc: OSError, path: str | None) -> StorageError:
        """The storage error for a failed operation: NoSpaceError for a full
        file system (nothing poisoned: the caller rolls back and may retry),
        else DiskIOError, which poisons this FileIO."""
        if is_no_space(exc):
            return NoSpaceError(what, exc, path=path)
        self._failure = f"{what}: {exc}"
        return DiskIOError(f"{what} (stop the server)", exc, path=path)

    # -- system calls (overridden by fault-injecting tests) ------------------
    def _sys_write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def _sys_pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def _sys_fsync(self, fd: int) -> None:
        os.fsync(fd)

    def _sys_fallocate(self, fd: int, size: int) -> None:
        os.posix_fallocate(fd, 0, size)

    def _sys_open(self, path: str, flags: int, mode: int) -> int:
        return os.open(path, flags, mode)

    def _sys_replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    # -- operations -------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """``os.open`` for writing; creating a file can fail for lack of space (or inodes)."""
        self.check()
        try:
            return self._sys_open(path, flags, mode)
        except OSError as e:
            raise self.error(f"open of {path}", e, path) from e

    def replace(self, src: str, dst: str) -> None:
        try:
            self._sys_replace(src, dst)
        except OSError as e:
            raise self.error(f"rename of {src} to {dst}", e, dst) from e

    def write_all(self, fd: int, data: bytes | memoryview, what: str) -> None:
        self.check()
        view = memoryview(data)
        try:
            while view:
                view = view[self._sys_write(fd, view):]
        except OSError as e:
            raise self.error(f"write to {what}", e, what) from e

    def pwrite_all(self, fd: int, data: bytes, offset: int, what: str) -> None:
        """Write all of ``data`` at ``offset`` (into a preallocated file)."""
        self.check()
        view = memoryview(data)
        try:
            while view:
                n = self._sys_pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as e:
            raise self.error(f"write to {what}", e, what) from e

    def preallocate(self, fd: int, size: int, what: str) -> None:
        """Give the file ``size`` bytes on disk now, so that later writes
        neither change its size nor fail for lack of space.  Falls back to
        extending it sparsely where the file system cannot allocate."""
        self.check()
        try:
            try:
                self._sys_fallocate(fd, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, size)
        except OSError as e:
            raise self.error(f"allocating {size} bytes for {what}", e, what) from e

    def fsync(self, fd: int, what: str) -> None:
        self.check()
        if not self.fsync_enabled:
            return
        try:
            self._sys_fsync(fd)
        except OSError as e:
            raise self.error(f"fsync of {what}", e, what) from e
        self.fsync_count += 1

    def fsync_dir(self, path: str) -> None:
        """Make creations, renames and deletions in ``path`` durable."""
        if not self.fsync_enabled:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise self.error(f"open of directory {path}", e, path) from e
        try:
            self.fsync(fd, f"directory {path}")
        finally:
            os.close(fd)

    def atomic_write(self, path: str, chunks: Iterable[bytes | memoryview], *, tmp_suffix: str = ".tmp") -> None:
        """Replace ``path`` so that a crash leaves either the old or the new
        content, never a mix: write a temp file (``path + tmp_suffix``),
        fsync, rename, fsync dir.  If any step before the rename fails, the
        temp file is removed (a full disk gets its space back) and ``path``
        is untouched; the whole write may then simply be done again."""
        tmp = path + tmp_suffix
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            try:
                for chunk in chunks:
                    self.write_all(fd, chunk, tmp)
                self.fsync(fd, tmp)
            finally:
                os.close(fd)
            self.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.fsync_dir(os.path.dirname(path))
