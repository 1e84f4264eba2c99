"""Closing a client connection at any moment of its life is safe.

The server drops every client at once when it loses the leader (and
closes single connections for many reasons); a connection may be in the
middle of ending when that happens.  Once, ``close`` started a task in a
nursery that was already closed, and the RuntimeError took the whole
server down (seen when 10,000 sessions were dropped at once).
"""

from __future__ import annotations

import trio

from coord.server.clientport import ClientConnection
from coordclient.wire import FramedStream
from tests.httpserved import serve


async def _hello(port: int, timeout_ms: int = 5000) -> tuple[trio.SocketStream, FramedStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    fs = FramedStream(stream)
    await fs.send({"id": 1, "op": "hello", "timeout_ms": timeout_ms, "sid": 0, "last_zxid": 0})
    assert (await fs.receive())["ok"]
    return stream, fs


async def test_dropping_clients_while_a_connection_ends_keeps_the_server_up(tmp_path, nursery, monkeypatch):
    served = await serve(tmp_path, nursery)
    dropped_while_ending: list[ClientConnection] = []
    finish = ClientConnection._finish

    def finish_after_a_drop(self: ClientConnection) -> None:
        # The connection's nursery is closed and it is not yet finished:
        # exactly where the periodic housekeeping once hit it.
        if self.close_reason is None:
            dropped_while_ending.append(self)
        self.close("lost the leader")  # as _drop_session_clients does
        finish(self)

    monkeypatch.setattr(ClientConnection, "_finish", finish_after_a_drop)
    with trio.fail_after(10):
        stream, _ = await _hello(served.client_port)
        await stream.aclose()  # EOF: the connection ends on its own
        while not dropped_while_ending:
            await trio.sleep(0.01)
        assert dropped_while_ending[0].close_reason == "lost the leader"
        # The server still serves.
        stream, fs = await _hello(served.client_port)
        await fs.send({"id": 2, "op": "exists", "path": "/"})
        assert (await fs.receive())["ok"]
        await stream.aclose()


async def test_a_closed_connection_tells_why_then_ends(tmp_path, nursery):
    served = await serve(tmp_path, nursery)
    with trio.fail_after(10):
        stream, fs = await _hello(served.client_port)
        conn = next(c for c in served.service.connections if c.sid)
        conn.close("testing")
        assert conn.close_reason == "testing"
        # The client reads the closing event, then the socket ends.
        m = await fs.receive()
        assert m == {"ev": "closing", "reason": "testing"}
        assert await stream.receive_some(100) == b""
        assert conn not in served.service.connections
        await stream.aclose()


async def test_a_follower_drops_only_the_sessions_it_can_no_longer_vouch_for(tmp_path, nursery, monkeypatch):
    served = await serve(tmp_path, nursery)
    with trio.fail_after(10):
        short, short_fs = await _hello(served.client_port, timeout_ms=2000)
        long, long_fs = await _hello(served.client_port, timeout_ms=30_000)
        by_timeout = {c.session_timeout_ms: c for c in served.service.connections if c.sid}
        assert set(by_timeout) == {2000, 30_000}
        # As a follower whose leader acknowledged its keepalives 5 s ago:
        # half of 2 s has passed, half of 30 s has not.
        monkeypatch.setattr(served.service.liveness, "reaches_leader",
                            lambda session_timeout=None: session_timeout is not None and session_timeout / 2 > 5)
        served.service._drop_session_clients("this server cannot reach the leader right now")
        assert by_timeout[2000].close_reason == "this server cannot reach the leader right now"
        assert by_timeout[30_000].close_reason is None
        await long_fs.send({"id": 2, "op": "exists", "path": "/"})
        assert (await long_fs.receive())["ok"]
        for s in (short, long):
            await s.aclose()
