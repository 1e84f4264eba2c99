#!/usr/bin/env python3
"""What one Prometheus scrape of /metrics costs a server, measured directly.

W1P (``bench/bench.py --workloads W1,W1P --http``) compares write
throughput with and without a scrape every second, but a 1 s scrape costs
so little that the difference is inside W1's run-to-run noise (about ±5%
here).  This measures the cost itself: a 3-server ensemble (fsync on), some
traffic of every kind so that every labelled series exists, then N scrapes
of one server's /metrics one after another, and that server's CPU time
(utime+stime from /proc) divided by N.  Multiply by the servers scraped and
the scrape rate to get the share of a workload's server CPU::

    python bench/scrape_cost.py            # 200 scrapes
    python bench/scrape_cost.py --scrapes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "client")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench import CLK_TCK, proc_ticks  # noqa: E402  (bench/bench.py: this directory is sys.path[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scrapes", type=int, default=200)
    args = ap.parse_args()

    import trio
    from coordclient import Client

    from tests.cluster import Cluster

    cluster = Cluster(3, tempfile.mkdtemp(prefix="coord-scrape-"), http=True, log_level="warning")
    with cluster:
        cluster.start()
        trio.run(cluster.wait_leader)

        async def traffic() -> None:
            async with Client(cluster.endpoints) as c:
                await c.create("/scrape", b"")
                for _ in range(300):
                    await c.set("/scrape", b"v")
                    await c.get("/scrape")
                    await c.exists("/absent")
                    await c.children("/")

        trio.run(traffic)
        url = f"http://127.0.0.1:{cluster.http_ports[1]}/metrics"
        pid = cluster.procs[1].pid
        body = urllib.request.urlopen(url, timeout=10).read()
        t0, w0 = proc_ticks(pid), time.monotonic()
        for _ in range(args.scrapes):
            urllib.request.urlopen(url, timeout=10).read()
        cpu = (proc_ticks(pid) - t0) / CLK_TCK
        wall = time.monotonic() - w0
    out = {"scrapes": args.scrapes, "bytes": len(body), "series_lines": body.count(b"\n"),
           "server_cpu_ms_per_scrape": round(cpu / args.scrapes * 1e3, 3),
           "wall_ms_per_scrape": round(wall / args.scrapes * 1e3, 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
