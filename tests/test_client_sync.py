"""SyncClient: the blocking API over real TCP to fake servers in a thread."""

import queue
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


def test_basic_operations(fake):
    with SyncClient(fake.endpoints, session_timeout=5) as c:
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


def test_watch_callback_and_blocking_stream(fake):
    with SyncClient(fake.endpoints, session_timeout=5) as c:
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


def test_stream_iteration_ends_when_the_watch_closes(fake):
    with SyncClient(fake.endpoints, session_timeout=5) as c:
        c.create("/it")
        watch = c.watch("/it").__enter__()
        c.set("/it", b"x")
        got = []
        for ev in watch:
            got.append(ev.type)
            watch.close()  # ends the loop once the buffer is drained
        assert got == ["changed"]


def test_calls_from_many_threads_are_pipelined(fake):
    with SyncClient(fake.endpoints, session_timeout=5) as c:
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


def test_start_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionLossError, match="no server reachable"):
        with SyncClient(f"127.0.0.1:{port}", session_timeout=0.5):
            pass


def test_iterating_a_watch_without_with_starts_it(fake):
    """`for ev in c.watch(path)` (no `with`) must register the watch, not block forever."""
    with SyncClient(fake.endpoints, session_timeout=5) as c:
        c.create("/plain")
        watch = c.watch("/plain")
        def change():
            with SyncClient(fake.endpoints, session_timeout=5) as other:
                other.set("/plain", b"y")

        poke = threading.Timer(0.3, change)
        poke.start()
        ev = watch.get(timeout=10)
        assert ev is not None and ev.type == "changed" and ev.path == "/plain"
        watch.close()
        poke.join()
