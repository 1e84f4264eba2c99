"""An in-process fake of the coord client protocol, for SDK tests.

One ``FakeState`` is "the ensemble": the tree, sessions, the change history
and the counters tests assert on.  Several ``FakeServer``s can share it, so
a client can fail over to "another server" and resume its session there.
Servers are reachable through an in-memory network (``FakeCluster.connect``,
no sockets, so Trio's ``MockClock`` autojump works) or on real TCP ports
(``FakeServer.listen_tcp``, ``ThreadedFakeCluster`` for blocking clients).
It is written against AnyIO, so it runs under asyncio and Trio alike, in the
test's own loop.

What it implements (PROTOCOL.md): hello/ping/close, sessions with secrets,
exactly-once writes by (sid, seq) with a bounded result window and waiting
on an in-progress duplicate, create/delete/set/multi/check with stats and
versions, sequential and ephemeral nodes, get/exists/children with one-shot
watches, the ``watch`` op (one-shot kinds and persistent/recursive) with
``from`` replay from the change history and ``resync`` when it was trimmed,
unwatch, status, and the ordering guarantee (events are queued on every
connection when a write applies, before any later response).

Fault hooks: ``FakeServer.drop_connections/stop/start/blackhole/close_after_events``,
``FakeState.expire_session/fail_next/trim_history``, ``delay_apply`` (a
write waits before applying; it still applies if the connection dies) and
``delay_reply`` (the response waits after applying), optional time-based
session expiry (``reap_sessions``).
"""

from __future__ import annotations

import collections
import errno
import math
import os
import random
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import SocketAttribute

from coordclient._compat import sole_exception
from coordclient.client import Client
from coordclient.protocol import DEFAULT_MAX_DATA, Err, parent_of, validate_path
from coordclient.wire import FrameDecoder, FrameError, encode_frame

STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, FrameError, OSError)
OUT_QUEUE = 20_000  # frames queued per connection before "client too slow"
RESULT_WINDOW = 1000  # write results kept per session (PROTOCOL.md: < 1000 in flight)
WRITES = frozenset({"create", "delete", "set", "multi"})
QUIET_OPS = frozenset({"hello", "ping", "close", "status", "unwatch"})  # not hit by fail_next(ops=None)


class FakeError(Exception):
    def __init__(self, code: Err | str, msg: str = "", path: str | None = None, **extra: Any):
        self.code = code.value if isinstance(code, Err) else code
        self.msg = msg or self.code
        self.path = path
        self.extra = extra
        super().__init__(f"{self.code}: {self.msg}")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Node:
    data: bytes
    czxid: int
    ctime: int
    ephemeral_owner: int = 0
    mzxid: int = 0
    pzxid: int = 0
    mtime: int = 0
    version: int = 0
    cversion: int = 0
    children: set[str] = field(default_factory=set)

    def stat(self) -> list[int]:
        return [self.czxid, self.mzxid, self.pzxid, self.ctime, self.mtime, self.version, self.cversion,
                self.ephemeral_owner, len(self.data), len(self.children), 0]

    def copy(self) -> "Node":
        return Node(**{**self.__dict__, "children": set(self.children)})


@dataclass
class Session:
    sid: int
    secret: bytes
    timeout_ms: int
    last_seen: float
    results: dict[int, tuple] = field(default_factory=dict)  # seq -> ("ok", r) | ("err", FakeError)
    inflight: dict[int, anyio.Event] = field(default_factory=dict)
    expired: bool = False


@dataclass
class FWatch:
    kind: str  # data | exists | children | persistent
    path: str
    recursive: bool = False

    @property
    def oneshot(self) -> bool:
        return self.kind != "persistent"

    def matches(self, typ: str, path: str) -> bool:
        if self.kind == "data":
            return path == self.path and typ in ("changed", "deleted")
        if self.kind == "exists":
            return path == self.path and typ in ("created", "changed", "deleted")
        if self.kind == "children":
            return path == self.path and typ in ("children", "deleted")
        if not self.recursive:
            return path == self.path
        return typ != "children" and (path == self.path or path.startswith(self.path.rstrip("/") + "/"))


