"""The production driver in the simulation (tests/sim/driver.py).

Real ``RaftNode``s -- Trio loops, group commit, snapshots on the loop and by
"children", stepped installs -- on the simulated network and disk, through
the invariant checkers, then the liveness check.  A failure prints the
command that replays its seed: ``python -m tests.sim --driver --seed N -v``.

Also: the simulated disk keeps only what was fsync'd, and planted bugs (a
disk that acknowledges before fsync, one that reports a write twice) are
caught, so a clean sweep means something.
"""

import os
import random
import subprocess
import sys

import pytest

from coord.raft.types import Entry, HardState, Membership, Ready, Snapshot, SnapshotMeta
from coord.server.diskwriter import SaveSnapshot
from tests.sim.checkers import InvariantViolation
from tests.sim.driver import DriverSimulation
from tests.sim.params import crashy_profile
from tests.sim.runner import describe_failure, run_many
from tests.sim.simdisk import SimDisk, SimStorageError, SimStore

JOBS = max(1, min(2, os.cpu_count() or 1))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(seeds, profile="default"):
    failures = run_many(list(seeds), profile, None, jobs=JOBS, driver=True)
    if failures:
        pytest.fail(
            f"{len(failures)} failing seed(s):\n"
            + "\n".join(describe_failure(r, profile, driver=True) for r in failures),
            pytrace=False,
        )


def test_driver_default_seeds():
    """Every fault and workload at seed-chosen rates, through the real driver."""
    _check(range(0, 60))


def test_driver_crashy_seeds():
    """Servers crash many times a second, often together, with torn writes;
    each restarts a new RaftNode from what its simulated disk kept."""
    _check(range(2000, 2060), "crashy")


def test_driver_churn_seeds():
    """Membership changes and leadership transfers through the driver's API."""
    _check(range(1000, 1030), "churn")


def test_driver_lost_log_seeds():
    """Restarts on a damaged log with the recovery flag (item 0 of issue 11)."""
    _check(range(3000, 3030), "lossy")


@pytest.mark.parametrize("seed", [2154, 2166, 2254])
def test_seeds_that_found_driver_bugs(seed):
    """2166: a reply to a read asked before a restart released a read asked
    after it (read contexts were not unique per incarnation); 2154, 2254: a
    follower crashed snapshotting at entries its core had just replaced by
    the leader's snapshot.  (Regression tests of both: tests/test_raftnode.py.)"""
    _check([seed], "crashy")


@pytest.mark.parametrize("seed", [3167, 3323])
def test_lossy_seeds_that_found_core_bugs(seed):
    """3167: a server restarted on a shortened log while being sent a
    snapshot; heartbeat and snapshot replies did not say it was recovering,
    so the leader removed itself leaving voters {2, 3} with 3 unable to vote,
    stepped down before it had repaired 3, and no leader was ever elected
    again.  3323: the same change while the recovering voter, silent since
    its restart, had not said so yet; the leader then lost its quorum in the
    joint configuration.  (Regression tests: tests/test_raft_recovering.py.)"""
    _check([seed], "lossy")


def test_a_driver_seed_replays_identically():
    """Trio may run the nodes' tasks in any order; the run must not depend on it."""
    a = DriverSimulation(11, trace_len=400)
    sa = a.run()
    b = DriverSimulation(11, trace_len=400)
    sb = b.run()
    assert sa == sb
    assert a.format_trace() == b.format_trace()
    assert sa["proposals_acked"] > 0 and sa["elections"] >= 1 and sa["reads_ok"] > 0


def test_a_disk_that_acknowledges_before_fsync_is_caught():
    """A disk that lies must make the simulation fail, or a clean sweep proves
    nothing.  Crashes come often and keep nothing unsynced, so the lie shows;
    the same seeds without it are clean."""
    def params(seed):
        return crashy_profile(random.Random(seed)).replace(torn_write_prob=0.0, crash_rate=10.0,
                                                           disk_us=(2_000, 15_000))

    caught = []
    for seed in range(10):
        try:
            DriverSimulation(seed, params=params(seed), bug="ack-before-fsync").run()
        except InvariantViolation as e:
            caught.append(e.invariant)
    assert caught and set(caught) <= {"durability", "leader-completeness", "state-machine-safety", "log-matching",
                                      "linearizable-read", "proposal", "election-safety", "liveness"}, caught
    for seed in range(10):
        DriverSimulation(seed, params=params(seed)).run()


