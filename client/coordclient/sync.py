"""A blocking client for code that does not run under Trio.

``SyncClient`` runs an async ``Client`` in a private thread with its own
Trio loop and forwards each call to it with ``trio.from_thread.run``.

Thread-safety: every method may be called from any thread except the loop
thread, concurrently; concurrent calls are pipelined on the one
connection.  Watch callbacks and state listeners run *in the loop thread*:
they must return quickly and must not call ``SyncClient`` methods (that
would deadlock; Trio raises ``RuntimeError`` instead).  Hand the work to
another thread (e.g. through a ``queue.Queue``) if it needs the client.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any, Callable, Iterable

import trio

from coordclient.client import Client
from coordclient.types import ConnState, Stat, WatchCallback, WatchEvent
from coordclient.watches import DEFAULT_WATCH_BUFFER, WatchStream
from coordclient.errors import ConnectionLossError

__all__ = ["SyncClient", "SyncWatch"]

_END = object()
_TIMEOUT = object()


class SyncClient:
    """The ``Client`` API, blocking.

    ::

        with SyncClient("h1:2181,h2:2181") as c:
            c.create("/jobs/j-", b"spec", sequential=True)
            data, stat = c.get("/config", watch=lambda ev: print(ev))

    Takes the same arguments as ``Client``.  Opening blocks until a session
    is established (or raises what ``Client`` raised); closing ends the
    session and joins the loop thread.
    """

    # -- recipes (blocking forms; see docs/recipes.md) ------------------------
    def lock(self, path: str, **kw: Any) -> Any:
        from coordclient.recipes.blocking import SyncLock
        return SyncLock(self, path, **kw)

    def rwlock(self, path: str, **kw: Any) -> Any:
        from coordclient.recipes.blocking import SyncReadWriteLock
        return SyncReadWriteLock(self, path, **kw)

    def semaphore(self, path: str, permits: int, **kw: Any) -> Any:
        from coordclient.recipes.blocking import SyncSemaphore
        return SyncSemaphore(self, path, permits, **kw)

    def election(self, path: str, identity: str, **kw: Any) -> Any:
        from coordclient.recipes.blocking import SyncElection
        return SyncElection(self, path, identity, **kw)

    def __init__(self, endpoints: Any, **client_kwargs: Any):
        self._endpoints = endpoints
        self._kwargs = client_kwargs
        self._client: Client | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "SyncClient":
        if self._thread is not None:
            raise RuntimeError("a SyncClient can be started only once")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="coordclient", daemon=True)
        self._thread.start()
        ready.wait()  # bounded: opening a Client gives up after its session timeout
        if self._token is None:
            self._thread.join()
            error, self._error = self._error, None
            raise error if error is not None else ConnectionLossError("client thread ended during startup")
        return self

    def close(self) -> None:
        """Close the session and stop the loop thread (idempotent)."""
        token, self._token = self._token, None
        if token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
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
            import anyio
            anyio.run(self._main, ready, backend="trio")
        except BaseException as exc:  # noqa: BLE001 - handed to the owning thread
            self._error = exc
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._stop = trio.Event()
        async with Client(self._endpoints, **self._kwargs) as client:
            self._client = client
            self._token = trio.lowlevel.current_trio_token()
            ready.set()
            await self._stop.wait()

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = self._token
        if token is None:
            raise ConnectionLossError("client is not open")
        try:
            return trio.from_thread.run(functools.partial(fn, *args, **kwargs), trio_token=token)
        except trio.RunFinishedError:
            raise ConnectionLossError("client is closed") from None

    def _run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        token = self._token
        if token is None:
            raise ConnectionLossError("client is not open")
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=token)
        except trio.RunFinishedError:
            raise ConnectionLossError("client is closed") from None

    # -- state (plain attribute reads are safe from any thread) -----------

    @property
    def client(self) -> Client:
        """The underlying async client (for use from the loop thread only)."""
        if self._client is None:
            raise ConnectionLossError("client is not open")
        return self._client

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

    def add_listener(self, fn: Callable[[ConnState], Any]) -> None:
        """``fn(state)`` runs in the loop thread on every state change."""
        self._run_sync(self.client.add_listener, fn)

    def remove_listener(self, fn: Callable[[ConnState], Any]) -> None:
        self._run_sync(self.client.remove_listener, fn)

    def wait_state(self, *states: ConnState, timeout: float | None = None) -> ConnState:
        """Block until the state is one of ``states``; ``TimeoutError`` after ``timeout``."""
        try:
            return self._run(self.client.wait_state, *states, timeout=timeout)
        except TimeoutError:
            raise TimeoutError(f"state still {self.state.value} after {timeout}s") from None

    # -- the API (see Client for semantics) -------------------------------

    def create(self, path: str, data: bytes = b"", *, ephemeral: bool = False, sequential: bool = False,
               make_parents: bool = False) -> str:
        return self._run(self.client.create, path, data, ephemeral=ephemeral, sequential=sequential,
                         make_parents=make_parents)

    def get(self, path: str, *, watch: WatchCallback | None = None, linearizable: bool = False) -> tuple[bytes, Stat]:
        return self._run(self.client.get, path, watch=watch, linearizable=linearizable)

    def exists(self, path: str, *, watch: WatchCallback | None = None, linearizable: bool = False) -> Stat | None:
        return self._run(self.client.exists, path, watch=watch, linearizable=linearizable)

    def children(self, path: str, *, watch: WatchCallback | None = None, stats: bool = False,
                 linearizable: bool = False) -> list[str] | list[tuple[str, Stat]]:
        return self._run(self.client.children, path, watch=watch, stats=stats, linearizable=linearizable)

    def set(self, path: str, data: bytes, *, version: int = -1) -> Stat:
        return self._run(self.client.set, path, data, version=version)

    def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> None:
        return self._run(self.client.delete, path, version=version, recursive=recursive)

    def multi(self, operations: Iterable[dict]) -> list[Any]:
        return self._run(self.client.multi, list(operations))

    def sync(self) -> None:
        return self._run(self.client.sync)

    def status(self) -> dict:
        return self._run(self.client.status)

    def watch(self, path: str, *, recursive: bool = False, start_zxid: int | None = None,
              buffer: int = DEFAULT_WATCH_BUFFER) -> "SyncWatch":
        """A persistent watch as a blocking iterator; use it as a context manager."""
        make = functools.partial(self.client.watch, path, recursive=recursive, start_zxid=start_zxid, buffer=buffer)
        return SyncWatch(self, self._run_sync(make))


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
    with trio.move_on_after(math.inf if timeout is None else timeout):
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return _END
    return _TIMEOUT
