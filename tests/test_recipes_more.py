"""The newer recipes against the in-process fake ensemble: barriers, counter,
queues, group membership, caches, leases.  On asyncio and Trio; tests that
wait out timeouts run in virtual time (Trio's autojump clock)."""

import random

import anyio
import pytest

from coordclient import ops
from coordclient.errors import NodeExistsError
from coordclient.recipes import (
    Barrier,
    Counter,
    DoubleBarrier,
    Group,
    Lease,
    LockingQueue,
    LockLostError,
    NodeCache,
    Queue,
    TreeCache,
)
from tests.backends import VIRTUAL_TIME
from tests.fakeserver import open_cluster

pytestmark = pytest.mark.anyio


async def wait_until(pred, timeout=10.0):
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.01)


# -- counter ---------------------------------------------------------------------


async def test_counter_adds_are_never_lost_under_contention():
    async with open_cluster(2) as cl:
        async def worker(k):
            async with cl.client(seed=k) as c:
                counter = Counter(c, "/stats/hits")
                for _ in range(10):
                    await counter.add(1)

        async with anyio.create_task_group() as tg:
            for k in range(5):
                tg.start_soon(worker, k)
        async with cl.client() as c:
            assert await Counter(c, "/stats/hits").get() == 50
            assert cl.state.data("/stats/hits") == b"50"
            f = Counter(c, "/stats/ratio", 0.5)
            assert await f.get() == 0.5 and await f.add(0.25) == 0.75
            assert not await f.compare_and_set(1.0, 0.0)
            assert await f.compare_and_set(0.75, 2.0) and await f.get() == 2.0
            with pytest.raises(TypeError):
                Counter(c, "/x", "0")


# -- barriers ---------------------------------------------------------------------


async def test_barrier_holds_waiters_until_removed():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        barrier = Barrier(a, "/b/go")
        assert await barrier.create() and not await barrier.create()
        assert not await Barrier(b, "/b/go").wait(timeout=0.1)
        passed = []

        async def waiter():
            passed.append(await Barrier(b, "/b/go").wait())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.1)
            assert passed == []
            assert await barrier.remove()
        assert passed == [True] and await Barrier(b, "/b/go").wait(timeout=1)


async def test_double_barrier_enters_and_leaves_together():
    log = []
    async with open_cluster(1) as cl:
        async def participant(k):
            async with cl.client(seed=k) as c:
                db = DoubleBarrier(c, "/db", 3, identifier=f"p{k}")
                await anyio.sleep(k * 0.05)
                log.append(("arrive", k))
                assert await db.enter(timeout=10)
                log.append(("enter", k))
                await anyio.sleep((3 - k) * 0.05)
                log.append(("done", k))
                assert await db.leave(timeout=10)
                log.append(("leave", k))

        async with anyio.create_task_group() as tg:
            for k in range(3):
                tg.start_soon(participant, k)
    kinds = [kind for kind, _ in log]
    assert kinds.index("enter") > max(i for i, k in enumerate(kinds) if k == "arrive")  # nobody entered early
    assert kinds.index("leave") > max(i for i, k in enumerate(kinds) if k == "done")  # nobody left early
    assert "/db/ready" not in cl.state.nodes and not cl.state.nodes["/db"].children


# -- queues -------------------------------------------------------------------------


async def test_queue_is_fifo_and_each_item_is_taken_once():
    async with open_cluster(2) as cl, cl.client(seed=1) as producer:
        q = Queue(producer, "/q")
        await q.put_all([b"a", b"b"])
        for i in range(30):
            await q.put(b"%d" % i)
        assert await q.length() == 32
        assert [await q.get(), await q.get()] == [b"a", b"b"]
        got = []

        async def consumer(k):
            async with cl.client(seed=10 + k) as c:
                cq = Queue(c, "/q")
                while (item := await cq.get(timeout=0.2)) is not None:
                    got.append(item)

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(consumer, k)
        assert sorted(got, key=int) == [b"%d" % i for i in range(30)] and len(got) == 30
        assert await q.get(timeout=0.05) is None


async def test_locking_queue_item_comes_back_when_its_taker_dies():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        qa, qb = LockingQueue(a, "/lq"), LockingQueue(b, "/lq")
        await qa.put(b"one")
        await qa.put(b"two")
        first = await qa.get()
        assert first.data == b"one" and first.fencing_token > 0
        second = await qb.get()  # "one" is taken: b gets "two"
        assert second.data == b"two"
        await second.release()  # back in the queue
        assert (await qb.get(timeout=1)).data == b"two"
        assert await qb.get(timeout=0.1) is None  # both taken
        cl.state.expire_session(a.session_id)  # a dies holding "one"
        again = await qb.get(timeout=5)
        assert again.data == b"one" and again.fencing_token > first.fencing_token
        await again.consume([ops.create("/lq-result", b"done")])
        assert cl.state.data("/lq-result") == b"done" and await qb.length() == 1
        assert first.lost
        with pytest.raises(LockLostError):
            await first.fenced([ops.create("/stale")])


