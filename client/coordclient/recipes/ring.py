"""A consistent-hash ring partitioner with safe hand-off (Chord's identifier
ring, as used by Dynamo-style systems to shard work).

The ring
    Identifiers are SHA-1 hashes read as 160-bit integers.  Each member
    places ``vnodes`` points on the ring (``sha1("<member>#<i>")``).  The key
    space is cut into ``partitions`` equal slices (a key's slice is the top
    bits of ``sha1(key)``); a slice belongs to the *successor* of its start
    point: the first member point at or after it, wrapping around (Chord's
    rule).  ``HashRing`` is that pure computation; adding or removing a
    member changes only the slices whose successor is one of its points, so
    keys move only to or from that member, about 1/N of them.

Ownership and hand-off (``RingMember``)
    A member registers in a group (``<path>/members``) and keeps a live view
    of it; every member computes the same assignment from the same snapshot.
    Owning a slice is holding its ephemeral node ``<path>/partitions/<n>``:
    a member creates it only when the assignment gives it the slice and the
    node is free, so at any point of coord's history one member at most holds
    a slice.  When the assignment moves a slice away, the old owner first
    stops (``owns()`` turns False), runs ``on_revoke`` (bounded by
    ``handoff_timeout``, then cancelled), cancels the slice's guarded bodies,
    and only then deletes the node; the new owner, waiting on that node,
    creates it and runs ``on_assign``.  A member that crashes or is cut off
    loses its slices by the lock rules (suspended past the margin: it stops
    acting; session expired: coord deletes its nodes), so the new owner gets
    them only after the old one stopped, even across a network partition.

Fencing
    Each tenure of a slice is a new node, so its czxid is a fencing token
    that increases from one owner to the next; ``fenced(key, ops)`` applies
    writes only while the writer still holds the key's slice.
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Union

import anyio
import anyio.abc

from coordclient.errors import (
    ConnectionLossError,
    CoordError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from coordclient.recipes._core import LockLostError, RecipeUsageError, check_recipe_path
from coordclient.recipes._hold import Hold
from coordclient.recipes.group import Group, GroupView, Membership, Registration

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["HashRing", "PartitionLostError", "RingMember", "key_hash"]

log = logging.getLogger("coordclient.recipes")

RING_BITS = 160
RING_SIZE = 1 << RING_BITS


def key_hash(key: Union[str, bytes]) -> int:
    """A key's (or point's) position on the ring: its SHA-1 as an integer."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return int.from_bytes(hashlib.sha1(data).digest(), "big")


class PartitionLostError(LockLostError):
    """A slice's ownership ended while a guarded body ran (revoked, or lost)."""


