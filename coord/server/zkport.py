"""The ZooKeeper client port: ZooKeeper's wire protocol in front of the same service.

Each connection pairs the ZooKeeper protocol machine (``zookeeper.session.
ZkSession``, sans-IO: bytes in, coord requests and bytes out) with a
``clientport.RequestHandler``, the very code that serves coord's own
protocol.  So a ZooKeeper request becomes the same coord request, on the
same kind of session, through the same write path, ACL checks and watches:
the translation happens here, at the edge, and nowhere else.

Order: the session emits requests in the order their dependencies allow;
one dispatcher task hands them to the handler in that order, so the writes
of a connection reach the write path (and the log) in ZooKeeper's FIFO
client order.  Answers and watch events come back through the handler's
``_queue`` in the order the server produced them, and the session turns
them into replies in request order.  ZooKeeper's protocol has no request
sequence numbers, so its writes carry none (``requires_seq = False``):
they are applied without exactly-once memory, as ZooKeeper applies them.

Bounds: the session limits outstanding requests and queued notifications
(``Limits``); bytes for the client wait in a bounded channel, and a client
that stops reading is dropped as on coord's own port.
"""

from __future__ import annotations

import logging
import math
import time
import trio

from coord.security.tls import connection_info
from coord.server.clientport import CLOSE_GRACE, MAX_INFLIGHT, OUT_QUEUE, RequestHandler, _Handshakes, accept
from coord.server.service import CoordService
from coord.zookeeper.fourletter import render
from coord.zookeeper.session import CloseConnection, CoordCall, FourLetterWord, Limits, SendBytes, ZkSession
from coord.zookeeper.translate import Options

log = logging.getLogger("coord.zkport")

__all__ = ["ZkConnection", "serve_zookeeper"]

VERSION = "coord-0.1.0"


class ZkConnection(RequestHandler):
    requires_seq = False

    def __init__(self, service: CoordService, stream: trio.abc.Stream):
        info = connection_info(stream)
        super().__init__(service, info)
        self.stream = stream
        cfg = service.cfg
        self.zk = ZkSession(peer_ip=info.address,
                            options=Options(reconfig_enabled=cfg.zk_reconfig_enabled),
                            limits=Limits(max_buffer=cfg.zk_max_buffer))
        self.out_send, self.out_recv = trio.open_memory_channel(OUT_QUEUE)
        self._calls_send, self._calls_recv = trio.open_memory_channel(math.inf)  # bounded by the session
        self._tokens: dict[int, int] = {}  # coord request id -> the session's token
        self._rids = iter(range(1, 1 << 62))
        self._can_read = trio.Event()
        self._can_read.set()
        self._scope = trio.CancelScope()
        self.established = time.time()

    # -- plumbing ---------------------------------------------------------------------
    async def run(self) -> None:
        self.service.connections.add(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._dispatcher, nursery)
                    await self._reader()
                    if self.close_reason is not None:
                        await trio.sleep_forever()  # the writer (or the close grace) ends it, after the last bytes
                    with trio.move_on_after(5):  # EOF: let what is in flight finish
                        while self._inflight:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
        finally:
            self._finish()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.stream.aclose()

    async def _reader(self) -> None:
        while self.close_reason is None:
            if not self.zk.wants_data:
                self._can_read = trio.Event()
                await self._can_read.wait()
                continue
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not data:
                return
            self._act(self.zk.receive_data(data))

    async def _dispatcher(self, nursery: trio.Nursery) -> None:
        sem = trio.Semaphore(MAX_INFLIGHT)
        async for req in self._calls_recv:
            await self._dispatch(req, nursery, sem)

    async def _writer(self) -> None:
        recv = self.out_recv
        while True:
            chunks = [await recv.receive()]
            while len(chunks) < 256:
                try:
                    chunks.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            closing = any(c is None for c in chunks)
            data = b"".join(c for c in chunks if c is not None)
            try:
                if data:
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._scope.cancel()
                return
            if closing:
                self._scope.cancel()
                return

    def _send_bytes(self, data: bytes) -> None:
        try:
            self.out_send.send_nowait(data)
        except trio.WouldBlock:
            self.close("client too slow: its outbound queue is full (it is not reading replies or events)")

    # -- the protocol machine's actions --------------------------------------------------
    def _act(self, actions: list) -> None:
        for a in actions:
            t = type(a)
            if t is SendBytes:
                self._send_bytes(a.data)
            elif t is CoordCall:
                rid = next(self._rids)
                self._tokens[rid] = a.token
                self._calls_send.send_nowait({**a.request, "id": rid})
            elif t is FourLetterWord:
                self._send_bytes(render(a.word, self._four_letter_status(), self.service.cfg.zk_four_letter_words))
                self.close(f"four-letter word {a.word}")
            elif t is CloseConnection:
                self.close(a.reason)
        if self.zk.wants_data and not self._can_read.is_set():
            self._can_read.set()

    def _queue(self, msg: dict) -> None:
        """A coord answer or watch event for this connection: through the
        protocol machine, which turns it into ZooKeeper replies in order."""
        if self._finished or self.close_reason is not None:
            return
        if "ev" in msg:
            if msg["ev"] == "closing":
                self.close(msg.get("reason", "closing"))
                return
            self._act(self.zk.coord_event(msg))
            return
        token = self._tokens.pop(msg.get("id"), None)
        if token is not None:
            self._act(self.zk.coord_response(token, msg))

    def close(self, reason: str) -> None:
        """Send what is queued, then close (ZooKeeper has no closing event)."""
        if self.close_reason is not None or self._finished:
            return
        self.close_reason = reason
        log.info("closing ZooKeeper connection %s (session %#x): %s", self.peer, self.sid, reason)
        try:
            self.out_send.send_nowait(None)  # the writer stops after what is before it
        except trio.WouldBlock:
            self._scope.cancel()
        self._end_within(CLOSE_GRACE)

    def _four_letter_status(self) -> dict:
        s = self.service
        cfg = s.cfg
        st = s.status()
        zk_conns = [c for c in s.connections if isinstance(c, ZkConnection)]
        st.update({
            "version": VERSION,
            "connections": [c.zk.connection_info(c.peer) for c in zk_conns],
            "conf": {"client_port": cfg.zookeeper_address[1] if cfg.zookeeper_address else 0,
                     "data_dir": cfg.data_dir, "tick_ms": cfg.tick_ms,
                     "min_session_timeout_ms": cfg.min_session_timeout_ms,
                     "max_session_timeout_ms": cfg.max_session_timeout_ms},
            "watch_summary": {"connections": len(s.connections), "total": s.watches.count()},
        })
        return st


async def serve_zookeeper(service: CoordService, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ZooKeeper's client protocol on ``zookeeper_address``."""
    host, port = service.cfg.zookeeper_address

    handshakes = _Handshakes()

    async def handler(stream: trio.SocketStream) -> None:
        await accept(service, stream, handshakes, ZkConnection)  # TLS too, with [tls] (ZooKeeper clients' TLS mode)

    listeners = await trio.open_tcp_listeners(port, host=host or None)
    log.info("server %d: serving ZooKeeper clients on %s", service.server_id,
             [lst.socket.getsockname()[:2] for lst in listeners])
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)
