"""One coord server process: storage + Raft driver + peer transport.

``run_server`` recovers the data directory, starts the peer transport and
the Raft driver, and keeps the transport's peer list in step with the
configuration in the log (a configuration entry carries every member's
addresses, so a membership change tells each server whom to connect to).
The same configuration decides whom the transport accepts messages from:
its members only, or any authenticated peer while this server is joining
and has no configuration yet.

Transport credentials (``coord.security.credentials``) are loaded here,
before the data directory is opened (a bad file is a ``ConfigError``), and
again by ``reload_credentials`` on SIGHUP.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import trio

from coord.raft.config import RaftConfig
from coord.raft.types import Membership, Message, SoftState
from coord.security.credentials import Credentials
from coord.server.config import MemberAddrs, ServerConfig
from coord.server.raftnode import NodeOptions, RaftNode, StateMachine
from coord.storage.disk import DiskStorage
from coord.transport.envelope import ServiceMessage
from coord.transport.peer import PeerTransport

log = logging.getLogger("coord.server")


def bootstrap_membership(cfg: ServerConfig) -> Membership | None:
    if cfg.join:
        return None
    return Membership(
        voters=frozenset(cfg.members),
        addrs={mid: a.to_wire() for mid, a in cfg.members.items()},
    )


def peer_addrs(m: Membership) -> dict[int, tuple[str, int]]:
    out = {}
    for mid, raw in m.addrs.items():
        try:
            out[mid] = MemberAddrs.from_wire(raw).peer
        except ValueError:
            log.error("configuration has a bad address for server %d: %r", mid, raw)
    return out


class Server:
    """The parts of a running server, for the service layer to use."""

    def __init__(self, cfg: ServerConfig, state_machine: StateMachine, *,
                 on_service_message: Callable[[ServiceMessage], None] | None = None,
                 on_soft_state: Callable[[SoftState], None] | None = None):
        self.cfg = cfg
        self.credentials = Credentials.load(cfg)
        log.info("server %d: %s", cfg.server_id, self.credentials.describe())
        self._addr_book: dict[int, tuple[str, int]] = {}
        self.storage = DiskStorage(cfg.data_dir, fsync=cfg.fsync, segment_bytes=cfg.wal_segment_bytes)
        rec = self.storage.open(allow_log_loss=cfg.recover_lost_log)
        if rec.lost:
            log.error("server %d: started on a damaged log, as --recover-lost-log asked: %s", cfg.server_id, rec.lost)
        if rec.hard_state.recovering:
            log.warning("server %d: recovering a lost log: it will not vote or campaign until the leader has "
                        "sent it everything again", cfg.server_id)
        self.transport: PeerTransport | None = None
        self.node = RaftNode(
            cfg.server_id,
            store=self.storage,
            recovered_hard_state=rec.hard_state,
            recovered_snapshot=rec.snapshot,
            recovered_entries=rec.entries,
            bootstrap=bootstrap_membership(cfg),
            state_machine=state_machine,
            send=self._send,
            raft_config=RaftConfig(election_ticks=cfg.election_ticks, heartbeat_ticks=cfg.heartbeat_ticks),
            options=NodeOptions(tick_seconds=cfg.tick_ms / 1000, snapshot_entries=cfg.snapshot_entries),
            on_membership=self._on_membership,
            on_soft_state=self._on_soft_state,
        )
        self._on_service_message = on_service_message
        self._soft_listener = on_soft_state
        self._logged_leader = (-1, -1)
        self._addr_book.update(peer_addrs(self.node.membership))
        self.transport = PeerTransport(
            cfg.server_id, cfg.cluster_id, cfg.peer_address,
            {sid: a for sid, a in self._addr_book.items() if sid in self.node.recent_members()}, self._deliver,
            security=self.credentials.peer,
            accept_unknown=not self.node.recent_members(),
            on_unreachable=self.node.peer_unreachable,
        )

    def reload_credentials(self) -> bool:
        """Re-read certificates, keys and the peer secret (SIGHUP): new
        connections use them.  Bad files change nothing (logged); False then."""
        from coord.security.tls import reload_in_place
        from coord.server.config import ConfigError

        try:
            new = Credentials.load(self.cfg)
            old_http = self.credentials.http_ssl
            if old_http is not None and self.cfg.tls is not None:
                # The HTTP server holds on to its context: load the new files into it.
                reload_in_place(old_http, self.cfg.tls)
                new = dataclasses.replace(new, http_ssl=old_http)
        except ConfigError as e:
            log.error("server %d: credentials not reloaded, keeping the current ones: %s", self.cfg.server_id, e)
            return False
        self.credentials = new
        if self.transport is not None:
            self.transport.set_security(new.peer)
        log.info("server %d: credentials reloaded (%s)", self.cfg.server_id, new.describe())
        return True

    def _deliver(self, msg: Message | ServiceMessage) -> None:
        if type(msg) is Message:
            self.node.deliver(msg)
        elif self._on_service_message is not None:
            self._on_service_message(msg)

    def _on_soft_state(self, st: SoftState) -> None:
        # Leadership changes: the first thing an operator looks for.
        if st.leader and (st.term, st.leader) != self._logged_leader:
            self._logged_leader = (st.term, st.leader)
            log.info("server %d: term %d leader is %d%s", self.cfg.server_id, st.term, st.leader,
                     " (me)" if st.leader == self.cfg.server_id else "")
        if self._soft_listener is not None:
            self._soft_listener(st)

    def _send(self, msg) -> None:
        if self.transport is not None:
            self.transport.send(msg)

    def _on_membership(self, m: Membership) -> None:
        # Addresses of every server ever configured, newest first; the peers
        # are the members of this configuration and of the previous one.
        self._addr_book.update(peer_addrs(m))
        if self.transport is not None:
            wanted = self.node.recent_members()
            self.transport.accept_unknown = not wanted  # joining: no configuration yet
            self.transport.update_peers({sid: a for sid, a in self._addr_book.items() if sid in wanted})
        log.info("server %d: configuration voters=%s outgoing=%s learners=%s", self.cfg.server_id,
                 sorted(m.voters), sorted(m.outgoing), sorted(m.learners))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED,
                  extra: Callable[[trio.Nursery], None] | None = None) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.run)
                await nursery.start(self.node.run)
                if extra is not None:
                    extra(nursery)
                task_status.started()
        finally:
            self.storage.close()

