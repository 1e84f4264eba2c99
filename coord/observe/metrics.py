"""/metrics: the server's state and counters as Prometheus metrics.

Pulled, not pushed: a ``prometheus_client`` collector reads the Raft
driver, the namespace, the session and watch tables and the counters of
``coord.observe.stats`` when a scrape arrives, and builds metric families
from them.  Between scrapes nothing is kept in ``prometheus_client``
objects, so the request path never touches a Prometheus lock.

Names follow Prometheus' conventions (``coord_`` prefix, base units,
``_total`` counters, ``_seconds`` durations, ``_bytes`` sizes) and cover
what etcd's metrics (``etcd_server_*``, ``etcd_disk_*``,
``etcd_network_*``) and ZooKeeper's ``mntr`` keys cover; README.md lists
them with their counterparts.  Labels have bounded values only: peer ids,
roles, request ops (from the protocol's list) and outcomes (error codes).
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from coord.observe.observer import Observer
from coord.observe.stats import Histogram
from coord.raft.types import Role

ROLES = ("leader", "follower", "candidate", "learner")


def role_name(service: Any) -> str:
    core = service.node.core
    if core.role is Role.LEADER:
        return "leader"
    if core.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
        return "candidate"
    return "learner" if service.server_id in core.membership.learners else "follower"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, h: Histogram, labels: dict[str, str] | None = None,
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    fam = family or HistogramMetricFamily(name, doc, labels=list(labels or ()))
    fam.add_metric(list((labels or {}).values()), h.cumulative(), h.sum)
    return fam


class CoordCollector(Collector):
    """Everything coord-specific, read at scrape time."""

    def __init__(self, service: Any, observer: Observer) -> None:
        self.s = service
        self.obs = observer

    def collect(self) -> Iterator[Any]:
        yield from self._raft()
        yield from self._peers()
        yield from self._service()
        yield _histogram("coord_event_loop_lag_seconds",
                         "How late the server's periodic tick woke up (a blocked event loop delays everything)",
                         self.obs.loop_lag)

    def _raft(self) -> Iterator[Any]:
        s = self.s
        node, core, st = s.node, s.node.core, s.node.obs
        m = core.membership
        info = GaugeMetricFamily("coord_server_info", "This server's identity (value 1)",
                                 labels=["server_id", "cluster_id"])
        info.add_metric([str(s.server_id), s.cfg.cluster_id], 1)
        yield info
        yield _gauge("coord_raft_term", "Current Raft term", core.term)
        role = GaugeMetricFamily("coord_raft_role", "Raft role of this server (1 for the current one)",
                                 labels=["role"])
        mine = role_name(s)
        for r in ROLES:
            role.add_metric([r], 1 if r == mine else 0)
        yield role
        yield _gauge("coord_raft_is_leader", "1 if this server is the leader", int(core.role is Role.LEADER))
        yield _gauge("coord_raft_has_leader", "1 if this server knows a leader (etcd_server_has_leader)",
                     int(bool(core.leader_id)))
        yield _gauge("coord_raft_leader_id", "Id of the leader this server knows (0: none)", core.leader_id)
        yield _counter("coord_raft_leader_changes_total",
                       "Leader changes seen (etcd_server_leader_changes_seen_total)", st.leader_changes)
        yield _counter("coord_raft_elections_started_total", "Elections this server started (as candidate)",
                       st.elections_started)
        yield _counter("coord_raft_elections_won_total", "Elections this server won", st.elections_won)
        yield _gauge("coord_raft_commit_index", "Highest log index known committed", core.commit_index)
        yield _gauge("coord_raft_applied_index", "Highest log index applied to the namespace here",
                     node.applied_index)
        yield _gauge("coord_raft_last_index", "Last index of this server's log", core.last_index)
        yield _gauge("coord_raft_snapshot_index", "Index of the latest snapshot", core.snapshot_meta.index)
        yield _counter("coord_raft_proposals_committed_total",
                       "Proposals made on this server that committed", st.proposals_committed)
        yield _counter("coord_raft_proposals_dropped_total",
                       "Proposals made on this server that were dropped (leadership lost or changed)",
                       st.proposals_dropped)
        yield _gauge("coord_raft_proposals_pending", "Proposals waiting to commit on this server",
                     len(node._waiters) + len(node._proposals))
        yield _histogram("coord_raft_append_batch_entries",
                         "Entries written per durable log write (group commit)", st.append_batch)
        yield _histogram("coord_disk_wal_fsync_duration_seconds",
                         "Duration of durable log writes, fsync included (etcd_disk_wal_fsync_duration_seconds)",
                         st.fsync)
        space = node.diskspace
        yield _gauge("coord_disk_full", "1 while this server's disk is full: writes refused (NoSpace), retried",
                     int(space.full))
        yield _counter("coord_disk_full_episodes_total", "Times a write failed for lack of space after the disk had room",
                       space.times_full)
        yield _counter("coord_disk_full_seconds_total", "Seconds spent with a full disk (the current spell included)",
                       space.seconds_full)
        snaps = CounterMetricFamily("coord_raft_snapshots_total",
                                    "Snapshots taken here or installed from the leader", labels=["kind"])
        snaps.add_metric(["taken"], st.snapshots_taken)
        snaps.add_metric(["installed"], st.snapshots_installed)
        yield snaps
        yield _histogram("coord_raft_snapshot_duration_seconds", "Time to serialize a snapshot of the namespace",
                         st.snapshot_seconds)
        yield _gauge("coord_raft_snapshot_size_bytes", "Size of the last snapshot taken or installed",
                     st.snapshot_bytes)
        yield _gauge("coord_raft_snapshot_pause_seconds",
                     "How long the last snapshot taken held the event loop (the fork when a child wrote it)",
                     st.snapshot_pause)
        yield _gauge("coord_raft_voters", "Voters in the configuration in effect", len(m.all_voters()))
        yield _gauge("coord_raft_learners", "Learners in the configuration in effect", len(m.learners))
        yield _gauge("coord_raft_joint_config", "1 while a joint-consensus membership change is in progress",
                     int(m.joint))
        yield _gauge("coord_raft_config_index", "Log index of the configuration in effect", core.membership_version)

    def _peers(self) -> Iterator[Any]:
        s = self.s
        core = s.node.core
        match = GaugeMetricFamily("coord_raft_peer_match_index",
                                  "Highest log index known replicated on each peer (leader only)", labels=["peer"])
        lag = GaugeMetricFamily("coord_raft_peer_lag_entries",
                                "Entries the leader has that each peer lacks (leader only)", labels=["peer"])
        lag_s = GaugeMetricFamily("coord_raft_peer_lag_seconds",
                                  "For how long each peer has been missing entries (leader only)", labels=["peer"])
        if core.role is Role.LEADER:
            last = core.last_index
            for pid, p in sorted(core.progress().items()):
                if pid == s.server_id:
                    continue
                match.add_metric([str(pid)], p["match"])
                lag.add_metric([str(pid)], max(0, last - p["match"]))
                lag_s.add_metric([str(pid)], self.obs.peer_lag_seconds(p["match"]))
        yield match
        yield lag
        yield lag_s
        transport = s.server.transport
        snap = transport.snapshot() if transport is not None else {"peers": {}, "dropped_unknown": 0}
        fams = {
            "sent": CounterMetricFamily("coord_peer_messages_sent_total", "Raft messages sent to each peer",
                                        labels=["peer"]),
            "received": CounterMetricFamily("coord_peer_messages_received_total",
                                            "Raft messages received from each peer", labels=["peer"]),
            "dropped": CounterMetricFamily("coord_peer_messages_dropped_total",
                                           "Messages to each peer lost (queue full or failed write)",
                                           labels=["peer"]),
            "connects": CounterMetricFamily("coord_peer_connects_total", "Outbound connections made to each peer",
                                            labels=["peer"]),
        }
        connected = GaugeMetricFamily("coord_peer_connected", "1 while the outbound link to each peer is up",
                                      labels=["peer"])
        for pid, p in sorted(snap["peers"].items()):
            for key, fam in fams.items():
                fam.add_metric([str(pid)], p.get(key, 0))
            connected.add_metric([str(pid)], int(bool(p.get("connected"))))
        yield from fams.values()
        yield connected
        yield _counter("coord_peer_handshakes_refused_total",
                       "Inbound peer connections refused (authentication, not a member, bad handshake)",
                       snap.get("refused", 0))

    def _service(self) -> Iterator[Any]:
        s = self.s
        ns, st = s.ns, s.obs
        yield _gauge("coord_sessions", "Open client sessions (ensemble-wide, replicated)", ns.session_count)
        yield _counter("coord_sessions_expired_total", "Sessions this server expired as leader",
                       s.liveness.expired_total)
        yield _gauge("coord_nodes", "Nodes in the tree, the root included (zk_znode_count)", ns.node_count)
        yield _gauge("coord_ephemeral_nodes", "Ephemeral nodes (zk_ephemerals_count)", ns.ephemeral_count)
        yield _gauge("coord_reapable_nodes", "Containers and TTL nodes (deleted when empty / expired)",
                     ns.reapable_count)
        yield _counter("coord_reaped_nodes_total", "Containers and TTL nodes this server deleted as leader",
                       s.reaper.reaped_total)
        yield _gauge("coord_data_bytes", "Bytes of node data in the tree (zk_approximate_data_size)",
                     ns.data_bytes)
        yield _gauge("coord_watches", "Watches registered on this server (zk_watch_count)", s.watches.count())
        yield _gauge("coord_client_connections", "Client connections to this server (zk_num_alive_connections)",
                     len(s.connections))
        yield _gauge("coord_requests_in_flight", "Requests being served on this server (zk_outstanding_requests)",
                     sum(getattr(c, "_inflight", 0) for c in s.connections))
        req = CounterMetricFamily("coord_requests_total", "Client requests answered, by op and outcome",
                                  labels=["op", "outcome"])
        for (op, outcome), n in sorted(st.requests.items()):
            req.add_metric([op, outcome], n)
        yield req
        lat = HistogramMetricFamily("coord_request_duration_seconds",
                                    "Time from reading a request to queueing its answer, by op", labels=["op"])
        for op, h in sorted(st.latency.items()):
            _histogram("", "", h, {"op": op}, family=lat)
        yield lat
        yield _counter("coord_forwarded_writes_total", "Writes this follower forwarded to the leader",
                       s.writes.stats["forwarded"])
        yield _counter("coord_linearizable_read_batches_total",
                       "ReadIndex barriers taken for linearizable reads (reads arriving together share one)",
                       st.lin_batches)
        yield _counter("coord_linearizable_reads_total", "Linearizable reads served through those barriers",
                       st.lin_reads)
        yield _counter("coord_requests_denied_total",
                       "Requests refused for missing permission (node ACL or admin rule)", st.denied)


class Metrics:
    """A registry of one server's collectors (per server, not the global
    one, so that several servers in one process do not mix)."""

    def __init__(self, service: Any, observer: Observer) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CoordCollector(service, observer))
        ProcessCollector(namespace="coord", registry=self.registry)

    content_type = CONTENT_TYPE_LATEST

    def render(self) -> bytes:
        return generate_latest(self.registry)
