"""Unmodified kazoo against a real coord ensemble, on coord's ZooKeeper port.

What a kazoo program does, it does on coord's data and sessions: nodes it
creates are coord nodes (the coord SDK sees them, and the reverse), its
ephemerals go with its session, its watches are coord watches, its ACLs are
coord ACLs; and when the server it is connected to is killed, it reconnects
to another with the same session, its ephemerals and its watches intact.
"""

from __future__ import annotations

import signal
import threading

import pytest
import trio
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoAuthError, NoNodeError, NodeExistsError, NotEmptyError
from kazoo.protocol.states import EventType, KazooState
from kazoo.security import make_digest_acl

from coordclient import SyncClient
from tests.cluster import Cluster, dump_logs_on_failure


@pytest.fixture(scope="module")
def coord(tmp_path_factory):
    c = Cluster(3, tmp_path_factory.mktemp("zk"), zookeeper=True)
    c.start()
    trio.run(c.wait_leader)
    yield c
    c.close()


class Hosts:
    def __init__(self, cluster):
        self.cluster = cluster

    @property
    def hosts(self) -> str:
        running = set(self.cluster.running())
        return ",".join(f"127.0.0.1:{p}" for sid, p in self.cluster.zk_ports.items() if sid in running)


@pytest.fixture
def proxy(coord, request):
    yield Hosts(coord)
    dump_logs_on_failure(request, coord)


@pytest.fixture
def zk(proxy):
    client = KazooClient(hosts=proxy.hosts, timeout=10)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def test_crud(zk, coord):
    zk.create("/kz/crud/a", b"one", makepath=True)
    data, stat = zk.get("/kz/crud/a")
    assert data == b"one" and stat.version == 0 and stat.dataLength == 3
    stat2 = zk.set("/kz/crud/a", b"two", version=0)
    assert stat2.version == 1 and stat2.mzxid > stat.mzxid
    with pytest.raises(BadVersionError):
        zk.set("/kz/crud/a", b"x", version=0)
    with pytest.raises(NodeExistsError):
        zk.create("/kz/crud/a")
    with pytest.raises(NotEmptyError):
        zk.delete("/kz/crud")
    assert zk.get_children("/kz/crud") == ["a"]
    kids, pstat = zk.get_children("/kz/crud", include_data=True)
    assert kids == ["a"] and pstat.numChildren == 1
    assert zk.exists("/kz/crud/missing") is None
    with pytest.raises(NoNodeError):
        zk.get("/kz/crud/missing")
    zk.delete("/kz/crud", recursive=True)
    assert zk.exists("/kz/crud") is None
    assert "zookeeper" in zk.get_children("/")


def test_sequential_and_ephemeral_nodes_are_coords(zk, coord):
    zk.ensure_path("/kz/seq")
    p1 = zk.create("/kz/seq/n-", b"", sequence=True)
    p2 = zk.create("/kz/seq/n-", b"", sequence=True, ephemeral=True)
    assert p1 < p2 and p1.startswith("/kz/seq/n-") and len(p1) == len("/kz/seq/n-") + 10
    with SyncClient(coord.endpoints) as c:  # the coord SDK sees kazoo's nodes, ephemeral owner included
        assert sorted(c.children("/kz/seq")) == sorted([p1.rsplit("/", 1)[1], p2.rsplit("/", 1)[1]])
        assert c.exists(p2).ephemeral_owner == zk.client_id[0]
        c.create("/kz/seq/from-sdk", b"hi")
    assert zk.get("/kz/seq/from-sdk")[0] == b"hi"  # and the reverse


def test_session_close_removes_ephemerals(proxy, coord):
    a = KazooClient(hosts=proxy.hosts, timeout=10)
    a.start(timeout=10)
    a.create("/kz/eph", b"", ephemeral=True, makepath=True)
    a.stop()
    a.close()
    with SyncClient(coord.endpoints) as c:
        assert c.exists("/kz/eph") is None


