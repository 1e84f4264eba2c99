"""Bad input against a live server: no crash, clear errors, nothing changes,
other clients unaffected (design rule 4)."""

import struct

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from coordclient.wire import FramedStream
from tests.cluster import Cluster


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    c = Cluster(1, tmp_path_factory.mktemp("badinput"))
    c.start()
    try:
        trio.run(c.wait_leader)
        yield c
    finally:
        c.close()


async def _session(addr):
    stream = await trio.open_tcp_stream(*addr)
    fs = FramedStream(stream)
    await fs.send({"id": 1, "op": "hello", "timeout_ms": 10_000, "sid": 0, "last_zxid": 0})
    r = await fs.receive()
    assert r["ok"], r
    return stream, fs


async def _call(fs, **req):
    await fs.send(req)
    while True:
        r = await fs.receive()
        if "ev" not in r:
            return r


def _state(server):
    """Node count and applied zxid, read by a well-behaved client."""
    async def go():
        st = (await server.statuses())[1]
        return st["nodes"]

    return trio.run(go)


def _raw(server, payload: bytes) -> bytes:
    """Send raw bytes after a valid hello; return what the server answered."""
    async def go():
        stream, fs = await _session(server.client_addr(1))
        async with stream:
            await stream.send_all(payload)
            got = b""
            with trio.move_on_after(0.3):
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    got += chunk
            return got

    return trio.run(go)


@settings(max_examples=60)
@given(st.binary(max_size=200))
def test_garbage_bytes_never_crash_or_change_anything(server, junk):
    before = _state(server)
    _raw(server, junk)
    assert _state(server) == before


@settings(max_examples=60)
@given(st.dictionaries(
    st.sampled_from(["id", "op", "path", "data", "version", "seq", "eph", "sq", "ops", "watch", "kind", "from"]),
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=20),
              st.binary(max_size=20), st.lists(st.integers(), max_size=3),
              st.sampled_from(["create", "set", "delete", "multi", "get", "watch", "/", "/a", "//", "/a/.."])),
    max_size=8))
def test_random_requests_get_errors_or_valid_answers(server, req):
    """Any map: an error response or a well-formed success; the server lives on."""
    async def go():
        stream, fs = await _session(server.client_addr(1))
        async with stream:
            req2 = dict(req)
            await fs.send(req2)
            with trio.fail_after(10):
                while True:
                    r = await fs.receive()
                    if "ev" not in r:
                        break
            assert isinstance(r, dict) and "ok" in r
            if not r["ok"]:
                assert isinstance(r["err"], str) and r["err"]
            # clean up anything the random request managed to create
            if r["ok"] and isinstance(r.get("r"), dict) and isinstance(r["r"].get("path"), str) and r["r"]["path"] != "/":
                await _call(fs, id=99, op="delete", path=r["r"]["path"], recursive=True, seq=99)

    trio.run(go)
    assert _state(server) >= 1


def test_oversized_frame_closes_only_that_connection(server):
    async def go():
        bystander, bfs = await _session(server.client_addr(1))
        stream, fs = await _session(server.client_addr(1))
        await stream.send_all(struct.pack(">I", 64 << 20))  # announces 64 MiB
        with trio.fail_after(5):
            r = await fs.receive()
        assert r["ev"] == "closing" and "frame" in r["reason"]
        # the other client carries on
        r = await _call(bfs, id=2, op="exists", path="/")
        assert r["ok"] and r["r"]["stat"] is not None
        await bystander.aclose()

    trio.run(go)


def test_malformed_cbor_body_closes_with_reason(server):
    body = b"\xff\xff\xff"
    got = _raw(server, struct.pack(">I", len(body)) + body)
    assert b"closing" in got


def test_bad_fields_change_nothing(server):
    async def go():
        stream, fs = await _session(server.client_addr(1))
        async with stream:
            cases = [
                ({"op": "create", "path": "relative", "seq": 1}, "InvalidPath"),
                ({"op": "create", "path": "/a/", "seq": 2}, "InvalidPath"),
                ({"op": "create", "path": "/a/../b", "seq": 3}, "InvalidPath"),
                ({"op": "create", "path": "/a\x00b", "seq": 4}, "InvalidPath"),
                ({"op": "create", "path": "/x", "data": "not bytes", "seq": 5}, "BadArguments"),
                ({"op": "create", "path": "/x", "data": b"x" * (2 << 20), "seq": 6}, "TooLarge"),
                ({"op": "set", "path": "/", "data": b"", "version": "0", "seq": 7}, "BadArguments"),
                ({"op": "create", "path": "/x"}, "BadArguments"),  # no seq
                ({"op": "delete", "path": "/", "seq": 8}, None),
                ({"op": "multi", "ops": "nope", "seq": 9}, "BadArguments"),
                ({"op": "multi", "ops": [{"op": "frobnicate"}], "seq": 10}, "Unimplemented"),
                ({"op": "teleport"}, "Unimplemented"),
                ({"op": "watch", "path": "/", "kind": "sometimes"}, "BadArguments"),
            ]
            before = (await server.statuses())[1]["nodes"]
            for k, (req, code) in enumerate(cases):
                r = await _call(fs, id=100 + k, **req)
                assert not r["ok"], (req, r)
                if code:
                    assert r["err"] == code, (req, r)
            assert (await server.statuses())[1]["nodes"] == before

    trio.run(go)


