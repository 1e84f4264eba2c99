"""Leader election: candidates queue like lock waiters; the first one leads.

A candidate's node name carries its identity (percent-encoded), so the
sequence of leaders can be computed from child creations and deletions
alone: ``observe()`` replays exactly those events from a consistent
starting point and therefore reports every leadership change, in order,
including leaders that lasted too briefly for anyone to read their data.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from coordclient.errors import CoordError, NodeExistsError, NoNodeError
from coordclient.protocol import MAX_PATH_LENGTH
from coordclient.recipes._core import (
    Entry,
    LeadershipLostError,
    Participant,
    RecipeUsageError,
    check_recipe_path,
    parse,
)
from coordclient.types import RESYNC
from coordclient.watches import WatchStream

if TYPE_CHECKING:
    from coordclient.client import Client

__all__ = ["Campaign", "Election", "Leader", "LeaderObserver"]

CANDIDATE = "cand"
SNAPSHOT_ATTEMPTS = 50  # consistent-listing attempts before giving up on a directory in constant churn


@dataclass(frozen=True, slots=True)
class Leader:
    """A term of leadership: who, and its fencing token (the czxid of the
    leader's node, strictly increasing from one term to the next)."""

    identity: str
    token: int
    node: str


class Campaign(Participant):
    """One candidacy (from ``Election.campaign()``); while leading it is a
    held ``Lock`` in every respect: ``fencing_token``, ``fence()``,
    ``fenced()``, ``lost``, ``wait_lost()``."""

    kind = CANDIDATE
    lost_error = LeadershipLostError

    def __init__(self, client: "Client", path: str, identity: str, *, suspend_margin: float | None = None):
        super().__init__(client, path, suspend_margin=suspend_margin)
        self.identity = identity
        self._data = identity.encode("utf-8")

    def _extra(self) -> str:
        return quote(self.identity, safe="") + "-"


def _term(path: str, entry: Entry, czxid: int) -> Leader | None:
    """The term a candidate node stands for (None for other recipes' nodes)."""
    if entry.kind != CANDIDATE:
        return None
    return Leader(unquote(entry.extra or ""), czxid, f"{path}/{entry.name}")


def _terms(path: str, kids: list) -> dict[int, Leader]:
    """Candidates by sequence number, from a ``children(stats=True)`` listing."""
    out = {}
    for name, stat in kids:
        entry = parse(name)
        term = None if entry is None else _term(path, entry, stat.czxid)
        if term is not None:
            out[entry.seq] = term  # type: ignore[union-attr]
    return out


class Election:
    """Leader election among participants that each name an ``identity``::

        e = Election(client, "/election/scheduler", "host-a:8080")
        async with e.campaign() as term:      # waits until we lead
            ...                               # cancelled if leadership is lost
        await e.leader()                      # current leader's identity, or None
        async for leader in e.observe(): ...  # every change, in order

    Leaving the ``async with`` (or ``await e.resign()``) steps down; losing
    leadership (session expired or suspended past the margin, node deleted)
    cancels the body and raises ``LeadershipLostError``.  ``term`` is the
    ``Campaign``: ``term.fencing_token`` strictly increases across terms.
    """

    def __init__(self, client: "Client", path: str, identity: str, *, suspend_margin: float | None = None):
        if not isinstance(identity, str):
            raise TypeError("identity must be a str")
        if len(quote(identity, safe="")) > MAX_PATH_LENGTH // 2:
            raise ValueError("identity too long (its percent-encoding must fit in half a path)")
        self.client = client
        self.path = path
        self.identity = identity
        self._margin = suspend_margin
        self._campaign: Campaign | None = None
        check_recipe_path(path)

    def campaign(self) -> Campaign:
        """A new candidacy for ``async with`` (or ``acquire()``/``release()``).
        One at a time per Election object."""
        if self._campaign is not None and self._campaign._state != "idle":
            raise RecipeUsageError(f"{self.path}: this Election already campaigns; resign first")
        self._campaign = Campaign(self.client, self.path, self.identity, suspend_margin=self._margin)
        return self._campaign

    async def resign(self) -> None:
        """Step down (or stop waiting to lead); idempotent."""
        if self._campaign is not None:
            await self._campaign.release()

    async def leader_info(self) -> Leader | None:
        try:
            terms = _terms(self.path, await self.client.children(self.path, stats=True))
        except NoNodeError:
            return None
        return terms[min(terms)] if terms else None

    async def leader(self) -> str | None:
        """The current leader's identity, or None."""
        info = await self.leader_info()
        return None if info is None else info.identity

    def observe(self) -> "LeaderObserver":
        """Every leadership change, in order: ``async with e.observe() as
        changes: async for leader in changes`` (or iterate it directly)."""
        return LeaderObserver(self.client, self.path)


class LeaderObserver:
    """Yields the current leader (a ``Leader``, or None when there is
    none), then each change.

    Start: list the candidates between two reads of the directory's pzxid
    (the zxid of its last child change); when both reads agree, the listing
    is the state at exactly that zxid.  Then a recursive watch from that
    zxid delivers every later creation and deletion once, in order, across
    reconnects.  If the server's history cannot cover a gap (resync), the
    observer starts over from a new listing and reports the leader then;
    changes inside that gap cannot be recovered and are not reported.
    The election directory is created (empty) if it does not exist yet, so
    that there is a starting point to read.
    """

    def __init__(self, client: "Client", path: str):
        self.client = client
        self.path = path
        self._stream: WatchStream | None = None
        self._members: dict[int, Leader] = {}  # candidates by sequence number
        self._current: Any = ()  # the last leader yielded (() before the first)
        self._pending: collections.deque[Leader | None] = collections.deque()
        self._closed = False

    async def __aenter__(self) -> "LeaderObserver":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    def __aiter__(self) -> "LeaderObserver":
        return self

    async def __anext__(self) -> Leader | None:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            if self._stream is None:
                await self._start()
                continue
            try:
                event = await self._stream.__anext__()
            except StopAsyncIteration:
                self._closed = True
                raise
            if event.type == RESYNC:
                await self._stream.aclose()
                self._stream = None
                continue
            parent, _, name = event.path.rpartition("/")
            entry = parse(name) if parent == self.path else None
            if entry is None:
                continue
            if event.type == "created":
                term = _term(self.path, entry, event.zxid)  # a creation's zxid is the node's czxid
                if term is not None:
                    self._members[entry.seq] = term
            elif event.type == "deleted":
                self._members.pop(entry.seq, None)
            self._report()
        return self._pending.popleft()

    def _report(self) -> None:
        leader = self._members[min(self._members)] if self._members else None
        if leader != self._current:
            self._current = leader
            self._pending.append(leader)

    async def _start(self) -> None:
        for _ in range(SNAPSHOT_ATTEMPTS):
            before = await self.client.exists(self.path)
            if before is None:
                try:
                    await self.client.create(self.path, b"", make_parents=True)
                except NodeExistsError:
                    pass
                continue
            try:
                kids = await self.client.children(self.path, stats=True)
            except NoNodeError:
                continue
            after = await self.client.exists(self.path)
            if after is not None and after.czxid == before.czxid and after.pzxid == before.pzxid:
                break
        else:
            raise CoordError(f"{self.path}: children change too fast to take a consistent snapshot")
        self._members = _terms(self.path, kids)
        stream = self.client.watch(self.path, recursive=True, start_zxid=before.pzxid)
        await stream.start()
        self._stream = stream
        self._report()

