"""The coordination service on one server: the glue between client
connections, the Raft node and the namespace state machine.

* Writes (``writes.WritePath``): a command encoded once by the server that
  received it is proposed on the leader or forwarded to it, and answered
  when this server applies the entry that names it.
* Reads are served from this server's state; ``wait_applied`` lets a
  connection never read older state than its client has seen, and
  ``after_read_barrier`` / ``read_barrier`` (ReadIndex, one barrier shared
  by the reads that arrive together) make a read linearizable.
* Sessions (``liveness.SessionLiveness``): keepalives to the leader, expiry
  by the leader only.
* Empty containers and expired TTL nodes are deleted by the leader
  (``reaper.Reaper``).
* Membership and leadership transfer (``admin.AdminService``).
* Questions between members for the dashboard (``info.MemberInfo``): this
  server's status and client connections, asked over the peer links.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Any, Callable, Iterator

import trio

from coord.namespace.commands import Command, SessionClose, SessionOpen, decode_entry, encode
from coord.namespace.state import NamespaceStateMachine
from coord.observe.stats import ServiceStats
from coord.observe.views import local_connections
from coord.raft.types import Entry, EntryKind, Role, SoftState
from coord.server.admin import AdminService
from coord.server.config import MemberAddrs, ServerConfig, format_addr
from coord.server.future import Future
from coord.server.info import MemberInfo
from coord.server.liveness import SessionLiveness
from coord.server.raftnode import ReadFailed
from coord.server.reaper import Reaper
from coord.server.serve import Server
from coord.server.watches import WatchRegistry
from coord.server.writes import WritePath
from coord.transport.envelope import (
    Forward,
    ForwardRejected,
    InfoQuery,
    InfoReply,
    ServiceMessage,
    SessionTouches,
    TouchAck,
)
from coordclient.errors import CoordError, OperationTimeoutError

log = logging.getLogger("coord.service")

__all__ = ["CoordService", "ServiceStateMachine"]

FD_RESERVE = 256  # descriptors kept free of client connections


class ServiceStateMachine:
    """What the Raft driver applies: the namespace, told about every zxid.
    Each NORMAL entry's result also answers the write it came from, when
    this server received that write (``WritePath.applied``)."""

    def __init__(self, ns: NamespaceStateMachine):
        self.ns = ns
        self.writes: WritePath | None = None

    def apply(self, entry: Entry) -> tuple[int, Any]:
        if entry.kind != EntryKind.NORMAL:
            self.ns.note_zxid(entry.index)
            return entry.index, None
        lc = decode_entry(entry.data)
        result = self.ns.apply_logged(lc, entry.index)
        if lc.origin and self.writes is not None:
            self.writes.applied(lc.origin, lc.rid, entry.index, result)
        return entry.index, result

    def snapshot(self) -> bytes:
        return self.ns.snapshot()

    def restore(self, data: bytes) -> None:
        self.ns.restore(data)

    def restore_steps(self, data: bytes) -> Iterator[None]:
        return self.ns.restore_steps(data)


class CoordService:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.ns = NamespaceStateMachine(max_data_bytes=cfg.max_data_bytes)
        self.watches = WatchRegistry()
        self.ns.on_events = self.watches.dispatch
        self.write_timeout = max(2.0, 4 * cfg.election_ticks * cfg.tick_ms / 1000)
        sm = ServiceStateMachine(self.ns)
        self.server = Server(cfg, sm, on_service_message=self._on_service_message,
                             on_soft_state=self._on_soft_state)
        self.node = self.server.node
        self.writes = sm.writes = WritePath(cfg.server_id, self.node, self._send, timeout=self.write_timeout)
        self.liveness = SessionLiveness(
            cfg.server_id, self.node, self.ns, self.writes, self._send,
            min_session_timeout=cfg.min_session_timeout_ms / 1000, write_timeout=self.write_timeout,
            drop_session_clients=self._drop_session_clients)
        self.reaper = Reaper(self.node, self.ns, self.writes, interval=cfg.reap_interval_ms / 1000)
        self.admin = AdminService(self.node, timeout=self.write_timeout, leader_client_addr=self._client_addr_of)
        self.info = MemberInfo(cfg.server_id, self._send, self._peer_connected,
                               answers={"status": self.status, "connections": self.connections_doc})
        self.connections: set = set()  # client connections (ClientConnection), for dropping them
        self.connections_by_ip: dict[str, int] = {}  # for [limits] max_connections_per_ip
        self.snapshot_streams = trio.Lock()  # one snapshot streamed at a time: each holds a copy of the tree
        self._leader = 0
        self._lin_batch: list[Callable[[Exception | None], None]] = []  # waiting for the next read barrier
        self._parked_reads: list[tuple[list, float]] = []  # barriers waiting for a leader, with deadlines
        self._token: trio.lowlevel.TrioToken | None = None
        self.obs = ServiceStats()  # observability counters (coord.observe)

    def _send(self, msg: Any) -> None:
        self.server.transport.send(msg)

    def _peer_connected(self, peer: int) -> bool:
        t = self.server.transport
        return t is not None and t.is_connected(peer)

    # ------------------------------------------------------------------
    # client connections: how many, from where ([limits])
    # ------------------------------------------------------------------
    def max_connections(self) -> int:
        """The configured limit, or what the file-descriptor limit allows
        while keeping a reserve for the log, snapshots, peers and the HTTP
        port (running out of descriptors must never stop the server)."""
        if self.cfg.max_connections:
            return self.cfg.max_connections
        return max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_RESERVE)

    def admit_connection(self, ip: str) -> str | None:
        """Count a new client connection from ``ip``; the reason to refuse it, if any."""
        total = sum(self.connections_by_ip.values())
        if total >= self.max_connections():
            return f"this server holds its limit of {self.max_connections()} client connections"
        per_ip = self.cfg.max_connections_per_ip
        if per_ip and self.connections_by_ip.get(ip, 0) >= per_ip:
            return f"too many connections from {ip} (limit {per_ip})"
        self.connections_by_ip[ip] = self.connections_by_ip.get(ip, 0) + 1
        return None

    def release_connection(self, ip: str) -> None:
        n = self.connections_by_ip.get(ip, 0) - 1
        if n > 0:
            self.connections_by_ip[ip] = n
        else:
            self.connections_by_ip.pop(ip, None)

    # ------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.server.run)
            nursery.start_soon(self._periodic, nursery)
            task_status.started()

    async def _periodic(self, nursery: trio.Nursery) -> None:
        """Housekeeping every liveness period: keepalives or expiry, and
        the deadlines of writes and reads that are still waiting."""
        period = self.liveness.period
        last = trio.current_time()
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            stalled = now - last > period + self.liveness.bound
            last = now
            self.writes.expire(now)
            self._expire_parked_reads(now)
            self.liveness.on_period(now, stalled, nursery)
            self.reaper.on_period(now, nursery)

    @property
    def server_id(self) -> int:
        return self.cfg.server_id

    def is_member(self) -> bool:
        """Removed servers and servers still waiting to join serve no clients."""
        return self.server_id in self.node.membership.members()

    @property
    def applied(self) -> int:
        return self.node.applied_index

    def _on_service_message(self, m: ServiceMessage) -> None:
        t = type(m)
        if t is Forward:
            self.writes.on_forward(m)
        elif t is ForwardRejected:
            self.writes.on_rejected(m)
        elif t is SessionTouches:
            self.liveness.on_touches(m)
        elif t is TouchAck:
            self.liveness.on_ack(m)
        elif t is InfoQuery:
            self.info.on_query(m)
        elif t is InfoReply:
            self.info.on_reply(m)

    def _on_soft_state(self, st: SoftState) -> None:
        if st.leader != self._leader:
            self._leader = st.leader
            self.writes.leader_changed(st.leader)
            self.liveness.leader_changed(st.leader)
            if st.leader and self._parked_reads:
                parked, self._parked_reads = self._parked_reads, []
                for batch, deadline in parked:
                    self._barrier(batch, deadline)

    def _client_addr_of(self, sid: int) -> str | None:
        raw = self.node.membership.addrs.get(sid)
        try:
            a = MemberAddrs.from_wire(raw) if raw is not None else None
        except ValueError:
            return None
        return a.to_wire().get("client") if a else None

    # ------------------------------------------------------------------
    # writes
    # ------------------------------------------------------------------
    def submit(self, data: bytes) -> Future:
        """One encoded command: see ``WritePath.submit``."""
        return self.writes.submit(data)

    async def write(self, cmd: Command) -> tuple[int, dict]:
        """Replicate one command and wait: (zxid, result map)."""
        return await self.writes.submit(encode(cmd)).wait()

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
        the same scheduler pass share one barrier, and no task."""
        self._lin_batch.append(fn)
        if len(self._lin_batch) == 1:
            self._token.run_sync_soon(self._start_barrier)

    def _start_barrier(self) -> None:
        batch, self._lin_batch = self._lin_batch, []
        if batch:
            self.obs.lin_batch(len(batch))  # observability
            self._barrier(batch, trio.current_time() + self.write_timeout)

    def _barrier(self, batch: list, deadline: float) -> None:
        self.node.read_index().add_done_callback(lambda f: self._barrier_done(f, batch, deadline))

    def _barrier_done(self, f: Future, batch: list, deadline: float) -> None:
        error = f.error
        if isinstance(error, ReadFailed) and trio.current_time() < deadline:
            if self.node.leader_id:
                self._barrier(batch, deadline)  # the leader changed under it: ask the new one
            else:
                self._parked_reads.append((batch, deadline))  # retried when a leader is known
            return
        if error is not None:
            error = OperationTimeoutError("could not confirm the read with a leader in time")
        self._answer_reads(batch, error)

    def _expire_parked_reads(self, now: float) -> None:
        if not self._parked_reads:
            return
        keep = []
        for batch, deadline in self._parked_reads:
            if deadline <= now:
                self._answer_reads(batch, OperationTimeoutError("could not confirm the read with a leader in time"))
            else:
                keep.append((batch, deadline))
        self._parked_reads = keep

    @staticmethod
    def _answer_reads(batch: list, error: Exception | None) -> None:
        for fn in batch:
            try:
                fn(error)
            except Exception:  # one connection's bug must not cost the others their answers
                log.exception("a read-barrier callback failed")

    async def read_barrier(self) -> None:
        f = Future()
        self.after_read_barrier(lambda err: f.set(None) if err is None else f.fail(err))
        await f.wait()

    # ------------------------------------------------------------------
    # sessions
    # ------------------------------------------------------------------
    def negotiate_timeout(self, requested_ms: int) -> int:
        return max(self.cfg.min_session_timeout_ms, min(self.cfg.max_session_timeout_ms, requested_ms))

    async def open_session(self, timeout_ms: int) -> tuple[int, bytes, int]:
        timeout_ms = self.negotiate_timeout(timeout_ms)
        secret = os.urandom(16)
        zxid, res = await self.write(Command("session_open", SessionOpen(timeout_ms, secret)))
        if not res.get("ok"):
            raise CoordError.from_code(res.get("err", "SystemError"), res.get("msg", ""))
        sid = res["r"]["sid"]
        self.touch(sid)
        return sid, secret, timeout_ms

    async def close_session(self, sid: int) -> None:
        zxid, res = await self.write(Command("session_close", SessionClose(), sid=sid))
        if not res.get("ok") and res.get("err") != "SessionExpired":
            raise CoordError.from_code(res.get("err", "SystemError"), res.get("msg", ""))

    def touch(self, sid: int) -> None:
        self.liveness.touch(sid)

    def reaches_leader(self, session_timeout: float | None = None) -> bool:
        return self.liveness.reaches_leader(session_timeout)

    def _drop_session_clients(self, reason: str) -> None:
        """Drop the session clients that this server can no longer vouch
        for, each by its own session timeout (``SessionLiveness.reaches_leader``)."""
        reaches = self.liveness.reaches_leader
        for conn in list(self.connections):
            if conn.sid and not reaches(conn.session_timeout_ms / 1000):
                conn.close(reason)

    # ------------------------------------------------------------------
    def connections_doc(self) -> dict:
        """This server's client connections that have a session (the
        ``connections`` question, and the HTTP port's /api/connections)."""
        rows = local_connections(self)
        return {"server_id": self.server_id, "connections": rows}

    def status(self) -> dict:
        st = self.node.status()
        m = st.membership
        role = {Role.LEADER: "leader", Role.FOLLOWER: "follower",
                Role.CANDIDATE: "candidate", Role.PRE_CANDIDATE: "candidate"}[st.role]
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
            "server_id": self.server_id, "role": role, "term": st.term, "leader": st.leader,
            "commit": st.commit, "applied": st.applied,
            "voters": sorted(m.voters), "outgoing": sorted(m.outgoing), "learners": sorted(m.learners),
            "members": members, "config_version": st.membership_version,
            "nodes": self.ns.node_count, "sessions": self.ns.session_count, "watches": self.watches.count(),
            "recovering": st.recovering,
            "disk_full": self.node.disk_full,  # a write failed for lack of space: no writes here (diskspace.py)
        }
        if self.cfg.http_address is not None:  # observability: where this server's dashboard is
            out["http"] = format_addr(self.cfg.http_address)
        if st.progress:
            out["progress"] = {pid: {**p, "lag": st.last_index - p["match"]} for pid, p in st.progress.items()}
        return out
