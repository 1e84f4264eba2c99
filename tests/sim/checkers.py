"""Safety invariants of Raft, checked incrementally against a recorded history.

The checkers never look inside ``RaftCore``: the simulator (or a unit test
with a hand-written history) reports what it *observed* -- a node is leader
in a term, a node holds these log entries, a node advanced its commit index,
a node applied an entry, a read returned an index -- and the checker keeps the
global picture needed to decide whether that observation is allowed.  That
separation is what lets ``tests/test_sim_checkers.py`` prove that every check
fires on a planted violation without needing a working core.

The properties are the ones of the Raft paper (Figure 3) plus linearizable
reads:

* Election safety: at most one leader per term.
* Log matching: two logs holding an entry with the same (index, term) hold the
  same entry there and agree on the term of the entry before it.  Checking
  content plus the predecessor's term of *every* entry ever held is enough:
  by induction the whole prefixes then agree.
* Leader completeness: an entry committed in term ``d`` is in the log of every
  leader of a term greater than ``d``.  The exact term in which an entry was
  committed is not observable, but every node that reports a commit index
  while at term ``c`` proves the commit happened at a term <= ``c``; the
  smallest such ``c`` is kept as a bound and leaders of later terms are
  checked against it (both when they are elected and, retroactively, when a
  tighter bound is learnt later).
* State machine safety: every node applies a prefix of one global sequence,
  and a snapshot restores exactly the state of that prefix (compared through
  a hash chain over the applied entries).
* Reads: a ``ReadState`` index is at least the highest index known to be
  committed anywhere when the read was issued (else a read could miss a write
  that had already been acknowledged).
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from typing import Iterable, Sequence

from coord.raft.types import Entry, EntryKind, HardState

GENESIS = bytes(16)
"""Hash of the empty state machine (applied index 0)."""

_HDR = struct.Struct(">QQB")


def chain_hash(prev: bytes, index: int, term: int, kind: int, data: bytes) -> bytes:
    """One link of the state machine's hash chain.

    Covering index, term and kind as well as the payload means two state
    machines only agree when they applied literally the same entries.
    """
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(_HDR.pack(index, term, int(kind)))
    h.update(data)
    return h.digest()


class InvariantViolation(Exception):
    """A safety or liveness property failed.  ``invariant`` names which one."""

    def __init__(self, invariant: str, message: str):
        super().__init__(f"[{invariant}] {message}")
        self.invariant = invariant
        self.detail = message


class LogView:
    """A Raft log as a driver sees it: a snapshot position plus the entries after it.

    Used both for a node's *projected* log (everything the core handed out in
    Readies, synced or not) and for the durable log on the fake disk.  It
    applies the same writes a storage engine would (truncate-and-append,
    snapshot install, compaction) so the simulator can look up the term of
    any retained index without asking the core under test.
    """

    __slots__ = ("base_index", "base_term", "entries")

    def __init__(self, base_index: int = 0, base_term: int = 0, entries: Iterable[Entry] = ()):
        self.base_index = base_index
        self.base_term = base_term
        self.entries: list[Entry] = list(entries)

    @property
    def last_index(self) -> int:
        return self.base_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.base_term

    def term_at(self, index: int) -> int | None:
        """Term at ``index``; None when compacted away or past the end."""
        k = index - self.base_index
        if k == 0:
            return self.base_term
        if 0 < k <= len(self.entries):
            return self.entries[k - 1].term
        return None

    def entry_at(self, index: int) -> Entry | None:
        k = index - self.base_index
        if 0 < k <= len(self.entries):
            return self.entries[k - 1]
        return None

    def after(self, index: int) -> list[Entry]:
        """Entries with an index greater than ``index``."""
        k = max(0, index - self.base_index)
        return self.entries[k:]

    def copy(self) -> "LogView":
        return LogView(self.base_index, self.base_term, self.entries)

    def append(self, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (contiguous), truncating the log from the first one.

        Entries at or below the snapshot position are skipped: they are
        covered by the snapshot.  A gap after the last entry is a bug of
        whoever produced the entries and raises ``ValueError``.
        """
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index + 1:
            raise ValueError(f"entries start at {first} but the log ends at {self.last_index}")
        if first <= self.base_index:
            entries = [e for e in entries if e.index > self.base_index]
            if not entries:
                return
            first = entries[0].index
        del self.entries[first - self.base_index - 1:]
        self.entries.extend(entries)

    def install_snapshot(self, index: int, term: int) -> None:
        """Raft's InstallSnapshot rule (paper section 7): keep the entries after
        the snapshot only if the log holds the snapshot's last entry with the
        same term; otherwise the whole log is replaced by the snapshot."""
        keep = self.term_at(index) == term and index >= self.base_index
        rest = self.after(index) if keep else []
        self.base_index, self.base_term = index, term
        self.entries = list(rest)

    def compact(self, index: int, term: int) -> None:
        """Forget the entries up to ``index`` (covered by a local snapshot)."""
        if index <= self.base_index:
            return
        self.entries = self.after(index)
        self.base_index, self.base_term = index, term

    def runs(self) -> tuple[list[int], list[int]]:
        """Run-length form of the terms after the snapshot: (start indexes, terms)."""
        starts: list[int] = []
        terms: list[int] = []
        last = None
        for e in self.entries:
            if e.term != last:
                starts.append(e.index)
                terms.append(e.term)
                last = e.term
        return starts, terms


