"""The client's watch machinery: records of server-side watches that survive
reconnects, one-shot watches, and persistent ``WatchStream``s.

A watch is a client-side record re-registered on each new connection with
``from`` = the last zxid the old connection delivered; the protocol then
replays exactly the events that were missed.  This module knows nothing of
sessions or retries: the client drives it through ``WatchRegistry`` (which
watches to re-register, which to fail) and ``WatchHost`` (register and
unregister a persistent watch with the client's retrying calls).
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any, Callable, Protocol

import anyio

from coordclient import messages
from coordclient.errors import CoordError
from coordclient.protocol import Err
from coordclient.types import RESYNC, WatchCallback, WatchEvent

if TYPE_CHECKING:
    from coordclient.connection import Connection

__all__ = ["DEFAULT_WATCH_BUFFER", "WatchHost", "WatchOverflowError", "WatchRegistry", "WatchStream"]

log = logging.getLogger("coordclient.client")

DEFAULT_WATCH_BUFFER = 1024


class WatchOverflowError(CoordError):
    """A persistent watch's buffer filled up because the application did not
    consume it; the watch was dropped rather than buffered without bound."""

    code = Err.SYSTEM_ERROR


class WatchHost(Protocol):
    """What a ``WatchStream`` needs from its client."""

    async def _start_persistent(self, w: "PersistentWatch", start_zxid: int | None) -> None: ...

    async def _stop_persistent(self, w: "PersistentWatch") -> None: ...


class WatchRegistry:
    """The watches a client keeps, and those waiting for a new connection.

    ``spawn(callback, event)`` runs a one-shot watch's callback (the client
    starts it as a task of its own).
    """

    def __init__(self, spawn: Callable[[WatchCallback, WatchEvent], None]):
        self.spawn = spawn
        self.live: set[Watch] = set()
        self.orphans: list[Watch] = []  # bound to a lost connection, to re-register

    def __len__(self) -> int:
        return len(self.live)

    def __bool__(self) -> bool:
        return bool(self.live)

    def add(self, w: "Watch") -> None:
        self.live.add(w)

    def discard(self, w: "Watch") -> None:
        self.live.discard(w)

    def connection_lost(self, conn: "Connection") -> None:
        """``conn`` died: its watches choose where to resume and wait for the next one."""
        for w in self.live:
            if w.conn is conn:
                w.resume(conn)
                self.orphans.append(w)

    def take_orphans(self) -> list["Watch"]:
        orphans, self.orphans = self.orphans, []
        return [w for w in orphans if not w.done]

    def finish_all(self, error: Callable[["Watch"], CoordError | None] = lambda w: None) -> None:
        for w in list(self.live):
            w.finish(error(w))
        self.orphans.clear()


class Watch:
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

    def __init__(self, registry: WatchRegistry, kind: str, path: str, recursive: bool = False):
        self.registry = registry
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

    def resume(self, conn: "Connection") -> None:
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
        return messages.watch(self.path, self.kind, self.recursive, self.from_zxid)

    def claim(self, conn: "Connection", wid: int) -> "Watch | None":
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

    def on_event(self, frame: dict) -> bool:
        raise NotImplementedError

    def finish(self, error: CoordError | None = None) -> None:
        self.done = True
        self.registry.discard(self)


class OneShotWatch(Watch):
    """A watch set by a read (``watch=callback``): fires once, then is gone.

    A ``resync`` also fires it (the application must re-read anyway), and
    the server-side registration, which a resync leaves in place, is removed.
    """

    def __init__(self, registry: WatchRegistry, kind: str, path: str, callback: WatchCallback):
        super().__init__(registry, kind, path)
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
        self.registry.spawn(self.callback, event)
        return True

    def finish(self, error: CoordError | None = None) -> None:
        if error is not None and not self.done:
            log.debug("one-shot watch on %s dropped: %s", self.path, error)
        super().finish(error)


def oneshot_claim(registry: WatchRegistry, kind: str, path: str, callback: WatchCallback | None,
                  alive: Callable[[], bool]) -> Any:
    """The ``claim`` for a read that sets a one-shot watch (None: no watch).
    The record is created only when the server confirms the watch, and only
    while ``alive()`` (the session is usable)."""
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError("watch must be a callable taking a WatchEvent")

    def claim(conn: "Connection", wid: int) -> OneShotWatch | None:
        if not alive():
            return None
        w = OneShotWatch(registry, kind, path, callback)
        w.claim(conn, wid)
        registry.add(w)
        return w

    return claim


class EventBuffer:
    """A bounded FIFO of events with one consumer: ``put`` never blocks (it
    says whether there was room), ``get`` waits, and after ``close`` the
    consumer still gets what was buffered, then ``anyio.EndOfStream``."""

    def __init__(self, size: int):
        self.size = size
        self._items: collections.deque[WatchEvent] = collections.deque()
        self._waiter: anyio.Event | None = None
        self.closed = False

    def put(self, event: WatchEvent) -> bool:
        if len(self._items) >= self.size:
            return False
        self._items.append(event)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set()

    def get_nowait(self) -> WatchEvent | None:
        """The next buffered event, or None if none is buffered."""
        return self._items.popleft() if self._items else None

    async def get(self) -> WatchEvent:
        while not self._items:
            if self.closed:
                raise anyio.EndOfStream
            if self._waiter is None:
                self._waiter = anyio.Event()
            await self._waiter.wait()
        return self._items.popleft()


class PersistentWatch(Watch):
    """The state behind a ``WatchStream``: a bounded buffer of events."""

    def __init__(self, registry: WatchRegistry, path: str, recursive: bool, buffer: int):
        super().__init__(registry, "persistent", path, recursive)
        self.events = EventBuffer(buffer)
        self.error: CoordError | None = None

    def on_event(self, frame: dict) -> bool:
        if self.done:
            return True
        event = self.event_from(frame)
        if event is None:
            return False
        if not self.events.put(event):
            if self.conn is not None and self.wid is not None:
                self.conn.send_unwatch(self.wid)
            self.finish(WatchOverflowError(f"watch on {self.path} dropped: {self.events.size} events unconsumed",
                                           path=self.path))
            return True
        return False

    def finish(self, error: CoordError | None = None) -> None:
        if not self.done and error is not None:
            self.error = error
        super().finish(error)
        self.events.close()


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

    def __init__(self, host: WatchHost, registry: WatchRegistry, path: str, recursive: bool, buffer: int,
                 start_zxid: int | None):
        self._host = host
        self._w = PersistentWatch(registry, path, recursive, buffer)
        self._start_zxid = start_zxid
        self._started = False

    @property
    def path(self) -> str:
        return self._w.path

    @property
    def recursive(self) -> bool:
        return self._w.recursive

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> "WatchStream":
        """Register the watch (``async with`` does this; so does iterating
        without it, in which case ``aclose()`` it when done)."""
        if not self._started:
            self._started = True
            await self._host._start_persistent(self._w, self._start_zxid)
        return self

    async def aclose(self) -> None:
        """Unregister the watch; pending iteration ends."""
        await self._host._stop_persistent(self._w)

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
            return await self._w.events.get()
        except anyio.EndOfStream:
            if self._w.error is not None:
                raise self._w.error from None
            raise StopAsyncIteration from None
