"""The C allocator's settings for a server process.

Python's own allocator serves objects of up to 512 bytes from its arenas;
larger blocks (log entries, frames, the tables of big dicts) come from the C
library's malloc.  glibc serves blocks below its mmap threshold (128 KiB,
and it raises the threshold up to 32 MiB as it sees larger blocks freed)
from one heap, which it can give back to the system only from the top.  A
server holds its Raft log in memory until a snapshot: S1's load (1,000
multis of 1,000 creates, ~36 KiB entries) left 36 MB of freed entries in
the middle of the heap after the snapshot dropped them (RSS 306 MB before
and after the snapshot, malloc_trim gave back 8 MB).  Blocks of 32 KiB and
more in mappings of their own go back to the system when freed: RSS fell
to 273 MB after the snapshot.  Smaller blocks are unaffected, so a request
of ordinary size costs no system call; a block of 32 KiB or more costs an
mmap and a munmap, which is small beside what makes such a block.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger("coord.server")

__all__ = ["MMAP_THRESHOLD", "tune_allocator"]

MMAP_THRESHOLD = 32 << 10
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Give blocks of ``mmap_threshold`` bytes and more their own mappings
    (glibc only; elsewhere nothing changes).  Whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused; freed large blocks may stay in RSS", mmap_threshold)
    return ok
