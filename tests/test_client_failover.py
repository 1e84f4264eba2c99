"""Failover, exactly-once retries, watch resumption, session expiry and
keepalive, against several fake servers sharing one state.

Every test runs on asyncio and Trio, except those that wait out timeouts:
they run on Trio's autojump MockClock (``tests.backends.VIRTUAL_TIME``); the
fake network is in-memory, so nothing waits on the kernel and virtual time
is safe.
"""

import anyio
import pytest

from coordclient import RESYNC, ConnState, WatchOverflowError, ops
from coordclient.errors import ConnectionLossError, OperationTimeoutError, SessionExpiredError
from coordclient.protocol import Err
from tests.backends import VIRTUAL_OR_REAL, VIRTUAL_TIME
from tests.fakeserver import FWatch, open_cluster

pytestmark = pytest.mark.anyio


async def wait_until(pred, timeout=10.0):
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.01)


def expected_events(state, watch, after):
    return [(z, t, p) for z, t, p in state.history if z > after and watch.matches(t, p)]


@pytest.mark.parametrize("hold", ["delay_apply", "delay_reply"])
@VIRTUAL_OR_REAL
async def test_writes_in_flight_during_failover_apply_exactly_once(hold):
    """delay_reply: applied, response lost; delay_apply: still being applied when
    the retry arrives (the fake makes the retry wait for the original)."""
    async with open_cluster(3) as cl, cl.client() as c:
        states = []
        c.add_listener(states.append)
        first = c.server_id
        setattr(cl.state, hold, 1.0)
        results = {}

        async def write(i):
            results[i] = await c.create(f"/x{i}", str(i).encode())

        async with anyio.create_task_group() as nursery:
            for i in range(50):
                nursery.start_soon(write, i)
            await wait_until(lambda: cl.state.op_counts["create"] == 50)
            cl.server(first).stop()
        assert results == {i: f"/x{i}" for i in range(50)}
        assert len(cl.state.apply_counts) == 50 and set(cl.state.apply_counts.values()) == {1}
        assert cl.state.dedup_hits == 50  # every retry was answered from the dedup table
        assert c.server_id != first and c.state is ConnState.RECONNECTED
        assert states == [ConnState.SUSPENDED, ConnState.RECONNECTED]
        resume = cl.state.hellos[-1]
        assert resume["sid"] == c.session_id and resume["server"] == c.server_id


@VIRTUAL_OR_REAL
async def test_reads_are_retried_after_connection_loss():
    async with open_cluster(2) as cl, cl.client() as c:
        await c.create("/r", b"v")
        cl.state.delay_reply = 0.0
        first = c.server_id

        async def drop_soon():
            await anyio.sleep(0.5)
            cl.server(first).drop_connections()

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(drop_soon)
            for _ in range(20):  # keep reading across the drop
                assert (await c.get("/r"))[0] == b"v"
                await anyio.sleep(0.05)
        assert c.connected


@VIRTUAL_OR_REAL
async def test_retryable_error_responses_are_retried_with_the_same_seq():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/n", b"0")
        cl.state.fail_next(3, Err.NOT_LEADER, {"set"})
        cl.state.fail_next(2, Err.CONNECTION_LOSS, {"get"})
        assert (await c.set("/n", b"1")).version == 1
        assert (await c.get("/n"))[0] == b"1"
        assert cl.state.op_counts["set"] == 4 and cl.state.op_counts["get"] == 3
        assert set(cl.state.apply_counts.values()) == {1}


@pytest.mark.parametrize("err, exc", [(Err.NOT_LEADER, ConnectionLossError),
                                      (Err.OPERATION_TIMEOUT, OperationTimeoutError)])
@VIRTUAL_TIME
async def test_retries_stop_at_the_call_deadline(err, exc):
    async with open_cluster(1) as cl, cl.client(request_timeout=2.0) as c:
        cl.state.fail_next(10**6, err, {"set"})
        start = anyio.current_time()
        with pytest.raises(exc):
            await c.set("/", b"x")
        assert 2.0 <= anyio.current_time() - start < 2.1
        assert 3 < cl.state.op_counts["set"] < 40  # backed off, not spinning
        assert c.connected


