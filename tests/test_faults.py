"""Fault injection against a real 3-process ensemble (``tests/faults``).

* The harness itself: links cut both ways and one way, clients cut off,
  delay, and heal -- observed through elections and client calls.
* A short set of seeded nemesis schedules (partitions, bridges, one-way
  cuts, delays, SIGKILL/restart, SIGSTOP pauses, membership changes), each
  followed by a heal and every checker: linearizability, session order,
  nothing lost, ephemerals, locks and fencing, watches.  Long soaks:
  ``python -m tests.faults --seeds 200 --duration 20``.

``KNOWN_ISSUES`` names server behaviour that is wrong today and that a
schedule may run into; such a run is reported as an expected failure with
the evidence, every other violation fails the test.
"""

import pytest
import trio

from coordclient import Client, ConnState
from coordclient.errors import CoordError
from tests.faults import checkers
from tests.faults.cluster import FaultCluster
from tests.faults.proxy import CLIENT
from tests.faults.run import run_schedule

ZOMBIE_SESSION = (
    "a server cut off from the leader (or lagging behind it) keeps answering its clients' pings and reads, "
    "so a client stays CONNECTED while the majority expires its session: a lock holder there overlaps "
    "the next holder (see test_client_of_isolated_server_notices_before_its_session_expires)"
)
KNOWN_ISSUES = {checkers.SESSION_EXPIRED_UNSEEN: ZOMBIE_SESSION}

CI_SEEDS = [101, 102, 103]
CI_DURATION = 15.0


@pytest.fixture
async def fault_cluster(tmp_path, nursery):
    c = FaultCluster(3, tmp_path)
    await nursery.start(c.run_proxies)
    c.start()
    try:
        yield c
    except BaseException:
        for sid in sorted(c.procs):
            print(f"--- server {sid} log ---\n{c.logs(sid)}")
        raise
    finally:
        c.close()


async def others_elect(cluster: FaultCluster, old: int) -> int:
    others = tuple(s for s in cluster.servers() if s != old)
    new = await cluster.wait_leader(timeout=15, among=others)
    assert new != old
    return new


async def test_links_cut_both_ways_one_way_and_heal(fault_cluster):
    c = fault_cluster
    leader = await c.wait_leader()
    async with Client(c.endpoints, session_timeout=5) as client:
        await client.create("/x", b"0")
        # both ways: the majority elects a new leader and keeps serving
        c.isolate(leader)
        new = await others_elect(c, leader)
        async with Client(c.proxy_endpoint(new), session_timeout=5) as majority:
            assert (await majority.set("/x", b"1")).version == 1
        c.heal_network()
        await c.wait_leader(timeout=15)
        # one way: followers no longer hear the leader (it still hears them)
        leader = await c.wait_leader()
        c.net.block([(leader, s) for s in c.servers() if s != leader])
        await others_elect(c, leader)
        c.heal_network()
        assert await c.wait_leader(timeout=15)
        assert (await client.set("/x", b"2")).version == 2
    # clients cut off from one server: a client that only knows that server cannot get in
    c.cut_clients(1)
    with pytest.raises(CoordError):
        async with Client(c.proxy_endpoint(1), session_timeout=1.5):
            pass
    c.heal_network()
    # delay on the client link to server 1: every round trip pays it
    c.delay([(CLIENT, 1)], 0.2)
    async with Client(c.proxy_endpoint(1), session_timeout=5) as slow:
        t = trio.current_time()
        assert (await slow.get("/x"))[0] == b"2"
        assert trio.current_time() - t >= 0.2
    c.heal_network()
    statuses = await c.statuses()
    assert len(statuses) == 3


@pytest.mark.xfail(strict=True, reason=ZOMBIE_SESSION)
async def test_client_of_isolated_server_notices_before_its_session_expires(fault_cluster):
    """ZooKeeper's promise: a server that loses its quorum drops its clients
    (they see Disconnected), so a client learns that its session may be gone
    before the ensemble can expire it.  Here the isolated server keeps
    answering pings from its own state and the client never leaves CONNECTED."""
    c = fault_cluster
    await c.wait_leader()
    async with Client(c.endpoints, session_timeout=2) as victim, \
            Client(c.endpoints, session_timeout=10) as observer:
        await victim.create("/mine", b"", ephemeral=True)
        states: list[ConnState] = []
        victim.add_listener(states.append)
        c.isolate(victim.server_id)
        with trio.fail_after(20):
            while await observer.exists("/mine") is not None:  # the majority expires the session
                await trio.sleep(0.1)
        assert ConnState.SUSPENDED in states, f"still {victim.state} after its session expired"


@pytest.mark.parametrize("seed", CI_SEEDS)
async def test_seeded_schedule(seed):
    v = await run_schedule(seed, CI_DURATION, log=print)
    print(v.line())
    assert v.ok is not None, f"no verdict: {v.notes}"
    if v.ok is False:
        unexplained = [x for x in v.violations if not any(k in x for k in KNOWN_ISSUES)]
        assert not unexplained, v.line()
        pytest.xfail("known issue: " + "; ".join(KNOWN_ISSUES[k] for k in KNOWN_ISSUES
                                                  if any(k in x for x in v.violations)) + f"\n{v.line()}")