async def test_locking_queue_take_consumes_or_releases_and_cancels_on_loss():
    async with open_cluster(1) as cl, cl.client(seed=1) as c, cl.client(seed=2) as admin:
        q = LockingQueue(c, "/lq")
        for d in (b"ok", b"fails", b"lost"):
            await q.put(d)
        async with q.take() as item:
            assert item.data == b"ok"
        with pytest.raises(RuntimeError):
            async with q.take() as item:
                raise RuntimeError("processing failed")
        assert await q.length() == 2  # "fails" is back
        with pytest.raises(LockLostError):
            async with q.take() as item:
                assert item.data == b"fails"
                await admin.delete(item.hold.node)  # the claim is revoked
                await anyio.sleep(10)
        assert await q.length() == 2 and not cl.state.nodes["/lq/taken"].children


# -- group membership ------------------------------------------------------------------


async def test_group_membership_and_live_view():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b, cl.client(seed=3) as w:
        group = Group(w, "/svc/api")
        async with group.view() as view:
            assert len(view.snapshot()) == 0
            seen = []
            view.listen(lambda snap: seen.append(snap.ids))
            reg_a = await Group(a, "/svc/api").join("a:1", {"host": "a", "port": 1})
            snap = await view.changed()
            await wait_until(lambda: view.snapshot().ids == ("a:1",))
            m = view.snapshot().get("a:1")
            assert m.host == "a" and m.port == 1 and m.czxid > 0
            with pytest.raises(NodeExistsError):
                await Group(b, "/svc/api").join("a:1")  # the id is taken by a live member
            async with await Group(b, "/svc/api").join("b:2", {"host": "b", "port": 2}):
                await wait_until(lambda: view.snapshot().ids == ("a:1", "b:2"))
                before = view.snapshot()
                await reg_a.update({"host": "a", "port": 11})
                await wait_until(lambda: view.snapshot().get("a:1").port == 11)
                assert before.get("a:1").port == 1  # a snapshot never changes under its reader
            await wait_until(lambda: view.snapshot().ids == ("a:1",))
            cl.state.expire_session(a.session_id)  # a crashes: it drops out
            await wait_until(lambda: view.snapshot().ids == ())
            assert (await group.members()).ids == ()
            assert seen[-1] == () and ("a:1", "b:2") in seen
            assert snap.version >= 1


# -- caches -------------------------------------------------------------------------------


def subtree(state, root):
    return {p: (n.data, n.mzxid) for p, n in state.nodes.items() if p == root or p.startswith(root + "/")}


def cached(cache):
    return {p: (n.data, n.stat.mzxid) for p, n in cache.snapshot().items()}


@VIRTUAL_TIME
async def test_tree_cache_converges_through_failovers_and_resyncs():
    rng = random.Random(3)
    async with open_cluster(3) as cl, cl.client(seed=1, servers=[1, 2]) as c, cl.client(seed=2, servers=[3]) as w:
        await w.create("/t/a", b"0", make_parents=True)
        events = []
        async with TreeCache(c, "/t") as cache:
            cache.listen(lambda ev: events.append(ev.type))
            await cache.initialized()
            assert cached(cache) == subtree(cl.state, "/t")
            paths = ["/t/a", "/t/b", "/t/a/x", "/t/a/y", "/t/b/z/deep"]
            for step in range(200):
                p = rng.choice(paths)
                try:
                    if p in cl.state.nodes and rng.random() < 0.3:
                        await w.delete(p, recursive=True)
                    elif p in cl.state.nodes:
                        await w.set(p, b"%d" % step)
                    else:
                        await w.create(p, b"%d" % step, make_parents=True)
                except Exception:  # noqa: BLE001 - races with our own deletes are fine
                    pass
                if step % 40 == 39:
                    cl.server(c.server_id).drop_connections()
                if step == 120:
                    cl.state.trim_history()  # the cache's next resume must resync
                    cl.server(c.server_id).drop_connections()
            await wait_until(lambda: cached(cache) == subtree(cl.state, "/t"), timeout=30)
            assert {"initialized", "added", "updated", "removed"} <= set(events)
            assert events.count("initialized") >= 2  # the resync reloaded the tree
            assert cache.children("/t") == sorted(cl.state.nodes["/t"].children)


async def test_node_cache_follows_one_node():
    async with open_cluster(1) as cl, cl.client(seed=1) as c, cl.client(seed=2) as w:
        async with NodeCache(c, "/cfg") as cache:
            await cache.initialized()
            assert cache.current is None
            await w.create("/cfg", b"v1")
            await wait_until(lambda: cache.current is not None and cache.current.data == b"v1")
            await w.create("/cfg/child")  # not part of a node cache
            await w.set("/cfg", b"v2")
            await wait_until(lambda: cache.current.data == b"v2")
            assert len(cache) == 1
            await w.delete("/cfg", recursive=True)
            await wait_until(lambda: cache.current is None)