class HashRing:
    """The pure ring: members with their virtual nodes, slices, successors.

    ``HashRing({"a": 16, "b": 16}, partitions=64)``; ``owner(key)``,
    ``partition(key)``, ``partition_owner(n)``, ``assignment()``.
    """

    def __init__(self, members: Mapping[str, int], partitions: int = 64):
        if partitions < 1 or partitions & (partitions - 1):
            raise ValueError("partitions must be a power of two")
        self.partitions = partitions
        self._shift = RING_BITS - (partitions.bit_length() - 1)
        points = sorted((key_hash(f"{member}#{i}"), member)
                        for member, vnodes in members.items() for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._owners = [m for _, m in points]
        self.members = dict(members)

    def partition(self, key: Union[str, bytes]) -> int:
        return key_hash(key) >> self._shift if self.partitions > 1 else 0

    def partition_start(self, n: int) -> int:
        return n << self._shift if self.partitions > 1 else 0

    def successor(self, point: int) -> str | None:
        """The member owning ``point``: the first member point >= it, wrapping."""
        if not self._points:
            return None
        i = bisect.bisect_left(self._points, point)
        return self._owners[i % len(self._points)]

    def partition_owner(self, n: int) -> str | None:
        return self.successor(self.partition_start(n))

    def owner(self, key: Union[str, bytes]) -> str | None:
        return self.partition_owner(self.partition(key))

    def assignment(self) -> dict[int, str | None]:
        return {n: self.partition_owner(n) for n in range(self.partitions)}


@dataclass
class _Slice:
    hold: Hold
    assigned: bool = False  # on_assign ran: the owner may act


Callback = Callable[..., Union[None, Awaitable[None]]]


async def _call(callback: Callback | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if inspect.iscoroutine(result):  # a task handle returned by start_soon is awaitable too: not awaited
        await result


class RingMember:
    """This process as a member of the ring at ``path``::

        async def start(partition, token): ...   # we own it now: may act
        async def stop(partition): ...           # give it up (bounded time)

        async with RingMember(client, "/rings/jobs", "worker-1", on_assign=start, on_revoke=stop) as ring:
            for job in jobs:
                if ring.owns(job.key):
                    async with ring.guard(job.key):       # cancelled if the slice moves away
                        await ring.fenced(job.key, [ops.set(job.path, b"done")])

    ``owner(key)`` answers from the cached ring (the member that should own
    the key); ``owns(key)`` is True only while this member actually holds
    the key's slice and may act on it.
    """

    def __init__(self, client: "Client", path: str, member_id: str, *, vnodes: int = 16,
                 partitions: int = 64, on_assign: Callback | None = None, on_revoke: Callback | None = None,
                 handoff_timeout: float = 10.0, payload: Mapping[str, Any] | None = None,
                 suspend_margin: float | None = None):
        if not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError("vnodes must be an int >= 1")
        self.client = client
        self.path = check_recipe_path(path)
        self.member_id = member_id
        self.vnodes = vnodes
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.handoff_timeout = handoff_timeout
        self.payload = dict(payload or {})
        self._margin = suspend_margin
        self.group = Group(client, f"{self.path}/members")
        self.ring = HashRing({}, partitions)
        self._slices: dict[int, _Slice] = {}
        self._view: GroupView | None = None
        self._registration: Registration | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake: anyio.Event | None = None
        self._settled: anyio.Event | None = None
        self._leaving = False
        self._run_scope = anyio.CancelScope()
        self.partitions = partitions

    # -- answers from the local state -------------------------------------------------

    @property
    def members(self) -> Membership:
        return self._view.snapshot() if self._view is not None else Membership()

    def partition(self, key: Union[str, bytes]) -> int:
        return self.ring.partition(key)

    def owner(self, key: Union[str, bytes]) -> str | None:
        """The member the current ring gives ``key`` to."""
        return self.ring.owner(key)

    def owns(self, key: Union[str, bytes]) -> bool:
        """True while this member holds ``key``'s slice and may act on it."""
        s = self._slices.get(self.ring.partition(key))
        return s is not None and s.assigned and not s.hold.lost

    def token(self, key: Union[str, bytes]) -> int | None:
        """The fencing token of our tenure of ``key``'s slice (None if not ours)."""
        s = self._slices.get(self.ring.partition(key))
        return s.hold.fencing_token if s is not None and s.assigned and not s.hold.lost else None

    def owned(self) -> dict[int, int]:
        """Slices we hold and may act on: {partition: token}."""
        return {n: s.hold.fencing_token for n, s in self._slices.items() if s.assigned and not s.hold.lost}

    def _slice_for(self, key: Union[str, bytes]) -> _Slice:
        n = self.ring.partition(key)
        s = self._slices.get(n)
        if s is None or not s.assigned or s.hold.lost:
            raise PartitionLostError(f"{self.path}: partition {n} is not ours", path=self.path)
        return s

    def fence(self, key: Union[str, bytes]) -> dict:
        """A multi check that we still hold ``key``'s slice."""
        return self._slice_for(key).hold.fence()

    async def fenced(self, key: Union[str, bytes], operations: Iterable[dict]) -> list[Any]:
        """``multi([fence(key), *operations])``; rejected by coord if the slice moved on."""
        return await self._slice_for(key).hold.fenced(operations)

    @asynccontextmanager
    async def guard(self, key: Union[str, bytes]) -> AsyncIterator[int]:
        """Run a body while holding ``key``'s slice (yields the token); it is
        cancelled if the slice is revoked or lost (PartitionLostError)."""
        s = self._slice_for(key)
        async with s.hold.guard():
            yield s.hold.fencing_token

    async def settled(self) -> None:
        """Wait until we hold exactly the slices the current ring gives us."""
        while not self._is_settled():
            if self._settled is None:
                self._settled = anyio.Event()
            await self._settled.wait()

    def _is_settled(self) -> bool:
        mine = {n for n, m in self.ring.assignment().items() if m == self.member_id}
        return mine == set(self.owned()) and len(self.ring.members) > 0

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> "RingMember":
        if self._tg is not None:
            raise RecipeUsageError("a RingMember can be started only once")
        self._registration = await self.group.join(self.member_id, {**self.payload, "vnodes": self.vnodes})
        self._view = self.group.view()
        await self._view.__aenter__()
        self._view.listen(lambda _: self._poke())
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._run_scope = anyio.CancelScope()
        self._tg.start_soon(self._run)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None and self._view is not None and self._registration is not None
        self._leaving = True
        self._run_scope.cancel()  # no new slices from here on
        try:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self.handoff_timeout + self.client.request_timeout):
                    await self.leave()
        finally:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            await self._view.__aexit__(None, None, None)
        return None

    async def leave(self) -> None:
        """Leave the ring: unregister, then hand every slice over."""
        self._leaving = True
        if self._registration is not None:
            try:
                await self._registration.leave()
            except (ConnectionLossError, OperationTimeoutError) as exc:  # it goes with the session
                log.warning("%s: unregistering not confirmed: %s", self.path, exc)
        for n in list(self._slices):
            await self._give_up(n, "leaving the ring")

    def _poke(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()

    def _notify_settled(self) -> None:
        if self._settled is not None and self._is_settled():
            ev, self._settled = self._settled, None
            ev.set()

    async def _run(self) -> None:
        with self._run_scope:
            await self._run_loop()

    async def _run_loop(self) -> None:
        try:
            while not self._leaving:
                wake = self._wake = anyio.Event()
                snapshot = self.members
                self.ring = HashRing({m.id: int(m.payload.get("vnodes", 1)) for m in snapshot}, self.partitions)
                await self._reconcile()
                self._notify_settled()
                with anyio.move_on_after(self.client.request_timeout):
                    await wake.wait()
        except SessionExpiredError:
            for s in self._slices.values():
                s.hold.lose("session expired")
        except CoordError as exc:
            log.warning("%s: ring member stopped: %s", self.path, exc)

    async def _reconcile(self) -> None:
        assignment = self.ring.assignment()
        # 1. Hand over what is no longer ours (or what we lost).
        for n, s in list(self._slices.items()):
            if assignment.get(n) != self.member_id or s.hold.lost:
                await self._give_up(n, "reassigned" if not s.hold.lost else s.hold.lost_reason or "lost")
        # 2. Take what is ours and free.
        wanted = [n for n, m in assignment.items() if m == self.member_id and n not in self._slices]
        if not wanted:
            return
        async with anyio.create_task_group() as tg:
            for n in wanted:
                tg.start_soon(self._take, n)

    async def _take(self, n: int) -> None:
        node = f"{self.path}/partitions/{n}"
        try:
            try:
                with anyio.CancelScope(shield=True):
                    await self.client.create(node, self.member_id.encode(), ephemeral=True, make_parents=True)
            except NodeExistsError:
                pass
            except (ConnectionLossError, OperationTimeoutError):
                pass  # outcome unknown: the read below tells
            stat = await self.client.exists(node, watch=lambda _: self._poke())
        except CoordError:
            return
        if stat is None:
            self._poke()  # freed meanwhile: try again
            return
        if stat.ephemeral_owner != self.client.session_id:
            return  # still held by its previous owner: the watch wakes us when it is freed
        hold = Hold(self.client, node, stat.czxid, suspend_margin=self._margin)
        hold.lost_error = PartitionLostError
        s = _Slice(hold)
        self._slices[n] = s
        await hold.start()
        if hold.lost:
            return
        s.assigned = True
        assert self._tg is not None
        self._tg.start_soon(self._watch_loss, n, s)
        await _call(self.on_assign, n, hold.fencing_token)

    async def _watch_loss(self, n: int, s: _Slice) -> None:
        await s.hold.wait_lost()
        if self._slices.get(n) is s:
            self._poke()  # the run loop hands the slice over (on_revoke, delete)

    async def _give_up(self, n: int, why: str) -> None:
        s = self._slices.get(n)
        if s is None:
            return
        was_assigned, s.assigned = s.assigned, False  # owns() is False from here on
        if was_assigned:
            with anyio.move_on_after(self.handoff_timeout):
                try:
                    await _call(self.on_revoke, n)
                except Exception:  # noqa: BLE001 - an application bug must not block the hand-off
                    log.exception("%s: on_revoke(%d) failed", self.path, n)
        s.hold.lose(f"partition {n} handed over: {why}")  # cancels guarded bodies
        s.hold.stop()
        try:
            await self.client.delete(s.hold.node)
        except (NoNodeError, SessionExpiredError):
            pass
        except CoordError:
            # Not confirmed: the node stays ours until the session ends.  Keep
            # the slice (unassigned) so that the next round tries again.
            self._poke()
            return
        del self._slices[n]
