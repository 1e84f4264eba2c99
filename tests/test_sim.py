"""Deterministic simulation of the Raft core: hundreds of seeded clusters.

Each seed runs a whole cluster (crashes with torn writes, partitions, loss,
duplication, reordering, membership churn, leadership transfers, reads)
through the invariant checkers, then checks recovery once the faults stop.
A failure message carries the command that replays the seed with a trace:
``python -m tests.sim --seed N -v``.

The seeds run in a small process pool (both cores of a CI machine); the
whole file takes about a minute there.
"""

import os
import subprocess
import sys

import pytest

from tests.sim.runner import describe_failure, repro_command, run_many, run_seed
from tests.sim.simulation import Simulation

JOBS = max(1, min(2, os.cpu_count() or 1))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(seeds, profile="default", fault_seconds=None):
    failures = run_many(list(seeds), profile, fault_seconds, jobs=JOBS)
    if failures:
        pytest.fail(
            f"{len(failures)} failing seed(s):\n"
            + "\n".join(describe_failure(r, profile, fault_seconds) for r in failures),
            pytrace=False,
        )


@pytest.mark.parametrize("start", range(0, 500, 100))
def test_default_seeds(start):
    """Seeds 0..499 of the default profile: every fault and workload at seed-chosen rates."""
    _check(range(start, start + 100))


def test_membership_churn_seeds():
    """Reconfigurations (joint consensus, leader removal, learners joining)
    and leadership transfers several times a second."""
    _check(range(1000, 1040), "churn")


def test_crash_heavy_seeds():
    """Servers crash many times a second, often all together, losing
    unsynced writes or keeping a torn prefix of them."""
    _check(range(2000, 2100), "crashy")


def test_lost_log_suffix_with_the_recovery_flag_seeds():
    """A restarting server finds part of its log gone (a cut or deleted WAL
    file) and rejoins with the operator's recovery flag: it neither votes nor
    campaigns until a leader has given it everything back."""
    _check(range(3000, 3150), "lossy")


def test_lost_log_suffix_without_the_flag_loses_committed_entries():
    """The same damage, but the server votes at once on its shorter log (as
    coord did before it recorded its WAL's extent): the checkers must see
    committed entries lost.  This is what the flag, and refusing to start
    without it, prevent."""
    failures = run_many(list(range(3000, 3040)), "silent-loss", None, jobs=JOBS)
    assert any(r.invariant in ("leader-completeness", "state-machine-safety", "durability") for r in failures), \
        [(r.seed, r.invariant) for r in failures]


def test_a_seed_replays_identically():
    """The whole point of a seed: the same seed gives the same run."""
    a = Simulation(7, trace_len=500)
    sa = a.run()
    b = Simulation(7, trace_len=500)
    sb = b.run()
    assert sa == sb
    assert a.format_trace() == b.format_trace()
    assert sa["committed"] > 0 and sa["elections"] >= 1


def test_steps_bound_the_fault_phase():
    r = run_seed(3, steps=2_000)
    assert r.ok, r.message
    assert r.stats["events"] >= 2_000


def test_repro_command_names_every_option():
    assert repro_command(12) == "python -m tests.sim --seed 12 -v"
    assert repro_command(12, "churn", 1.5) == "python -m tests.sim --seed 12 --profile churn --sim-seconds 1.5 -v"
    assert repro_command(3, steps=500) == "python -m tests.sim --seed 3 --steps 500 -v"


def test_command_line_runs_a_sweep():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "tests.sim", "--seeds", "3", "--start", "10", "--sim-seconds", "0.5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 seeds, 0 violations" in out.stdout
