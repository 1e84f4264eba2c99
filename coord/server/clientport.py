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
"""

from __future__ import annotations

import itertools
import logging
from contextlib import asynccontextmanager
import time
import zlib
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from coord.namespace.acl import Auth, digest_id
from coord.namespace.commands import AddAuth, Command, encode, parse_request
from coord.security.denials import note_denied
from coord.security.ratelog import RateLimit, RateLimitedLog
from coord.security.tls import TransportInfo, connection_info
from coord.server.config import ConfigError, MemberAddrs
from coord.server.future import Future
from coord.server.service import CoordService
from coord.server.watches import KINDS, WatchRegistry
from coord.security.tlsstream import TLSSocketStream
from coord.security.tlsstream import handshake as tls_handshake
from coordclient.errors import (
    AuthFailedError,
    BadArgumentsError,
    ConnectionLossError,
    CoordError,
    InvalidPathError,
    LimitExceededError,
    NoAuthError,
    SessionExpiredError,
    UnimplementedError,
)
from coordclient.protocol import MAX_PATH_LENGTH, SESSIONLESS_OPS, SNAPSHOT_CHUNK, Err, Op, validate_path
from coordclient.wire import DEFAULT_MAX_FRAME, FrameError, FramedStream, encode_frames

log = logging.getLogger("coord.clientport")

_DRAINED = 4 << 20  # bytes queued below which bulk output may add more


def _size(msg: dict) -> int:
    """A cheap estimate of a message's encoded size (for the per-connection bound)."""
    r = msg.get("r") if "r" in msg else msg
    if type(r) is dict:
        data = r.get("data")
        if type(data) is bytes:
            return 64 + len(data)
        kids = r.get("children")
        if type(kids) is list:
            return 64 + 24 * len(kids)
    return 64


_REFUSED_LOG = RateLimit(10, 10.0)

MAX_INFLIGHT = 512  # requests being served per connection
OUT_QUEUE = 8192  # responses + events queued per connection before it counts as too slow
CLOSE_GRACE = 5.0  # seconds a closing connection gets to take its last frames
MAX_HANDSHAKES = 256  # TLS handshakes in progress on the port; more connections are closed at once
WRITE_OPS = frozenset({Op.CREATE.value, Op.SET.value, Op.DELETE.value, Op.MULTI.value, Op.SET_ACL.value})

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