def test_request_before_hello_is_refused(server):
    async def go():
        stream = await trio.open_tcp_stream(*server.client_addr(1))
        async with stream:
            fs = FramedStream(stream)
            r = await _call(fs, id=1, op="create", path="/nope", seq=1)
            assert not r["ok"] and r["err"] == "SessionExpired"
            r = await _call(fs, id=2, op="status")
            assert r["ok"] and r["r"]["server_id"] == 1

    trio.run(go)


def test_non_map_and_missing_id(server):
    async def go():
        stream = await trio.open_tcp_stream(*server.client_addr(1))
        async with stream:
            fs = FramedStream(stream)
            await fs.send([1, 2, 3])
            r = await fs.receive()
            assert r == {**r, "id": None, "ok": False, "err": "BadArguments"}
            await fs.send({"op": "status"})
            r = await fs.receive()
            assert r["id"] is None and r["err"] == "BadArguments"

    trio.run(go)


def test_cbor_tags_and_odd_types_are_refused_not_fatal(server):
    odd = cbor2.dumps({"id": 5, "op": "get", "path": cbor2.CBORTag(4242, "/")})
    got = _raw(server, struct.pack(">I", len(odd)) + odd)
    assert b"InvalidPath" in got or b"BadArguments" in got


def test_client_that_never_reads_its_events_is_disconnected(server):
    """Memory stays bounded: a watcher that stops reading is cut off with a reason."""
    async def go():
        lazy, lfs = await _session(server.client_addr(1))
        # A small receive buffer on our side so the server's queue fills quickly.
        lazy.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        r = await _call(lfs, id=2, op="watch", path="/flood", kind="persistent", recursive=True)
        assert r["ok"]
        writer, wfs = await _session(server.client_addr(1))
        await _call(wfs, id=1, op="create", path="/flood", seq=1)
        payload = b"x" * 10  # small: the test is about events, and it must finish within the close grace
        # Pipeline many writes: each one is an event the lazy client never reads.
        n = 12_000
        async with trio.open_nursery() as nursery:
            async def send_all():
                for k in range(n):
                    await wfs.send({"id": 10 + k, "op": "set", "path": "/flood", "data": payload,
                                    "version": -1, "seq": 2 + k})
            nursery.start_soon(send_all)
            got = 0
            with trio.fail_after(120):
                while got < n:
                    r = await wfs.receive()
                    if "ev" not in r:
                        got += 1
        # Now read what the lazy client was sent: it must end with a 'closing' event.
        tail = b""
        with trio.fail_after(30):
            while True:
                chunk = await lazy.receive_some(1 << 20)
                if not chunk:
                    break
                tail = (tail + chunk)[-4096:]
        assert b"closing" in tail and b"too slow" in tail
        await _call(wfs, id=1, op="delete", path="/flood", seq=n + 10)
        await writer.aclose()

    trio.run(go)


def test_connection_reset_with_pending_linearizable_watch_reads(server):
    """A client sends linearizable reads that set watches, then resets the
    connection before the answers: the server stays up, and no watch
    outlives the connection (the reads complete after it is gone)."""
    import socket

    async def go():
        before = (await server.statuses())[1]["watches"]
        for _ in range(5):
            stream, fs = await _session(server.client_addr(1))
            await fs.send_many([{"id": 10 + k, "op": "exists", "path": f"/never-{k}", "watch": True, "lin": True}
                                for k in range(400)])
            sock = stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
            sock.close()
        with trio.fail_after(10):
            while (await server.statuses())[1]["watches"] != before:
                await trio.sleep(0.05)
        stream, fs = await _session(server.client_addr(1))  # still serving
        async with stream:
            r = await _call(fs, id=2, op="exists", path="/", lin=True)
            assert r["ok"], r

    trio.run(go)
