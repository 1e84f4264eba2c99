"""A live stream of the changes under a path, for the dashboard (SSE).

A ``ChangeFeed`` is a watcher in the server's ``WatchRegistry`` (a
persistent watch, recursive or not), exactly like a client's, so it sees
the same events in the same order.  Events are grouped by zxid: one
server-sent event per applied command, whose ``id`` is that zxid.  A
browser's EventSource sends the last id it saw when it reconnects
(``Last-Event-ID``), and the stream resumes after that zxid from the
namespace's event history, missing nothing; if the history no longer
reaches back that far, the stream says ``resync`` first.

A stream tells its requester only what a client watch would tell them:
no event about a node they may not READ (``NamespaceStateMachine.may_read``,
the rule a client connection's watch delivery applies), live or replayed.

Bounded: at most ``QUEUE`` events wait for a slow reader (then the stream
ends with ``overflow`` and the browser reconnects from its last id), a
replay sends at most ``MAX_REPLAY`` events, and the HTTP port admits at most
``MAX_FEEDS`` streams at once.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from coord.namespace.acl import UNCHECKED, Auth
from coord.server.watches import WatchRegistry

QUEUE = 2000
MAX_REPLAY = 10_000
MAX_FEEDS = 32
KEEPALIVE = 15.0


def sse(event: str, data: Any, id: int | None = None) -> bytes:
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ChangeFeed:
    """One stream's watcher and its bounded queue of (zxid, type, path)."""

    def __init__(self, service: Any, path: str, recursive: bool, auth: Auth = UNCHECKED) -> None:
        self.s = service
        self.path = path
        self.recursive = recursive
        self.auth = auth
        self.pending: list[tuple[int, str, str]] = []
        self.overflow = False
        self.wakeup = trio.Event()

    # Watcher protocol (called synchronously while a command applies)
    def deliver_event(self, wid: int, etype: str, path: str, zxid: int) -> None:
        if self.overflow or not self.s.ns.may_read(path, self.auth):
            return
        if len(self.pending) >= QUEUE:
            self.overflow = True
        else:
            self.pending.append((zxid, etype, path))
        self.wakeup.set()

    def start(self, after: int | None) -> list[bytes]:
        """Register the watch; return the frames to send first (a replay
        from ``after``, or a resync notice).  No await here: nothing can
        happen between the replay and the registration."""
        frames: list[bytes] = []
        applied = self.s.node.applied_index
        if after is not None:
            events = self.s.ns.events_since(after) if after <= applied else None
            if events is None or len(events) > MAX_REPLAY:
                frames.append(sse("resync", {"zxid": applied, "reason": "history does not reach back that far"
                                             if events is None else "too many events to replay"}, id=applied))
            else:
                ns, auth = self.s.ns, self.auth
                mine = [(z, t, p) for z, t, p in events
                        if WatchRegistry.matches("persistent", self.recursive, self.path, t, p)
                        and ns.may_read(p, auth)]
                frames += self._frames(mine)
        self.s.watches.add(self, 1, self.path, "persistent", self.recursive)
        frames.insert(0, sse("hello", {"path": self.path, "recursive": self.recursive, "zxid": applied}))
        return frames

    def stop(self) -> None:
        self.s.watches.remove_watcher(self)

    @staticmethod
    def _frames(events: list[tuple[int, str, str]]) -> list[bytes]:
        out: list[bytes] = []
        group: list[dict] = []
        for i, (zxid, etype, path) in enumerate(events):
            group.append({"type": etype, "path": path})
            if i + 1 == len(events) or events[i + 1][0] != zxid:
                out.append(sse("change", {"zxid": zxid, "events": group}, id=zxid))
                group = []
        return out

    def take(self) -> list[bytes]:
        """Frames for everything queued.  Every event of a command is queued
        before this can run (dispatch is synchronous), so a zxid is never split."""
        events, self.pending = self.pending, []
        self.wakeup = trio.Event()
        frames = self._frames(events)
        if self.overflow:
            frames.append(sse("overflow", {"reason": "the stream fell too far behind; reconnect to resume"}))
        return frames
