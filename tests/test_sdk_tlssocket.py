"""coordclient.tlssocket: the SDK's TLS on the socket itself, on asyncio and Trio.

Both ends here are ``TLSSocketStream``s over loopback TCP (the server end
made with ``wrap(server_side=True)``), or a ``Client(tls=...)`` against the
fake server behind such a listener.  Checked: data both ways (2 MiB each way
at once: partial writes retried, reads keeping up), the end of the stream
(close_notify, an abrupt close, a close in the middle of a frame), a wrong
CA and a wrong host name refused with the ``ssl`` reason, a handshake that
never finishes given up within its timeout with its socket closed, a send
cancelled part way (the stream is then broken, never corrupt), and no file
descriptor left behind by any of it.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct

import anyio
import anyio.abc
import pytest
import trustme
from anyio.streams.tls import TLSAttribute

from coordclient import Client
from coordclient.errors import ConnectionLossError
from coordclient.tlssocket import TLSSocketStream, connect_tls, take_socket
from tests.fakeserver import FakeServer, FakeState
from tests.tlsutil import trustme_contexts

pytestmark = pytest.mark.anyio

BLOB = bytes(range(256)) * 8192  # 2 MiB


@pytest.fixture(scope="module")
def pki():
    return trustme_contexts("127.0.0.1", "localhost", client_cn="alice")


async def open_fds() -> int:
    """Descriptors of this process, once closes asyncio defers (call_soon) are done."""
    await anyio.sleep(0.05)
    return len(os.listdir("/proc/self/fd"))


class Listener:
    """A loopback TCP listener whose connections ``accept`` hands over as
    raw AnyIO socket streams (for tests that do the server's part by hand)."""

    def __init__(self, listener: anyio.abc.SocketListener):
        self.listener = listener
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)

    def accept_silently(self, tg: anyio.abc.TaskGroup) -> list[anyio.abc.SocketStream]:
        """Accept one connection in ``tg`` and never say anything on it (a
        server that stalls the handshake); the list gets the connection."""
        accepted: list[anyio.abc.SocketStream] = []

        async def accept() -> None:
            accepted.append(await self.listener.accept())

        tg.start_soon(accept)
        return accepted

    async def accept_tls(self, sctx: ssl.SSLContext) -> TLSSocketStream:
        return await TLSSocketStream.wrap(await take_socket(await self.listener.accept()), sctx, server_side=True,
                                          handshake_timeout=10)


@pytest.fixture
async def listener():
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with multi:
        yield Listener(multi.listeners[0])


async def pair(listener: Listener, sctx, cctx, host: str = "127.0.0.1") -> tuple[TLSSocketStream, TLSSocketStream]:
    box: list[TLSSocketStream] = []
    async with anyio.create_task_group() as tg:
        async def serve() -> None:
            box.append(await listener.accept_tls(sctx))

        tg.start_soon(serve)
        client = await connect_tls(host, listener.port, cctx, handshake_timeout=10)
    return box[0], client


async def test_round_trips_certificates_and_attributes(pki, listener):
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    async with server, client:
        for i in range(50):
            await client.send(b"ping %d" % i)
            assert await server.receive(100) == b"ping %d" % i
            await server.send(b"pong")
            assert await client.receive() == b"pong"
        assert client.extra(TLSAttribute.tls_version) in ("TLSv1.2", "TLSv1.3")
        assert client.extra(TLSAttribute.server_side) is False
        subject = dict(x[0] for x in server.extra(TLSAttribute.peer_certificate)["subject"])
        assert subject["commonName"] == "alice"  # the client's certificate reached the server
        assert server.getpeercert()["subject"] == server.extra(TLSAttribute.peer_certificate)["subject"]
        assert client.extra(anyio.abc.SocketAttribute.remote_address)[1] == listener.port
        with pytest.raises(NotImplementedError, match="half-close"):
            await client.send_eof()


async def test_two_mebibytes_each_way_at_once(pki, listener):
    """More than the socket buffers hold, both ways at once: the sends wait
    (want-write) and are retried with the rest, the receives keep up."""
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    got: dict[str, bytearray] = {"server": bytearray(), "client": bytearray()}

    async def drain(stream: TLSSocketStream, into: bytearray) -> None:
        while len(into) < len(BLOB):
            into += await stream.receive(1 << 20)

    async with server, client:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.send, BLOB)
                tg.start_soon(server.send, memoryview(BLOB))
                tg.start_soon(drain, server, got["server"])
                tg.start_soon(drain, client, got["client"])
    assert bytes(got["server"]) == BLOB and bytes(got["client"]) == BLOB


