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
import inspect
import math
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import anyio

from coordclient.errors import ConnectionLossError
from coordclient.recipes._core import Participant
from coordclient.recipes.barrier import Barrier, DoubleBarrier
from coordclient.recipes.cache import NodeCache, NodeData, TreeCache
from coordclient.recipes.counter import Counter
from coordclient.recipes.election import Campaign, Election, Leader, LeaderObserver
from coordclient.recipes.group import Group, Member, Membership
from coordclient.recipes.lease import Lease
from coordclient.recipes.locks import Lock, ReadWriteLock, Semaphore
from coordclient.recipes.queue import LockingQueue, Queue
from coordclient.recipes.ring import RingMember

if TYPE_CHECKING:
    from coordclient.sync import SyncClient

__all__ = [
    "SyncBarrier",
    "SyncCampaign",
    "SyncCounter",
    "SyncDoubleBarrier",
    "SyncElection",
    "SyncGroup",
    "SyncGroupView",
    "SyncLeaderObserver",
    "SyncLease",
    "SyncLeaseGrant",
    "SyncLock",
    "SyncLockingQueue",
    "SyncNodeCache",
    "SyncQueue",
    "SyncQueueItem",
    "SyncReadWriteLock",
    "SyncRegistration",
    "SyncRingMember",
    "SyncSemaphore",
    "SyncTreeCache",
]

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


# -- the newer recipes -----------------------------------------------------------
#
# Their blocking forms are derived from the async classes: each method below
# is the async method run in the loop thread, with its signature and
# docstring (``_blocking_method``), so the two cannot drift apart.  Objects
# that live in an ``async with`` (caches, views, ring members) are hosted by
# a task of their own in the loop thread while the blocking ``with`` lasts.


def _blocking_method(cls: type, name: str, wrap: Any = None) -> Any:
    method = getattr(cls, name)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._sync._run(getattr(self._obj, name), *args, **kwargs)
        return wrap(self._sync, result) if wrap is not None and result is not None else result

    call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return call


class _Wrapped:
    """Base of the derived blocking wrappers: ``_obj`` lives in the loop thread."""

    _async_cls: type = object

    def __init__(self, client: "SyncClient", *args: Any, **kwargs: Any):
        self._sync = client
        self._obj = _make(client, self._async_cls, *args, **kwargs)

    @classmethod
    def _wrap(cls, client: "SyncClient", obj: Any) -> Any:
        self = cls.__new__(cls)
        self._sync, self._obj = client, obj
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._obj!r}>"

    @property
    def path(self) -> str:
        return self._obj.path


def _derive(cls: type, async_cls: type, methods: Iterable[str], wraps: dict[str, Any] | None = None) -> type:
    cls._async_cls = async_cls

    def __init__(self: Any, client: "SyncClient", *args: Any, **kwargs: Any) -> None:
        _Wrapped.__init__(self, client, *args, **kwargs)

    __init__.__signature__ = inspect.signature(async_cls.__init__)  # type: ignore[attr-defined]
    __init__.__doc__ = async_cls.__init__.__doc__
    cls.__init__ = __init__  # type: ignore[misc]
    for name in methods:
        setattr(cls, name, _blocking_method(async_cls, name, (wraps or {}).get(name)))
    return cls


class SyncBarrier(_Wrapped):
    """A ``Barrier`` for blocking code: ``create()``, ``remove()``, ``wait(timeout)``."""


class SyncDoubleBarrier(_Wrapped):
    """A ``DoubleBarrier`` for blocking code: ``enter(timeout)``, ``leave(timeout)``."""


class SyncCounter(_Wrapped):
    """A ``Counter`` for blocking code: ``get()``, ``add(n)``, ``compare_and_set(a, b)``..."""


class SyncQueue(_Wrapped):
    """A ``Queue`` for blocking code: ``put(data)``, ``get(timeout)``..."""


_derive(SyncBarrier, Barrier, ["create", "remove", "wait"])
_derive(SyncDoubleBarrier, DoubleBarrier, ["enter", "leave"])
_derive(SyncCounter, Counter, ["get", "add", "subtract", "compare_and_set", "set"])
_derive(SyncQueue, Queue, ["put", "put_all", "length", "get"])