class FakeState:
    """The shared "ensemble" state, plus counters and fault switches."""

    def __init__(self, *, history_limit: int = 100_000, min_timeout_ms: int = 100, max_timeout_ms: int = 120_000):
        self.nodes: dict[str, Node] = {"/": Node(b"", 0, 0)}
        self.zxid = 0
        self.sessions: dict[int, Session] = {}
        self.history: collections.deque[tuple[int, str, str]] = collections.deque()
        self.history_limit = history_limit
        self.trimmed_upto = 0  # events with zxid <= this may be missing from history
        self.min_timeout_ms = min_timeout_ms
        self.max_timeout_ms = max_timeout_ms
        self.conns: set[FakeConn] = set()
        self.leader = 1
        self._next_sid = 0x1000
        self._next_wid = 0
        # counters for tests
        self.apply_counts: collections.Counter[tuple[int, int]] = collections.Counter()
        self.op_counts: collections.Counter[str] = collections.Counter()
        self.dedup_hits = 0
        self.hellos: list[dict] = []
        self.active = self.max_active = 0
        self.max_inflight_writes = 0
        # faults
        self.delay_apply = 0.0
        self.delay_reply = 0.0
        self._faults: list[list] = []

    # -- fault hooks --------------------------------------------------------

    def fail_next(self, n: int, err: Err | str, ops: set[str] | None = None) -> None:
        """The next ``n`` requests (of ``ops``, default any but session/status
        ops) get error ``err`` without being executed."""
        self._faults.append([n, err.value if isinstance(err, Err) else err, ops])

    def take_fault(self, op: str) -> str | None:
        for fault in self._faults:
            remaining, err, ops = fault
            if (op in ops) if ops is not None else (op not in QUIET_OPS):
                fault[0] -= 1
                if fault[0] <= 0:
                    self._faults.remove(fault)
                return err
        return None

    def trim_history(self) -> None:
        """Forget all change history: resuming watches get ``resync``."""
        self.history.clear()
        self.trimmed_upto = self.zxid

    def expire_session(self, sid: int) -> None:
        """Expire a session now: its ephemerals go, its connections close."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        session.expired = True
        self._delete_ephemerals(sid)
        for conn in list(self.conns):
            if conn.session is session:
                conn.close("session expired")

    async def reap_sessions(self, interval: float = 0.05) -> None:
        """Expire sessions idle for longer than their timeout (run it as a task)."""
        while True:
            now = anyio.current_time()
            for s in list(self.sessions.values()):
                if now - s.last_seen > s.timeout_ms / 1000:
                    self.expire_session(s.sid)
            await anyio.sleep(interval)

    # -- inspection -------------------------------------------------------

    def data(self, path: str) -> bytes | None:
        node = self.nodes.get(path)
        return None if node is None else node.data

    # -- sessions ---------------------------------------------------------

    def hello(self, server: "FakeServer", msg: dict) -> tuple[Session, dict]:
        timeout_ms = msg.get("timeout_ms")
        if not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise FakeError(Err.BAD_ARGUMENTS, "timeout_ms must be a positive int")
        timeout_ms = min(max(timeout_ms, self.min_timeout_ms), self.max_timeout_ms)
        sid = msg.get("sid") or 0
        self.hellos.append({"server": server.server_id, "sid": sid, "last_zxid": msg.get("last_zxid")})
        if sid == 0:
            self._next_sid += 1
            session = Session(self._next_sid, os.urandom(16), timeout_ms, anyio.current_time())
            self.sessions[session.sid] = session
        else:
            session = self.sessions.get(sid)
            if session is None or session.expired:
                raise FakeError(Err.SESSION_EXPIRED, f"session {sid:#x} expired")
            if msg.get("secret") != session.secret:
                raise FakeError(Err.AUTH_FAILED, "wrong session secret")
            session.timeout_ms = timeout_ms
        session.last_seen = anyio.current_time()
        return session, {"sid": session.sid, "secret": session.secret, "timeout_ms": session.timeout_ms,
                         "server_id": server.server_id, "zxid": self.zxid}

    def close_session(self, session: Session) -> None:
        self.sessions.pop(session.sid, None)
        session.expired = True
        self._delete_ephemerals(session.sid)

    def _delete_ephemerals(self, sid: int) -> None:
        paths = [p for p, n in self.nodes.items() if n.ephemeral_owner == sid]
        if not paths:
            return
        zxid, events = self.zxid + 1, []
        for path in paths:
            self._remove(path, zxid, events)
        self._commit(zxid, events)

    # -- writes -------------------------------------------------------------

    async def write(self, session: Session, msg: dict) -> tuple:
        """Apply a write once per (sid, seq); duplicates get the first outcome."""
        seq = msg.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise FakeError(Err.BAD_ARGUMENTS, "a write needs an int seq")
        if seq in session.results:
            self.dedup_hits += 1
            return session.results[seq]
        if seq in session.inflight:
            self.dedup_hits += 1
            await session.inflight[seq].wait()
            if seq not in session.results:
                raise FakeError(Err.SESSION_EXPIRED, "session expired")
            return session.results[seq]
        done = session.inflight[seq] = anyio.Event()
        self.max_inflight_writes = max(self.max_inflight_writes, len(session.inflight))
        try:
            if self.delay_apply:
                await anyio.sleep(self.delay_apply)
            if session.expired:
                raise FakeError(Err.SESSION_EXPIRED, "session expired")
            outcome = self.apply(session, msg)
            self.apply_counts[(session.sid, seq)] += 1
            session.results[seq] = outcome
            while len(session.results) > RESULT_WINDOW:
                del session.results[min(session.results)]
        finally:
            del session.inflight[seq]
            done.set()
        return outcome

    def apply(self, session: Session, msg: dict) -> tuple:
        try:
            zxid, events = self.zxid + 1, []
            if msg.get("op") == "multi":
                result = self._multi(session, msg.get("ops"), zxid, events)
            else:
                result = self._apply_op(session, msg, zxid, events)
            self._commit(zxid, events)
            return ("ok", {**result, "zxid": zxid})  # as the real server: every write says its zxid
        except FakeError as exc:
            return ("err", exc)

    def _multi(self, session: Session, ops: Any, zxid: int, events: list) -> dict:
        if not isinstance(ops, list) or not ops:
            raise FakeError(Err.BAD_ARGUMENTS, "multi needs a non-empty list of ops")
        snapshot = {p: n.copy() for p, n in self.nodes.items()}
        results = []
        for i, op in enumerate(ops):
            try:
                if not isinstance(op, dict):
                    raise FakeError(Err.BAD_ARGUMENTS, "op must be a map")
                if op.get("op") == "check":
                    node = self._node(op)
                    self._check_version(node, op)
                    results.append({})
                elif op.get("op") in ("create", "set", "delete"):
                    results.append(self._apply_op(session, op, zxid, events))
                else:
                    raise FakeError(Err.BAD_ARGUMENTS, f"bad op in multi: {op.get('op')!r}")
            except FakeError as exc:
                self.nodes = snapshot
                codes = [Err.RUNTIME_INCONSISTENCY.value] * len(ops)
                codes[i] = exc.code
                raise FakeError(exc.code, exc.msg, exc.path, index=i, results=codes) from None
        return {"results": results}

    def _apply_op(self, session: Session, op: dict, zxid: int, events: list) -> dict:
        kind = op.get("op")
        if kind == "create":
            return self._create(session, op, zxid, events)
        if kind == "set":
            node = self._node(op)
            self._check_version(node, op)
            node.data = self._data(op)
            node.version += 1
            node.mzxid, node.mtime = zxid, now_ms()
            events.append(("changed", op["path"]))
            return {"stat": node.stat()}
        if kind == "delete":
            path = self._path(op, allow_root=False)
            node = self._node(op)
            self._check_version(node, op)
            if node.children and not op.get("recursive"):
                raise FakeError(Err.NOT_EMPTY, f"{path} has children", path)
            subtree = [p for p in self.nodes if p == path or p.startswith(path + "/")]
            for p in sorted(subtree, key=lambda p: p.count("/"), reverse=True):
                self._remove(p, zxid, events)
            return {}
        raise FakeError(Err.UNIMPLEMENTED, f"unknown op {kind!r}")

    def _create(self, session: Session, op: dict, zxid: int, events: list) -> dict:
        path = self._path(op, allow_root=False)
        data = self._data(op)
        parent = parent_of(path)
        missing, ancestor = [], parent
        while ancestor not in self.nodes:
            if not op.get("parents"):
                raise FakeError(Err.NO_NODE, f"parent {ancestor} does not exist", path)
            missing.append(ancestor)
            ancestor = parent_of(ancestor)
        if self.nodes[ancestor].ephemeral_owner:
            raise FakeError(Err.NO_CHILDREN_FOR_EPHEMERALS, f"{ancestor} is ephemeral", path)
        if not missing:
            name = f"{path}{self.nodes[parent].cversion:010d}" if op.get("sq") else path
            if name in self.nodes:
                raise FakeError(Err.NODE_EXISTS, f"{name} exists", name)
        now = now_ms()
        for p in reversed(missing):
            self._add(p, b"", 0, zxid, now, events)
        if op.get("sq"):
            path = f"{path}{self.nodes[parent].cversion:010d}"
        self._add(path, data, session.sid if op.get("eph") else 0, zxid, now, events)
        return {"path": path, "stat": self.nodes[path].stat()}

    def _add(self, path: str, data: bytes, owner: int, zxid: int, now: int, events: list) -> None:
        self.nodes[path] = Node(data, zxid, now, owner, mzxid=zxid, pzxid=zxid, mtime=now)
        parent = self.nodes[parent_of(path)]
        parent.children.add(path.rsplit("/", 1)[1])
        parent.cversion += 1
        parent.pzxid = zxid
        events += [("created", path), ("children", parent_of(path))]

    def _remove(self, path: str, zxid: int, events: list) -> None:
        del self.nodes[path]
        parent = self.nodes.get(parent_of(path))
        if parent is not None:
            parent.children.discard(path.rsplit("/", 1)[1])
            parent.cversion += 1
            parent.pzxid = zxid
        events += [("deleted", path), ("children", parent_of(path))]

    def _commit(self, zxid: int, events: list[tuple[str, str]]) -> None:
        """Make a write visible: record its events and queue them on every
        connection now, so they precede any response carrying this zxid."""
        self.zxid = zxid
        for typ, path in events:
            self.history.append((zxid, typ, path))
            for conn in list(self.conns):
                conn.notify(zxid, typ, path)
        while len(self.history) > self.history_limit:
            self.trimmed_upto = max(self.trimmed_upto, self.history.popleft()[0])

    # -- argument checks ----------------------------------------------------

    @staticmethod
    def _path(op: dict, *, allow_root: bool = True) -> str:
        path = op.get("path")
        reason = validate_path(path, allow_root=allow_root)
        if reason:
            raise FakeError(Err.INVALID_PATH, reason, path if isinstance(path, str) else None)
        return path

    def _node(self, op: dict) -> Node:
        path = self._path(op)
        node = self.nodes.get(path)
        if node is None:
            raise FakeError(Err.NO_NODE, f"{path} does not exist", path)
        return node

    @staticmethod
    def _data(op: dict) -> bytes:
        data = op.get("data", b"")
        if not isinstance(data, bytes):
            raise FakeError(Err.BAD_ARGUMENTS, "data must be bytes")
        if len(data) > DEFAULT_MAX_DATA:
            raise FakeError(Err.TOO_LARGE, "data too large", op.get("path"))
        return data

    @staticmethod
    def _check_version(node: Node, op: dict) -> None:
        version = op.get("version", -1)
        if not isinstance(version, int):
            raise FakeError(Err.BAD_ARGUMENTS, "version must be an int")
        if version != -1 and version != node.version:
            raise FakeError(Err.BAD_VERSION, f"version is {node.version}, not {version}", op.get("path"))

    # -- reads and watches --------------------------------------------------

    def read(self, conn: "FakeConn", op: str, msg: dict) -> dict:
        if op == "get":
            node = self._node(msg)
            r = {"data": node.data, "stat": node.stat()}
            kind = "data"
        elif op == "exists":
            path = self._path(msg)
            node = self.nodes.get(path)
            r = {"stat": None if node is None else node.stat()}
            kind = "exists"
        elif op == "children":
            node = self._node(msg)
            names = sorted(node.children)
            base = msg["path"].rstrip("/")
            r = {"children": [[n, self.nodes[f"{base}/{n}"].stat()] for n in names] if msg.get("stats") else names}
            kind = "children"
        else:
            raise FakeError(Err.UNIMPLEMENTED, f"unknown op {op!r}")
        if msg.get("watch"):
            r["wid"] = self.register(conn, FWatch(kind, msg["path"]), self.zxid)
        return r

    def register(self, conn: "FakeConn", watch: FWatch, frm: int) -> int:
        """Register ``watch`` on ``conn``, first replaying history after ``frm``."""
        self._next_wid += 1
        wid = self._next_wid
        if frm < self.trimmed_upto:
            conn.send({"ev": "resync", "wid": wid, "zxid": self.zxid})
        else:
            for zxid, typ, path in self.history:
                if zxid > frm and watch.matches(typ, path):
                    conn.send({"ev": "watch", "wid": wid, "type": typ, "path": path, "zxid": zxid})
                    if watch.oneshot:
                        return wid  # fired during replay: nothing left to register
        conn.watches[wid] = watch
        return wid

    def status(self, server: "FakeServer") -> dict:
        ids = sorted({c.server.server_id for c in self.conns} | {server.server_id})
        return {"server_id": server.server_id, "role": "leader" if server.server_id == self.leader else "follower",
                "term": 1, "leader": self.leader, "commit": self.zxid, "applied": self.zxid, "voters": ids,
                "learners": [], "outgoing": [], "members": {i: {"peer": "", "client": ""} for i in ids}}


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory, unbounded byte pipe (see ``memory_stream_pair``)."""

    def __init__(self, send: Any, receive: Any):
        self._send, self._receive = send, receive
        self._buf = b""

    async def send(self, item: bytes) -> None:
        try:
            self._send.send_nowait(bytes(item))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise anyio.BrokenResourceError from None
        await anyio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._buf:
            try:
                self._buf = await self._receive.receive()
            except anyio.ClosedResourceError:
                raise anyio.ClosedResourceError from None
        data, self._buf = self._buf[:max_bytes], self._buf[max_bytes:]
        return data

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await anyio.lowlevel.checkpoint()