class _LeaderRecord:
    """The log of a leader at the moment it was elected, in run-length form."""

    __slots__ = ("term", "node", "base_index", "base_term", "last_index", "starts", "terms")

    def __init__(self, term: int, node: int, log: LogView):
        self.term = term
        self.node = node
        self.base_index = log.base_index
        self.base_term = log.base_term
        self.last_index = log.last_index
        self.starts, self.terms = log.runs()

    def term_at(self, index: int) -> int | None:
        """Term at ``index``; ``-1`` for "inside the snapshot" (covered, unknown)."""
        if index < self.base_index:
            return -1
        if index == self.base_index:
            return self.base_term
        if index > self.last_index:
            return None
        k = bisect.bisect_right(self.starts, index) - 1
        return self.terms[k]


class SafetyChecker:
    """Global history of one simulated cluster; each ``on_*`` raises
    ``InvariantViolation`` as soon as an observation breaks a property."""

    def __init__(self, *, unique_data: bool = False):
        # Election safety.
        self.leaders: dict[int, int] = {}  # term -> node
        self._leader_lives: dict[int, int] = {}  # term -> incarnation of its leader
        self._leader_records: list[_LeaderRecord] = []  # sorted by term
        # Log matching: (index, term) -> (kind, data, term of index - 1 or None if unknown).
        self.log_entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        # Commitment: index -> term, and index -> smallest term of a node that reported it.
        self.committed: dict[int, int] = {}
        self.commit_bound: dict[int, int] = {}
        self.max_commit = 0
        # State machine safety: the global applied sequence (position 0 unused).
        self.applied: list[tuple[int, int, bytes] | None] = [None]
        self.hashes: list[bytes] = [GENESIS]
        self.node_applied: dict[int, int] = {}
        # Reads in flight: (node, context) -> max_commit when issued.
        self.reads: dict[tuple[int, bytes], int] = {}
        # Optional: every NORMAL payload is unique, so each may commit only once.
        self.unique_data = unique_data
        self._data_index: dict[bytes, int] = {}

    # ------------------------------------------------------------------
    # election safety and leader completeness
    # ------------------------------------------------------------------
    def on_leader(self, node: int, term: int, log: LogView, life: int = 0) -> None:
        """``node`` is leader in ``term`` with ``log`` (its log right after winning).

        ``life`` numbers the node's incarnations (it changes at every
        restart).  Winning the same term in two lives is a violation too: a
        server can only win a term it voted for itself in, so the second win
        proves its term/vote were not durable while it acted as leader, and
        the two reigns may have handed out different entries for the same
        (index, term)."""
        prev = self.leaders.get(term)
        if prev is not None:
            if prev != node:
                raise InvariantViolation(
                    "election-safety", f"two leaders in term {term}: node {prev} and node {node}"
                )
            prev_life = self._leader_lives.get(term)
            if prev_life != life:
                raise InvariantViolation(
                    "election-safety",
                    f"node {node} became leader of term {term} twice, before and after a restart: "
                    f"its term-{term} vote was not durable while it acted as leader",
                )
            return
        self.leaders[term] = node
        self._leader_lives[term] = life
        # Every entry committed at a term below ``term`` must be in this log.
        # Entries inside the leader's snapshot are covered by it (the snapshot
        # itself is checked against the applied sequence when restored).
        lo = max(1, log.base_index)
        for i in range(lo, self.max_commit + 1):
            t = self.committed.get(i)
            if t is None or self.commit_bound.get(i, term) >= term:
                continue
            have = log.term_at(i)
            if have != t:
                raise InvariantViolation(
                    "leader-completeness",
                    f"node {node} became leader of term {term} but its log has "
                    f"{'no entry' if have is None else f'term {have}'} at index {i}, "
                    f"where an entry of term {t} was committed by term {self.commit_bound[i]}",
                )
        rec = _LeaderRecord(term, node, log)
        k = bisect.bisect_right([r.term for r in self._leader_records], term)
        self._leader_records.insert(k, rec)

    def _check_leaders_after(self, index: int, term: int, bound: int) -> None:
        """Retroactive leader completeness: leaders of terms above ``bound``
        already elected must have had (index, term)."""
        for rec in reversed(self._leader_records):
            if rec.term <= bound:
                break
            have = rec.term_at(index)
            if have == -1:
                continue
            if have != term:
                raise InvariantViolation(
                    "leader-completeness",
                    f"entry (index {index}, term {term}) was committed by term {bound}, but "
                    f"node {rec.node} became leader of later term {rec.term} with "
                    f"{'no entry' if have is None else f'term {have}'} at that index",
                )

    # ------------------------------------------------------------------
    # log matching
    # ------------------------------------------------------------------
    def on_entries(self, node: int, entries: Sequence[Entry], prev_term: int | None) -> None:
        """``node`` now holds ``entries`` (contiguous), the entry before the
        first one having term ``prev_term`` (None when unknown: compacted)."""
        log_entries = self.log_entries
        pt = prev_term
        expect = entries[0].index if entries else 0
        for e in entries:
            if e.index != expect:
                raise InvariantViolation(
                    "log-matching", f"node {node} got non-contiguous entries: {expect} expected, {e.index} given"
                )
            expect += 1
            if pt is not None and e.term < pt:
                raise InvariantViolation(
                    "log-matching",
                    f"node {node}: entry {e.index} has term {e.term} after an entry of term {pt}",
                )
            key = (e.index, e.term)
            seen = log_entries.get(key)
            if seen is None:
                log_entries[key] = (int(e.kind), e.data, pt)
            else:
                kind, data, spt = seen
                if kind != e.kind or data != e.data:
                    raise InvariantViolation(
                        "log-matching",
                        f"node {node} holds a different entry at (index {e.index}, term {e.term}): "
                        f"kind {int(e.kind)} data {e.data[:32]!r}, another node had kind {kind} data {data[:32]!r}",
                    )
                if pt is not None:
                    if spt is None:
                        log_entries[key] = (kind, data, pt)
                    elif spt != pt:
                        raise InvariantViolation(
                            "log-matching",
                            f"node {node} holds (index {e.index}, term {e.term}) after an entry of term {pt}, "
                            f"another node held it after an entry of term {spt}",
                        )
            pt = e.term

    # ------------------------------------------------------------------
    # commitment
    # ------------------------------------------------------------------
    def on_commit(self, node: int, index: int, term: int, observer_term: int) -> None:
        """``node``, at term ``observer_term``, considers (index, term) committed."""
        t = self.committed.get(index)
        if t is None:
            self.committed[index] = term
            if index < len(self.applied):
                g = self.applied[index]
                if g is not None and g[0] != term:
                    raise InvariantViolation(
                        "state-machine-safety",
                        f"node {node} committed (index {index}, term {term}) but term {g[0]} was applied there",
                    )
        elif t != term:
            raise InvariantViolation(
                "state-machine-safety",
                f"node {node} committed (index {index}, term {term}) but (index {index}, term {t}) "
                f"was committed before",
            )
        b = self.commit_bound.get(index)
        if b is None or observer_term < b:
            self.commit_bound[index] = observer_term
            self._check_leaders_after(index, term, observer_term)
        if index > self.max_commit:
            self.max_commit = index

    # ------------------------------------------------------------------
    # state machine safety
    # ------------------------------------------------------------------
    def on_apply(self, node: int, entry: Entry) -> None:
        """``node`` applied ``entry`` to its state machine."""
        i = entry.index
        expected = self.node_applied.get(node, 0) + 1
        if i != expected:
            raise InvariantViolation(
                "state-machine-safety", f"node {node} applied index {i} but its next index is {expected}"
            )
        rec = (entry.term, int(entry.kind), entry.data)
        n = len(self.applied)
        if i < n:
            g = self.applied[i]
            if g != rec:
                raise InvariantViolation(
                    "state-machine-safety",
                    f"node {node} applied (index {i}, term {entry.term}, kind {int(entry.kind)}, "
                    f"data {entry.data[:32]!r}) but (term {g[0]}, kind {g[1]}, data {g[2][:32]!r}) "
                    f"was applied at that index before",
                )
        elif i == n:
            t = self.committed.get(i)
            if t is not None and t != entry.term:
                raise InvariantViolation(
                    "state-machine-safety",
                    f"node {node} applied (index {i}, term {entry.term}) but term {t} was committed there",
                )
            self.committed.setdefault(i, entry.term)
            if i > self.max_commit:
                self.max_commit = i
            if self.unique_data and entry.kind == EntryKind.NORMAL:
                other = self._data_index.get(entry.data)
                if other is not None:
                    raise InvariantViolation(
                        "state-machine-safety",
                        f"command {entry.data[:32]!r} committed twice: at index {other} and {i}",
                    )
                self._data_index[entry.data] = i
            self.applied.append(rec)
            self.hashes.append(chain_hash(self.hashes[-1], i, entry.term, entry.kind, entry.data))
        else:
            raise InvariantViolation(
                "state-machine-safety", f"node {node} applied index {i} beyond anything ever applied ({n - 1})"
            )
        self.node_applied[node] = i

    def on_restore(self, node: int, index: int, state_hash: bytes) -> None:
        """``node``'s state machine now holds a snapshot at ``index`` with ``state_hash``."""
        if index >= len(self.hashes):
            raise InvariantViolation(
                "state-machine-safety",
                f"node {node} restored a snapshot at index {index} but no state machine ever applied "
                f"that far ({len(self.hashes) - 1})",
            )
        if self.hashes[index] != state_hash:
            raise InvariantViolation(
                "state-machine-safety",
                f"node {node} restored a snapshot at index {index} whose state differs from the "
                f"committed sequence",
            )
        self.node_applied[node] = index

    def applied_hash(self, index: int) -> bytes | None:
        return self.hashes[index] if index < len(self.hashes) else None

    # ------------------------------------------------------------------
    # durability across restarts
    # ------------------------------------------------------------------
    def on_restart(self, node: int, hard_state: HardState, snap_index: int, snap_term: int,
                   entries: Sequence[Entry]) -> None:
        """``node`` restarts from this durable state: it must be self-consistent
        and agree with everything committed where it claims commitment."""
        last = entries[-1].index if entries else snap_index
        if entries and entries[0].index != snap_index + 1:
            raise InvariantViolation(
                "durability", f"node {node}: durable log starts at {entries[0].index} after a snapshot at {snap_index}"
            )
        if hard_state.commit > last:
            raise InvariantViolation(
                "durability",
                f"node {node}: durable commit index {hard_state.commit} is beyond its durable log ({last})",
            )
        if snap_index:
            t = self.committed.get(snap_index)
            if t is not None and t != snap_term:
                raise InvariantViolation(
                    "durability",
                    f"node {node}: durable snapshot at index {snap_index} has term {snap_term}, "
                    f"committed term is {t}",
                )
        if entries:
            self.on_entries(node, entries, snap_term if snap_index else 0)
        for e in entries:
            if e.index > hard_state.commit:
                break
            t = self.committed.get(e.index)
            if t is not None and t != e.term:
                raise InvariantViolation(
                    "durability",
                    f"node {node}: durable entry (index {e.index}, term {e.term}) is below its durable "
                    f"commit index {hard_state.commit} but term {t} was committed there",
                )
        self.on_crash(node)

    def on_crash(self, node: int) -> None:
        """Reads issued by ``node`` die with it."""
        for key in [k for k in self.reads if k[0] == node]:
            del self.reads[key]

    # ------------------------------------------------------------------
    # linearizable reads
    # ------------------------------------------------------------------
    def on_read_start(self, node: int, context: bytes) -> None:
        self.reads[(node, context)] = self.max_commit

    def on_read_state(self, node: int, context: bytes, index: int) -> None:
        floor = self.reads.pop((node, context), None)
        if floor is not None and index < floor:
            raise InvariantViolation(
                "linearizable-read",
                f"node {node}: read {context!r} got read index {index}, but index {floor} was already "
                f"committed when the read was issued",
            )

    def on_read_failed(self, node: int, context: bytes) -> None:
        self.reads.pop((node, context), None)
