"""The blocking client, for code that does not run an event loop: threads,
Django, Celery, scripts.

``SyncClient`` runs an async ``Client`` on an event loop in a private thread
(Trio by default, which measured cheaper per call; ``backend="asyncio"``
works too).  Every method may be
called from any thread except that loop thread, by many threads at once;
concurrent calls are pipelined on the one connection.

Why the API cannot drift from the async client: each blocking call *is* the
async method (``Client.get`` etc.), run as a coroutine in the calling thread.
Argument checks, request building and result parsing happen right there;
the one thing the coroutine awaits, the client's ``_call``, is handed to the
loop thread.  So a ``SyncClient`` method has the async method's signature,
docstring and behaviour by construction (``tests/test_sdk_api.py`` pins it).

Why it is cheap: the hand-over schedules one plain callback on the loop (no
task, no portal): it queues the request on the live connection, and the
connection's reader completes the call with the response, releasing the
calling thread.  Only when that fast attempt cannot finish the call (no
connection, a lost connection, a retryable error, the write window full)
does the loop run the async client's own retry loop for it, with the same
write sequence number, so exactly-once and failover are the async client's.

Watch callbacks and state listeners run *in the loop thread*: they must
return quickly and must not call ``SyncClient`` methods (that would
deadlock; it raises ``RuntimeError`` instead).  Hand the work to another
thread (e.g. through a ``queue.Queue``) if it needs the client.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import functools
import inspect
import math
import threading
import time
from typing import Any, Callable

import anyio
import anyio.abc

from coordclient import messages
from coordclient.client import BACKOFF_MAX, BACKOFF_MIN, Client
from coordclient.connection import Claim, Connection
from coordclient.errors import ConnectionLossError, CoordError
from coordclient.protocol import Err
from coordclient.recipes.blocking import (
    SyncBarrier,
    SyncCounter,
    SyncDoubleBarrier,
    SyncElection,
    SyncGroup,
    SyncLease,
    SyncLock,
    SyncLockingQueue,
    SyncNodeCache,
    SyncQueue,
    SyncReadWriteLock,
    SyncRingMember,
    SyncSemaphore,
    SyncTreeCache,
)
from coordclient.types import ConnState, WatchEvent
from coordclient.watches import DEFAULT_WATCH_BUFFER, WatchStream

__all__ = ["SyncClient", "SyncWatch", "BLOCKING_CALLS"]

# The async client's calls that SyncClient offers, derived from them.
BLOCKING_CALLS = ("create", "get", "exists", "children", "descendant_count", "ephemerals", "set", "delete", "multi",
                  "sync", "status", "get_acl", "set_acl", "add_auth", "whoami")

# After the call's own deadline, how long the caller waits for the loop to
# settle it before giving up on the loop itself.
LOOP_GRACE = 5.0
_END = object()
_TIMEOUT = object()


class _Call:
    """One blocking call in flight: settled once, in the loop thread; the
    calling thread waits on a plain lock (the cheapest wake-up there is)."""

    __slots__ = ("msg", "claim", "seq", "started", "conn", "rid", "scope", "retries", "done", "value", "error",
                 "_lock")

    def __init__(self, msg: dict | None = None, claim: Claim | None = None):
        self.msg = msg
        self.claim = claim
        self.seq: int | None = None
        self.started = time.monotonic()
        self.conn: Connection | None = None
        self.rid: int | None = None
        self.scope: anyio.CancelScope | None = None
        self.retries = 0
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.value, self.error = value, error
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=-1 if timeout == math.inf else max(timeout, 0))


class _Request:
    """What the client's ``_call`` returns to a coroutine driven by a
    blocking call: awaiting it yields the request to the driver."""

    __slots__ = ("msg", "claim")

    def __init__(self, msg: dict, claim: Claim | None):
        self.msg, self.claim = msg, claim

    def __await__(self) -> Any:
        return (yield self)


class _Remote:
    """The ``self`` that ``Client``'s methods see when a ``SyncClient`` runs
    them in the calling thread: ``_call`` hands the request over."""

    __slots__ = ("_oneshot_claim",)

    def __init__(self, client: Client):
        self._oneshot_claim = client._oneshot_claim

    def _call(self, msg: dict, *, claim: Claim | None = None, deadline: float | None = None) -> _Request:
        return _Request(msg, claim)


class _Bridge:
    """The loop-thread half of blocking calls (every method here runs in the
    loop thread)."""

    def __init__(self, client: Client, tg: anyio.abc.TaskGroup):
        self.client = client
        self.tg = tg

    # -- requests ---------------------------------------------------------

    def start(self, call: _Call) -> None:
        client = self.client
        if call.done:
            return
        try:
            client._raise_if_dead()
        except CoordError as exc:
            call.settle(error=exc)
            return
        assert call.msg is not None
        if call.msg["op"] in messages.WRITES:
            seq = client._try_take_seq()
            if seq is None:
                self._slow(call)  # the window is full: wait for a slot the async way
                return
            call.seq = seq
            call.msg = {**call.msg, "seq": seq}
        self._attempt(call)

    def _attempt(self, call: _Call) -> None:
        conn = self.client._conn
        if conn is None or conn.closed:
            self._slow(call)
            return
        try:
            rid = conn.submit(call.msg, functools.partial(self._answered, call), claim=call.claim)  # type: ignore[arg-type]
        except CoordError as exc:  # too large to send
            self._end(call, error=exc)
            return
        if rid is None:
            self._slow(call)
            return
        call.conn, call.rid = conn, rid

    def _answered(self, call: _Call, frame: dict | None) -> None:
        call.conn = call.rid = None
        if call.done:
            return
        if frame is None:  # the connection ended: retry on the next one
            self._slow(call)
            return
        if frame.get("ok"):
            result = frame.get("r")
            self._end(call, {} if result is None else result)
            return
        err = frame.get("err")
        if err in messages.RETRYABLE:
            call.retries += 1
            self._slow(call, backoff=True)
            return
        exc = messages.error_from(frame)
        if err == Err.SESSION_EXPIRED.value:
            self.client._expire(exc)
        self._end(call, error=exc)

    def _slow(self, call: _Call, backoff: bool = False) -> None:
        self.tg.start_soon(self._retry, call, backoff)

    async def _retry(self, call: _Call, backoff: bool) -> None:
        """The async client's own retry loop, for a call the fast path could not finish."""
        client = self.client
        # The call's deadline on the loop's clock (the fast path does not read that clock).
        deadline = anyio.current_time() + client.request_timeout - (time.monotonic() - call.started)
        try:
            with anyio.CancelScope() as scope:
                call.scope = scope
                if backoff:
                    pause = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (call.retries - 1)) * client._rng.uniform(0.5, 1.0)
                    await anyio.sleep_until(min(deadline, anyio.current_time() + pause))
                assert call.msg is not None
                if call.seq is None and call.msg["op"] in messages.WRITES:
                    value = await client._call(call.msg, claim=call.claim, deadline=deadline)
                else:
                    value = await client._attempts(call.msg, call.claim, deadline)
                self._end(call, value)
        except Exception as exc:  # noqa: BLE001 - handed to the calling thread
            self._end(call, error=exc)
        finally:
            if not call.done:
                self._end(call, error=ConnectionLossError("client is closed"))

    def _end(self, call: _Call, value: Any = None, error: BaseException | None = None) -> None:
        if call.seq is not None:
            self.client._release_seq(call.seq)
            call.seq = None
        call.settle(value, error)

    def abandon(self, call: _Call) -> None:
        """The calling thread gave up at the call's deadline."""
        if call.done:
            return
        if call.conn is not None and call.rid is not None:
            call.conn.abandon(call.rid)
        if call.scope is not None:
            call.scope.cancel()
        msg = call.msg or {}
        self._end(call, error=ConnectionLossError(f"{msg.get('op')} got no result within its deadline",
                                                  path=msg.get("path")))

    # -- anything else -------------------------------------------------------

    def run_sync(self, call: _Call, fn: Callable[[], Any]) -> None:
        try:
            call.settle(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            call.settle(error=exc)

    def run(self, call: _Call, fn: Callable[[], Any]) -> None:
        self.tg.start_soon(self._run_task, call, fn)

    async def _run_task(self, call: _Call, fn: Callable[[], Any]) -> None:
        try:
            call.settle(await fn())
        except Exception as exc:  # noqa: BLE001 - handed to the calling thread
            call.settle(error=exc)
        finally:
            if not call.done:
                call.settle(error=ConnectionLossError("client is closed"))


def _blocking(name: str) -> Callable[..., Any]:
    """The blocking form of ``Client.<name>``: same signature and docstring;
    the async method's body runs in the calling thread (see the module doc)."""
    method = getattr(Client, name)

    @functools.wraps(method)
    def call(self: "SyncClient", *args: Any, **kwargs: Any) -> Any:
        return self._drive(method(self._remote(), *args, **kwargs))

    call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return call


class SyncClient:
    """The ``Client`` API, blocking, usable from any number of threads.

    ::

        with SyncClient("h1:2181,h2:2181") as c:
            c.create("/jobs/j-", b"spec", sequential=True)
            data, stat = c.get("/config", watch=lambda ev: print(ev))

    Takes the same arguments as ``Client``, plus ``backend`` ("trio", the
    default, or "asyncio") for the private loop.  Opening blocks until a
    session is established (or raises what ``Client`` raised); closing ends
    the session and joins the loop thread.
    """

    def __init__(self, endpoints: Any, *, backend: str = "trio", **client_kwargs: Any):
        if backend not in ("asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
        self._endpoints = endpoints
        self._backend = backend
        self._kwargs = client_kwargs
        self._client: Client | None = None
        self._bridge: _Bridge | None = None
        self._schedule: Callable[..., Any] | None = None
        self._remote_self: _Remote | None = None
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._stop: anyio.Event | None = None
        self._error: BaseException | None = None

    # -- recipes (blocking forms; see docs/recipes.md) ------------------------

    def lock(self, path: str, *, suspend_margin: float | None = None) -> SyncLock:
        return SyncLock(self, path, suspend_margin=suspend_margin)

    def rwlock(self, path: str, *, suspend_margin: float | None = None) -> SyncReadWriteLock:
        return SyncReadWriteLock(self, path, suspend_margin=suspend_margin)

    def semaphore(self, path: str, permits: int, *, suspend_margin: float | None = None) -> SyncSemaphore:
        return SyncSemaphore(self, path, permits, suspend_margin=suspend_margin)

    def election(self, path: str, identity: str, *, suspend_margin: float | None = None) -> SyncElection:
        return SyncElection(self, path, identity, suspend_margin=suspend_margin)

    def barrier(self, path: str) -> SyncBarrier:
        return SyncBarrier(self, path)

    def double_barrier(self, path: str, num: int, identifier: str | None = None) -> SyncDoubleBarrier:
        return SyncDoubleBarrier(self, path, num, identifier)

    def counter(self, path: str, default: int | float = 0) -> SyncCounter:
        return SyncCounter(self, path, default)

    def queue(self, path: str) -> SyncQueue:
        return SyncQueue(self, path)

    def locking_queue(self, path: str, *, suspend_margin: float | None = None) -> SyncLockingQueue:
        return SyncLockingQueue(self, path, suspend_margin=suspend_margin)

    def group(self, path: str) -> SyncGroup:
        return SyncGroup(self, path)

    def lease(self, path: str, *, duration: float, max_holders: int = 1, clock_margin: float = 1.0,
              suspend_margin: float | None = None) -> SyncLease:
        return SyncLease(self, path, duration=duration, max_holders=max_holders, clock_margin=clock_margin,
                         suspend_margin=suspend_margin)

    def tree_cache(self, path: str, *, max_depth: int | None = None) -> SyncTreeCache:
        return SyncTreeCache(self, path, max_depth=max_depth)

    def node_cache(self, path: str) -> SyncNodeCache:
        return SyncNodeCache(self, path)

    def ring(self, path: str, member_id: str, **kwargs: Any) -> SyncRingMember:
        return SyncRingMember(self, path, member_id, **kwargs)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "SyncClient":
        if self._thread is not None:
            raise RuntimeError("a SyncClient can be started only once")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="coordclient", daemon=True)
        self._thread.start()
        ready.wait()  # bounded: opening a Client gives up after its session timeout
        if self._schedule is None:
            self._thread.join()
            error, self._error = self._error, None
            raise error if error is not None else ConnectionLossError("client thread ended during startup")
        return self

    def close(self) -> None:
        """Close the session and stop the loop thread (idempotent)."""
        stop = self._stop
        if self._schedule is not None and stop is not None:
            try:
                self._schedule(stop.set)
            except ConnectionLossError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()  # bounded: closing waits at most min(session timeout, 5s)
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> "SyncClient":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            anyio.run(self._main, ready, backend=self._backend)
        except BaseException as exc:  # noqa: BLE001 - handed to the owning thread
            self._error = exc
        finally:
            self._schedule = None
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._stop = anyio.Event()
        async with Client(self._endpoints, **self._kwargs) as client:
            async with anyio.create_task_group() as tg:
                self._client = client
                self._bridge = _Bridge(client, tg)
                self._remote_self = _Remote(client)
                self._loop_ident = threading.get_ident()
                self._schedule = _scheduler(self._backend)
                ready.set()
                await self._stop.wait()
                self._schedule = None  # later calls fail at once instead of waiting
                tg.cancel_scope.cancel()

    # -- handing work to the loop thread ------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_ident:
            raise RuntimeError("SyncClient methods cannot be called from its own loop thread (a watch "
                               "callback or state listener): hand the work to another thread")
        schedule = self._schedule
        if schedule is None:
            raise ConnectionLossError("client is not open" if self._thread is None else "client is closed")
        try:
            schedule(fn, *args)
        except RuntimeError:  # the loop has just stopped
            raise ConnectionLossError("client is closed") from None

    def _wait(self, call: _Call, timeout: float = math.inf) -> Any:
        if not call.wait(timeout):
            assert self._bridge is not None
            try:
                self._post(self._bridge.abandon, call)
            except ConnectionLossError:
                pass
            if not call.wait(LOOP_GRACE):
                raise ConnectionLossError("the client's event loop did not answer")
        if call.error is not None:
            raise call.error
        return call.value

    def _remote(self) -> _Remote:
        remote = self._remote_self
        if remote is None:
            raise ConnectionLossError("client is not open")
        return remote

    def _drive(self, coro: Any) -> Any:
        """Run one of ``Client``'s call coroutines in this thread; each
        request it awaits is made through the loop thread."""
        assert self._bridge is not None
        try:
            request = coro.send(None)
            while True:
                call = _Call(request.msg, request.claim)
                try:
                    self._post(self._bridge.start, call)
                    value = self._wait(call, self.client.request_timeout + 0.5)
                except BaseException as exc:  # noqa: BLE001 - the coroutine decides
                    request = coro.throw(exc)
                else:
                    request = coro.send(value)
        except StopIteration as stop:
            return stop.value
        finally:
            coro.close()

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the coroutine function ``fn(*args, **kwargs)`` in the loop; its result."""
        if self._bridge is None:
            raise ConnectionLossError("client is not open")
        call = _Call()
        self._post(self._bridge.run, call, functools.partial(fn, *args, **kwargs))
        return self._wait(call)

    def _run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` in the loop thread; its result."""
        if self._bridge is None:
            raise ConnectionLossError("client is not open")
        call = _Call()
        self._post(self._bridge.run_sync, call, functools.partial(fn, *args, **kwargs))
        return self._wait(call)

    # -- state (plain attribute reads are safe from any thread) -----------

    @property
    def client(self) -> Client:
        """The underlying async client (for use from the loop thread only)."""
        if self._client is None:
            raise ConnectionLossError("client is not open")
        return self._client

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def state(self) -> ConnState:
        return self.client.state

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def session_id(self) -> int:
        return self.client.session_id

    @property
    def last_zxid(self) -> int:
        return self.client.last_zxid

    @property
    def server_id(self) -> int | None:
        return self.client.server_id

    @property
    def session_timeout(self) -> float:
        return self.client.session_timeout

    @property
    def request_timeout(self) -> float:
        return self.client.request_timeout

    def add_listener(self, fn: Callable[[ConnState], Any]) -> None:
        """``fn(state)`` runs in the loop thread on every state change."""
        self._run_sync(self.client.add_listener, fn)

    def remove_listener(self, fn: Callable[[ConnState], Any]) -> None:
        self._run_sync(self.client.remove_listener, fn)

    def wait_state(self, *states: ConnState, timeout: float | None = None) -> ConnState:
        """Block until the state is one of ``states`` (default: connected or
        reconnected); ``TimeoutError`` after ``timeout``."""
        try:
            return self._run(self.client.wait_state, *states, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"state still {self.state.value} after {timeout}s") from None

    # -- the API (derived from Client: see the module doc) ---------------------

    create = _blocking("create")
    get = _blocking("get")
    exists = _blocking("exists")
    children = _blocking("children")
    descendant_count = _blocking("descendant_count")
    ephemerals = _blocking("ephemerals")
    set = _blocking("set")
    delete = _blocking("delete")
    multi = _blocking("multi")
    sync = _blocking("sync")
    status = _blocking("status")
    get_acl = _blocking("get_acl")
    set_acl = _blocking("set_acl")
    add_auth = _blocking("add_auth")
    whoami = _blocking("whoami")


    def watch(self, path: str, *, recursive: bool = False, start_zxid: int | None = None,
              buffer: int = DEFAULT_WATCH_BUFFER) -> "SyncWatch":
        """A persistent watch as a blocking iterator; use it as a context manager."""
        make = functools.partial(self.client.watch, path, recursive=recursive, start_zxid=start_zxid, buffer=buffer)
        return SyncWatch(self, self._run_sync(make))


def _scheduler(backend: str) -> Callable[..., Any]:
    """``schedule(fn, *args)``: call ``fn(*args)`` soon in this (the loop's)
    thread, from any thread, without a task."""
    if backend == "asyncio":
        loop = asyncio.get_running_loop()
        # Callbacks run in the loop task's context, where AnyIO knows its backend.
        context = contextvars.copy_context()
        call_soon = loop.call_soon_threadsafe

        def schedule(fn: Callable[..., Any], *args: Any) -> None:
            call_soon(fn, *args, context=context)

        return schedule
    import trio

    token = trio.lowlevel.current_trio_token()
    run_sync_soon = token.run_sync_soon

    def schedule_trio(fn: Callable[..., Any], *args: Any) -> None:
        try:
            run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise RuntimeError("loop finished") from None

    return schedule_trio


class SyncWatch:
    """Blocking view of a ``WatchStream``::

        with client.watch("/config", recursive=True) as events:
            for ev in events:          # blocks; ends when the watch or client closes
                ...
            ev = events.get(timeout=5) # or one at a time, with a timeout
    """

    def __init__(self, owner: SyncClient, stream: WatchStream):
        self._owner = owner
        self._stream = stream

    @property
    def path(self) -> str:
        return self._stream.path

    def __enter__(self) -> "SyncWatch":
        self._owner._run(self._stream.start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._owner._run(self._stream.aclose)
        except ConnectionLossError:
            pass  # the client is gone, and the watch with it

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event; None once the watch has ended; ``TimeoutError``
        if nothing arrived within ``timeout`` seconds.  Starts the watch if
        ``with`` did not (then ``close()`` it when done)."""
        if not self._stream.started:
            self._owner._run(self._stream.start)
        result = self._owner._run(_next_event, self._stream, timeout)
        if result is _TIMEOUT:
            raise TimeoutError(f"no event on {self._stream.path} within {timeout}s")
        return None if result is _END else result

    def __iter__(self) -> "SyncWatch":
        return self

    def __next__(self) -> WatchEvent:
        event = self.get()
        if event is None:
            raise StopIteration
        return event


async def _next_event(stream: WatchStream, timeout: float | None) -> object:
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return _END
    return _TIMEOUT
