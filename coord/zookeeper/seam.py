"""The typed values that cross the ZooKeeper front end's seam.

``translate`` turns a ZooKeeper request into a ``Plan`` (coord requests) or
a ``Reply``, and coord's answers into a ``Reply``; ``session`` keeps the
connection's ``WatchKey`` table and hands translation a ``Context``.  These
types live apart from both so that the modules between them (value
mappings, the /zookeeper subtree) can use them without import cycles.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from coord.zookeeper.codes import Code
from coord.zookeeper.records import ClientInfo, Record


class Kind(enum.Enum):
    """How a plan's requests may overlap with others of the same connection.

    ZooKeeper serves one session's requests in order.  coord serves reads
    at once and writes through the log, so the session only lets requests
    of one kind be in flight together: reads with reads, writes with writes
    (the server applies one connection's writes in the order it gets them),
    and a barrier alone.
    """

    READ = "read"
    WRITE = "write"
    BARRIER = "barrier"


class WatchClass(str, enum.Enum):
    """ZooKeeper's watch tables: one watch per (class, path) per connection."""

    DATA = "data"  # getData / exists watches (ZooKeeper's dataWatches)
    CHILD = "child"
    PERSISTENT = "persistent"
    RECURSIVE = "recursive"


@dataclass(frozen=True, slots=True)
class WatchKey:
    cls: WatchClass
    path: str


@dataclass(frozen=True, slots=True)
class Options:
    """Front-end settings (from the server's config)."""

    reconfig_enabled: bool = False  # ZooKeeper's reconfigEnabled (default false)
    zookeeper_subtree: bool = True  # serve /zookeeper, /zookeeper/config, /zookeeper/quota


@dataclass(frozen=True, slots=True)
class Context:
    """What translation may know about the connection: its watches (one
    coord watch id per key), its auth ids, the front end's options."""

    watches: Mapping[WatchKey, int] = field(default_factory=lambda: MappingProxyType({}))
    auth: tuple[ClientInfo, ...] = ()
    options: Options = Options()


@dataclass(frozen=True, slots=True)
class Plan:
    """The coord requests to send for one ZooKeeper request, in order."""

    calls: tuple[dict, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """A ZooKeeper reply and its effects on the connection."""

    err: int = Code.OK
    body: Record | None = None
    close: bool = False  # close the connection once this reply is sent
    add_watches: tuple[tuple[WatchKey, int], ...] = ()
    drop_watches: tuple[int, ...] = ()  # coord watch ids no longer registered
    add_auth: tuple[ClientInfo, ...] = ()
    message: str = ""  # for logs only: ZooKeeper replies carry no text


def error(code: int, message: str = "") -> Reply:
    return Reply(err=code, message=message)