async def test_a_receive_returns_what_is_decrypted_before_waiting(pki, listener):
    """Several records in flight, small receives: every byte comes back in
    order and no receive waits on the socket while OpenSSL holds data."""
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    async with server, client:
        for i in range(20):
            await server.send(b"%04d" % i * 25)  # 100 bytes, a record each
        data = bytearray()
        with anyio.fail_after(10):
            while len(data) < 2000:
                data += await client.receive(7)
        assert bytes(data) == b"".join(b"%04d" % i * 25 for i in range(20))


async def test_a_burst_of_records_comes_back_in_one_receive(pki, listener):
    """Twenty small sends are twenty TLS records; once they are in the
    socket, one receive returns them all (one recv system call, the records
    decrypted one after another), not one record per receive."""
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    async with server, client:
        for i in range(20):
            await server.send(b"%04d" % i * 25)
        with anyio.fail_after(10):
            await anyio.sleep(0.05)  # (loopback: they are there already)
            data = await client.receive(65536)
        assert data == b"".join(b"%04d" % i * 25 for i in range(20))


async def test_end_of_stream_after_close_notify_and_closed_after_aclose(pki, listener):
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    await server.send(b"last words")
    await server.aclose()
    with anyio.fail_after(5):
        assert await client.receive() == b"last words"
        with pytest.raises(anyio.EndOfStream):
            await client.receive()
        with pytest.raises(anyio.BrokenResourceError):  # the peer is gone: a send fails, soon
            for _ in range(100):
                await client.send(b"x" * 65536)
    await client.aclose()
    await client.aclose()  # twice is fine
    with pytest.raises(anyio.ClosedResourceError):
        await client.send(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await client.receive()


async def test_the_server_dropping_the_socket_ends_the_stream(pki, listener):
    """No close_notify (a killed server): the end reads as EndOfStream or a
    broken stream, never a hang."""
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    server.socket.shutdown(socket.SHUT_RDWR)  # a FIN with no close_notify before it
    await server.aclose()
    async with client:
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await client.receive()


async def test_aclose_wakes_a_receiver_waiting_in_another_task(pki, listener):
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    async with server:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                async def receive() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await client.receive()

                tg.start_soon(receive)
                await anyio.sleep(0.05)
                await client.aclose()


async def test_wrong_ca_refused_with_the_reason_and_no_fd_left(pki, listener):
    _, sctx, _ = pki
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    before = await open_fds()
    async with anyio.create_task_group() as tg:
        async def serve() -> None:
            with pytest.raises((ssl.SSLError, OSError)):  # the client's alert
                await listener.accept_tls(sctx)

        tg.start_soon(serve)
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect_tls("127.0.0.1", listener.port, stranger, handshake_timeout=10)
    assert await open_fds() == before


async def test_host_name_mismatch_refused(pki, listener):
    _, sctx, cctx = pki
    async with anyio.create_task_group() as tg:
        async def serve() -> None:
            with pytest.raises((ssl.SSLError, OSError)):
                await listener.accept_tls(sctx)

        tg.start_soon(serve)
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await connect_tls("127.0.0.1", listener.port, cctx, server_hostname="coord.example",
                              handshake_timeout=10)


async def test_a_handshake_that_never_finishes_times_out_and_closes_its_socket(pki, listener):
    _, _, cctx = pki
    before = await open_fds()
    async with anyio.create_task_group() as tg:
        accepted = listener.accept_silently(tg)
        start = anyio.current_time()
        with pytest.raises(TimeoutError, match="TLS handshake"):
            await connect_tls("127.0.0.1", listener.port, cctx, handshake_timeout=0.3)
        assert anyio.current_time() - start < 3
    silent = accepted[0]
    with anyio.fail_after(5):  # the client's socket was closed: the silent server sees the end
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            while True:
                await silent.receive()  # (the ClientHello, then the end)
    await silent.aclose()
    assert await open_fds() == before


async def test_an_outer_cancel_during_the_handshake_closes_the_socket(pki, listener):
    _, _, cctx = pki
    before = await open_fds()
    async with anyio.create_task_group() as tg:
        accepted = listener.accept_silently(tg)
        with anyio.move_on_after(0.3) as scope:
            await connect_tls("127.0.0.1", listener.port, cctx)
        assert scope.cancelled_caught
    await accepted[0].aclose()
    assert await open_fds() == before


async def test_a_send_cancelled_part_way_breaks_the_stream_cleanly(pki, listener):
    """The peer does not read, so an 8 MiB send stalls after the socket
    buffers fill; cancelled there, the stream refuses further sends (OpenSSL
    would need the rest of that buffer) and closes without a hang."""
    _, sctx, cctx = pki
    before = await open_fds()
    server, client = await pair(listener, sctx, cctx)
    with anyio.move_on_after(0.5) as scope:
        await client.send(BLOB * 4)
    assert scope.cancelled_caught
    with pytest.raises(anyio.BrokenResourceError, match="did not finish"):
        await client.send(b"more")
    # receiving still works: the server can say goodbye
    await server.send(b"bye")
    with anyio.fail_after(5):
        assert await client.receive() == b"bye"
    with anyio.fail_after(5):
        await client.aclose()
        await server.aclose()
    assert await open_fds() == before


async def test_a_cancelled_receive_loses_nothing(pki, listener):
    _, sctx, cctx = pki
    server, client = await pair(listener, sctx, cctx)
    async with server, client:
        with anyio.move_on_after(0.1):
            await client.receive()
        await server.send(b"after")
        with anyio.fail_after(5):
            assert await client.receive() == b"after"


# -- the SDK's Client over it --------------------------------------------------

async def serve_fake_over_tls(listener: Listener, sctx, state: FakeState, tg, *,
                              cut_mid_frame: bool = False) -> FakeServer:
    """The fake server behind ``listener``, TLS on every connection."""
    fake = FakeServer(state, 1, tg)

    async def one(raw: anyio.abc.SocketStream) -> None:
        try:
            stream = await TLSSocketStream.wrap(await take_socket(raw), sctx, server_side=True,
                                                handshake_timeout=5)
        except (OSError, TimeoutError):
            return
        if cut_mid_frame:  # read the hello, answer half a frame, hang up
            async with stream:
                await stream.receive()
                await stream.send(struct.pack(">I", 100) + b"\xa1")
            return
        await fake.serve(stream)

    async def accept_loop() -> None:
        while True:
            tg.start_soon(one, await listener.listener.accept())

    tg.start_soon(accept_loop)
    return fake


async def test_client_over_tls_writes_reads_and_presents_its_certificate(pki, listener):
    _, sctx, cctx = pki
    async with anyio.create_task_group() as tg:
        await serve_fake_over_tls(listener, sctx, FakeState(), tg)
        async with Client(f"127.0.0.1:{listener.port}", tls=cctx, session_timeout=5) as c:
            await c.create("/tls", b"over TLS")
            assert (await c.get("/tls"))[0] == b"over TLS"
            big = os.urandom(900_000)  # many records per frame, both ways
            await c.set("/tls", big)
            assert (await c.get("/tls"))[0] == big
            results = []
            async with anyio.create_task_group() as calls:  # pipelined calls on one connection
                for i in range(200):
                    calls.start_soon(lambda i=i: c.create(f"/tls-{i}", b"%d" % i))
            for i in range(0, 200, 37):
                results.append((await c.get(f"/tls-{i}"))[0])
            assert results == [b"%d" % i for i in range(0, 200, 37)]
        tg.cancel_scope.cancel()


async def test_client_reconnects_over_tls_when_the_server_drops_it(pki, listener):
    _, sctx, cctx = pki
    async with anyio.create_task_group() as tg:
        fake = await serve_fake_over_tls(listener, sctx, FakeState(), tg)
        async with Client(f"127.0.0.1:{listener.port}", tls=cctx, session_timeout=5) as c:
            await c.create("/kept", b"1")
            sid = c.session_id
            fake.drop_connections()
            with anyio.fail_after(10):
                assert (await c.get("/kept"))[0] == b"1"  # a new TLS connection, the same session
            assert c.session_id == sid
        tg.cancel_scope.cancel()


async def test_client_with_the_wrong_ca_says_why(pki, listener):
    _, sctx, _ = pki
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    async with anyio.create_task_group() as tg:
        await serve_fake_over_tls(listener, sctx, FakeState(), tg)
        with pytest.raises(ConnectionLossError, match="CERTIFICATE_VERIFY_FAILED"):
            async with Client(f"127.0.0.1:{listener.port}", tls=stranger, session_timeout=1):
                pass
        tg.cancel_scope.cancel()


async def test_client_sees_a_stream_cut_inside_a_frame(pki, listener):
    _, sctx, cctx = pki
    async with anyio.create_task_group() as tg:
        await serve_fake_over_tls(listener, sctx, FakeState(), tg, cut_mid_frame=True)
        with pytest.raises(ConnectionLossError, match="inside a frame"):
            async with Client(f"127.0.0.1:{listener.port}", tls=cctx, session_timeout=1):
                pass
        tg.cancel_scope.cancel()
