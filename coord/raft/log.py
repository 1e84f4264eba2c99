"""The in-memory view of one server's Raft log.

Holds the entries after ``offset`` (the index covered by the last
compaction), plus the three positions the core reasons about:

* ``stable``:  highest index known to be durable on this server's disk;
* ``commit``:  highest index known to be committed cluster-wide;
* ``applied``: highest index handed to the state machine.

It also remembers the lowest index changed since the last ``Ready`` so the
core can hand exactly the new or overwritten suffix to storage.  Terms in a
Raft log never decrease, which lets term searches use bisection.
"""

from __future__ import annotations

from .types import Entry


class LogSafetyError(AssertionError):
    """Something tried to change a committed entry: a bug, never input."""


class RaftLog:
    __slots__ = ("offset", "offset_term", "entries", "stable", "commit", "applied", "unsaved_from")

    def __init__(self, offset: int, offset_term: int, entries: list[Entry]):
        self.offset = offset
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        for k, e in enumerate(self.entries):
            if e.index != offset + 1 + k:
                raise ValueError(f"log entries are not contiguous at index {e.index}")
        self.stable = self.last_index()
        self.commit = offset
        self.applied = offset
        self.unsaved_from = self.last_index() + 1

    # --- positions -------------------------------------------------------
    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        k = index - self.offset - 1
        if 0 <= k < len(self.entries):
            return self.entries[k].term
        return None

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is a candidate's log at least as new as ours?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    # --- reading ---------------------------------------------------------
    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); with max_bytes, stop once the payload total exceeds it
        (always at least one entry)."""
        a = lo - self.offset - 1
        b = hi - self.offset - 1
        if a < 0:
            raise IndexError(f"entry {lo} is compacted (log starts at {self.first_index()})")
        out = self.entries[a:b]
        if max_bytes is not None and len(out) > 1:
            total = 0
            for k, e in enumerate(out):
                total += len(e.data) + 24
                if total > max_bytes and k > 0:
                    return out[:k]
        return out

    def last_index_with_term_at_most(self, term: int, hi: int) -> int:
        """Largest index <= hi whose term is <= ``term`` (bisection; terms are monotone).
        Returns ``offset`` when no retained entry qualifies."""
        lo_k, hi_k = 0, min(hi, self.last_index()) - self.offset  # candidates k in [0, hi_k)
        while lo_k < hi_k:
            mid = (lo_k + hi_k) // 2
            if self.entries[mid].term <= term:
                lo_k = mid + 1
            else:
                hi_k = mid
        return self.offset + lo_k

    def first_index_of_term(self, term: int, hi: int) -> int:
        """Smallest retained index <= hi whose term is >= ``term`` (bisection)."""
        lo_k, hi_k = 0, min(hi, self.last_index()) - self.offset
        while lo_k < hi_k:
            mid = (lo_k + hi_k) // 2
            if self.entries[mid].term < term:
                lo_k = mid + 1
            else:
                hi_k = mid
        return self.offset + 1 + lo_k

    # --- writing ---------------------------------------------------------
    def append(self, entries: list[Entry]) -> None:
        """Append entries that directly follow the last one (leader's path)."""
        self.entries.extend(entries)

    def truncate_and_append(self, entries: list[Entry]) -> int | None:
        """Follower's path: entries[0].index <= last+1.  Entries already present
        with the same term are skipped; from the first conflict on, the log is
        replaced.  Returns the index truncation happened at, or None."""
        last = self.last_index()
        start = None
        for k, e in enumerate(entries):
            if e.index > last:
                start = k
                break
            t = self.term(e.index)
            if t is None:
                continue  # compacted: committed, hence matching
            if t != e.term:
                if e.index <= self.commit:
                    raise LogSafetyError(
                        f"conflicting entry at committed index {e.index} (commit {self.commit})"
                    )
                del self.entries[e.index - self.offset - 1:]
                self.stable = min(self.stable, e.index - 1)
                self.unsaved_from = min(self.unsaved_from, e.index)
                self.entries.extend(entries[k:])
                return e.index
        if start is not None:
            self.unsaved_from = min(self.unsaved_from, entries[start].index)
            self.entries.extend(entries[start:])
        return None

    def take_unsaved(self) -> list[Entry]:
        lo = self.unsaved_from
        self.unsaved_from = self.last_index() + 1
        if lo > self.last_index():
            return []
        return self.entries[lo - self.offset - 1:]

    def compact(self, index: int) -> None:
        """Forget entries <= index (they are covered by a snapshot)."""
        if index <= self.offset:
            return
        t = self.term(index)
        if t is None:
            raise ValueError(f"cannot compact to {index}: not in the log")
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, t

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot's position (InstallSnapshot)."""
        self.entries = []
        self.offset, self.offset_term = index, term
        self.commit = max(self.commit, index)
        self.unsaved_from = index + 1
        # ``stable`` moves only once the snapshot itself is on disk.
        self.stable = min(self.stable, index)
