"""coord.security.tlsstream: TLS on the socket itself, driven by Trio."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme

from coord.security.tlsstream import TLSSocketStream, handshake
from tests.tlsutil import trustme_contexts


@pytest.fixture(scope="module")
def pki():
    return trustme_contexts("127.0.0.1", client_cn="client")


async def _pair(sctx, cctx, nursery) -> tuple[TLSSocketStream, TLSSocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: trio.MemoryReceiveChannel
    send, got = trio.open_memory_channel(1)

    async def serve_one() -> None:
        raw = await listeners[0].accept()
        await send.send(await handshake(raw, sctx, server_side=True))

    nursery.start_soon(serve_one)
    client = await handshake(await trio.open_tcp_stream("127.0.0.1", port), cctx, server_side=False,
                             server_hostname="127.0.0.1")
    server = await got.receive()
    await listeners[0].aclose()
    return server, client


async def test_round_trips_and_certificates(pki):
    _, sctx, cctx = pki
    async with trio.open_nursery() as n:
        server, client = await _pair(sctx, cctx, n)
        for i in range(50):
            await client.send_all(b"ping %d" % i)
            assert await server.receive_some(100) == b"ping %d" % i
            await server.send_all(b"pong")
            assert await client.receive_some(100) == b"pong"
        assert server.version() in ("TLSv1.2", "TLSv1.3")
        subject = dict(x[0] for x in server.getpeercert()["subject"])
        assert subject["commonName"] == "client"
        assert server.getpeername()[0] == "127.0.0.1"
        assert server.context is sctx
        await client.aclose()
        await server.aclose()


async def test_large_transfers_both_ways_at_once(pki):
    """More than the socket buffers hold, in both directions at once: the
    writes must wait (want-write) and the reads keep up."""
    _, sctx, cctx = pki
    blob = bytes(range(256)) * 8192  # 2 MiB

    async def pump(stream: TLSSocketStream) -> None:
        await stream.send_all(blob)

    async def drain(stream: TLSSocketStream, into: bytearray) -> None:
        while len(into) < len(blob):
            into += await stream.receive_some(65536)

    async with trio.open_nursery() as n:
        server, client = await _pair(sctx, cctx, n)
        a, b = bytearray(), bytearray()
        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(pump, client)
                inner.start_soon(pump, server)
                inner.start_soon(drain, server, a)
                inner.start_soon(drain, client, b)
        assert bytes(a) == blob and bytes(b) == blob
        await client.aclose()
        await server.aclose()


async def test_end_of_stream_and_closed(pki):
    _, sctx, cctx = pki
    async with trio.open_nursery() as n:
        server, client = await _pair(sctx, cctx, n)
        await client.aclose()
        with trio.fail_after(5):
            try:
                assert await server.receive_some() == b""  # close_notify seen: a clean end
            except trio.BrokenResourceError:
                pass  # or the socket closed before it: a broken one; never a hang
        await server.aclose()
        await server.aclose()  # twice is fine
        with pytest.raises(trio.ClosedResourceError):
            await server.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some()


async def test_handshake_refused_by_an_unknown_ca(pki):
    _, sctx, _ = pki
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)  # trusts another CA: the server's certificate fails
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as n:

        async def serve_one() -> None:
            raw = await listeners[0].accept()
            with pytest.raises(trio.BrokenResourceError):
                await handshake(raw, sctx, server_side=True)

        n.start_soon(serve_one)
        with pytest.raises(trio.BrokenResourceError) as err:
            await handshake(await trio.open_tcp_stream("127.0.0.1", port), stranger, server_side=False,
                            server_hostname="127.0.0.1")
        assert "CERTIFICATE_VERIFY_FAILED" in str(getattr(err.value.__cause__, "reason", err.value.__cause__))
    await listeners[0].aclose()


async def test_a_stalled_handshake_is_cancelled_and_its_socket_closed(pki):
    _, sctx, _ = pki
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    silent = await trio.open_tcp_stream("127.0.0.1", port)  # connects, never says hello
    raw = await listeners[0].accept()
    fd = raw.socket.fileno()
    with trio.move_on_after(0.5) as scope:
        await handshake(raw, sctx, server_side=True)
    assert scope.cancelled_caught
    assert raw.socket.fileno() == -1  # handed over, and the TLS socket holding it was closed
    with trio.fail_after(5):
        assert await silent.receive_some() == b""  # the client sees the connection end
    await silent.aclose()
    await listeners[0].aclose()
    assert fd >= 0
