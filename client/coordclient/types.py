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
from coordclient.protocol import STAT_FIELDS

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
