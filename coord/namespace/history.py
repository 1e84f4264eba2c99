"""Recent change events, so a watch can start from a past zxid.

A client that reconnects, or sets a watch "from" the zxid it last saw,
must receive every change after that zxid or be told to re-read
(``since`` returns None).  The history is bounded and not part of
snapshots.  It keeps whole commands (a zxid's events are all there or none
are) and ``floor`` is the highest zxid dropped, so ``since(z)`` is exact
for every ``z >= floor`` and None below.

Commands are stored as (zxid, events) as applied, and events are only
expanded to (zxid, type, path) when replayed: applying stays one append.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple


class Event(NamedTuple):
    zxid: int
    type: str  # a protocol.EventType value
    path: str


class EventHistory:
    __slots__ = ("commands", "count", "size", "floor")

    def __init__(self, size: int, floor: int = 0) -> None:
        self.commands: deque[tuple[int, list[tuple[str, str]]]] = deque()
        self.count = 0  # events held
        self.size = size  # at most this many
        self.floor = floor

    def reset(self, floor: int) -> None:
        self.commands.clear()
        self.count = 0
        self.floor = floor

    def add(self, zxid: int, events: list[tuple[str, str]]) -> None:
        """Record one command's events (the list is kept, not copied)."""
        self.commands.append((zxid, events))
        self.count += len(events)
        while self.count > self.size:
            dropped, evs = self.commands.popleft()
            self.count -= len(evs)
            self.floor = dropped  # zxids only grow

    def since(self, zxid: int) -> list[Event] | None:
        if zxid < self.floor:
            return None
        newer = []
        for cmd in reversed(self.commands):
            if cmd[0] <= zxid:
                break
            newer.append(cmd)
        return [Event(z, etype, path) for z, evs in reversed(newer) for etype, path in evs]
