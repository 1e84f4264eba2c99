"""Leases: a time-bound grant to at most ``max_holders`` holders (Curator's
lease-based semaphore, Chubby's lock-with-a-lease).

Unlike a lock, a lease is *not* tied to the holder's session: it survives
the holder's crash, but only until it expires.  Each grant is a persistent
slot node ``<path>/slot-<i>`` (``i < max_holders``, so there are never more
grants than slots) holding the grant's duration; coord stamps its ``mtime``.

* Taking a free slot is a create; taking an expired one is one transaction
  that deletes the old grant at the version read and creates the new one, so
  two takers cannot both win it.
* A slot is expired for the others once ``mtime + duration + clock_margin``
  has passed on their wall clock (``clock_margin``, default 1 s, bounds the
  skew between the servers' and clients' clocks).
* The holder counts its grant from *before* it asked (on its monotonic
  clock), so it stops before anyone else may take the slot, as long as
  clocks advance at the same rate: its ``guard()`` body is cancelled at the
  local expiry (or when the grant node is seen deleted, or the session ends).
* ``renew()`` rewrites the slot (new ``mtime``) at the version held, and
  moves the local expiry on.  ``release()`` deletes it.
* Fencing: ``fencing_token`` is the grant node's czxid (a new node per
  grant, so it increases); ``fenced(ops)`` checks the node at the version
  held, so a write from a holder whose grant was taken over is rejected.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

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
from coordclient.types import Stat

log = logging.getLogger("coordclient.recipes")

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Lease", "LeaseGrant"]

SLOT = "slot-"


class LeaseGrant(Hold):
    """A granted lease (see ``Lease``): ``fencing_token``, ``expires_in``,
    ``renew()``, ``release()``, ``guard()``, ``fence()``/``fenced()``."""

    def __init__(self, lease: "Lease", node: str, stat: Stat, started: float):
        super().__init__(lease.client, node, stat.czxid, version=stat.version, suspend_margin=lease.suspend_margin_)
        self.lease = lease
        self.deadline = started + lease.duration
        self.released = False

    @property
    def expires_in(self) -> float:
        return max(0.0, self.deadline - anyio.current_time())

    async def renew(self, duration: float | None = None) -> None:
        """Extend the grant by ``duration`` (default: the lease's) from now."""
        if self.lost:
            raise self.lost_exc()
        duration = self.lease.duration if duration is None else duration
        started = anyio.current_time()
        try:
            stat = await self.client.set(self.node, self.lease._data(duration), version=self.version)
        except (NoNodeError, BadVersionError) as exc:
            self.lose("the grant was taken over")
            raise self.lost_exc() from exc
        self.version = stat.version
        self.deadline = started + duration

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.stop()
        try:
            await self.client.delete(self.node, version=self.version)
        except (NoNodeError, BadVersionError, SessionExpiredError):
            pass  # gone, or someone else's by now

    async def __aenter__(self) -> "LeaseGrant":
        self._cm = self.guard()
        await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            return await self._cm.__aexit__(*exc_info)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.client.request_timeout):
                try:
                    await self.release()
                except (ConnectionLossError, OperationTimeoutError) as exc:
                    log.warning("%s: release not confirmed (%s); the grant ends when it expires", self.node, exc)


