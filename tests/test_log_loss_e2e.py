"""End to end: a server whose WAL was cut or deleted refuses to start, and
rejoins without losing anything once the operator passes --recover-lost-log.

Real server processes on 127.0.0.1; the damage is done to the files while
the server is down, as a disk failure or an operator's mistake would.
"""

import os

import pytest
import trio

from coord.cli import EXIT_DATA_ERROR
from coordclient import Client
from tests.cluster import Cluster, dump_logs_on_failure


@pytest.fixture
def cluster(request, tmp_path):
    c = Cluster(3, tmp_path)
    c.start()
    try:
        yield c
    finally:
        dump_logs_on_failure(request, c)
        c.close()


def wal_files(cluster: Cluster, sid: int) -> list[str]:
    d = os.path.join(cluster.base, f"data{sid}", "wal")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.startswith("wal-"))


async def wait_exit(cluster: Cluster, sid: int, timeout: float = 20.0) -> int:
    with trio.fail_after(timeout):
        while cluster.procs[sid].poll() is None:
            await trio.sleep(0.05)
    return cluster.procs[sid].returncode


async def wait_status(cluster: Cluster, sid: int, pred, timeout: float = 20.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            st = (await cluster.statuses()).get(sid)
            if st is not None and pred(st):
                return st
            await trio.sleep(0.05)


@pytest.mark.parametrize("damage", ["cut", "delete"])
async def test_damaged_wal_is_refused_then_recovered_with_the_flag(cluster, damage):
    leader = await cluster.wait_leader()
    victim = next(s for s in (1, 2, 3) if s != leader)
    async with Client(cluster.endpoints, session_timeout=6) as c:
        await c.create("/acked", b"")
        written = [await c.create("/acked/n-", b"%d" % k, sequential=True) for k in range(150)]
    st = (await cluster.statuses())[leader]
    await cluster.wait_applied_all(st["commit"])
    cluster.kill(victim)

    (seg,) = wal_files(cluster, victim)[-1:]
    if damage == "cut":
        with open(seg, "rb") as f:
            used = len(f.read().rstrip(b"\0"))
        os.truncate(seg, used // 2)  # half of what this server had written and acknowledged
    else:
        for p in wal_files(cluster, victim):
            os.unlink(p)
    before = {p: open(p, "rb").read() for p in wal_files(cluster, victim)}

    cluster.start_server(victim)
    assert await wait_exit(cluster, victim) == EXIT_DATA_ERROR
    log = cluster.logs(victim)
    assert "refuses to start" in log and os.path.basename(seg) in log and "index" in log
    assert "--recover-lost-log" in log
    assert {p: open(p, "rb").read() for p in wal_files(cluster, victim)} == before  # nothing changed

    cluster.start_server(victim, ("--recover-lost-log",))
    st = await wait_status(cluster, victim, lambda s: not s["recovering"] and s["applied"] >= st["commit"])
    assert st["leader"] == leader
    assert "voting again" in cluster.logs(victim)
    # Everything acknowledged is there, read from the repaired server itself.
    async with Client(cluster.endpoints_of([victim]), session_timeout=6) as c:
        kids = await c.children("/acked")
        assert sorted("/acked/" + k for k in kids) == sorted(written)
    # And it stays whole across a plain restart.
    cluster.kill(victim)
    cluster.start_server(victim)
    await wait_status(cluster, victim, lambda s: not s["recovering"] and s["leader"] == leader)