def test_data_and_children_watches(zk):
    zk.ensure_path("/kz/w")
    seen = []
    fired = threading.Event()

    def on_data(event):
        seen.append((event.type, event.path))
        fired.set()

    zk.get("/kz/w", watch=on_data)
    zk.set("/kz/w", b"changed")
    assert fired.wait(10)
    assert seen == [(EventType.CHANGED, "/kz/w")]
    fired.clear()
    zk.get_children("/kz/w", watch=on_data)
    zk.create("/kz/w/kid")
    assert fired.wait(10)
    assert seen[-1] == (EventType.CHILD, "/kz/w")
    fired.clear()
    zk.exists("/kz/w/later", watch=on_data)
    zk.create("/kz/w/later")
    assert fired.wait(10)
    assert seen[-1] == (EventType.CREATED, "/kz/w/later")


def test_data_watch_recipe_sees_each_version(zk):
    zk.ensure_path("/kz/dw")
    got = []
    done = threading.Event()

    @zk.DataWatch("/kz/dw")
    def watcher(data, stat):
        got.append(data)
        if data == b"3":
            done.set()

    for v in (b"1", b"2", b"3"):
        zk.set("/kz/dw", v)
    assert done.wait(10)
    assert got[-1] == b"3"


def test_transactions(zk):
    zk.ensure_path("/kz/tx")
    t = zk.transaction()
    t.create("/kz/tx/a", b"1")
    t.set_data("/kz/tx", b"top")
    t.check("/kz/tx", 1)
    results = t.commit()
    assert results[0] == "/kz/tx/a" and results[2] is True
    t = zk.transaction()
    t.create("/kz/tx/b")
    t.create("/kz/tx/a")  # exists: the whole transaction fails
    results = t.commit()
    assert [type(r).__name__ for r in results] == ["RolledBackError", "NodeExistsError"]
    assert zk.exists("/kz/tx/b") is None


def test_lock_recipe_across_two_sessions(proxy, zk):
    other = KazooClient(hosts=proxy.hosts, timeout=10)
    other.start(timeout=10)
    try:
        lock1 = zk.Lock("/kz/lock", "one")
        lock2 = other.Lock("/kz/lock", "two")
        assert lock1.acquire(timeout=10)
        assert not lock2.acquire(blocking=False)
        lock1.release()
        assert lock2.acquire(timeout=10)
        assert lock2.contenders() == ["two"]
        lock2.release()
    finally:
        other.stop()
        other.close()


def test_counter_and_election(zk):
    counter = zk.Counter("/kz/counter")
    counter += 5
    counter -= 2
    assert counter.value == 3
    won, leave = threading.Event(), threading.Event()

    def lead():
        won.set()
        leave.wait(10)  # leadership lasts while this runs

    election = zk.Election("/kz/election", "me")
    runner = threading.Thread(target=election.run, args=(lead,), daemon=True)
    runner.start()
    assert won.wait(10)
    assert election.contenders() == ["me"]
    leave.set()
    runner.join(10)
    assert election.contenders() == []


def test_four_letter_words_and_server_version(zk):
    assert zk.command(b"ruok") == "imok"
    assert "Mode: " in zk.command(b"srvr") and "Zxid: " in zk.command(b"srvr")
    assert zk.server_version()[:2] == (3, 9)


def test_config_node(zk, coord):
    data, _ = zk.get("/zookeeper/config")
    lines = data.decode().splitlines()
    assert lines[0].startswith("server.1=127.0.0.1:")
    # each member's client address is its ZooKeeper port, as ZooKeeper clients expect
    for sid in range(1, 4):
        assert lines[sid - 1].endswith(f";127.0.0.1:{coord.zk_ports[sid]}"), lines


