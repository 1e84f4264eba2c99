"""When a server snapshots its state machine, and how much log it keeps after.

A snapshot is due after ``entries`` applied entries plus a random part of
up to ``jitter`` of them, so that the servers of an ensemble, which apply
the same entries, do not all snapshot at once; or as soon as the entries
applied since the last one reach ``log_bytes``: the log waits in memory for
a snapshot, and it is its size that costs memory (ZooKeeper has both,
snapCount and snapSizeLimitInKb).  A failed snapshot is tried again after a
quarter of ``entries``, not at once.

After a snapshot the core keeps up to ``retain`` entries for followers that
lag a little, but only as many of the newest as fit in ``retain_bytes``
(S1's 1,000 multis of 1,000 creates were 38 MB of them).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from coord.raft.types import Entry

__all__ = ["SnapshotSchedule"]


class SnapshotSchedule:
    __slots__ = ("entries", "jitter", "log_bytes", "retain", "retain_bytes", "last_index", "due_index",
                 "applied_bytes", "_rng")

    def __init__(self, *, entries: int, jitter: float, log_bytes: int, retain: int, retain_bytes: int,
                 last_index: int, seed: int) -> None:
        self.entries, self.jitter, self.log_bytes = entries, jitter, log_bytes
        self.retain, self.retain_bytes = retain, retain_bytes
        self._rng = random.Random(seed)  # jitter only; never the Raft core's
        self.last_index = last_index  # of the newest snapshot (taken, or installed from the leader)
        self.due_index = self._next_due()
        self.applied_bytes = 0  # data of the entries applied since the last snapshot began

    def _next_due(self) -> int:
        return self.last_index + self.entries + self._rng.randint(0, int(self.entries * self.jitter))

    def applied(self, nbytes: int) -> None:
        self.applied_bytes += nbytes

    def is_due(self, applied_index: int) -> bool:
        return applied_index >= self.due_index or self.applied_bytes >= self.log_bytes

    def started(self) -> None:
        """A snapshot of the state as applied now is being taken."""
        self.applied_bytes = 0

    def taken(self, index: int) -> None:
        """A snapshot at ``index`` is durable (or installed from the leader)."""
        self.last_index = max(self.last_index, index)
        self.due_index = self._next_due()

    def failed(self, applied_index: int) -> None:
        self.due_index = applied_index + max(1, self.entries // 4)

    def to_keep(self, index: int, first_index: int, entries: Callable[[int, int], Sequence[Entry]]) -> int:
        """How many entries up to ``index`` to keep once compacted there
        (``entries(lo, hi)``: the log's entries [lo, hi); ``first_index``:
        its first retained index)."""
        lo = max(index - self.retain + 1, first_index, 1)
        if lo > index:
            return 0
        budget, kept = self.retain_bytes, 0
        for e in reversed(entries(lo, index + 1)):
            budget -= len(e.data) + 24
            if budget < 0:
                break
            kept += 1
        return kept
