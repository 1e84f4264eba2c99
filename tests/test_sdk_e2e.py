"""The SDK against a real 3-server ensemble, on asyncio and on Trio: the
server a client is connected to is SIGKILLed or SIGSTOPped under it, and
the session, its ephemerals, its watches, its lock and a ring's hand-off
must come through as promised."""

import collections
import random
from contextlib import asynccontextmanager

import anyio
import pytest
import trio

from coordclient import Client, ConnState, ops
from coordclient.recipes import LockingQueue, RingMember
from tests.cluster import Cluster, dump_logs_on_failure

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(3, tmp_path_factory.mktemp("sdk"))
    c.start()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def ensemble(cluster, request):
    """Every server running and resumed, with a leader (waited for in a
    Trio run of its own: the harness is Trio code)."""
    for sid in range(1, cluster.n + 1):
        cluster.resume(sid)
        if sid not in cluster.running():
            cluster.start_server(sid)
    trio.run(cluster.wait_leader)
    yield cluster
    dump_logs_on_failure(request, cluster)


async def wait_until(pred, timeout=15.0):
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.02)


@asynccontextmanager
async def follower_client(ensemble, **kw):
    """A Client connected to a follower (the usual case, and one whose loss
    does not also cost an election)."""
    leader = await anyio.to_thread.run_sync(lambda: trio.run(ensemble.wait_leader))
    for seed in range(20):
        async with Client(ensemble.endpoints, rng=random.Random(seed), **kw) as c:
            if c.server_id != leader:
                yield c
                return
    pytest.fail("never connected to a follower")


async def test_session_watch_and_lock_survive_kill_and_pause_of_the_clients_server(ensemble, anyio_backend_name):
    root = f"/e2e-{anyio_backend_name}"
    async with follower_client(ensemble, session_timeout=4) as c, Client(ensemble.endpoints) as writer:
        states = []
        c.add_listener(states.append)
        await c.create(f"{root}/eph", ephemeral=True, make_parents=True)
        events = []
        async with c.watch(root, recursive=True) as stream, c.lock(f"{root}/lock") as lock:
            async def collect():
                async for ev in stream:
                    events.append(ev)

            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                token = lock.fencing_token
                for round_, action in enumerate(("kill", "pause")):
                    victim = c.server_id
                    if action == "kill":
                        ensemble.kill(victim)
                    else:
                        ensemble.pause(victim)
                    # writes go on meanwhile, through the writer's own server
                    for i in range(5):
                        await writer.create(f"{root}/n{round_}-{i}", b"")
                    await c.wait_state(ConnState.RECONNECTED, ConnState.CONNECTED, timeout=10)
                    await wait_until(lambda: c.connected and c.server_id != victim)
                    # exactly once: a write made right after the failover is applied once
                    await c.create(f"{root}/after-{action}", b"")
                    if action == "kill":
                        ensemble.start_server(victim)
                    else:
                        ensemble.resume(victim)
                    assert await c.exists(f"{root}/eph") is not None  # the session lived on
                    assert lock.held and not lock.lost and lock.fencing_token == token
                    await lock.fenced([ops.set(root, action.encode())])
                await wait_until(lambda: len([e for e in events if e.type == "created"]) >= 12)
                tg.cancel_scope.cancel()
        created = [e.path for e in events if e.type == "created"]
        expected = {f"{root}/n{r}-{i}" for r in range(2) for i in range(5)} | {f"{root}/after-kill",
                                                                              f"{root}/after-pause"}
        assert expected <= set(created)
        assert len(created) == len(set(created))  # no event twice across the failovers
        zxids = [e.zxid for e in events]
        assert zxids == sorted(zxids)
        assert ConnState.SUSPENDED in states and ConnState.EXPIRED not in states


