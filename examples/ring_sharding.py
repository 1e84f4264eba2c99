"""Workers sharding jobs with the consistent-hash ring.

Each worker joins the ring at ``/examples/ring`` and processes only the jobs
whose key it owns; a job's result is written with ``ring.fenced(key, ...)``,
so coord rejects it if the job's slice moved to another worker meanwhile.
When a worker joins or leaves, only about 1/N of the jobs change hands, and
the old owner gives a slice up (``on_revoke``) before the new one starts on
it (``on_assign``).

    pip install -e ./client
    export COORD_ENDPOINTS=127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183
    python examples/ring_sharding.py --workers 3 --jobs 60

The script runs the workers as tasks of one process (each with its own
session, as separate processes would have), stops one halfway, and checks
that every job was done exactly once.  Run it under Trio with ``--trio``.
"""

from __future__ import annotations

import argparse
import os

import anyio

from coordclient import Client, ops
from coordclient.errors import NodeExistsError
from coordclient.recipes import PartitionLostError

ROOT = "/examples/ring"


async def worker(endpoints: str, name: str, jobs: list[str], done: dict[str, str], stop: anyio.Event) -> None:
    moves = {"assigned": 0, "revoked": 0}

    def on_assign(partition: int, token: int) -> None:
        moves["assigned"] += 1

    def on_revoke(partition: int) -> None:
        moves["revoked"] += 1  # flush partial work for this slice here (bounded by handoff_timeout)

    async with Client(endpoints, session_timeout=10) as client:
        async with client.ring(f"{ROOT}/members-ring", name, partitions=32, vnodes=16, on_assign=on_assign,
                               on_revoke=on_revoke, handoff_timeout=2) as ring:
            while not stop.is_set():
                for key in jobs:
                    if key in done or not ring.owns(key):
                        continue
                    try:
                        # the result is recorded only while the key's slice is still ours
                        await ring.fenced(key, [ops.create(f"{ROOT}/results/{key}", name.encode())])
                        done[key] = name
                    except NodeExistsError:
                        done.setdefault(key, "?")  # done before a hand-off: nothing to redo
                    except PartitionLostError:
                        pass  # the slice moved on: its new owner does the job
                if len(done) == len(jobs):
                    break
                await anyio.sleep(0.05)
        print(f"{name}: {sum(1 for w in done.values() if w == name)} jobs, {moves}")


async def main(endpoints: str, workers: int, n_jobs: int) -> None:
    jobs = [f"job-{i}" for i in range(n_jobs)]
    async with Client(endpoints) as admin:
        if await admin.exists(f"{ROOT}/results") is not None:
            await admin.delete(f"{ROOT}/results", recursive=True)
        await admin.create(f"{ROOT}/results", make_parents=True)
        done: dict[str, str] = {}
        stops = [anyio.Event() for _ in range(workers)]
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(worker, endpoints, f"worker-{i}", jobs, done, stops[i])
            await anyio.sleep(1)
            stops[0].set()  # one worker leaves: its slices move to the others
            with anyio.fail_after(60):
                while len(done) < n_jobs:
                    await anyio.sleep(0.1)
            for s in stops:
                s.set()
        results = await admin.children(f"{ROOT}/results")
    assert sorted(results) == sorted(jobs), "a job was lost"
    print(f"all {n_jobs} jobs done exactly once by {workers} workers")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", default=os.environ.get("COORD_ENDPOINTS", "127.0.0.1:2181"))
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--trio", action="store_true", help="run on Trio instead of asyncio")
    args = ap.parse_args()
    anyio.run(main, args.endpoints, args.workers, args.jobs, backend="trio" if args.trio else "asyncio")
