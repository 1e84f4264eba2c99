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


async def _hello(port: int) -> tuple[trio.SocketStream, FramedStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    fs = FramedStream(stream)
    await fs.send({"id": 1, "op": "hello", "timeout_ms": 5000, "sid": 0, "last_zxid": 0})
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
        served.service._drop_session_clients("lost the leader")
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
