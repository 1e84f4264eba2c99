#!/usr/bin/env python3
"""coord benchmark: the anchors' workloads, measured the same way.

The workloads mirror ../shared/anchors/zookeeper/bench.py and
../shared/anchors/etcd/bench.py (same value size, key counts, in-flight
counts, windows and CPU accounting), so the figures sit beside theirs:

  IDLE (context) the ensemble with no client: server CPU
  W1   write throughput: set of a 100 B value over 1000 nodes, 32 in flight, 3 client processes
  W1S  (diagnostic) W1 from a single client process
  W1P  W1 while a Prometheus-style scraper GETs /metrics of every server once a second
       (the cost of observability: compare with W1; needs the servers' HTTP ports)
  W2   sequential write latency: one client, 2000 set calls through a follower (W2L: the leader)
  W3   read throughput: 32 in flight get of one 100 B node, local reads, 3 processes
  W3L  the same with linearizable reads (ReadIndex through the leader)
  W3S  (diagnostic) W3 from a single client process
  W4   lock handoff: 8 client processes looping acquire/release on one lock (the SDK's recipe)
  W4I  the same with the bench's minimal inline lock (kazoo's algorithm: tests/faults/lock.py)
  W5   create(ephemeral, sequential) + delete, 32 in flight, 3 processes (ops = creates + deletes)
  W6   failover: a writer at ~200 sets/s, SIGKILL of the leader, gap, 3 trials
  S1   scale: 1,000,000 nodes -> RSS, snapshot size, restart time of a server from that snapshot
  S2   scale: 10,000 sessions held with keepalives -> server CPU while idle, RSS

For W1/W3 (and every windowed workload): server CPU microseconds per
operation = utime+stime of the server processes over the window (from
/proc/PID/stat) / operations completed in the window; each server's peak
RSS (VmHWM).  The load generator's CPU and the whole machine's are
reported too, so a disturbed window is visible.

    python bench/bench.py                          # own 3-server ensemble, fsync on, everything
    python bench/bench.py --workloads W1,W3 --json out.json
    python bench/bench.py --endpoints 127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183 --workloads W1,W2,W3
    python bench/bench.py --workloads W1,W1P --http   # W1 with and without a 1 s scrape, HTTP ports on for both
    python bench/bench.py --workloads W1,W3 --secure  # TLS on every port, clients with certificates, ACLs on the nodes

With ``--endpoints`` the servers are found by their listening ports (for
CPU figures; same user only); W6 and S1/S2 need an ensemble this script
started, since they kill and restart servers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "client")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

CLK_TCK = os.sysconf("SC_CLK_TCK")
VALUE = b"v" * 100
KEYS = 1000
mono = time.monotonic
DEFAULT_WORKLOADS = "IDLE,W1,W1S,W2,W2L,W3,W3L,W3S,W4,W4I,W5,W6,S2,S1"


# ----------------------------------------------------------------------------- --secure
# With --secure the parent makes a CA and certificates in a directory and
# names it here; the load-generator processes (spawned: they inherit the
# environment) read it back, so every client connects with TLS and presents
# the "bench" certificate, and the benchmark's nodes carry an ACL that grants
# only that certificate's subject (every read and write is checked).
SECURE_ENV = "COORD_BENCH_PKI"
# A directory: every load-generator process runs under cProfile and leaves
# <target>-<pid>.prof there (where the SDK's CPU goes, with and without TLS).
PROFILE_ENV = "COORD_BENCH_CPROFILE"
BENCH_SUBJECT = "CN=bench,OU=ops,O=acme"


def secure_dir() -> str | None:
    return os.environ.get(SECURE_ENV) or None


def client_ssl_context():
    """The clients' TLS context under --secure (None otherwise)."""
    d = secure_dir()
    if d is None:
        return None
    import ssl

    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    ctx.load_cert_chain(os.path.join(d, "client-bench.crt"), os.path.join(d, "client-bench.key"))
    return ctx


def client_security() -> dict:
    """Keyword arguments every benchmark ``Client`` takes (TLS under --secure)."""
    ctx = client_ssl_context()
    return {} if ctx is None else {"tls": ctx}


def bench_acl() -> list[str] | None:
    """The ACL of the benchmark's nodes under --secure (None: the default, open)."""
    return None if secure_dir() is None else [f"x509:{BENCH_SUBJECT}:cdrwa"]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- /proc
def proc_ticks(pid: int | None) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (OSError, TypeError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[11]) + int(rest[12])


def proc_mem_kb(pid: int | None, field: str) -> int | None:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, TypeError):
        pass
    return None


def machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return user + nice + system + irq + softirq + steal, idle + iowait


