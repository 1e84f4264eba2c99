"""The client port: one task pair per connection, requests pipelined.

Each connection has a reader and a writer draining one bounded outbound
queue.  The reader serves the hot paths with no task of their own: a local
read right away, a linearizable read when the next shared ReadIndex barrier
applies, a write when this server applies its entry (the request is parsed
straight into the command schema and encoded once, see
``namespace.commands``).  Rarer requests (hello, sync, watch, admin) get a
task each.  At most ``MAX_INFLIGHT`` requests per connection are open at a
time, so a flooding client is slowed down by TCP rather than by our memory.  Responses and watch events share that queue, which is what gives
ZooKeeper's ordering guarantee: events are queued synchronously while the
state machine applies a change, so every event with zxid <= Z is queued
before any response stamped with zxid Z.  A client that does not read its
events fills the queue and is disconnected with a reason, instead of making
the server buffer without bound.

Bad input never changes state: malformed frames close only that connection;
a malformed request gets an error response naming the problem.

With ``[tls]`` the port speaks only TLS (1.2+).  Each connection's TLS
handshake runs in that connection's own task, bounded by
``tls.handshake_timeout_ms``, so a plain-TCP client, one that stalls in the
handshake or one with a bad certificate is dropped in that time and holds
up nobody else; at most ``MAX_HANDSHAKES`` handshakes run at once.  What
the transport proved about the client (its address, its verified
certificate's subject) is ``ClientConnection.transport_info``, a
``coord.security.tls.TransportInfo``, for authentication to use.
"""

from __future__ import annotations

import itertools
import logging
import time
import zlib
from typing import Any, Awaitable, Callable

import trio

from coord.namespace.commands import encode, parse_request
from coord.security.ratelog import RateLimitedLog
from coord.security.tls import TransportInfo, connection_info
from coord.server.config import ConfigError, MemberAddrs, parse_addr
from coord.server.future import Future
from coord.server.service import CoordService
from coord.server.watches import KINDS, WatchRegistry
from coordclient.errors import (
    AuthFailedError,
    BadArgumentsError,
    ConnectionLossError,
    CoordError,
    InvalidPathError,
    SessionExpiredError,
    UnimplementedError,
)
from coordclient.protocol import SESSIONLESS_OPS, SNAPSHOT_CHUNK, Op, validate_path
from coordclient.wire import DEFAULT_MAX_FRAME, FrameError, FramedStream, encode_frames

log = logging.getLogger("coord.clientport")

MAX_INFLIGHT = 512  # requests being served per connection
OUT_QUEUE = 8192  # responses + events queued per connection before it counts as too slow
CLOSE_GRACE = 5.0  # seconds a closing connection gets to take its last frames
MAX_HANDSHAKES = 256  # TLS handshakes in progress on the port; more connections are closed at once
WRITE_OPS = frozenset({Op.CREATE.value, Op.SET.value, Op.DELETE.value, Op.MULTI.value})

_INT_MAX = (1 << 63) - 1


def _bad(msg: str) -> BadArgumentsError:
    return BadArgumentsError(msg)


def arg_int(req: dict, key: str, default: Any = ..., lo: int = -1) -> int:
    v = req.get(key, default)
    if v is ...:
        raise _bad(f"missing {key!r}")
    if type(v) is not int or not lo <= v <= _INT_MAX:
        raise _bad(f"{key!r} must be an integer >= {lo}")
    return v


def _request_id(req: Any) -> int | None:
    rid = req.get("id") if type(req) is dict else None
    return rid if type(rid) is int else None


def arg_bool(req: dict, key: str) -> bool:
    v = req.get(key, False)
    if v is None:
        return False
    if type(v) is not bool:
        raise _bad(f"{key!r} must be true or false")
    return v


def arg_path(req: dict, key: str = "path") -> str:
    p = req.get(key)
    why = validate_path(p)
    if why is not None:
        raise InvalidPathError(f"{why}: {p!r}"[:300], path=p if isinstance(p, str) else None)
    return p


