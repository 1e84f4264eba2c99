"""CPU per ``get``: the async client on asyncio and Trio, and SyncClient.

Measures this process's CPU time (all threads: ``time.process_time``)
spent per ``get`` of a small node, so the server's own work is not counted.
Calls are made one after another (the latency-bound case, where per-call
overhead shows most), and SyncClient also from several threads at once.

    python bench/sdk_cpu.py                      # starts one server, 5000 gets per mode
    python bench/sdk_cpu.py --endpoints $COORD_ENDPOINTS --n 20000
    python bench/sdk_cpu.py --secure             # the same over TLS, with a client certificate

Without ``--endpoints`` it starts a one-server ensemble (tests/cluster.py)
in a temporary directory; with ``--secure`` that server has ``[tls]`` and
every client connects with TLS and presents a certificate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import anyio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "client")]

from coordclient import Client, SyncClient  # noqa: E402

PATH = "/sdk-cpu"
TLS: dict = {}  # Client keyword arguments: {"tls": context} under --secure


async def _async_gets(endpoints: str, n: int) -> float:
    async with Client(endpoints, session_timeout=10, **TLS) as c:
        for _ in range(200):  # warm up
            await c.get(PATH)
        t0 = time.process_time()
        for _ in range(n):
            await c.get(PATH)
        return (time.process_time() - t0) / n


def async_cpu(endpoints: str, n: int, backend: str) -> float:
    return anyio.run(_async_gets, endpoints, n, backend=backend)


def sync_cpu(endpoints: str, n: int, backend: str, threads: int = 1) -> float:
    with SyncClient(endpoints, session_timeout=10, backend=backend, **TLS) as c:
        for _ in range(200):
            c.get(PATH)
        per_thread = n // threads

        def work() -> None:
            for _ in range(per_thread):
                c.get(PATH)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        t0 = time.process_time()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return (time.process_time() - t0) / (per_thread * threads)


def measure(endpoints: str, n: int, rounds: int) -> dict:
    with SyncClient(endpoints, **TLS) as c:
        if c.exists(PATH) is None:
            c.create(PATH, b"x" * 100)
    modes = {
        "async asyncio": lambda: async_cpu(endpoints, n, "asyncio"),
        "async trio": lambda: async_cpu(endpoints, n, "trio"),
        "sync (asyncio loop)": lambda: sync_cpu(endpoints, n, "asyncio"),
        "sync (trio loop)": lambda: sync_cpu(endpoints, n, "trio"),
        "sync (asyncio loop), 8 threads": lambda: sync_cpu(endpoints, n, "asyncio", 8),
    }
    out: dict[str, float] = {}
    for _ in range(rounds):  # interleaved rounds, best of each: the machine is shared
        for name, fn in modes.items():
            us = fn() * 1e6
            out[name] = min(out.get(name, us), us)
    return out


def secure(on: bool, tmp: str) -> dict:
    """The Cluster's TLS arguments under --secure (and TLS set for the clients)."""
    if not on:
        return {}
    from tests.tlsutil import TLSMaterial

    material = TLSMaterial(os.path.join(tmp, "pki"))
    TLS["tls"] = material.client_context(material.client("bench"))
    return {"tls": lambda sid: material.tls_table(sid, client_auth="request"), "client_ssl": TLS["tls"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secure", action="store_true", help="TLS on the server's port, a client certificate")
    args = ap.parse_args()
    if args.endpoints:
        if args.secure:
            ap.error("--secure starts its own TLS server (no --endpoints)")
        result = measure(args.endpoints, args.n, args.rounds)
    else:
        from tests.cluster import Cluster

        with tempfile.TemporaryDirectory() as tmp, Cluster(1, tmp, **secure(args.secure, tmp)) as cluster:
            cluster.start()
            anyio.run(cluster.wait_leader, backend="trio")
            result = measure(cluster.endpoints, args.n, args.rounds)
    base = result["async asyncio"]
    for name, us in result.items():
        print(f"{name:34s} {us:7.1f} us CPU/get  ({us / base:5.2f}x async asyncio)")
    print(json.dumps({k: round(v, 1) for k, v in result.items()}))


if __name__ == "__main__":
    main()
