"""End to end: a real 3-process ensemble, the SDK, and SIGKILL.

Each test states the promise it checks: sessions and ephemerals survive the
death of the server a client uses; writes in flight complete exactly once;
no acknowledged write is lost when the leader dies; watches miss nothing
across a reconnect; a client never reads state older than it has seen.
"""

import signal
import subprocess
import sys
import textwrap

import pytest
import trio

from coordclient import Client
from coordclient.errors import CoordError
from coordclient.wire import FramedStream
from tests.cluster import dump_logs_on_failure, Cluster, child_env


@pytest.fixture
def cluster(request, tmp_path):
    c = Cluster(3, tmp_path)
    c.start()
    try:
        yield c
    finally:
        dump_logs_on_failure(request, c)
        c.close()


async def test_connected_server_killed_session_and_ephemerals_survive_writes_exactly_once(cluster):
    await cluster.wait_leader()
    async with Client(cluster.endpoints, session_timeout=6) as c:
        await c.create("/svc", b"")
        eph = await c.create("/svc/member-", b"me", ephemeral=True, sequential=True)
        sid = c.session_id
        victim = c.server_id
        done: list[str] = []

        async def creator(k: int) -> None:
            for j in range(40):
                done.append(await c.create("/svc/n-", b"%d-%d" % (k, j), sequential=True))

        async with trio.open_nursery() as nursery:
            for k in range(8):
                nursery.start_soon(creator, k)
            with trio.fail_after(30):
                while len(done) < 40:
                    await trio.sleep(0.005)
            cluster.kill(victim)  # SIGKILL while creates are in flight
        assert c.server_id != victim and c.session_id == sid
        assert (await c.get(eph))[0] == b"me"  # the ephemeral lived through it
        kids = [k for k in await c.children("/svc") if k.startswith("n-")]
        # exactly once: one node per acknowledged create, no duplicates of any payload
        assert len(kids) == len(done) == 8 * 40
        datas = [(await c.get("/svc/" + k))[0] for k in kids]
        assert len(set(datas)) == len(datas)


async def test_killed_client_process_loses_its_ephemerals_after_timeout(cluster, tmp_path):
    await cluster.wait_leader()
    script = textwrap.dedent(f"""
        import sys, time
        from coordclient import SyncClient
        with SyncClient({cluster.endpoints!r}, session_timeout=1.5) as c:
            c.create("/worker", b"", ephemeral=True)
            print("ready", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=child_env())
    try:
        assert proc.stdout.readline().strip() == b"ready"
        async with Client(cluster.endpoints, session_timeout=5) as c:
            assert await c.exists("/worker") is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            t0 = trio.current_time()
            with trio.fail_after(15):
                while await c.exists("/worker") is not None:
                    await trio.sleep(0.1)
            gone_after = trio.current_time() - t0
            assert gone_after >= 1.0  # not before the session timeout (1.5 s, server min 0.5 s)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_leader_killed_during_write_load_nothing_acknowledged_lost(cluster):
    leader = await cluster.wait_leader()
    acked: list[str] = []
    async with Client(cluster.endpoints, session_timeout=8) as c:
        await c.create("/load")

        async def writer(k: int) -> None:
            for j in range(40):
                path = f"/load/w{k}-{j}"
                try:
                    await c.create(path, b"%d" % j)
                except CoordError:
                    continue
                acked.append(path)

        async with trio.open_nursery() as nursery:
            for k in range(6):
                nursery.start_soon(writer, k)
            await trio.sleep(0.3)
            cluster.kill(leader)
        new_leader = await cluster.wait_leader()
        assert new_leader != leader
        cluster.start_server(leader)  # comes back with its data and catches up
        names = set(await c.children("/load", linearizable=True))
        missing = [p for p in acked if p.rsplit("/", 1)[1] not in names]
        assert not missing and len(acked) >= 200
    # the restarted server has every acknowledged write too
    async with Client(f"127.0.0.1:{cluster.client_ports[leader]}", session_timeout=5) as c2:
        with trio.fail_after(20):
            while len(await c2.children("/load")) < len(acked):
                await trio.sleep(0.1)


async def test_watch_stream_across_reconnect_misses_nothing(cluster):
    await cluster.wait_leader()
    async with Client(cluster.endpoints, session_timeout=6) as watcher, \
            Client(cluster.endpoints, session_timeout=6) as writer:
        await writer.create("/cfg", b"0")
        seen: list[bytes] = []
        async with watcher.watch("/cfg") as events:
            async def consume():
                async for ev in events:
                    # "created" too: the stream starts at what this client last saw,
                    # which may be before the writer created the node.
                    assert ev.type in ("created", "changed"), ev
                    if ev.type == "changed":
                        seen.append(ev.zxid)
                    if len(seen) == 60:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for k in range(1, 61):
                    await writer.set("/cfg", b"%d" % k)
                    if k == 20:
                        cluster.kill(watcher.server_id)  # forces a reconnect to another server
                        await trio.sleep(0.3)
        assert len(seen) == 60 and seen == sorted(set(seen))  # in order, none twice, none missing


async def test_reconnect_to_lagging_server_never_reads_older_state(cluster):
    leader = await cluster.wait_leader()
    lagger = next(s for s in (1, 2, 3) if s != leader)
    others = [s for s in (1, 2, 3) if s != lagger]
    cluster.pause(lagger)  # SIGSTOP: it misses everything that follows
    try:
        eps = ",".join(f"127.0.0.1:{cluster.client_ports[s]}" for s in others)
        async with Client(eps, session_timeout=10) as c:
            await c.create("/x", b"old")
            for k in range(50):
                await c.set("/x", b"new-%d" % k)
            seen = c.last_zxid
            sid, secret = c.session_id, c._secret
            # Resume the same (still open) session on the lagging server as soon
            # as it runs again, speaking the protocol directly so that nothing
            # else picks the server.
            cluster.resume(lagger)
            with trio.fail_after(20):
                for attempt in range(100):  # a server that has no leader yet refuses, as it should
                    stream = await trio.open_tcp_stream("127.0.0.1", cluster.client_ports[lagger])
                    async with stream:
                        fs = FramedStream(stream)
                        await fs.send({"id": 1, "op": "hello", "timeout_ms": 10_000, "sid": sid,
                                       "secret": secret, "last_zxid": seen})
                        hello = await fs.receive()
                        if not hello["ok"] and hello["err"] == "ConnectionLoss":
                            await trio.sleep(0.1)
                            continue
                        assert hello["ok"] and hello["zxid"] >= seen, hello
                        await fs.send({"id": 2, "op": "get", "path": "/x"})
                        got = await fs.receive()
                        assert got["ok"] and got["r"]["data"] == b"new-49", got
                        break
                else:
                    raise AssertionError("the lagging server never accepted the session")
    finally:
        cluster.resume(lagger)