class SyncHold(_Wrapped):
    """Blocking view of an ownership (a taken queue item, a lease grant):
    ``fencing_token``, ``lost``, ``wait_lost(timeout)``, ``fence()``,
    ``fenced(ops)``.  A thread cannot be cancelled: poll ``lost`` or fence
    the writes that matter."""

    @property
    def fencing_token(self) -> int:
        return self._obj.fencing_token

    @property
    def node(self) -> str:
        return self._hold().node

    def _hold(self) -> Any:
        return self._obj.hold if hasattr(self._obj, "hold") else self._obj

    @property
    def lost(self) -> bool:
        return self._sync._run_sync(lambda: self._hold().lost)

    def wait_lost(self, timeout: float | None = None) -> str | None:
        return self._sync._run(_wait_lost, self._hold(), timeout)

    def fence(self) -> dict:
        return self._sync._run_sync(self._hold().fence)

    def fenced(self, operations: Iterable[dict]) -> list[Any]:
        return self._sync._run(self._hold().fenced, list(operations))


class SyncQueueItem(SyncHold):
    """A taken ``LockingQueue`` item: ``data``, ``consume(ops)``, ``release()``."""

    @property
    def data(self) -> bytes:
        return self._obj.data

    def consume(self, operations: Iterable[dict] = ()) -> None:
        self._sync._run(self._obj.consume, list(operations))

    def release(self) -> None:
        self._sync._run(self._obj.release)


class SyncLockingQueue(_Wrapped):
    """A ``LockingQueue`` for blocking code::

        with q.take(timeout=10) as item:   # consumed on success, released on an exception
            process(item.data)             # poll item.lost, or use item.fenced(...)
    """

    @contextmanager
    def take(self, timeout: float | None = None) -> Iterator[SyncQueueItem]:
        item = self.get(timeout)
        if item is None:
            raise TimeoutError(f"no item in {self.path} within {timeout}s")
        try:
            yield item
        except BaseException:
            item.release()
            raise
        item.consume()


_derive(SyncLockingQueue, LockingQueue, ["put", "length", "get"], {"get": SyncQueueItem._wrap})


class SyncLeaseGrant(SyncHold):
    """A ``LeaseGrant`` for blocking code: ``expires_in``, ``renew()``,
    ``release()``; ``with grant:`` releases on exit and raises
    ``LockLostError`` if the grant ran out during the block."""

    @property
    def expires_in(self) -> float:
        return self._sync._run_sync(lambda: self._obj.expires_in)

    def renew(self, duration: float | None = None) -> None:
        self._sync._run(self._obj.renew, duration)

    def release(self) -> None:
        self._sync._run(self._obj.release)

    def __enter__(self) -> "SyncLeaseGrant":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        error = self._sync._run_sync(lambda: self._obj.lost_exc() if self._obj.lost else None)
        self.release()
        if error is not None and exc_type is None:
            raise error


class SyncLease(_Wrapped):
    """A ``Lease`` for blocking code: ``with lease.acquire() as grant: ...``."""


_derive(SyncLease, Lease, ["acquire", "try_acquire", "holders"],
        {"acquire": SyncLeaseGrant._wrap, "try_acquire": SyncLeaseGrant._wrap})


class SyncRegistration(_Wrapped):
    """Our group membership: ``member``, ``update(payload)``, ``leave()``; a context manager."""

    @property
    def member(self) -> Member:
        return self._obj.member

    def update(self, payload: Any) -> None:
        self._sync._run(self._obj.update, payload)

    def leave(self) -> None:
        self._sync._run(self._obj.leave)

    def __enter__(self) -> "SyncRegistration":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.leave()