class RequestHandler:
    """Serves one client's coord requests, whatever protocol they came in:
    sessions, identities, reads, writes, watches, administration.  Its
    answers and watch events go, in order, to ``_queue`` (coord's ordering
    guarantee: every event with zxid <= Z before any response stamped Z);
    the protocol front end (``ClientConnection`` for coord's own protocol,
    ``zkport.ZkConnection`` for ZooKeeper's) carries them out.  It is also
    the ``Watcher`` its watches deliver to."""

    requires_seq = True  # writes carry the session's sequence number (exactly-once)

    def __init__(self, service: CoordService, transport_info: TransportInfo):
        self.service = service
        self.ns = service.ns
        self.sid = 0
        self._wids = itertools.count(1)
        self.close_reason: str | None = None
        self.limit = service.cfg.max_data_bytes
        # What the transport proved about the client (address; with TLS the
        # verified certificate's subject): the connection's identities
        # (acl.py: ip always, x509 from the certificate), plus digests added
        # with add_auth before a session existed; a session's own digests
        # are replicated.
        self.transport_info = transport_info
        self.peer = transport_info.peer
        self.x509_subject: str | None = transport_info.cert_subject
        self._conn_ids: set[tuple[str, str]] = {("ip", transport_info.address)} if transport_info.address else set()
        self._auth_key: tuple | None = None
        self._auth = Auth()

    _inflight = 0
    _inline_streak = 0
    session_timeout_ms = 0
    _read_scope: trio.CancelScope | None = None  # the reader's wait for the next request (its deadline)
    _finished = False  # the connection has ended: late callbacks drop their results

    def _queue(self, msg: dict) -> None:
        raise NotImplementedError  # pragma: no cover - each front end carries messages its way

    def close(self, reason: str) -> None:
        raise NotImplementedError  # pragma: no cover

    async def _queue_wait(self, msg: dict) -> None:
        """Queue ``msg``, waiting for room (for bulk output such as snapshot chunks)."""
        self._queue(msg)

    async def _dispatch(self, req: Any, nursery: trio.Nursery, sem: trio.Semaphore) -> None:
        """Serve one request: a read inline, a write without a task, the
        rest in a task; at most ``MAX_INFLIGHT`` open at a time."""
        if self._try_inline(req):
            # Let other tasks (heartbeats, other clients) run now and then;
            # a big answer counts for more (_finish_read), so a client asking
            # for a 100k-child listing again and again stalls nobody.
            self._inline_streak += 1
            if self._inline_streak >= 64:
                self._inline_streak = 0
                await trio.sleep(0)
            return
        await sem.acquire()
        self._inflight += 1
        if type(req) is dict and type(req.get("op")) is str and req["op"] in WRITE_OPS:
            writes = self.service.writes
            if writes.full:
                await writes.wait_room()  # push back: stop reading until writes drain
            self._start_write(req, sem)
            return
        nursery.start_soon(self._serve, req, sem)

    def _end_within(self, seconds: float) -> None:
        """End the connection ``seconds`` from now at the latest.  A deadline
        on its cancel scope rather than a task: ``close`` may be called while
        the connection's nursery is already closed to new tasks (its last
        task just ended, ``_finish`` not yet run), and a task started then
        raised into the caller -- the periodic housekeeping that drops
        every client, which took the whole server down."""
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + seconds)

    def _finish(self) -> None:
        """The connection is over: callbacks may still arrive (a shared read
        barrier completing, a watch firing); from now on they only drop
        their results, and the connection's watches go."""
        self._finished = True
        self.service.connections.discard(self)
        self.service.watches.remove_watcher(self)


    def deliver_event(self, wid: int, etype: str, path: str, zxid: int) -> None:
        # No events about a node this connection may not read (acl.py).
        if self.close_reason is None and self.ns.may_read(path, self.auth()):
            self._queue({"ev": "watch", "wid": wid, "type": etype, "path": path, "zxid": zxid})

    # -- identity -----------------------------------------------------------------
    def auth(self) -> Auth:
        """Who this connection's requests come from (cached until it changes)."""
        session_ids = self.ns.session_ids(self.sid) if self.sid else ()
        if self.x509_subject:
            self._conn_ids.add(("x509", self.x509_subject))
        key = (session_ids, len(self._conn_ids))
        if key != self._auth_key:
            ids = frozenset(self._conn_ids) | frozenset(session_ids)
            self._auth = self.service.cfg.identify(ids)
            self._auth_key = key
        return self._auth

    def _require_admin(self, what: str) -> None:
        """Administration needs an admin or superuser once [auth] names any."""
        if self.service.cfg.may_administer(self.auth()):
            return
        raise NoAuthError(f"{what} needs an admin identity (add_auth with a credential in [auth] admins)")

    def _denied(self, op: Any, resp: dict) -> None:
        """Count a refusal for missing permission and log it (rate-limited)."""
        note_denied(self.service.obs, log, op, resp.get("path"), self.auth(), self.peer, f"session {self.sid:#x}")

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
            if not self.service.reaches_leader(self._session_timeout(req)):
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

    def _session_timeout(self, req: dict) -> float | None:
        """The timeout (s) of the session this request is for: this
        connection's, or the one a ``hello`` resumes; None for a new session
        (it is held to the shortest timeout's bound)."""
        if self.sid:
            return self.session_timeout_ms / 1000
        sid = req.get("sid")
        known = self.ns.session(sid) if type(sid) is int and sid > 0 else None
        return known[0] / 1000 if known is not None else None

    def _error_response(self, rid: int | None, req: Any, exc: Exception) -> dict:
        if isinstance(exc, CoordError):
            resp = {"id": rid, "ok": False, "zxid": self.service.applied, "err": exc.code.value,
                    "msg": exc.message, "path": exc.path}
            extra = getattr(exc, "wire_extra", None)
            if extra:
                resp.update(extra)
            if exc.code is Err.NO_AUTH:
                self._denied(req.get("op") if type(req) is dict else None, resp)
            return resp
        shown = {k: ("<redacted>" if k in ("auth", "secret") else v) for k, v in req.items()} \
            if type(req) is dict else req
        log.error("internal error serving %r from %s", shown if len(repr(shown)) < 300 else "...", self.peer,
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
            self._inline_streak += _size(resp) >> 12  # ~1 per 4 KB of answer
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
            data = encode(parse_request(req, sid=self.sid, limit=self.limit, auth=self.auth(),
                                        default_acl=self.service.cfg.default_acl, require_seq=self.requires_seq))
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
                # the write's own zxid, for a client that orders it against events (``delete`` has no stat)
                resp = {"id": rid, "ok": True, "zxid": max(zxid, self.service.applied), "r": {**res["r"], "zxid": res.get("zxid", zxid)}}
            else:
                resp = self._error_response(rid, {"op": op}, _write_error(res))
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
            limit = self.service.cfg.max_sessions
            if self.ns.session_count >= limit:
                raise LimitExceededError(f"this ensemble holds its limit of {limit} sessions")
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
        self.session_timeout_ms = timeout_ms
        self._session_began()
        self.service.touch(sid)
        return {"sid": sid, "secret": secret, "timeout_ms": timeout_ms,
                "server_id": self.service.server_id, "zxid": self.service.applied}

    def _session_began(self) -> None:
        """The client's next request is due within the session's timeout,
        from now, not within the handshake timeout the reader set while the
        hello was being served (a client quiet for longer than that after a
        hello, as one that has just resumed its session and has nothing to
        ask, was dropped although its session's timeout was far off)."""
        scope = self._read_scope
        if scope is not None:
            scope.deadline = max(scope.deadline, trio.current_time() + self.session_timeout_ms / 1000)

    def read_ping(self, req: dict) -> dict:
        return {}

    async def op_ping(self, req: dict) -> dict:
        return {}

    async def op_close(self, req: dict) -> dict:
        await self.service.close_session(self.sid)
        return {}

    async def op_status(self, req: dict) -> dict:
        if self.service.cfg.status_requires_admin:
            self._require_admin("status")
        return self.service.status()

    async def _before_read(self, req: dict) -> None:
        if arg_bool(req, "lin"):
            await self.service.read_barrier()

    def _check_watch_room(self) -> None:
        limit = self.service.cfg.max_watches_per_connection
        if self.service.watches.count_of(self) >= limit:
            raise LimitExceededError(f"this connection holds its limit of {limit} watches")

    def _watch_now(self, path: str, kind: str) -> int:
        self._check_watch_room()
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
        data, stat = self.ns.get(path, self.auth())
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
            kids = [[name, st] for name, st in self.ns.children_with_stats(path, self.auth())]
        else:
            kids = list(self.ns.children(path, self.auth()))
        out = {"children": kids}
        if arg_bool(req, "node_stat"):  # the node's own stat, read with the listing (getChildren2)
            out["stat"] = self.ns.exists(path)
        if watch:
            out["wid"] = self._watch_now(path, "children")
        return out

    def read_descendants(self, req: dict) -> dict:
        return {"count": self.ns.descendant_count(arg_path(req), self.auth())}

    async def op_descendants(self, req: dict) -> dict:
        await self._before_read(req)
        return self.read_descendants(req)

    def read_ephemerals(self, req: dict) -> dict:
        prefix = req.get("prefix", "/")
        if type(prefix) is not str or len(prefix) > MAX_PATH_LENGTH:
            raise _bad("'prefix' must be a string (a path prefix)")
        return {"paths": self.ns.ephemerals(self.sid, prefix)}

    async def op_ephemerals(self, req: dict) -> dict:
        await self._before_read(req)
        return self.read_ephemerals(req)

    def read_get_acl(self, req: dict) -> dict:
        acl, stat = self.ns.get_acl(arg_path(req), self.auth())
        return {"acl": acl, "stat": stat}

    async def op_get_acl(self, req: dict) -> dict:
        await self._before_read(req)
        return self.read_get_acl(req)

    async def op_add_auth(self, req: dict) -> dict:
        """Add an identity: ``digest`` with ``user:password`` (only its digest
        is kept, on the session so it survives reconnects), or ``x509``
        (the verified client certificate).  The password is never logged."""
        scheme, cred = req.get("scheme"), req.get("auth")
        if type(cred) is bytes:  # ZooKeeper's AuthPacket carries bytes
            cred = cred.decode("utf-8", "replace")
        if scheme == "digest":
            if type(cred) is not str:
                raise AuthFailedError("a digest credential is user:password")
            ident = ("digest", digest_id(cred))
            if self.sid:
                cmd = Command("add_auth", AddAuth((ident,)), sid=self.sid)
                zxid, res = await self.service.write(cmd)
                if not res.get("ok"):
                    raise _write_error(res)
            self._conn_ids.add(ident)
        elif scheme == "x509":
            if not self.x509_subject:
                raise AuthFailedError("x509 needs a verified client certificate (a TLS port with client_auth)")
        else:
            raise AuthFailedError(f"unknown authentication scheme {scheme!r}"[:100])
        return self.op_whoami_now()

    def op_whoami_now(self) -> dict:
        a = self.auth()
        return {"ids": sorted([s, i] for s, i in a.ids), "superuser": a.superuser}

    async def op_whoami(self, req: dict) -> dict:
        return self.op_whoami_now()

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
        self._check_watch_room()
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
        self._require_admin("changing the membership")
        def servers(key: str) -> dict[int, dict]:
            raw = req.get(key) or []
            if type(raw) is not list:
                raise _bad(f"{key!r} must be a list of {{id, peer, client, zookeeper}} maps")
            out = {}
            for item in raw:
                if type(item) is not dict:
                    raise _bad(f"{key!r} must be a list of {{id, peer, client, zookeeper}} maps")
                sid = arg_int(item, "id", lo=1)
                try:
                    addrs = MemberAddrs.from_wire({k: item.get(k) for k in ("peer", "client", "zookeeper")}, key)
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
        self._require_admin("moving the leader")
        return await self.service.admin.transfer(arg_int(req, "to", 0, lo=0))

    async def op_snapshot(self, req: dict) -> dict:
        """A consistent snapshot (taken without yielding, at one zxid), sent as
        ``{"ev": "chunk", "id": <request id>, "data": ...}`` frames before the response.
        Admin only; session secrets are left out (they never leave the server
        except to their own session)."""
        self._require_admin("a snapshot")
        if self.service.snapshot_streams.locked():
            raise LimitExceededError("another snapshot is being streamed from this server; retry later")
        async with self.service.snapshot_streams:
            return await self._stream_snapshot(req)

    async def _stream_snapshot(self, req: dict) -> dict:
        zxid = self.service.applied
        data = self.service.ns.snapshot(redact_secrets=True)
        rid = req["id"]
        for off in range(0, len(data), SNAPSHOT_CHUNK):
            await self._queue_wait({"ev": "chunk", "id": rid, "data": data[off:off + SNAPSHOT_CHUNK]})
        return {"zxid": zxid, "size": len(data), "crc32": zlib.crc32(data)}

    async def op_unwatch(self, req: dict) -> dict:
        wid = arg_int(req, "wid", lo=1)
        self.service.watches.remove(self, wid)
        return {}


class ClientConnection(RequestHandler):
    """One connection speaking coord's own protocol (length-prefixed CBOR)."""

    def __init__(self, service: CoordService, stream: trio.abc.Stream, max_frame: int = DEFAULT_MAX_FRAME,
                 *, transport_info: TransportInfo | None = None):
        """``stream``: a socket stream or, with TLS, a ``TLSSocketStream`` whose handshake is done."""
        super().__init__(service, transport_info if transport_info is not None else connection_info(stream))
        self.stream = stream
        self.framed = FramedStream(stream, max_frame, max_items=service.cfg.max_items_per_request)
        self.out_send, self.out_recv = trio.open_memory_channel(OUT_QUEUE)
        self._scope = trio.CancelScope()
        self._queued_bytes = 0  # estimated size of what waits for the writer
        self._drained = trio.Event()

    # -- plumbing ---------------------------------------------------------
    async def run(self) -> None:
        self.service.connections.add(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader(nursery)
                    if self.close_reason is not None:
                        await trio.sleep_forever()  # the writer (or the close grace) ends it, after the last bytes
                    # EOF from the client: finish what is in flight, then stop.
                    with trio.move_on_after(5):
                        while self._inflight:
                            await trio.sleep(0.01)
                    nursery.cancel_scope.cancel()
        finally:
            self._finish()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.stream.aclose()

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
        self._end_within(CLOSE_GRACE)

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
            self._queued_bytes -= sum(map(_size, batch))
            if self._queued_bytes < _DRAINED:
                self._drained.set()
            if self.close_reason is not None and any(m.get("ev") == "closing" for m in batch):
                self._scope.cancel()
                return

    async def _reader(self, nursery: trio.Nursery) -> None:
        sem = trio.Semaphore(MAX_INFLIGHT)
        while self.close_reason is None:
            # A connection must say hello in time, and a session's client
            # speaks at least every session timeout (pings): a request that
            # takes longer to arrive (a byte a second) is not a client's.
            # The wait for the request after a hello starts before the hello
            # is answered (it is served by a task of its own): the hello
            # moves this deadline to the session's timeout (``_session_began``).
            timeout = (self.session_timeout_ms if self.sid else self.service.cfg.handshake_timeout_ms) / 1000
            try:
                with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                    self._read_scope = scope
                    req = await self.framed.receive()
                if scope.cancelled_caught:
                    timeout = (self.session_timeout_ms if self.sid else self.service.cfg.handshake_timeout_ms) / 1000
                    self.close(f"no complete request within {timeout:g} s")
                    await trio.sleep_forever()  # the writer ends the connection
            except trio.EndOfChannel:
                return
            except FrameError as e:
                self.close(f"bad frame: {e}")
                await trio.sleep_forever()  # the writer ends the connection
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            await self._dispatch(req, nursery, sem)

    def _queue(self, msg: dict) -> None:
        if self._finished:
            return
        size = _size(msg)
        if self._queued_bytes + size > self.service.cfg.max_queued_bytes_per_connection:
            self.close(f"client too slow: {self._queued_bytes} bytes of answers wait for it to read them")
            return
        try:
            self.out_send.send_nowait(msg)
        except trio.WouldBlock:
            self.close("client too slow: its outbound queue is full (it is not reading responses or events)")
            return
        self._queued_bytes += size

    async def _queue_wait(self, msg: dict) -> None:
        """Bulk output: queued only once what is queued has mostly gone out."""
        while self._queued_bytes >= _DRAINED and not self._finished:
            self._drained = trio.Event()
            await self._drained.wait()
        self._queue(msg)


HANDLERS: dict[str, Callable[[RequestHandler, dict], Awaitable[dict]] | None] = {
    op.value: getattr(RequestHandler, f"op_{op.value}", None) for op in Op if op is not Op.CHECK
}  # writes (None here) are served by _start_write
INLINE_READS: dict[str, Callable[[RequestHandler, dict], dict]] = {
    Op.GET.value: RequestHandler.read_get,
    Op.GET_ACL.value: RequestHandler.read_get_acl,
    Op.EXISTS.value: RequestHandler.read_exists,
    Op.CHILDREN.value: RequestHandler.read_children,
    Op.DESCENDANTS.value: RequestHandler.read_descendants,
    Op.EPHEMERALS.value: RequestHandler.read_ephemerals,
    Op.PING.value: RequestHandler.read_ping,  # keepalives: thousands per second with many sessions
}


@asynccontextmanager
async def admitted(service: CoordService, stream: trio.SocketStream) -> AsyncIterator[bool]:
    """Count a connection against [limits] max_connections(_per_ip); a
    refused one is closed at once with the reason logged (rate-limited)."""
    try:
        ip = str(stream.socket.getpeername()[0])
    except OSError:
        ip = "?"
    refusal = service.admit_connection(ip)
    if refusal is not None:
        if _REFUSED_LOG.allow():
            log.warning("refused a client connection from %s: %s", ip, refusal)
        with trio.move_on_after(1):
            await stream.aclose()
        yield False
        return
    try:
        yield True
    finally:
        service.release_connection(ip)


_handshake_log = RateLimitedLog(log)


class _Handshakes:
    """TLS handshakes in progress on one client port (bounded)."""

    def __init__(self) -> None:
        self.active = 0
        self.failed = 0  # connections dropped before their handshake was done


async def tls_accept(service: CoordService, stream: trio.SocketStream, ctx,
                     hs: _Handshakes) -> TLSSocketStream | None:
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
    tls = None
    hs.active += 1
    why = None
    try:
        with trio.move_on_after(timeout) as scope:
            try:
                tls = await tls_handshake(stream, ctx, server_side=True)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                cause = e.__cause__
                why = getattr(cause, "reason", None) or getattr(cause, "strerror", None) or type(cause).__name__
        if scope.cancelled_caught:
            why = f"no TLS handshake within {timeout:g}s"
    finally:
        hs.active -= 1
    if why is None and tls is not None:
        return tls
    hs.failed += 1
    _handshake_log.info("handshake", "client %s dropped: %s", raw.peer, why)
    await trio.aclose_forcefully(stream)
    return None


async def accept(service: CoordService, stream: trio.SocketStream, handshakes: _Handshakes,
                 connection: Callable[[CoordService, trio.abc.Stream], Any]) -> None:
    """One accepted client socket on a client port (coord's or ZooKeeper's):
    counted against the limits, TLS when [tls] is set, then served."""
    async with admitted(service, stream) as ok:
        if not ok:
            return
        ctx = service.server.credentials.client_ssl  # read per connection: SIGHUP swaps it
        conn_stream: trio.abc.Stream = stream
        if ctx is not None:
            tls = await tls_accept(service, stream, ctx, handshakes)
            if tls is None:
                return
            conn_stream = tls
        await connection(service, conn_stream).run()


async def serve_clients(service: CoordService, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = service.cfg.client_address
    handshakes = _Handshakes()

    async def handler(stream: trio.SocketStream) -> None:
        await accept(service, stream, handshakes, ClientConnection)

    listeners = await trio.open_tcp_listeners(port, host=host or None)
    log.info("server %d: serving clients on %s%s", service.server_id,
             [lst.socket.getsockname()[:2] for lst in listeners],
             " (TLS)" if service.server.credentials.client_ssl is not None else "")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)
