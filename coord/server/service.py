"""The coordination service on one server: the glue between client
connections, the Raft node and the namespace state machine.

* Writes become commands in the Raft log.  On the leader they are proposed
  directly (the leader stamps the time); a follower forwards them to the
  leader over the peer links and answers its client only once it has applied
  the result's zxid itself, so the client can read its own write here.
* Reads are served from this server's state; ``wait_applied`` lets a
  connection never read older state than its client has seen, and
  ``read_barrier`` (ReadIndex) makes a read linearizable.
* Session liveness: every request touches its session; followers send the
  ids they saw to the leader in batches, and the leader proposes expiry of
  sessions it has not heard of within their timeout.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from typing import Any, Callable

import cbor2
import trio

from coord.namespace.state import NamespaceStateMachine
from coord.observe.stats import ServiceStats
from coord.raft.types import ConfChangeError, Entry, EntryKind, Message, MsgType, ProposalDropped, Role
from coord.server.config import MemberAddrs, ServerConfig, format_addr
from coord.server.raftnode import ReadFailed
from coord.server.serve import Server
from coord.server.sessions import SessionTracker
from coord.server.watches import WatchRegistry
from coordclient.errors import ConfChangeError as WireConfChange
from coordclient.errors import (
    CoordError,
    NotLeaderError,
    OperationTimeoutError,
)

log = logging.getLogger("coord.service")


class ServiceStateMachine:
    """What the Raft driver applies: the namespace, told about every zxid,
    returning (zxid, result) so a proposer learns where its write landed."""

    def __init__(self, ns: NamespaceStateMachine):
        self.ns = ns

    def apply(self, entry: Entry) -> tuple[int, Any]:
        if entry.kind != EntryKind.NORMAL:
            self.ns.note_zxid(entry.index)
            return entry.index, None
        return entry.index, self.ns.apply(entry)

    def snapshot(self) -> bytes:
        return self.ns.snapshot()

    def restore(self, data: bytes) -> None:
        self.ns.restore(data)


class _Reply:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _ForwardReply:
    """The result slot of a forwarded write on the leader: its outcome goes
    straight back to the follower that forwarded it."""

    __slots__ = ("transport", "resp")

    def __init__(self, transport: Any, resp: Message):
        self.transport = transport
        self.resp = resp

    def set(self, value: tuple[int, Any]) -> None:
        self.resp.index, self.resp.data = value[0], cbor2.dumps(value[1])
        self.transport.send(self.resp)

    def fail(self, error: BaseException) -> None:
        self.resp.reject = True
        self.resp.data = (str(error) or "the write was dropped").encode()
        self.transport.send(self.resp)


class CoordService:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.ns = NamespaceStateMachine(max_data_bytes=cfg.max_data_bytes)
        self.watches = WatchRegistry()
        self.ns.on_events = self.watches.dispatch
        self.server = Server(cfg, ServiceStateMachine(self.ns), on_app_message=self._on_app_message,
                             on_leader=self._on_leader)
        self.node = self.server.node
        self.tracker = SessionTracker()
        self._tracked_term = -1
        self._tracked_version: tuple[int, int] = (-1, -1)  # the session table the tracker follows
        self._touched: set[int] = set()
        # Follower side of session keepalives: every period a numbered batch
        # of touched sessions goes to the leader, which acknowledges it.  The
        # send time of the newest acknowledged batch says until when the
        # leader is known to hear us (see reaches_leader).
        self._touch_period = max(0.05, cfg.min_session_timeout_ms / 1000 / 8)
        # Clients are dropped at most bound + period after the newest
        # acknowledged batch was sent (T/2 + T/8 for the shortest timeout T);
        # a lock holder gives up a sixth of T after that: before 0.8 T, so
        # before the leader can expire it.
        self._touch_bound = cfg.min_session_timeout_ms / 1000 / 2
        self._touch_seq = 0
        self._touch_sent: dict[int, float] = {}  # batch number -> send time (recent ones)
        self._leader_heard_us_at = -math.inf
        self.connections: set = set()  # client connections (ClientConnection), for dropping them
        self._forward_ids = itertools.count(1)
        self._forwards: dict[bytes, _Reply] = {}
        self._lin_batch: list[Callable[[Exception | None], None]] = []  # waiting for the next read barrier
        self._nursery: trio.Nursery | None = None
        self.write_timeout = max(2.0, 4 * cfg.election_ticks * cfg.tick_ms / 1000)
        self.stats = {"writes": 0, "forwarded": 0, "reads": 0, "expired_sessions": 0}
        self.obs = ServiceStats()  # observability counters (coord.observe)

    # ------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.server.run)
            nursery.start_soon(self._session_loop)
            task_status.started()

    @property
    def server_id(self) -> int:
        return self.cfg.server_id

    def is_member(self) -> bool:
        """Removed servers and servers still waiting to join serve no clients."""
        return self.server_id in self.node.core.membership.members()

    @property
    def applied(self) -> int:
        return self.node.applied_index

    # ------------------------------------------------------------------
    # writes
    # ------------------------------------------------------------------
    async def write(self, cmd: dict) -> tuple[int, dict]:
        """Replicate one command; returns (zxid, result dict).  Raises
        NotLeaderError / OperationTimeoutError when the outcome is unknown
        (the client retries with the same seq; the state machine dedups)."""
        self.stats["writes"] += 1
        with trio.move_on_after(self.write_timeout) as scope:
            if self.node.is_leader:
                zxid, res = await self._propose_local(cmd)
            else:
                zxid, res = await self._forward(cmd)
                await self.node.wait_applied(zxid)
        if scope.cancelled_caught:
            raise OperationTimeoutError("the write did not complete in time; its outcome is unknown")
        return zxid, res

    @staticmethod
    def _entry_data(cmd: dict) -> bytes:
        """A command as the leader puts it in the log: stamped with its clock."""
        cmd["t"] = int(time.time() * 1000)
        return cbor2.dumps(cmd)

    async def _propose_local(self, cmd: dict) -> tuple[int, dict]:
        try:
            zxid, res = await self.node.propose(self._entry_data(cmd))
        except ProposalDropped as e:
            raise NotLeaderError(str(e)) from None
        return zxid, res

    async def _forward(self, cmd: dict) -> tuple[int, dict]:
        if not self.node.leader_id:
            # Wait (briefly) for a leader to be known: during an election there is none.
            with trio.move_on_after(self.write_timeout / 2):
                while not self.node.leader_id:
                    await trio.sleep(self.cfg.tick_ms / 1000)
        if self.node.is_leader:
            return await self._propose_local(cmd)
        leader = self.node.leader_id
        if not leader:
            raise NotLeaderError("no leader is elected")
        rid = next(self._forward_ids).to_bytes(8, "big")
        reply = self._forwards[rid] = _Reply()
        self.stats["forwarded"] += 1
        try:
            self.server.transport.send(Message(MsgType.FORWARD, self.server_id, leader,
                                               data=cbor2.dumps(cmd), context=rid))
            await reply.event.wait()
        finally:
            self._forwards.pop(rid, None)
        if reply.error is not None:
            raise reply.error
        return reply.value

    def _on_app_message(self, m: Message) -> None:
        if m.type is MsgType.FORWARD:
            self._serve_forward(m)
        elif m.type is MsgType.FORWARD_RESP:
            reply = self._forwards.get(m.context)
            if reply is None:
                return
            if m.reject:
                reply.error = NotLeaderError(m.data.decode("utf-8", "replace") or "the leader changed")
            else:
                try:
                    reply.value = (m.index, cbor2.loads(m.data))
                except Exception:
                    reply.error = OperationTimeoutError("malformed reply from the leader")
            reply.event.set()
        elif m.type is MsgType.SESSION_TOUCH:
            try:
                sids = cbor2.loads(m.data)
            except Exception:
                return
            if isinstance(sids, list) and self.node.is_leader:
                now = trio.current_time()
                for sid in sids:
                    if isinstance(sid, int):
                        self.tracker.touch(sid, now)
                self.server.transport.send(Message(MsgType.SESSION_TOUCH_ACK, self.server_id, m.frm,
                                                   self.node.core.term, index=m.index))
        elif m.type is MsgType.SESSION_TOUCH_ACK:
            sent = self._touch_sent.get(m.index)
            if sent is not None and m.frm == self.node.leader_id:
                self._leader_heard_us_at = max(self._leader_heard_us_at, sent)

    def _serve_forward(self, m: Message) -> None:
        """Leader side of a forwarded write: proposed at once, answered from
        the loop when it applies (or fails), with no task per write."""
        resp = Message(MsgType.FORWARD_RESP, self.server_id, m.frm, context=m.context)
        try:
            cmd = cbor2.loads(m.data)
            if not isinstance(cmd, dict):
                raise ValueError("command is not a map")
        except Exception as e:
            log.warning("server %d: malformed forwarded command from %d: %s", self.server_id, m.frm, e)
            return
        if cmd.get("op") == "session_expire":
            # Only the leader's own timers may expire sessions: a deposed leader
            # forwarding its stale verdict would kill live sessions.
            log.warning("server %d: refused a forwarded session expiry from %d", self.server_id, m.frm)
            resp.reject = True
            resp.data = b"session expiry is never forwarded"
            self.server.transport.send(resp)
            return
        try:
            self.node.propose_with(self._entry_data(cmd), _ForwardReply(self.server.transport, resp))
        except ProposalDropped as e:
            resp.reject = True
            resp.data = str(e).encode() or b"not the leader"
            self.server.transport.send(resp)

    # ------------------------------------------------------------------
    # reads
    # ------------------------------------------------------------------
    async def wait_applied(self, zxid: int, timeout: float | None = None) -> None:
        if self.node.applied_index >= zxid:
            return
        with trio.move_on_after(timeout or self.write_timeout) as scope:
            await self.node.wait_applied(zxid)
        if scope.cancelled_caught:
            raise OperationTimeoutError(
                f"this server has not caught up to zxid {zxid} (it is at {self.node.applied_index})"
            )

    def after_read_barrier(self, fn: Callable[[Exception | None], None]) -> None:
        """Call ``fn(None)`` once a ReadIndex barrier taken after this call
        has been applied here (``fn(error)`` if it failed).  Calls made in
        the same scheduling pass share one barrier and one task."""
        self._lin_batch.append(fn)
        if len(self._lin_batch) == 1:
            self._nursery.start_soon(self._run_lin_batch)

    async def _run_lin_batch(self) -> None:
        batch, self._lin_batch = self._lin_batch, []
        self.obs.lin_batch(len(batch))  # observability
        error: Exception | None = None
        try:
            await self.read_barrier()
        except CoordError as e:
            error = e
        for fn in batch:
            try:
                fn(error)
            except Exception:  # one connection's bug must not cost the others their answers
                log.exception("server %d: a read-barrier callback failed", self.server_id)

    async def read_barrier(self) -> None:
        with trio.move_on_after(self.write_timeout) as scope:
            while True:
                try:
                    await self.node.read_barrier()
                    return
                except ReadFailed:
                    await trio.sleep(self.cfg.tick_ms / 1000)  # no leader right now: retry until the deadline
        if scope.cancelled_caught:
            raise OperationTimeoutError("could not confirm the read with a leader in time")

    # ------------------------------------------------------------------
    # sessions
    # ------------------------------------------------------------------
    def negotiate_timeout(self, requested_ms: int) -> int:
        return max(self.cfg.min_session_timeout_ms, min(self.cfg.max_session_timeout_ms, requested_ms))

    async def open_session(self, timeout_ms: int) -> tuple[int, bytes, int]:
        timeout_ms = self.negotiate_timeout(timeout_ms)
        secret = os.urandom(16)
        zxid, res = await self.write({"op": "session_open", "sid": 0, "seq": 0,
                                      "timeout_ms": timeout_ms, "secret": secret})
        if not res.get("ok"):
            raise CoordError.from_code(res.get("err", "SystemError"), res.get("msg", ""))
        sid = res["r"]["sid"]
        self.touch(sid)
        return sid, secret, timeout_ms

    def touch(self, sid: int) -> None:
        if self.node.is_leader:
            self.tracker.touch(sid, trio.current_time())
        else:
            self._touched.add(sid)


    def reaches_leader(self) -> bool:
        """Whether this server may keep client sessions: it is the leader, or
        the leader acknowledged a keepalive batch sent within the last half
        of the shortest session timeout.  A follower that hears the leader
        but cannot reach it (a one-way cut) fails this too: its clients'
        keepalives go nowhere, so it must not keep telling them all is well."""
        if self.node.is_leader:
            return True
        if not self.node.leader_id:
            return False
        return trio.current_time() - self._leader_heard_us_at <= self._touch_bound

    def _send_touches(self, leader: int) -> None:
        sids, self._touched = sorted(self._touched), set()
        self._touch_seq += 1
        self._touch_sent[self._touch_seq] = trio.current_time()
        self._touch_sent.pop(self._touch_seq - 64, None)
        self.server.transport.send(Message(MsgType.SESSION_TOUCH, self.server_id, leader,
                                           data=cbor2.dumps(sids), index=self._touch_seq))

    def _on_leader(self, leader: int) -> None:
        """A new leader: tell it at once which sessions are alive here (and
        get its acknowledgement) rather than at the next period, so that
        clients are not dropped for lack of an acknowledgement after a quick
        failover."""
        if leader and leader != self.server_id:
            self._send_touches(leader)

    def _drop_session_clients(self, reason: str) -> None:
        for conn in list(self.connections):
            if conn.sid:
                conn.close(reason)

    async def _session_loop(self) -> None:
        """Forward keepalives (followers) or expire sessions (leader)."""
        period = self._touch_period
        last = trio.current_time()
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            stalled = now - last > period + self.cfg.min_session_timeout_ms / 1000 / 2
            last = now
            core = self.node.core
            if core.role is Role.LEADER:
                version = self.ns.sessions_version()
                if self._tracked_term != core.term or stalled:
                    # New leader, or this process was stopped (SIGSTOP, swap):
                    # what it heard is stale, so fresh full timeouts for
                    # everyone rather than a mass expiry.
                    self.tracker.reset(self.ns.session_timeouts(), now)
                    self._tracked_term = core.term
                elif version != self._tracked_version:
                    self.tracker.reconcile(self.ns.session_timeouts(), now)
                self._tracked_version = version
                for sid in self._touched:
                    self.tracker.touch(sid, now)
                self._touched.clear()
                expired = self.tracker.expired(now, retry_after=self.write_timeout)
                if expired:
                    self._nursery.start_soon(self._expire, expired, core.term)
            else:
                self._tracked_term = -1
                if core.leader_id:
                    # Sent every period, empty or not: the acknowledgements
                    # are how this server knows the leader hears it.
                    self._send_touches(core.leader_id)
                if not self.reaches_leader():
                    self._drop_session_clients("this server cannot reach the leader right now")

    async def _expire(self, sids: list[int], term: int) -> None:
        """Propose the expiry here, and only while still leader of the term
        whose timers decided it (never forwarded: see _serve_forward)."""
        if not self.node.is_leader or self.node.core.term != term:
            return
        try:
            with trio.fail_after(self.write_timeout):
                await self._propose_local({"op": "session_expire", "sid": 0, "seq": 0, "sids": sids})
            self.stats["expired_sessions"] += len(sids)
            log.info("server %d: expired sessions %s", self.server_id, [hex(s) for s in sids])
        except (CoordError, trio.TooSlowError) as e:
            log.info("server %d: expiring sessions failed (%s); will retry", self.server_id, e)

    # ------------------------------------------------------------------
    def status(self) -> dict:
        core = self.node.core
        m = core.membership
        role = {Role.LEADER: "leader", Role.FOLLOWER: "follower",
                Role.CANDIDATE: "candidate", Role.PRE_CANDIDATE: "candidate"}[core.role]
        if role == "follower" and self.server_id in m.learners:
            role = "learner"
        members = {}
        for mid in sorted(m.members()):
            raw = m.addrs.get(mid)
            try:
                a = MemberAddrs.from_wire(raw) if raw is not None else None
            except ValueError:
                a = None
            members[mid] = a.to_wire() if a else {}
        out = {
            "server_id": self.server_id, "role": role, "term": core.term, "leader": core.leader_id,
            "commit": core.commit_index, "applied": self.node.applied_index,
            "voters": sorted(m.voters), "outgoing": sorted(m.outgoing), "learners": sorted(m.learners),
            "members": members, "config_version": core.membership_version,
            "nodes": self.ns.node_count, "sessions": self.ns.session_count, "watches": self.watches.count(),
        }
        if self.cfg.http_address is not None:  # observability: where this server's dashboard is
            out["http"] = format_addr(self.cfg.http_address)
        if core.role is Role.LEADER:
            out["progress"] = {pid: {**p, "lag": core.last_index - p["match"]} for pid, p in core.progress().items()}
        return out


class AdminService:
    """Membership changes and leadership transfer, run on the leader.

    Every change is computed from the configuration the caller saw (its
    ``version``, the log index of that configuration), so two operators racing
    cannot both apply theirs; the Raft core refuses a change while another is
    in flight and any result without a voter.  Voter changes go through joint
    consensus (C_old,new then C_new); ``change`` can add and remove several
    servers in that one step.
    """

    def __init__(self, service: CoordService):
        self.s = service

    def _leader_core(self):
        node = self.s.node
        if not node.is_leader:
            leader = node.leader_id
            addr = self.s.status()["members"].get(leader, {}).get("client") if leader else None
            err = NotLeaderError(f"this server is not the leader; the leader is {leader or 'unknown'}"
                                 + (f" at {addr}" if addr else ""))
            err.wire_extra = {"leader": leader, "leader_client": addr}
            raise err
        return node.core

    async def change(self, *, add_voters: dict[int, dict], add_learners: dict[int, dict], remove: list[int],
                     promote: list[int], version: int | None, wait: bool = True) -> dict:
        core = self._leader_core()
        cur = core.membership
        members = cur.members()
        for sid in list(add_voters) + list(add_learners):
            if sid in members:
                raise WireConfChange(f"server {sid} is already a member")
        for sid in remove:
            if sid not in members:
                raise WireConfChange(f"server {sid} is not a member")
        for sid in promote:
            if sid not in cur.learners:
                raise WireConfChange(f"server {sid} is not a learner")
        voters = (set(cur.voters) | set(add_voters) | set(promote)) - set(remove)
        learners = (set(cur.learners) | set(add_learners)) - set(remove) - set(promote)
        addrs = {**add_voters, **add_learners}
        try:
            index, term = self.s.node.call(
                lambda c: c.propose_membership(voters, learners, addrs, expect_version=version))
        except ConfChangeError as e:
            raise WireConfChange(str(e)) from None
        except ProposalDropped as e:
            raise NotLeaderError(str(e)) from None
        if wait:
            await self._wait_settled(index, term)
        return self.s.status()

    async def _wait_settled(self, index: int, term: int) -> None:
        """Until the change is committed and, for a voter change, C_new too."""
        node = self.s.node
        with trio.move_on_after(10 * self.s.write_timeout) as scope:
            while True:
                core = node.core
                if core.log_term(index) not in (None, term) and core.commit_index >= index:
                    raise WireConfChangeLost()
                settled = (core.commit_index >= core.membership_version >= index
                           and not core.membership.joint)
                if settled:
                    return
                if not node.is_leader and core.commit_index >= index:
                    return  # committed; a new leader finishes C_new (the caller polls it)
                await trio.sleep(self.s.cfg.tick_ms / 1000)
        if scope.cancelled_caught:
            raise OperationTimeoutError("the membership change did not complete in time; check `status`")

    async def transfer(self, target: int) -> dict:
        core = self._leader_core()
        if target == 0:
            prog = core.progress()
            candidates = [v for v in core.membership.voters if v != self.s.server_id and v in prog]
            if not candidates:
                raise WireConfChange("there is no other voter to transfer leadership to")
            target = max(candidates, key=lambda v: prog[v]["match"])
        try:
            self.s.node.call(lambda c: c.transfer_leadership(target))
        except Exception as e:
            raise WireConfChange(str(e)) from None
        with trio.move_on_after(max(2.0, 3 * self.s.cfg.election_ticks * self.s.cfg.tick_ms / 1000)):
            while self.s.node.leader_id != target or self.s.node.is_leader:
                await trio.sleep(self.s.cfg.tick_ms / 1000)
            return {"leader": target}
        raise OperationTimeoutError(f"leadership did not move to {target} in time")


class WireConfChangeLost(OperationTimeoutError):
    def __init__(self) -> None:
        super().__init__("the change was overwritten by a new leader before it committed; retry it")