def _write_error(res: dict) -> CoordError:
    """The exception for a refused write's result map."""
    err = CoordError.from_code(res.get("err", "SystemError"), res.get("msg", ""), path=res.get("path"))
    if "index" in res or "results" in res:
        err.wire_extra = {k: res[k] for k in ("index", "results") if k in res}
    return err


class ClientConnection:
    """One client connection; also the ``Watcher`` its watches deliver to.

    ``transport_info`` (``TransportInfo``, immutable) is what the transport
    proved about the client: its IP address and port, whether the
    connection is TLS, and the RFC 4514 subject of its verified client
    certificate (or None).  ``stream`` is a socket stream or, with TLS, an
    ``SSLStream`` whose handshake is done.
    """

    def __init__(self, service: CoordService, stream: trio.abc.Stream, max_frame: int = DEFAULT_MAX_FRAME,
                 *, transport_info: TransportInfo | None = None):
        self.service = service
        self.ns = service.ns
        self.stream = stream
        self.framed = FramedStream(stream, max_frame)
        self.out_send, self.out_recv = trio.open_memory_channel(OUT_QUEUE)
        self.sid = 0
        self._wids = itertools.count(1)
        self._scope = trio.CancelScope()
        self.close_reason: str | None = None
        self.limit = service.cfg.max_data_bytes
        self.transport_info = transport_info if transport_info is not None else connection_info(stream)
        self.peer = self.transport_info.peer

    # -- plumbing ---------------------------------------------------------
    async def run(self) -> None:
        self.service.connections.add(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    await self._reader(nursery)
                    # EOF from the client: finish what is in flight, then stop.
                    with trio.move_on_after(5):
                        while self._inflight:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
        finally:
            # Callbacks may still arrive (a shared read barrier completing,
            # a watch firing): from now on they only drop their results.
            self._finished = True
            self._nursery = None
            self.service.connections.discard(self)
            self.service.watches.remove_watcher(self)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.stream.aclose()

    _inflight = 0
    _inline_streak = 0
    _finished = False  # run() has returned
    _nursery: trio.Nursery | None = None

    def close(self, reason: str) -> None:
        """Send a last event saying why, then drop the connection.  What was
        still queued is discarded (the connection is ending anyway), and a
        client that reads nothing gets a few seconds before the socket closes."""
        if self.close_reason is not None or self._finished:
            return
        self.close_reason = reason
        log.info("closing client connection %s (session %#x): %s", self.peer, self.sid, reason)
        while True:
            try:
                self.out_recv.receive_nowait()
            except trio.WouldBlock:
                break
        self.out_send.send_nowait({"ev": "closing", "reason": reason})
        if self._nursery is not None:
            self._nursery.start_soon(self._close_after, CLOSE_GRACE)

    async def _close_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self._scope.cancel()

    async def _writer(self) -> None:
        recv = self.out_recv
        while True:
            batch = [await recv.receive()]
            while len(batch) < 256:
                try:
                    batch.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self.stream.send_all(encode_frames(batch, 1 << 30))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._scope.cancel()
                return
            if self.close_reason is not None and any(m.get("ev") == "closing" for m in batch):
                self._scope.cancel()
                return

    async def _reader(self, nursery: trio.Nursery) -> None:
        sem = trio.Semaphore(MAX_INFLIGHT)
        while self.close_reason is None:
            try:
                req = await self.framed.receive()
            except trio.EndOfChannel:
                return
            except FrameError as e:
                self.close(f"bad frame: {e}")
                await trio.sleep_forever()  # the writer ends the connection
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if self._try_inline(req):
                if self._inline_streak >= 64:  # let other tasks run now and then
                    self._inline_streak = 0
                    await trio.sleep(0)
                self._inline_streak += 1
                continue
            await sem.acquire()
            self._inflight += 1
            if type(req) is dict and type(req.get("op")) is str and req["op"] in WRITE_OPS:
                writes = self.service.writes
                if writes.full:
                    await writes.wait_room()  # push back: stop reading until writes drain
                self._start_write(req, sem)
                continue
            nursery.start_soon(self._serve, req, sem)

    def _queue(self, msg: dict) -> None:
        if self._finished:
            return
        try:
            self.out_send.send_nowait(msg)
        except trio.WouldBlock:
            self.close("client too slow: its outbound queue is full (it is not reading responses or events)")

    def deliver_event(self, wid: int, etype: str, path: str, zxid: int) -> None:
        if self.close_reason is None:
            self._queue({"ev": "watch", "wid": wid, "type": etype, "path": path, "zxid": zxid})

    # -- requests -----------------------------------------------------------
    def _admit(self, req: Any) -> tuple[int, str, Callable]:
        """Validate a request and its session; returns (id, op, handler), or
        raises the CoordError to answer with."""
        if type(req) is not dict:
            raise _bad("a request must be a map")
        rid = _request_id(req)
        if rid is None:
            raise _bad("a request needs an integer 'id'")
        op = req.get("op")
        if not isinstance(op, str) or op not in HANDLERS:
            raise UnimplementedError(f"unknown operation {op!r}"[:200])
        handler = HANDLERS[op]
        needs_session = op not in SESSIONLESS_OPS
        if needs_session or op == Op.HELLO:
            if not self.service.is_member():
                self.close("this server is not a member of the ensemble")
                raise ConnectionLossError("this server is not a member of the ensemble; use another")
            if not self.service.reaches_leader():
                # Cut off from the leader (or mid-election, or the leader does
                # not hear us): sessions are kept alive by the leader only, so
                # pretending otherwise would let a client believe in a session
                # the majority is expiring.  Drop the connection, as ZooKeeper
                # does; the client moves on.
                self.close("this server cannot reach the leader right now")
                raise ConnectionLossError("this server cannot reach the leader right now; use another")
        if needs_session:
            if not self.sid:
                raise SessionExpiredError("no session: send hello first")
            if not self.ns.session_exists(self.sid):
                raise SessionExpiredError(f"session {self.sid:#x} has expired")
            self.service.touch(self.sid)
        return rid, op, handler

    def _error_response(self, rid: int | None, req: Any, exc: Exception) -> dict:
        if isinstance(exc, CoordError):
            resp = {"id": rid, "ok": False, "zxid": self.service.applied, "err": exc.code.value,
                    "msg": exc.message, "path": exc.path}
            extra = getattr(exc, "wire_extra", None)
            if extra:
                resp.update(extra)
            return resp
        log.error("internal error serving %r from %s", req if len(repr(req)) < 300 else "...", self.peer,
                  exc_info=exc)
        return {"id": rid, "ok": False, "zxid": self.service.applied, "err": "SystemError",
                "msg": "internal server error"}

    def _try_inline(self, req: Any) -> bool:
        """Serve a read (get, exists, children; ping) with no task of its
        own: a local read right here in the reader (it never waits), a
        ``lin`` read when the service's next shared ReadIndex barrier
        completes.  A task per read was most of a read's cost.  False if
        ``req`` needs a task."""
        if type(req) is not dict:
            return False
        op = req.get("op")
        reader = INLINE_READS.get(op) if type(op) is str else None
        if reader is None:
            return False
        lin = req.get("lin", False)
        if lin is not False and (lin is not True or self._inflight >= MAX_INFLIGHT):
            return False  # a bad flag gets its error from the task path; a full pipe waits there
        t0 = time.perf_counter()  # observability
        try:
            rid, _, _ = self._admit(req)
        except Exception as e:  # noqa: BLE001 - every failure is the client's answer
            self._queue(resp := self._error_response(_request_id(req), req, e))
            self.service.obs.request(op, resp, t0)  # observability
            return True
        if lin:
            self._inflight += 1
            self.service.after_read_barrier(lambda err: self._finish_read(rid, req, reader, err, t0))
        else:
            self._finish_read(rid, req, reader, None, t0)
        return True

    def _finish_read(self, rid: int, req: dict, reader: Callable, barrier_error: Exception | None,
                     t0: float = 0.0) -> None:
        if req.get("lin"):
            self._inflight -= 1
        if self._finished or self.close_reason is not None:
            return  # nobody to answer: do not read (a watch would outlive the connection)
        try:
            if barrier_error is not None:
                raise barrier_error
            resp = {"id": rid, "ok": True, "zxid": self.service.applied, "r": reader(self, req)}
        except Exception as e:  # noqa: BLE001 - every failure is the client's answer
            resp = self._error_response(rid, req, e)
        self._queue(resp)
        self.service.obs.request(req["op"], resp, t0)  # observability

    async def _serve(self, req: Any, sem: trio.Semaphore) -> None:
        t0 = time.perf_counter()  # observability
        try:
            rid, op, handler = self._admit(req)
            result = await handler(self, req)
            resp = {"id": rid, "ok": True, "zxid": self.service.applied, "r": result}
        except Exception as e:  # noqa: BLE001 - every failure is the client's answer
            resp = self._error_response(_request_id(req), req, e)
        finally:
            sem.release()
            self._inflight -= 1
        self._queue(resp)
        self.service.obs.request(req.get("op") if type(req) is dict else None, resp, t0)  # observability
        if resp["ok"] and req.get("op") == Op.CLOSE:
            self.close("session closed")

    def _start_write(self, req: dict, sem: trio.Semaphore) -> None:
        """A write, served with no task: parsed into its command, encoded
        once, submitted; answered by a callback when this server applies it."""
        t0 = time.perf_counter()  # observability
        try:
            rid, _, _ = self._admit(req)
            data = encode(parse_request(req, sid=self.sid, limit=self.limit))
        except Exception as e:  # noqa: BLE001 - every failure is the client's answer
            self._end_request(sem)
            self._queue(resp := self._error_response(_request_id(req), req, e))
            self.service.obs.request(req["op"], resp, t0)  # observability
            return
        self.service.submit(data).add_done_callback(lambda f: self._finish_write(rid, req["op"], f, sem, t0))

    def _finish_write(self, rid: int, op: str, f: Future, sem: trio.Semaphore, t0: float) -> None:
        self._end_request(sem)
        if self._finished:
            return
        if f.error is not None:
            resp = self._error_response(rid, None, f.error)
        else:
            zxid, res = f.result()
            if res.get("ok"):
                resp = {"id": rid, "ok": True, "zxid": max(zxid, self.service.applied), "r": res["r"]}
            else:
                resp = self._error_response(rid, None, _write_error(res))
                resp["zxid"] = max(zxid, resp["zxid"])
        self._queue(resp)
        self.service.obs.request(op, resp, t0)  # observability

    def _end_request(self, sem: trio.Semaphore) -> None:
        sem.release()
        self._inflight -= 1

    async def op_hello(self, req: dict) -> dict:
        if self.sid:
            raise _bad("this connection already has a session")
        timeout_ms = arg_int(req, "timeout_ms", 10_000, lo=1)
        sid = arg_int(req, "sid", 0, lo=0)
        last = arg_int(req, "last_zxid", 0, lo=0)
        if sid == 0:
            sid, secret, timeout_ms = await self.service.open_session(timeout_ms)
        else:
            secret = req.get("secret")
            if type(secret) is not bytes:
                raise _bad("'secret' must be bytes to resume a session")
            # Never show a client older state than it has seen elsewhere.
            await self.service.wait_applied(last)
            known = self.ns.session(sid)
            if known is None:
                raise SessionExpiredError(f"session {sid:#x} has expired")
            if known[1] != secret:
                raise AuthFailedError(f"wrong secret for session {sid:#x}")
            timeout_ms = known[0]
        self.sid = sid
        self.service.touch(sid)
        return {"sid": sid, "secret": secret, "timeout_ms": timeout_ms,
                "server_id": self.service.server_id, "zxid": self.service.applied}

    def read_ping(self, req: dict) -> dict:
        return {}

    async def op_ping(self, req: dict) -> dict:
        return {}

    async def op_close(self, req: dict) -> dict:
        await self.service.close_session(self.sid)
        return {}

    async def op_status(self, req: dict) -> dict:
        return self.service.status()

    async def _before_read(self, req: dict) -> None:
        if arg_bool(req, "lin"):
            await self.service.read_barrier()

    def _watch_now(self, path: str, kind: str) -> int:
        wid = next(self._wids)
        self.service.watches.add(self, wid, path, kind)
        return wid

    # Reads: the local part is synchronous (served inline by the reader, see
    # _try_inline); the op_ forms first wait for a ReadIndex barrier when
    # ``lin`` is set.  No await between the read and a watch registration:
    # no change can be missed.
    def read_get(self, req: dict) -> dict:
        path = arg_path(req)
        watch = arg_bool(req, "watch")
        data, stat = self.ns.get(path)
        out = {"data": data, "stat": stat}
        if watch:
            out["wid"] = self._watch_now(path, "data")
        return out

    def read_exists(self, req: dict) -> dict:
        path = arg_path(req)
        watch = arg_bool(req, "watch")
        out = {"stat": self.ns.exists(path)}
        if watch:
            out["wid"] = self._watch_now(path, "exists")
        return out

    def read_children(self, req: dict) -> dict:
        path = arg_path(req)
        watch = arg_bool(req, "watch")
        if arg_bool(req, "stats"):
            kids = [[name, st] for name, st in self.ns.children_with_stats(path)]
        else:
            kids = list(self.ns.children(path))
        out = {"children": kids}
        if watch:
            out["wid"] = self._watch_now(path, "children")
        return out

    async def op_get(self, req: dict) -> dict:
        await self._before_read(req)
        return self.read_get(req)

    async def op_exists(self, req: dict) -> dict:
        await self._before_read(req)
        return self.read_exists(req)

    async def op_children(self, req: dict) -> dict:
        await self._before_read(req)
        return self.read_children(req)

    async def op_sync(self, req: dict) -> dict:
        await self.service.read_barrier()
        return {}

    async def op_watch(self, req: dict) -> dict:
        path = arg_path(req)
        kind = req.get("kind", "persistent")
        if kind not in KINDS:
            raise _bad(f"'kind' must be one of {list(KINDS)}")
        recursive = arg_bool(req, "recursive")
        if recursive and kind != "persistent":
            raise _bad("only persistent watches can be recursive")
        frm = req.get("from")
        if frm is None:  # "from now": nothing to replay
            wid = next(self._wids)
            self.service.watches.add(self, wid, path, kind, recursive)
            return {"wid": wid}
        frm = arg_int(req, "from", lo=0)
        await self.service.wait_applied(frm)
        # From here to the end: no await, so no event can slip between the
        # replay and the registration.
        wid = next(self._wids)
        events = self.ns.events_since(frm)
        if events is None:
            self._queue({"ev": "resync", "wid": wid, "zxid": self.service.applied})
        else:
            for zxid, etype, epath in events:
                if WatchRegistry.matches(kind, recursive, path, etype, epath):
                    self.deliver_event(wid, etype, epath, zxid)
                    if kind != "persistent":
                        return {"wid": wid}  # a one-shot watch that already fired
        self.service.watches.add(self, wid, path, kind, recursive)
        return {"wid": wid}

    # -- administration -----------------------------------------------------
    async def op_member_change(self, req: dict) -> dict:
        def servers(key: str) -> dict[int, dict]:
            raw = req.get(key) or []
            if type(raw) is not list:
                raise _bad(f"{key!r} must be a list of {{id, peer, client}} maps")
            out = {}
            for item in raw:
                if type(item) is not dict:
                    raise _bad(f"{key!r} must be a list of {{id, peer, client}} maps")
                sid = arg_int(item, "id", lo=1)
                try:
                    addrs = MemberAddrs(parse_addr(item.get("peer"), f"{key}.peer"),
                                        parse_addr(item["client"], f"{key}.client") if item.get("client") else None)
                except ConfigError as e:
                    raise _bad(str(e)) from None
                out[sid] = addrs.to_wire()
            return out

        def ids(key: str) -> list[int]:
            raw = req.get(key) or []
            if type(raw) is not list or any(type(x) is not int or x < 1 for x in raw):
                raise _bad(f"{key!r} must be a list of server ids")
            return raw

        version = req.get("version")
        if version is not None and (type(version) is not int or version < 0):
            raise _bad("'version' must be a non-negative integer or null")
        await self.service.admin.change(
            add_voters=servers("add_voters"), add_learners=servers("add_learners"),
            remove=ids("remove"), promote=ids("promote"), version=version,
            wait=req.get("wait", True) is not False)
        return self.service.status()

    async def op_leader_transfer(self, req: dict) -> dict:
        return await self.service.admin.transfer(arg_int(req, "to", 0, lo=0))

    async def op_snapshot(self, req: dict) -> dict:
        """A consistent snapshot (taken without yielding, at one zxid), sent as
        ``{"ev": "chunk", "id": <request id>, "data": ...}`` frames before the response."""
        zxid = self.service.applied
        data = self.service.ns.snapshot()
        rid = req["id"]
        for off in range(0, len(data), SNAPSHOT_CHUNK):
            await self.out_send.send({"ev": "chunk", "id": rid, "data": data[off:off + SNAPSHOT_CHUNK]})
        return {"zxid": zxid, "size": len(data), "crc32": zlib.crc32(data)}

    async def op_unwatch(self, req: dict) -> dict:
        wid = arg_int(req, "wid", lo=1)
        self.service.watches.remove(self, wid)
        return {}


HANDLERS: dict[str, Callable[[ClientConnection, dict], Awaitable[dict]] | None] = {
    op.value: getattr(ClientConnection, f"op_{op.value}", None) for op in Op if op is not Op.CHECK
}  # writes (None here) are served by _start_write
INLINE_READS: dict[str, Callable[[ClientConnection, dict], dict]] = {
    Op.GET.value: ClientConnection.read_get,
    Op.EXISTS.value: ClientConnection.read_exists,
    Op.CHILDREN.value: ClientConnection.read_children,
    Op.PING.value: ClientConnection.read_ping,  # keepalives: thousands per second with many sessions
}


_handshake_log = RateLimitedLog(log)


class _Handshakes:
    """TLS handshakes in progress on one client port (bounded)."""

    def __init__(self) -> None:
        self.active = 0
        self.failed = 0  # connections dropped before their handshake was done


async def _tls_accept(service: CoordService, stream: trio.SocketStream, ctx, hs: _Handshakes) -> trio.SSLStream | None:
    """Run a client's TLS handshake within the timeout; None (and the
    socket closed) if it does not finish, fails, or too many are running."""
    raw = connection_info(stream)
    if hs.active >= MAX_HANDSHAKES:
        hs.failed += 1
        _handshake_log.warning("busy", "client %s dropped: %d TLS handshakes already in progress",
                               raw.peer, hs.active)
        await trio.aclose_forcefully(stream)
        return None
    timeout = service.server.credentials.handshake_timeout
    tls = trio.SSLStream(stream, ctx, server_side=True)
    hs.active += 1
    why = None
    try:
        with trio.move_on_after(timeout) as scope:
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                cause = e.__cause__
                why = getattr(cause, "reason", None) or getattr(cause, "strerror", None) or type(cause).__name__
        if scope.cancelled_caught:
            why = f"no TLS handshake within {timeout:g}s"
    finally:
        hs.active -= 1
    if why is None:
        return tls
    hs.failed += 1
    _handshake_log.info("handshake", "client %s dropped: %s", raw.peer, why)
    await trio.aclose_forcefully(stream)
    return None


async def serve_clients(service: CoordService, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = service.cfg.client_address
    handshakes = _Handshakes()

    async def handler(stream: trio.SocketStream) -> None:
        ctx = service.server.credentials.client_ssl  # read per connection: SIGHUP swaps it
        conn_stream: trio.abc.Stream = stream
        if ctx is not None:
            tls = await _tls_accept(service, stream, ctx, handshakes)
            if tls is None:
                return
            conn_stream = tls
        conn = ClientConnection(service, conn_stream)
        await conn.run()

    listeners = await trio.open_tcp_listeners(port, host=host or None)
    log.info("server %d: serving clients on %s%s", service.server_id,
             [lst.socket.getsockname()[:2] for lst in listeners],
             " (TLS)" if service.server.credentials.client_ssl is not None else "")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)
