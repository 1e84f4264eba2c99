"""The peer-port attacks of issue 13, against a real 3-server ensemble with a
cluster secret (what ``coord dev``, the examples and the test harness run).

The attacker knows the cluster id and the member ids (the example configs
ship them) but not the secret.  It does what worked before peers
authenticated: connect, send a handshake claiming to be a member, and send
forged messages straight after it.  Each forged message would have changed
the ensemble then -- a HEARTBEAT or APPEND with a higher term moved every
follower to the attacker's term, a forged APPEND wrote to a follower's log,
a FORWARD from an invented (or a member's) id created nodes or closed
another client's session, SESSION_TOUCHes kept a dead client's session (and
its locks) alive, and handshakes claiming the leader's id cut a follower off
from the real leader -- and must now have no effect at all.  Each test here
fails on the code before peers authenticated.
"""

import time

import pytest
import trio
from coordclient import Client
from coordclient.wire import FramedStream, encode_frame

from coord.namespace.commands import Command, SessionClose, encode, entry_data, parse_request
from coord.raft.types import Entry, Message, MsgType
from coord.transport.codec import message_to_wire
from coord.transport.envelope import Forward, SessionTouches, service_to_wire
from tests.cluster import HOST, Cluster, dump_logs_on_failure

TERM_JUMP = 50  # far beyond what elections in a test produce, far below anything absurd


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(3, tmp_path_factory.mktemp("attacks"))
    c.start()
    yield c
    c.close()


@pytest.fixture
def logs_on_failure(cluster, request):
    yield
    dump_logs_on_failure(request, cluster)


def create_command(path: str) -> bytes:
    return encode(parse_request({"op": "create", "path": path, "data": b"forged", "seq": 1}, sid=0, limit=1 << 20))


def close_command(sid: int) -> bytes:
    return encode(Command("session_close", SessionClose(), 0, sid, 0))


def wire(m) -> bytes:
    return encode_frame(message_to_wire(m) if type(m) is Message else service_to_wire(m))


def hello(cluster: Cluster, target: int, claim: int) -> bytes:
    return encode_frame({"cluster": cluster.cluster_id, "from": claim, "to": target,
                         "port": cluster.peer_ports.get(claim, 1)})


async def forge(cluster: Cluster, target: int, claim: int, messages: list, hold: float = 1.0) -> None:
    """Connect to ``target``'s peer port claiming to be server ``claim``,
    send ``messages`` right behind the handshake (no waiting for, or answer
    to, a challenge), keep the connection open a moment, close it."""
    stream = await trio.open_tcp_stream(HOST, cluster.peer_ports[target])
    try:
        await stream.send_all(hello(cluster, target, claim) + b"".join(wire(m) for m in messages))
        with trio.move_on_after(hold):
            while await stream.receive_some(4096):
                pass
    except trio.BrokenResourceError:
        pass
    await stream.aclose()


async def situation(cluster: Cluster) -> tuple[int, dict]:
    leader = await cluster.wait_leader()
    return leader, await cluster.statuses()


def refusals(cluster: Cluster) -> int:
    return sum(cluster.logs(sid, tail=1 << 22).count("failed the challenge (wrong or no cluster secret)")
               for sid in (1, 2, 3))


async def test_forged_heartbeat_with_a_higher_term(cluster, logs_on_failure):
    leader, before = await situation(cluster)
    forged_term = before[leader]["term"] + TERM_JUMP
    refused = refusals(cluster)
    async with trio.open_nursery() as n:
        for f in (s for s in before if s != leader):
            n.start_soon(forge, cluster, f, leader, [
                Message(MsgType.HEARTBEAT, leader, f, term=forged_term, commit=before[leader]["commit"])])
    for sid, st in (await cluster.statuses()).items():
        assert st["term"] < forged_term, (sid, st)
    assert refusals(cluster) == refused + 2


async def test_forged_append_from_the_leader(cluster, logs_on_failure):
    leader, before = await situation(cluster)
    term, commit = before[leader]["term"], before[leader]["commit"]
    forged_term = term + TERM_JUMP
    entry = Entry(forged_term, commit + 1, data=entry_data(create_command("/forged-append"), t=int(time.time() * 1000)))
    async with trio.open_nursery() as n:
        for f in (s for s in before if s != leader):
            n.start_soon(forge, cluster, f, leader, [
                Message(MsgType.APPEND, leader, f, term=forged_term, index=commit, log_term=term,
                        entries=[entry], commit=commit + 1)])
    after = await cluster.statuses()
    for sid, st in after.items():
        assert st["term"] < forged_term and st["nodes"] == before[sid]["nodes"], (sid, st)


