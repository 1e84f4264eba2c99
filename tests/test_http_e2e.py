"""The HTTP port of a real 3-process ensemble behind the fault proxies:
readiness follows a server's contact with the leader, and any member's
ensemble view follows a leader's death."""

from __future__ import annotations

import json

import pytest
import trio

from tests.cluster import dump_logs_on_failure
from tests.faults.cluster import FaultCluster
from tests.httpclient import get_json, http


@pytest.fixture
async def cluster(request, tmp_path, nursery):
    c = FaultCluster(3, tmp_path, http=True)
    await nursery.start(c.run_proxies)
    c.start()
    try:
        yield c
    finally:
        dump_logs_on_failure(request, c)
        c.close()


async def ready_status(c: FaultCluster, sid: int) -> tuple[int, dict]:
    status, _, body = await http(c.http_ports[sid], "/ready", timeout=5)
    return status, json.loads(body)


async def wait_ready(c: FaultCluster, sid: int, want: int, timeout: float) -> dict:
    body: dict = {}
    with trio.fail_after(timeout):
        while True:
            try:
                status, body = await ready_status(c, sid)
            except OSError:
                status = 0
            if status == want:
                return body
            await trio.sleep(0.1)


async def test_ready_follows_contact_with_the_leader(cluster):
    c = cluster
    leader = await c.wait_leader()
    follower = min(s for s in c.servers() if s != leader)
    for sid in c.servers():
        await wait_ready(c, sid, 200, timeout=15)
    c.isolate(follower)
    body = await wait_ready(c, follower, 503, timeout=10)
    assert body["ready"] is False and body["missing"], body
    assert set(body["missing"]) & {"leader", "leader_contact", "linearizable_read"}
    assert (await http(c.http_ports[follower], "/health"))[0] == 200  # alive all along
    c.heal_network()
    body = await wait_ready(c, follower, 200, timeout=20)
    assert body["missing"] == [] and body["leader"]


async def test_any_member_shows_the_ensemble_and_a_new_leader_after_a_kill(cluster):
    c = cluster
    leader = await c.wait_leader()
    observer = min(s for s in c.servers() if s != leader)
    port = c.http_ports[observer]
    view = await get_json(port, "/api/ensemble")
    assert [m["id"] for m in view["members"]] == [1, 2, 3]
    assert view["leader"] == leader and sum(m.get("role") == "leader" for m in view["members"]) == 1
    assert all(m["reachable"] and m["http"] for m in view["members"])
    c.kill(leader)
    t0 = trio.current_time()
    with trio.fail_after(10):
        while True:
            view = await get_json(port, "/api/ensemble")
            if view["leader"] not in (0, leader):
                break
            await trio.sleep(0.1)
    assert trio.current_time() - t0 < 3.0, "the new leader took too long to show"
    dead = next(m for m in view["members"] if m["id"] == leader)
    assert dead["reachable"] is False and dead["health"] == "unreachable"
