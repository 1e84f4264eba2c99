"""Lock handoffs per second: N clients contending for one coord lock.

Every client loops on ``async with Lock(client, path)`` with an empty body
(or, with ``--fenced``, one fenced write per hold), so the lock is always
wanted and each release hands it straight to the next waiter.  A handoff
costs the releaser's delete plus the woken waiter's listing and watch, all
through Raft for the writes.

    python bench/lock_handoff.py                          # starts 3 servers, 8 clients, 10 s
    python bench/lock_handoff.py --endpoints $COORD_ENDPOINTS --clients 8
    python bench/lock_handoff.py --processes              # one process per client

Without ``--endpoints`` it starts a 3-server ensemble configured like
``coord dev`` (tests/cluster.py) in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import trio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "client")]

from coordclient import Client, ops  # noqa: E402
from coordclient.recipes import Lock  # noqa: E402


async def contend(endpoints: str, path: str, seconds: float, fenced: bool, holds: list[float]) -> None:
    """Hold ``path`` as often as possible for ``seconds``; append each hold's start time."""
    async with Client(endpoints, session_timeout=10) as client:
        lock = Lock(client, path)
        with trio.move_on_after(seconds):
            while True:
                async with lock:
                    holds.append(time.monotonic())
                    if fenced:
                        await lock.fenced([ops.set(path, b"%d" % lock.fencing_token)])


async def in_process(args: argparse.Namespace, endpoints: str, path: str) -> list[float]:
    holds: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(args.clients):
            nursery.start_soon(contend, endpoints, path, args.seconds, args.fenced, holds)
    return holds


def in_processes(args: argparse.Namespace, endpoints: str, path: str) -> list[float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--endpoints", endpoints, "--path", path,
           "--seconds", str(args.seconds)] + (["--fenced"] if args.fenced else [])
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE) for _ in range(args.clients)]
    holds: list[float] = []
    for p in procs:
        out, _ = p.communicate(timeout=args.seconds + 60)
        holds += json.loads(out)
    return holds


def report(holds: list[float], args: argparse.Namespace) -> dict:
    holds.sort()
    # Measure over the steady state: from the first hold to the last.
    span = holds[-1] - holds[0] if len(holds) > 1 else float("nan")
    gaps = [b - a for a, b in zip(holds, holds[1:])]
    return {
        "clients": args.clients,
        "processes": args.processes,
        "fenced": args.fenced,
        "holds": len(holds),
        "handoffs_per_s": round((len(holds) - 1) / span, 1),
        "handoff_ms_p50": round(statistics.median(gaps) * 1000, 2),
        "handoff_ms_p99": round(statistics.quantiles(gaps, n=100)[98] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", help="an existing ensemble (default: start 3 local servers)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fenced", action="store_true", help="one fenced write per hold")
    parser.add_argument("--processes", action="store_true", help="one process per client")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        holds: list[float] = []
        trio.run(contend, args.endpoints, args.path, args.seconds, args.fenced, holds)
        print(json.dumps(holds))
        return

    cluster = None
    endpoints = args.endpoints
    if endpoints is None:
        from tests.cluster import Cluster

        cluster = Cluster(3, tempfile.mkdtemp(prefix="coord-lock-bench-"), log_level="warning").start()
        trio.run(cluster.wait_leader)
        endpoints = cluster.endpoints
    path = f"/bench/lock-{os.getpid()}-{int(time.time())}"
    try:
        holds = in_processes(args, endpoints, path) if args.processes else trio.run(in_process, args, endpoints, path)
    finally:
        if cluster is not None:
            cluster.close()
    result = report(holds, args)
    print(f"{result['handoffs_per_s']} lock handoffs/s with {args.clients} contending clients "
          f"({'processes' if args.processes else 'one process'}{', fenced write per hold' if args.fenced else ''}); "
          f"handoff p50 {result['handoff_ms_p50']} ms, p99 {result['handoff_ms_p99']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
