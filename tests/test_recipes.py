"""Recipes (locks, read/write locks, semaphores, elections) against the
in-process fake ensemble.  Tests that wait out timeouts or count requests
run in virtual time (Trio's autojump clock), the others on asyncio too.

The end-to-end versions against real servers are in test_recipes_e2e.py;
here each promise is checked in isolation, with faults injected exactly.
"""

import random

import pytest
import anyio

from coordclient import ConnState, ops
from coordclient.errors import MultiError, NoNodeError, SessionExpiredError
from coordclient.protocol import Err
from coordclient.recipes import (
    Election,
    LeadershipLostError,
    Lock,
    LockLostError,
    ReadWriteLock,
    RecipeUsageError,
    Semaphore,
)
from coordclient.recipes.blocking import SyncElection, SyncLock, SyncReadWriteLock, SyncSemaphore
from coordclient.sync import SyncClient
from tests.backends import VIRTUAL_OR_REAL, VIRTUAL_TIME
from tests.fakeserver import ThreadedFakeCluster, open_cluster

pytestmark = pytest.mark.anyio


async def wait_until(pred, timeout=30.0):
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.01)


def lock_nodes(state, path):
    node = state.nodes.get(path)
    return sorted(node.children) if node else []


def op_diff(before, after):
    """Requests made between two snapshots of the fake's counters (keepalive pings aside)."""
    return {op: n - before[op] for op, n in after.items() if n != before[op] and op != "ping"}


def assert_exclusive(sections):
    """(token, start, end) tuples: sections never overlap and tokens strictly
    increase from one holder to the next."""
    sections = sorted(sections, key=lambda s: s[1])
    for (tok_a, _, end_a), (tok_b, start_b, _) in zip(sections, sections[1:]):
        assert end_a <= start_b, f"overlap: {tok_a} ended at {end_a}, {tok_b} started at {start_b}"
        assert tok_a < tok_b, f"token went from {tok_a} to {tok_b}"


# -- locks ----------------------------------------------------------------


@VIRTUAL_OR_REAL
async def test_lock_excludes_and_tokens_increase_across_failovers():
    rng = random.Random(7)
    sections = []
    async with open_cluster(3) as cl:
        async def worker(k):
            async with cl.client(seed=k) as c:
                lock = Lock(c, "/app/lock")
                for _ in range(12):
                    async with lock:
                        start = anyio.current_time()
                        await lock.fenced([ops.create("/app/log-", b"%d" % lock.fencing_token, sequential=True,
                                                      make_parents=True)])
                        await anyio.sleep(rng.random() / 50)
                        sections.append((lock.fencing_token, start, anyio.current_time()))

        async def chaos():
            for _ in range(30):
                await anyio.sleep(0.05)
                rng.choice(cl.servers).drop_connections()

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(chaos)
            for k in range(6):
                nursery.start_soon(worker, k)
        assert len(sections) == 72
        assert_exclusive(sections)
        logged = [int(cl.state.nodes[f"/app/{n}"].data) for n in sorted(lock_nodes(cl.state, "/app"))
                  if n.startswith("log-")]
        assert logged == sorted(s[0] for s in sections)  # one fenced write per section, in token order
        assert lock_nodes(cl.state, "/app/lock") == []  # every release confirmed


@VIRTUAL_TIME
async def test_try_acquire_timeout_and_idempotent_release():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        held, other = Lock(a, "/l"), Lock(b, "/l")
        await other.release()  # never acquired: nothing to do
        assert await held.try_acquire() and held.held and held.fencing_token > 0
        assert held.node.startswith(f"/l/lock-{a.session_id:x}-")
        assert not await other.try_acquire()
        t0 = anyio.current_time()
        assert not await other.acquire(timeout=2)
        assert anyio.current_time() - t0 == pytest.approx(2, abs=0.1)
        assert lock_nodes(cl.state, "/l") == [held.node.rsplit("/", 1)[1]]  # failed attempts left nothing
        token = held.fencing_token
        await held.release()
        await held.release()
        assert not held.held and held.node is None
        assert await other.acquire(timeout=1) and other.fencing_token > token
        await other.release()
        assert lock_nodes(cl.state, "/l") == []


