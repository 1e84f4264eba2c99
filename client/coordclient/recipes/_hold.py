"""Ownership proven by one node: the loss rules, cancel-on-loss and fencing
shared by the recipes that hand out something other than a queue position
(a locking queue's taken item, a lease grant, a ring partition).

``Hold`` follows one node that proves ownership.  The hold is lost when the
node is deleted (seen through a watch), when the session ends, or when the
client has had no connection for ``suspend_margin`` (the rules and the
margin arithmetic of locks: see ``_core.py`` and docs/recipes.md), or at a
deadline the recipe sets (a lease's expiry).  ``guard()`` runs a body in a
cancel scope cancelled on loss; ``fence()`` is a multi check that the node
still exists at the version the holder knows, so coord itself rejects a
stale holder's write; ``fencing_token`` is the node's czxid.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

import anyio

from coordclient.errors import CoordError, MultiError, SessionExpiredError
from coordclient.messages import ops
from coordclient.protocol import Err
from coordclient.recipes._core import LockLostError, RecipeUsageError
from coordclient.types import ConnState, WatchEvent

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Hold"]

log = logging.getLogger("coordclient.recipes")
_GONE = (ConnState.EXPIRED, ConnState.CLOSED)


class Hold:
    """Ownership of ``node`` (created by the recipe) at ``version``."""

    lost_error: type[LockLostError] = LockLostError

    def __init__(self, client: "Client", node: str, token: int, *, version: int = -1,
                 suspend_margin: float | None = None, deadline: float = math.inf):
        self.client = client
        self.node = node
        self.fencing_token = token
        self.version = version
        self._margin = suspend_margin
        self._deadline = deadline  # on the loop's clock; lost from then on
        self._lost_reason: str | None = None
        self._lost_code = Err.SESSION_EXPIRED
        self._suspended_until = math.inf
        self._scope: anyio.CancelScope | None = None
        self._changed: anyio.Event | None = None
        self._active = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node} token={self.fencing_token}{' lost' if self.lost else ''}>"

    @property
    def suspend_margin(self) -> float:
        return self._margin if self._margin is not None else self.client.session_timeout / 6

    async def start(self) -> None:
        """Begin following the node (its deletion, the session)."""
        self._active = True
        self.client.add_listener(self._on_state)
        if not self.client.connected:
            self._suspended_until = anyio.current_time() + self.suspend_margin
        node = self.node

        async def on_event(event: WatchEvent) -> None:
            if not self._active or self.node != node:
                return
            if event.type == "deleted":
                self.lose(f"node {node} was deleted", Err.NO_NODE)
                return
            try:
                stat = await self.client.exists(node, watch=on_event)
            except CoordError:
                return  # the session is in trouble: the state listener decides
            if stat is None or stat.czxid != self.fencing_token:
                self.lose(f"node {node} was deleted", Err.NO_NODE)

        if await self.client.exists(node, watch=on_event) is None:
            self.lose(f"node {node} was deleted", Err.NO_NODE)

    def stop(self) -> None:
        """Stop following (the hold was given up)."""
        self._active = False
        try:
            self.client.remove_listener(self._on_state)
        except ValueError:
            pass
        self._notify()

    # -- loss ---------------------------------------------------------------

    @property
    def deadline(self) -> float:
        return self._deadline

    @deadline.setter
    def deadline(self, when: float) -> None:
        self._deadline = when
        self._update_scope()

    @property
    def lost(self) -> bool:
        if self._lost_reason is None and self._active:
            now = anyio.current_time()
            if now >= self._suspended_until:
                self.lose(f"no connection for more than {self.suspend_margin:.2f}s: the session may have expired")
            elif now >= self._deadline:
                self.lose("the grant expired", Err.SESSION_EXPIRED)
        return self._lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason if self.lost else None

    def lose(self, reason: str, code: Err = Err.SESSION_EXPIRED) -> None:
        if self._lost_reason is None:
            self._lost_reason, self._lost_code = reason, code
            log.info("%s: lost: %s", self.node, reason)
            if self._scope is not None:
                self._scope.cancel()
            self._notify()

    async def wait_lost(self) -> str:
        """Wait until the hold is lost; why."""
        while not self.lost:
            if self._changed is None:
                self._changed = anyio.Event()
            with anyio.CancelScope(deadline=min(self._suspended_until, self._deadline)):
                await self._changed.wait()
        assert self._lost_reason is not None
        return self._lost_reason

    def lost_exc(self) -> LockLostError:
        return self.lost_error(f"{self.node}: {self._lost_reason or 'not held'}", path=self.node, code=self._lost_code)

    def _on_state(self, state: ConnState) -> None:
        now = anyio.current_time()
        if state in _GONE:
            self.lose(f"session {state.value}")
        elif state is ConnState.SUSPENDED:
            self._suspended_until = now + self.suspend_margin
        else:
            if now >= self._suspended_until:
                self.lose(f"no connection for more than {self.suspend_margin:.2f}s: the session may have expired")
            self._suspended_until = math.inf
        self._update_scope()
        self._notify()

    def _update_scope(self) -> None:
        if self._scope is not None:
            self._scope.deadline = min(self._suspended_until, self._deadline)

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    # -- guarded bodies and fencing ---------------------------------------------

    @asynccontextmanager
    async def guard(self) -> AsyncIterator["Hold"]:
        """Run a body that is cancelled when the hold is lost; raises the
        recipe's ``LockLostError`` out of the block if it was."""
        if not self._active:
            raise RecipeUsageError(f"{self.node}: not held")
        scope = self._scope = anyio.CancelScope(deadline=min(self._suspended_until, self._deadline))
        if self._lost_reason is not None:
            scope.cancel()
        try:
            with scope:
                yield self
        finally:
            self._scope = None
        if self.lost:
            raise self.lost_exc()

    def fence(self) -> dict:
        """A multi check that this hold is current (put it first)."""
        if self.lost:
            raise self.lost_exc()
        return ops.check(self.node, version=self.version)

    async def fenced(self, operations: Iterable[dict]) -> list[Any]:
        """``multi([fence(), *operations])``; the results of ``operations``."""
        check = self.fence()
        try:
            results = await self.client.multi([check, *operations])
        except MultiError as exc:
            if exc.index == 0:
                self.lose(f"node {self.node} is no longer ours", Err.NO_NODE)
                raise self.lost_exc() from exc
            raise
        except SessionExpiredError as exc:
            self.lose("session expired")
            raise self.lost_exc() from exc
        return results[1:]
