"""Knobs of one simulation run, and the profiles that draw them from a seed.

A profile is a function of the seed's Random: each seed gets its own mix
of cluster size, Raft tunables, network quality and fault rates, so a sweep
over seeds also sweeps the configuration space.  Rates are per simulated
second; durations are in microseconds of simulated time.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from coord.raft.config import RaftConfig


@dataclass
class SimParams:
    n_initial: int = 3
    max_nodes: int = 8  # servers ever created, joiners included
    max_voters: int = 5
    fault_us: int = 2_000_000  # length of the fault phase
    liveness_us: int = 10_000_000  # bound for recovery after the fault phase
    tick_us: int = 10_000
    tick_drift: float = 0.05  # each node's clock runs up to this much fast or slow
    raft: RaftConfig = field(default_factory=lambda: RaftConfig(election_ticks=10, heartbeat_ticks=2))
    # Network.
    delay_us: tuple[int, int] = (300, 8_000)
    long_delay_prob: float = 0.03
    long_delay_us: int = 80_000
    drop_prob: float = 0.01
    dup_prob: float = 0.01
    # Disk.
    disk_us: tuple[int, int] = (100, 4_000)
    torn_write_prob: float = 0.5  # on crash: keep a random prefix of the unsynced writes
    snapshot_every: tuple[int, int] = (20, 200)
    snapshot_pad: int = 200
    drop_log_prob: float = 0.7  # a local snapshot also drops the covered durable log
    # Workload (per simulated second).
    propose_rate: float = 80.0
    batch_prob: float = 0.15
    read_rate: float = 20.0
    member_rate: float = 2.0
    transfer_rate: float = 1.0
    # Faults (per simulated second).
    crash_rate: float = 1.0
    total_crash_prob: float = 0.05  # a crash event takes down every server
    downtime_us: tuple[int, int] = (10_000, 800_000)
    partition_rate: float = 1.0
    partition_us: tuple[int, int] = (50_000, 1_000_000)
    burst_rate: float = 0.5
    burst_us: tuple[int, int] = (20_000, 300_000)
    # Driver hints (RaftCore.peer_unreachable): after a crash, each live server
    # may be told the crashed one is gone (a refused connect); and now and then
    # a wrong hint about a live peer, which must cost nothing but an election.
    unreachable_hint_prob: float = 0.6
    spurious_hint_per_tick: float = 0.0005
    # Disk damage: a restarting server finds a suffix of its durable log gone
    # (a cut or deleted WAL segment) and the operator starts it anyway with
    # the recovery flag (``recovering`` in its hard state).  Only where the
    # cluster can survive it: at least three voters and no other server
    # still recovering.  ``log_loss_recover=False`` models a server that
    # starts silently on the shorter log (what coord did before it recorded
    # the WAL's extent): tests show that loses committed entries.
    log_loss_prob: float = 0.0
    log_loss_recover: bool = True

    def replace(self, **kw) -> "SimParams":
        return dataclasses.replace(self, **kw)


def _raft_config(rng: random.Random) -> RaftConfig:
    """Tunables that change code paths: batching limits force multi-message
    catch-up, small windows force pipelining stalls, tiny chunks force
    multi-chunk snapshot transfers; pre-vote/check-quorum are sometimes off
    (safety must not depend on them).

    Tiny messages are only paired with small in-flight windows: a 256-message
    window of one-entry appends under 15% loss is go-back-N at its worst
    (every loss resends the window), which costs minutes of CPU per seed and
    exercises nothing a smaller window does not."""
    max_entries = rng.choice((1, 3, 16, 1024))
    max_bytes = rng.choice((100, 2_000, 1 << 20))
    tiny = max_entries <= 3 or max_bytes <= 100
    return RaftConfig(
        election_ticks=10,
        heartbeat_ticks=rng.choice((1, 2, 2, 3)),
        pre_vote=rng.random() < 0.85,
        check_quorum=rng.random() < 0.85,
        max_append_entries=max_entries,
        max_append_bytes=max_bytes,
        max_inflight_msgs=rng.choice((1, 4, 16) if tiny else (1, 4, 256)),
        max_inflight_bytes=rng.choice((500, 32 << 20)),
        snapshot_chunk_bytes=rng.choice((16, 64, 1 << 20)),
        transfer_timeout_ticks=20,
    )


def default_profile(rng: random.Random) -> SimParams:
    """Everything at once, at moderate and seed-dependent rates."""
    return SimParams(
        n_initial=rng.choice((1, 2, 3, 3, 3, 4, 5, 5)),
        raft=_raft_config(rng),
        delay_us=(rng.randint(100, 1_000), rng.randint(2_000, 15_000)),
        long_delay_prob=rng.choice((0.0, 0.02, 0.1)),
        drop_prob=rng.choice((0.0, 0.01, 0.05, 0.15)),
        dup_prob=rng.choice((0.0, 0.01, 0.05)),
        disk_us=(rng.randint(50, 500), rng.randint(1_000, 10_000)),
        torn_write_prob=rng.choice((0.0, 0.5, 1.0)),
        snapshot_every=rng.choice(((20, 200), (5, 30), (100, 400))),
        propose_rate=rng.choice((30.0, 80.0, 200.0)),
        read_rate=rng.choice((5.0, 20.0, 60.0)),
        member_rate=rng.choice((0.0, 1.0, 3.0)),
        transfer_rate=rng.choice((0.0, 1.0, 3.0)),
        crash_rate=rng.choice((0.0, 0.5, 2.0)),
        partition_rate=rng.choice((0.0, 1.0, 2.0)),
        burst_rate=rng.choice((0.0, 0.5)),
    )


def churn_profile(rng: random.Random) -> SimParams:
    """Membership changes and leadership transfers all the time."""
    p = default_profile(rng)
    return p.replace(n_initial=rng.choice((1, 3, 3, 5)), max_nodes=10, member_rate=12.0,
                     transfer_rate=4.0, crash_rate=rng.choice((0.0, 1.0)))


def crashy_profile(rng: random.Random) -> SimParams:
    """Servers crash constantly, often all at once, often with torn writes."""
    p = default_profile(rng)
    return p.replace(n_initial=rng.choice((3, 5)), crash_rate=5.0, total_crash_prob=0.15,
                     torn_write_prob=0.8, downtime_us=(2_000, 150_000),
                     disk_us=(500, 15_000))


def lossy_profile(rng: random.Random) -> SimParams:
    """Crashes after which a server's disk lost part of its log."""
    p = crashy_profile(rng)
    return p.replace(n_initial=rng.choice((3, 3, 5)), crash_rate=3.0, log_loss_prob=0.5)


def silent_loss_profile(rng: random.Random) -> SimParams:
    """As ``lossy``, but the damaged server starts silently on the shorter log
    and votes at once: what the recovery flag exists to prevent.  Expected to
    break safety (tests/test_sim.py checks that it does)."""
    return lossy_profile(rng).replace(log_loss_recover=False)


def calm_profile(rng: random.Random) -> SimParams:
    """No faults and no churn: a steady cluster (baseline and benchmarks)."""
    p = default_profile(rng)
    return p.replace(drop_prob=0.0, dup_prob=0.0, member_rate=0.0, transfer_rate=0.0,
                     crash_rate=0.0, partition_rate=0.0, burst_rate=0.0)


PROFILES = {
    "default": default_profile,
    "churn": churn_profile,
    "crashy": crashy_profile,
    "lossy": lossy_profile,
    "silent-loss": silent_loss_profile,
    "calm": calm_profile,
}
