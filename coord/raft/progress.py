"""What a leader knows about each follower's log, and the flow control on it.

States follow etcd's raft: PROBE sends one AppendEntries at a time until the
follower's match point is found; REPLICATE streams optimistically with a
bounded window of in-flight messages and bytes; SNAPSHOT sends an
InstallSnapshot transfer chunk by chunk and nothing else.
"""

from __future__ import annotations

import collections
import enum

from .types import Snapshot


class PState(enum.IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "match", "next", "state", "probe_sent", "inflight", "inflight_bytes",
        "recent_active", "snap", "snap_offset", "snap_inflight", "snap_stall", "commit_sent", "recovering", "heard",
        "recover_to", "recovered_sent", "silent_ticks",
    )

    def __init__(self, next_index: int):
        self.match = 0
        self.next = next_index
        self.state = PState.PROBE
        self.probe_sent = False
        self.inflight: collections.deque[tuple[int, int]] = collections.deque()  # (last index, bytes)
        self.inflight_bytes = 0
        self.recent_active = True
        self.snap: Snapshot | None = None
        self.snap_offset = 0
        self.snap_inflight = False
        self.snap_stall = 0
        self.commit_sent = 0
        self.recovering = False  # it says it lost a log suffix: its old acks may not hold
        # A response arrived from it in this leader's term: we know whether it is recovering.
        self.heard = False
        # Our last index when we learned it was recovering: once it holds our
        # log up to there, it holds everything it may ever have acknowledged
        # that is (or will be) committed, and we tell it it may vote again.
        self.recover_to = 0
        self.recovered_sent = False  # we told it so (since we learned it was recovering)
        self.silent_ticks = 0  # leader ticks since its last response

    def _reset(self, state: PState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.snap = None
        self.snap_offset = 0
        self.snap_inflight = False
        self.snap_stall = 0

    def become_probe(self, next_index: int) -> None:
        self._reset(PState.PROBE)
        self.next = max(next_index, self.match + 1)

    def become_replicate(self) -> None:
        self._reset(PState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snap: Snapshot) -> None:
        self._reset(PState.SNAPSHOT)
        self.snap = snap

    def paused(self, max_msgs: int, max_bytes: int) -> bool:
        if self.state is PState.PROBE:
            return self.probe_sent
        if self.state is PState.REPLICATE:
            return len(self.inflight) >= max_msgs or self.inflight_bytes >= max_bytes
        return True

    def sent_entries(self, last: int, nbytes: int) -> None:
        if self.state is PState.REPLICATE:
            self.next = last + 1
            self.inflight.append((last, nbytes))
            self.inflight_bytes += nbytes
        else:
            self.probe_sent = True

    def acked(self, index: int) -> None:
        """Free the in-flight window up to ``index``."""
        q = self.inflight
        while q and q[0][0] <= index:
            self.inflight_bytes -= q.popleft()[1]

    def free_one(self) -> None:
        if self.inflight:
            self.inflight_bytes -= self.inflight.popleft()[1]

    def describe(self) -> dict:
        return {"match": self.match, "next": self.next, "state": self.state.name.lower(),
                "active": self.recent_active, "recovering": self.recovering}
