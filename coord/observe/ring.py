"""The last ten minutes of one server, one sample a second, for the charts.

A ``Ring`` keeps at most ``size`` samples (a ``deque`` with ``maxlen``:
memory is bounded whatever happens).  Each sample is made from the
differences of the counters in ``coord.observe.stats`` since the previous
one, so it costs a few dictionary walks a second and nothing on the
request path.  Quantiles are taken from the bucket counts that moved in
that second.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from coord.observe.stats import LATENCY_BUCKETS, READ_OPS, WRITE_OPS, quantile

RING_SECONDS = 600


@dataclass(slots=True, frozen=True)
class Sample:
    t: float  # wall clock, seconds since the epoch (the charts' time axis)
    commits: float  # entries committed per second: the ensemble's write rate
    writes: float  # client writes answered by this server per second
    reads: float  # client reads answered by this server per second
    p99_write_ms: float | None
    p99_read_ms: float | None
    p99_fsync_ms: float | None
    sessions: int
    connections: int
    nodes: int
    term: int
    leader: int
    leader_changed: bool  # a leader change was seen during this second

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _delta(now: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(now, before)]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


class Ring:
    """Samples of one server; ``take`` is called about once a second."""

    def __init__(self, service: Any, size: int = RING_SECONDS) -> None:
        self.service = service
        self.samples: deque[Sample] = deque(maxlen=size)
        self._prev: dict[str, Any] | None = None
        self._prev_t = 0.0

    def _counters(self) -> dict[str, Any]:
        s = self.service
        obs, robs = s.obs, s.node.obs
        return {
            "commit": s.node.core.commit_index,
            "writes": obs.count(WRITE_OPS),
            "reads": obs.count(READ_OPS),
            "lat_w": obs.merged_latency(WRITE_OPS),
            "lat_r": obs.merged_latency(READ_OPS),
            "fsync": list(robs.fsync.counts),
            "leader_changes": robs.leader_changes,
        }

    def take(self, now: float | None = None) -> Sample | None:
        """Record one sample (None for the first call: it only sets the baseline)."""
        now = time.time() if now is None else now
        cur = self._counters()
        prev, prev_t = self._prev, self._prev_t
        self._prev, self._prev_t = cur, now
        if prev is None:
            return None
        dt = max(now - prev_t, 1e-3)
        s = self.service
        core = s.node.core
        sample = Sample(
            t=round(now, 3),
            commits=round((cur["commit"] - prev["commit"]) / dt, 2),
            writes=round((cur["writes"] - prev["writes"]) / dt, 2),
            reads=round((cur["reads"] - prev["reads"]) / dt, 2),
            p99_write_ms=_ms(quantile(LATENCY_BUCKETS, _delta(cur["lat_w"], prev["lat_w"]), 0.99)),
            p99_read_ms=_ms(quantile(LATENCY_BUCKETS, _delta(cur["lat_r"], prev["lat_r"]), 0.99)),
            p99_fsync_ms=_ms(quantile(LATENCY_BUCKETS, _delta(cur["fsync"], prev["fsync"]), 0.99)),
            sessions=s.ns.session_count,
            connections=len(s.connections),
            nodes=s.ns.node_count,
            term=core.term,
            leader=core.leader_id,
            leader_changed=cur["leader_changes"] != prev["leader_changes"],
        )
        self.samples.append(sample)
        return sample

    def since(self, t: float) -> list[Sample]:
        """Samples newer than ``t`` (oldest first; at most the ring's size)."""
        out = []
        for smp in reversed(self.samples):
            if smp.t <= t:
                break
            out.append(smp)
        out.reverse()
        return out