@VIRTUAL_OR_REAL
async def test_release_during_the_body_ends_it_quietly():
    async with open_cluster(1) as cl, cl.client(seed=1) as c:
        steps = []
        async with Lock(c, "/l") as lock:
            await lock.release()  # from the body itself: returns, then the body is cancelled
            steps.append("released")
            await anyio.sleep(10)
            steps.append("not reached")
        assert steps == ["released"] and lock_nodes(cl.state, "/l") == []
        async with anyio.create_task_group() as nursery:
            async with lock:
                nursery.start_soon(lock.release)  # from another task
                await anyio.sleep(10)
                steps.append("not reached")
        assert steps == ["released"] and not lock.held and lock_nodes(cl.state, "/l") == []


@VIRTUAL_OR_REAL
async def test_cancelled_acquire_leaves_no_node():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        async with Lock(a, "/l"):
            with anyio.move_on_after(1):
                await Lock(b, "/l").acquire()
            assert len(lock_nodes(cl.state, "/l")) == 1


@VIRTUAL_OR_REAL
async def test_not_reentrant_misuse_raises():
    async with open_cluster(1) as cl, cl.client() as c:
        lock = Lock(c, "/l")
        async with lock:
            with pytest.raises(RecipeUsageError, match="not re-entrant"):
                await lock.acquire()
            with pytest.raises(RecipeUsageError, match="already holds"):
                await Lock(c, "/l").acquire()  # same task, same path, same client: would wait for itself
            rw = ReadWriteLock(c, "/l")
            with pytest.raises(RecipeUsageError):
                await rw.write_lock.acquire()

            other_task = {}

            async def contender():
                other_task["got"] = await Lock(c, "/l").acquire(timeout=1)

            async with anyio.create_task_group() as nursery:  # another task may contend through the same client
                nursery.start_soon(contender)
        assert other_task == {"got": False}
        with pytest.raises(RecipeUsageError):
            async with lock.guard():
                pass
        with pytest.raises(RecipeUsageError):
            lock.fence()


@VIRTUAL_TIME
async def test_one_release_wakes_one_waiter():
    """20 waiters: a release costs one delete and one re-listing (by the
    next holder), nothing else: the other 19 are not woken."""
    async with open_cluster(3) as cl:
        holder = cl.client(seed=99)
        async with holder, anyio.create_task_group() as nursery:
            first = Lock(holder, "/herd")
            await first.acquire()
            acquired = []

            async def waiter(k):
                async with cl.client(seed=k) as c:
                    lock = Lock(c, "/herd")
                    await lock.acquire()
                    acquired.append(k)
                    await anyio.sleep_forever()

            for k in range(20):
                nursery.start_soon(waiter, k)
            await wait_until(lambda: len(lock_nodes(cl.state, "/herd")) == 21)
            await anyio.wait_all_tasks_blocked()
            before = cl.state.op_counts.copy()
            await first.release()
            await wait_until(lambda: acquired)
            await anyio.wait_all_tasks_blocked()
            assert op_diff(before, cl.state.op_counts) == {"delete": 1, "children": 1}
            assert len(acquired) == 1
            nursery.cancel_scope.cancel()


@VIRTUAL_OR_REAL
async def test_waiter_whose_node_is_deleted_queues_again():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        holder, waiter = Lock(a, "/l"), Lock(b, "/l")
        await holder.acquire()
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(waiter.acquire)
            await wait_until(lambda: len(lock_nodes(cl.state, "/l")) == 2)
            first = waiter.node
            await a.delete(first)  # e.g. an operator cleaning up
            await wait_until(lambda: waiter.node not in (None, first) and len(lock_nodes(cl.state, "/l")) == 2)
            await holder.release()
        assert waiter.held and not waiter.lost
        await waiter.release()