@VIRTUAL_OR_REAL
async def test_calls_wait_for_reconnection_until_their_deadline():
    async with open_cluster(2) as cl, cl.client(session_timeout=10, request_timeout=1.0) as c:
        for s in cl.servers:
            s.stop()
        with pytest.raises(ConnectionLossError):
            await c.get("/")
        assert c.state is ConnState.SUSPENDED
        for s in cl.servers:
            await s.start()
        await c.wait_state(ConnState.RECONNECTED, timeout=5)
        assert await c.children("/") == []


@VIRTUAL_TIME
async def test_inflight_writes_are_capped():
    async with open_cluster(1) as cl, cl.client(request_timeout=60) as c:
        cl.state.delay_apply = 1.0
        async with anyio.create_task_group() as nursery:
            for i in range(700):
                nursery.start_soon(c.create, f"/cap{i}")
        assert len(cl.state.apply_counts) == 700
        assert 500 <= cl.state.max_inflight_writes <= 512


@VIRTUAL_OR_REAL
async def test_persistent_watch_resumes_without_gap_or_duplicate():
    async with open_cluster(3) as cl:
        async with cl.client(servers=[1, 2], seed=1) as watcher, cl.client(servers=[3]) as writer:
            await writer.create("/w")
            start = 0  # replay from the beginning: the registration itself replays history
            async with watcher.watch("/w", recursive=True, start_zxid=start) as events:
                got = []
                for rnd in range(4):
                    for i in range(5):
                        await writer.create(f"/w/r{rnd}-{i}", b"")
                        await writer.set(f"/w/r{rnd}-{i}", b"v")
                    server = cl.server(watcher.server_id)
                    if rnd % 2:
                        server.blackhole = True  # events sent from now on are lost in flight
                        await writer.delete(f"/w/r{rnd}-0")
                        server.blackhole = False
                        server.drop_connections()
                    else:
                        server.stop()  # changes happen while the watcher is away
                        await writer.delete(f"/w/r{rnd}-0")
                        await writer.set("/w", b"top")
                        await server.start()
                    await watcher.wait_state(ConnState.RECONNECTED, timeout=5)
                await writer.create("/w/last")
                want = expected_events(cl.state, FWatch("persistent", "/w", True), start)
                with anyio.fail_after(5):
                    async for ev in events:
                        got.append((ev.zxid, ev.type, ev.path))
                        if len(got) == len(want):
                            break
                assert got == want
                assert len(cl.state.hellos) >= 5  # really reconnected each round


@VIRTUAL_OR_REAL
async def test_connection_lost_between_events_of_one_transaction():
    """A multi's events share one zxid; losing the connection after some of
    them must neither skip the rest nor repeat the delivered ones."""
    async with open_cluster(3) as cl:
        async with cl.client(servers=[1, 2]) as watcher, cl.client(servers=[3]) as writer:
            await writer.create("/m")
            async with watcher.watch("/m", recursive=True) as events:
                cl.server(watcher.server_id).close_after_events = 2
                await writer.multi([ops.create(f"/m/{i}") for i in range(5)])
                await writer.set("/m/0", b"after")
                got = []
                with anyio.fail_after(5):
                    async for ev in events:
                        got.append((ev.type, ev.path))
                        if len(got) == 6:
                            break
            assert got == [("created", f"/m/{i}") for i in range(5)] + [("changed", "/m/0")]
            assert len(cl.state.hellos) == 3  # the watcher did reconnect in between


@VIRTUAL_OR_REAL
async def test_one_shot_watches_are_rearmed_after_reconnect():
    async with open_cluster(3) as cl:
        async with cl.client(servers=[1, 2]) as watcher, cl.client(servers=[3]) as writer:
            await writer.create("/o", b"0")
            await writer.create("/quiet", b"0")
            fired = {"changed": [], "created": [], "quiet": []}
            await watcher.get("/o", watch=fired["changed"].append)
            await watcher.exists("/o/new", watch=fired["created"].append)
            await watcher.get("/quiet", watch=fired["quiet"].append)
            server = cl.server(watcher.server_id)
            server.stop()
            await writer.set("/o", b"1")  # while the watcher is disconnected
            await writer.set("/o", b"2")
            await writer.create("/o/new")
            await watcher.wait_state(ConnState.RECONNECTED, timeout=5)
            await wait_until(lambda: fired["changed"] and fired["created"])
            assert [(e.type, e.zxid) for e in fired["changed"]] == [("changed", cl.state.nodes["/o"].mzxid - 1)]
            assert [(e.type, e.path) for e in fired["created"]] == [("created", "/o/new")]
            # the watch that did not fire is registered again on the new server
            assert not fired["quiet"]
            await writer.set("/quiet", b"1")
            await wait_until(lambda: fired["quiet"])
            assert [e.type for e in fired["quiet"]] == ["changed"]


