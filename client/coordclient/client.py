"""The async (Trio) client: session, failover, retries and watches.

``connection.py`` handles one TCP connection; this module keeps a session
alive across many of them:

* One background *supervisor* waits for the current connection to die, then
  reconnects (endpoints round robin from a shuffled list, jittered backoff
  between rounds) and resumes the session with ``hello(sid, secret,
  last_zxid)`` until the session timeout runs out locally.
* Every call runs in a retry loop bounded by its own deadline
  (``request_timeout``).  A write takes its session sequence number once and
  keeps it for every retry, so the ensemble applies it exactly once whatever
  happened to the connection.
* Watches are client-side records that are re-registered on each new
  connection with ``from`` = the last zxid the old connection delivered; the
  protocol then replays exactly the events that were missed.

Everything waits on something bounded: calls on their deadline, reconnects
on the session timeout, watch buffers on a fixed size.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import random
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence, Union

import trio

from coordclient._compat import sole_exception

from coordclient.connection import Connection, ConnectionClosed
from coordclient.errors import (
    ConnectionLossError,
    CoordError,
    InvalidPathError,
    MultiError,
    OperationTimeoutError,
    SessionExpiredError,
    TooLargeError,
)
from coordclient.protocol import DEFAULT_MAX_DATA, STAT_FIELDS, Err, Op, validate_path
from coordclient.wire import DEFAULT_MAX_FRAME

__all__ = [
    "Client",
    "ConnState",
    "MAX_INFLIGHT_WRITES",
    "RESYNC",
    "Stat",
    "WatchEvent",
    "WatchOverflowError",
    "WatchStream",
    "ops",
    "parse_endpoints",
]

log = logging.getLogger(__name__)

# Writes whose seq may be outstanding at once: the server keeps results for
# fewer than 1000 recent seqs per session, so the whole window must fit.
MAX_INFLIGHT_WRITES = 512
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
DEFAULT_WATCH_BUFFER = 1024
RESYNC = "resync"

_WRITES = frozenset(op.value for op in (Op.CREATE, Op.DELETE, Op.SET, Op.MULTI))
_RETRYABLE = frozenset(e.value for e in (Err.CONNECTION_LOSS, Err.OPERATION_TIMEOUT, Err.NOT_LEADER))
_FATAL_HELLO = frozenset(e.value for e in (Err.SESSION_EXPIRED, Err.AUTH_FAILED))

WatchCallback = Callable[["WatchEvent"], Union[None, Awaitable[None]]]
Endpoints = Union[str, Iterable[Union[str, tuple[str, int]]]]


class ConnState(enum.Enum):
    """Connection/session state, as reported to listeners.

    CONNECTED and RECONNECTED both mean "requests are being served";
    RECONNECTED says the session survived a connection loss (watches were
    re-registered).  SUSPENDED: no connection, the session may still live.
    EXPIRED and CLOSED are final.  A client that was never opened is CLOSED.
    """

    CONNECTED = "connected"
    SUSPENDED = "suspended"
    RECONNECTED = "reconnected"
    EXPIRED = "expired"
    CLOSED = "closed"


class WatchOverflowError(CoordError):
    """A persistent watch's buffer filled up because the application did not
    consume it; the watch was dropped rather than buffered without bound."""

    code = Err.SYSTEM_ERROR


@dataclass(frozen=True, slots=True)
class Stat:
    """A node's metadata (ZooKeeper's Stat); times in ms since the epoch."""

    czxid: int
    mzxid: int
    pzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    aversion: int = 0  # ACL changes (set_acl) of the node

    @classmethod
    def from_wire(cls, raw: Sequence[int]) -> "Stat":
        if isinstance(raw, (list, tuple)) and len(raw) == len(STAT_FIELDS) - 1:
            raw = [*raw, 0]  # a server from before ACLs: no aversion
        if not isinstance(raw, (list, tuple)) or len(raw) != len(STAT_FIELDS):
            raise CoordError(f"malformed stat from server: {raw!r}")
        return cls(*raw)


assert tuple(f for f in Stat.__dataclass_fields__) == STAT_FIELDS


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A watch notification.

    ``type`` is a str: an ``EventType`` value ("created", "deleted",
    "changed", "children"; ``EventType`` members compare equal to them) or
    ``RESYNC`` ("resync"): the server could not
    replay what happened while this client was disconnected, so the
    application must re-read the state it cares about; ``zxid`` is then the
    point from which events are complete again.
    """

    type: str
    path: str
    zxid: int


