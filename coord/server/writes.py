"""The write path of one server: from a client's encoded command to its answer.

A write is a command encoded once by the server that received it
(``namespace.commands.encode``).  Those bytes travel unchanged:

* on the leader they are proposed at once, behind a small header
  (``commands.entry_data``: the leader's clock, this server's id and the
  write's request id);
* on a follower they are forwarded to the leader, many per message
  (``envelope.Forward``, flushed once per scheduler pass), and the leader
  wraps them the same way, naming the follower.

Every server applies every entry, so the server that received a write
answers its client when *it* applies the entry that names it (``applied``,
called by the state machine): the result is computed right there, the client
can read its own write on this server at once, and no reply message crosses
the network.  What can go wrong ends in a clear, retryable error: the leader
refuses (``ForwardRejected``, e.g. it is not the leader any more), the
leader changes while the write is pending (it may or may not commit: the
client retries with the same session sequence number and the state machine
deduplicates), or nothing happens within the write timeout.  A server whose
disk is full refuses writes at once with ``NoSpace`` (it could not apply
them; see ``diskspace``).  With no leader
known, a write waits (no task, just a list) until one is elected or its
deadline passes.

Pending writes are bounded (``max_pending``); a server that has that many
stops reading new requests (``wait_room``) instead of queueing more, so
forwarded traffic is never dropped for lack of space.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from typing import Any, Callable

import trio

from coord.namespace.commands import entry_data
from coord.raft.types import ProposalDropped
from coord.server.future import Future
from coord.transport.envelope import Forward, ForwardRejected
from coordclient.errors import NoSpaceError, NotLeaderError, OperationTimeoutError

log = logging.getLogger("coord.writes")

__all__ = ["WritePath"]

MAX_FORWARD_BATCH = 4096


class _Pending:
    __slots__ = ("future", "deadline", "data", "leader_only")

    def __init__(self, future: Future, deadline: float, data: bytes, leader_only: bool):
        self.future = future
        self.deadline = deadline
        self.data = data  # kept until it is handed to a leader
        self.leader_only = leader_only


class WritePath:
    def __init__(self, server_id: int, node: Any, send: Callable[[Any], None], *, timeout: float,
                 max_pending: int = 16384, clock: Callable[[], float] = time.time):
        self.server_id = server_id
        self.node = node  # RaftNode: propose_nowait, is_leader, leader_id
        self.send = send  # peer transport
        self.timeout = timeout
        self.max_pending = max_pending
        self._clock = clock  # the leader's clock stamped into entries (ms)
        # Request ids start at a random point, so an entry proposed by an
        # earlier life of this process can never answer a write of this one.
        self._next_rid = random.getrandbits(62) + 1
        self._pending: dict[int, _Pending] = {}  # rid -> write, oldest first
        self._no_leader: deque[int] = deque()  # rids waiting for a leader to be known
        self._outbox: list[tuple[int, bytes]] = []  # to the leader, flushed once per scheduler pass
        self._outbox_to = 0
        self._flush_scheduled = False
        self._room = trio.Event()
        self._room.set()
        self.stats = {"submitted": 0, "forwarded": 0, "rejected": 0, "timed_out": 0, "leader_changes_failed": 0}

    # -- the receiving server ------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_pending

    async def wait_room(self) -> None:
        while self.full:
            await self._room.wait()

    def submit(self, data: bytes, *, leader_only: bool = False) -> Future:
        """Replicate one encoded command; the future resolves to (zxid,
        result map) when this server applies it, or fails with
        NotLeaderError / OperationTimeoutError (outcome unknown: retry).
        ``leader_only``: never forward it (the leader's own decisions)."""
        f = Future()
        rid = self._next_rid
        self._next_rid += 1
        self.stats["submitted"] += 1
        self._pending[rid] = _Pending(f, trio.current_time() + self.timeout, data, leader_only)
        if self.full:
            self._room = trio.Event()
        self._dispatch(rid)
        return f

    def _dispatch(self, rid: int) -> None:
        p = self._pending.get(rid)
        if p is None:
            return
        node = self.node
        if getattr(node, "disk_full", False):
            # This server could not apply the entry (applying waits for its
            # own disk): refuse at once rather than time out (diskspace.py).
            self._finish(rid, error=NoSpaceError(
                "this server's disk is full: it accepts no writes until space is freed (try another server)"))
            return
        if node.is_leader:
            try:
                node.propose_nowait(entry_data(p.data, t=self.now_ms(), origin=self.server_id, rid=rid))
                p.data = b""
                return
            except ProposalDropped:
                pass  # lost leadership a moment ago: forward, or wait for a leader
        leader = node.leader_id
        if p.leader_only:
            self._finish(rid, error=NotLeaderError("this server is not the leader"))
        elif leader and leader != self.server_id:
            self._forward(leader, rid, p)
        else:
            self._no_leader.append(rid)

    def _forward(self, leader: int, rid: int, p: _Pending) -> None:
        if self._outbox and self._outbox_to != leader:
            self._flush()
        self._outbox_to = leader
        self._outbox.append((rid, p.data))
        p.data = b""
        self.stats["forwarded"] += 1
        if len(self._outbox) >= MAX_FORWARD_BATCH:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox:
            items, self._outbox = tuple(self._outbox), []
            self.send(Forward(self.server_id, self._outbox_to, items))

    def applied(self, origin: int, rid: int, zxid: int, result: Any) -> None:
        """The state machine applied an entry: answer the write it came from, if ours."""
        if origin == self.server_id:
            self._finish(rid, value=(zxid, result))

    def on_rejected(self, m: ForwardRejected) -> None:
        for rid, why in m.items:
            self.stats["rejected"] += 1
            self._finish(rid, error=NotLeaderError(f"the leader refused the write: {why}"))

    def leader_changed(self, leader: int) -> None:
        """A new leader (or none): writes in flight may or may not commit, so
        they end now (the client retries; duplicates are recognised), and
        writes waiting for a leader go to the new one."""
        in_flight = [rid for rid, p in self._pending.items() if not p.data]
        for rid in in_flight:
            self.stats["leader_changes_failed"] += 1
            self._finish(rid, error=NotLeaderError("the leader changed while the write was in flight; "
                                                   "it may or may not have been applied"))
        if leader:
            waiting, self._no_leader = self._no_leader, deque()
            for rid in waiting:
                self._dispatch(rid)

    def expire(self, now: float) -> None:
        """Fail writes past their deadline (call periodically)."""
        for rid, p in list(self._pending.items()):
            if p.deadline > now:
                break
            self.stats["timed_out"] += 1
            self._finish(rid, error=OperationTimeoutError("the write did not complete in time; its outcome is unknown"))
        if self._no_leader:
            self._no_leader = deque(rid for rid in self._no_leader if rid in self._pending)

    def _finish(self, rid: int, *, value: Any = None, error: BaseException | None = None) -> None:
        p = self._pending.pop(rid, None)
        if p is None:
            return
        if not self._room.is_set() and not self.full:
            self._room.set()
        if error is not None:
            p.future.fail(error)
        else:
            p.future.set(value)

    def now_ms(self) -> int:
        """The clock stamped into entries (``t``: node ctime/mtime), in ms."""
        return int(self._clock() * 1000)

    # -- the leader ----------------------------------------------------------------------
    def on_forward(self, m: Forward) -> None:
        """Propose what a follower forwarded, each behind a header naming it;
        what cannot be proposed goes back at once with the reason."""
        node = self.node
        t = self.now_ms()
        rejected: list[tuple[int, str]] = []
        for rid, data in m.items:
            try:
                node.propose_nowait(entry_data(data, t=t, origin=m.frm, rid=rid))
            except ProposalDropped as e:
                rejected.append((rid, e.reason))
        if rejected:
            self.send(ForwardRejected(self.server_id, m.frm, node.leader_id, tuple(rejected)))
