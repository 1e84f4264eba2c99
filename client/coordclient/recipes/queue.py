"""Distributed queues over sequential nodes (kazoo's ``Queue`` and
``LockingQueue``, Curator's ``DistributedQueue``).

``Queue``: ``put`` creates a persistent sequential node under the queue's
path, so coord's sequence numbers give FIFO order.  ``get`` takes the
lowest entry: it reads it, then deletes it with the version it read; of
several consumers racing for one entry exactly one delete succeeds (the
others see NoNode and move to the next), and only that consumer returns the
item.  An empty queue is waited on with a child watch.

``LockingQueue``: an item is taken, processed, then consumed.  Taking it
creates an *ephemeral* ``taken/<entry>`` node: while it exists nobody else
can take the item; ``consume()`` deletes the entry and the taken node in one
multi (checked, so a taker that lost its claim cannot consume); ``release()``
puts it back.  If the taker's session dies, coord deletes the taken node and
the item is available again.  A taken item is an ownership: its body can run
under ``guard()`` (cancelled if the claim is lost) and ``fenced()`` writes are
rejected by coord once it is.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

import anyio

from coordclient.errors import (
    BadVersionError,
    ConnectionLossError,
    MultiError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordclient.messages import ops
from coordclient.recipes._core import check_recipe_path
from coordclient.recipes._hold import Hold
from coordclient.types import WatchEvent

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["LockingQueue", "Queue", "QueueItem"]

ENTRY = "entry-"
ENTRIES, TAKEN = "entries", "taken"


def _entry_names(kids: Iterable[str]) -> list[str]:
    return sorted((k for k in kids if k.startswith(ENTRY)), key=lambda k: k[-10:])


class _ChildWaiter:
    """Wait for a change of a node's child list (one-shot watch per wait)."""

    def __init__(self, client: "Client", path: str):
        self.client, self.path = client, path

    async def children(self) -> tuple[list[str], anyio.Event]:
        fired = anyio.Event()

        def fire(_: WatchEvent) -> None:
            fired.set()

        while True:
            try:
                return await self.client.children(self.path, watch=fire), fired
            except NoNodeError:
                try:
                    await self.client.create(self.path, make_parents=True)
                except NodeExistsError:
                    pass


