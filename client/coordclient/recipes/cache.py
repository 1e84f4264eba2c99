"""Local mirrors of a subtree (``TreeCache``) or a node (``NodeCache``),
after Curator's caches, driven by the SDK's resumable watches.

Why they always converge: the persistent watch is opened *before* the first
read, from the client's last zxid, and every event it delivers makes the
cache re-read the node it names (a deletion drops the node and its subtree).
The watch misses nothing across reconnects, and a read made after an event
arrived reflects at least that event (reads never go back in time), so once
the events stop, every cached node equals what coord holds.  If the server's
history cannot cover a disconnection (``resync``) the whole tree is read
again.  Events that arrive together are coalesced: each path is re-read once.

Callbacks (``listen``) receive a ``CacheEvent`` after the cache has applied
the change: ``added``, ``updated``, ``removed`` per node, and ``initialized``
once after the first full read (and after each resync reload).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Union

import anyio
import anyio.abc

from coordclient.errors import CoordError, NoNodeError
from coordclient.protocol import parent_of
from coordclient.recipes._core import RecipeUsageError
from coordclient.types import RESYNC, Stat
from coordclient.watches import WatchStream

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["CacheEvent", "NodeCache", "NodeData", "TreeCache"]

log = logging.getLogger("coordclient.recipes")

ADDED, UPDATED, REMOVED, INITIALIZED = "added", "updated", "removed", "initialized"
# Events applied per batch before callbacks run and new events are read.
BATCH = 512


@dataclass(frozen=True, slots=True)
class NodeData:
    """A cached node: its path, data and stat."""

    path: str
    data: bytes
    stat: Stat


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """``type``: added | updated | removed | initialized; ``node``: the node
    (its last known state for ``removed``; None for ``initialized``)."""

    type: str
    node: NodeData | None


Listener = Callable[[CacheEvent], Union[None, Awaitable[None]]]


class TreeCache:
    """A mirror of ``path`` and everything below it::

        async with TreeCache(client, "/config") as cache:
            cache.listen(lambda ev: print(ev.type, ev.node and ev.node.path))
            await cache.initialized()
            cache.get("/config/db")          # NodeData, or None
            cache.children("/config")        # sorted child names
            snapshot = cache.snapshot()      # {path: NodeData}, a copy

    ``max_depth`` limits the mirror to that many levels below ``path``
    (0: the node alone).  The cache runs a task in its own task group while
    the ``async with`` block lasts.
    """

    def __init__(self, client: "Client", path: str, *, max_depth: int | None = None):
        self.client = client
        self.path = path.rstrip("/") or "/"
        self.max_depth = max_depth
        self._nodes: dict[str, NodeData] = {}
        self._listeners: list[Listener] = []
        self._initialized: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: Any = None
        self.error: BaseException | None = None
        self.version = 0  # bumped on every applied change

    # -- reading the mirror ---------------------------------------------------

    def get(self, path: str) -> NodeData | None:
        return self._nodes.get(path)

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in self._nodes if p.startswith(prefix) and "/" not in p[len(prefix):])

    def snapshot(self) -> dict[str, NodeData]:
        return dict(self._nodes)

    def __contains__(self, path: str) -> bool:
        return path in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def listen(self, callback: Listener) -> None:
        """``callback(CacheEvent)`` (plain or async) after each applied change."""
        self._listeners.append(callback)

    async def initialized(self) -> None:
        """Wait for the first full read."""
        assert self._initialized is not None, "use the cache in `async with`"
        await self._initialized.wait()

    async def wait_changed(self) -> None:
        """Wait for the next applied change."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> "TreeCache":
        if self._tg is not None:
            raise RecipeUsageError("a cache can be started only once")
        self._initialized = anyio.Event()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(*exc_info)

    # -- the mirror's task -------------------------------------------------------

    def _depth(self, path: str) -> int:
        if path == self.path:
            return 0
        rel = path[len(self.path):] if self.path != "/" else path
        return rel.count("/")

    def _within(self, path: str) -> bool:
        if path != self.path and not path.startswith(self.path.rstrip("/") + "/"):
            return False
        return self.max_depth is None or self._depth(path) <= self.max_depth

    async def _run(self) -> None:
        try:
            while True:
                stream = self.client.watch(self.path, recursive=self.max_depth != 0,
                                           start_zxid=self.client.last_zxid)
                async with stream:
                    await self._reload()
                    assert self._initialized is not None
                    self._initialized.set()
                    await self._emit([CacheEvent(INITIALIZED, None)])
                    if await self._follow(stream):
                        return
        except CoordError as exc:  # session expired: the mirror stops where it is
            self.error = exc
            log.info("cache of %s stopped: %s", self.path, exc)

    async def _follow(self, stream: WatchStream) -> bool:
        """Apply events until the stream ends (True) or resyncs (False)."""
        async for first in stream:
            batch = [first]
            while len(batch) < BATCH:  # take what is already buffered, without waiting
                event = stream._w.events.get_nowait()
                if event is None:
                    break
                batch.append(event)
            if any(e.type == RESYNC for e in batch):
                return False
            paths: dict[str, None] = {}
            for e in batch:
                if self._within(e.path):
                    paths[e.path] = None
                    if e.type in ("created", "deleted") and e.path != self.path:
                        parent = parent_of(e.path)
                        if self._within(parent):
                            paths[parent] = None
            events: list[CacheEvent] = []
            for path in paths:
                await self._refresh(path, events, recurse=False)
            await self._emit(events)
        return True

    async def _reload(self) -> None:
        """Read the whole tree again; emit the differences."""
        events: list[CacheEvent] = []
        seen: set[str] = set()
        await self._refresh(self.path, events, recurse=True, seen=seen)
        for path in [p for p in self._nodes if p not in seen]:
            events.append(CacheEvent(REMOVED, self._nodes.pop(path)))
        await self._emit(events)

    async def _refresh(self, path: str, events: list[CacheEvent], *, recurse: bool,
                       seen: set[str] | None = None) -> None:
        """Re-read ``path`` (and, when a node appears or ``recurse``, its children)."""
        try:
            data, stat = await self.client.get(path)
        except NoNodeError:
            self._drop(path, events)
            return
        node = NodeData(path, data, stat)
        old = self._nodes.get(path)
        self._nodes[path] = node
        if seen is not None:
            seen.add(path)
        if old is None:
            events.append(CacheEvent(ADDED, node))
        elif old.stat.mzxid != stat.mzxid or old.stat.cversion != stat.cversion or old.data != data:
            if old.stat.mzxid != stat.mzxid or old.data != data:
                events.append(CacheEvent(UPDATED, node))
        if self.max_depth is not None and self._depth(path) >= self.max_depth:
            return
        if old is None or recurse or (old.stat.cversion != stat.cversion):
            try:
                kids = await self.client.children(path)
            except NoNodeError:
                self._drop(path, events)
                return
            base = path.rstrip("/")
            present = {f"{base}/{k}" for k in kids}
            for gone in [c for c in self._direct_children(path) if c not in present]:
                self._drop(gone, events)
            for child in sorted(present):
                if recurse or child not in self._nodes:
                    await self._refresh(child, events, recurse=recurse, seen=seen)

    def _direct_children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [p for p in self._nodes if p.startswith(prefix) and "/" not in p[len(prefix):]]

    def _drop(self, path: str, events: list[CacheEvent]) -> None:
        prefix = path.rstrip("/") + "/"
        for p in sorted((p for p in self._nodes if p == path or p.startswith(prefix)), reverse=True):
            events.append(CacheEvent(REMOVED, self._nodes.pop(p)))

    async def _emit(self, events: list[CacheEvent]) -> None:
        if not events:
            return
        self.version += 1
        for event in events:
            for callback in list(self._listeners):
                try:
                    result = callback(event)
                    if inspect.iscoroutine(result):  # (a returned task handle is not awaited)
                        await result
                except Exception:  # noqa: BLE001 - a listener bug must not stop the mirror
                    log.exception("cache listener %r failed", callback)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


class NodeCache(TreeCache):
    """A mirror of one node (Curator's ``NodeCache``)::

        async with NodeCache(client, "/config/db") as cache:
            await cache.initialized()
            cache.current        # NodeData, or None while the node does not exist
    """

    def __init__(self, client: "Client", path: str):
        super().__init__(client, path, max_depth=0)

    @property
    def current(self) -> NodeData | None:
        return self._nodes.get(self.path)