class Lease:
    """At most ``max_holders`` grants of ``duration`` seconds each::

        lease = Lease(client, "/leases/report", duration=30)
        async with await lease.acquire() as grant:    # waits for a free slot
            await grant.fenced([ops.set("/reports/today", data)])
            await grant.renew()                        # 30 s more
        # the body is cancelled when the grant runs out
    """

    def __init__(self, client: "Client", path: str, *, duration: float, max_holders: int = 1,
                 clock_margin: float = 1.0, suspend_margin: float | None = None):
        if not duration > 0:
            raise ValueError("duration must be positive")
        if not isinstance(max_holders, int) or max_holders < 1:
            raise ValueError("max_holders must be an int >= 1")
        self.client = client
        self.path = check_recipe_path(path)
        self.duration = float(duration)
        self.max_holders = max_holders
        self.clock_margin = clock_margin
        self.suspend_margin_ = suspend_margin

    def _data(self, duration: float) -> bytes:
        return json.dumps({"duration_ms": int(duration * 1000), "holder": self.client.session_id}).encode()

    def _expired(self, data: bytes, stat: Stat) -> float:
        """Seconds until the grant in ``data``/``stat`` expires for others (<= 0: expired)."""
        try:
            duration_ms = int(json.loads(data)["duration_ms"])
        except (ValueError, KeyError, TypeError):
            duration_ms = 0
        return (stat.mtime + duration_ms) / 1000 + self.clock_margin - time.time()

    async def acquire(self, timeout: float | None = None) -> LeaseGrant:
        """A grant, waiting for a slot; ``TimeoutError`` after ``timeout``."""
        grant = await self.try_acquire(timeout=timeout, blocking=True)
        if grant is None:
            raise TimeoutError(f"no lease on {self.path} within {timeout}s")
        return grant

    async def try_acquire(self, *, timeout: float | None = None, blocking: bool = False) -> LeaseGrant | None:
        """A grant if a slot is free (or expired) now; None otherwise (with
        ``blocking``, waits up to ``timeout`` first)."""
        with anyio.move_on_after(math.inf if timeout is None or not blocking else timeout):
            while True:
                wait_for = math.inf
                fired = anyio.Event()
                for i in range(self.max_holders):
                    slot = f"{self.path}/{SLOT}{i}"
                    started = anyio.current_time()
                    grant = await self._take(slot, started)
                    if grant is not None:
                        return grant
                    try:
                        data, stat = await self.client.get(slot, watch=lambda _: fired.set())
                    except NoNodeError:
                        wait_for = 0
                        continue
                    left = self._expired(data, stat)
                    if left <= 0:
                        grant = await self._take_over(slot, stat, started)
                        if grant is not None:
                            return grant
                        wait_for = 0
                    wait_for = min(wait_for, max(left, 0))
                if not blocking:
                    return None
                with anyio.move_on_after(min(wait_for + 0.01, self.client.request_timeout)):
                    await fired.wait()
        return None

    async def _take(self, slot: str, started: float) -> LeaseGrant | None:
        try:
            with anyio.CancelScope(shield=True):
                await self.client.create(slot, self._data(self.duration), make_parents=True)
        except NodeExistsError:
            return None
        except (ConnectionLossError, OperationTimeoutError):
            return await self._mine(slot, started)
        return await self._granted(slot, started)

    async def _take_over(self, slot: str, old: Stat, started: float) -> LeaseGrant | None:
        try:
            with anyio.CancelScope(shield=True):
                await self.client.multi([ops.delete(slot, version=old.version),
                                         ops.create(slot, self._data(self.duration))])
        except MultiError:
            return None  # renewed or taken over by someone else first
        except (ConnectionLossError, OperationTimeoutError):
            return await self._mine(slot, started)
        return await self._granted(slot, started)

    async def _mine(self, slot: str, started: float) -> LeaseGrant | None:
        """After an uncertain write: is ``slot`` ours?"""
        try:
            data, stat = await self.client.get(slot)
        except NoNodeError:
            return None
        try:
            holder = json.loads(data).get("holder")
        except ValueError:
            holder = None
        return await self._granted(slot, started, stat) if holder == self.client.session_id else None

    async def _granted(self, slot: str, started: float, stat: Stat | None = None) -> LeaseGrant | None:
        if stat is None:
            stat = await self.client.exists(slot)
            if stat is None:
                return None
        grant = LeaseGrant(self, slot, stat, started)
        await grant.start()
        return grant

    async def holders(self) -> list[tuple[str, float]]:
        """(slot, seconds left) of the grants that have not expired."""
        out = []
        for i in range(self.max_holders):
            try:
                data, stat = await self.client.get(f"{self.path}/{SLOT}{i}")
            except NoNodeError:
                continue
            left = self._expired(data, stat) - self.clock_margin
            if left > 0:
                out.append((f"{self.path}/{SLOT}{i}", left))
        return out