def parse_endpoints(endpoints: Endpoints) -> list[tuple[str, int]]:
    """Parse "h1:p1,h2:p2" (or a list of "h:p" / (h, p)); "[::1]:2181" for IPv6."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, tuple):
            host, port = item
        else:
            item = item.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host:
                raise ValueError(f"endpoint {item!r} is not host:port")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"endpoint {item!r}: port is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"endpoint {item!r}: port out of range")
        out.append((str(host), port))
    if not out:
        raise ValueError("no endpoints given")
    return out


# -- argument checks and multi builders ------------------------------------


def _check_path(path: object, *, allow_root: bool = True) -> str:
    reason = validate_path(path, allow_root=allow_root)
    if reason is not None:
        raise InvalidPathError(reason, path=path if isinstance(path, str) else None)
    return path  # type: ignore[return-value]


def _check_data(data: object) -> bytes:
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > DEFAULT_MAX_DATA:
        raise TooLargeError(f"{len(data)} bytes of data; the limit is {DEFAULT_MAX_DATA}")
    return data


def _check_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < -1:
        raise ValueError(f"version must be an int >= -1, not {version!r}")
    return version


class ops:  # noqa: N801 - a namespace, used as ``coordclient.ops.create(...)``
    """Builders for the operations of ``Client.multi``.

    Each returns the operation's wire form (a dict, to be treated as
    opaque); arguments are checked here, so a bad path raises before
    anything is sent::

        await client.multi([
            ops.check("/cfg", version=3),
            ops.set("/cfg", b"new", version=3),
            ops.create("/cfg/log-", b"", sequential=True),
            ops.delete("/cfg/old"),
        ])
    """

    @staticmethod
    def create(path: str, data: bytes = b"", *, ephemeral: bool = False, sequential: bool = False,
               make_parents: bool = False) -> dict:
        return {"op": "create", "path": _check_path(path, allow_root=False), "data": _check_data(data),
                "eph": bool(ephemeral), "sq": bool(sequential), "parents": bool(make_parents)}

    @staticmethod
    def set(path: str, data: bytes, *, version: int = -1) -> dict:
        return {"op": "set", "path": _check_path(path), "data": _check_data(data),
                "version": _check_version(version)}

    @staticmethod
    def delete(path: str, *, version: int = -1, recursive: bool = False) -> dict:
        return {"op": "delete", "path": _check_path(path, allow_root=False),
                "version": _check_version(version), "recursive": bool(recursive)}

    @staticmethod
    def check(path: str, version: int) -> dict:
        return {"op": "check", "path": _check_path(path), "version": _check_version(version)}


def _error_from(frame: dict) -> CoordError:
    """The exception for an error response (a MultiError when it names a failing op)."""
    code = str(frame.get("err") or Err.SYSTEM_ERROR.value)
    message = str(frame.get("msg") or "")
    path = frame.get("path")
    if isinstance(frame.get("index"), int):
        cause = CoordError.from_code(code, message, path=path)
        results = [_op_error(r) for r in frame.get("results") or []]
        return MultiError(message, path=path, index=frame["index"], cause=cause, results=results)
    return CoordError.from_code(code, message, path=path)


def _op_error(result: object) -> CoordError | None:
    """One op's outcome in a failed multi: an error code, or a map with
    "err"/"msg"/"path" (both forms are accepted); None if it had none."""
    if isinstance(result, dict):
        if not result.get("err"):
            return None
        return CoordError.from_code(str(result["err"]), str(result.get("msg") or ""), path=result.get("path"))
    if result in (None, "ok", "Ok"):
        return None
    return CoordError.from_code(str(result))


# -- watches ---------------------------------------------------------------


class _Watch:
    """The client's record of one server-side watch.

    ``conn``/``wid`` say where it is registered now (None while it is being
    (re-)registered).  ``from_zxid`` is where the current registration
    started: events at or below it were delivered before, so they are
    dropped if a server ever repeats one.

    One zxid can carry several events (a multi, a recursive delete), and a
    connection can die between two of them.  So the watch remembers the
    zxid of its last event and how many it got at that zxid; ``resume``
    then restarts just before that zxid and skips the ones already seen.
    """

    def __init__(self, client: "Client", kind: str, path: str, recursive: bool = False):
        self.client = client
        self.kind = kind
        self.path = path
        self.recursive = recursive
        self.from_zxid = 0
        self.conn: Connection | None = None
        self.wid: int | None = None
        self.done = False
        self._last_zxid = 0  # zxid of the last event delivered
        self._at_last = 0  # events delivered with that zxid
        self._skip = 0  # events at _last_zxid to drop after a resume

    def resume(self, conn: Connection) -> None:
        """``conn`` (where this watch was registered) is gone: choose the
        ``from`` for the next registration."""
        resume = max(self.from_zxid, conn.max_zxid)
        if self._last_zxid > resume:
            resume, self._skip = self._last_zxid - 1, self._at_last
        else:
            self._skip = 0
        self.from_zxid = resume
        self.conn = self.wid = None

    def register_msg(self) -> dict:
        return {"op": "watch", "path": self.path, "kind": self.kind, "recursive": self.recursive,
                "from": self.from_zxid}

    def claim(self, conn: Connection, wid: int) -> "_Watch | None":
        """Called by the connection's reader when the registration's response
        arrives (before any later frame); None has the watch removed."""
        if self.done:
            return None
        self.conn, self.wid = conn, wid
        return self

    def event_from(self, frame: dict) -> WatchEvent | None:
        """The event to deliver for ``frame``, or None for a repeat."""
        zxid = frame.get("zxid") or 0
        if frame.get("ev") == RESYNC:
            # Live from zxid on: nothing at or below it will come again.
            self.from_zxid = max(self.from_zxid, zxid)
            self._last_zxid = self._at_last = self._skip = 0
            return WatchEvent(RESYNC, self.path, zxid)
        if zxid <= self.from_zxid:
            return None  # delivered through an earlier registration
        if zxid == self._last_zxid and self._skip:
            self._skip -= 1
            return None
        if zxid == self._last_zxid:
            self._at_last += 1
        else:
            self._last_zxid, self._at_last, self._skip = zxid, 1, 0
        return WatchEvent(str(frame.get("type")), str(frame.get("path", self.path)), zxid)

    def finish(self, error: CoordError | None = None) -> None:
        self.done = True
        self.client._watches.discard(self)


class _OneShot(_Watch):
    """A watch set by a read (``watch=callback``): fires once, then is gone.

    A ``resync`` also fires it (the application must re-read anyway), and
    the server-side registration, which a resync leaves in place, is removed.
    """

    def __init__(self, client: "Client", kind: str, path: str, callback: WatchCallback):
        super().__init__(client, kind, path)
        self.callback = callback

    def on_event(self, frame: dict) -> bool:
        if self.done:
            return True
        event = self.event_from(frame)
        if event is None:
            return False
        self.finish()
        if event.type == RESYNC and self.conn is not None and self.wid is not None:
            self.conn.send_unwatch(self.wid)
        self.client._spawn_callback(self.callback, event)
        return True

    def finish(self, error: CoordError | None = None) -> None:
        if error is not None and not self.done:
            log.debug("one-shot watch on %s dropped: %s", self.path, error)
        super().finish(error)


class _Persistent(_Watch):
    """The state behind a ``WatchStream``: a bounded buffer of events."""

    def __init__(self, client: "Client", path: str, recursive: bool, buffer: int):
        super().__init__(client, "persistent", path, recursive)
        self.send, self.receive = trio.open_memory_channel[WatchEvent](buffer)
        self.error: CoordError | None = None

    def on_event(self, frame: dict) -> bool:
        if self.done:
            return True
        event = self.event_from(frame)
        if event is None:
            return False
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            if self.conn is not None and self.wid is not None:
                self.conn.send_unwatch(self.wid)
            self.finish(WatchOverflowError(
                f"watch on {self.path} dropped: {self.send.statistics().max_buffer_size} events unconsumed",
                path=self.path))
            return True
        return False

    def finish(self, error: CoordError | None = None) -> None:
        if not self.done and error is not None:
            self.error = error
        super().finish(error)
        self.send.close()


class WatchStream:
    """A persistent watch: an async context manager and async iterator.

    ::

        async with client.watch("/config", recursive=True) as events:
            async for ev in events:
                if ev.type == coordclient.RESYNC:
                    ...  # events were lost for good: re-read everything
                else:
                    ...  # ev.type is created/changed/deleted(/children)

    By default the stream starts "now": with the first change committed
    after the watch was opened (the client syncs first to find that point).
    With ``start_zxid=Z`` it starts with the first change after zxid ``Z``:
    read a node, then watch from ``client.last_zxid`` and no change in
    between is missed.  If the server's history no longer reaches back to
    ``Z`` the first event is a resync.  Events arrive in zxid order, across
    reconnects, with no gap and no duplicate.

    Iteration ends when the stream is closed or the client closes; it
    raises ``SessionExpiredError`` when the session expires and
    ``WatchOverflowError`` if more than ``buffer`` events were left unread
    (in both cases after yielding what was buffered).
    """

    def __init__(self, client: "Client", path: str, recursive: bool, buffer: int, start_zxid: int | None):
        self._w = _Persistent(client, path, recursive, buffer)
        self._start_zxid = start_zxid
        self._started = False

    @property
    def path(self) -> str:
        return self._w.path

    @property
    def recursive(self) -> bool:
        return self._w.recursive

    async def start(self) -> "WatchStream":
        """Register the watch (``async with`` does this; so does iterating
        without it, in which case ``aclose()`` it when done)."""
        if not self._started:
            self._started = True
            await self._w.client._start_persistent(self._w, self._start_zxid)
        return self

    async def aclose(self) -> None:
        """Unregister the watch; pending iteration ends."""
        await self._w.client._stop_persistent(self._w)

    async def __aenter__(self) -> "WatchStream":
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> "WatchStream":
        return self

    async def __anext__(self) -> WatchEvent:
        if not self._started:
            await self.start()
        try:
            return await self._w.receive.receive()
        except trio.EndOfChannel:
            if self._w.error is not None:
                raise self._w.error from None
            raise StopAsyncIteration from None


# -- the client ------------------------------------------------------------


class Client:
    """An async coord client holding one session.

    ::

        async with Client("h1:2181,h2:2181,h3:2181", session_timeout=10) as c:
            await c.create("/app/lock-", b"", ephemeral=True, sequential=True)

    ``session_timeout`` is requested from the server (which may clamp it;
    ``c.session_timeout`` is the negotiated value).  ``connect_timeout``
    bounds one connection attempt (TCP connect + hello; default a third of
    the session timeout); opening gives up after a whole session timeout.
    ``request_timeout`` (default twice the session timeout) bounds each call,
    retries included.  ``rng`` (a ``random.Random``) drives endpoint order
    and backoff jitter, for reproducible tests.  ``connect_stream(host,
    port)`` returns a ``trio.abc.Stream`` (default ``trio.open_tcp_stream``;
    swap it for TLS or an in-memory test network).

    Calls may be made concurrently from many tasks; they are pipelined on
    the connection.  A call that runs out of time raises
    ``ConnectionLossError`` (or ``OperationTimeoutError``); a write that did
    so may or may not have been applied, exactly as in ZooKeeper.
    """

    def __init__(self, endpoints: Endpoints, *, session_timeout: float = 10.0,
                 connect_timeout: float | None = None, request_timeout: float | None = None,
                 rng: random.Random | None = None,
                 connect_stream: Callable[[str, int], Awaitable[trio.abc.Stream]] | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME):
        if not session_timeout > 0:
            raise ValueError("session_timeout must be positive")
        self._rng = rng if rng is not None else random.Random()
        self._endpoints = parse_endpoints(endpoints)
        self._rng.shuffle(self._endpoints)
        self._next_endpoint = 0
        self._requested_timeout = float(session_timeout)
        self.session_timeout = float(session_timeout)
        self.connect_timeout = float(connect_timeout) if connect_timeout else max(session_timeout / 3, 0.1)
        self.request_timeout = float(request_timeout) if request_timeout else 2 * float(session_timeout)
        self._connect_stream = connect_stream or trio.open_tcp_stream
        self._max_frame = max_frame

        self.session_id = 0
        self._secret: bytes | None = None
        self.last_zxid = 0
        self.server_id: int | None = None

        self._state = ConnState.CLOSED
        self._listeners: list[Callable[[ConnState], Any]] = []
        self._state_changed = trio.Event()
        self._conn: Connection | None = None
        self._conn_changed = trio.Event()
        self._closing = False
        self._nursery: trio.Nursery | None = None
        self._exit_stack: AsyncExitStack | None = None

        self._seq = 0
        self._inflight: dict[int, None] = {}  # seqs in flight, oldest first
        self._slot_freed = trio.Event()
        self._watches: set[_Watch] = set()
        self._orphans: list[_Watch] = []  # bound to a lost connection, to re-register

    # -- recipes (coordclient.recipes; see docs/recipes.md) ---------------------
    def lock(self, path: str, **kw: Any) -> Any:
        """An exclusive lock with fencing tokens: ``async with c.lock(path) as lock:``."""
        from coordclient.recipes import Lock
        return Lock(self, path, **kw)

    def rwlock(self, path: str, **kw: Any) -> Any:
        """A read/write lock: ``.read_lock`` and ``.write_lock``."""
        from coordclient.recipes import ReadWriteLock
        return ReadWriteLock(self, path, **kw)

    def semaphore(self, path: str, permits: int, **kw: Any) -> Any:
        """A counting semaphore with ``permits`` holders at most."""
        from coordclient.recipes import Semaphore
        return Semaphore(self, path, permits, **kw)

    def election(self, path: str, identity: str, **kw: Any) -> Any:
        """Leader election: ``async with c.election(path, me).campaign() as term:``."""
        from coordclient.recipes import Election
        return Election(self, path, identity, **kw)

    def __repr__(self) -> str:
        return f"<Client sid={self.session_id:#x} {self._state.value} server={self.server_id}>"

    # -- state ------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state in (ConnState.CONNECTED, ConnState.RECONNECTED)

    def add_listener(self, fn: Callable[[ConnState], Any]) -> None:
        """Call ``fn(new_state)`` on every state change, synchronously from
        the task that made the change: it must be quick and must not block."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ConnState], Any]) -> None:
        self._listeners.remove(fn)

    async def wait_state(self, *states: ConnState, timeout: float | None = None) -> ConnState:
        """Wait until the state is one of ``states`` (default: connected or
        reconnected) and return it; ``trio.TooSlowError`` after ``timeout``."""
        wanted = states or (ConnState.CONNECTED, ConnState.RECONNECTED)
        with trio.fail_after(math.inf if timeout is None else timeout):
            while self._state not in wanted:
                await self._state_changed.wait()
        return self._state

    def _set_state(self, state: ConnState) -> None:
        if state is self._state:
            return
        self._state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        for fn in list(self._listeners):
            try:
                fn(state)
            except Exception:  # noqa: BLE001 - a listener bug must not break the client
                log.exception("state listener %r failed", fn)

    def _conn_change(self) -> None:
        self._conn_changed.set()
        self._conn_changed = trio.Event()

    def _slots_change(self) -> None:
        self._slot_freed.set()
        self._slot_freed = trio.Event()

    def _on_zxid(self, zxid: int) -> None:
        if zxid > self.last_zxid:
            self.last_zxid = zxid

    # -- open / close -----------------------------------------------------

    async def __aenter__(self) -> "Client":
        if self._exit_stack is not None or self._closing:
            raise RuntimeError("a Client can be opened only once")
        self._exit_stack = AsyncExitStack()
        self._nursery = await self._exit_stack.enter_async_context(trio.open_nursery())
        try:
            budget = max(self.session_timeout, self.connect_timeout)
            conn, result = await self._establish(trio.current_time() + budget)
            self._install(conn, result, ConnState.CONNECTED)
            self._nursery.start_soon(self._supervise)
        except BaseException:
            self._finish()
            stack, self._exit_stack = self._exit_stack, None
            await stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        try:
            await self._shutdown()
        finally:
            try:
                suppress = await stack.__aexit__(*exc_info)
            except BaseExceptionGroup as group:
                # New Trio wraps the body's own exception in a group on its way
                # through our nursery: give the caller back what it raised.
                inner = sole_exception(group)
                if inner is None:
                    raise
                raise inner from None
        return suppress

    async def _shutdown(self) -> None:
        """Close the session (unless it is gone already), then stop everything."""
        if self._closing:
            return
        self._closing = True  # new calls fail; the supervisor will not reconnect
        conn = self._conn
        try:
            if self.connected and conn is not None and not conn.closed:
                with trio.move_on_after(min(self.session_timeout, 5.0)):
                    try:
                        await conn.request({"op": Op.CLOSE.value})
                    except ConnectionClosed:
                        pass
        finally:
            self._finish()

    def _finish(self) -> None:
        self._closing = True
        if self._state is not ConnState.EXPIRED:
            self._set_state(ConnState.CLOSED)
        for w in list(self._watches):
            w.finish()
        self._orphans.clear()
        if self._conn is not None:
            self._conn.abort("client closed")
            self._conn = None
        self._conn_change()
        self._slots_change()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _raise_if_dead(self) -> None:
        if self._state is ConnState.EXPIRED:
            raise SessionExpiredError(f"session {self.session_id:#x} expired")
        if self._closing or self._nursery is None:
            raise ConnectionLossError("client is closed" if self._closing else "client is not open")

    # -- connections ------------------------------------------------------

    async def _establish(self, deadline: float) -> tuple[Connection, dict]:
        """Try endpoints round robin (jittered backoff between rounds) until
        one accepts our hello.  ConnectionLossError at ``deadline``; a
        refused session (SessionExpired, AuthFailed) raises at once."""
        backoff = BACKOFF_MIN
        last = "no attempt made"
        while True:
            for _ in range(len(self._endpoints)):
                now = trio.current_time()
                if now >= deadline:
                    names = ", ".join(f"{h}:{p}" for h, p in self._endpoints)
                    raise ConnectionLossError(f"no server reachable ({names}); last error: {last}")
                host, port = self._endpoints[self._next_endpoint % len(self._endpoints)]
                self._next_endpoint += 1
                try:
                    return await self._handshake(host, port, min(deadline, now + self.connect_timeout))
                except _AttemptFailed as exc:
                    last = str(exc)
                    log.debug("connection attempt failed: %s", last)
            pause = backoff * self._rng.uniform(0.5, 1.0)
            await trio.sleep_until(min(deadline, trio.current_time() + pause))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _handshake(self, host: str, port: int, deadline: float) -> tuple[Connection, dict]:
        assert self._nursery is not None
        conn: Connection | None = None
        with trio.move_on_at(deadline):
            try:
                stream = await self._connect_stream(host, port)
            except OSError as exc:
                raise _AttemptFailed(f"{host}:{port}: {exc}") from None
            conn = Connection(stream, on_zxid=self._on_zxid, max_frame=self._max_frame, label=f"{host}:{port}")
            self._nursery.start_soon(conn.run)
            hello = {"op": Op.HELLO.value, "timeout_ms": int(self._requested_timeout * 1000),
                     "sid": self.session_id, "secret": self._secret, "last_zxid": self.last_zxid}
            try:
                resp = await conn.request(hello)
            except ConnectionClosed as exc:
                raise _AttemptFailed(f"{host}:{port}: {exc}") from None
            if resp.get("ok") and isinstance(resp.get("r"), dict):
                return conn, resp["r"]
            conn.abort("hello refused")
            if resp.get("err") in _FATAL_HELLO:
                raise _error_from(resp)
            raise _AttemptFailed(f"{host}:{port}: hello refused: {resp.get('err')}: {resp.get('msg')}")
        if conn is not None:
            conn.abort("hello timed out")
        raise _AttemptFailed(f"{host}:{port}: timed out")

    def _install(self, conn: Connection, result: dict, state: ConnState) -> None:
        assert self._nursery is not None
        self._conn = conn
        self.session_id = result["sid"]
        self._secret = result.get("secret")
        if result.get("timeout_ms"):
            self.session_timeout = result["timeout_ms"] / 1000
        self.server_id = result.get("server_id")
        self._nursery.start_soon(self._pinger, conn)
        orphans, self._orphans = self._orphans, []
        for w in orphans:
            if not w.done:
                self._nursery.start_soon(self._reregister, w)
        self._conn_change()
        self._set_state(state)

    async def _supervise(self) -> None:
        """Replace the connection each time it dies, until the session ends."""
        while True:
            conn = self._conn
            assert conn is not None
            await conn.closed_event.wait()
            if self._closing or self._state is ConnState.EXPIRED:
                return
            log.info("lost connection to %s: %s", conn.label, conn.close_reason)
            self._lost(conn)
            try:
                new, result = await self._establish(conn.last_recv + self.session_timeout)
            except ConnectionLossError as exc:
                self._expire(SessionExpiredError(f"session presumed expired: {exc.message}"))
                return
            except CoordError as exc:
                self._expire(exc)
                return
            self._install(new, result, ConnState.RECONNECTED)

    def _lost(self, conn: Connection) -> None:
        self._conn = None
        for w in self._watches:
            if w.conn is conn:
                w.resume(conn)
                self._orphans.append(w)
        self._conn_change()
        self._set_state(ConnState.SUSPENDED)

    def _expire(self, exc: CoordError) -> None:
        if self._closing or self._state is ConnState.EXPIRED:
            return
        log.warning("session %#x expired: %s", self.session_id, exc)
        self._set_state(ConnState.EXPIRED)
        for w in list(self._watches):
            w.finish(SessionExpiredError(f"session {self.session_id:#x} expired", path=w.path))
        self._orphans.clear()
        if self._conn is not None:
            self._conn.abort("session expired")
            self._conn = None
        self._conn_change()
        self._slots_change()

    async def _pinger(self, conn: Connection) -> None:
        """Ping when idle for a third of the session timeout; drop the
        connection when nothing arrived for two thirds of it."""
        while not conn.closed:
            now = trio.current_time()
            dead_at = conn.last_recv + self.session_timeout * 2 / 3
            if now >= dead_at:
                conn.abort(f"no response for {self.session_timeout * 2 / 3:.2f}s")
                return
            ping_at = conn.last_send + self.session_timeout / 3
            if now >= ping_at:
                conn.last_send = now
                ping_at = now + self.session_timeout / 3
                assert self._nursery is not None
                self._nursery.start_soon(self._ping, conn)
            with trio.move_on_at(min(dead_at, ping_at)):
                await conn.closed_event.wait()

    async def _ping(self, conn: Connection) -> None:
        with trio.move_on_after(self.session_timeout * 2 / 3):
            try:
                resp = await conn.request({"op": Op.PING.value})
            except ConnectionClosed:
                return
            if not resp.get("ok") and resp.get("err") == Err.SESSION_EXPIRED.value:
                self._expire(_error_from(resp))

    async def _live_connection(self) -> Connection:
        while True:
            self._raise_if_dead()
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            await self._conn_changed.wait()

    # -- calls ------------------------------------------------------------

    async def _call(self, msg: dict, *, claim: Any = None, deadline: float | None = None) -> Any:
        """Send ``msg`` until it gets a final answer or ``deadline`` passes."""
        self._raise_if_dead()
        if deadline is None:
            deadline = trio.current_time() + self.request_timeout
        seq = None
        if msg["op"] in _WRITES:
            seq = await self._take_seq(deadline)
            msg = {**msg, "seq": seq}
        try:
            return await self._attempts(msg, claim, deadline)
        finally:
            if seq is not None:
                del self._inflight[seq]
                self._slots_change()

    async def _take_seq(self, deadline: float) -> int:
        while True:
            self._raise_if_dead()
            oldest = next(iter(self._inflight), self._seq + 1)
            if self._seq + 1 - oldest < MAX_INFLIGHT_WRITES:
                self._seq += 1
                self._inflight[self._seq] = None
                return self._seq
            with trio.move_on_at(deadline):
                await self._slot_freed.wait()
                continue
            raise OperationTimeoutError(f"{MAX_INFLIGHT_WRITES} writes in flight; no slot before the deadline")

    async def _attempts(self, msg: dict, claim: Any, deadline: float) -> Any:
        last: CoordError | None = None
        retries = 0
        with trio.move_on_at(deadline):
            while True:
                conn = await self._live_connection()
                try:
                    resp = await conn.request(msg, claim=claim)
                except ConnectionClosed as exc:
                    last = ConnectionLossError(str(exc))
                    continue  # _live_connection waits for the next connection
                if resp.get("ok"):
                    result = resp.get("r")
                    return {} if result is None else result
                err = resp.get("err")
                if err in _RETRYABLE:
                    last = _error_from(resp)
                    retries += 1
                    await trio.sleep(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (retries - 1)) * self._rng.uniform(0.5, 1.0))
                    continue
                exc = _error_from(resp)
                if err == Err.SESSION_EXPIRED.value:
                    self._expire(exc)
                raise exc
        self._raise_if_dead()
        why = f"{msg['op']} got no result within its deadline ({last.message if last else 'not connected'})"
        if isinstance(last, OperationTimeoutError):
            raise OperationTimeoutError(why, path=msg.get("path"))
        raise ConnectionLossError(why, path=msg.get("path"))

    def _oneshot_claim(self, kind: str, path: str, callback: WatchCallback | None) -> Any:
        if callback is None:
            return None
        if not callable(callback):
            raise TypeError("watch must be a callable taking a WatchEvent")

        def claim(conn: Connection, wid: int) -> _OneShot | None:
            if self._closing or self._state is ConnState.EXPIRED:
                return None
            w = _OneShot(self, kind, path, callback)
            w.claim(conn, wid)
            self._watches.add(w)
            return w

        return claim

    def _spawn_callback(self, callback: WatchCallback, event: WatchEvent) -> None:
        if not self._closing and self._nursery is not None:
            self._nursery.start_soon(_run_callback, callback, event)

    async def _start_persistent(self, w: _Persistent, start_zxid: int | None) -> None:
        if w.done or w in self._watches:
            raise RuntimeError("a WatchStream can be started only once")
        self._raise_if_dead()
        deadline = trio.current_time() + self.request_timeout
        if start_zxid is None:
            # "Now": everything committed before this call is applied on the
            # server once sync returns, and last_zxid has caught up with it.
            await self._call({"op": Op.SYNC.value}, deadline=deadline)
            start_zxid = self.last_zxid
        w.from_zxid = start_zxid
        self._watches.add(w)
        try:
            await self._call(w.register_msg(), claim=w.claim, deadline=deadline)
        except BaseException:
            w.finish()
            raise

    async def _stop_persistent(self, w: _Persistent) -> None:
        conn, wid = w.conn, w.wid
        w.finish()
        if conn is None or wid is None or conn.closed:
            return  # an in-flight registration's claim will see ``done`` and unwatch
        conn.forget(wid)
        with trio.move_on_after(min(self.session_timeout, 5.0)):
            try:
                await conn.request({"op": Op.UNWATCH.value, "wid": wid})
            except ConnectionClosed:
                pass  # the registration died with the connection

    async def _reregister(self, w: _Watch) -> None:
        try:
            await self._call(w.register_msg(), claim=w.claim)
        except CoordError as exc:
            w.finish(exc)

    # -- the API ----------------------------------------------------------

    async def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequential: bool = False,
                     make_parents: bool = False) -> str:
        """Create a node; return its path (with the suffix, if ``sequential``).
        ``make_parents`` creates missing (persistent, empty) ancestors."""
        msg = ops.create(path, data, ephemeral=ephemeral, sequential=sequential, make_parents=make_parents)
        return (await self._call(msg))["path"]

    async def get(self, path: str, *, watch: WatchCallback | None = None,
                  linearizable: bool = False) -> tuple[bytes, Stat]:
        """Return (data, stat).  ``watch(event)`` fires once on the next
        change or deletion.  ``linearizable`` reads after a ReadIndex sync."""
        msg = {"op": "get", "path": _check_path(path), "watch": watch is not None, "lin": bool(linearizable)}
        r = await self._call(msg, claim=self._oneshot_claim("data", path, watch))
        return bytes(r["data"]), Stat.from_wire(r["stat"])

    async def exists(self, path: str, *, watch: WatchCallback | None = None,
                     linearizable: bool = False) -> Stat | None:
        """Return the node's stat or None.  ``watch`` fires once on its
        creation, change or deletion (it may be set on a missing node)."""
        msg = {"op": "exists", "path": _check_path(path), "watch": watch is not None, "lin": bool(linearizable)}
        r = await self._call(msg, claim=self._oneshot_claim("exists", path, watch))
        stat = r.get("stat")
        return None if stat is None else Stat.from_wire(stat)

    async def children(self, path: str, *, watch: WatchCallback | None = None, stats: bool = False,
                       linearizable: bool = False) -> list[str] | list[tuple[str, Stat]]:
        """Return child names (sorted by the server), or (name, Stat) pairs
        with ``stats``.  ``watch`` fires once when the list changes or the
        node is deleted."""
        msg = {"op": "children", "path": _check_path(path), "watch": watch is not None, "stats": bool(stats),
               "lin": bool(linearizable)}
        r = await self._call(msg, claim=self._oneshot_claim("children", path, watch))
        if stats:
            return [(name, Stat.from_wire(stat)) for name, stat in r["children"]]
        return list(r["children"])

    async def set(self, path: str, data: bytes, *, version: int = -1) -> Stat:
        """Replace the data if ``version`` matches (-1: any); return the new stat."""
        return Stat.from_wire((await self._call(ops.set(path, data, version=version)))["stat"])

    async def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> None:
        """Delete a node (and, with ``recursive``, its subtree, atomically)."""
        await self._call(ops.delete(path, version=version, recursive=recursive))

    async def multi(self, operations: Iterable[dict]) -> list[Any]:
        """Apply ``coordclient.ops`` operations atomically.

        Returns one result per operation: the created path for ``create``,
        the new ``Stat`` for ``set``, None for ``delete`` and ``check``.  On
        failure nothing is applied and ``MultiError`` says which operation
        failed (``index``), why (``cause``) and what each op got (``results``).
        """
        operations = list(operations)
        for op in operations:
            if not isinstance(op, dict) or op.get("op") not in ("create", "set", "delete", "check"):
                raise TypeError("multi takes operations built with coordclient.ops")
        results = (await self._call({"op": "multi", "ops": operations}))["results"]
        out: list[Any] = []
        for op, res in zip(operations, results):
            if op["op"] == "create":
                out.append(res["path"])
            elif op["op"] == "set":
                out.append(Stat.from_wire(res["stat"]))
            else:
                out.append(None)
        return out

    async def sync(self) -> None:
        """Wait until the connected server has applied everything committed
        before the call (later reads see at least that)."""
        await self._call({"op": Op.SYNC.value})

    async def status(self) -> dict:
        """The connected server's view of the ensemble (role, term, members...)."""
        return await self._call({"op": Op.STATUS.value})

    def watch(self, path: str, *, recursive: bool = False, start_zxid: int | None = None,
              buffer: int = DEFAULT_WATCH_BUFFER) -> WatchStream:
        """A persistent watch on ``path`` (and its subtree with ``recursive``),
        from now or from after ``start_zxid``; see ``WatchStream``.
        Registration happens on ``async with``/``start()``."""
        _check_path(path)
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        if start_zxid is not None and (not isinstance(start_zxid, int) or start_zxid < 0):
            raise ValueError("start_zxid must be a zxid (an int >= 0)")
        return WatchStream(self, path, recursive, buffer, start_zxid)


class _AttemptFailed(Exception):
    """One connection attempt failed; try the next endpoint."""


async def _run_callback(callback: WatchCallback, event: WatchEvent) -> None:
    try:
        result = callback(event)
        if inspect.isawaitable(result):
            await result
    except Exception:  # noqa: BLE001 - an application bug must not kill the client
        log.exception("watch callback %r failed", callback)