class Queue:
    """A FIFO queue of byte strings::

        q = Queue(client, "/queues/jobs")
        await q.put(b"job 1")
        data = await q.get()            # waits while empty; None after ``timeout``
    """

    def __init__(self, client: "Client", path: str):
        self.client = client
        self.path = check_recipe_path(path)
        self._waiter = _ChildWaiter(client, self.path)

    async def put(self, data: bytes) -> str:
        """Append an item; the node created for it."""
        return await self.client.create(f"{self.path}/{ENTRY}", data, sequential=True, make_parents=True)

    async def put_all(self, items: Iterable[bytes]) -> list[str]:
        """Append several items atomically, in order."""
        items = list(items)
        await self._ensure()
        return await self.client.multi([ops.create(f"{self.path}/{ENTRY}", d, sequential=True) for d in items])

    async def _ensure(self) -> None:
        if await self.client.exists(self.path) is None:
            try:
                await self.client.create(self.path, make_parents=True)
            except NodeExistsError:
                pass

    async def length(self) -> int:
        try:
            return len(_entry_names(await self.client.children(self.path)))
        except NoNodeError:
            return 0

    async def get(self, timeout: float | None = None) -> bytes | None:
        """Take the oldest item (waiting while the queue is empty); None if
        ``timeout`` passed first."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                names, fired = await self._waiter.children()
                for name in _entry_names(names):
                    data = await self._take(f"{self.path}/{name}")
                    if data is not None:
                        return data
                if not _entry_names(names):
                    with anyio.move_on_after(self.client.request_timeout):
                        await fired.wait()
        return None

    async def _take(self, node: str) -> bytes | None:
        try:
            data, stat = await self.client.get(node)
            await self.client.delete(node, version=stat.version)
            return data
        except (NoNodeError, BadVersionError):
            return None  # another consumer took it


@dataclass(eq=False)
class QueueItem:
    """An item taken from a ``LockingQueue``: ``data``, and the claim on it
    (``fencing_token``, ``fence()``, ``fenced()``, ``guard()``, ``lost``)."""

    queue: "LockingQueue"
    data: bytes
    entry: str
    hold: Hold
    done: bool = False

    @property
    def fencing_token(self) -> int:
        return self.hold.fencing_token

    @property
    def lost(self) -> bool:
        return self.hold.lost

    def fence(self) -> dict:
        return self.hold.fence()

    async def fenced(self, operations: Iterable[dict]) -> list[Any]:
        return await self.hold.fenced(operations)

    def guard(self) -> Any:
        return self.hold.guard()

    async def consume(self, operations: Iterable[dict] = ()) -> None:
        """Remove the item for good (with ``operations`` in the same
        transaction, e.g. recording the result); LockLostError if the claim
        was lost meanwhile (the item is then someone else's)."""
        if self.done:
            return
        try:
            await self.hold.fenced([*operations, ops.delete(self.entry), ops.delete(self.hold.node)])
        finally:
            self.done = True
            self.hold.stop()

    async def release(self) -> None:
        """Give the item back (it goes to the next taker)."""
        if self.done:
            return
        self.done = True
        self.hold.stop()
        await _delete_quietly(self.queue.client, self.hold.node)


async def _delete_quietly(client: "Client", node: str) -> None:
    try:
        await client.delete(node)
    except (NoNodeError, SessionExpiredError):
        pass  # gone already (a session end deletes an ephemeral claim anyway)


class LockingQueue:
    """A queue whose items come back if their taker dies::

        q = LockingQueue(client, "/queues/jobs")
        await q.put(b"job")
        async with q.take() as item:        # waits for an item; the body is
            await process(item.data)        # cancelled if the claim is lost
        # leaving the block consumes the item (releases it on an exception)

    Or by hand: ``item = await q.get(timeout)``, then ``await
    item.consume()`` or ``await item.release()``.
    """

    def __init__(self, client: "Client", path: str, *, suspend_margin: float | None = None):
        self.client = client
        self.path = check_recipe_path(path)
        self.entries = f"{self.path}/{ENTRIES}"
        self.taken = f"{self.path}/{TAKEN}"
        self._margin = suspend_margin
        self._entries = _ChildWaiter(client, self.entries)
        self._taken = _ChildWaiter(client, self.taken)

    async def put(self, data: bytes) -> str:
        return await self.client.create(f"{self.entries}/{ENTRY}", data, sequential=True, make_parents=True)

    async def length(self) -> int:
        """Items not consumed yet (taken ones included)."""
        try:
            return len(_entry_names(await self.client.children(self.entries)))
        except NoNodeError:
            return 0

    async def get(self, timeout: float | None = None) -> QueueItem | None:
        """Take the oldest free item (waiting while there is none); None on timeout."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                taken, taken_fired = await self._taken.children()
                names, entries_fired = await self._entries.children()
                for name in _entry_names(names):
                    if name in taken:
                        continue
                    item = await self._claim(name)
                    if item is not None:
                        return item
                # wait for a new entry or a claim going away
                with anyio.move_on_after(self.client.request_timeout):
                    async with anyio.create_task_group() as tg:
                        async def wait(ev: anyio.Event) -> None:
                            await ev.wait()
                            tg.cancel_scope.cancel()

                        tg.start_soon(wait, taken_fired)
                        tg.start_soon(wait, entries_fired)
        return None

    async def _claim(self, name: str) -> QueueItem | None:
        """Claim entry ``name``: an ephemeral taken node, created only if the
        entry still exists (one transaction); None if someone was first."""
        entry, claim = f"{self.entries}/{name}", f"{self.taken}/{name}"
        try:
            with anyio.CancelScope(shield=True):  # never leave a claim behind without knowing it
                await self.client.multi([ops.check(entry, -1), ops.create(claim, b"", ephemeral=True)])
        except MultiError as exc:
            if isinstance(exc.cause, NoNodeError) and exc.index == 1:
                await self._ensure(self.taken)
                return await self._claim(name)
            return None  # taken meanwhile, or consumed
        except (ConnectionLossError, OperationTimeoutError):
            pass  # the outcome is unknown: look
        stat = await self.client.exists(claim)
        if stat is None or stat.ephemeral_owner != self.client.session_id:
            return None
        data = b""
        try:
            data = (await self.client.get(entry))[0]
        except NoNodeError:  # consumed under us (by an operator): give the claim back
            await _delete_quietly(self.client, claim)
            return None
        hold = Hold(self.client, claim, stat.czxid, suspend_margin=self._margin)
        await hold.start()
        return QueueItem(self, data, entry, hold)

    async def _ensure(self, path: str) -> None:
        try:
            await self.client.create(path, make_parents=True)
        except NodeExistsError:
            pass

    @asynccontextmanager
    async def take(self, timeout: float | None = None) -> AsyncIterator[QueueItem]:
        item = await self.get(timeout)
        if item is None:
            raise TimeoutError(f"no item in {self.path} within {timeout}s")
        try:
            async with item.guard():
                yield item
        except BaseException:
            with anyio.CancelScope(shield=True):
                await item.release()
            raise
        with anyio.CancelScope(shield=True):
            await item.consume()
