"""Running seeds: one at a time, or many in parallel, with reproducible reports."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

from .checkers import InvariantViolation


@dataclass
class SeedResult:
    seed: int
    ok: bool
    kind: str = ""  # "violation" (a checker fired) or "error" (an exception escaped)
    invariant: str = ""
    message: str = ""
    trace: str = ""
    status: str = ""
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0


def repro_command(seed: int, profile: str = "default", fault_seconds: float | None = None,
                  steps: int | None = None, driver: bool = False, bug: str | None = None) -> str:
    """The exact command that replays ``seed`` with an event trace."""
    cmd = f"python -m tests.sim {'--driver ' if driver else ''}--seed {seed}"
    if bug:
        cmd += f" --bug {bug}"
    if profile != "default":
        cmd += f" --profile {profile}"
    if fault_seconds is not None:
        cmd += f" --sim-seconds {fault_seconds:g}"
    if steps is not None:
        cmd += f" --steps {steps}"
    return cmd + " -v"


def run_seed(seed: int, profile: str = "default", fault_seconds: float | None = None,
             steps: int | None = None, trace_len: int = 200, driver: bool = False,
             bug: str | None = None) -> SeedResult:
    """Run one seed; never raises (the result says what went wrong).
    ``driver``: run the production driver (driver.py) instead of the bare
    core (simulation.py); ``bug``: a planted disk bug (simdisk.BUGS)."""
    t0 = time.perf_counter()
    if driver:
        from .driver import DriverSimulation

        sim = DriverSimulation(seed, profile, fault_seconds=fault_seconds, steps=steps, trace_len=trace_len,
                               bug=bug)
    else:
        from .simulation import Simulation

        sim = Simulation(seed, profile, fault_seconds=fault_seconds, steps=steps, trace_len=trace_len)
    try:
        stats = sim.run()
    except InvariantViolation as e:
        return SeedResult(seed, False, "violation", e.invariant, e.detail, sim.format_trace(),
                          sim.status(), sim.summary(), time.perf_counter() - t0)
    except Exception as e:  # the core (or the simulator) crashed: just as reproducible
        return SeedResult(seed, False, "error", type(e).__name__, f"{e}\n{traceback.format_exc()}",
                          sim.format_trace(), sim.status(), sim.summary(), time.perf_counter() - t0)
    return SeedResult(seed, True, stats=stats, seconds=time.perf_counter() - t0)


def describe_failure(r: SeedResult, profile: str = "default", fault_seconds: float | None = None,
                     steps: int | None = None, driver: bool = False, bug: str | None = None) -> str:
    return (f"seed {r.seed}: {r.kind} [{r.invariant}] {r.message}\n"
            f"  reproduce: {repro_command(r.seed, profile, fault_seconds, steps, driver, bug)}")


def _job(args: tuple) -> SeedResult:
    seed, profile, fault_seconds, steps, trace_len, driver, bug = args
    r = run_seed(seed, profile, fault_seconds, steps, trace_len, driver, bug)
    if r.ok:
        r.stats = {}  # keep the inter-process traffic small
    return r


def run_many(seeds: list[int], profile: str = "default", fault_seconds: float | None = None,
             steps: int | None = None, jobs: int = 1, progress: bool = False,
             fail_fast: bool = False, out=sys.stdout, driver: bool = False,
             bug: str | None = None) -> list[SeedResult]:
    """Run ``seeds`` (in ``jobs`` processes) and return the failed results, in seed order."""
    work = [(s, profile, fault_seconds, steps, 200, driver, bug) for s in seeds]
    failures: list[SeedResult] = []
    done = 0
    t0 = time.perf_counter()
    step = max(1, len(seeds) // 20)

    def consume(r: SeedResult) -> bool:
        nonlocal done
        done += 1
        if not r.ok:
            failures.append(r)
            print(describe_failure(r, profile, fault_seconds, steps, driver, bug), file=out, flush=True)
        if progress and (done % step == 0 or done == len(seeds)):
            el = time.perf_counter() - t0
            print(f"  {done}/{len(seeds)} seeds, {len(failures)} violations, {el:.1f}s", file=out, flush=True)
        return fail_fast and not r.ok

    if jobs <= 1:
        for w in work:
            if consume(_job(w)):
                break
    else:
        ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        with ctx.Pool(jobs) as pool:
            for r in pool.imap_unordered(_job, work, chunksize=4):
                if consume(r):
                    pool.terminate()
                    break
    failures.sort(key=lambda r: r.seed)
    return failures
