"""The recipes for blocking code: thin wrappers that run the async recipe
objects in a ``SyncClient``'s loop thread.

A thread cannot be cancelled the way an async body is, so a blocking holder
learns of a lost lock by asking (``lock.lost``, ``lock.wait_lost()``), by a
fenced write failing with ``LockLostError``, or when leaving ``with lock:``
(which raises ``LockLostError`` if the lock was lost meanwhile).  Guard every
write that must not come from a stale holder with ``fenced()``.

Re-entrancy is checked per thread: a thread acquiring a path it already
holds or waits for through the same client gets ``RecipeUsageError``.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import TYPE_CHECKING, Any, Iterable

import anyio

from coordclient.recipes._core import Participant
from coordclient.recipes.election import Campaign, Election, Leader, LeaderObserver
from coordclient.recipes.locks import Lock, ReadWriteLock, Semaphore

if TYPE_CHECKING:
    from coordclient.sync import SyncClient

__all__ = ["SyncCampaign", "SyncElection", "SyncLeaderObserver", "SyncLock", "SyncReadWriteLock", "SyncSemaphore"]

_END = object()
_TIMEOUT = object()


def _make(client: "SyncClient", cls: type, *args: Any, **kwargs: Any) -> Any:
    """Build an async recipe object in the loop thread (it owns Trio state)."""
    return client._run_sync(functools.partial(cls, client.client, *args, **kwargs))


class SyncLock:
    """A ``Lock`` for blocking code (see ``Lock`` for the semantics)::

        with SyncLock(client, "/locks/report") as lock:
            lock.fenced([ops.set("/reports/today", data)])
    """

    def __init__(self, client: "SyncClient", path: str, *, suspend_margin: float | None = None):
        self._init(client, _make(client, Lock, path, suspend_margin=suspend_margin))

    def _init(self, client: "SyncClient", participant: Participant) -> None:
        self._sync = client
        self._p = participant

    @classmethod
    def _wrap(cls, client: "SyncClient", participant: Participant) -> Any:
        self = cls.__new__(cls)
        self._init(client, participant)
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._p!r}>"

    @property
    def path(self) -> str:
        return self._p.path

    @property
    def node(self) -> str | None:
        return self._p.node

    @property
    def fencing_token(self) -> int | None:
        return self._p.fencing_token

    @property
    def held(self) -> bool:
        return self._sync._run_sync(lambda: self._p.held)

    @property
    def lost(self) -> bool:
        return self._sync._run_sync(lambda: self._p.lost)

    @property
    def lost_reason(self) -> str | None:
        return self._sync._run_sync(lambda: self._p.lost_reason)

    def acquire(self, timeout: float | None = None, *, blocking: bool = True) -> bool:
        return self._sync._run(self._p._acquire, timeout, blocking, ("thread", threading.get_ident()))

    def try_acquire(self) -> bool:
        return self.acquire(blocking=False)

    def release(self) -> None:
        self._sync._run(self._p.release)

    def wait_lost(self, timeout: float | None = None) -> str | None:
        """Block until the hold is lost and return why; None after ``timeout``."""
        return self._sync._run(_wait_lost, self._p, timeout)

    def fence(self) -> dict:
        return self._sync._run_sync(self._p.fence)

    def fenced(self, operations: Iterable[dict]) -> list[Any]:
        return self._sync._run(self._p.fenced, list(operations))

    def __enter__(self) -> Any:
        self.acquire()
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        error = self._sync._run_sync(lambda: self._p._lost_exc() if self._p.lost else None)
        self.release()
        if error is not None and exc_type is None:
            raise error


async def _wait_lost(p: Participant, timeout: float | None) -> str | None:
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        return await p.wait_lost()
    return None


class SyncSemaphore(SyncLock):
    """A ``Semaphore`` (one permit of ``permits``) for blocking code."""

    def __init__(self, client: "SyncClient", path: str, permits: int, *, suspend_margin: float | None = None):
        self._init(client, _make(client, Semaphore, path, permits, suspend_margin=suspend_margin))


class SyncReadWriteLock:
    """A ``ReadWriteLock`` for blocking code: ``with rw.read_lock: ...``."""

    def __init__(self, client: "SyncClient", path: str, *, suspend_margin: float | None = None):
        rw = _make(client, ReadWriteLock, path, suspend_margin=suspend_margin)
        self.path = path
        self.read_lock = SyncLock._wrap(client, rw.read_lock)
        self.write_lock = SyncLock._wrap(client, rw.write_lock)


class SyncCampaign(SyncLock):
    """A candidacy (``SyncElection.campaign()``); a ``SyncLock`` while leading."""

    @property
    def identity(self) -> str:
        return self._p.identity  # type: ignore[attr-defined]


class SyncElection:
    """An ``Election`` for blocking code::

        e = SyncElection(client, "/election/cron", "host-a")
        with e.campaign() as term:       # blocks until we lead
            run(term.fencing_token)      # poll term.lost, or use term.fenced(...)
    """

    def __init__(self, client: "SyncClient", path: str, identity: str, *, suspend_margin: float | None = None):
        self._sync = client
        self._e: Election = _make(client, Election, path, identity, suspend_margin=suspend_margin)

    @property
    def path(self) -> str:
        return self._e.path

    @property
    def identity(self) -> str:
        return self._e.identity

    def campaign(self) -> SyncCampaign:
        campaign: Campaign = self._sync._run_sync(self._e.campaign)
        return SyncCampaign._wrap(self._sync, campaign)

    def resign(self) -> None:
        self._sync._run(self._e.resign)

    def leader(self) -> str | None:
        return self._sync._run(self._e.leader)

    def leader_info(self) -> Leader | None:
        return self._sync._run(self._e.leader_info)

    def observe(self) -> "SyncLeaderObserver":
        return SyncLeaderObserver(self._sync, self._sync._run_sync(self._e.observe))


class SyncLeaderObserver:
    """Blocking view of ``LeaderObserver``: iterate, or ``get(timeout)``;
    use it as a context manager (or call ``close()``)."""

    def __init__(self, client: "SyncClient", observer: LeaderObserver):
        self._sync = client
        self._o = observer

    def __enter__(self) -> "SyncLeaderObserver":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sync._run(self._o.aclose)

    def get(self, timeout: float | None = None) -> Leader | None:
        """The next leader (None: no leader); ``TimeoutError`` after
        ``timeout``; ``StopIteration`` once closed."""
        result = self._sync._run(_next_leader, self._o, timeout)
        if result is _TIMEOUT:
            raise TimeoutError(f"no leadership change on {self._o.path} within {timeout}s")
        if result is _END:
            raise StopIteration
        return result

    def __iter__(self) -> "SyncLeaderObserver":
        return self

    def __next__(self) -> Leader | None:
        return self.get()


async def _next_leader(observer: LeaderObserver, timeout: float | None) -> object:
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        try:
            return await observer.__anext__()
        except StopAsyncIteration:
            return _END
    return _TIMEOUT
