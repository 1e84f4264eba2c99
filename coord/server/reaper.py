"""The leader deletes empty containers and expired TTL nodes.

ZooKeeper's ContainerManager, the coord way: the decision whether a node is
due depends on the time (a TTL node), so it cannot be taken by each server
as it applies entries; instead the leader looks every ``interval`` at the
nodes that can be reaped (``NamespaceStateMachine.reap_candidates``, a set
kept with the tree, no walk), and proposes one ``reap`` command naming the
due ones.  Applying it checks each path again with the command's own clock
(the leader's, stamped into the entry), so a child created or a set done in
between keeps the node, identically on every server.

Like session expiry, a reap is the leader's own decision: proposed only
while this server leads, never forwarded (``WritePath.submit(leader_only=
True)``), one at a time.  A deposed leader's reap that still commits is
harmless: the apply-time check is what deletes.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import trio

from coord.namespace.commands import Command, Reap, encode
from coordclient.errors import CoordError

log = logging.getLogger("coord.reaper")

__all__ = ["Reaper"]

MAX_PER_PASS = 1000  # paths in one reap command (ZooKeeper: znode.container.maxPerMinute, 10,000)


class Reaper:
    def __init__(self, node: Any, ns: Any, writes: Any, *, interval: float,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.node = node  # RaftNode
        self.ns = ns  # NamespaceStateMachine
        self.writes = writes  # WritePath
        self.interval = interval
        self._wall_ms = wall_ms or writes.now_ms  # the clock the leader stamps into entries (node mtimes)
        self._next = 0.0
        self._busy = False
        self.reaped_total = 0

    def on_period(self, now: float, nursery: trio.Nursery) -> None:
        """Called often (every liveness period); looks every ``interval``."""
        if now < self._next or self._busy or not self.node.is_leader:
            return
        self._next = now + self.interval
        paths = self.ns.reap_candidates(self._wall_ms(), MAX_PER_PASS)
        if paths:
            self._busy = True
            nursery.start_soon(self._reap, paths, self.node.term)

    async def _reap(self, paths: list[str], term: int) -> None:
        try:
            if not self.node.is_leader or self.node.term != term:
                return
            f = self.writes.submit(encode(Command("reap", Reap(tuple(paths)))), leader_only=True)
            try:
                _, res = await f.wait()
            except CoordError as e:
                log.info("reaping %d containers/TTL nodes failed (%s); will retry", len(paths), e)
                return
            reaped = res.get("r", {}).get("reaped", []) if res.get("ok") else []
            self.reaped_total += len(reaped)
            if reaped:
                log.debug("reaped %d containers/TTL nodes", len(reaped))
        finally:
            self._busy = False
