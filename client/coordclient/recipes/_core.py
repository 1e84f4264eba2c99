"""The machinery every recipe shares: a queue of ephemeral sequential nodes.

A participant (lock holder or waiter, reader, writer, permit holder,
election candidate) is one ephemeral sequential child of the recipe's path,
named ``<kind>-<session id hex>-<nonce hex>-[<extra>-]<10-digit sequence>``.
The sequence number is the parent's child counter, so it orders the queue;
the session id and a per-acquisition nonce let a participant recognise its
own node when a create's outcome was uncertain (the call ran out of time);
``extra`` carries an election candidate's identity.

Why each rule holds:

* Exclusion: whether a participant may enter is decided from a listing of the
  queue, and nodes only ever join at the end, so a participant that saw
  itself entitled stays entitled until nodes ahead of it are deleted.
* No herd: a waiter watches only the node whose deletion can let it in
  (``_decide``), so a release wakes one waiter.
* Fencing token: the czxid of the participant's node.  The next holder's
  node has a higher sequence number, so it was created later, so its czxid
  is higher.
* Losing a hold: the session may be expired by the ensemble only after a
  whole session timeout without hearing from the client.  The client drops
  a silent connection after 1/2 of the timeout (SUSPENDED), so a hold is
  declared lost once SUSPENDED has lasted ``suspend_margin`` (default 1/6 of
  the timeout, leaving the last 1/3 for the body to stop), at once on
  EXPIRED/CLOSED, and when the node itself is deleted.
* Release: the node is deleted with retries until the ensemble confirms or
  the session ends (which deletes it anyway); never just forgotten locally.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Hashable, Iterable

from typing import TYPE_CHECKING

import anyio

from coordclient.errors import (
    ConnectionLossError,
    CoordError,
    InvalidPathError,
    MultiError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordclient.messages import ops
from coordclient.protocol import Err, validate_path
from coordclient.types import ConnState, Stat, WatchEvent

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["LockLostError", "LeadershipLostError", "RecipeUsageError"]

log = logging.getLogger("coordclient.recipes")

NAME = re.compile(r"^(?P<kind>[a-z]+)-(?P<sid>[0-9a-f]+)-(?P<nonce>[0-9a-f]+)-(?:(?P<extra>.*)-)?(?P<seq>\d{10})$",
                  re.DOTALL)
WATCH_CHILDREN = "<children>"  # _decide's answer: watch the whole queue (semaphore head)
RETRY_PAUSE = 0.05  # between attempts to delete a node whose deletion failed
_GONE = (ConnState.EXPIRED, ConnState.CLOSED)


class LockLostError(CoordError):
    """The hold ended without ``release()``: the session expired or was
    suspended for longer than the safe margin, or the node was deleted.
    What the holder did just before it learnt this may have overlapped the
    next holder; only fenced writes are known to have been rejected.
    ``code`` is NoNode when the node was deleted, else SessionExpired."""

    code = Err.SESSION_EXPIRED

    def __init__(self, message: str = "", *, path: str | None = None, code: Err = Err.SESSION_EXPIRED):
        self.code = code
        super().__init__(message, path=path)


class LeadershipLostError(LockLostError):
    """Leadership ended without ``resign()`` (same causes as ``LockLostError``)."""


class RecipeUsageError(RuntimeError):
    """A recipe was used in a way that could only deadlock or corrupt it:
    acquiring a held lock object, a task acquiring a path it already holds or
    waits for through the same client (recipes are not re-entrant), or
    releasing a lock that another task is still acquiring."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One queue member, parsed from its node name."""

    seq: int
    name: str
    kind: str
    extra: str | None
    stat: Stat | None


def _seq(entry: Entry) -> int:
    return entry.seq


def parse(name: str, stat: Stat | None = None) -> Entry | None:
    """The queue entry for a child name, or None for a foreign child."""
    m = NAME.match(name)
    if m is None:
        return None
    return Entry(int(m["seq"]), name, m["kind"], m["extra"], stat)


# Owners (tasks, or threads for the blocking API) holding or waiting for a
# recipe path through a client: a second acquisition by the same owner
# could only wait for itself, so it raises instead.
_OWNERS: "weakref.WeakKeyDictionary[Client, dict[str, set[Hashable]]]" = weakref.WeakKeyDictionary()


