"""Micro-benchmark of the Raft core plus storage.

Three servers in one process, connected by an in-memory network that still
encodes every message with the real peer codec (CBOR), each writing its log
to its own directory with real fsyncs.  Many proposers keep 100-byte
proposals in flight against the leader; the benchmark reports committed
entries per second, fsyncs per second (all servers) and proposal latency.

    python bench/raft_bench.py --seconds 10 --inflight 512

This measures the consensus engine alone: no client protocol, no state
machine beyond a dict.  The service benchmark (issue 6) measures the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import cbor2
import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coord.raft.config import RaftConfig  # noqa: E402
from coord.raft.types import Entry, Membership, ProposalDropped  # noqa: E402
from coord.server.raftnode import NodeOptions, RaftNode  # noqa: E402
from coord.storage.disk import DiskStorage  # noqa: E402
from coord.transport.codec import message_from_wire, message_to_wire  # noqa: E402


class KV:
    """The smallest useful state machine: key -> value."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, e: Entry) -> int:
        if e.data:
            self.data[e.data[:8]] = e.data[8:]
        return e.index

    def snapshot(self) -> bytes:
        return cbor2.dumps(self.data)

    def restore(self, data: bytes) -> None:
        self.data = cbor2.loads(data) if data else {}


async def run(args) -> dict:
    n = 3
    root = tempfile.mkdtemp(prefix="coord-raft-bench-", dir=args.dir)
    nodes: dict[int, RaftNode] = {}
    stores: dict[int, DiskStorage] = {}
    counters = {"msgs": 0, "bytes": 0}

    def make_send(src: int):
        def send(m):
            target = nodes.get(m.to)
            if target is None:
                return
            if args.encode:
                b = cbor2.dumps(message_to_wire(m))
                counters["bytes"] += len(b)
                m = message_from_wire(cbor2.loads(b))
            counters["msgs"] += 1
            target.deliver(m)
        return send

    membership = Membership(voters=frozenset(range(1, n + 1)))
    for i in range(1, n + 1):
        st = DiskStorage(os.path.join(root, f"s{i}"))
        rec = st.open()
        stores[i] = st
        nodes[i] = RaftNode(
            i, store=st, recovered_hard_state=rec.hard_state, recovered_snapshot=rec.snapshot,
            recovered_entries=rec.entries, bootstrap=membership, state_machine=KV(),
            send=make_send(i), raft_config=RaftConfig(election_ticks=10, heartbeat_ticks=2),
            options=NodeOptions(tick_seconds=0.02, snapshot_entries=args.snapshot_entries),
            seed=i,
        )
    latencies: list[float] = []
    result: dict = {}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(node.run)
        nodes[1].campaign()
        with trio.fail_after(10):
            while not nodes[1].is_leader:
                await trio.sleep(0.01)
        leader = nodes[1]
        value = os.urandom(100 - 8)
        stop_at = [0.0]
        done = [0]

        async def proposer(k: int) -> None:
            seq = 0
            while trio.current_time() < stop_at[0]:
                key = (k * 1_000_000 + seq).to_bytes(8, "big")
                seq += 1
                t0 = time.perf_counter()
                try:
                    await leader.propose(key + value).wait()
                except ProposalDropped:
                    continue
                latencies.append(time.perf_counter() - t0)
                done[0] += 1

        # warm-up, then the measured window
        for phase, secs in (("warmup", args.warmup), ("measure", args.seconds)):
            latencies.clear()
            done[0] = 0
            f0 = sum(s.fsync_count for s in stores.values())
            m0 = counters["msgs"]
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            stop_at[0] = trio.current_time() + secs
            async with trio.open_nursery() as inner:
                for k in range(args.inflight):
                    inner.start_soon(proposer, k)
            dt = time.perf_counter() - t0
            if phase == "measure":
                fs = sum(s.fsync_count for s in stores.values()) - f0
                lat = sorted(latencies)
                result = {
                    "servers": n,
                    "inflight": args.inflight,
                    "seconds": round(dt, 2),
                    "committed_per_s": round(done[0] / dt),
                    "fsyncs_per_s_all_servers": round(fs / dt),
                    "entries_per_fsync": round(done[0] * n / max(fs, 1), 1),
                    "messages_per_s": round((counters["msgs"] - m0) / dt),
                    "latency_ms_p50": round(1000 * lat[len(lat) // 2], 2) if lat else None,
                    "latency_ms_p99": round(1000 * lat[int(len(lat) * 0.99)], 2) if lat else None,
                    "latency_ms_mean": round(1000 * statistics.fmean(lat), 2) if lat else None,
                    "process_cpu_s_per_s": round((time.process_time() - cpu0) / dt, 2),
                    "codec": bool(args.encode),
                }
        nursery.cancel_scope.cancel()
    for st in stores.values():
        st.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--inflight", type=int, default=512, help="concurrent proposers")
    ap.add_argument("--snapshot-entries", type=int, default=50_000)
    ap.add_argument("--no-encode", dest="encode", action="store_false", help="skip the CBOR codec round trip")
    ap.add_argument("--dir", default=None, help="where the logs go (must be a real disk for real fsyncs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = trio.run(run, args)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
