"""Locks: exclusive, read/write, and counting (semaphore).

All share ``Participant``'s machinery (``_core.py``) and differ only in who
may enter and which single node a waiter watches.  Every kind of node in a
directory counts for every other kind, so mixing recipes on one path never
weakens exclusion: a ``Lock`` and a ``WriteLock`` on the same path exclude
each other, and a reader treats a ``Lock`` holder as a writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordclient.recipes._core import WATCH_CHILDREN, Entry, Participant

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Lock", "ReadLock", "ReadWriteLock", "Semaphore", "WriteLock"]


class Lock(Participant):
    """A distributed mutual-exclusion lock on ``path``::

        async with Lock(client, "/locks/db") as lock:
            await lock.fenced([ops.set("/db/config", data)])   # rejected by coord if we lost the lock
            ...                                               # cancelled if we lose the lock

    ``async with`` acquires (waiting as long as it takes), runs the body in
    a cancel scope that is cancelled when the lock is lost, releases, and
    then raises ``LockLostError`` if the lock was lost.  Without ``async
    with``: ``await lock.acquire(timeout=...)`` / ``try_acquire()`` return
    True once held, ``release()`` is idempotent, ``lost`` / ``wait_lost()``
    say whether the hold ended, ``guard()`` runs a body like ``async with``.

    ``fencing_token`` (an int) strictly increases from one holder to the
    next; ``fence()`` / ``fenced()`` make a write conditional on still
    holding the lock, checked by coord itself.

    Not re-entrant: acquiring a lock object that is held or being acquired,
    or acquiring any recipe on a path the calling task already holds or
    waits for through the same client, raises ``RecipeUsageError`` instead
    of waiting forever.  Separate tasks may of course contend for the same
    path through one client, each with its own ``Lock`` object.

    ``suspend_margin``: how long a lost connection is tolerated before the
    lock counts as lost (default: 1/6 of the session timeout; see
    docs/recipes.md for why).
    """

    kind = "lock"


class WriteLock(Lock):
    """The exclusive side of a ``ReadWriteLock``: waits for every earlier
    reader and writer."""

    kind = "write"


class ReadLock(Lock):
    """The shared side of a ``ReadWriteLock``: enters when no writer (or
    ``Lock``) is queued ahead of it, and watches the last such node."""

    kind = "read"

    def _decide(self, entries: list[Entry], me: int) -> str | None:
        writers = [e for e in entries[:me] if e.kind != "read"]
        return writers[-1].name if writers else None


class ReadWriteLock:
    """Many readers or one writer, in arrival order (a queued writer holds
    back later readers, so writers do not starve)::

        rw = ReadWriteLock(client, "/locks/catalog")
        async with rw.read_lock: ...
        async with rw.write_lock: ...

    ``read_lock`` and ``write_lock`` are ``Lock``-like objects with the same
    rules; each is one participation, so concurrent readers in one process
    each need their own ``ReadWriteLock`` (or ``ReadLock``) object.  Upgrading
    (taking the write lock while holding the read lock, in the same task)
    would deadlock and raises ``RecipeUsageError``.
    """

    def __init__(self, client: "Client", path: str, *, suspend_margin: float | None = None):
        self.path = path
        self.read_lock = ReadLock(client, path, suspend_margin=suspend_margin)
        self.write_lock = WriteLock(client, path, suspend_margin=suspend_margin)


class Semaphore(Lock):
    """One of ``permits`` concurrent holders of ``path`` (every participant
    must use the same ``permits``)::

        async with Semaphore(client, "/limits/crawler", 4) as permit:
            ...

    The first ``permits`` nodes in the queue hold a permit.  Holders release
    in any order, so waiters cannot each watch "the node ahead": the first
    waiter watches the queue's child list (one wake per change, and only
    for it), every later waiter watches the node just ahead, and a holder
    entering from the queue marks its node (a data change) to hand the
    "first waiter" role to its successor.  A release therefore wakes one
    waiter.  ``fencing_token`` is unique per holder and increases with
    arrival order, but holders overlap, so it fences only per permit.
    """

    kind = "permit"

    def __init__(self, client: "Client", path: str, permits: int, *, suspend_margin: float | None = None):
        if not isinstance(permits, int) or isinstance(permits, bool) or permits < 1:
            raise ValueError(f"permits must be an int >= 1, not {permits!r}")
        super().__init__(client, path, suspend_margin=suspend_margin)
        self.permits = permits

    def _decide(self, entries: list[Entry], me: int) -> str | None:
        if me < self.permits:
            return None
        if me == self.permits:
            return WATCH_CHILDREN
        return entries[me - 1].name

    async def _on_enter(self, entries: list[Entry], me: int) -> None:
        # A successor may be watching us as "the node ahead" (it listed the
        # queue while we were still waiting): wake it to become first waiter.
        # Nodes only join at the end, so if none follows us now, none that
        # will ever see us waiting exists.
        if me + 1 < len(entries) and self.node is not None:
            await self.client.set(self.node, b"held")