@VIRTUAL_TIME
async def test_lock_lost_when_suspended_past_margin_before_session_expires():
    """The holder is cut off (its only server stops answering): its body is
    cancelled after SUSPENDED + margin, before the ensemble expires the
    session and lets the next holder in; its late fenced write is rejected."""
    async with open_cluster(3) as cl, anyio.create_task_group() as nursery:
        nursery.start_soon(cl.state.reap_sessions)
        holder = cl.client(seed=1, servers=[1], session_timeout=3)
        other = cl.client(seed=2, servers=[2, 3], session_timeout=3)
        async with holder, other:
            lock = Lock(holder, "/l")
            times = {}
            with pytest.raises(LockLostError) as info:
                async with lock:
                    node, token = lock.node, lock.fencing_token
                    assert lock.suspend_margin == pytest.approx(0.5)
                    cl.server(1).blackhole = True
                    cut = anyio.current_time()
                    try:
                        await anyio.sleep(60)
                    finally:
                        times["cancelled"] = anyio.current_time() - cut
            assert info.value.code is Err.SESSION_EXPIRED and "no connection" in str(info.value)
            assert 1.5 <= times["cancelled"] <= 2.1  # dead connection noticed at T/2, then the T/6 margin
            contender = Lock(other, "/l")
            assert await contender.acquire(timeout=10)
            assert anyio.current_time() - cut >= 3.0  # only once the session expired
            assert contender.fencing_token > token
            with pytest.raises(MultiError) as stale:  # the old holder's write, arriving late
                await other.multi([ops.check(node, -1), ops.create("/l-data", b"stale")])
            assert stale.value.index == 0 and isinstance(stale.value.cause, NoNodeError)
            assert holder.state is ConnState.SUSPENDED  # no server has told it yet
            cl.server(1).blackhole = False
            await holder.wait_state(ConnState.EXPIRED, timeout=5)  # its server, back, says so
            await contender.release()
            nursery.cancel_scope.cancel()


@VIRTUAL_OR_REAL
async def test_lock_lost_when_node_deleted_or_session_expires():
    async with open_cluster(1) as cl, cl.client(seed=1) as c, cl.client(seed=2) as admin:
        with pytest.raises(LockLostError) as info:
            async with Lock(c, "/l") as lock:
                await admin.delete(lock.node)
                await anyio.sleep(10)
        assert info.value.code is Err.NO_NODE
        lock = Lock(c, "/l")
        with pytest.raises(LockLostError):
            async with lock:
                cl.state.expire_session(c.session_id)
                await anyio.sleep(10)
        assert not lock.held and lock.node is None
        with pytest.raises(SessionExpiredError):
            await lock.acquire()


@VIRTUAL_TIME
async def test_fenced_write_after_loss_raises_without_sending():
    async with open_cluster(2) as cl, cl.client(seed=1, servers=[1], session_timeout=3) as c:
        lock = Lock(c, "/l")
        await lock.acquire()
        cl.server(1).blackhole = True
        lost = await lock.wait_lost()
        assert "no connection" in lost and lock.lost and not lock.held
        multis = cl.state.op_counts["multi"]
        with pytest.raises(LockLostError):
            await lock.fenced([ops.create("/x")])
        assert cl.state.op_counts["multi"] == multis
        cl.server(1).blackhole = False
        await lock.release()


@VIRTUAL_TIME
async def test_release_survives_connection_loss():
    """Releasing while no server answers: the delete is retried past the
    call deadline until it is confirmed, and the lock is free again."""
    async with open_cluster(2) as cl, cl.client(seed=1, session_timeout=3, request_timeout=0.5) as c:
        lock = Lock(c, "/l")
        await lock.acquire()
        for s in cl.servers:
            s.stop()

        async def restart():
            await anyio.sleep(1.5)
            for s in cl.servers:
                await s.start()

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(restart)
            await lock.release()
        assert lock_nodes(cl.state, "/l") == [] and c.state is ConnState.RECONNECTED
        assert cl.state.op_counts["delete"] >= 1
        async with cl.client(seed=2) as other:
            assert await Lock(other, "/l").try_acquire()


@VIRTUAL_OR_REAL
async def test_uncertain_create_finds_its_node():
    """The create is applied but its answer never comes in time: the lock
    finds its node by session and nonce instead of queueing twice."""
    async with open_cluster(1) as cl, cl.client(seed=1, request_timeout=1) as c:
        cl.state.delay_reply = 3.0
        lock = Lock(c, "/l")

        async def undelay():
            await wait_until(lambda: lock_nodes(cl.state, "/l"))
            cl.state.delay_reply = 0.0

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(undelay)
            assert await lock.acquire()
        assert lock_nodes(cl.state, "/l") == [lock.node.rsplit("/", 1)[1]]
        assert cl.state.op_counts["create"] == 1
        await lock.release()
        assert lock_nodes(cl.state, "/l") == []


# -- read/write locks and semaphores ---------------------------------------------