# -- leases ---------------------------------------------------------------------------------


async def test_lease_grants_at_most_n_and_outlives_a_crash_only_until_expiry():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        la = Lease(a, "/lease", duration=0.6, max_holders=2, clock_margin=0.05)
        lb = Lease(b, "/lease", duration=0.6, max_holders=2, clock_margin=0.05)
        g1, g2 = await la.acquire(), await la.acquire()
        assert g1.fencing_token != g2.fencing_token and len(await lb.holders()) == 2
        assert await lb.try_acquire() is None  # two grants at most
        t0 = anyio.current_time()
        g3 = await lb.acquire(timeout=5)  # a "crashed": nobody releases; the grant expires
        waited = anyio.current_time() - t0
        assert 0.3 < waited < 3 and g3.fencing_token > max(g1.fencing_token, g2.fencing_token)
        assert g1.lost or g2.lost  # the holder's own clock said so first
        stale = g1 if g1.node == g3.node else g2
        with pytest.raises(LockLostError):
            await stale.fenced([ops.create("/stale")])
        assert "/stale" not in cl.state.nodes
        await g3.release()


async def test_lease_body_is_cancelled_at_expiry_unless_renewed():
    async with open_cluster(1) as cl, cl.client(seed=1) as c:
        lease = Lease(c, "/lease", duration=0.4, clock_margin=0.05)
        reached = []
        async with await lease.acquire() as grant:
            await anyio.sleep(0.2)
            await grant.renew(0.4)
            await anyio.sleep(0.3)  # past the first expiry: the renewal kept it
            reached.append("renewed")
            assert grant.expires_in > 0
        with pytest.raises(LockLostError):
            async with await lease.acquire() as grant:
                await anyio.sleep(5)
                reached.append("not reached")
        assert reached == ["renewed"]
        assert not cl.state.nodes["/lease"].children  # released on the way out


# -- the blocking forms ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_recipes(backend):
    import threading

    from coordclient.sync import SyncClient
    from tests.fakeserver import ThreadedFakeCluster

    with ThreadedFakeCluster(1) as fake, SyncClient(fake.endpoints, session_timeout=3, backend=backend) as a, \
            SyncClient(fake.endpoints, session_timeout=3, backend=backend) as b:
        counter = a.counter("/s/count")
        assert counter.add(2) == 2 and b.counter("/s/count").add(3) == 5 and counter.get() == 5

        barrier = a.barrier("/s/barrier")
        assert barrier.create() and not b.barrier("/s/barrier").wait(timeout=0.1)
        threading.Timer(0.1, barrier.remove).start()
        assert b.barrier("/s/barrier").wait(timeout=5)

        q = a.queue("/s/q")
        q.put(b"1")
        q.put(b"2")
        assert b.queue("/s/q").get(timeout=1) == b"1" and q.get(timeout=1) == b"2" and q.get(timeout=0.05) is None

        lq = a.locking_queue("/s/lq")
        lq.put(b"job")
        with b.locking_queue("/s/lq").take(timeout=1) as item:
            assert item.data == b"job" and item.fencing_token > 0 and not item.lost
            assert lq.get(timeout=0.05) is None  # taken
        assert lq.length() == 0  # consumed

        group = a.group("/s/g")
        with group.view() as view:
            with b.group("/s/g").join("b", {"port": 1}) as reg:
                assert reg.member.port == 1
                deadline = 50
                while view.snapshot().ids != ("b",) and deadline:
                    try:  # the change may land between the check and the wait: then look again
                        view.changed(timeout=0.2)
                    except TimeoutError:
                        pass
                    deadline -= 1
                assert view.snapshot().ids == ("b",)
            assert group.members().ids == ()

        with a.tree_cache("/s") as cache:
            cache.wait_initialized(timeout=5)
            assert cache.get("/s/count").data == b"5" and "g" in cache.children("/s")

        lease = a.lease("/s/lease", duration=5, clock_margin=0.05)
        with lease.acquire(timeout=1) as grant:
            assert grant.fencing_token > 0 and grant.expires_in > 4
            assert b.lease("/s/lease", duration=5).try_acquire() is None
            assert grant.fenced([ops.create("/s/leased", b"")]) == ["/s/leased"]
        assert b.lease("/s/lease", duration=5).try_acquire() is not None

        with a.ring("/s/ring", "a", partitions=8, vnodes=4) as ring:
            ring.settled(timeout=10)
            assert len(ring.owned()) == 8 and ring.owns("any key") and ring.owner("any key") == "a"
