"""Counters and histograms that hot paths bump: plain integers, no locks.

The server runs in one Trio thread, so a counter is an ``int`` attribute
and a histogram is a list of bucket counts: an increment costs a few
hundred nanoseconds, against the microseconds a Prometheus client metric
with its lock would cost on every request.  Nothing here knows about
Prometheus or HTTP; ``coord.observe.metrics`` turns these objects into
metric families when /metrics is scraped, and ``coord.observe.ring`` takes
per-second differences of them for the dashboard's charts.

Everything that can be read from the server's state at scrape time (term,
indexes, session counts, ...) is *not* counted here but pulled then.  This
module only holds what cannot be pulled: events (elections, dropped
proposals) and durations (fsync, requests).

Call sites, one line each (re-apply them after a merge):

* ``RaftNode.__init__``: ``self.obs = RaftStats(self.core)``, handed to the ``DiskWriter``
* ``RaftNode._process_ready``: ``self.obs.observe_core(core)`` at a soft state change (elections, leader changes)
* ``DiskWriter.write_batch`` (disk thread): ``fsync_done`` around ``store.save``
* ``RaftNode._take_proposals`` / ``_apply`` / ``_main_loop``: ``proposals_*``
* ``RaftNode._maybe_snapshot`` / ``_after_persist``: ``snapshot_taken`` / ``snapshots_installed``
* ``CoordService.__init__``: ``self.obs = ServiceStats()``; ``_start_barrier``: ``lin_batch``
* ``ClientConnection._serve`` / ``_finish_read`` / ``_try_inline`` / ``_start_write`` / ``_finish_write``: ``request``
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterable

from coord.raft.types import Role
from coordclient.protocol import Op

# Seconds: 100 us .. 10 s, roughly x2 / x2.5 steps (latencies of a local
# read are ~30 us, of a replicated write ~1-5 ms, of a bad fsync ~seconds).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Entries per disk write (group commit): 1 .. 4096.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# Request ops are a label: only these values, so a client sending nonsense
# ops cannot create unbounded series.  Outcomes are "ok" or an error code.
KNOWN_OPS = frozenset(op.value for op in Op)
WRITE_OPS = frozenset({"create", "set", "delete", "multi"})
READ_OPS = frozenset({"get", "exists", "children", "sync"})


class Histogram:
    """Fixed buckets, Prometheus semantics (a bucket counts values <= its
    bound; the last one, +Inf, everything)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(bounds)
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with +Inf, for exposition."""
        out, acc = [], 0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            out.append((repr(float(bound)), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The q-quantile of bucketed counts, interpolated linearly inside the
    bucket as Prometheus' ``histogram_quantile`` does; None without data.
    Values in the +Inf bucket are reported as the highest bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    acc = 0
    for i, n in enumerate(counts):
        if n and acc + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lo = 0.0 if i == 0 else float(bounds[i - 1])
            return lo + (float(bounds[i]) - lo) * (rank - acc) / n
        acc += n
    return float(bounds[-1])


class RaftStats:
    """Events of one server's Raft driver.

    Elections and leader changes are inferred from the core's state after
    each loop iteration (``observe_core``), which keeps the core free of any
    observation code: a term that went up with our own vote in it is an
    election we started (pre-votes do not count: they do not change the
    term), becoming leader in a new term is an election won.
    """

    def __init__(self, core: Any) -> None:
        self._term = core.term
        self._leader = core.leader_id
        self._won_term = core.term if core.role is Role.LEADER else -1
        self._node_id = core.node_id
        self.elections_started = 0
        self.elections_won = 0
        self.leader_changes = 0
        self.proposals_committed = 0
        self.proposals_dropped = 0
        self.fsync = Histogram(LATENCY_BUCKETS)  # written by the disk thread only
        self.append_batch = Histogram(BATCH_BUCKETS)  # entries per fsync'd write (disk thread)
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        self.snapshot_seconds = Histogram(LATENCY_BUCKETS)
        self.snapshot_bytes = 0  # size of the last snapshot taken or installed
        self.snapshot_pause = 0.0  # how long the last snapshot held the event loop (a fork, or all of it)

    def observe_core(self, core: Any) -> None:
        term = core.term
        if term != self._term:
            if core.vote == self._node_id:
                self.elections_started += 1
            self._term = term
        if core.role is Role.LEADER and self._won_term != term:
            self._won_term = term
            self.elections_won += 1
        leader = core.leader_id
        if leader != self._leader:
            self._leader = leader
            if leader:
                self.leader_changes += 1

    def proposal_done(self, committed: bool) -> None:
        """A proposal made here was applied (``committed``) or overwritten by another term's entry."""
        if committed:
            self.proposals_committed += 1
        else:
            self.proposals_dropped += 1

    def fsync_done(self, started: float, entries: int) -> None:
        """Disk thread: one durable write of ``entries`` entries took since ``started``."""
        self.fsync.observe(time.perf_counter() - started)
        if entries:
            self.append_batch.observe(entries)

    def snapshot_taken(self, started: float, size: int) -> None:
        self.snapshots_taken += 1
        self.snapshot_seconds.observe(time.perf_counter() - started)
        self.snapshot_bytes = size

    def snapshot_paused(self, seconds: float) -> None:
        self.snapshot_pause = seconds

    def snapshot_installed(self, size: int) -> None:
        self.snapshots_installed += 1
        self.snapshot_bytes = size


class ServiceStats:
    """Client requests and service events of one server."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (op, outcome) -> count
        self.latency: dict[str, Histogram] = {}  # op -> seconds
        self.lin_batches = 0  # shared ReadIndex barriers taken for linearizable reads
        self.lin_reads = 0  # linearizable reads answered through them
        self.denied = 0  # requests refused for missing permission (ACL or admin rule)

    def request(self, op: Any, resp: dict, started: float) -> None:
        """One answered request: its op, its outcome (``ok`` or the error
        code) and how long it took since ``started`` (``time.perf_counter``)."""
        if type(op) is not str or op not in KNOWN_OPS:
            op = "other"
        outcome = "ok" if resp.get("ok") else str(resp.get("err") or "error")
        key = (op, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.get(op)
        if h is None:
            h = self.latency[op] = Histogram(LATENCY_BUCKETS)
        h.observe(time.perf_counter() - started)

    def lin_batch(self, reads: int) -> None:
        self.lin_batches += 1
        self.lin_reads += reads

    def count(self, ops: frozenset[str]) -> int:
        """Requests answered (any outcome) whose op is in ``ops``."""
        return sum(n for (op, _), n in self.requests.items() if op in ops)

    def merged_latency(self, ops: frozenset[str]) -> list[int]:
        """Bucket counts of the latency of ``ops`` together."""
        out = [0] * (len(LATENCY_BUCKETS) + 1)
        for op, h in self.latency.items():
            if op in ops:
                for i, n in enumerate(h.counts):
                    out[i] += n
        return out
