"""A hand-driven cluster of RaftCores for focused scenario tests.

No clock and no randomness in the delivery: a test decides which messages
flow (``blocked`` links, a ``drop`` predicate), when servers tick, and calls
``stabilize()`` to run every queued message to quiescence.  Persistence is
instant, but the Ready order is still the contract's: ``messages`` are
queued, the write is "done", ``messages_after_persist`` are queued,
``on_persisted`` is called, then committed entries are applied.
"""

from __future__ import annotations

import collections
import random
from typing import Callable, Iterable

from coord.raft.config import RaftConfig
from coord.raft.core import RaftCore
from coord.raft.types import Entry, EntryKind, HardState, Membership, Message, MsgType, Role

from .checkers import LogView
from .network import copy_message


def entries_with_terms(terms: Iterable[int], start: int = 1) -> list[Entry]:
    """A log whose entry ``start + k`` has term ``terms[k]`` (payload names the position)."""
    return [Entry(t, start + k, EntryKind.NORMAL, b"e%d.%d" % (start + k, t)) for k, t in enumerate(terms)]


class Cluster:
    def __init__(self, config: RaftConfig | None = None):
        self.config = config or RaftConfig(election_ticks=10, heartbeat_ticks=1)
        self.cores: dict[int, RaftCore] = {}
        self.logs: dict[int, LogView] = {}  # what each server has persisted
        self.applied: dict[int, list[Entry]] = collections.defaultdict(list)
        self.queue: collections.deque[Message] = collections.deque()
        self.sent: list[Message] = []  # every message that was delivered
        self.blocked: set[tuple[int, int]] = set()
        self.drop: Callable[[Message], bool] | None = None
        # Rewrites a message in flight (a test's stand-in for "part of it was lost").
        self.transform: Callable[[Message], Message] | None = None

    # --- membership of the simulated cluster ------------------------------
    def add(self, nid: int, *, membership: Membership | None = None, terms: Iterable[int] = (),
            term: int = 0, vote: int = 0, commit: int = 0) -> RaftCore:
        """Create server ``nid`` with a log of the given ``terms`` (indexes from 1)."""
        ents = entries_with_terms(terms)
        core = RaftCore(nid, self.config, random.Random(nid), hard_state=HardState(term, vote, commit),
                        entries=ents, membership=membership)
        self.cores[nid] = core
        self.logs[nid] = LogView(0, 0, ents)
        return core

    @classmethod
    def of(cls, n: int, config: RaftConfig | None = None, **kw) -> "Cluster":
        c = cls(config)
        m = Membership(voters=frozenset(range(1, n + 1)))
        for nid in range(1, n + 1):
            c.add(nid, membership=m, **kw)
        return c

    def __getitem__(self, nid: int) -> RaftCore:
        return self.cores[nid]

    # --- network ----------------------------------------------------------
    def isolate(self, nid: int) -> None:
        for other in self.cores:
            if other != nid:
                self.blocked |= {(nid, other), (other, nid)}

    def heal(self, nid: int | None = None) -> None:
        """Reconnect ``nid`` (default: everyone)."""
        if nid is None:
            self.blocked.clear()
        else:
            self.blocked = {(a, b) for a, b in self.blocked if nid not in (a, b)}

    def _deliverable(self, m: Message) -> bool:
        if m.to not in self.cores or (m.frm, m.to) in self.blocked:
            return False
        return not (self.drop is not None and self.drop(m))

    # --- driving ----------------------------------------------------------
    def pump(self) -> None:
        """Carry out every pending Ready of every server (instant disk)."""
        for nid, core in self.cores.items():
            while core.has_ready():
                rd = core.ready()
                self.queue.extend(rd.messages)
                if rd.snapshot is not None:
                    self.logs[nid].install_snapshot(rd.snapshot.meta.index, rd.snapshot.meta.term)
                if rd.entries:
                    self.logs[nid].append(rd.entries)
                self.queue.extend(rd.messages_after_persist)
                core.on_persisted(rd)
                self.applied[nid].extend(rd.committed)

    def deliver_one(self) -> bool:
        while self.queue:
            m = self.queue.popleft()
            if self._deliverable(m):
                m = copy_message(m)
                if self.transform is not None:
                    m = self.transform(m)
                self.sent.append(m)
                self.cores[m.to].step(m)
                return True
        return False

    def stabilize(self, max_steps: int = 100_000) -> None:
        """Deliver messages until none is left (or ``max_steps``)."""
        for _ in range(max_steps):
            self.pump()
            if not self.deliver_one():
                self.pump()
                if not self.queue:
                    return
        raise AssertionError("the cluster did not quiesce")

    def tick(self, nids: Iterable[int] | None = None, n: int = 1, *, settle: bool = True) -> None:
        """Tick the given servers (default all) ``n`` times, stabilizing after each tick."""
        ids = list(self.cores) if nids is None else list(nids)
        for _ in range(n):
            for nid in ids:
                self.cores[nid].tick()
            if settle:
                self.stabilize()

    def elect(self, nid: int) -> None:
        """Make ``nid`` campaign now and run the election to completion."""
        self.cores[nid].campaign()
        self.stabilize()
        assert self.cores[nid].role == Role.LEADER, f"server {nid} did not win: {self.describe()}"

    # --- observation ------------------------------------------------------
    def leader(self) -> int:
        leaders = [nid for nid, c in self.cores.items() if c.role == Role.LEADER]
        return max(leaders, key=lambda n: self.cores[n].term) if leaders else 0

    def log_terms(self, nid: int) -> list[int]:
        c = self.cores[nid]
        return [e.term for e in c.entries(c.first_index, c.last_index + 1)]

    def count(self, mtype: MsgType, frm: int | None = None, to: int | None = None, *,
              reject: bool | None = None) -> int:
        return sum(
            1 for m in self.sent
            if m.type == mtype and (frm is None or m.frm == frm) and (to is None or m.to == to)
            and (reject is None or m.reject == reject)
        )

    def describe(self) -> str:
        return "; ".join(
            f"n{nid} {Role(c.role).name} t{c.term} last {c.last_index} commit {c.commit_index}"
            for nid, c in self.cores.items()
        )
