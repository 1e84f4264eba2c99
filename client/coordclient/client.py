"""The async client: session, failover, retries and watches, on asyncio or Trio.

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
* Watches (``watches.py``) are re-registered on each new connection from the
  last zxid the old one delivered, so nothing is missed or repeated.

Everything waits on something bounded: calls on their deadline, reconnects
on the session timeout, watch buffers on a fixed size.

The client is written against AnyIO, so the same object runs natively under
``asyncio.run`` and ``trio.run``; request messages come from ``messages.py``.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import ssl
from typing import Any, Callable, Iterable

import anyio
import anyio.abc

from coordclient import messages
from coordclient.acl import ACL, acl_from_wire
from coordclient._compat import sole_exception
from coordclient.connection import Claim, Connection, ConnectionClosed
from coordclient.endpoints import Endpoints, parse_endpoints
from coordclient.errors import ConnectionLossError, CoordError, OperationTimeoutError, SessionExpiredError
from coordclient.messages import ops
from coordclient.protocol import Err
from coordclient.recipes.barrier import Barrier, DoubleBarrier
from coordclient.recipes.cache import NodeCache, TreeCache
from coordclient.recipes.counter import Counter
from coordclient.recipes.election import Election
from coordclient.recipes.group import Group
from coordclient.recipes.lease import Lease
from coordclient.recipes.locks import Lock, ReadWriteLock, Semaphore
from coordclient.recipes.queue import LockingQueue, Queue
from coordclient.recipes.ring import RingMember
from coordclient.streams import ConnectStream, as_byte_stream, connect_tcp, tls_connector
from coordclient.types import RESYNC, ConnState, Stat, WatchCallback, WatchEvent
from coordclient.watches import (
    DEFAULT_WATCH_BUFFER,
    PersistentWatch,
    Watch,
    WatchOverflowError,
    WatchRegistry,
    WatchStream,
    oneshot_claim,
)
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
PING_IDLE = 1 / 4  # of the session timeout: ping a connection that has sent nothing for this long
SILENCE_LIMIT = 1 / 2  # of the session timeout: a connection that received nothing for this long is dead
BACKOFF_MAX = 1.0


class Client:
    """An async coord client holding one session; runs on asyncio and Trio.

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
    port)`` returns an AnyIO ``ByteStream`` (default ``anyio.connect_tcp``;
    a ``trio.abc.Stream`` is accepted too): swap it for TLS or an in-memory
    test network.

    Calls may be made concurrently from many tasks; they are pipelined on
    the connection.  A call that runs out of time raises
    ``ConnectionLossError`` (or ``OperationTimeoutError``); a write that did
    so may or may not have been applied, exactly as in ZooKeeper.
    """

    def __init__(self, endpoints: Endpoints, *, session_timeout: float = 10.0,
                 connect_timeout: float | None = None, request_timeout: float | None = None,
                 rng: random.Random | None = None, connect_stream: ConnectStream | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, tls: ssl.SSLContext | None = None,
                 auth: Iterable[tuple[str, str]] = ()):
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
        if connect_stream is not None and tls is not None:
            raise ValueError("tls and connect_stream do not combine: make connect_stream do TLS")
        self._connect_stream = connect_stream or (tls_connector(tls) if tls is not None else connect_tcp)
        self._max_frame = max_frame
        # Credentials sent with add_auth on every connection (digest ids also
        # stay on the session, but a new connection may need them first).
        self._auth: list[tuple[str, str | None]] = [(scheme, cred) for scheme, cred in auth]
        for scheme, _ in self._auth:
            messages.add_auth(scheme, None)  # the scheme is checked now, not at the first connection

        self.session_id = 0
        self._secret: bytes | None = None
        self.last_zxid = 0
        self.server_id: int | None = None

        self._state = ConnState.CLOSED
        self._listeners: list[Callable[[ConnState], Any]] = []
        # Events are made when the client opens (AnyIO needs a running loop).
        self._state_changed: anyio.Event | None = None
        self._conn: Connection | None = None
        self._conn_changed: anyio.Event | None = None
        self._closing = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._opened = False

        self._seq = 0
        self._inflight: dict[int, None] = {}  # seqs in flight, oldest first
        self._slot_freed: anyio.Event | None = None
        self._watches = WatchRegistry(self._spawn_callback)

    # -- recipes (coordclient.recipes; see docs/recipes.md) ---------------------
    def lock(self, path: str, *, suspend_margin: float | None = None) -> Lock:
        """An exclusive lock with fencing tokens: ``async with c.lock(path) as lock:``."""
        return Lock(self, path, suspend_margin=suspend_margin)

    def rwlock(self, path: str, *, suspend_margin: float | None = None) -> ReadWriteLock:
        """A read/write lock: ``.read_lock`` and ``.write_lock``."""
        return ReadWriteLock(self, path, suspend_margin=suspend_margin)

    def semaphore(self, path: str, permits: int, *, suspend_margin: float | None = None) -> Semaphore:
        """A counting semaphore with ``permits`` holders at most."""
        return Semaphore(self, path, permits, suspend_margin=suspend_margin)

    def election(self, path: str, identity: str, *, suspend_margin: float | None = None) -> Election:
        """Leader election: ``async with c.election(path, me).campaign() as term:``."""
        return Election(self, path, identity, suspend_margin=suspend_margin)

    def barrier(self, path: str) -> Barrier:
        """A barrier: ``create()``, ``remove()``, ``await wait(timeout)``."""
        return Barrier(self, path)

    def double_barrier(self, path: str, num: int, identifier: str | None = None) -> DoubleBarrier:
        """``num`` participants enter and leave together."""
        return DoubleBarrier(self, path, num, identifier)

    def counter(self, path: str, default: int | float = 0) -> Counter:
        """An int (or float) counter with atomic ``add``."""
        return Counter(self, path, default)

    def queue(self, path: str) -> Queue:
        """A FIFO queue."""
        return Queue(self, path)

    def locking_queue(self, path: str, *, suspend_margin: float | None = None) -> LockingQueue:
        """A queue whose taken items come back if their taker dies."""
        return LockingQueue(self, path, suspend_margin=suspend_margin)

    def group(self, path: str) -> Group:
        """Group membership / service discovery."""
        return Group(self, path)

    def lease(self, path: str, *, duration: float, max_holders: int = 1, clock_margin: float = 1.0,
              suspend_margin: float | None = None) -> Lease:
        """Time-bound grants to at most ``max_holders`` holders."""
        return Lease(self, path, duration=duration, max_holders=max_holders, clock_margin=clock_margin,
                     suspend_margin=suspend_margin)

    def tree_cache(self, path: str, *, max_depth: int | None = None) -> TreeCache:
        """A local mirror of a subtree (``async with``)."""
        return TreeCache(self, path, max_depth=max_depth)

    def node_cache(self, path: str) -> NodeCache:
        """A local mirror of one node (``async with``)."""
        return NodeCache(self, path)

    def ring(self, path: str, member_id: str, **kwargs: Any) -> RingMember:
        """Membership of a consistent-hash ring partitioner (``async with``); see ``RingMember``."""
        return RingMember(self, path, member_id, **kwargs)

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
        reconnected) and return it; ``TimeoutError`` after ``timeout``."""
        wanted = states or (ConnState.CONNECTED, ConnState.RECONNECTED)
        with anyio.fail_after(math.inf if timeout is None else timeout):
            while self._state not in wanted:
                if self._state_changed is None:
                    raise ConnectionLossError("client is not open")
                await self._state_changed.wait()
        return self._state

    def _set_state(self, state: ConnState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._state_changed is not None:
            self._state_changed.set()
            self._state_changed = anyio.Event()
        for fn in list(self._listeners):
            try:
                fn(state)
            except Exception:  # noqa: BLE001 - a listener bug must not break the client
                log.exception("state listener %r failed", fn)

    def _conn_change(self) -> None:
        if self._conn_changed is not None:
            self._conn_changed.set()
            self._conn_changed = anyio.Event()

    def _slots_change(self) -> None:
        if self._slot_freed is not None:
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

    def _on_zxid(self, zxid: int) -> None:
        if zxid > self.last_zxid:
            self.last_zxid = zxid

    # -- open / close -----------------------------------------------------

    async def __aenter__(self) -> "Client":
        if self._opened or self._closing:
            raise RuntimeError("a Client can be opened only once")
        self._state_changed, self._conn_changed, self._slot_freed = anyio.Event(), anyio.Event(), anyio.Event()
        self._opened = True
        # The task group is entered and left directly (not through an
        # AsyncExitStack: re-raising a cancellation through one can make the
        # exception its own __context__, which AnyIO then walks forever).
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            budget = max(self.session_timeout, self.connect_timeout)
            conn, result = await self._establish(anyio.current_time() + budget)
            self._install(conn, result, ConnState.CONNECTED)
            self._tg.start_soon(self._supervise)
        except BaseException:
            self._finish()
            await tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        tg = self._tg
        assert tg is not None and self._opened
        try:
            await self._shutdown()
        finally:
            try:
                suppress = await tg.__aexit__(*exc_info)  # type: ignore[arg-type]
            except BaseExceptionGroup as group:
                # A task group wraps the body's own exception in a group on its
                # way through: give the caller back what it raised.
                inner = sole_exception(group)
                if inner is None:
                    raise
                if inner is exc_info[1]:
                    return False  # it propagates as it was (re-raising it here could loop its context)
                group.__context__ = None
                raise inner from None
        return suppress

    async def aclose(self) -> None:
        """Close the session (what leaving ``async with`` does)."""
        if self._opened and not self._closing:
            await self.__aexit__(None, None, None)

    async def _shutdown(self) -> None:
        """Close the session (unless it is gone already), then stop everything."""
        if self._closing:
            return
        self._closing = True  # new calls fail; the supervisor will not reconnect
        conn = self._conn
        try:
            if self.connected and conn is not None and not conn.closed:
                with anyio.move_on_after(min(self.session_timeout, 5.0)):
                    try:
                        await conn.request(messages.close())
                    except ConnectionClosed:
                        pass
        finally:
            self._finish()

    def _finish(self) -> None:
        self._closing = True
        if self._state is not ConnState.EXPIRED:
            self._set_state(ConnState.CLOSED)
        self._watches.finish_all()
        if self._conn is not None:
            self._conn.abort("client closed")
            self._conn = None
        self._conn_change()
        self._slots_change()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def _raise_if_dead(self) -> None:
        if self._state is ConnState.EXPIRED:
            raise SessionExpiredError(f"session {self.session_id:#x} expired")
        if self._closing or self._tg is None:
            raise ConnectionLossError("client is closed" if self._closing else "client is not open")

    def _alive(self) -> bool:
        return not self._closing and self._state is not ConnState.EXPIRED

    # -- connections ------------------------------------------------------

    async def _establish(self, deadline: float, *, stagger: float = math.inf) -> tuple[Connection, dict]:
        """Try every endpoint in turn (jittered backoff between rounds) until
        one accepts our hello.  ConnectionLossError at ``deadline``; a
        refused session (SessionExpired, AuthFailed) raises at once.

        With a finite ``stagger`` the next endpoint is tried that long after
        the previous attempt began, while it is still pending, and the first
        hello answered wins: a hung server (it accepts the TCP connection but
        never answers) then costs ``stagger``, not a whole connect timeout.
        Only for resuming a session: two answered hellos of a new session
        would make two sessions."""
        backoff = BACKOFF_MIN
        errors: list[str] = ["no attempt made"]
        while True:
            if anyio.current_time() >= deadline:
                names = ", ".join(f"{h}:{p}" for h, p in self._endpoints)
                raise ConnectionLossError(f"no server reachable ({names}); last error: {errors[-1]}")
            won = await self._attempt_round(deadline, stagger, errors)
            if won is not None:
                return won
            pause = backoff * self._rng.uniform(0.5, 1.0)
            await anyio.sleep_until(min(deadline, anyio.current_time() + pause))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _attempt_round(self, deadline: float, stagger: float,
                             errors: list[str]) -> tuple[Connection, dict] | None:
        """One attempt per endpoint, staggered; the first answered hello, or None."""
        won: list[tuple[Connection, dict]] = []
        fatal: list[CoordError] = []
        async with anyio.create_task_group() as tg:
            async def attempt(host: str, port: int, failed: anyio.Event) -> None:
                try:
                    got = await self._handshake(host, port, min(deadline, anyio.current_time() + self.connect_timeout))
                except _AttemptFailed as exc:
                    errors.append(str(exc))
                    log.debug("connection attempt failed: %s", exc)
                    failed.set()
                    return
                except CoordError as exc:  # the ensemble's own answer (expired, bad credentials): final
                    fatal.append(exc)
                    tg.cancel_scope.cancel()
                    return
                if won:
                    got[0].abort("another server answered first")
                    return
                won.append(got)
                tg.cancel_scope.cancel()

            for _ in range(len(self._endpoints)):
                if anyio.current_time() >= deadline:
                    break
                host, port = self._endpoints[self._next_endpoint % len(self._endpoints)]
                self._next_endpoint += 1
                failed = anyio.Event()
                tg.start_soon(attempt, host, port, failed)
                with anyio.move_on_after(stagger):
                    await failed.wait()
        if fatal:
            for conn, _ in won:
                conn.abort("session refused by another server")
            raise fatal[0]
        return won[0] if won else None

    async def _handshake(self, host: str, port: int, deadline: float) -> tuple[Connection, dict]:
        assert self._tg is not None
        conn: Connection | None = None
        ok = False
        try:
            with anyio.CancelScope(deadline=deadline):
                try:
                    stream = as_byte_stream(await self._connect_stream(host, port))
                except OSError as exc:
                    raise _AttemptFailed(f"{host}:{port}: {exc}") from None
                conn = Connection(stream, on_zxid=self._on_zxid, max_frame=self._max_frame, label=f"{host}:{port}")
                self._tg.start_soon(conn.run)
                hello = messages.hello(int(self._requested_timeout * 1000), self.session_id, self._secret,
                                       self.last_zxid)
                try:
                    resp = await conn.request(hello)
                except ConnectionClosed as exc:
                    raise _AttemptFailed(f"{host}:{port}: {exc}") from None
                if resp.get("ok") and isinstance(resp.get("r"), dict):
                    for scheme, cred in self._auth:
                        try:
                            r = await conn.request(messages.add_auth(scheme, cred))
                        except ConnectionClosed as exc:
                            raise _AttemptFailed(f"{host}:{port}: {exc}") from None
                        if not r.get("ok"):
                            raise messages.error_from(r)  # AuthFailed: wrong for every server
                    ok = True
                    return conn, resp["r"]
                if resp.get("err") in messages.FATAL_HELLO:
                    raise messages.error_from(resp)
                raise _AttemptFailed(f"{host}:{port}: hello refused: {resp.get('err')}: {resp.get('msg')}")
            raise _AttemptFailed(f"{host}:{port}: timed out")
        finally:
            if conn is not None and not ok:
                conn.abort("connection attempt abandoned")  # timed out, refused, or another server won

    def _install(self, conn: Connection, result: dict, state: ConnState) -> None:
        assert self._tg is not None
        self._conn = conn
        self.session_id = result["sid"]
        self._secret = result.get("secret")
        if result.get("timeout_ms"):
            self.session_timeout = result["timeout_ms"] / 1000
        self.server_id = result.get("server_id")
        self._tg.start_soon(self._pinger, conn)
        for w in self._watches.take_orphans():
            self._tg.start_soon(self._reregister, w)
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
                # No local deadline: only the ensemble knows whether the
                # session is still alive (a restarted ensemble keeps it, with
                # a fresh timeout), and any server it reaches will say so.
                new, result = await self._establish(math.inf, stagger=self._stagger())
            except CoordError as exc:
                self._expire(exc)
                return
            self._install(new, result, ConnState.RECONNECTED)

    def _lost(self, conn: Connection) -> None:
        self._conn = None
        self._watches.connection_lost(conn)
        self._conn_change()
        self._set_state(ConnState.SUSPENDED)

    def _expire(self, exc: CoordError) -> None:
        if self._closing or self._state is ConnState.EXPIRED:
            return
        log.warning("session %#x expired: %s", self.session_id, exc)
        self._set_state(ConnState.EXPIRED)
        self._watches.finish_all(
            lambda w: SessionExpiredError(f"session {self.session_id:#x} expired", path=w.path))
        if self._conn is not None:
            self._conn.abort("session expired")
            self._conn = None
        self._conn_change()
        self._slots_change()

    def _stagger(self) -> float:
        """How long a reconnect waits for one server before trying the next
        one beside it: a healthy server answers a hello in milliseconds."""
        return min(self.connect_timeout, max(0.05, self.session_timeout / 20))

    async def _pinger(self, conn: Connection) -> None:
        """Ping when idle for a quarter of the session timeout; drop the
        connection when nothing arrived for half of it (SUSPENDED), which
        leaves the other half to resume the session on another server
        before the ensemble could expire it."""
        while not conn.closed:
            now = anyio.current_time()
            dead_at = conn.last_recv + self.session_timeout * SILENCE_LIMIT
            if now >= dead_at:
                conn.abort(f"no response for {self.session_timeout * SILENCE_LIMIT:.2f}s")
                return
            ping_at = conn.last_send + self.session_timeout * PING_IDLE
            if now >= ping_at:
                conn.last_send = now
                ping_at = now + self.session_timeout * PING_IDLE
                assert self._tg is not None
                self._tg.start_soon(self._ping, conn)
            with anyio.CancelScope(deadline=min(dead_at, ping_at)):
                await conn.closed_event.wait()

    async def _ping(self, conn: Connection) -> None:
        with anyio.move_on_after(self.session_timeout * SILENCE_LIMIT):
            try:
                resp = await conn.request(messages.ping())
            except ConnectionClosed:
                return
            if not resp.get("ok") and resp.get("err") == Err.SESSION_EXPIRED.value:
                self._expire(messages.error_from(resp))

    async def _live_connection(self) -> Connection:
        while True:
            self._raise_if_dead()
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            assert self._conn_changed is not None
            await self._conn_changed.wait()

    # -- calls ------------------------------------------------------------

    async def _call(self, msg: dict, *, claim: Claim | None = None, deadline: float | None = None) -> Any:
        """Send ``msg`` until it gets a final answer or ``deadline`` passes."""
        self._raise_if_dead()
        if deadline is None:
            deadline = anyio.current_time() + self.request_timeout
        seq = None
        if msg["op"] in messages.WRITES:
            seq = await self._take_seq(deadline)
            msg = {**msg, "seq": seq}
        try:
            return await self._attempts(msg, claim, deadline)
        finally:
            if seq is not None:
                self._release_seq(seq)

    def _release_seq(self, seq: int) -> None:
        del self._inflight[seq]
        self._slots_change()

    def _try_take_seq(self) -> int | None:
        oldest = next(iter(self._inflight), self._seq + 1)
        if self._seq + 1 - oldest < MAX_INFLIGHT_WRITES:
            self._seq += 1
            self._inflight[self._seq] = None
            return self._seq
        return None

    async def _take_seq(self, deadline: float) -> int:
        while True:
            self._raise_if_dead()
            seq = self._try_take_seq()
            if seq is not None:
                return seq
            assert self._slot_freed is not None
            with anyio.CancelScope(deadline=deadline):
                await self._slot_freed.wait()
                continue
            raise OperationTimeoutError(f"{MAX_INFLIGHT_WRITES} writes in flight; no slot before the deadline")

    async def _attempts(self, msg: dict, claim: Claim | None, deadline: float) -> Any:
        last: CoordError | None = None
        retries = 0
        with anyio.CancelScope(deadline=deadline):
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
                if err in messages.RETRYABLE:
                    last = messages.error_from(resp)
                    retries += 1
                    await anyio.sleep(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (retries - 1)) * self._rng.uniform(0.5, 1.0))
                    continue
                exc = messages.error_from(resp)
                if err == Err.SESSION_EXPIRED.value:
                    self._expire(exc)
                raise exc
        self._raise_if_dead()
        why = f"{msg['op']} got no result within its deadline ({last.message if last else 'not connected'})"
        if isinstance(last, OperationTimeoutError):
            raise OperationTimeoutError(why, path=msg.get("path"))
        raise ConnectionLossError(why, path=msg.get("path"))

    def _oneshot_claim(self, kind: str, path: str, callback: WatchCallback | None) -> Claim | None:
        return oneshot_claim(self._watches, kind, path, callback, self._alive)

    def _spawn_callback(self, callback: WatchCallback, event: WatchEvent) -> None:
        if not self._closing and self._tg is not None:
            self._tg.start_soon(_run_callback, callback, event)

    async def _start_persistent(self, w: PersistentWatch, start_zxid: int | None) -> None:
        if w.done or w in self._watches.live:
            raise RuntimeError("a WatchStream can be started only once")
        self._raise_if_dead()
        deadline = anyio.current_time() + self.request_timeout
        if start_zxid is None:
            # "Now": everything committed before this call is applied on the
            # server once sync returns, and last_zxid has caught up with it.
            await self._call(messages.sync(), deadline=deadline)
            start_zxid = self.last_zxid
        w.from_zxid = start_zxid
        self._watches.add(w)
        try:
            await self._call(w.register_msg(), claim=w.claim, deadline=deadline)
        except BaseException:
            w.finish()
            raise

    async def _stop_persistent(self, w: PersistentWatch) -> None:
        conn, wid = w.conn, w.wid
        w.finish()
        if conn is None or wid is None or conn.closed:
            return  # an in-flight registration's claim will see ``done`` and unwatch
        conn.forget(wid)
        with anyio.move_on_after(min(self.session_timeout, 5.0)):
            try:
                await conn.request(messages.unwatch(wid))
            except ConnectionClosed:
                pass  # the registration died with the connection

    async def _reregister(self, w: Watch) -> None:
        try:
            await self._call(w.register_msg(), claim=w.claim)
        except CoordError as exc:
            w.finish(exc)

    # -- the API ----------------------------------------------------------

    async def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequential: bool = False,
                     make_parents: bool = False, acl: Iterable[ACL | str] | None = None,
                     include_stat: bool = False, container: bool = False, ttl: float | None = None) -> Any:
        """Create a node; return its path (with the suffix, if ``sequential``),
        or with ``include_stat`` ``(path, Stat)`` (ZooKeeper's create2, kazoo's
        ``include_data``): ``stat.czxid`` is the create's zxid.
        ``make_parents`` creates missing (persistent, empty) ancestors, with the
        same ACL.  ``acl``: ``coordclient.acl`` entries or ``"scheme:id:perms"``
        strings; None gives the server's default (open unless configured).
        ``container`` (ZooKeeper's CONTAINER): the ensemble deletes the node
        once it has had children and the last one is gone -- a parent for
        locks or queues that cleans itself up.  ``ttl`` (seconds, ZooKeeper's
        TTL modes): the ensemble deletes the node once it has no children and
        has not been changed for ``ttl``.  Both are deleted by the leader's
        periodic check ([namespace] reap_interval_ms), so some time after."""
        msg = ops.create(path, data, ephemeral=ephemeral, sequential=sequential, make_parents=make_parents, acl=acl,
                         container=container, ttl=ttl)
        r = await self._call(msg)
        return (r["path"], Stat.from_wire(r["stat"])) if include_stat else r["path"]

    async def get_acl(self, path: str, *, linearizable: bool = False) -> tuple[list[ACL], Stat]:
        """The node's ACL and stat (``stat.aversion`` counts ACL changes)."""
        r = await self._call(messages.get_acl(path, linearizable=linearizable))
        return acl_from_wire(r["acl"]), Stat.from_wire(r["stat"])

    async def set_acl(self, path: str, acl: Iterable[ACL | str], *, version: int = -1) -> Stat:
        """Replace the node's ACL if its ACL version (``aversion``) is
        ``version`` (-1: any); needs ADMIN permission.  Returns the new stat."""
        return Stat.from_wire((await self._call(messages.set_acl(path, acl, version=version)))["stat"])

    async def add_auth(self, scheme: str, credential: str | None = None) -> list[tuple[str, str]]:
        """Add an identity to the session: ``("digest", "user:password")``
        (only its digest reaches the server's state, and the session keeps it
        across reconnects) or ``("x509", None)`` (the TLS client certificate).
        Also sent again on every new connection.  Returns the identities the
        session now has.  AuthFailedError for a malformed credential."""
        r = await self._call(messages.add_auth(scheme, credential))
        if (scheme, credential) not in self._auth:
            self._auth.append((scheme, credential))
        return [(s, i) for s, i in r["ids"]]

    async def whoami(self) -> list[tuple[str, str]]:
        """The identities the server knows this client by (scheme, id)."""
        return [(s, i) for s, i in (await self._call(messages.whoami()))["ids"]]

    async def get(self, path: str, *, watch: WatchCallback | None = None,
                  linearizable: bool = False) -> tuple[bytes, Stat]:
        """Return (data, stat).  ``watch(event)`` fires once on the next
        change or deletion.  ``linearizable`` reads after a ReadIndex sync."""
        msg = messages.get(path, watch=watch is not None, linearizable=linearizable)
        r = await self._call(msg, claim=self._oneshot_claim("data", path, watch))
        return bytes(r["data"]), Stat.from_wire(r["stat"])

    async def exists(self, path: str, *, watch: WatchCallback | None = None,
                     linearizable: bool = False) -> Stat | None:
        """Return the node's stat or None.  ``watch`` fires once on its
        creation, change or deletion (it may be set on a missing node)."""
        msg = messages.exists(path, watch=watch is not None, linearizable=linearizable)
        r = await self._call(msg, claim=self._oneshot_claim("exists", path, watch))
        stat = r.get("stat")
        return None if stat is None else Stat.from_wire(stat)

    async def children(self, path: str, *, watch: WatchCallback | None = None, stats: bool = False,
                       linearizable: bool = False, include_stat: bool = False) -> Any:
        """Return child names (sorted by the server), or (name, Stat) pairs
        with ``stats``.  ``watch`` fires once when the list changes or the
        node is deleted.  ``include_stat`` (ZooKeeper's getChildren2, kazoo's
        ``include_data``): ``(children, Stat of the node)``, read together."""
        msg = messages.children(path, watch=watch is not None, stats=stats, linearizable=linearizable,
                                node_stat=include_stat)
        r = await self._call(msg, claim=self._oneshot_claim("children", path, watch))
        kids = ([(name, Stat.from_wire(stat)) for name, stat in r["children"]] if stats else list(r["children"]))
        if include_stat:
            if r.get("stat") is None:
                raise CoordError("this server is too old to return the node's stat with its children")
            return kids, Stat.from_wire(r["stat"])
        return kids

    async def descendant_count(self, path: str, *, linearizable: bool = False) -> int:
        """How many nodes are under ``path``, at any depth, itself excluded
        (ZooKeeper's getAllChildrenNumber); needs READ on the node.  The
        server counts the whole subtree: meant for tools, not hot paths."""
        return (await self._call(messages.descendants(path, linearizable=linearizable)))["count"]

    async def ephemerals(self, prefix: str = "/", *, linearizable: bool = False) -> list[str]:
        """This session's ephemeral nodes whose path starts with ``prefix``
        (a string prefix, as ZooKeeper's getEphemerals: "/a" matches "/ab"),
        sorted."""
        return list((await self._call(messages.ephemerals(prefix, linearizable=linearizable)))["paths"])

    async def set(self, path: str, data: bytes, *, version: int = -1) -> Stat:
        """Replace the data if ``version`` matches (-1: any); return the new stat."""
        return Stat.from_wire((await self._call(ops.set(path, data, version=version)))["stat"])

    async def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> int:
        """Delete a node (and, with ``recursive``, its subtree, atomically).
        Returns the deletion's zxid (the ``zxid`` of the ``deleted`` event it
        causes), or 0 from a server too old to say."""
        return (await self._call(ops.delete(path, version=version, recursive=recursive))).get("zxid", 0)

    async def multi(self, operations: Iterable[dict]) -> list[Any]:
        """Apply ``coordclient.ops`` operations atomically.

        Returns one result per operation: the created path for ``create``,
        the new ``Stat`` for ``set``, None for ``delete`` and ``check``.  On
        failure nothing is applied and ``MultiError`` says which operation
        failed (``index``), why (``cause``) and what each op got (``results``).
        """
        operations = list(operations)
        results = (await self._call(messages.multi(operations)))["results"]
        return messages.multi_results(operations, results)

    async def sync(self) -> None:
        """Wait until the connected server has applied everything committed
        before the call (later reads see at least that)."""
        await self._call(messages.sync())

    async def status(self) -> dict:
        """The connected server's view of the ensemble (role, term, members...)."""
        return await self._call(messages.status())

    def watch(self, path: str, *, recursive: bool = False, start_zxid: int | None = None,
              buffer: int = DEFAULT_WATCH_BUFFER) -> WatchStream:
        """A persistent watch on ``path`` (and its subtree with ``recursive``),
        from now or from after ``start_zxid``; see ``WatchStream``.
        Registration happens on ``async with``/``start()``."""
        messages.check_path(path)
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        if start_zxid is not None and (not isinstance(start_zxid, int) or start_zxid < 0):
            raise ValueError("start_zxid must be a zxid (an int >= 0)")
        return WatchStream(self, self._watches, path, recursive, buffer, start_zxid)


class _AttemptFailed(Exception):
    """One connection attempt failed; try the next endpoint."""


async def _run_callback(callback: WatchCallback, event: WatchEvent) -> None:
    try:
        result = callback(event)
        if inspect.iscoroutine(result):  # not any awaitable: a task handle returned by start_soon is one
            await result
    except Exception:  # noqa: BLE001 - an application bug must not kill the client
        log.exception("watch callback %r failed", callback)