async def test_locking_queue_item_returns_when_its_takers_server_is_killed_and_session_lost(ensemble,
                                                                                           anyio_backend_name):
    path = f"/e2e-lq-{anyio_backend_name}"
    async with Client(ensemble.endpoints, session_timeout=3) as owner:
        q = LockingQueue(owner, path)
        await q.put(b"job")
        async with Client(ensemble.endpoints, session_timeout=1.5) as taker:
            item = await LockingQueue(taker, path).get(timeout=5)
            assert item is not None and item.data == b"job"
            ensemble.kill(taker.server_id)  # the taker fails over: its claim survives
            await wait_until(lambda: taker.connected and taker.state is ConnState.RECONNECTED)
            assert not item.lost
            assert await q.get(timeout=0.5) is None
            ensemble.start_server([s for s in range(1, 4) if s not in ensemble.running()][0])
            # now the taker vanishes without releasing (its session is left to expire)
            taker._finish()
        again = await q.get(timeout=15)
        assert again is not None and again.data == b"job" and again.fencing_token > item.fencing_token
        await again.consume()
        assert await q.length() == 0


async def test_ring_never_has_two_owners_when_a_members_server_is_killed(ensemble, anyio_backend_name):
    path = f"/e2e-ring-{anyio_backend_name}"
    intervals = collections.defaultdict(list)  # partition -> [(token, start, end, member)]

    async with anyio.create_task_group() as tg:
        def member(client, name):
            ring = None

            async def work(n, token):
                start = anyio.current_time()
                key = next(k for k in (f"k{i}" for i in range(10_000)) if ring.partition(k) == n)
                try:
                    async with ring.guard(key):
                        await anyio.sleep_forever()
                except Exception:  # noqa: BLE001 - the slice moved on
                    pass
                finally:
                    intervals[n].append((token, start, anyio.current_time(), name))

            ring = RingMember(client, path, name, vnodes=8, partitions=8,
                              on_assign=lambda n, token: tg.start_soon(work, n, token), handoff_timeout=1)
            return ring

        async with Client(ensemble.endpoints, session_timeout=3) as a, \
                Client(ensemble.endpoints, session_timeout=3) as b:
            async with member(a, "a") as ra, member(b, "b") as rb:
                with anyio.fail_after(15):
                    await ra.settled()
                    await rb.settled()
                assert set(ra.owned()) | set(rb.owned()) == set(range(8))
                assert not set(ra.owned()) & set(rb.owned())
                ensemble.kill(a.server_id)  # a fails over within its margin: nothing moves
                await wait_until(lambda: a.connected and a.state is ConnState.RECONNECTED)
                async with Client(ensemble.endpoints, session_timeout=3) as c:
                    ensemble.start_server([s for s in range(1, 4) if s not in ensemble.running()][0])
                    async with member(c, "c") as rc:
                        with anyio.fail_after(20):
                            for r in (ra, rb, rc):
                                while set(r.members.ids) != {"a", "b", "c"}:
                                    await anyio.sleep(0.05)
                                await r.settled()
                        owned = [set(r.owned()) for r in (ra, rb, rc)]
                        assert set().union(*owned) == set(range(8)) and sum(map(len, owned)) == 8
        tg.cancel_scope.cancel()
    for n, spans in intervals.items():
        spans.sort(key=lambda s: s[1])
        for (tok_a, _, end_a, who_a), (tok_b, start_b, _, who_b) in zip(spans, spans[1:]):
            assert end_a <= start_b and tok_a < tok_b, (n, spans)
    assert sum(len(s) for s in intervals.values()) >= 8


async def test_writes_say_their_zxid(ensemble, anyio_backend_name):
    """Issue 11 item 6: create (with include_stat) and delete tell the zxid of
    the write itself, the same zxid its watch event carries."""
    root = f"/zx-{anyio_backend_name}"
    async with Client(ensemble.endpoints) as c:
        await c.create(root)
        async with c.watch(root, recursive=True) as stream:
            path, stat = await c.create(f"{root}/a", b"x", include_stat=True)
            assert path == f"{root}/a" and stat.czxid == stat.mzxid > 0 and stat.data_length == 1
            assert await c.create(f"{root}/b") == f"{root}/b"  # the plain call is unchanged
            deleted_at = await c.delete(f"{root}/a")
            assert deleted_at > stat.czxid
            events = []
            with anyio.fail_after(10):
                async for ev in stream:
                    events.append(ev)
                    if ev.type == "deleted":
                        break
        assert (events[0].type, events[0].zxid) == ("created", stat.czxid)
        assert (events[-1].type, events[-1].path, events[-1].zxid) == ("deleted", f"{root}/a", deleted_at)
        await c.delete(root, recursive=True)