@VIRTUAL_OR_REAL
async def test_resync_when_history_is_gone():
    async with open_cluster(3) as cl:
        async with cl.client(servers=[1, 2]) as watcher, cl.client(servers=[3]) as writer:
            await writer.create("/r", b"0")
            oneshot = []
            await watcher.get("/r", watch=oneshot.append)
            async with watcher.watch("/r") as events:
                for server in cl.servers[:2]:
                    server.stop()  # keep the watcher away while history is lost
                for i in range(3):
                    await writer.set("/r", str(i).encode())
                cl.state.trim_history()
                await cl.server(2).start()
                await watcher.wait_state(ConnState.RECONNECTED, timeout=5)
                with anyio.fail_after(5):
                    ev = await events.__anext__()
                assert (ev.type, ev.path, ev.zxid) == (RESYNC, "/r", cl.state.zxid)
                await writer.set("/r", b"after")  # live again after the resync
                with anyio.fail_after(5):
                    ev = await events.__anext__()
                assert (ev.type, ev.zxid) == ("changed", cl.state.zxid)
            await wait_until(lambda: oneshot)
            assert [e.type for e in oneshot] == [RESYNC]


@VIRTUAL_OR_REAL
async def test_unconsumed_watch_stream_is_dropped_not_buffered():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/b")
        async with c.watch("/b", buffer=4) as events:
            for i in range(10):
                await c.set("/b", str(i).encode())
            got = []
            with pytest.raises(WatchOverflowError):
                async for ev in events:
                    got.append(ev)
            assert len(got) == 4  # what was buffered is still delivered first
            await wait_until(lambda: all(not conn.watches for conn in cl.state.conns))
            assert c.connected


@VIRTUAL_OR_REAL
async def test_session_expiry_is_final():
    async with open_cluster(2) as cl:
        c = cl.client()
        states = []
        c.add_listener(states.append)
        async with c:
            await c.create("/eph", ephemeral=True)
            cl.state.delay_apply = 5.0
            outcome = {}

            async def pending_write():
                try:
                    await c.create("/late")
                except SessionExpiredError as exc:
                    outcome["write"] = exc

            async def watching():
                try:
                    async with c.watch("/") as events:
                        async for _ in events:
                            pass
                except SessionExpiredError as exc:
                    outcome["watch"] = exc

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(pending_write)
                nursery.start_soon(watching)
                await wait_until(lambda: cl.state.op_counts["create"] == 2 and cl.state.op_counts["watch"] == 1)
                cl.state.expire_session(c.session_id)
                await c.wait_state(ConnState.EXPIRED, timeout=5)
            assert set(outcome) == {"write", "watch"}
            assert "/eph" not in cl.state.nodes
            with pytest.raises(SessionExpiredError):
                await c.get("/")
        assert states == [ConnState.CONNECTED, ConnState.SUSPENDED, ConnState.EXPIRED]
        assert c.state is ConnState.EXPIRED and cl.state.op_counts["close"] == 0


@VIRTUAL_OR_REAL
async def test_wrong_secret_on_resume_is_final():
    async with open_cluster(2) as cl, cl.client() as c:
        cl.state.sessions[c.session_id].secret = b"changed"
        cl.server(c.server_id).drop_connections()
        await c.wait_state(ConnState.EXPIRED, timeout=5)


@VIRTUAL_OR_REAL
async def test_no_server_reachable_is_suspended_not_expired_and_the_session_resumes():
    """Issue 11 item 2: only the ensemble may say a session expired.  A whole
    ensemble down for longer than the timeout keeps its sessions (a restarted
    ensemble gives them a fresh timeout), so the client must not throw its
    session away meanwhile."""
    async with open_cluster(3) as cl, cl.client(session_timeout=3) as c:
        states: list[ConnState] = []
        c.add_listener(states.append)
        sid = c.session_id
        await c.create("/mine", ephemeral=True)
        for s in cl.servers:
            s.stop()
        await c.wait_state(ConnState.SUSPENDED, timeout=1)
        await anyio.sleep(9)  # three session timeouts with no server at all
        assert c.state is ConnState.SUSPENDED
        with pytest.raises((ConnectionLossError, OperationTimeoutError)):
            with anyio.fail_after(10):
                await c.get("/mine")
        for s in cl.servers:
            await s.start()
        await c.wait_state(ConnState.RECONNECTED, timeout=5)
        assert c.session_id == sid and (await c.exists("/mine")) is not None
        assert ConnState.EXPIRED not in states


