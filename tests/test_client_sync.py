"""SyncClient: the blocking API over real TCP to fake servers in a thread,
with the client's private loop on asyncio and on Trio."""

import queue
import time
import socket
import threading

import pytest

from coordclient import ConnState, SyncClient, ops
from coordclient.errors import ConnectionLossError, NodeExistsError, NoNodeError
from tests.fakeserver import ThreadedFakeCluster


@pytest.fixture
def fake():
    with ThreadedFakeCluster(2) as cluster:
        yield cluster


@pytest.fixture(params=["asyncio", "trio"])
def backend(request):
    return request.param


def test_basic_operations(fake, backend):
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        assert c.state is ConnState.CONNECTED and c.connected and c.server_id in (1, 2)
        assert c.create("/s", b"one") == "/s"
        assert c.get("/s")[0] == b"one"
        assert c.set("/s", b"two", version=0).version == 1
        assert c.exists("/s").data_length == 3 and c.exists("/nope") is None
        assert c.create("/s/k-", sequential=True, ephemeral=True) == "/s/k-0000000000"
        assert c.children("/s") == ["k-0000000000"]
        assert c.multi([ops.check("/s", 1), ops.create("/s/m")]) == [None, "/s/m"]
        with pytest.raises(NoNodeError):
            c.get("/missing")
        with pytest.raises(NodeExistsError):
            c.create("/s")
        c.sync()
        assert c.status()["server_id"] == c.server_id
        c.delete("/s/m")
        assert c.last_zxid == fake.call(lambda: fake.state.zxid)
    assert c.state is ConnState.CLOSED
    assert fake.call(lambda: (len(fake.state.sessions), "/s/k-0000000000" in fake.state.nodes)) == (0, False)
    with pytest.raises(ConnectionLossError):
        c.get("/s")


def test_watch_callback_and_blocking_stream(fake, backend):
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        c.create("/w", b"0")
        fired = queue.Queue()
        states = []
        c.add_listener(states.append)
        c.get("/w", watch=fired.put)  # runs in the loop thread: just hand it over
        with c.watch("/w") as events:
            c.set("/w", b"1")
            c.create("/w/kid")
            first, second = events.get(timeout=5), events.get(timeout=5)
            with pytest.raises(TimeoutError):
                events.get(timeout=0.05)
        assert (first.type, first.path) == ("changed", "/w")
        assert (second.type, second.path) == ("children", "/w")
        assert fired.get(timeout=5).type == "changed"
        assert c.wait_state(timeout=1) is ConnState.CONNECTED
    assert states == [ConnState.CLOSED]


def test_stream_iteration_ends_when_the_watch_closes(fake, backend):
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        c.create("/it")
        watch = c.watch("/it").__enter__()
        c.set("/it", b"x")
        got = []
        for ev in watch:
            got.append(ev.type)
            watch.close()  # ends the loop once the buffer is drained
        assert got == ["changed"]


def test_calls_from_many_threads_are_pipelined(fake, backend):
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        errors = []

        def worker(t):
            try:
                for i in range(20):
                    c.create(f"/t{t}-{i}", b"")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors and len(c.children("/")) == 160


def test_start_fails_when_nothing_listens(backend):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionLossError, match="no server reachable"):
        with SyncClient(f"127.0.0.1:{port}", session_timeout=0.5, backend=backend):
            pass


def test_iterating_a_watch_without_with_starts_it(fake, backend):
    """`for ev in c.watch(path)` (no `with`) must register the watch, not block forever."""
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        c.create("/plain")
        watch = c.watch("/plain")
        def change():
            with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as other:
                other.set("/plain", b"y")

        poke = threading.Timer(0.3, change)
        poke.start()
        ev = watch.get(timeout=10)
        assert ev is not None and ev.type == "changed" and ev.path == "/plain"
        watch.close()
        poke.join()


def test_writes_in_flight_across_a_failover_apply_exactly_once(fake, backend):
    """Calls from 8 threads are on the wire when their server dies: the fast
    path hands them to the client's retry loop with the same sequence number."""
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        first = c.server_id
        fake.call(setattr, fake.state, "delay_reply", 0.3)  # applied, answer late: lost with the connection
        results, errors = {}, []

        def worker(t):
            try:
                for i in range(5):
                    results[(t, i)] = c.create(f"/f{t}-{i}", b"x")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.15)
        fake.call(lambda: fake.servers[first - 1].stop())
        for t in threads:
            t.join(30)
        fake.call(setattr, fake.state, "delay_reply", 0.0)
        assert not errors and len(results) == 40 and c.server_id != first
        counts = fake.call(lambda: dict(fake.state.apply_counts))
        assert len(counts) == 40 and set(counts.values()) == {1}
        assert fake.call(lambda: fake.state.dedup_hits) >= 1  # some retry was answered from the dedup table


def test_a_call_with_no_answer_fails_at_its_deadline(fake, backend):
    with SyncClient(fake.endpoints, session_timeout=5, request_timeout=0.5, backend=backend) as c:
        c.create("/d", b"")
        fake.call(setattr, fake.state, "delay_reply", 3.0)
        start = time.monotonic()
        with pytest.raises(ConnectionLossError, match="deadline"):
            c.set("/d", b"late")
        assert 0.4 < time.monotonic() - start < 2.0
        fake.call(setattr, fake.state, "delay_reply", 0.0)
        assert c.get("/d")[0] in (b"", b"late") and c.connected


def test_calling_the_client_from_its_loop_thread_raises(fake, backend):
    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        c.create("/cb", b"")
        seen = queue.Queue()

        def callback(ev):
            try:
                c.get("/cb")
            except RuntimeError as exc:
                seen.put(exc)

        c.get("/cb", watch=callback)
        c.set("/cb", b"x")
        assert "loop thread" in str(seen.get(timeout=5))


def test_errors_and_argument_checks_come_from_the_async_methods(fake, backend):
    from coordclient.errors import InvalidPathError

    with SyncClient(fake.endpoints, session_timeout=5, backend=backend) as c:
        before = fake.call(lambda: sum(fake.state.op_counts.values()))
        with pytest.raises(InvalidPathError):
            c.get("relative")
        with pytest.raises(TypeError):
            c.create("/s", "text")
        assert fake.call(lambda: sum(fake.state.op_counts.values())) == before  # nothing was sent
