"""One periodic task per server that watches the server from the side.

Every ``TICK`` seconds it measures how late it woke up (event-loop lag: a
blocked loop delays every client and every heartbeat, so it is the first
thing to look at when latency is bad), notes the leader's last log index
with the time (so a follower's lag can be told in seconds, not only in
entries), and once a second adds a sample to the dashboard's ring.

It only reads state; a tick costs a few microseconds.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from typing import Any

import trio

from coord.observe.ring import Ring
from coord.observe.stats import LATENCY_BUCKETS, Histogram
from coord.raft.types import Role

TICK = 0.25
SAMPLE_EVERY = 1.0
INDEX_HISTORY = 4 * 600  # (last index, time) pairs kept: ten minutes of ticks


class IndexClock:
    """When did the leader's log reach each index?  Kept coarsely (one
    point per tick) and only while leader; answers "for how long has a
    follower been missing entries"."""

    def __init__(self, size: int = INDEX_HISTORY) -> None:
        self._points: deque[tuple[int, float]] = deque(maxlen=size)
        self._term = -1

    def note(self, term: int, last_index: int, now: float) -> None:
        if term != self._term:
            self._points.clear()
            self._term = term
        if not self._points or self._points[-1][0] != last_index:
            self._points.append((last_index, now))

    def clear(self) -> None:
        self._points.clear()
        self._term = -1

    def lag_seconds(self, match: int, last_index: int, now: float) -> float:
        """Seconds since the first entry above ``match`` was appended (0 when caught up)."""
        if match >= last_index or not self._points:
            return 0.0
        i = bisect.bisect_right(self._points, (match, float("inf")))
        if i >= len(self._points):
            return 0.0
        return max(0.0, now - self._points[i][1])


class Observer:
    """Per-server observation state: loop lag, the index clock, the ring."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.loop_lag = Histogram(LATENCY_BUCKETS)
        self.index_clock = IndexClock()
        self.ring = Ring(service)
        self.last_tick = 0.0  # trio time of the last tick (0: never ticked)
        self.started = time.time()

    def tick(self, now: float) -> None:
        self.last_tick = now
        core = self.service.node.core
        if core.role is Role.LEADER:
            self.index_clock.note(core.term, core.last_index, now)
        else:
            self.index_clock.clear()

    def peer_lag_seconds(self, match: int) -> float:
        core = self.service.node.core
        return self.index_clock.lag_seconds(match, core.last_index, trio.current_time())

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        next_sample = trio.current_time()
        self.ring.take()
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(TICK)
            now = trio.current_time()
            self.loop_lag.observe(max(0.0, now - before - TICK))
            self.tick(now)
            if now >= next_sample + SAMPLE_EVERY:
                next_sample = now
                self.ring.take()
