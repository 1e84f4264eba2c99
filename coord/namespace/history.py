"""Recent change events, so a watch can start from a past zxid.

A client that reconnects, or sets a watch "from" the zxid it last saw,
must receive every change after that zxid or be told to re-read
(``since`` returns None).  The history is bounded and not part of
snapshots: ``floor`` is the highest zxid whose events may be incomplete,
so ``since(z)`` is exact for every ``z >= floor`` and None below.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, NamedTuple


class Event(NamedTuple):
    zxid: int
    type: str  # a protocol.EventType value
    path: str


class EventHistory:
    __slots__ = ("events", "size", "floor")

    def __init__(self, size: int, floor: int = 0) -> None:
        self.events: deque[Event] = deque()
        self.size = size
        self.floor = floor

    def reset(self, floor: int) -> None:
        self.events.clear()
        self.floor = floor

    def add(self, zxid: int, events: Iterable[tuple[str, str]]) -> None:
        h = self.events
        h.extend(Event(zxid, etype, path) for etype, path in events)
        excess = len(h) - self.size
        if excess > 0:
            for _ in range(excess - 1):
                h.popleft()
            dropped = h.popleft().zxid  # zxids never decrease: the last dropped is the highest
            if dropped > self.floor:
                self.floor = dropped

    def since(self, zxid: int) -> list[Event] | None:
        if zxid < self.floor:
            return None
        out = []
        for ev in reversed(self.events):
            if ev.zxid <= zxid:
                break
            out.append(ev)
        out.reverse()
        return out
