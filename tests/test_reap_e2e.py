"""Containers and TTL nodes on a real 3-server ensemble, through the SDK:
the leader deletes an empty container and an expired TTL node, every
server applies the same deletion (and a watch sees it), a new
leader takes over the reaping after the old one is killed, and the
session-scoped reads (ephemerals, descendant count) answer on any server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from coordclient import Client
from tests.cluster import Cluster, dump_logs_on_failure

REAP_MS = 100


@pytest.fixture
def ensemble(tmp_path, request):
    c = Cluster(3, tmp_path, extra_config=f"[namespace]\nreap_interval_ms = {REAP_MS}\n")
    c.start()
    try:
        yield c
        dump_logs_on_failure(request, c)
    finally:
        c.close()


async def gone(client: Client, path: str, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while await client.exists(path) is not None:
            await trio.sleep(0.05)


async def test_containers_and_ttl_nodes_are_reaped_on_every_server(ensemble):
    await ensemble.wait_leader()
    async with Client(ensemble.endpoints) as c:
        await c.create("/jobs", container=True)
        path, stat = await c.create("/jobs/lock-", ephemeral=True, sequential=True, include_stat=True)
        st = await c.exists("/jobs")
        assert st.ephemeral_owner == -(1 << 63) and st.kind == "container" and not st.ephemeral
        await trio.sleep(5 * REAP_MS / 1000)
        assert await c.exists("/jobs") is not None  # has a child: kept
        events = []
        with trio.fail_after(15):
            await c.exists("/jobs", watch=events.append)
            await c.delete(path)
            await gone(c, "/jobs")
        assert [(e.type, e.path) for e in events] == [("deleted", "/jobs")]

        await c.create("/cache", b"v", ttl=0.3)
        await trio.sleep(0.1)
        st = await c.exists("/cache")
        assert st is not None and st.kind == "ttl" and st.ttl == 0.3  # not expired yet
        await gone(c, "/cache")
        # every server applied the same deletions
        for sid in range(1, 4):
            async with Client(ensemble.endpoints_of([sid])) as one:
                await one.sync()
                assert await one.exists("/jobs") is None and await one.exists("/cache") is None


async def test_a_new_leader_reaps_what_the_old_one_left(ensemble):
    leader = await ensemble.wait_leader()
    others = [s for s in range(1, 4) if s != leader]
    async with Client(ensemble.endpoints_of(others)) as c:
        await c.create("/t", ttl=2.0)  # due after the leader is gone
        ensemble.kill(leader)
        await ensemble.wait_leader(exclude=(leader,))
        await gone(c, "/t", timeout=20)


async def test_session_listings_on_any_server(ensemble):
    await ensemble.wait_leader()
    async with Client(ensemble.endpoints_of([1])) as a, Client(ensemble.endpoints_of([2])) as b:
        await a.create("/app/x/y", make_parents=True)
        await a.create("/app/a-eph", ephemeral=True)
        await b.create("/app/b-eph", ephemeral=True)
        await b.sync()
        assert await b.descendant_count("/app") == 4
        assert await a.descendant_count("/app/x/y") == 0
        assert await a.ephemerals() == ["/app/a-eph"]
        assert await b.ephemerals("/app/b") == ["/app/b-eph"]
        assert await b.ephemerals("/other") == []
        kids, st = await b.children("/app", include_stat=True)  # getChildren2: the listing and the node's stat
        assert kids == ["a-eph", "b-eph", "x"] and st.num_children == 3 and st.cversion == 3


def test_coordctl_creates_containers_and_ttl_nodes(ensemble):
    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coordclient.cli", *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "COORD_ENDPOINTS": ensemble.endpoints})

    trio.run(ensemble.wait_leader)
    assert ctl("create", "-c", "/q").returncode == 0
    assert ctl("create", "--ttl", "600", "/q/t").returncode == 0
    assert ctl("create", "-e", "-c", "/bad").returncode == 2  # a usage error, nothing created
    listing = ctl("ls", "-l", "/").stdout.split()
    assert listing[listing.index("q") - 1] == "c"
    assert ctl("ls", "-l", "/q").stdout.split()[3] == "t"
    assert ctl("stat", "/bad").returncode != 0
