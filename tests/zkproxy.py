"""A test-only ZooKeeper front end: ``ZkSession`` glued to a real coord
server over coord's own client protocol.

This is not the server wiring (that will live in the server and call its
write path directly); it proves the seam is enough: unmodified ZooKeeper
clients, talking to this proxy, get coord's sessions, nodes and watches.
Differences from the real wiring, all on the safe side for tests:

* writes are sent one at a time (the server-side glue will pipeline them
  through the write path in order, with seq 0);
* writes carry a seq (coord's client port requires one), unique per
  session across connections because it starts from the clock;
* a four-letter word is answered from the coord server's ``status``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque

import trio

from coord.zookeeper.fourletter import render
from coord.zookeeper.session import CloseConnection, CoordCall, FourLetterWord, SendBytes, ZkSession
from coordclient.wire import FramedStream

WRITES = frozenset({"create", "delete", "set", "multi"})
_seqs = itertools.count(int(time.time() * 1000) * 1000)


class ProxyConnection:
    def __init__(self, zk: trio.SocketStream, coord_addr: tuple[str, int]) -> None:
        self.zk = zk
        self.coord_addr = coord_addr
        try:
            peer = zk.socket.getpeername()[0]
        except OSError:
            peer = ""
        self.session = ZkSession(peer_ip=peer)
        self.ids = itertools.count(1)
        self.tokens: dict[int, int] = {}  # coord request id -> session token
        self.writes: deque[dict] = deque()
        self.write_inflight = False
        self.zk_lock = trio.Lock()
        self.coord_lock = trio.Lock()
        self.can_read = trio.Event()
        self.can_read.set()

    async def run(self) -> None:
        coord = await trio.open_tcp_stream(*self.coord_addr)
        self.coord = FramedStream(coord)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._from_coord)
                await self._from_zk()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.coord.aclose()
                await self.zk.aclose()

    async def _from_zk(self) -> None:
        while True:
            if not self.session.wants_data:
                self.can_read = trio.Event()
                await self.can_read.wait()
            try:
                data = await self.zk.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            if not await self._act(self.session.receive_data(data)):
                return

    async def _from_coord(self) -> None:
        async for msg in self.coord:
            if "ev" in msg:
                actions = self.session.coord_event(msg)
            else:
                token = self.tokens.pop(msg.get("id"), None)
                if token is None:
                    continue
                if token == -1:  # the status a four-letter word asked for
                    async with self.zk_lock:
                        await self.zk.send_all(render(self.word, {**(msg.get("r") or {}), "version": "test"}))
                    self.nursery.cancel_scope.cancel()
                    return
                actions = self.session.coord_response(token, msg)
                if msg.get("id") == self.write_id:
                    self.write_inflight = False
                    await self._next_write()
            if not await self._act(actions):
                self.nursery.cancel_scope.cancel()
                return
            if self.session.wants_data:
                self.can_read.set()

    write_id = None

    async def _next_write(self) -> None:
        if self.write_inflight or not self.writes:
            return
        req = self.writes.popleft()
        self.write_inflight = True
        self.write_id = req["id"]
        async with self.coord_lock:
            await self.coord.send(req)

    async def _act(self, actions) -> bool:
        for a in actions:
            if isinstance(a, SendBytes):
                async with self.zk_lock:
                    await self.zk.send_all(a.data)
            elif isinstance(a, CoordCall):
                rid = next(self.ids)
                self.tokens[rid] = a.token
                req = {**a.request, "id": rid}
                if req["op"] in WRITES:
                    req["seq"] = next(_seqs)
                    self.writes.append(req)
                    await self._next_write()
                else:
                    async with self.coord_lock:
                        await self.coord.send(req)
            elif isinstance(a, FourLetterWord):
                self.word = a.word
                rid = next(self.ids)
                self.tokens[rid] = -1
                async with self.coord_lock:
                    await self.coord.send({"id": rid, "op": "status"})
                await trio.sleep_forever()  # _from_coord answers and ends the connection
            elif isinstance(a, CloseConnection):
                return False
        return True


class ZkProxy:
    """Serve the ZooKeeper protocol on 127.0.0.1:<port> in a background thread."""

    def __init__(self, coord_addr: tuple[str, int]) -> None:
        self.coord_addr = coord_addr
        self.port = 0
        self.connections: set[trio.SocketStream] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            self._ready.set()

            async def handler(stream: trio.SocketStream) -> None:
                self.connections.add(stream)
                try:
                    await ProxyConnection(stream, self.coord_addr).run()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    self.connections.discard(stream)

            await trio.serve_listeners(handler, listeners)

    def __enter__(self) -> "ZkProxy":
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def drop_connections(self) -> None:
        """Cut every client connection (the sessions live on, as after a network blip)."""
        def cut() -> None:
            for stream in list(self.connections):
                stream.socket.close()
        trio.from_thread.run_sync(cut, trio_token=self._token)

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"
