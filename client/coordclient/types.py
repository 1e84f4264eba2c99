"""The values the SDK hands to applications: connection states, node stats,
watch events.

They live in a module of their own so that the client, the watch machinery,
the recipes and the blocking facade all share one definition without
importing each other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, Union

from coordclient.errors import CoordError
from coordclient.protocol import MAX_TTL_MS, STAT_FIELDS

__all__ = ["RESYNC", "ConnState", "Stat", "WatchCallback", "WatchEvent"]

RESYNC = "resync"


class ConnState(enum.Enum):
    """Connection/session state, as reported to listeners.

    CONNECTED and RECONNECTED both mean "requests are being served";
    RECONNECTED says the session survived a connection loss (watches were
    re-registered).  SUSPENDED: no connection, the session may still live.
    EXPIRED and CLOSED are final.  A client that was never opened is CLOSED.
    """

    CONNECTED = "connected"
    SUSPENDED = "suspended"
    RECONNECTED = "reconnected"
    EXPIRED = "expired"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Stat:
    """A node's metadata (ZooKeeper's Stat); times in ms since the epoch."""

    czxid: int
    mzxid: int
    pzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    aversion: int = 0  # ACL changes (set_acl) of the node

    # ``ephemeral_owner`` holds what ZooKeeper's ephemeralOwner does: the
    # owning session of an ephemeral node, or a marker of a container
    # (0x8000000000000000) or TTL node (0xFF00000000000000 | ttl in ms),
    # read as a signed 64-bit number (negative for both markers).
    @property
    def ephemeral(self) -> bool:
        return self.ephemeral_owner > 0

    @property
    def container(self) -> bool:
        return self.ephemeral_owner == -(1 << 63)

    @property
    def ttl(self) -> float | None:
        """A TTL node's time to live in seconds; None for any other node."""
        ms = self.ephemeral_owner + (1 << 56)
        return ms / 1000 if 0 < ms <= MAX_TTL_MS else None

    @property
    def kind(self) -> str:
        """"ephemeral", "container", "ttl" or "persistent"."""
        if self.ephemeral:
            return "ephemeral"
        if self.container:
            return "container"
        return "ttl" if self.ttl is not None else "persistent"

    @classmethod
    def from_wire(cls, raw: Sequence[int]) -> "Stat":
        if isinstance(raw, (list, tuple)) and len(raw) == len(STAT_FIELDS) - 1:
            raw = [*raw, 0]  # a server from before ACLs: no aversion
        if not isinstance(raw, (list, tuple)) or len(raw) != len(STAT_FIELDS):
            raise CoordError(f"malformed stat from server: {raw!r}")
        return cls(*raw)


assert tuple(f for f in Stat.__dataclass_fields__) == STAT_FIELDS


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A watch notification.

    ``type`` is a str: an ``EventType`` value ("created", "deleted",
    "changed", "children"; ``EventType`` members compare equal to them) or
    ``RESYNC`` ("resync"): the server could not replay what happened while
    this client was disconnected, so the application must re-read the state
    it cares about; ``zxid`` is then the point from which events are
    complete again.
    """

    type: str
    path: str
    zxid: int


# A one-shot watch callback: plain or async, called with the one event.
WatchCallback = Callable[[WatchEvent], Union[None, Awaitable[None]]]