def pids_listening(ports: list[int]) -> dict[int, int]:
    """port -> pid of the process listening on 127.0.0.1:port (same user only)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    if parts[3] == "0A" and port in ports:  # LISTEN
                        inodes[parts[9]] = port
        except OSError:
            pass
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{d}/fd"):
                link = os.readlink(f"/proc/{d}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    out[inodes[link[8:-1]]] = int(d)
        except OSError:
            continue
    return out


class CpuWindow:
    """CPU used by the servers, the load generator and the machine in a window."""

    def __init__(self, server_pids: dict[int, int], client_pids: list[int]):
        self.spids, self.cpids = dict(server_pids), list(client_pids)

    def start(self) -> None:
        self.t0, self.m0 = mono(), machine_ticks()
        self.s0 = {n: proc_ticks(p) for n, p in self.spids.items()}
        self.c0 = {p: proc_ticks(p) for p in self.cpids}

    def stop(self) -> None:
        self.t1, self.m1 = mono(), machine_ticks()
        self.s1 = {n: proc_ticks(p) for n, p in self.spids.items()}
        self.c1 = {p: proc_ticks(p) for p in self.cpids}

    def summary(self, ops: int) -> dict:
        wall = self.t1 - self.t0
        per = {str(n): None if self.s0[n] is None or self.s1[n] is None else (self.s1[n] - self.s0[n]) / CLK_TCK
               for n in self.spids}
        srv = sum(v for v in per.values() if v is not None)
        cli = [(self.c1[p] - self.c0[p]) / CLK_TCK for p in self.cpids
               if self.c0.get(p) is not None and self.c1.get(p) is not None]
        busy = (self.m1[0] - self.m0[0]) / CLK_TCK
        idle = (self.m1[1] - self.m0[1]) / CLK_TCK
        return {
            "window_s": round(wall, 3), "server_cpu_s": round(srv, 3), "server_cpu_s_per_node": per,
            "server_cpu_us_per_op": round(srv * 1e6 / ops, 1) if ops else None,
            "server_cores_busy": round(srv / wall, 3), "loadgen_cpu_s": round(sum(cli), 3),
            "loadgen_cores_busy": round(sum(cli) / wall, 3),
            "loadgen_max_proc_core_frac": round(max(cli or [0]) / wall, 3),
            "loadgen_cpu_us_per_op": round(sum(cli) * 1e6 / ops, 1) if ops else None,
            "machine_cores_busy": round(busy / wall, 3), "machine_cores_idle": round(idle / wall, 3),
            "other_cores_busy": round((busy - srv - sum(cli)) / wall, 3),
            "server_peak_rss_mb": {str(n): _mb(proc_mem_kb(p, "VmHWM")) for n, p in self.spids.items()},
        }


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def pct(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def lat_summary(lat_s: list[float]) -> dict:
    v = sorted(lat_s)
    if not v:
        return {}
    return {"p50_ms": round(pct(v, 50) * 1e3, 3), "p90_ms": round(pct(v, 90) * 1e3, 3),
            "p99_ms": round(pct(v, 99) * 1e3, 3), "max_ms": round(v[-1] * 1e3, 3),
            "mean_ms": round(statistics.fmean(v) * 1e3, 3), "n": len(v)}


# ----------------------------------------------------------------------------- the ensemble
class Ensemble:
    """Either one this script starts (tests.cluster.Cluster: real processes,
    fsync on) or an external one given by its client endpoints."""

    def __init__(self, endpoints: str | None, n: int, base: str, snapshot_entries: int = 10_000,
                 http: bool = False, http_endpoints: str | None = None, log_level: str = "warning",
                 cluster_opts: dict | None = None):
        """``cluster_opts``: more keyword arguments for ``tests.cluster.Cluster``."""
        self.cluster = None
        self.metrics_urls = [f"http://{e}/metrics" for e in (http_endpoints or "").split(",") if e]
        if endpoints:
            self.addrs = [(h, int(p)) for h, p in (e.rsplit(":", 1) for e in endpoints.split(","))]
        else:
            from tests.cluster import Cluster

            security = {}
            if secure_dir() is not None:
                from tests.tlsutil import TLSMaterial

                material = TLSMaterial(secure_dir())
                material.client("bench")
                security = {"peer_secret": False, "client_ssl": client_ssl_context(),
                            "tls": lambda sid: material.tls_table(sid, client_auth="request")}
            self.cluster = Cluster(n, base, snapshot_entries=snapshot_entries, log_level=log_level, http=http,
                                   **security, **(cluster_opts or {}))
            self.cluster.start()
            self.addrs = [self.cluster.client_addr(s) for s in range(1, n + 1)]
            self.metrics_urls = [f"http://127.0.0.1:{p}/metrics" for _, p in sorted(self.cluster.http_ports.items())]
        self.nodes = list(range(1, len(self.addrs) + 1))

    @property
    def own(self) -> bool:
        return self.cluster is not None

    def endpoint(self, node: int) -> str:
        h, p = self.addrs[node - 1]
        return f"{h}:{p}"

    def all_endpoints(self) -> str:
        return ",".join(self.endpoint(n) for n in self.nodes)

    def server_pids(self) -> dict[int, int]:
        if self.own:
            return {s: p.pid for s, p in self.cluster.procs.items() if p.poll() is None}
        found = pids_listening([p for _, p in self.addrs])
        return {n: found[self.addrs[n - 1][1]] for n in self.nodes if self.addrs[n - 1][1] in found}

    def statuses(self) -> dict[int, dict]:
        import trio

        from coord.cli import probe_status

        async def all_():
            out = {}
            for n in self.nodes:
                st = await probe_status(self.addrs[n - 1], timeout=1.0, ssl_context=client_ssl_context())
                if st is not None:
                    out[n] = st
            return out

        return trio.run(all_)

    def wait_healthy(self, timeout: float = 60.0) -> dict[int, str]:
        """Every server answers, one leader that all agree on; node -> role."""
        deadline = mono() + timeout
        while mono() < deadline:
            sts = self.statuses()
            leaders = {st["server_id"] for st in sts.values() if st["role"] == "leader"}
            if len(sts) == len(self.nodes) and len(leaders) == 1:
                lid = leaders.pop()
                if all(st["leader"] == lid for st in sts.values()):
                    return {n: st["role"] for n, st in sts.items()}
            time.sleep(0.1)
        raise RuntimeError(f"ensemble not healthy: {self.statuses()}")

    def leader(self) -> int | None:
        for n, st in self.statuses().items():
            if st["role"] == "leader":
                return n
        return None

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()


# ----------------------------------------------------------------------------- client processes
def _worker_main(target: str, args: tuple, ready_q, go_evt, times, result_q) -> None:
    """Entry point of a load-generator process (multiprocessing spawn)."""
    import trio

    fn = globals()[target]
    prof_dir = os.environ.get(PROFILE_ENV)
    if not prof_dir:
        result_q.put(trio.run(fn, *args, ready_q, go_evt, times))
        return
    import cProfile

    prof = cProfile.Profile()  # the whole run, warmup included: compare shares, not absolute times
    try:
        result = prof.runcall(trio.run, fn, *args, ready_q, go_evt, times)
    finally:
        prof.dump_stats(os.path.join(prof_dir, f"{target}-{os.getpid()}.prof"))
    result_q.put(result)


async def _wait_go(ready_q, go_evt, wid) -> None:
    """Say "ready" to the parent, then wait for everybody's start signal."""
    import trio

    ready_q.put(wid)
    await trio.to_thread.run_sync(go_evt.wait)


