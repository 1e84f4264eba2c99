"""Soak: ``python -m tests.faults --seeds 200 --duration 20``.

Runs one schedule per seed (seeds ``--first`` .. ``--first + --seeds - 1``),
prints each seed's verdict as it finishes and a summary at the end; the
exit status is 1 if any seed found a violation.  Failed runs save their
history (and the servers' logs) under ``--save-dir`` and print the path.
``--check FILE`` re-runs the checkers on a saved history instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import trio

from tests.faults.checkers import SESSION_EXPIRED_UNSEEN
from tests.faults.nemesis import FAULTS
from tests.faults.run import recheck, run_schedule


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: the schedule's ``finally`` then stops the servers it
    started (SIGTERM's default would leave them running, orphaned).  Relayed
    as SIGINT, whose handler Trio installs and runs at a safe point (an
    exception raised from here could land inside Trio's own bookkeeping)."""
    os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10, help="how many schedules")
    ap.add_argument("--first", type=int, default=1, help="first seed")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of faults per schedule")
    ap.add_argument("--faults", default=",".join(sorted(FAULTS)),
                    help=f"comma-separated fault kinds (default: all of {', '.join(sorted(FAULTS))})")
    ap.add_argument("--save-dir", default=None, help="where failing histories go (default: $TMPDIR/coord-faults)")
    ap.add_argument("--keep", action="store_true", help="save every history, not only failing ones")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the nemesis timeline as it happens")
    ap.add_argument("--check", metavar="FILE", help="re-check a saved history and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("coordclient").setLevel(logging.ERROR)  # expiries are expected under faults
    if args.check:
        v = recheck(args.check)
        print(v.line())
        return 1 if v.ok is False else 0
    kinds = [k for k in args.faults.split(",") if k]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        ap.error(f"unknown fault kinds: {unknown}")
    faults = {k: FAULTS[k] for k in kinds}
    tally = {True: 0, False: 0, None: 0}
    bad: list[int] = []
    known = 0  # violations that are all of the known kind (see checkers.SESSION_EXPIRED_UNSEEN)
    t0 = time.monotonic()
    for seed in range(args.first, args.first + args.seeds):
        v = trio.run(lambda: run_schedule(seed, args.duration, faults=faults, save_dir=args.save_dir,
                                          keep=args.keep, log=print if args.verbose else None))
        tally[v.ok] += 1
        if v.ok is not True:
            bad.append(seed)
        if v.ok is False and all(SESSION_EXPIRED_UNSEEN in x for x in v.violations):
            known += 1
        print(v.line(), flush=True)
    print(f"summary: {args.seeds} seeds in {time.monotonic() - t0:.0f}s: {tally[True]} ok, {tally[False]} "
          f"violation ({known} only '{SESSION_EXPIRED_UNSEEN}'), {tally[None]} no verdict"
          + (f"; seeds to look at: {bad}" if bad else ""), flush=True)
    return 1 if tally[False] else 0


if __name__ == "__main__":
    # SIGINT may come ignored (a background job of a non-interactive shell,
    # as CI runs it): Trio then installs no handler, and Ctrl-C, SIGTERM too,
    # would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = main()
    except BaseException as e:  # noqa: BLE001 - Trio may deliver the interrupt inside an exception group
        interrupted = isinstance(e, KeyboardInterrupt) or (
            isinstance(e, BaseExceptionGroup) and e.subgroup(KeyboardInterrupt) is not None)
        if not interrupted:
            raise
        print("interrupted: the servers of the running schedule were stopped", file=sys.stderr, flush=True)
        code = 130
    sys.exit(code)
