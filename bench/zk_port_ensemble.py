#!/usr/bin/env python3
"""A coord ensemble whose ZooKeeper ports are BASE+1..BASE+3, for the
ZooKeeper anchor's own kazoo benchmark.

The anchor (``../shared/anchors/zookeeper/bench.py``) drives any
ZooKeeper-protocol ensemble listening on ``ZK_PORT_BASE+1..+3``; this
starts coord that way (real processes, fsync on, the same settings as
``bench/bench.py``), so the same client and the same workloads measure
ZooKeeper and coord in one run::

    bash ../shared/anchors/zookeeper/setup.sh          # once: the anchor's venv with kazoo
    python bench/zk_port_ensemble.py --port-base 22810 &
    ZK_PORT_BASE=22810 /tmp/anchors-zk/venv/bin/python ../shared/anchors/zookeeper/bench.py \\
        --only W1,W2,W3,W4,W5
    kill %1

It prints ``READY`` once a leader is elected and runs until SIGTERM or
SIGINT.  (The anchor's server-CPU column reads ZooKeeper's JVMs only; for
coord compare ops/s and latencies.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "client")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port-base", type=int, required=True, help="ZooKeeper ports are BASE+1..BASE+N")
    ap.add_argument("-n", "--servers", type=int, default=3)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--pid-dir", help="write each server's process id to PID_DIR/<id>.pid (as the anchor's ensemble.sh does)")
    args = ap.parse_args()

    import trio

    from tests.cluster import Cluster

    base = tempfile.mkdtemp(prefix="coord-zkport-")
    cluster = Cluster(args.servers, base, zookeeper=True, log_level=args.log_level)
    cluster.zk_ports = {i: args.port_base + i for i in range(1, args.servers + 1)}
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with cluster:
        cluster.start()
        trio.run(cluster.wait_leader)
        if args.pid_dir:
            os.makedirs(args.pid_dir, exist_ok=True)
            for sid, proc in cluster.procs.items():
                with open(os.path.join(args.pid_dir, f"{sid}.pid"), "w") as f:
                    f.write(f"{proc.pid}\n")
        print("READY", cluster.zk_hosts, flush=True)
        stop.wait()
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