async def tp_worker(kind: str, wid: int, endpoint: str, depth: int, ready_q, go_evt, times) -> dict:
    """``depth`` tasks in one session, each issuing the next call as soon as
    the previous one returns (closed loop), like the anchors' workers."""
    import trio

    from coordclient import Client
    from coordclient.errors import CoordError

    st = {"wid": wid, "endpoint": endpoint, "ops": 0, "errs": 0, "err_types": {}, "lat": [], "pairs": 0}
    async with Client(endpoint, session_timeout=30, **client_security()) as c:
        await _wait_go(ready_q, go_evt, wid)
        t0, t1 = times[0], times[1]

        def record(ok: bool, started: float, err: Exception | None = None) -> float:
            now = mono()
            if t0 <= now <= t1:
                if ok:
                    st["ops"] += 1
                    st["lat"].append(now - started)
                else:
                    st["errs"] += 1
                    k = type(err).__name__
                    st["err_types"][k] = st["err_types"].get(k, 0) + 1
            return now

        async def slot(i: int) -> None:
            k = 0
            while mono() < t1:
                k += 1
                started = mono()
                try:
                    if kind == "set":
                        await c.set(f"/bench/kv/{(i * 7919 + wid * 131 + k) % KEYS:04d}", VALUE)
                    elif kind in ("get", "lget"):
                        await c.get("/bench/r", linearizable=kind == "lget")
                    else:
                        path = await c.create("/bench/eph/n-", b"", ephemeral=True, sequential=True)
                        record(True, started)
                        started = mono()
                        await c.delete(path)
                        if t0 <= mono() <= t1:
                            st["pairs"] += 1
                except CoordError as e:
                    record(False, started, e)
                    await trio.sleep(0.01)
                    continue
                record(True, started)

        async with trio.open_nursery() as n:
            for i in range(depth):
                n.start_soon(slot, i)
    return st


async def lock_worker(wid: int, endpoint: str, impl: str, ready_q, go_evt, times) -> dict:
    import trio

    from coordclient import Client

    acq, waits, timeouts = 0, [], 0
    async with Client(endpoint, session_timeout=30, **client_security()) as c:
        lock = make_lock(impl, c, wid)
        await _wait_go(ready_q, go_evt, wid)
        t0, t1 = times[0], times[1]
        while mono() < t1:
            t = mono()
            try:
                got = await lock.acquire(timeout=30)  # the recipe returns False on timeout, the inline lock raises
            except trio.TooSlowError:
                got = False
            if got is False:
                timeouts += 1
                continue
            ta = mono()
            await lock.release()
            if t0 <= ta <= t1:
                acq += 1
                waits.append(ta - t)
    return {"wid": wid, "endpoint": endpoint, "acq": acq, "waits": waits, "timeouts": timeouts}


def lock_impl(choice: str) -> str:
    """'recipe' when the SDK's lock recipe is importable (and asked for), else 'inline'."""
    if choice in ("auto", "recipe"):
        try:
            from coordclient.recipes.locks import Lock  # noqa: F401

            return "recipe"
        except ImportError:
            if choice == "recipe":
                raise
    return "inline"


def make_lock(impl: str, client, wid: int):
    if impl == "recipe":
        from coordclient.recipes.locks import Lock

        return Lock(client, "/bench/lock")
    from tests.faults.lock import Lock as InlineLock

    return InlineLock(client, "/bench/lock", f"w{wid}")