def test_a_disk_that_reports_a_write_twice_is_caught():
    """The driver then applies the same entries twice: the checker sees it."""
    failures = run_many(list(range(2000, 2004)), "crashy", None, jobs=1, driver=True, bug="double-ack")
    assert len(failures) == 4 and {r.invariant for r in failures} == {"state-machine-safety"}, failures


def test_the_command_line_replays_a_driver_seed():
    out = subprocess.run([sys.executable, "-m", "tests.sim", "--driver", "--seed", "3", "-v"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "seed 3: ok" in out.stdout and "proposals_acked" in out.stdout


# --- the simulated disk ------------------------------------------------------------

def ents(lo, hi, term=1):
    return [Entry(term, i, data=b"%d" % i) for i in range(lo, hi + 1)]


def snap(i, term=1):
    return Snapshot(SnapshotMeta(i, term, Membership(voters=frozenset({1}))), b"s%d" % i)


def test_the_sim_store_keeps_only_what_was_synced():
    st = SimStore()
    st.save(HardState(2, 1, 0), ents(1, 3, term=2), None)
    st.sync()
    st.save(HardState(2, 1, 3), ents(4, 6, term=2), None)
    st.crash(random.Random(0), torn_prob=0.0)  # power loss before the fsync
    hs, s, entries, refuse = st.recover()
    assert (hs.term, hs.vote, hs.commit) == (2, 1, 0) and s is None and refuse is None
    assert [e.index for e in entries] == [1, 2, 3]


def test_a_torn_write_keeps_a_prefix():
    for seed in range(20):
        st = SimStore()
        st.save(HardState(1, 1, 0), [], None)
        st.sync()
        st.save(None, ents(1, 1), None)
        st.save(None, ents(2, 2), None)
        st.save(None, ents(3, 3), None)
        st.crash(random.Random(seed), torn_prob=1.0)
        _, _, entries, _ = st.recover()
        assert [e.index for e in entries] == list(range(1, len(entries) + 1))


def test_the_sim_store_enforces_the_storage_contract():
    st = SimStore()
    st.save(HardState(1, 1, 0), ents(1, 5), None)
    with pytest.raises(SimStorageError):
        st.compact(3)  # no snapshot covers it: DiskStorage refuses too
    st.save_snapshot(snap(3))
    st.compact(3)
    st.sync()
    hs, s, entries, _ = st.recover()
    assert s.meta.index == 3 and [e.index for e in entries] == [4, 5]


def test_an_installed_snapshot_resets_a_log_that_does_not_continue_from_it():
    st = SimStore()
    st.save(HardState(1, 1, 0), ents(1, 5), None)
    st.save(HardState(3, 0, 9), [], snap(9, term=3))
    st.sync()
    hs, s, entries, _ = st.recover()
    assert s.meta.index == 9 and entries == [] and hs.commit == 9


def test_the_sim_disk_completes_runs_in_order_when_told():
    st = SimStore()
    done, kicks = [], []
    d = SimDisk(st, HardState(), None, kick=kicks.append)
    d.start(lambda b: done.append(b) or True, lambda e: done.append(e))
    d.submit([Ready(hard_state=HardState(1, 1, 0), entries=ents(1, 2))])
    d.submit([Ready(entries=ents(3, 3)), SaveSnapshot(snap(2), 2)])
    assert kicks == [d, d] and not done
    assert d.pick_up() == 1  # both batches in one run: one fsync, then the snapshot file
    assert not done and st.unsynced
    d.complete()
    assert len(done) == 1 and len(done[0]) == 3 and not st.unsynced
    assert d.idle