@VIRTUAL_OR_REAL
async def test_expired_only_when_a_server_says_so():
    async with open_cluster(3) as cl, cl.client(session_timeout=3) as c:
        for s in cl.servers:
            s.stop()
        await c.wait_state(ConnState.SUSPENDED, timeout=1)
        cl.state.expire_session(c.session_id)  # the ensemble decided while the client was away
        await anyio.sleep(1)
        assert c.state is ConnState.SUSPENDED
        await cl.servers[0].start()
        await c.wait_state(ConnState.EXPIRED, timeout=5)
        with pytest.raises(SessionExpiredError):
            await c.create("/x")
        assert cl.state.hellos[0]["sid"] == 0 and all(h["sid"] == c.session_id for h in cl.state.hellos[1:])


@VIRTUAL_TIME
async def test_two_hung_servers_of_five_cost_the_session_nothing():
    """Issue 11 item 2 as seen: 2 of 5 servers hung (they accept connections
    and never answer), the client's among them, while the ensemble expires
    sessions idle for a whole timeout.  The client notices at T/2, tries the
    others side by side, and resumes on a healthy one long before T."""
    async with open_cluster(5) as cl:
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(cl.state.reap_sessions)
            for seed in range(10):
                async with cl.client(seed=seed, session_timeout=6.0) as c:
                    states: list[ConnState] = []
                    c.add_listener(states.append)
                    first, sid = c.server_id, c.session_id
                    other = next(s for s in cl.servers if s.server_id != first)
                    cl.server(first).blackhole = other.blackhole = True
                    hung = anyio.current_time()
                    await c.wait_state(ConnState.RECONNECTED, timeout=6)
                    resumed_after = anyio.current_time() - hung
                    assert c.session_id == sid and sid in cl.state.sessions
                    assert c.server_id not in (first, other.server_id)
                    assert resumed_after < 6.0 * 0.5 + 6.0 / 20 * 3 + 0.5, resumed_after
                    assert states == [ConnState.SUSPENDED, ConnState.RECONNECTED]
                    cl.server(first).blackhole = other.blackhole = False
            nursery.cancel_scope.cancel()


@VIRTUAL_TIME
async def test_pings_keep_an_idle_session_alive():
    async with open_cluster(1) as cl:
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(cl.state.reap_sessions)
            async with cl.client(session_timeout=1.0) as c:
                await anyio.sleep(30)
                assert c.state is ConnState.CONNECTED and c.session_id in cl.state.sessions
                assert 90 <= cl.state.op_counts["ping"] <= 130  # about every quarter of the timeout
            nursery.cancel_scope.cancel()


@VIRTUAL_OR_REAL
async def test_silent_server_is_abandoned_after_half_the_timeout():
    async with open_cluster(3) as cl, cl.client(session_timeout=3.0) as c:
        first, sid = c.server_id, c.session_id
        await c.create("/alive")
        cl.server(first).blackhole = True
        hung = anyio.current_time()
        await c.wait_state(ConnState.SUSPENDED, timeout=5)
        assert 1.4 <= anyio.current_time() - hung <= 1.6
        await c.wait_state(ConnState.RECONNECTED, timeout=5)
        assert c.server_id != first and c.session_id == sid
        assert (await c.get("/alive"))[0] == b""


@VIRTUAL_OR_REAL
async def test_resume_waits_from_last_zxid():
    async with open_cluster(2) as cl, cl.client() as c:
        for i in range(5):
            await c.create(f"/z{i}")
        seen = c.last_zxid
        cl.server(c.server_id).drop_connections()
        await c.wait_state(ConnState.RECONNECTED, timeout=5)
        assert cl.state.hellos[-1]["last_zxid"] == seen == cl.state.zxid
