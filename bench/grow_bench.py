"""How long does growing an ensemble from 3 to 5 servers take, with data in
it, and how long does a writer stall meanwhile?

Starts 3 servers (tests/cluster.py, fsync on), loads N nodes of 100 bytes
(multis of 500 creates), starts a writer that creates a node every 10 ms and
records the longest gap between two acknowledged writes, then grows to 5 the
way an operator does: both new servers join as learners in one change, catch
up (snapshot + log), and are promoted in one joint-consensus step.

    python bench/grow_bench.py --nodes 100000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coordclient import Client, ops  # noqa: E402
from coordclient.admin import AdminClient  # noqa: E402
from coordclient.errors import CoordError  # noqa: E402
from tests.cluster import Cluster  # noqa: E402


async def load(endpoints: str, nodes: int, batch: int = 500, parallel: int = 8) -> float:
    t0 = time.perf_counter()
    value = b"x" * 100
    async with Client(endpoints, session_timeout=20) as c:
        await c.create("/data", b"")
        starts = list(range(0, nodes, batch))

        async def worker(k: int) -> None:
            for s in starts[k::parallel]:
                await c.multi([ops.create(f"/data/n{i:07d}", value) for i in range(s, min(nodes, s + batch))])

        async with trio.open_nursery() as n:
            for k in range(parallel):
                n.start_soon(worker, k)
    return time.perf_counter() - t0


async def run(args) -> dict:
    base = tempfile.mkdtemp(prefix="coord-grow-")
    with Cluster(3, base, spare=2, log_level="warning") as cluster:
        cluster.start()
        await cluster.wait_leader()
        load_s = await load(cluster.endpoints, args.nodes)
        admin = AdminClient(cluster.endpoints_of(range(1, 6)), timeout=60)
        stats = {"acked": 0, "max_gap": 0.0, "stop": False}

        async def writer(task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with Client(cluster.endpoints, session_timeout=10) as c:
                await c.create("/w", b"")
                task_status.started()
                last = time.perf_counter()
                n = 0
                while not stats["stop"]:
                    n += 1
                    try:
                        await c.create(f"/w/{n}", b"")
                    except CoordError:
                        continue
                    now = time.perf_counter()
                    stats["max_gap"] = max(stats["max_gap"], now - last)
                    last = now
                    stats["acked"] += 1
                    await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            await nursery.start(writer)
            await trio.sleep(1.0)
            stats["max_gap"] = 0.0
            t0 = time.perf_counter()
            for sid in (4, 5):
                cluster.start_joining(sid)
            st = await admin.leader_status()
            await admin.change(add_learners=[cluster.addrs(4), cluster.addrs(5)], version=st["config_version"])
            t_learners = time.perf_counter()
            await admin.wait_caught_up([4, 5], timeout=600)
            t_caught_up = time.perf_counter()
            st = await admin.promote(4, 5)
            t_done = time.perf_counter()
            await trio.sleep(1.0)
            stats["stop"] = True
        assert st["voters"] == [1, 2, 3, 4, 5], st
        sts = await cluster.statuses()
        return {
            "nodes": args.nodes,
            "load_seconds": round(load_s, 1),
            "grow_seconds_total": round(t_done - t0, 2),
            "learners_added_seconds": round(t_learners - t0, 2),
            "catch_up_seconds": round(t_caught_up - t_learners, 2),
            "joint_change_seconds": round(t_done - t_caught_up, 3),
            "writer_acked": stats["acked"],
            "longest_write_gap_ms": round(1000 * stats["max_gap"], 1),
            "node_counts": {sid: s["nodes"] for sid, s in sorted(sts.items())},
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100_000)
    args = ap.parse_args()
    res = trio.run(run, args)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