@VIRTUAL_TIME
async def test_read_write_lock():
    log = []
    async with open_cluster(1) as cl:
        async def reader(k, delay):
            await anyio.sleep(delay)
            async with cl.client(seed=k) as c, ReadWriteLock(c, "/rw").read_lock:
                log.append(("r+", k, anyio.current_time()))
                await anyio.sleep(1)
                log.append(("r-", k, anyio.current_time()))

        async def writer(k, delay):
            await anyio.sleep(delay)
            async with cl.client(seed=k) as c, ReadWriteLock(c, "/rw").write_lock:
                log.append(("w+", k, anyio.current_time()))
                await anyio.sleep(1)
                log.append(("w-", k, anyio.current_time()))

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(reader, 1, 0)
            nursery.start_soon(reader, 2, 0.1)
            nursery.start_soon(writer, 3, 0.2)
            nursery.start_soon(reader, 4, 0.3)  # queued behind the writer
    events = [(op, k) for op, k, _ in log]
    assert events[:2] == [("r+", 1), ("r+", 2)]  # readers share
    w_in = events.index(("w+", 3))
    assert {("r-", 1), ("r-", 2)} <= set(events[:w_in])  # the writer waited for both
    assert events[w_in + 1] == ("w-", 3) and events.index(("r+", 4)) > w_in  # and excluded the later reader


@VIRTUAL_TIME
async def test_semaphore_bounds_holders_and_a_release_wakes_one():
    inside, peak, done = [0], [0], []
    async with open_cluster(2) as cl:
        async def worker(k):
            async with cl.client(seed=k) as c:
                for _ in range(3):
                    async with Semaphore(c, "/sem", 3):
                        inside[0] += 1
                        peak[0] = max(peak[0], inside[0])
                        await anyio.sleep(0.1 + k / 100)
                        inside[0] -= 1
                done.append(k)

        async with anyio.create_task_group() as nursery:
            for k in range(8):
                nursery.start_soon(worker, k)
        assert peak == [3] and sorted(done) == list(range(8))

        async with cl.client(seed=50) as holder_client, anyio.create_task_group() as nursery:
            holders = [Semaphore(holder_client, "/sem2", 3) for _ in range(3)]
            for k, h in enumerate(holders):  # separate tasks: one task may hold one permit per path
                nursery.start_soon(h.acquire)
            await wait_until(lambda: all(h.held for h in holders))
            entered = []

            async def waiter(k):
                async with cl.client(seed=k) as c:
                    await Semaphore(c, "/sem2", 3).acquire()
                    entered.append(k)
                    await anyio.sleep_forever()

            for k in range(10):
                nursery.start_soon(waiter, 100 + k)
            await wait_until(lambda: len(lock_nodes(cl.state, "/sem2")) == 13)
            await anyio.wait_all_tasks_blocked()
            before = cl.state.op_counts.copy()
            await holders[1].release()  # not the oldest holder
            await wait_until(lambda: entered)
            await anyio.wait_all_tasks_blocked()
            diff = op_diff(before, cl.state.op_counts)
            # the first waiter re-lists and enters, marking its node (its own watch re-arms);
            # the mark wakes the next waiter only, which becomes first waiter (list + watch the queue)
            assert diff == {"delete": 1, "children": 3, "exists": 1, "set": 1}
            assert len(entered) == 1
            nursery.cancel_scope.cancel()


# -- elections ------------------------------------------------------------------


@VIRTUAL_TIME
async def test_election_one_leader_in_order_and_observe_sees_every_change():
    terms, observed = [], []
    async with open_cluster(3) as cl:
        async with cl.client(seed=100) as watcher:
            observer = Election(watcher, "/elect", "observer").observe()

            async def observe():
                async for leader in observer:
                    observed.append(leader)

            async def candidate(k):
                async with cl.client(seed=k) as c:
                    e = Election(c, "/elect", f"node-{k}")
                    for _ in range(3):
                        async with e.campaign() as term:
                            assert await e.leader() == f"node-{k}"
                            terms.append((term.fencing_token, anyio.current_time(), None, term.identity))
                            await anyio.sleep(0.2)
                            terms[-1] = terms[-1][:2] + (anyio.current_time(), term.identity)
                            if k % 2:
                                await e.resign()  # ends the body at once, quietly
                                await anyio.sleep(10)
                        await anyio.sleep(0.01 * k)

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(observe)
                await wait_until(lambda: observed)  # the first value is the leader (none) at the start
                async with anyio.create_task_group() as candidates:
                    for k in range(4):
                        candidates.start_soon(candidate, k)
                    await anyio.sleep(0.5)
                    cl.state.trim_history()  # the observer's server drops it: its resume must resync
                    for s in cl.servers:
                        s.drop_connections()
                await wait_until(lambda: observed[-1] is None)
                await observer.aclose()
    assert len(terms) == 12
    assert_exclusive([(tok, start, end) for tok, start, end, _ in terms])
    tokens = [leader.token for leader in observed if leader is not None]
    assert tokens == sorted(set(tokens))
    # every term a participant served was observed, with its identity, unless
    # it fell entirely into the gap that history could not cover
    seen = {leader.token: leader.identity for leader in observed if leader is not None}
    missing = [t for t in terms if t[0] not in seen]
    assert len(missing) <= 1
    assert all(seen[tok] == who for tok, _, _, who in terms if tok in seen)
    assert observed[0] is None