def run_procs(ens: Ensemble, target: str, args_list: list[tuple], warmup: float, duration: float) -> tuple[list, CpuWindow]:
    """Spawn one process per args tuple, start them together, measure the window."""
    ctx = mp.get_context("spawn")
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go_evt = ctx.Event()
    times = ctx.Array("d", 2)
    procs = [ctx.Process(target=_worker_main, args=(target, a, ready_q, go_evt, times, result_q), daemon=True)
             for a in args_list]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready_q.get(timeout=120)
        cpu = CpuWindow(ens.server_pids(), [p.pid for p in procs])
        now = mono()
        times[0], times[1] = now + warmup, now + warmup + duration
        go_evt.set()
        time.sleep(max(0.0, times[0] - mono()))
        cpu.start()
        time.sleep(max(0.0, times[1] - mono()))
        cpu.stop()
        results = [result_q.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(5)
    return results, cpu


class Scraper(threading.Thread):
    """What a Prometheus server does: GET every server's /metrics once per
    ``interval``, in turn, for as long as the workload runs."""

    def __init__(self, urls: list[str], interval: float):
        super().__init__(daemon=True)
        self.urls, self.interval = urls, interval
        self.stop_evt = threading.Event()
        self.times: list[float] = []
        self.bytes = 0
        self.errors = 0

    def run(self) -> None:
        while not self.stop_evt.is_set():
            started = mono()
            for url in self.urls:
                t = mono()
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        self.bytes += len(r.read())
                    self.times.append(mono() - t)
                except OSError:
                    self.errors += 1
            self.stop_evt.wait(max(0.0, self.interval - (mono() - started)))

    def summary(self) -> dict:
        return {"scrapes": len(self.times), "errors": self.errors, "interval_s": self.interval,
                "servers": len(self.urls), "mean_bytes": round(self.bytes / max(1, len(self.times))),
                "latency": lat_summary(self.times)}


# ----------------------------------------------------------------------------- workloads
def prepare(ens: Ensemble) -> None:
    import trio

    from coordclient import Client, ops

    async def go():
        async with Client(ens.all_endpoints(), session_timeout=30, **client_security()) as c:
            acl = bench_acl()
            for p in ("/bench", "/bench/kv", "/bench/eph", "/bench/lock"):
                if await c.exists(p) is None:
                    await c.create(p, b"", acl=acl)
            if await c.exists("/bench/r") is None:
                await c.create("/bench/r", VALUE, acl=acl)
            if await c.exists("/bench/seq") is None:
                await c.create("/bench/seq", VALUE, acl=acl)
            if await c.exists(f"/bench/kv/{KEYS - 1:04d}") is None:
                for base in range(0, KEYS, 500):
                    await c.multi([ops.create(f"/bench/kv/{i:04d}", VALUE, acl=acl)
                                   for i in range(base, base + 500)])

    trio.run(go)


def throughput(ens: Ensemble, kind: str, name: str, args, nproc: int | None = None,
               scrape: float | None = None) -> dict:
    nproc = nproc or args.procs
    depths = [args.outstanding // nproc + (1 if i < args.outstanding % nproc else 0) for i in range(nproc)]
    roles = ens.wait_healthy()
    order = ens.nodes if nproc > 1 else [n for n in ens.nodes if roles.get(n) == "follower"][:1] or ens.nodes
    wargs = [(kind, i, ens.endpoint(order[i % len(order)]), depths[i]) for i in range(nproc)]
    log(f"{name}: {kind}, {args.outstanding} in flight over {nproc} processes, warmup {args.warmup}s, "
        f"window {args.duration}s")
    scraper = None
    if scrape:
        if not ens.metrics_urls:
            raise RuntimeError(f"{name} needs the servers' HTTP ports: --http, or --http-endpoints with --endpoints")
        scraper = Scraper(ens.metrics_urls, scrape)
        scraper.start()
    try:
        results, cpu = run_procs(ens, "tp_worker", wargs, args.warmup, args.duration)
    finally:
        if scraper is not None:
            scraper.stop_evt.set()
            scraper.join(10)
    ops_n = sum(r["ops"] for r in results)
    c = cpu.summary(ops_n)
    out = {"workload": name, "op": {"set": "set 100 B over 1000 nodes", "get": "get 100 B, local read",
                                    "lget": "get 100 B, linearizable read",
                                    "create_delete": "create(ephemeral, sequential) + delete"}[kind],
           "ops": ops_n, "ops_per_s": round(ops_n / c["window_s"], 1),
           "errors": sum(r["errs"] for r in results), "outstanding": args.outstanding,
           "client_processes": nproc, "latency": lat_summary([x for r in results for x in r["lat"]]), "cpu": c}
    if scraper is not None:
        out["scrape"] = scraper.summary()
    if kind == "create_delete":
        out["create_delete_pairs_per_s"] = round(sum(r["pairs"] for r in results) / c["window_s"], 1)
    et: dict = {}
    for r in results:
        for k, v in r["err_types"].items():
            et[k] = et.get(k, 0) + v
    if et:
        out["error_types"] = et
    return out


def idle(ens: Ensemble, args) -> dict:
    """No client at all: what the servers burn on ticks and heartbeats."""
    ens.wait_healthy()
    time.sleep(1.0)
    cpu = CpuWindow(ens.server_pids(), [])
    cpu.start()
    time.sleep(args.duration)
    cpu.stop()
    return {"workload": "IDLE", "op": "no client load", "cpu": cpu.summary(0)}


def seq_latency(ens: Ensemble, name: str, role: str, n_ops: int, warm: int = 200) -> dict:
    import trio

    from coordclient import Client

    roles = ens.wait_healthy()
    node = [n for n, r in roles.items() if r == role][0]
    lat: list[float] = []
    cpu = CpuWindow(ens.server_pids(), [os.getpid()])

    async def go():
        async with Client(ens.endpoint(node), session_timeout=30, **client_security()) as c:
            for _ in range(warm):
                await c.set("/bench/seq", VALUE)
            cpu.start()
            for _ in range(n_ops):
                t = time.perf_counter()
                await c.set("/bench/seq", VALUE)
                lat.append(time.perf_counter() - t)
            cpu.stop()

    log(f"{name}: {n_ops} sequential sets via the {role} (node {node})")
    trio.run(go)
    c = cpu.summary(n_ops)
    return {"workload": name, "op": "set 100 B, one client, sequential", "ops": n_ops,
            "connected_to": f"node {node} ({role})", "latency": lat_summary(lat),
            "ops_per_s": round(n_ops / c["window_s"], 1), "cpu": c}


def lock_handoff(ens: Ensemble, name: str, args, impl: str | None = None) -> dict:
    impl = impl or lock_impl(args.lock)
    ens.wait_healthy()
    wargs = [(i, ens.endpoint(ens.nodes[i % len(ens.nodes)]), impl) for i in range(args.lock_clients)]
    log(f"{name}: {args.lock_clients} lock contenders ({impl} lock)")
    results, cpu = run_procs(ens, "lock_worker", wargs, args.warmup, args.duration)
    acq = sum(r["acq"] for r in results)
    c = cpu.summary(acq)
    return {"workload": name, "op": f"acquire->release loop on one lock ({impl} ephemeral-sequential lock)",
            "client_processes": args.lock_clients, "acquisitions": acq,
            "acquisitions_per_s": round(acq / c["window_s"], 1),
            "per_client_acquisitions": [r["acq"] for r in sorted(results, key=lambda r: r["wid"])],
            "lock_timeouts": sum(r["timeouts"] for r in results),
            "acquire_wait": lat_summary([x for r in results for x in r["waits"]]), "cpu": c,
            "note": "cpu us/op is per acquisition (create + children + exists/watch + delete)"}


def failover(ens: Ensemble, name: str, args) -> dict:
    """A writer at ~rate sets/s, each attempt abandoned after attempt_timeout
    (the SDK retries inside it); SIGKILL the leader; gap = first successful
    completion of a write issued after the kill - the last successful
    completion before that.  The killed server is restarted between trials."""
    import trio

    from coordclient import Client
    from coordclient.errors import CoordError

    trials = []
    for trial in range(1, args.failover_trials + 1):
        ens.wait_healthy(90)
        attempts: list[list] = []  # [issued, completed | None, outcome]
        info: dict = {}

        async def attempt(c, rec):
            with trio.move_on_after(args.attempt_timeout):
                try:
                    await c.set("/bench/failover", VALUE)
                    rec[1], rec[2] = mono(), "ok"
                    return
                except CoordError as e:
                    rec[1], rec[2] = mono(), type(e).__name__
                    return
            rec[2] = "timeout"

        async def go():
            async with Client(ens.all_endpoints(), session_timeout=10, **client_security()) as c:
                if await c.exists("/bench/failover") is None:
                    await c.create("/bench/failover", VALUE)
                async with trio.open_nursery() as n:
                    async def writer():
                        nxt = mono()
                        while True:
                            rec = [mono(), None, None]
                            attempts.append(rec)
                            n.start_soon(attempt, c, rec)
                            nxt += 1.0 / args.failover_rate
                            await trio.sleep(max(0.0, nxt - mono()))

                    n.start_soon(writer)
                    await trio.sleep(args.failover_steady)
                    leader = await trio.to_thread.run_sync(ens.leader)
                    info["leader"], info["client_on"] = leader, c.server_id
                    info["t_kill"] = mono()
                    ens.cluster.kill(leader)
                    with trio.move_on_after(60):
                        while not any(r[0] > info["t_kill"] and r[2] == "ok" for r in attempts):
                            await trio.sleep(0.005)
                    await trio.sleep(0.3)
                    info["reconnected_to"] = c.server_id
                    n.cancel_scope.cancel()

        log(f"{name} trial {trial}: writer at {args.failover_rate}/s, then SIGKILL of the leader")
        trio.run(go)
        t_kill = info["t_kill"]
        after = [r[1] for r in attempts if r[0] > t_kill and r[2] == "ok"]
        tr = {"trial": trial, "killed_leader_node": info["leader"], "client_was_on_node": info["client_on"],
              "client_reconnected_to": info.get("reconnected_to")}
        if after:
            first = min(after)
            before = [r[1] for r in attempts if r[2] == "ok" and r[1] < first]
            tr["gap_ms"] = round((first - max(before)) * 1e3, 1)
            tr["kill_to_first_write_ms"] = round((first - t_kill) * 1e3, 1)
        else:
            tr["error"] = "no successful write after the kill"
        fails: dict = {}
        for r in attempts:
            if r[0] > t_kill - 0.05 and r[2] != "ok" and (not after or r[0] <= min(after)):
                fails[r[2]] = fails.get(r[2], 0) + 1
        tr["failed_attempts"] = fails
        t_r = mono()
        ens.cluster.start_server(info["leader"])
        ens.wait_healthy(90)
        tr["new_leader_node"] = ens.leader()
        tr["rejoin_s"] = round(mono() - t_r, 2)
        log(f"{name} trial {trial}: gap {tr.get('gap_ms')} ms")
        trials.append(tr)
    gaps = [t["gap_ms"] for t in trials if "gap_ms" in t]
    return {"workload": name, "op": f"set 100 B at ~{args.failover_rate:g}/s, {args.attempt_timeout * 1e3:g} ms "
                                    "per attempt (SDK retries inside it); SIGKILL the leader",
            "gaps_ms": gaps, "gap_ms_mean": round(statistics.fmean(gaps), 1) if gaps else None,
            "gap_ms_max": max(gaps) if gaps else None, "trials": trials}


# ----------------------------------------------------------------------------- scale
async def _create_many(endpoint: str, start: int, stop: int, batch: int, inflight: int) -> None:
    import trio

    from coordclient import Client, ops

    async with Client(endpoint, session_timeout=60, request_timeout=600, **client_security()) as c:
        todo = list(range(start, stop, batch))

        async def task():
            while todo:
                b = todo.pop()
                await c.multi([ops.create(f"/s/{i // 1000:04d}/{i % 1000:04d}", b"x" * 10)
                               for i in range(b, min(b + batch, stop))])

        async with trio.open_nursery() as n:
            for _ in range(inflight):
                n.start_soon(task)


async def _snapshot_probe(endpoints: list[str], addrs: list[tuple[str, int]], period: float, stop_evt,
                          result_q) -> None:
    """One client per server, each doing ``get("/s")`` every ``period`` s, and
    a status poll of every server every 100 ms, until ``stop_evt`` is set.
    Reports per server the longest gap between two successful gets and the
    slowest get, and every (leader, term) seen: a leader change shows as more
    than one."""
    import trio

    from coord.cli import probe_status
    from coordclient import Client
    from coordclient.errors import CoordError

    out: dict = {"servers": {}, "leaders_seen": []}

    async def getter(n: int, ep: str) -> None:
        st = out["servers"][str(n)] = {"gets": 0, "errors": 0, "max_gap_ms": 0.0, "max_latency_ms": 0.0}
        async with Client(ep, session_timeout=30, **client_security()) as c:
            last = mono()
            nxt = last
            while not stop_evt.is_set():
                t = mono()
                try:
                    await c.get("/s")
                except CoordError:
                    st["errors"] += 1
                else:
                    now = mono()
                    st["gets"] += 1
                    st["max_gap_ms"] = max(st["max_gap_ms"], round((now - last) * 1e3, 1))
                    st["max_latency_ms"] = max(st["max_latency_ms"], round((now - t) * 1e3, 1))
                    last = now
                nxt += period
                await trio.sleep(max(0.0, nxt - mono()))

    async def watch_roles() -> None:
        seen = out["leaders_seen"]
        while not stop_evt.is_set():
            for a in addrs:
                s = await probe_status(a, timeout=0.5, ssl_context=client_ssl_context())
                if s is not None and s.get("role") == "leader" and (s["server_id"], s["term"]) not in seen:
                    seen.append((s["server_id"], s["term"]))
            await trio.sleep(0.1)

    async with trio.open_nursery() as n:
        for i, ep in enumerate(endpoints, 1):
            n.start_soon(getter, i, ep)
        n.start_soon(watch_roles)
    result_q.put(out)


def _probe_main(endpoints, addrs, period, stop_evt, result_q) -> None:
    import trio

    trio.run(_snapshot_probe, endpoints, addrs, period, stop_evt, result_q)


def _snap_files(ens: "Ensemble") -> dict[int, list[str]]:
    out = {}
    for sid in ens.nodes:
        d = os.path.join(ens.cluster.base, f"data{sid}")
        out[sid] = sorted((os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith(".snap")),
                          key=os.path.getmtime)
    return out


def _probe_during(ens: "Ensemble", work) -> tuple[dict, object]:
    """Run ``work()`` while the snapshot probe runs (in its own process);
    (the probe's findings, work's result)."""
    ctx = mp.get_context("spawn")
    stop_evt, result_q = ctx.Event(), ctx.Queue()
    probe = ctx.Process(target=_probe_main, args=([ens.endpoint(n) for n in ens.nodes], ens.addrs, 0.01,
                                                  stop_evt, result_q), daemon=True)
    probe.start()
    try:
        time.sleep(2.0)  # the probe's clients connected and settled
        out = work()
        time.sleep(2.0)  # the aftermath is in the probe's window too
    finally:
        stop_evt.set()
    found = result_q.get(timeout=30)
    probe.join(10)
    return found, out


def _probe_summary(found: dict) -> dict:
    return {"max_gap_ms": {k: v["max_gap_ms"] for k, v in found["servers"].items()},
            "max_latency_ms": {k: v["max_latency_ms"] for k, v in found["servers"].items()},
            "gets": sum(v["gets"] for v in found["servers"].values()),
            "errors": sum(v["errors"] for v in found["servers"].values()),
            "leaders_seen": found["leaders_seen"]}


def scale_nodes(args, base: str) -> dict:
    """1M nodes (1000 parents x 1000 children, 10 B each): RSS, snapshot size,
    the stall a snapshot causes, restart time of a follower from that
    snapshot.  Own ensemble, created with multis of 1000 creates.

    The stall: a probe (one client per server, a ``get`` every 10 ms, in its
    own process) reports the longest gap between two gets on each server
    and every (leader, term) seen, in two windows with single sets going on:
    a control window of ``CONTROL_SETS`` sets in which no server snapshots
    (snapshot_entries is set above it), then sets until every server has
    written a new snapshot."""
    import trio

    from coordclient import Client, ops

    control_sets = 500
    total = args.scale_nodes
    batches = -(-total // 1000)
    ens = Ensemble(None, 3, os.path.join(base, "s1"), snapshot_entries=batches + 40 + control_sets + 100,
                   log_level="info")  # the servers log each snapshot's pause of the loop
    try:
        ens.wait_healthy(60)
        ep = ens.all_endpoints()

        async def parents():
            async with Client(ep, session_timeout=30, **client_security()) as c:
                await c.create("/s", b"")
                for b in range(0, -(-total // 1000), 500):
                    await c.multi([ops.create(f"/s/{p:04d}", b"") for p in range(b, min(b + 500, -(-total // 1000)))])

        trio.run(parents)
        log(f"S1: creating {total} nodes")
        t = mono()
        trio.run(_create_many, ens.endpoint(ens.leader() or 1), 0, total, 1000, 4)
        create_s = mono() - t
        time.sleep(1)
        loaded_rss = {str(n): _mb(proc_mem_kb(p, "VmRSS")) for n, p in ens.server_pids().items()}

        async def sets(count: int, until_snapshots: dict | None = None):
            """``count`` sets, or (until_snapshots: the snapshot files before)
            sets until every server has a new snapshot file, at most ``count``."""
            async with Client(ep, session_timeout=30, **client_security()) as c:
                i = 0
                deadline = mono() + 120
                while i < count and mono() < deadline:
                    for _ in range(20):
                        await c.set("/s", b"%d" % i)
                        i += 1
                    if until_snapshots is not None:
                        new = {sid: set(f) - until_snapshots[sid] for sid, f in _snap_files(ens).items()}
                        if all(new.values()):
                            break
                return (await c.status())["nodes"], i

        before = {sid: set(f) for sid, f in _snap_files(ens).items()}
        log(f"S1: probe, control window ({control_sets} sets, no snapshot)")
        control, _ = _probe_during(ens, lambda: trio.run(sets, control_sets))
        control_snapshots = sum(len(set(f) - before[sid]) for sid, f in _snap_files(ens).items())
        log(f"S1: control {control}")
        log("S1: probe, sets until every server has written a snapshot")
        found, (nodes, nudges) = _probe_during(ens, lambda: trio.run(sets, 20 * batches + 4000, before))
        log(f"S1: probe {found}")
        time.sleep(1)
        rss = {str(n): _mb(proc_mem_kb(p, "VmRSS")) for n, p in ens.server_pids().items()}
        peak = {str(n): _mb(proc_mem_kb(p, "VmHWM")) for n, p in ens.server_pids().items()}
        snaps = {str(sid): round(os.path.getsize(f[-1]) / 2 ** 20, 1) if f else None
                 for sid, f in _snap_files(ens).items()}
        roles = ens.wait_healthy()
        victim = [n for n, r in roles.items() if r == "follower"][0]
        target = ens.statuses()[victim]["applied"]
        ens.cluster.kill(victim)
        t = mono()
        ens.cluster.start_server(victim)
        serving = None
        while mono() - t < 300:
            st = ens.statuses().get(victim)
            if st is not None and st["applied"] >= target:
                serving = mono() - t
                break
            time.sleep(0.05)
        snap = _probe_summary(found)
        pauses = {}
        for sid in ens.nodes:
            with open(ens.cluster.log_path(sid), errors="replace") as f:
                pauses[str(sid)] = [float(m) for m in re.findall(r"paused the loop ([0-9.]+) ms", f.read())]
        return {"workload": "S1", "op": f"{total} nodes (1000 parents x 1000 children, 10 B each)",
                "nodes_reported": nodes, "create_s": round(create_s, 1),
                "create_nodes_per_s": round(total / create_s, 1), "server_rss_mb": rss,
                "server_rss_bytes_per_node": {k: round(v * 2 ** 20 / total) for k, v in rss.items() if v},
                "server_rss_mb_after_load": loaded_rss,
                "server_peak_rss_mb": peak, "snapshot_mb": snaps,
                "probe_max_gap_ms": snap["max_gap_ms"], "probe_leaders_seen": snap["leaders_seen"],
                "snapshot_loop_pause_ms": pauses,
                "probe_snapshot_window": dict(snap, sets=nudges),
                "probe_control_window": dict(_probe_summary(control), sets=control_sets,
                                             snapshots_written=control_snapshots),
                "restart_node": victim, "restart_to_serving_s": None if serving is None else round(serving, 2),
                "restart_rss_mb": _mb(proc_mem_kb(ens.server_pids().get(victim), "VmRSS"))}
    finally:
        ens.close()


async def hold_sessions(endpoints: list[str], count: int, timeout_ms: int, ready_q, go_evt, times) -> dict:
    """Open ``count`` sessions with the raw protocol (hello, then a ping every
    timeout/3, as the SDK does) and hold them until the window ends."""
    import trio

    from coordclient.wire import FramedStream

    opened = [0]
    errors = [0]

    async def one(i: int, started: trio.Event) -> None:
        h, p = endpoints[i % len(endpoints)].rsplit(":", 1)
        try:
            stream = await trio.open_tcp_stream(h, int(p))
            fs = FramedStream(stream)
            await fs.send({"id": 1, "op": "hello", "timeout_ms": timeout_ms, "sid": 0, "secret": None,
                           "last_zxid": 0})
            r = await fs.receive()
            if not r.get("ok"):
                raise OSError(r.get("err"))
        except Exception:  # noqa: BLE001 - counted, the figure says how many were held
            errors[0] += 1
            started.set()
            return
        opened[0] += 1
        started.set()
        rid = 2
        try:
            while mono() < times[1] or not times[1]:
                await trio.sleep(timeout_ms / 3000)
                await fs.send({"id": rid, "op": "ping"})
                while (await fs.receive()).get("id") != rid:
                    pass
                rid += 1
        except Exception:  # noqa: BLE001 - a lost session is counted, not fatal
            errors[0] += 1
        await stream.aclose()

    async with trio.open_nursery() as n:
        sem = trio.Semaphore(200)
        for i in range(count):
            async with sem:
                started = trio.Event()
                n.start_soon(one, i, started)
                await started.wait()
        await _wait_go(ready_q, go_evt, count)
    return {"opened": opened[0], "errors": errors[0]}


def scale_sessions(ens: Ensemble, args) -> dict:
    """10,000 sessions (30 s timeout, a ping every 10 s each) held by 4 processes
    across the 3 servers; server CPU over an idle window once all are open."""
    ens.wait_healthy()
    n = args.scale_sessions
    procs = 4
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    eps = [ens.endpoint(x) for x in ens.nodes]
    rss0 = {str(k): _mb(proc_mem_kb(p, "VmRSS")) for k, p in ens.server_pids().items()}
    log(f"S2: opening {n} sessions from {procs} processes, then {args.duration}s idle window")
    results, cpu = run_procs(ens, "hold_sessions", [(eps, c, 30_000) for c in per], 5.0, args.duration)
    c = cpu.summary(0)
    sts = ens.statuses()
    return {"workload": "S2", "op": f"{n} sessions, 30 s timeout, keepalive ping every 10 s",
            "sessions_opened": sum(r["opened"] for r in results), "open_errors": sum(r["errors"] for r in results),
            "sessions_reported": max((st.get("sessions", 0) for st in sts.values()), default=None),
            "server_cores_busy_idle": c["server_cores_busy"], "server_cpu_s": c["server_cpu_s"],
            "server_rss_mb_before": rss0, "cpu": c}


# ----------------------------------------------------------------------------- report
def fmt_lat(l: dict) -> str:
    return f"p50 {l.get('p50_ms')} / p99 {l.get('p99_ms')} / mean {l.get('mean_ms')} ms" if l else "-"


def table(results: list[dict]) -> str:
    rows = ["| ID | Workload | Result | Server CPU us/op | Latency | CPU cores: servers / loadgen / other | "
            "peak RSS MB per server |", "|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.get("cpu", {})
        cores = (f"{c.get('server_cores_busy')} / {c.get('loadgen_cores_busy')} / {c.get('other_cores_busy')} "
                 f"(idle {c.get('machine_cores_idle')})") if c else "-"
        rss = "/".join(str(v) for v in c.get("server_peak_rss_mb", {}).values()) if c else "-"
        w = r["workload"]
        if "error" in r:
            rows.append(f"| {w} | | failed: {r['error']} | | | | |")
        elif w in ("W2", "W2L"):
            rows.append(f"| {w} | {r['op']}, {r['connected_to']} | **{fmt_lat(r['latency'])}** | "
                        f"{c.get('server_cpu_us_per_op')} | max {r['latency'].get('max_ms')} ms | {cores} | {rss} |")
        elif w in ("W4", "W4I"):
            rows.append(f"| {w} | {r['op']}, {r['client_processes']} processes | **{r['acquisitions_per_s']} "
                        f"acquisitions/s**, wait p99 **{r['acquire_wait'].get('p99_ms')} ms** | "
                        f"{c.get('server_cpu_us_per_op')} | wait {fmt_lat(r['acquire_wait'])} | {cores} | {rss} |")
        elif w == "W6":
            rows.append(f"| {w} | {r['op']} | gaps **{', '.join(str(g) for g in r['gaps_ms'])} ms** | - | "
                        f"mean {r['gap_ms_mean']} ms, max {r['gap_ms_max']} ms | - | - |")
        elif w == "S1":
            rows.append(f"| {w} | {r['op']} | RSS {r['server_rss_mb']} MB, snapshot {r['snapshot_mb']} MB, "
                        f"probe max gap {r['probe_max_gap_ms']} ms (control window without snapshots "
                        f"{r['probe_control_window']['max_gap_ms']} ms), leaders {r['probe_leaders_seen']}, "
                        f"restart to serving **{r['restart_to_serving_s']} s** | - | created at "
                        f"{r['create_nodes_per_s']} nodes/s | - | {r['server_peak_rss_mb']} |")
        elif w == "IDLE":
            rows.append(f"| {w} | {r['op']} | servers busy **{c.get('server_cores_busy')} cores** | - | - | "
                        f"{cores} | {rss} |")
        elif w == "S2":
            rows.append(f"| {w} | {r['op']} | {r['sessions_opened']} held, servers idle at "
                        f"**{r['server_cores_busy_idle']} cores** | - | - | {cores} | {rss} |")
        else:
            extra = f" ({r['create_delete_pairs_per_s']} pairs/s)" if "create_delete_pairs_per_s" in r else ""
            if "scrape" in r:
                sc = r["scrape"]
                extra += (f" with /metrics of {sc['servers']} servers scraped every {sc['interval_s']} s "
                          f"({sc['scrapes']} scrapes, p99 {sc['latency'].get('p99_ms')} ms, {sc['errors']} errors)")
            rows.append(f"| {w} | {r['op']}, {r['outstanding']} in flight, {r['client_processes']} processes | "
                        f"**{r['ops_per_s']} ops/s**{extra} | {c.get('server_cpu_us_per_op')} | "
                        f"{fmt_lat(r['latency'])} | {cores} | {rss} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", help="an existing ensemble's client endpoints (default: start 3 servers)")
    ap.add_argument("--workloads", default=DEFAULT_WORKLOADS)
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument("--duration", type=float, default=10.0, help="measured window per workload (s)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before each window (s)")
    ap.add_argument("--outstanding", type=int, default=32)
    ap.add_argument("--procs", type=int, default=3, help="client processes for W1/W3/W5")
    ap.add_argument("--seq-ops", type=int, default=2000)
    ap.add_argument("--lock-clients", type=int, default=8)
    ap.add_argument("--lock", choices=["auto", "recipe", "inline"], default="auto",
                    help="W4's lock: the SDK recipe if importable (auto), or the bench's minimal inline one")
    ap.add_argument("--failover-trials", type=int, default=3)
    ap.add_argument("--failover-rate", type=float, default=200.0)
    ap.add_argument("--failover-steady", type=float, default=3.0)
    ap.add_argument("--attempt-timeout", type=float, default=0.25)
    ap.add_argument("--scale-nodes", type=int, default=1_000_000)
    ap.add_argument("--scale-sessions", type=int, default=10_000)
    ap.add_argument("--http", action="store_true",
                    help="give the servers this script starts HTTP ports (implied by W1P)")
    ap.add_argument("--http-endpoints", help="with --endpoints: the servers' HTTP ports, for W1P")
    ap.add_argument("--secure", action="store_true",
                    help="TLS on the client and peer ports (certificates made here), clients with certificates, "
                         "ACLs granting only that certificate on the benchmark's nodes")
    ap.add_argument("--scrape-interval", type=float, default=1.0, help="W1P's scrape period (s)")
    args = ap.parse_args()
    want = [w.strip() for w in args.workloads.split(",") if w.strip()]
    base = tempfile.mkdtemp(prefix="coord-bench-")
    if args.secure:
        if args.endpoints or "W1P" in want:
            ap.error("--secure starts its own TLS ensemble (no --endpoints) and has no plain /metrics for W1P")
        os.environ[SECURE_ENV] = os.path.join(base, "pki")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    meta = {"workload": "meta", "python": platform.python_version(), "kernel": platform.release(),
            "cpus": os.cpu_count(), "host": socket.gethostname(), "params": vars(args),
            "utc_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "ensemble": args.endpoints or "3 servers started by bench.py (tests/cluster.py), fsync on, "
                                           "tick 50 ms, election 10 ticks"
                                           + (", TLS on all ports, x509 ACLs on the nodes" if args.secure else "")}
    results: list[dict] = []
    ens = Ensemble(args.endpoints, 3, os.path.join(base, "main"), http=args.http or "W1P" in want,
                   http_endpoints=args.http_endpoints)
    try:
        ens.wait_healthy(60)
        prepare(ens)
        steps = {
            "IDLE": lambda: idle(ens, args),
            "W1": lambda: throughput(ens, "set", "W1", args),
            "W1S": lambda: throughput(ens, "set", "W1S", args, nproc=1),
            "W1P": lambda: throughput(ens, "set", "W1P", args, scrape=args.scrape_interval),
            "W2": lambda: seq_latency(ens, "W2", "follower", args.seq_ops),
            "W2L": lambda: seq_latency(ens, "W2L", "leader", args.seq_ops),
            "W3": lambda: throughput(ens, "get", "W3", args),
            "W3L": lambda: throughput(ens, "lget", "W3L", args),
            "W3S": lambda: throughput(ens, "get", "W3S", args, nproc=1),
            "W4": lambda: lock_handoff(ens, "W4", args),
            "W4I": lambda: lock_handoff(ens, "W4I", args, impl="inline"),
            "W5": lambda: throughput(ens, "create_delete", "W5", args),
            "W6": lambda: failover(ens, "W6", args),
            "S2": lambda: scale_sessions(ens, args),
        }

        def run(name: str, step) -> None:
            try:
                r = step()
            except Exception as e:  # noqa: BLE001 - record it, go on with the next workload
                log(f"{name} failed: {e!r}")
                r = {"workload": name, "error": repr(e)}
            results.append(r)
            print(json.dumps(r), flush=True)

        for name in [w for w in steps if w in want]:
            if name in ("W6", "S2") and not ens.own:
                log(f"{name}: skipped (needs an ensemble started by this script)")
                continue
            run(name, steps[name])
    finally:
        ens.close()
    if "S1" in want:  # on its own fresh ensemble, once the main one is gone (S2's sessions would still expire)
        if ens.own:
            run("S1", lambda: scale_nodes(args, base))
        else:
            log("S1: skipped (needs an ensemble started by this script)")
    meta["utc_end"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    print("\n" + table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