class _Hosted:
    """An async context-manager object hosted by a task of its own in the
    loop thread between ``start()`` and ``close()`` (``with`` does both)."""

    def __init__(self, client: "SyncClient", obj: Any):
        self._sync = client
        self._obj = obj
        self._stop: Any = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Any:
        def launch() -> None:
            self._stop = anyio.Event()
            assert self._sync._bridge is not None
            self._sync._bridge.tg.start_soon(self._host)

        self._sync._run_sync(launch)
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    async def _host(self) -> None:
        try:
            async with self._obj:
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            self._error = exc
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
        finally:
            self._ready.set()
            self._done.set()

    def close(self) -> None:
        if self._stop is not None and not self._done.is_set():
            try:
                self._sync._run_sync(self._stop.set)
            except ConnectionLossError:
                return  # the client is gone, and the hosting task with it
            self._done.wait()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class SyncGroupView(_Hosted):
    """A live ``GroupView`` for blocking code: ``snapshot()``, ``changed(timeout)``."""

    def snapshot(self) -> Membership:
        return self._obj.snapshot()

    def changed(self, timeout: float | None = None) -> Membership:
        return self._sync._run(_with_timeout, self._obj.changed, timeout)


class SyncGroup(_Wrapped):
    """A ``Group`` for blocking code: ``join(id, payload)``, ``members()``, ``view()``."""

    def view(self) -> SyncGroupView:
        return SyncGroupView(self._sync, self._sync._run_sync(self._obj.view))


_derive(SyncGroup, Group, ["join", "members"], {"join": SyncRegistration._wrap})


class SyncTreeCache(_Hosted):
    """A ``TreeCache`` for blocking code: ``with SyncTreeCache(c, "/cfg") as cache:``
    then ``get(path)``, ``children(path)``, ``snapshot()``, ``wait_initialized()``.
    Listeners run in the loop thread."""

    def __init__(self, client: "SyncClient", path: str, *, max_depth: int | None = None):
        super().__init__(client, _make(client, TreeCache, path, max_depth=max_depth))

    def get(self, path: str) -> NodeData | None:
        return self._obj.get(path)

    def children(self, path: str) -> list[str]:
        return self._sync._run_sync(self._obj.children, path)

    def snapshot(self) -> dict[str, NodeData]:
        return self._sync._run_sync(self._obj.snapshot)

    def listen(self, callback: Any) -> None:
        self._sync._run_sync(self._obj.listen, callback)

    def wait_initialized(self, timeout: float | None = None) -> None:
        self._sync._run(_with_timeout, self._obj.initialized, timeout)


class SyncNodeCache(SyncTreeCache):
    """A ``NodeCache`` for blocking code: ``current``."""

    def __init__(self, client: "SyncClient", path: str):
        _Hosted.__init__(self, client, _make(client, NodeCache, path))

    @property
    def current(self) -> NodeData | None:
        return self._obj.current


class SyncRingMember(_Hosted):
    """A ``RingMember`` for blocking code (callbacks run in the loop thread)::

        with SyncRingMember(client, "/rings/jobs", "worker-1") as ring:
            if ring.owns(key): ring.fenced(key, [...])
    """

    def __init__(self, client: "SyncClient", path: str, member_id: str, **kwargs: Any):
        super().__init__(client, _make(client, RingMember, path, member_id, **kwargs))

    def owner(self, key: str | bytes) -> str | None:
        return self._obj.owner(key)

    def owns(self, key: str | bytes) -> bool:
        return self._sync._run_sync(self._obj.owns, key)

    def token(self, key: str | bytes) -> int | None:
        return self._sync._run_sync(self._obj.token, key)

    def owned(self) -> dict[int, int]:
        return self._sync._run_sync(self._obj.owned)

    def partition(self, key: str | bytes) -> int:
        return self._obj.partition(key)

    @property
    def members(self) -> Membership:
        return self._obj.members

    def fence(self, key: str | bytes) -> dict:
        return self._sync._run_sync(self._obj.fence, key)

    def fenced(self, key: str | bytes, operations: Iterable[dict]) -> list[Any]:
        return self._sync._run(self._obj.fenced, key, list(operations))

    def settled(self, timeout: float | None = None) -> None:
        self._sync._run(_with_timeout, self._obj.settled, timeout)

    def leave(self) -> None:
        """Leave the ring now (hand every slice over); ``close()`` also does."""
        self._sync._run(self._obj.leave)


async def _with_timeout(fn: Any, timeout: float | None) -> Any:
    with anyio.fail_after(math.inf if timeout is None else timeout):
        return await fn()
