"""Barriers (kazoo's ``Barrier``/``DoubleBarrier``, Curator's
``DistributedBarrier``/``DistributedDoubleBarrier``).

``Barrier``: while the node exists, ``wait()`` blocks; removing it lets
every waiter through.  The wait uses an exists-watch, re-armed across
reconnects by the SDK, so no removal is missed.

``DoubleBarrier``: ``num`` participants synchronise the start and the end
of a computation.  ``enter()`` creates the participant's ephemeral node and
returns once ``num`` are present (the one that completes the set creates
``ready``); ``leave()`` deletes it and returns once all have left (the
classic ZooKeeper recipe: the lowest node waits for the highest, every other
one deletes itself and waits for the lowest, so each departure wakes one
waiter).  Nodes are ephemeral: a participant that dies counts as having left.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import anyio

from coordclient.errors import NodeExistsError, NoNodeError
from coordclient.recipes._core import check_recipe_path
from coordclient.types import WatchEvent

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Barrier", "DoubleBarrier"]

READY = "ready"


async def _wait_gone(client: "Client", node: str, deadline: float) -> bool:
    """True once ``node`` does not exist; False at ``deadline``."""
    with anyio.CancelScope(deadline=deadline):
        while True:
            fired = anyio.Event()

            def fire(_: WatchEvent) -> None:
                fired.set()

            if await client.exists(node, watch=fire) is None:
                return True
            # the watch wakes us; the timeout covers a watch the client had to drop
            with anyio.move_on_after(client.request_timeout):
                await fired.wait()
    return False


async def _wait_exists(client: "Client", node: str, deadline: float) -> bool:
    with anyio.CancelScope(deadline=deadline):
        while True:
            fired = anyio.Event()

            def fire(_: WatchEvent) -> None:
                fired.set()

            if await client.exists(node, watch=fire) is not None:
                return True
            with anyio.move_on_after(client.request_timeout):
                await fired.wait()
    return False


def _deadline(timeout: float | None) -> float:
    return float("inf") if timeout is None else anyio.current_time() + timeout


class Barrier:
    """``await b.create()`` raises the barrier, ``await b.remove()`` lowers
    it, ``await b.wait(timeout)`` returns True once it is down (False on
    timeout)."""

    def __init__(self, client: "Client", path: str):
        self.client = client
        self.path = check_recipe_path(path)

    async def create(self) -> bool:
        """Raise the barrier; False if it was up already."""
        try:
            await self.client.create(self.path, make_parents=True)
            return True
        except NodeExistsError:
            return False

    async def remove(self) -> bool:
        """Lower the barrier; False if it was down already."""
        try:
            await self.client.delete(self.path)
            return True
        except NoNodeError:
            return False

    async def wait(self, timeout: float | None = None) -> bool:
        return await _wait_gone(self.client, self.path, _deadline(timeout))


class DoubleBarrier:
    """``num`` participants enter together and leave together::

        db = DoubleBarrier(client, "/barriers/job-7", 3)
        await db.enter()     # returns once 3 have entered
        ...                  # the computation
        await db.leave()     # returns once all 3 have left
    """

    def __init__(self, client: "Client", path: str, num: int, identifier: str | None = None):
        if not isinstance(num, int) or num < 1:
            raise ValueError("num must be an int >= 1")
        self.client = client
        self.path = check_recipe_path(path)
        self.num = num
        self.identifier = identifier or f"p-{secrets.token_hex(6)}"
        if "/" in self.identifier or self.identifier == READY:
            raise ValueError("identifier must be a plain name other than 'ready'")
        self.node = f"{self.path}/{self.identifier}"
        self.participating = False

    async def _members(self) -> list[str]:
        try:
            kids = await self.client.children(self.path)
        except NoNodeError:
            return []
        return sorted(k for k in kids if k != READY)

    async def enter(self, timeout: float | None = None) -> bool:
        """Join and wait for ``num`` participants; False (and not joined) on timeout."""
        deadline = _deadline(timeout)
        try:
            await self.client.create(self.node, ephemeral=True, make_parents=True)
        except NodeExistsError:
            pass  # a retried create of ours, or a participant reusing its identifier
        self.participating = True
        ready = f"{self.path}/{READY}"
        # Watch "ready" before counting, so that the creation cannot be missed.
        fired = anyio.Event()
        if await self.client.exists(ready, watch=lambda _: fired.set()) is not None:
            return True
        if len(await self._members()) >= self.num:
            try:
                await self.client.create(ready)
            except NodeExistsError:
                pass
            return True
        if await _wait_exists(self.client, ready, deadline):
            return True
        await self._withdraw()
        return False

    async def _withdraw(self) -> None:
        try:
            await self.client.delete(self.node)
        except NoNodeError:
            pass
        self.participating = False

    async def leave(self, timeout: float | None = None) -> bool:
        """Leave and wait until every participant has left; False on timeout."""
        deadline = _deadline(timeout)
        while True:
            members = await self._members()
            mine = self.identifier in members
            if not members or members == [self.identifier]:
                if mine:
                    await self._withdraw()
                try:  # the last one out takes "ready" down for the next round
                    await self.client.delete(f"{self.path}/{READY}")
                except NoNodeError:
                    pass
                self.participating = False
                return True
            if mine and members[0] == self.identifier:
                target = members[-1]  # the lowest waits for the highest
            else:
                if mine:
                    await self._withdraw()
                target = members[0]  # everyone else waits for the lowest
            if not await _wait_gone(self.client, f"{self.path}/{target}", deadline):
                return False
