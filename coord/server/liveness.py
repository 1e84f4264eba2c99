"""Session liveness: who keeps sessions alive, and who ends them.

Only the leader expires sessions, from its own timers (``SessionTracker``):
every request touches its session; the leader touches directly, a follower
collects the ids it saw and sends them to the leader in a numbered batch
(``envelope.SessionTouches``) every period, empty or not.  The leader
acknowledges each batch (``TouchAck``), and the send time of the newest
acknowledged batch tells the follower until when the leader is known to
hear it (``reaches_leader``).  A follower that cannot show that drops its
session clients, so they move to a server that can, before the leader can
expire them: a lock holder learns it may have lost its lock in time.

Expiry is proposed by the leader only, for the term whose timers decided
it, and never forwarded (``WritePath.submit(leader_only=True)``): a deposed
leader's stale verdict must not kill live sessions.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import trio

from coord.namespace.commands import Command, SessionExpire, encode
from coord.raft.types import Role
from coord.server.sessions import SessionTracker
from coord.transport.envelope import SessionTouches, TouchAck
from coordclient.errors import CoordError

log = logging.getLogger("coord.liveness")

__all__ = ["SessionLiveness"]


class SessionLiveness:
    def __init__(self, server_id: int, node: Any, ns: Any, writes: Any, send: Callable[[Any], None], *,
                 min_session_timeout: float, write_timeout: float,
                 drop_session_clients: Callable[[str], None]):
        self.server_id = server_id
        self.node = node  # RaftNode
        self.ns = ns  # NamespaceStateMachine
        self.writes = writes  # WritePath
        self.send = send
        self.write_timeout = write_timeout
        self.drop_session_clients = drop_session_clients
        self.tracker = SessionTracker()
        self._tracked_term = -1
        self._tracked_version: tuple[int, int] = (-1, -1)  # the session table the tracker follows
        self._touched: set[int] = set()
        # Every period a batch goes to the leader; a session's client is
        # dropped at most T/2 + period after the newest acknowledged batch was
        # sent (T its own timeout, period an eighth of the shortest); a lock
        # holder gives up a sixth of T after that: before 0.8 T, so before
        # the leader can expire it.
        self.period = max(0.05, min_session_timeout / 8)
        self.bound = min_session_timeout / 2
        self._seq = 0
        self._sent: dict[int, float] = {}  # batch number -> send time (recent ones)
        self._heard_us_at = -math.inf
        self._expiring = False
        self.expired_total = 0

    def touch(self, sid: int) -> None:
        if self.node.is_leader:
            self.tracker.touch(sid, trio.current_time())
        else:
            self._touched.add(sid)

    def reaches_leader(self, session_timeout: float | None = None) -> bool:
        """Whether this server may keep a session whose timeout is
        ``session_timeout`` seconds (the shortest allowed if None): it is the
        leader, or the leader acknowledged a keepalive batch sent within the
        last half of that timeout.  A follower that hears the leader but
        cannot reach it (a one-way cut) fails this too: its clients'
        keepalives go nowhere, so it must not keep telling them all is well.

        Each session by its own timeout: a busy leader that acknowledges
        late must not make a follower drop 60 s sessions after 5 s (half the
        shortest timeout) -- thousands of clients reconnecting at once is
        what makes a busy ensemble busier.  Nor does an election by itself
        drop anybody: until the bound passes, the leader that acknowledged us
        cannot have expired these sessions, and a new one gives every session
        a fresh timeout; clients wait out the election where they are."""
        node = self.node
        if node.is_leader:
            return True
        bound = self.bound if session_timeout is None else max(self.bound, session_timeout / 2)
        return trio.current_time() - self._heard_us_at <= bound

    def leader_changed(self, leader: int) -> None:
        """A new leader: tell it at once which sessions are alive here (and
        get its acknowledgement) rather than at the next period, so that
        clients are not dropped for lack of an acknowledgement after a quick
        failover."""
        if leader and leader != self.server_id:
            self._send_touches(leader)

    # -- messages ------------------------------------------------------------------
    def on_touches(self, m: SessionTouches) -> None:
        if not self.node.is_leader:
            return
        now = trio.current_time()
        for sid in m.sids:
            self.tracker.touch(sid, now)
        self.send(TouchAck(self.server_id, m.frm, m.seq))

    def on_ack(self, m: TouchAck) -> None:
        sent = self._sent.get(m.seq)
        if sent is not None and m.frm == self.node.leader_id:
            self._heard_us_at = max(self._heard_us_at, sent)

    def _send_touches(self, leader: int) -> None:
        sids, self._touched = tuple(sorted(self._touched)), set()
        self._seq += 1
        self._sent[self._seq] = trio.current_time()
        self._sent.pop(self._seq - 64, None)
        self.send(SessionTouches(self.server_id, leader, self._seq, sids))

    # -- called every period by the service ----------------------------------------------
    def on_period(self, now: float, stalled: bool, nursery: trio.Nursery) -> None:
        """Forward keepalives (followers) or expire sessions (leader).
        ``stalled``: this process was not running for a while (SIGSTOP)."""
        st = self.node.soft
        if st.role is Role.LEADER:
            self._lead(now, st.term, stalled, nursery)
        else:
            self._tracked_term = -1
            if st.leader:
                self._send_touches(st.leader)
            if not self.reaches_leader():  # some sessions may be due: each is checked by its own timeout
                self.drop_session_clients("this server cannot reach the leader right now")

    def _lead(self, now: float, term: int, stalled: bool, nursery: trio.Nursery) -> None:
        version = self.ns.sessions_version()
        if self._tracked_term != term or stalled:
            # New leader, or this process was stopped (SIGSTOP, swap): what it
            # heard is stale, so fresh full timeouts for everyone rather than
            # a mass expiry.
            self.tracker.reset(self.ns.session_timeouts(), now)
            self._tracked_term = term
        elif version != self._tracked_version:
            self.tracker.reconcile(self.ns.session_timeouts(), now)
        self._tracked_version = version
        for sid in self._touched:
            self.tracker.touch(sid, now)
        self._touched.clear()
        expired = self.tracker.expired(now, retry_after=self.write_timeout)
        if expired and not self._expiring:
            self._expiring = True
            nursery.start_soon(self._expire, expired, term)

    async def _expire(self, sids: list[int], term: int) -> None:
        """Propose the expiry here, and only while still leader of the term
        whose timers decided it."""
        try:
            if not self.node.is_leader or self.node.term != term:
                return
            f = self.writes.submit(encode(Command("session_expire", SessionExpire(tuple(sids)))), leader_only=True)
            try:
                await f.wait()
            except CoordError as e:
                log.info("server %d: expiring sessions failed (%s); will retry", self.server_id, e)
                return
            self.expired_total += len(sids)
            log.info("server %d: expired sessions %s", self.server_id, [hex(s) for s in sids])
        finally:
            self._expiring = False