def current_owner() -> Hashable:
    """The calling task, as an owner of recipe paths."""
    return ("task", anyio.get_current_task().id)


def _owners(client: "Client", path: str) -> set[Hashable]:
    return _OWNERS.setdefault(client, {}).setdefault(path, set())


def check_recipe_path(path: object) -> str:
    reason = validate_path(path, allow_root=False)
    if reason is not None:
        raise InvalidPathError(reason, path=path if isinstance(path, str) else None)
    return path  # type: ignore[return-value]


class Participant:
    """One participation in a recipe's queue; subclasses say when it may
    enter (``_decide``).  See ``Lock`` for the public behaviour."""

    kind = "lock"
    lost_error: type[LockLostError] = LockLostError

    def __init__(self, client: "Client", path: str, *, suspend_margin: float | None = None):
        if suspend_margin is not None and not suspend_margin >= 0:
            raise ValueError("suspend_margin must be >= 0")
        self.client = client
        self.path = check_recipe_path(path)
        self._margin = suspend_margin
        self._data = b""
        self.node: str | None = None
        self.fencing_token: int | None = None
        self._state = "idle"  # idle -> acquiring -> held -> releasing -> idle
        self._owner: Hashable | None = None
        self._prefix = ""
        self._uncertain = False  # a create's outcome was unknown: strays may exist
        self._gone: str | None = None  # our node, once its deletion was seen
        self._lost_reason: str | None = None
        self._lost_code = Err.SESSION_EXPIRED
        self._suspended_until = math.inf  # the hold counts as lost then, if still suspended
        self._scope: anyio.CancelScope | None = None
        # Made on first use: AnyIO events need a running event loop.
        self._wake_ev: anyio.Event | None = None
        self._changed_ev: anyio.Event | None = None
        self._cm: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {self._state} node={self.node} token={self.fencing_token}>"

    # -- introspection ----------------------------------------------------

    @property
    def suspend_margin(self) -> float:
        """How long a suspended connection is tolerated before the hold is
        declared lost (default: a sixth of the negotiated session timeout)."""
        return self._margin if self._margin is not None else self.client.session_timeout / 6

    @property
    def held(self) -> bool:
        """True between a successful acquire and release, unless lost."""
        return self._state == "held" and not self.lost

    @property
    def lost(self) -> bool:
        """True once the hold has been lost (sticky until ``release()``)."""
        if (self._state == "held" and self._lost_reason is None
                and anyio.current_time() >= self._suspended_until):
            self._lose(f"no connection for more than {self.suspend_margin:.2f}s: the session may have expired")
        return self._lost_reason is not None and self._state in ("held", "releasing")

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason if self.lost else None

    async def wait_lost(self) -> str:
        """Wait until the hold is lost and return why.  Returns at once with
        the reason if it is lost already; RecipeUsageError if not held."""
        while not self.lost:
            if self._state != "held":
                raise RecipeUsageError(f"{self.path}: not held")
            with anyio.CancelScope(deadline=self._suspended_until):
                await self._changed.wait()
        assert self._lost_reason is not None
        return self._lost_reason

    # -- acquire ------------------------------------------------------------

    async def acquire(self, timeout: float | None = None, *, blocking: bool = True) -> bool:
        """Queue and wait for our turn; True once held.

        False if ``timeout`` seconds passed (or, with ``blocking=False``, if
        we could not enter at once); our node is then deleted again.  The
        creation of the node itself is shielded from cancellation (it takes
        one round trip, at most the client's request timeout) so that a
        cancelled acquire never leaves a node behind that would block
        everyone until the session ends.
        """
        return await self._acquire(timeout, blocking, current_owner())

    async def try_acquire(self) -> bool:
        """Acquire only if that needs no waiting."""
        return await self.acquire(blocking=False)

    async def _acquire(self, timeout: float | None, blocking: bool, owner: Hashable) -> bool:
        if self._state != "idle":
            what = {"acquiring": "being acquired", "held": "held",
                    "releasing": "being released (call release() again to finish)"}[self._state]
            raise RecipeUsageError(f"{self.path}: this object is already {what}; recipes are not re-entrant")
        owners = _owners(self.client, self.path)
        if owner in owners:
            raise RecipeUsageError(f"{self.path}: the caller already holds or waits for this path through this "
                                   f"client; recipes are not re-entrant (waiting would deadlock)")
        owners.add(owner)
        self._owner = owner
        self._state = "acquiring"
        self._lost_reason, self._uncertain, self._gone, self.fencing_token = None, False, None, None
        self._suspended_until = math.inf if self.client.connected else anyio.current_time() + self.suspend_margin
        self.client.add_listener(self._on_state)
        entered = False
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                entered = await self._enter(blocking)
        finally:
            if not entered:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + self._cleanup_budget()
                    await self._withdraw()
                self._reset()
        if entered:
            self._state = "held"
            self._notify()
        return entered

    async def _enter(self, blocking: bool) -> bool:
        self._prefix = f"{self.kind}-{self.client.session_id:x}-{secrets.token_hex(4)}-{self._extra()}"
        await self._queue()
        while True:
            entries = await self._list()
            me = next((i for i, e in enumerate(entries) if f"{self.path}/{e.name}" == self.node), None)
            if me is None:  # our node was deleted under us (not by a session end: calls would fail): queue again
                await self._queue()
                continue
            target = self._decide(entries, me)
            if target is None:
                try:
                    await self._on_enter(entries, me)
                except NoNodeError:
                    pass  # deleted meanwhile: seen just below
                if self._gone == self.node:
                    await self._queue()
                    continue
                # No checkpoint from here until acquire() marks us held, so a
                # deletion is either seen above or reported to a held lock.
                self.fencing_token = entries[me].stat.czxid  # type: ignore[union-attr]
                return True
            if not blocking:
                return False
            wake = self._wake = anyio.Event()

            def fire(_: WatchEvent) -> None:
                wake.set()

            if target == WATCH_CHILDREN:
                names = {e.name for e in entries}
                seen = {e.name for e in map(parse, await self.client.children(self.path, watch=fire)) if e}
                if seen != names:
                    continue  # changed between the two reads: the watch would miss that change
            elif await self.client.exists(f"{self.path}/{target}", watch=fire) is None:
                continue  # gone already
            # The watch is what wakes us; the timeout only covers a watch the
            # client had to drop (re-registration failing for a whole
            # request timeout), which would otherwise strand this waiter.
            with anyio.move_on_after(self.client.request_timeout):
                await wake.wait()

    async def _create(self) -> None:
        """Create our node; if the outcome is unknown, look for it by name."""
        self.node = None
        base = f"{self.path}/{self._prefix}"
        while True:
            try:
                with anyio.CancelScope(shield=True):
                    self.node = await self.client.create(base, self._data, ephemeral=True, sequential=True,
                                                         make_parents=True)
                return
            except (ConnectionLossError, OperationTimeoutError):
                self._uncertain = True
                own = await self._own_nodes()
                if own:
                    self.node = own[0]
                    return

    async def _list(self) -> list[Entry]:
        """The queue in order.  Extra nodes of ours (a create retried after
        an uncertain outcome) are deleted: they would only queue behind us."""
        try:
            kids = await self.client.children(self.path, stats=True)
        except NoNodeError:
            return []
        entries = sorted((e for e in (parse(name, stat) for name, stat in kids) if e is not None), key=_seq)
        own = [e for e in entries if e.name.startswith(self._prefix)]
        if own and not any(f"{self.path}/{e.name}" == self.node for e in own):
            self.node = f"{self.path}/{own[0].name}"
        strays = [e for e in own if f"{self.path}/{e.name}" != self.node]
        for e in strays:
            await self._delete_confirmed(f"{self.path}/{e.name}")
        return [e for e in entries if e not in strays]

    async def _own_nodes(self) -> list[str]:
        try:
            kids = await self.client.children(self.path)
        except NoNodeError:
            return []
        own = sorted((e for e in map(parse, kids) if e is not None and e.name.startswith(self._prefix)), key=_seq)
        return [f"{self.path}/{e.name}" for e in own]

    async def _queue(self) -> None:
        """Join the queue: create our node and watch it.  The watch is set
        while waiting, off the path from a release to the next holder."""
        while True:
            await self._create()
            if await self._watch_own_node():
                return

    async def _watch_own_node(self) -> bool:
        """Watch our node: its deletion ends a hold (or re-queues a waiter).
        False if it is gone already."""
        node = self.node

        def gone() -> None:
            self._gone = node
            if self._state == "held":
                self._lose(f"node {node} was deleted", Err.NO_NODE)
            self._wake.set()

        async def on_event(event: WatchEvent) -> None:
            if self.node != node or self._state not in ("acquiring", "held"):
                return
            if event.type == "deleted":
                gone()
                return
            try:  # changed, or resync: re-arm, and look again
                if await self.client.exists(node, watch=on_event) is None:
                    gone()
            except CoordError:
                pass  # the session is in trouble: the state listener decides

        return await self.client.exists(node, watch=on_event) is not None

    # -- policy (subclasses) ----------------------------------------------

    def _extra(self) -> str:
        return ""

    def _decide(self, entries: list[Entry], me: int) -> str | None:
        """None if entry ``me`` may enter; else the name of the one node
        whose change can let it in (or WATCH_CHILDREN).  Exclusive: every
        node ahead blocks, and we watch the one just ahead."""
        return None if me == 0 else entries[me - 1].name

    async def _on_enter(self, entries: list[Entry], me: int) -> None:
        """Hook run when entering, before acquire returns."""

    # -- losing -----------------------------------------------------------

    def _on_state(self, state: ConnState) -> None:
        """Client state listener (runs synchronously in the client's task)."""
        now = anyio.current_time()
        if state in _GONE:
            self._lose(f"session {state.value}")
            self._wake.set()  # a waiter re-checks, and its next call raises
        elif state is ConnState.SUSPENDED:
            self._set_suspended_until(now + self.suspend_margin)
        else:  # a long suspension while only waiting is harmless: the session survived it
            if self._state == "held" and now >= self._suspended_until:
                self._lose(f"no connection for more than {self.suspend_margin:.2f}s: the session may have expired")
            self._set_suspended_until(math.inf)

    def _set_suspended_until(self, when: float) -> None:
        self._suspended_until = when
        if self._scope is not None:
            self._scope.deadline = when
        self._notify()

    def _lose(self, reason: str, code: Err = Err.SESSION_EXPIRED) -> None:
        if self._state in ("acquiring", "held") and self._lost_reason is None:
            self._lost_reason, self._lost_code = reason, code
            log.info("%s: lost: %s", self.path, reason)
            if self._scope is not None:
                self._scope.cancel()
            self._notify()

    def _lost_exc(self) -> LockLostError:
        return self.lost_error(f"{self.path}: {self._lost_reason or 'not held'}", path=self.path,
                               code=self._lost_code)

    @property
    def _wake(self) -> anyio.Event:
        if self._wake_ev is None:
            self._wake_ev = anyio.Event()
        return self._wake_ev

    @_wake.setter
    def _wake(self, event: anyio.Event) -> None:
        self._wake_ev = event

    @property
    def _changed(self) -> anyio.Event:
        if self._changed_ev is None:
            self._changed_ev = anyio.Event()
        return self._changed_ev

    def _notify(self) -> None:
        changed, self._changed_ev = self._changed_ev, None
        if changed is not None:
            changed.set()

    # -- release ------------------------------------------------------------

    async def release(self) -> None:
        """Delete our node; idempotent.

        Retries through connection losses until the ensemble confirms (or
        the node is already gone, or the session ended, which deletes it).
        If cancelled meanwhile, the object stays "releasing" and a later
        ``release()`` finishes the job.  During ``async with`` (from the body
        or another task) the body is cancelled first, the deletion is
        shielded (bounded like the release at the end of the block), and the
        block then exits without an error.
        """
        if self._state == "idle":
            return
        if self._state == "acquiring":
            raise RecipeUsageError(f"{self.path}: release() while acquire() is in progress in another task")
        self._state = "releasing"
        scope = self._scope
        if scope is None:
            await self._withdraw()
        else:
            # Stop the guarded body first, then delete: shielded, because the
            # caller may be that very body, which is now cancelled.
            scope.cancel()
            with anyio.CancelScope(shield=True) as shield:
                shield.deadline = anyio.current_time() + self._cleanup_budget()
                await self._withdraw()
            if shield.cancelled_caught:
                return  # still "releasing": release() again finishes the job
        self._reset()

    async def _withdraw(self) -> None:
        """Delete our node(s).  After an uncertain create, look for strays too."""
        if self.node is not None:
            await self._delete_confirmed(self.node)
        while self._uncertain and self.client.state not in _GONE:
            try:
                for node in await self._own_nodes():
                    await self._delete_confirmed(node)
                self._uncertain = False
            except (ConnectionLossError, OperationTimeoutError):
                await anyio.sleep(RETRY_PAUSE)
            except SessionExpiredError:
                break

    async def _delete_confirmed(self, node: str) -> None:
        while self.client.state not in _GONE:
            try:
                await self.client.delete(node)
                return
            except (NoNodeError, SessionExpiredError):
                return
            except (ConnectionLossError, OperationTimeoutError) as exc:
                log.info("%s: deleting %s failed (%s); retrying", self.path, node, exc)
                await anyio.sleep(RETRY_PAUSE)

    def _cleanup_budget(self) -> float:
        """Bound for a release that must run shielded (body exit, failed
        acquire): long enough to ride out a reconnect or a session expiry."""
        return self.client.request_timeout + self.client.session_timeout

    def _reset(self) -> None:
        try:
            self.client.remove_listener(self._on_state)
        except ValueError:
            pass
        _owners(self.client, self.path).discard(self._owner)
        self._owner = None
        self._state = "idle"
        self.node = None
        self.fencing_token = None
        self._lost_reason = None
        self._suspended_until = math.inf
        if self._wake_ev is not None:
            self._wake_ev.set()
        self._notify()

    # -- guarded bodies -----------------------------------------------------

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[Any]:
        """Run a body while holding: it is cancelled when the hold is lost,
        which then raises ``LockLostError`` out of the block; on exit the
        node is released (shielded, bounded by ``_cleanup_budget``).  For a
        hold taken with ``acquire()``; ``async with lock`` does both."""
        if self._state != "held":
            raise RecipeUsageError(f"{self.path}: guard() needs a held lock")
        scope = self._scope = anyio.CancelScope(deadline=self._suspended_until)
        if self._lost_reason is not None:
            scope.cancel()
        error: LockLostError | None = None
        try:
            with scope:
                yield self
        finally:
            self._scope = None
            if self.lost:
                error = self._lost_exc()
            if self._state != "idle":
                with anyio.CancelScope(shield=True) as cleanup:
                    cleanup.deadline = anyio.current_time() + self._cleanup_budget()
                    await self.release()
                if self._state != "idle":
                    log.error("%s: could not confirm the release of %s; call release() again", self.path, self.node)
        if error is not None:
            raise error

    async def __aenter__(self) -> Any:
        await self.acquire()
        self._cm = self.guard()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        cm, self._cm = self._cm, None
        return await cm.__aexit__(*exc_info)

    # -- fencing ----------------------------------------------------------

    def fence(self) -> dict:
        """A ``multi`` operation that fails unless this hold is current: a
        check that our node still exists.  Put it first in a ``multi`` (or
        use ``fenced``); coord then applies the other operations only while
        no one else can hold the lock, however late the request arrives."""
        if self._state != "held" or self.node is None:
            raise RecipeUsageError(f"{self.path}: fence() needs a held lock")
        if self.lost:
            raise self._lost_exc()
        return ops.check(self.node, version=-1)

    async def fenced(self, operations: Iterable[dict]) -> list[Any]:
        """``client.multi([fence(), *operations])``; the results of
        ``operations``.  Raises ``LockLostError`` (and marks the hold lost)
        if coord rejected the fence or the session is gone."""
        if self.lost:
            raise self._lost_exc()
        check = self.fence()
        try:
            results = await self.client.multi([check, *operations])
        except MultiError as exc:
            if exc.index == 0:
                self._lose(f"node {self.node} no longer exists", Err.NO_NODE)
                raise self._lost_exc() from exc
            raise
        except SessionExpiredError as exc:
            self._lose("session expired")
            raise self._lost_exc() from exc
        return results[1:]