def memory_stream_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    a_send, b_recv = anyio.create_memory_object_stream[bytes](math.inf)
    b_send, a_recv = anyio.create_memory_object_stream[bytes](math.inf)
    return MemoryByteStream(a_send, a_recv), MemoryByteStream(b_send, b_recv)


class Framed:
    """Whole CBOR frames over an AnyIO byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream):
        self.stream = stream
        self._decoder = FrameDecoder()
        self._pending: collections.deque = collections.deque()

    async def send(self, obj: Any) -> None:
        await self.stream.send(encode_frame(obj))

    async def receive(self) -> Any:
        while not self._pending:
            if self._decoder.error is not None:
                raise self._decoder.error
            self._pending.extend(self._decoder.feed(await self.stream.receive(256 << 10)))
        return self._pending.popleft()


class FakeConn:
    """The server end of one client connection."""

    def __init__(self, server: "FakeServer", stream: anyio.abc.ByteStream):
        self.server = server
        self.state = server.state
        self.framed = Framed(stream)
        self.out_send, self.out_recv = anyio.create_memory_object_stream[dict](OUT_QUEUE)
        self.session: Session | None = None
        self.watches: dict[int, FWatch] = {}
        self.scope = anyio.CancelScope()
        self.alive = True

    async def run(self) -> None:
        self.state.conns.add(self)
        self.server.conns.add(self)
        try:
            with self.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer)
                    await self._reader()
                    tg.cancel_scope.cancel()
        finally:
            self._detach()
            self.out_send.close()
            self.out_recv.close()
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.framed.stream)

    def _detach(self) -> None:
        self.alive = False
        self.state.conns.discard(self)
        self.server.conns.discard(self)
        self.watches.clear()

    def drop(self) -> None:
        """Cut the connection abruptly (in-flight responses are lost)."""
        self._detach()
        self.scope.cancel()

    def close(self, reason: str | None = None) -> None:
        """Close after flushing what is queued (plus a ``closing`` event)."""
        if not self.alive:
            return
        if reason:
            try:
                self.out_send.send_nowait({"ev": "closing", "reason": reason})
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
        self._detach()
        self.out_send.close()

    def send(self, frame: dict) -> None:
        if not self.alive or self.server.blackhole:
            return
        try:
            self.out_send.send_nowait(frame)
        except anyio.WouldBlock:
            self.close("client too slow")
            return
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        if frame.get("ev") == "watch" and self.server.close_after_events is not None:
            self.server.close_after_events -= 1
            if self.server.close_after_events <= 0:
                self.server.close_after_events = None
                self.close()  # the client gets exactly the events queued so far, then EOF

    def reply(self, rid: Any, outcome: tuple) -> None:
        if outcome[0] == "ok":
            self.send({"id": rid, "ok": True, "zxid": self.state.zxid, "r": outcome[1]})
        else:
            exc: FakeError = outcome[1]
            self.send({"id": rid, "ok": False, "zxid": self.state.zxid, "err": exc.code, "msg": exc.msg,
                       "path": exc.path, **exc.extra})

    def notify(self, zxid: int, typ: str, path: str) -> None:
        for wid, watch in list(self.watches.items()):
            if watch.matches(typ, path):
                self.send({"ev": "watch", "wid": wid, "type": typ, "path": path, "zxid": zxid})
                if watch.oneshot:
                    del self.watches[wid]

    async def _writer(self) -> None:
        try:
            async for frame in self.out_recv:
                await self.framed.send(frame)
        except STREAM_ERRORS:
            pass
        self.scope.cancel()

    async def _reader(self) -> None:
        try:
            while True:
                msg = await self.framed.receive()
                if not self.alive:
                    return
                if self.server.blackhole:
                    continue
                if not isinstance(msg, dict):
                    self.reply(None, ("err", FakeError(Err.BAD_ARGUMENTS, "frame is not a map")))
                elif msg.get("op") == "hello":
                    self._hello(msg)  # inline: nothing may overtake the session's start
                else:
                    self.server.tg.start_soon(self.server.handle, self, msg)
        except STREAM_ERRORS:
            pass

    def _hello(self, msg: dict) -> None:
        try:
            err = self.state.take_fault("hello")
            if err is not None:
                raise FakeError(err, "injected fault")
            self.session, result = self.state.hello(self.server, msg)
            self.reply(msg.get("id"), ("ok", result))
        except FakeError as exc:
            self.reply(msg.get("id"), ("err", exc))


class FakeServer:
    """One server of the fake ensemble (all share ``state``)."""

    def __init__(self, state: FakeState, server_id: int, tg: anyio.abc.TaskGroup):
        self.state = state
        self.server_id = server_id
        self.tg = tg
        self.conns: set[FakeConn] = set()
        self.listening = True
        self.blackhole = False  # accept and read, never answer: a hung server
        self.close_after_events: int | None = None  # close a connection after sending this many more events
        self.host = f"fake{server_id}"
        self.port = server_id
        self._tcp_scope: anyio.CancelScope | None = None
        self._tcp_closed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<FakeServer {self.server_id}>"

    # -- faults -------------------------------------------------------------

    def drop_connections(self) -> None:
        for conn in list(self.conns):
            conn.drop()

    def stop(self) -> None:
        """Refuse new connections and drop the open ones (a crashed server)."""
        self.listening = False
        if self._tcp_scope is not None:
            self._tcp_scope.cancel()
        self.drop_connections()

    async def start(self) -> None:
        if self._tcp_scope is not None:
            assert self._tcp_closed is not None
            await self._tcp_closed.wait()
            await self.listen_tcp(self.host, self.port)
        self.listening = True

    # -- transports ---------------------------------------------------------

    async def connect(self) -> anyio.abc.ByteStream:
        """An in-memory connection (the client's end)."""
        if not self.listening:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{self.host}:{self.port} refused")
        client_end, server_end = memory_stream_pair()
        self.tg.start_soon(self.serve, server_end)
        return client_end

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
        self.host, self.port = host, listener.extra(SocketAttribute.local_port)
        self._tcp_scope = anyio.CancelScope()
        self._tcp_closed = anyio.Event()
        self.tg.start_soon(self._accept, listener, self._tcp_scope, self._tcp_closed)
        self.listening = True
        return self.port

    async def _accept(self, listener: Any, scope: anyio.CancelScope, closed: anyio.Event) -> None:
        try:
            with scope:
                await listener.serve(self.serve, task_group=self.tg)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(listener)
            closed.set()

    async def serve(self, stream: anyio.abc.ByteStream) -> None:
        await FakeConn(self, stream).run()

    # -- requests -------------------------------------------------------------

    async def handle(self, conn: FakeConn, msg: dict) -> None:
        """Run one request (in the server's nursery: a write still applies
        when its connection dies, as it would once proposed to Raft)."""
        st = self.state
        rid, op = msg.get("id"), msg.get("op")
        st.op_counts[op] += 1
        st.active += 1
        st.max_active = max(st.max_active, st.active)
        try:
            if not isinstance(rid, int) or isinstance(rid, bool):
                raise FakeError(Err.BAD_ARGUMENTS, "id must be an int")
            if op == "status":
                conn.reply(rid, ("ok", st.status(self)))
                return
            session = conn.session
            if session is None or session.expired:
                raise FakeError(Err.SESSION_EXPIRED, "no session")
            session.last_seen = anyio.current_time()
            err = st.take_fault(op)
            if err is not None:
                raise FakeError(err, "injected fault")
            if op in WRITES:
                outcome = await st.write(session, msg)
                if st.delay_reply:
                    await anyio.sleep(st.delay_reply)
                conn.reply(rid, outcome)
            elif op == "ping" or op == "sync":
                conn.reply(rid, ("ok", {}))
            elif op == "close":
                st.close_session(session)
                conn.reply(rid, ("ok", {}))
                conn.close()
            elif op == "watch":
                conn.reply(rid, ("ok", {"wid": self._watch(conn, msg)}))
            elif op == "unwatch":
                conn.watches.pop(msg.get("wid"), None)
                conn.reply(rid, ("ok", {}))
            elif op in ("get", "exists", "children"):
                conn.reply(rid, ("ok", st.read(conn, op, msg)))
            else:
                raise FakeError(Err.UNIMPLEMENTED, f"unknown op {op!r}")
        except FakeError as exc:
            conn.reply(rid if isinstance(rid, int) else None, ("err", exc))
        finally:
            st.active -= 1

    def _watch(self, conn: FakeConn, msg: dict) -> int:
        kind = msg.get("kind")
        if kind not in ("data", "exists", "children", "persistent"):
            raise FakeError(Err.BAD_ARGUMENTS, f"bad watch kind {kind!r}")
        path = self.state._path(msg)
        frm = msg.get("from", self.state.zxid)
        if not isinstance(frm, int):
            raise FakeError(Err.BAD_ARGUMENTS, "from must be an int")
        return self.state.register(conn, FWatch(kind, path, bool(msg.get("recursive"))), frm)


class FakeCluster:
    """``n`` fake servers sharing one state, on an in-memory network.

    ``endpoints`` names them "fake1:1,fake2:2,..." (port = server id) and
    ``connect`` is the matching ``connect_stream`` for ``Client``.
    """

    def __init__(self, state: FakeState, servers: list[FakeServer]):
        self.state = state
        self.servers = servers

    @property
    def endpoints(self) -> str:
        return ",".join(f"{s.host}:{s.port}" for s in self.servers)

    def server(self, server_id: int) -> FakeServer:
        return next(s for s in self.servers if s.server_id == server_id)

    async def connect(self, host: str, port: int) -> anyio.abc.ByteStream:
        for server in self.servers:
            if (server.host, server.port) == (host, port):
                return await server.connect()
        raise OSError(errno.EHOSTUNREACH, f"no fake server at {host}:{port}")

    def client(self, *, seed: int = 0, servers: list[int] | None = None, **kwargs: Any) -> Client:
        """A Client of this cluster (of only ``servers``, if given)."""
        kwargs.setdefault("session_timeout", 3.0)
        chosen = self.servers if servers is None else [self.server(i) for i in servers]
        endpoints = ",".join(f"{s.host}:{s.port}" for s in chosen)
        return Client(endpoints, connect_stream=self.connect, rng=random.Random(seed), **kwargs)


@asynccontextmanager
async def open_cluster(n: int = 3, **state_kwargs: Any) -> AsyncIterator[FakeCluster]:
    state = FakeState(**state_kwargs)
    try:
        async with anyio.create_task_group() as tg:
            cluster = FakeCluster(state, [FakeServer(state, i, tg) for i in range(1, n + 1)])
            try:
                yield cluster
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the test's own failure, not a group of one
        inner = sole_exception(group)
        if inner is None:
            raise
        group.__context__ = None
        raise inner from None


class ThreadedFakeCluster:
    """Fake servers on real loopback TCP ports, run by an event loop in a
    background thread (an AnyIO blocking portal): for blocking clients
    (SyncClient, coordctl).

    ``call(fn, *args)`` runs ``fn`` in the loop thread (to inspect or change
    the state safely) and returns its result.
    """

    def __init__(self, n: int = 1, *, backend: str = "trio", **state_kwargs: Any):
        self.n = n
        self.backend = backend
        self.state = FakeState(**state_kwargs)
        self.servers: list[FakeServer] = []
        self._portal_cm: Any = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._stop: anyio.Event | None = None
        self._done: Any = None

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._portal is not None
        return self._portal.call(fn, *args)

    def __enter__(self) -> "ThreadedFakeCluster":
        self._portal_cm = anyio.from_thread.start_blocking_portal(self.backend, name="fake-coord")
        self._portal = self._portal_cm.__enter__()
        ready = threading.Event()
        self._done = self._portal.start_task_soon(self._main, ready)
        if not ready.wait(10):
            raise RuntimeError("fake servers did not start")
        if self._done.done():
            self._done.result()  # raises what went wrong
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                for i in range(1, self.n + 1):
                    server = FakeServer(self.state, i, tg)
                    await server.listen_tcp()
                    self.servers.append(server)
                ready.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            ready.set()

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._portal is not None and self._stop is not None:
                self._portal.call(self._stop.set)
            if self._done is not None:
                self._done.result(10)
        finally:
            self._portal_cm.__exit__(None, None, None)
