"""Recent change events, so a watch can start from a past zxid.

A client that reconnects, or sets a watch "from" the zxid it last saw,
must receive every change after that zxid or be told to re-read
(``since`` returns None).  The history is bounded and not part of
snapshots.  It keeps whole commands (a zxid's events are all there or none
are) and ``floor`` is the highest zxid dropped, so ``since(z)`` is exact
for every ``z >= floor`` and None below.

Bounded twice: at most ``size`` events and at most ``max_bytes`` bytes
(issue 11).  A count alone did not bound memory: a command's events cost
~270 bytes each as (zxid, [(type, path)]) when each write is its own
command, ~130 inside a multi of 1,000, and a 1,024-character path (what
clients may send) ~1.1 KB, so 100,000 events were anything from 13 MB to
over 100 MB.  A soak that filled the history with multis then watched it
"grow" for half an hour at 50 writes/s, and did not get it back when the
sessions closed (+16 MB per server in 20 minutes, issue 11).

Each command is kept packed, one ``str`` per command (a type letter and
the path per event, separated by NUL, which paths never contain: they are
validated), and expanded to ``Event``s only when replayed, which is rare
(a reconnect): a single-event command costs ~150 bytes instead of ~270,
and ``held`` counts exactly what the packed strings take plus a fixed
overhead per command, so ``max_bytes`` is a real bound.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import NamedTuple

from coordclient.protocol import EventType


class Event(NamedTuple):
    zxid: int
    type: str  # a protocol.EventType value
    path: str


DEFAULT_HISTORY_BYTES = 32 << 20
# What a command costs besides its packed string: the (zxid, n, packed)
# tuple, the zxid (an int above 2**30) and the deque's slot.
COMMAND_OVERHEAD = 64 + 32 + 8

_CODE = {EventType.CREATED.value: "+", EventType.DELETED.value: "-", EventType.CHANGED.value: "=",
         EventType.CHILDREN.value: "*"}
_TYPE = {code: etype for etype, code in _CODE.items()}
SEP = "\x00"  # never in a path (protocol.validate_path refuses control characters)


def pack(events: list[tuple[str, str]]) -> str:
    """One command's events as one string (``unpack`` reverses it)."""
    code = _CODE
    if len(events) == 1:
        etype, path = events[0]
        return code[etype] + path
    return SEP.join([code[etype] + path for etype, path in events])


def unpack(packed: str) -> list[tuple[str, str]]:
    typ = _TYPE
    return [(typ[item[0]], item[1:]) for item in packed.split(SEP)]


class EventHistory:
    __slots__ = ("commands", "count", "size", "floor", "held", "max_bytes")

    def __init__(self, size: int, floor: int = 0, max_bytes: int = DEFAULT_HISTORY_BYTES) -> None:
        self.commands: deque[tuple[int, int, str]] = deque()  # (zxid, events in it, packed events)
        self.count = 0  # events held
        self.size = size  # at most this many
        self.held = 0  # bytes held (packed strings + COMMAND_OVERHEAD each)
        self.max_bytes = max_bytes  # at most this many
        self.floor = floor

    def reset(self, floor: int) -> None:
        self.commands.clear()
        self.count = 0
        self.held = 0
        self.floor = floor

    def add(self, zxid: int, events: list[tuple[str, str]]) -> None:
        """Record one command's events (packed: the list is not kept)."""
        packed = pack(events)
        self.commands.append((zxid, len(events), packed))
        self.count += len(events)
        self.held += sys.getsizeof(packed) + COMMAND_OVERHEAD
        while self.count > self.size or self.held > self.max_bytes:
            dropped, n, old = self.commands.popleft()
            self.count -= n
            self.held -= sys.getsizeof(old) + COMMAND_OVERHEAD
            self.floor = dropped  # zxids only grow

    def since(self, zxid: int) -> list[Event] | None:
        if zxid < self.floor:
            return None
        newer = []
        for cmd in reversed(self.commands):
            if cmd[0] <= zxid:
                break
            newer.append(cmd)
        return [Event(z, etype, path) for z, _, packed in reversed(newer) for etype, path in unpack(packed)]
