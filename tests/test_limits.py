"""What one client can cost a server is bounded ([limits]), against a real server.

Each test plays a hostile or careless client seen in the reliability issue
and checks that it gets a clear error or a closed connection with a reason,
that nothing changed, and that the server keeps serving everybody else.
"""

from __future__ import annotations

import struct

import pytest
import trio

from coordclient.wire import FramedStream
from tests.cluster import Cluster, dump_logs_on_failure

LIMITS = {"max_connections_per_ip": 6, "max_sessions": 4, "max_watches_per_connection": 5,
          "max_queued_bytes_per_connection": 1 << 20, "max_items_per_request": 1000, "handshake_timeout_ms": 600}


@pytest.fixture
def srv(tmp_path, request):
    """A fresh server per test: what one test's connections hold must not
    count against the next one's."""
    c = Cluster(1, tmp_path, limits=LIMITS, min_session_timeout_ms=1000)
    c.start()
    trio.run(c.wait_leader)
    yield c
    dump_logs_on_failure(request, c)
    c.close()


async def connect(server, hello: bool = True):
    stream = await trio.open_tcp_stream(*server.client_addr(1))
    fs = FramedStream(stream)
    if hello:
        await fs.send({"id": 1, "op": "hello", "timeout_ms": 5000, "sid": 0, "last_zxid": 0})
        r = await fs.receive()
        return stream, fs, r
    return stream, fs, None


async def closing_reason(fs: FramedStream) -> str:
    """Read until the server's closing event; its reason."""
    with trio.fail_after(10):
        while True:
            m = await fs.receive()
            if m.get("ev") == "closing":
                return m["reason"]


async def healthy(server) -> None:
    stream, fs, r = await connect(server)
    assert r["ok"], r
    await fs.send({"id": 2, "op": "exists", "path": "/"})
    assert (await fs.receive())["ok"]
    await fs.send({"id": 3, "op": "close"})
    await stream.aclose()


async def test_a_frame_of_millions_of_items_is_refused_before_decoding(srv):
    stream, fs, _ = await connect(srv, hello=False)
    n = 1_000_000
    body = bytes([0x9a]) + n.to_bytes(4, "big") + b"\x80" * n
    await stream.send_all(struct.pack(">I", len(body)) + body)
    assert "more than 1000 CBOR items" in await closing_reason(fs)
    await healthy(srv)


async def test_connections_per_address_are_bounded(srv):
    held = [await connect(srv, hello=False) for _ in range(6)]
    stream, fs, _ = await connect(srv, hello=False)
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""  # closed at once
    for s, _, _ in held[:2]:
        await s.aclose()
    await trio.sleep(0.2)
    await healthy(srv)
    for s, _, _ in held[2:]:
        await s.aclose()


async def test_a_silent_or_byte_a_second_client_is_dropped(srv):
    stream, fs, _ = await connect(srv, hello=False)  # says nothing at all
    assert "no complete request within 0.6 s" in await closing_reason(fs)
    stream2, fs2, _ = await connect(srv, hello=False)
    data = struct.pack(">I", 40) + b"\xa1" + b"x" * 39
    async with trio.open_nursery() as n:
        async def drip():
            for b in data:
                try:
                    await stream2.send_all(bytes([b]))
                except trio.BrokenResourceError:
                    return
                await trio.sleep(0.1)
        n.start_soon(drip)
        assert "no complete request" in await closing_reason(fs2)
        n.cancel_scope.cancel()


async def test_a_session_quiet_after_its_hello_is_held_to_its_own_timeout(srv):
    """The wait for the request after a hello began under the handshake
    timeout (0.6 s here) and was not moved when the hello gave the
    connection a session: a client with nothing to ask right after opening
    or resuming its session (5 s timeout) was dropped after 0.6 s."""
    stream, fs, r = await connect(srv)  # hello, timeout 5 s
    assert r["ok"], r
    await trio.sleep(1.5)  # quiet: longer than the handshake timeout, well within the session's
    await fs.send({"id": 2, "op": "ping"})
    with trio.fail_after(5):
        m = await fs.receive()
    assert m.get("id") == 2 and m.get("ok"), m
    # resumed on a new connection: the same
    stream2 = await trio.open_tcp_stream(*srv.client_addr(1))
    fs2 = FramedStream(stream2)
    await fs2.send({"id": 1, "op": "hello", "timeout_ms": 5000, "sid": r["r"]["sid"], "secret": r["r"]["secret"],
                    "last_zxid": 0})
    assert (await fs2.receive())["ok"]
    await trio.sleep(1.5)
    await fs2.send({"id": 2, "op": "ping"})
    with trio.fail_after(5):
        m = await fs2.receive()
    assert m.get("id") == 2 and m.get("ok"), m
    await fs2.send({"id": 3, "op": "close"})
    await stream.aclose()
    await stream2.aclose()


async def test_sessions_and_watches_are_bounded(srv):
    conns = []
    errs = []
    for _ in range(5):
        stream, fs, r = await connect(srv)
        conns.append(stream)
        if not r["ok"]:
            errs.append(r)
    assert errs and errs[0]["err"] == "LimitExceeded" and "limit of 4 sessions" in errs[0]["msg"]
    for s in conns:
        await s.aclose()
    await trio.sleep(1.5)  # the sessions expire (1 s timeouts); the slots come back
    stream, fs, r = await connect(srv)
    with trio.fail_after(20):
        while not r["ok"]:
            await stream.aclose()
            await trio.sleep(0.5)
            stream, fs, r = await connect(srv)
    for k in range(6):
        await fs.send({"id": 10 + k, "op": "watch", "path": f"/w{k}", "kind": "persistent"})
    got = [await fs.receive() for _ in range(6)]
    assert [g["ok"] for g in got] == [True] * 5 + [False]
    assert got[-1]["err"] == "LimitExceeded" and "limit of 5 watches" in got[-1]["msg"]
    await fs.send({"id": 30, "op": "close"})
    await stream.aclose()


async def test_a_client_that_never_reads_its_answers_is_cut_off(srv):
    writer, wfs, r = await connect(srv)
    await wfs.send({"id": 2, "op": "create", "path": "/big", "data": b"x" * (400 << 10), "seq": 1})
    assert (await wfs.receive())["ok"]
    lazy, lfs, _ = await connect(srv, hello=False)
    lazy.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await lfs.send({"id": 1, "op": "hello", "timeout_ms": 5000, "sid": r["r"]["sid"], "secret": r["r"]["secret"],
                    "last_zxid": 0})
    for k in range(200):  # 80 MB of answers it will not read
        await lfs.send({"id": 100 + k, "op": "get", "path": "/big"})
    with trio.fail_after(20):
        try:
            while await lazy.receive_some(1 << 20):
                pass
        except trio.BrokenResourceError:
            pass  # reset: the server closed with our unread requests in its buffer
    assert "client too slow" in srv.logs(1) and "bytes of answers wait" in srv.logs(1)
    await writer.aclose()
    await healthy(srv)