def test_acls_through_kazoo(proxy, zk):
    acl = make_digest_acl("kz", "pw", all=True)
    zk.add_auth("digest", "kz:pw")
    zk.create("/kz/acl", b"mine", acl=[acl], makepath=True)
    got, stat = zk.get_acls("/kz/acl")
    assert got[0].id.scheme == "digest" and got[0].id.id == acl.id.id and stat.aversion == 0
    other = KazooClient(hosts=proxy.hosts, timeout=10)
    other.start(timeout=10)
    try:
        with pytest.raises(NoAuthError):
            other.get("/kz/acl")
        with pytest.raises(NoAuthError):
            other.set("/kz/acl", b"theirs")
    finally:
        other.stop()
        other.close()
    assert zk.set_acls("/kz/acl", [make_digest_acl("kz", "pw", read=True, write=True, admin=True)]).aversion == 1


def test_killing_the_server_kazoo_uses_keeps_the_session_ephemerals_and_watches(proxy, coord, zk):
    states = []
    back = threading.Event()
    fired = threading.Event()

    def listener(state):
        states.append(state)
        if state == KazooState.CONNECTED and KazooState.SUSPENDED in states:
            back.set()

    zk.add_listener(listener)
    sid = zk.client_id[0]
    zk.create("/kz/rc/eph", b"", ephemeral=True, makepath=True)
    zk.get("/kz/rc", watch=lambda ev: fired.set())
    port = zk._connection._socket.getpeername()[1]
    victim = next(s for s, p in coord.zk_ports.items() if p == port)
    coord.kill(victim, signal.SIGKILL)
    try:
        assert back.wait(20)  # kazoo reconnects to another server with its session id and password
        assert zk.client_id[0] == sid
        assert zk.exists("/kz/rc/eph") is not None
        with SyncClient(coord.endpoints_of([s for s in (1, 2, 3) if s != victim])) as c:
            c.set("/kz/rc", b"after")  # the watch set before the kill fires (re-registered by setWatches)
        assert fired.wait(10)
    finally:
        coord.start_server(victim)
        trio.run(coord.wait_leader)


def test_more_recipes(proxy, zk):
    sem = zk.Semaphore("/kz/sem", "a", max_leases=2)
    assert sem.acquire(timeout=10)
    assert sem.lease_holders() == ["a"]
    sem.release()

    rw = zk.WriteLock("/kz/rw", "w")
    assert rw.acquire(timeout=10)
    rw.release()
    rl = zk.ReadLock("/kz/rw", "r")
    assert rl.acquire(timeout=10)
    rl.release()

    q = zk.Queue("/kz/q")
    q.put(b"1")
    q.put(b"2", priority=10)
    assert (q.get(), q.get(), q.get()) == (b"2", b"1", None)  # lower priority number first

    lq = zk.LockingQueue("/kz/lq")
    lq.put(b"job")
    assert lq.get(timeout=10) == b"job" and lq.consume()
    assert len(lq) == 0

    barrier = zk.Barrier("/kz/barrier")
    barrier.create()
    assert not barrier.wait(timeout=0.2)
    barrier.remove()
    assert barrier.wait(timeout=5)

    party = zk.Party("/kz/party", "me")
    party.join()
    assert list(party) == ["me"] and len(party) == 1
    party.leave()

    seen = []
    done = threading.Event()
    zk.ensure_path("/kz/cw")

    @zk.ChildrenWatch("/kz/cw")
    def kids(children):
        seen.append(sorted(children))
        if children:
            done.set()

    zk.create("/kz/cw/x")
    assert done.wait(10) and seen[-1] == ["x"]


def test_tree_cache(zk):
    from kazoo.recipe.cache import TreeCache, TreeEvent

    zk.ensure_path("/kz/tree/a")
    events = []
    added = threading.Event()

    def listener(ev):
        events.append(ev.event_type)
        if ev.event_type == TreeEvent.NODE_ADDED and ev.event_data and ev.event_data.path == "/kz/tree/a/b":
            added.set()

    cache = TreeCache(zk, "/kz/tree")
    cache.listen(listener)
    cache.start()
    try:
        zk.create("/kz/tree/a/b", b"v")
        assert added.wait(10)
        assert cache.get_data("/kz/tree/a/b").data == b"v"
        assert cache.get_children("/kz/tree") == frozenset({"a"})
    finally:
        cache.close()
