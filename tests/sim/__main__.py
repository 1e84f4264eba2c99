"""Command line: ``python -m tests.sim --seeds 10000 [--start 0] [--jobs 2]``
runs a sweep; ``python -m tests.sim --seed K -v`` replays one seed and prints
its event trace (the last ``--trace`` events before the failure).  With
``--driver`` the seeds run the production driver (RaftNode, driver.py)
instead of the bare Raft core: ``python -m tests.sim --driver --seeds 200
--first 0 --profile crashy``, ``python -m tests.sim --driver --seed K -v``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .params import PROFILES
from .runner import describe_failure, run_many, run_seed
from .simdisk import BUGS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="number of seeds to run (default 100)")
    ap.add_argument("--start", "--first", dest="start", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--seed", type=int, help="run only this seed")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="default")
    ap.add_argument("--driver", action="store_true",
                    help="run the production driver (coord.server.raftnode.RaftNode) on the simulated "
                         "network and disk, instead of the bare Raft core")
    ap.add_argument("--bug", choices=BUGS, help="with --driver: plant a disk bug (the run should fail)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--sim-seconds", type=float, help="length of the fault phase in simulated seconds")
    g.add_argument("--steps", type=int, help="length of the fault phase in events")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1; 0 = one per CPU)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the event trace of a failure "
                    "(and statistics of a single seed)")
    ap.add_argument("--trace", type=int, default=200, help="events kept for the trace (default 200)")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failing seed")
    ap.add_argument("--failures-dir", default="sim-failures",
                    help="where the traces of failing seeds of a sweep are written (default sim-failures/)")
    a = ap.parse_args(argv)
    if a.driver:
        # The driver logs what a server would (elections, snapshots, failed
        # children): noise in a sweep, whose report is the seeds.
        logging.getLogger("coord").addHandler(logging.NullHandler())
        logging.getLogger("coord").propagate = False

    t0 = time.perf_counter()
    if a.seed is not None:
        r = run_seed(a.seed, a.profile, a.sim_seconds, a.steps, a.trace, a.driver, a.bug)
        if r.ok:
            print(f"seed {a.seed}: ok ({r.seconds:.2f}s)")
            if a.verbose:
                for k, v in sorted(r.stats.items()):
                    print(f"  {k}: {v}")
            return 0
        print(describe_failure(r, a.profile, a.sim_seconds, a.steps, a.driver, a.bug))
        if a.verbose:
            print(f"\n--- last {a.trace} events ---\n{r.trace}\n--- cluster at the failure ---\n{r.status}")
        return 1

    jobs = a.jobs if a.jobs > 0 else (os.cpu_count() or 1)
    seeds = list(range(a.start, a.start + a.seeds))
    what = "the driver" if a.driver else "the core"
    print(f"running seeds {seeds[0]}..{seeds[-1]} of {what} (profile {a.profile}, {jobs} job(s))", flush=True)
    failures = run_many(seeds, a.profile, a.sim_seconds, a.steps, jobs=jobs, progress=True,
                        fail_fast=a.fail_fast, driver=a.driver, bug=a.bug)
    if failures and a.failures_dir:
        os.makedirs(a.failures_dir, exist_ok=True)
        for r in failures:
            path = os.path.join(a.failures_dir, f"{'driver-' if a.driver else ''}seed-{r.seed}.txt")
            with open(path, "w") as f:
                f.write(describe_failure(r, a.profile, a.sim_seconds, a.steps, a.driver, a.bug) + "\n\n")
                f.write(f"--- last events ---\n{r.trace}\n--- cluster at the failure ---\n{r.status}\n")
        print(f"traces written to {a.failures_dir}/")
    el = time.perf_counter() - t0
    print(f"{len(seeds)} seeds, {len(failures)} violations, {el:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
