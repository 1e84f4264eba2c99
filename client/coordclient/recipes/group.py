"""Group membership and service discovery (kazoo's ``Party``, Curator's
``ServiceDiscovery``).

A member registers an *ephemeral* node ``<path>/<id>`` whose data is its
payload (a JSON object: host, port, metadata...).  It stays a member while
its session lives: a crashed process drops out by itself once its session
expires.  ``members()`` reads the live set once; ``view()`` keeps a live,
always-converging copy (a ``TreeCache`` one level deep) and hands out
``Membership`` snapshots: immutable, so code can iterate one while the view
moves on, and numbered, so two snapshots can be compared cheaply.
"""

from __future__ import annotations

import inspect
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Mapping, Union

import anyio

from coordclient.errors import ConnectionLossError, NodeExistsError, NoNodeError, OperationTimeoutError, \
    SessionExpiredError
from coordclient.recipes._core import RecipeUsageError, check_recipe_path
from coordclient.recipes.cache import INITIALIZED, CacheEvent, TreeCache

log = logging.getLogger("coordclient.recipes")

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Group", "GroupView", "Member", "Membership", "Registration"]


@dataclass(frozen=True, slots=True)
class Member:
    """One live member: its ``id``, ``payload`` and node (``czxid``: when it joined)."""

    id: str
    payload: Mapping[str, Any]
    node: str
    czxid: int

    @property
    def host(self) -> Any:
        return self.payload.get("host")

    @property
    def port(self) -> Any:
        return self.payload.get("port")


@dataclass(frozen=True, slots=True)
class Membership:
    """A snapshot of the live set, sorted by id; ``version`` grows with
    every change the view applied."""

    members: tuple[Member, ...] = ()
    version: int = 0
    _by_id: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({m.id: m for m in self.members})

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.members)

    def get(self, member_id: str) -> Member | None:
        return self._by_id.get(member_id)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._by_id

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)


def _decode(payload: bytes) -> Mapping[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8")) if payload else {}
    except (UnicodeDecodeError, ValueError):
        return {"raw": payload.hex()}
    return value if isinstance(value, dict) else {"value": value}


def _encode(payload: Mapping[str, Any] | None) -> bytes:
    return json.dumps(dict(payload or {}), sort_keys=True, separators=(",", ":")).encode("utf-8")


class Registration:
    """Our membership: ``member``, ``update(payload)``, ``leave()``; an
    async context manager that leaves on exit."""

    def __init__(self, group: "Group", member: Member):
        self.group = group
        self.member = member
        self.active = True

    async def update(self, payload: Mapping[str, Any]) -> None:
        """Replace the payload (watchers see an update)."""
        await self.group.client.set(self.member.node, _encode(payload))
        self.member = Member(self.member.id, dict(payload), self.member.node, self.member.czxid)

    async def leave(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            await self.group.client.delete(self.member.node)
        except (NoNodeError, SessionExpiredError):
            pass

    async def __aenter__(self) -> "Registration":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.group.client.request_timeout):
                try:
                    await self.leave()
                except (ConnectionLossError, OperationTimeoutError) as exc:
                    # Not confirmed: the node is ephemeral, so it goes when the
                    # session ends; leaving the block must not fail for that.
                    log.warning("%s: leaving not confirmed (%s); the node goes with the session",
                                self.member.node, exc)


class Group:
    """Members of ``path``::

        group = Group(client, "/services/api")
        async with await group.join("host-a:8080", {"host": "host-a", "port": 8080}):
            ...                                   # registered while this block runs
        snapshot = await group.members()          # Membership
        async with group.view() as view:          # a live copy
            for member in view.snapshot(): ...
    """

    def __init__(self, client: "Client", path: str):
        self.client = client
        self.path = check_recipe_path(path)

    async def join(self, member_id: str | None = None, payload: Mapping[str, Any] | None = None) -> Registration:
        """Register as ``member_id`` (default: a random id) with ``payload``.
        NodeExistsError if a live member already has that id."""
        member_id = member_id or secrets.token_hex(8)
        if not member_id or "/" in member_id:
            raise ValueError("member_id must be a non-empty name without '/'")
        node = f"{self.path}/{member_id}"
        try:
            await self.client.create(node, _encode(payload), ephemeral=True, make_parents=True)
        except NodeExistsError:
            stat = await self.client.exists(node)
            if stat is None or stat.ephemeral_owner != self.client.session_id:
                raise
        stat = await self.client.exists(node)
        if stat is None:
            raise NoNodeError(f"{node} vanished right after joining", path=node)
        return Registration(self, Member(member_id, dict(payload or {}), node, stat.czxid))

    async def members(self) -> Membership:
        """The live set, read now."""
        try:
            kids = await self.client.children(self.path)
        except NoNodeError:
            return Membership()
        out = []
        for name in sorted(kids):
            try:
                data, stat = await self.client.get(f"{self.path}/{name}")
            except NoNodeError:
                continue
            out.append(Member(name, _decode(data), f"{self.path}/{name}", stat.czxid))
        return Membership(tuple(out))

    def view(self) -> "GroupView":
        return GroupView(self)


MembershipListener = Callable[[Membership], Union[None, Awaitable[None]]]


class GroupView:
    """A live copy of a group (use with ``async with``): ``snapshot()``,
    ``await changed()``, ``listen(callback(Membership))``."""

    def __init__(self, group: Group):
        self.group = group
        self._cache = TreeCache(group.client, group.path, max_depth=1)
        self._snapshot = Membership()
        self._listeners: list[MembershipListener] = []
        self._started = False

    async def __aenter__(self) -> "GroupView":
        if self._started:
            raise RecipeUsageError("a view can be started only once")
        self._started = True
        client = self.group.client
        if await client.exists(self.group.path) is None:
            try:
                await client.create(self.group.path, make_parents=True)
            except NodeExistsError:
                pass
        self._cache.listen(self._on_event)
        await self._cache.__aenter__()
        await self._cache.initialized()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._cache.__aexit__(*exc_info)

    def listen(self, callback: MembershipListener) -> None:
        """``callback(Membership)`` after each change of the live set."""
        self._listeners.append(callback)

    def snapshot(self) -> Membership:
        return self._snapshot

    async def changed(self) -> Membership:
        """Wait for the next change; the new snapshot."""
        version = self._snapshot.version
        while self._snapshot.version == version:
            await self._cache.wait_changed()
        return self._snapshot

    async def _on_event(self, event: CacheEvent) -> None:
        if event.type != INITIALIZED and (event.node is None or event.node.path == self.group.path):
            return
        prefix = self.group.path + "/"
        members = tuple(Member(p[len(prefix):], _decode(n.data), p, n.stat.czxid)
                        for p, n in sorted(self._cache.snapshot().items()) if p.startswith(prefix))
        if members == self._snapshot.members and event.type != INITIALIZED:
            return
        self._snapshot = Membership(members, self._snapshot.version + 1)
        for callback in list(self._listeners):
            result = callback(self._snapshot)
            if inspect.iscoroutine(result):
                await result