async def test_forged_forwards_create_nothing(cluster, logs_on_failure):
    leader, before = await situation(cluster)
    member = next(s for s in before if s != leader)
    async with trio.open_nursery() as n:
        n.start_soon(forge, cluster, leader, 9, [Forward(9, leader, ((1, create_command("/forged-by-9")),))])
        n.start_soon(forge, cluster, leader, member, [Forward(member, leader, ((1, create_command("/forged-by-m")),))])
    await trio.sleep(0.5)  # a forwarded write commits in a few ms; give it every chance
    after = await cluster.statuses()
    for sid, st in after.items():
        assert st["nodes"] == before[sid]["nodes"], (sid, st)


async def test_forged_session_close_leaves_the_session_alone(cluster, logs_on_failure):
    leader, _ = await situation(cluster)
    member = next(s for s in (1, 2, 3) if s != leader)
    async with Client(cluster.endpoints, session_timeout=5) as c:
        await c.create("/mine", b"", ephemeral=True)
        sid = c.session_id
        await forge(cluster, leader, member, [Forward(member, leader, ((1, close_command(sid)),))])
        await trio.sleep(0.5)
        assert c.state.name == "CONNECTED" and c.session_id == sid
        assert (await c.exists("/mine")) is not None  # the ephemeral node, and so the session, are alive


async def test_forged_touches_do_not_keep_a_dead_session_alive(cluster, logs_on_failure):
    leader, before = await situation(cluster)
    member = next(s for s in (1, 2, 3) if s != leader)
    # A client opens a session with a short timeout and vanishes without closing it.
    with trio.fail_after(10):
        raw = await trio.open_tcp_stream(*cluster.client_addr(leader))
        framed = FramedStream(raw)
        await framed.send({"id": 1, "op": "hello", "timeout_ms": 1000})
        sid = (await framed.receive())["r"]["sid"]
        await framed.send({"id": 2, "op": "create", "path": "/held", "data": b"", "eph": True, "seq": 1})
        assert (await framed.receive())["ok"]
    await raw.aclose()

    async def touch_for(seconds: float) -> None:
        """Keep sending touches for ``sid``, as the member, reconnecting when dropped."""
        deadline = trio.current_time() + seconds
        seq = 1_000_000
        while trio.current_time() < deadline:
            stream = await trio.open_tcp_stream(HOST, cluster.peer_ports[leader])
            try:
                await stream.send_all(hello(cluster, leader, member))
                while trio.current_time() < deadline:
                    seq += 1
                    await stream.send_all(wire(SessionTouches(member, leader, seq, (sid,))))
                    await trio.sleep(0.1)
            except trio.BrokenResourceError:
                await trio.sleep(0.1)
            finally:
                await stream.aclose()

    await touch_for(3.0)  # three session timeouts
    st = (await cluster.statuses())[leader]
    assert st["nodes"] == before[leader]["nodes"], st  # the session expired and took /held with it


async def test_handshakes_claiming_the_leader_do_not_disturb_a_follower(cluster, logs_on_failure):
    leader, _ = await situation(cluster)
    follower = next(s for s in (1, 2, 3) if s != leader)
    replaced = cluster.logs(follower, tail=1 << 22).count("replaces the old one")
    states = []
    async with Client(cluster.endpoints_of([follower]), session_timeout=5) as c:
        c.add_listener(states.append)
        for _ in range(5):
            await forge(cluster, follower, leader, [], hold=0.2)
        await c.create("/still-here", b"")
    assert cluster.logs(follower, tail=1 << 22).count("replaces the old one") == replaced
    assert all(s.name in ("CONNECTED", "CLOSED") for s in states), states


async def test_ensemble_with_a_secret_still_works(cluster, logs_on_failure):
    leader = await cluster.wait_leader()
    follower = next(s for s in (1, 2, 3) if s != leader)
    async with Client(cluster.endpoints_of([follower]), session_timeout=5) as c:  # forwarded to the leader
        await c.create("/through-a-follower", b"ok")
        assert (await c.get("/through-a-follower"))[0] == b"ok"
    assert "peers: cluster secret" in cluster.logs(leader, tail=1 << 22)