@VIRTUAL_OR_REAL
async def test_observe_reports_every_change_even_short_ones():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        changes = []
        async with Election(b, "/e", "x").observe() as obs:
            changes.append(await obs.__anext__())
            # the observer reads nothing until all of this is done: events alone must tell it
            await a.multi([ops.create("/e/cand-1-1-alpha-", b"", sequential=True, ephemeral=True)])
            [name] = lock_nodes(cl.state, "/e")
            await a.multi([ops.create("/e/cand-1-2-beta%2F2-", b"", sequential=True, ephemeral=True),
                           ops.delete(f"/e/{name}")])
            await a.delete("/e/" + lock_nodes(cl.state, "/e")[0])
            for _ in range(3):
                changes.append(await obs.__anext__())
        assert [c and c.identity for c in changes] == [None, "alpha", "beta/2", None]


@VIRTUAL_OR_REAL
async def test_leadership_lost_on_expiry_cancels_the_body():
    async with open_cluster(1) as cl, cl.client(seed=1) as a, cl.client(seed=2) as b:
        ea, eb = Election(a, "/e", "a"), Election(b, "/e", "b")
        with pytest.raises(LeadershipLostError):
            async with ea.campaign():
                assert await eb.leader() == "a"
                cl.state.expire_session(a.session_id)
                await anyio.sleep(60)
        async with eb.campaign() as term:
            assert (await eb.leader_info()).token == term.fencing_token
        assert await eb.leader() is None


# -- the blocking API ---------------------------------------------------------------


def test_blocking_recipes():
    with ThreadedFakeCluster(1) as fake, SyncClient(fake.endpoints, session_timeout=3) as a, \
            SyncClient(fake.endpoints, session_timeout=3) as b:
        lock, other = SyncLock(a, "/bl"), SyncLock(b, "/bl")
        with lock:
            assert lock.held and not lock.lost and lock.fencing_token > 0
            assert not other.try_acquire()
            assert not other.acquire(timeout=0.2)
            with pytest.raises(RecipeUsageError):  # the same thread, the same client and path
                SyncLock(a, "/bl").acquire()
            assert lock.fenced([ops.create("/bl-data", b"x")]) == ["/bl-data"]
            assert lock.wait_lost(timeout=0.1) is None
        assert other.acquire(timeout=5) and other.fencing_token > 0
        other.release()

        with pytest.raises(LockLostError):
            with lock:
                b.delete(lock.node)
                assert "deleted" in lock.wait_lost(timeout=5)
                with pytest.raises(LockLostError):
                    lock.fenced([ops.set("/bl-data", b"y")])
        assert not lock.held and fake.call(lambda: fake.state.data("/bl-data")) == b"x"

        with SyncReadWriteLock(a, "/brw").read_lock:
            shared = SyncReadWriteLock(b, "/brw").read_lock
            assert shared.try_acquire()
            shared.release()
            assert not SyncReadWriteLock(b, "/brw").write_lock.try_acquire()
        with SyncSemaphore(a, "/bsem", 2):
            permit = SyncSemaphore(b, "/bsem", 2)
            assert permit.try_acquire()
            with SyncClient(fake.endpoints, session_timeout=3) as c:
                assert not SyncSemaphore(c, "/bsem", 2).try_acquire()
            permit.release()

        ea, eb = SyncElection(a, "/be", "a"), SyncElection(b, "/be", "b")
        with eb.observe() as changes:
            assert changes.get(timeout=5) is None
            with ea.campaign() as term:
                assert eb.leader() == "a" and term.identity == "a"
                assert changes.get(timeout=5).token == term.fencing_token
            assert changes.get(timeout=5) is None
            with pytest.raises(TimeoutError):
                changes.get(timeout=0.1)
