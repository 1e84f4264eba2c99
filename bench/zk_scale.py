#!/usr/bin/env python3
"""S1 on ZooKeeper: the same 1,000,000-node tree in the anchor's 3-server
ZooKeeper 3.8 ensemble (../shared/anchors/zookeeper/ensemble.sh), for the
memory figures beside coord's (bench.py S1).

The tree is bench.py's: /s, 1000 parents /s/0000../s/0999, 1000 children of
10 bytes each, created with multis (ZooKeeper transactions) of 1000 creates,
4 in flight, from one kazoo session.  Then, per server JVM: RSS (VmRSS,
what the system sees), peak RSS (VmHWM), and the Java heap in use after a
full collection (``jcmd GC.run`` then ``GC.heap_info``: the live data), the
data directory's size, and how long a follower killed with SIGKILL takes to
serve again with the whole tree (``mntr``'s zk_znode_count).

    python bench/zk_scale.py                     # 1M nodes, heap 1 GiB per JVM
    python bench/zk_scale.py --nodes 20000 --heap 512m --json out.json

The ensemble runs in its own ZK_BASE (a temporary directory, removed at the
end) on the anchor's fixed ports 21811-21813 (client), 28881-28883 and
38881-38883: nothing else may use them meanwhile.  Needs the zookeeper
package and kazoo (the anchor's setup.sh; kazoo is in coord's test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
NODES = (1, 2, 3)
mono = time.monotonic


def log(msg: str) -> None:
    sys.stderr.write(f"[zk_scale {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def find_anchor() -> str:
    for d in (os.path.join(ROOT, "..", "shared", "anchors", "zookeeper"),
              os.path.join(ROOT, "..", "..", "shared", "anchors", "zookeeper"), "/work/shared/anchors/zookeeper"):
        if os.path.exists(os.path.join(d, "ensemble.sh")):
            return os.path.abspath(d)
    raise SystemExit("zk_scale: the ZooKeeper anchor (shared/anchors/zookeeper/ensemble.sh) was not found")


def fourlw(n: int, cmd: str, timeout: float = 2.0) -> str:
    try:
        with socket.create_connection((HOST, 21810 + n), timeout=timeout) as s:
            s.sendall(cmd.encode())
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def mntr(n: int) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in fourlw(n, "mntr").splitlines() if "\t" in line)


def mem_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def heap_used_mb(pid: int) -> float | None:
    """Java heap in use after a full GC (jcmd), in MiB."""
    try:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=120, check=True)
        out = subprocess.run(["jcmd", str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"used (\d+)K", out)
    return round(int(m.group(1)) / 1024, 1) if m else None


def du_mb(path: str) -> float:
    total = 0
    for r, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.path.getsize(os.path.join(r, f))
            except OSError:
                pass
    return round(total / 2 ** 20, 1)


class ZK:
    def __init__(self, anchor: str, base: str, heap: str) -> None:
        self.sh = os.path.join(anchor, "ensemble.sh")
        self.env = {**os.environ, "ZK_BASE": base, "ZK_HEAP": heap}
        self.base = base

    def run(self, *args: str, timeout: float = 180) -> str:
        return subprocess.run([self.sh, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=True).stdout

    def pid(self, n: int) -> int | None:
        out = self.run("pid", str(n)).strip()
        return int(out) if out else None


def load(n_nodes: int, inflight: int) -> float:
    """Create the tree; returns the seconds the children took."""
    from kazoo.client import KazooClient

    hosts = ",".join(f"{HOST}:{21810 + n}" for n in NODES)
    zk = KazooClient(hosts=hosts, timeout=30)
    zk.start(timeout=60)
    try:
        parents = -(-n_nodes // 1000)
        zk.create("/s", b"")
        for b in range(0, parents, 500):
            t = zk.transaction()
            for p in range(b, min(b + 500, parents)):
                t.create(f"/s/{p:04d}", b"")
            t.commit()
        todo = list(range(0, n_nodes, 1000))
        lock = threading.Lock()
        errors: list = []
        t0 = mono()

        def worker() -> None:
            while True:
                with lock:
                    if not todo or errors:
                        return
                    b = todo.pop()
                t = zk.transaction()
                for i in range(b, min(b + 1000, n_nodes)):
                    t.create(f"/s/{i // 1000:04d}/{i % 1000:04d}", b"x" * 10)
                res = t.commit()
                bad = [r for r in res if isinstance(r, Exception)]
                if bad:
                    errors.append(bad[0])

        threads = [threading.Thread(target=worker) for _ in range(inflight)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise RuntimeError(f"a transaction failed: {errors[0]!r}")
        return mono() - t0
    finally:
        zk.stop()
        zk.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--heap", default="1g", help="-Xms/-Xmx of each JVM (the anchor's default is 512m)")
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="coord-zk-s1-")
    zk = ZK(find_anchor(), base, args.heap)
    result: dict = {"workload": "S1-zookeeper", "op": f"{args.nodes} nodes (1000 parents x 1000 children, 10 B "
                    "each), multis of 1000 creates", "heap": args.heap}
    try:
        zk.run("start")
        zk.run("wait-leader", "90", timeout=120)
        pids = {n: zk.pid(n) for n in NODES}
        result["rss_mb_empty"] = {str(n): round(mem_kb(p, "VmRSS") / 1024, 1) for n, p in pids.items()}
        log(f"loading {args.nodes} nodes")
        secs = load(args.nodes, args.inflight)
        result["create_nodes_per_s"] = round(args.nodes / secs, 1)
        time.sleep(3)
        counts = {str(n): mntr(n).get("zk_znode_count") for n in NODES}
        result["znode_count"] = counts
        result["rss_mb"] = {str(n): round(mem_kb(p, "VmRSS") / 1024, 1) for n, p in pids.items()}
        result["rss_bytes_per_node"] = {k: round(v * 2 ** 20 / args.nodes) for k, v in result["rss_mb"].items()}
        result["peak_rss_mb"] = {str(n): round(mem_kb(p, "VmHWM") / 1024, 1) for n, p in pids.items()}
        result["heap_used_after_full_gc_mb"] = {str(n): heap_used_mb(p) for n, p in pids.items()}
        result["rss_mb_after_full_gc"] = {str(n): round(mem_kb(p, "VmRSS") / 1024, 1) for n, p in pids.items()}
        result["data_dir_mb"] = {str(n): du_mb(os.path.join(base, "data", str(n))) for n in NODES}
        follower = next(n for n in NODES if "Mode: follower" in fourlw(n, "srvr"))
        target = int(counts[str(follower)])
        zk.run("kill-node", str(follower))
        t0 = mono()
        zk.run("start-node", str(follower))
        serving = None
        while mono() - t0 < 300:
            if "Mode: follower" in fourlw(follower, "srvr", 0.5) and int(mntr(follower).get("zk_znode_count", 0)) >= target:
                serving = round(mono() - t0, 2)
                break
            time.sleep(0.05)
        result["restart_node"] = follower
        result["restart_to_serving_s"] = serving
        p = zk.pid(follower)
        result["restart_rss_mb"] = round(mem_kb(p, "VmRSS") / 1024, 1) if p else None
    finally:
        try:
            zk.run("stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
