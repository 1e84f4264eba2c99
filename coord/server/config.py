"""Server configuration: a TOML file, validated up front.

A bad configuration stops the server before it touches its data directory,
with a message that names the offending field (``raft.tick_ms: must be an
integer >= 1``), because a half-started server is harder to diagnose than
one that refuses to start.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from coord.namespace.acl import Auth, intern, parse_acl_text, parse_identity


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


Addr = tuple[str, int]


def parse_addr(value: Any, name: str) -> Addr:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{name}: expected \"host:port\", got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{name}: missing host in {value!r}")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{name}: port must be a number in {value!r}") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{name}: port {p} out of range")
    return host, p


def format_addr(a: Addr) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


@dataclass(slots=True, frozen=True)
class MemberAddrs:
    """Where a member is reached: peers, coord clients, and ZooKeeper
    clients (what ``/zookeeper/config`` and ``conf`` show ZooKeeper clients)."""

    peer: Addr
    client: Addr | None = None
    zookeeper: Addr | None = None

    def to_wire(self) -> dict:
        d = {"peer": format_addr(self.peer)}
        if self.client:
            d["client"] = format_addr(self.client)
        if self.zookeeper:
            d["zookeeper"] = format_addr(self.zookeeper)
        return d

    @classmethod
    def from_wire(cls, d: Any, name: str = "") -> "MemberAddrs":
        """From a membership's (or a request's, or a config table's) map;
        raises ConfigError naming ``name``."""
        pre = f"{name}." if name else ""
        if isinstance(d, dict):
            c, z = d.get("client"), d.get("zookeeper")
            return cls(parse_addr(d.get("peer"), f"{pre}peer"), parse_addr(c, f"{pre}client") if c else None,
                       parse_addr(z, f"{pre}zookeeper") if z else None)
        return cls(parse_addr(d, name or "peer"))

    def with_own(self, client: Addr | None, zookeeper: Addr | None) -> "MemberAddrs":
        """This server's entry, its own client and ZooKeeper addresses filled in where the table left them out."""
        return MemberAddrs(self.peer, self.client or client, self.zookeeper or zookeeper)


CLIENT_AUTH_MODES = ("none", "request", "require")


@dataclass(slots=True, frozen=True)
class TLSConfig:
    """The ``[tls]`` table: where the certificates are, not what is in them
    (``coord.security`` loads and checks the files, at start and on SIGHUP).

    ``cert``/``key`` serve the client port (and the HTTP port) and identify
    this server to its peers; ``ca`` is the cluster CA that every peer's
    certificate, and every client certificate, must be signed by.
    """

    cert: str
    key: str
    ca: str
    client_auth: str = "none"  # "none" | "request" | "require"
    handshake_timeout_ms: int = 5000  # a TLS handshake not done by then is dropped


@dataclass(slots=True, frozen=True)
class ServerConfig:
    server_id: int
    cluster_id: str
    data_dir: str
    peer_address: Addr
    client_address: Addr
    members: dict[int, MemberAddrs] = field(default_factory=dict)  # initial members (empty when joining)
    join: bool = False
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    snapshot_entries: int = 10_000
    max_data_bytes: int = 1 << 20
    min_session_timeout_ms: int = 1000
    max_session_timeout_ms: int = 60_000
    # What one client may cost the server ([limits]; every one refuses with a
    # clear error or a closed connection, never by growing).
    max_connections: int = 0  # client connections in all (0: what the fd limit allows, see clientport)
    max_connections_per_ip: int = 100  # ZooKeeper's maxClientCnxns (0: no limit)
    max_sessions: int = 100_000
    max_watches_per_connection: int = 100_000
    max_queued_bytes_per_connection: int = 64 << 20  # answers a client has not read yet
    max_items_per_request: int = 50_000  # CBOR items: the decoding cost of one frame
    handshake_timeout_ms: int = 10_000  # a connection without a session must say hello (and TLS) by then
    fsync: bool = True
    wal_segment_bytes: int = 64 << 20
    # Set by ``coord serve --recover-lost-log``, never by the file: the
    # operator accepts that this server's log lost entries (see DiskStorage).
    recover_lost_log: bool = False
    # [auth]: who bypasses ACLs, who may administer, the ACL of nodes created
    # without one (None: open to everybody), and whether status needs admin.
    # The ZooKeeper client port (None: off), and what it allows.
    zookeeper_address: Addr | None = None
    zk_four_letter_words: frozenset = frozenset({"srvr", "ruok", "mntr", "stat", "conf", "cons", "envi",
                                                 "wchs", "isro"})  # ZooKeeper's 4lw.commands.whitelist
    zk_max_buffer: int = 1 << 20  # largest ZooKeeper frame (jute.maxbuffer)
    zk_reconfig_enabled: bool = False  # ZooKeeper's reconfig op (admins only, as membership changes)
    superusers: frozenset = frozenset()  # of (scheme, id)
    admins: frozenset = frozenset()  # of (scheme, id)
    default_acl: Any = None  # coord.namespace.acl.ACL
    status_requires_admin: bool = False
    # [namespace]: how often the leader looks for empty containers and
    # expired TTL nodes to delete (ZooKeeper's znode.container.checkIntervalMs).
    reap_interval_ms: int = 5000

    @property
    def admin_restricted(self) -> bool:
        """Admin operations need an admin or superuser once [auth] names any."""
        return bool(self.superusers or self.admins)

    def identify(self, ids: frozenset) -> Auth:
        """The ``Auth`` of a request proving identities ``ids`` (superuser
        if one of them is listed in [auth] superusers).  Every port (client,
        ZooKeeper, HTTP) decides who a request is this one way."""
        return Auth(ids, bool(ids & self.superusers))

    def may_administer(self, auth: Auth) -> bool:
        """Whether ``auth`` passes the admin rule: anyone while [auth] names
        no superuser or admin, then only those."""
        return not self.admin_restricted or auth.superuser or bool(auth.ids & self.admins)
    # Observability (coord.observe): the HTTP port (/metrics, /health, /ready,
    # the dashboard; None = no HTTP port) and what /ready demands.
    http_address: Addr | None = None
    ready_max_lag: int = 1000  # entries between this server's applied index and the leader's commit
    ready_read_timeout_ms: int = 1000  # a linearizable read must be confirmed within this
    # Transport security (coord.security).  The peer port always needs a
    # credential -- mutual TLS (``tls``), a cluster secret, or both -- unless
    # the operator says the peer network is trusted.
    tls: TLSConfig | None = None
    peer_secret_file: str | None = None
    insecure_peer_network: bool = False


def _get(d: dict, key: str, name: str, kind: type, default: Any = ..., minimum: int | None = None) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(f"{name}: required")
        return default
    v = d[key]
    if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise ConfigError(f"{name}: must be an integer, got {v!r}")
    if kind is str and not isinstance(v, str):
        raise ConfigError(f"{name}: must be a string, got {v!r}")
    if kind is bool and not isinstance(v, bool):
        raise ConfigError(f"{name}: must be true or false, got {v!r}")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {v}")
    return v


def _table(doc: dict, key: str) -> dict:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: must be a table")
    return v


def _path(d: dict, key: str, name: str, base_dir: str, default: Any = ...) -> Any:
    v = _get(d, key, name, str, default)
    if v is None:
        return None
    if not v:
        raise ConfigError(f"{name}: must not be empty")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(v)))


def _parse_tls(doc: dict, base_dir: str) -> TLSConfig | None:
    if "tls" not in doc:
        return None
    tls = _table(doc, "tls")
    allowed = ("cert", "key", "ca", "client_auth", "handshake_timeout_ms")
    for k in tls:
        if k not in allowed:
            raise ConfigError(f"tls.{k}: unknown setting (expected one of {list(allowed)})")
    cert = _path(tls, "cert", "tls.cert", base_dir)
    key = _path(tls, "key", "tls.key", base_dir)
    ca = _path(tls, "ca", "tls.ca", base_dir)
    client_auth = _get(tls, "client_auth", "tls.client_auth", str, "none")
    if client_auth not in CLIENT_AUTH_MODES:
        raise ConfigError(f"tls.client_auth: must be one of {list(CLIENT_AUTH_MODES)}, got {client_auth!r}")
    timeout = _get(tls, "handshake_timeout_ms", "tls.handshake_timeout_ms", int, 5000, minimum=10)
    return TLSConfig(cert, key, ca, client_auth, timeout)


SECTIONS = frozenset({"server", "cluster", "raft", "limits", "health", "tls", "auth", "zookeeper", "namespace"})  # the tables a file may have


def parse_config(doc: dict, *, base_dir: str = ".") -> ServerConfig:
    known = SECTIONS
    for k in doc:
        if k not in known:
            raise ConfigError(f"{k}: unknown section (expected one of {sorted(known)})")
    srv, cl, raft, lim = (_table(doc, k) for k in ("server", "cluster", "raft", "limits"))
    sid = _get(srv, "id", "server.id", int, minimum=1)
    cluster_id = _get(srv, "cluster_id", "server.cluster_id", str)
    if not cluster_id:
        raise ConfigError("server.cluster_id: must not be empty")
    data_dir = _get(srv, "data_dir", "server.data_dir", str)
    data_dir = os.path.normpath(os.path.join(base_dir, os.path.expanduser(data_dir)))
    peer = parse_addr(_get(srv, "peer_address", "server.peer_address", str), "server.peer_address")
    client = parse_addr(_get(srv, "client_address", "server.client_address", str), "server.client_address")
    fsync = _get(srv, "fsync", "server.fsync", bool, True)
    wal_segment_bytes = _get(srv, "wal_segment_bytes", "server.wal_segment_bytes", int, 64 << 20, minimum=64 << 10)
    http = _get(srv, "http_address", "server.http_address", str, None)
    http = parse_addr(http, "server.http_address") if http is not None else None
    tls = _parse_tls(doc, base_dir)
    peer_secret_file = _path(srv, "peer_secret_file", "server.peer_secret_file", base_dir, None)
    insecure_peers = _get(srv, "insecure_peer_network", "server.insecure_peer_network", bool, False)
    if tls is None and peer_secret_file is None and not insecure_peers:
        raise ConfigError(
            "server.peer_secret_file: the peer port needs a credential: set [tls] (mutual TLS between "
            "servers) or server.peer_secret_file (a cluster secret, e.g. from `coord certs secret`), or, "
            "only if nobody untrusted can reach the peer port, server.insecure_peer_network = true")
    health = _table(doc, "health")
    for k in health:
        if k not in ("max_applied_lag", "read_timeout_ms"):
            raise ConfigError(f"health.{k}: unknown setting (expected max_applied_lag or read_timeout_ms)")
    ready_lag = _get(health, "max_applied_lag", "health.max_applied_lag", int, 1000, minimum=0)
    ready_timeout = _get(health, "read_timeout_ms", "health.read_timeout_ms", int, 1000, minimum=1)

    join = _get(cl, "join", "cluster.join", bool, False)
    raw_members = cl.get("members", {})
    if not isinstance(raw_members, dict):
        raise ConfigError("cluster.members: must be a table of id = \"host:port\" or {peer=..., client=...}")
    members: dict[int, MemberAddrs] = {}
    for k, v in raw_members.items():
        name = f"cluster.members.{k}"
        try:
            mid = int(k)
        except ValueError:
            raise ConfigError(f"{name}: member ids must be integers") from None
        if mid < 1:
            raise ConfigError(f"{name}: member ids start at 1")
        if isinstance(v, dict):
            unknown = set(v) - {"peer", "client", "zookeeper"}
            if unknown:
                raise ConfigError(f"{name}.{sorted(unknown)[0]}: unknown setting (expected peer, client, zookeeper)")
            members[mid] = MemberAddrs.from_wire(v, name)
        else:
            members[mid] = MemberAddrs(parse_addr(v, name))
    if join and members:
        raise ConfigError("cluster.members: must be empty when cluster.join = true (the leader adds this server)")
    if not join:
        if not members:
            raise ConfigError("cluster.members: required unless cluster.join = true")
        if sid not in members:
            raise ConfigError(f"cluster.members: does not contain this server's id {sid}")
        if members[sid].peer != peer:
            raise ConfigError(
                f"cluster.members.{sid}: peer address {format_addr(members[sid].peer)} differs from "
                f"server.peer_address {format_addr(peer)}"
            )

    tick_ms = _get(raft, "tick_ms", "raft.tick_ms", int, 50, minimum=1)
    election_ticks = _get(raft, "election_ticks", "raft.election_ticks", int, 10, minimum=2)
    heartbeat_ticks = _get(raft, "heartbeat_ticks", "raft.heartbeat_ticks", int, 2, minimum=1)
    if heartbeat_ticks >= election_ticks:
        raise ConfigError("raft.heartbeat_ticks: must be smaller than raft.election_ticks")
    snapshot_entries = _get(raft, "snapshot_entries", "raft.snapshot_entries", int, 10_000, minimum=1)
    max_data = _get(lim, "max_data_bytes", "limits.max_data_bytes", int, 1 << 20, minimum=0)
    if max_data > 3 << 20:
        raise ConfigError("limits.max_data_bytes: at most 3 MiB (a client frame is 4 MiB)")
    min_st = _get(lim, "min_session_timeout_ms", "limits.min_session_timeout_ms", int, 1000, minimum=100)
    max_st = _get(lim, "max_session_timeout_ms", "limits.max_session_timeout_ms", int, 60_000, minimum=min_st)
    limits = {
        "max_connections": _get(lim, "max_connections", "limits.max_connections", int, 0, minimum=0),
        "max_connections_per_ip": _get(lim, "max_connections_per_ip", "limits.max_connections_per_ip", int, 100,
                                       minimum=0),
        "max_sessions": _get(lim, "max_sessions", "limits.max_sessions", int, 100_000, minimum=1),
        "max_watches_per_connection": _get(lim, "max_watches_per_connection", "limits.max_watches_per_connection",
                                           int, 100_000, minimum=1),
        "max_queued_bytes_per_connection": _get(lim, "max_queued_bytes_per_connection",
                                                "limits.max_queued_bytes_per_connection", int, 64 << 20,
                                                minimum=1 << 20),
        "max_items_per_request": _get(lim, "max_items_per_request", "limits.max_items_per_request", int, 50_000,
                                      minimum=1000),
        "handshake_timeout_ms": _get(lim, "handshake_timeout_ms", "limits.handshake_timeout_ms", int, 10_000,
                                     minimum=100),
    }
    for k in lim:
        if k not in limits and k not in ("max_data_bytes", "min_session_timeout_ms", "max_session_timeout_ms"):
            raise ConfigError(f"limits.{k}: unknown setting")

    auth = _table(doc, "auth")
    superusers, admins, default_acl, status_admin = _auth_section(auth)
    zk_addr = _get(srv, "zookeeper_address", "server.zookeeper_address", str, None)
    zk_addr = parse_addr(zk_addr, "server.zookeeper_address") if zk_addr is not None else None
    if not join:
        members = {**members, sid: members[sid].with_own(client, zk_addr)}
    words, zk_buf, zk_reconfig = _zookeeper_section(_table(doc, "zookeeper"))
    nsec = _table(doc, "namespace")
    for k in nsec:
        if k != "reap_interval_ms":
            raise ConfigError(f"namespace.{k}: unknown setting (expected reap_interval_ms)")
    reap_ms = _get(nsec, "reap_interval_ms", "namespace.reap_interval_ms", int, 5000, minimum=10)
    return ServerConfig(
        zookeeper_address=zk_addr, zk_four_letter_words=words, zk_max_buffer=zk_buf, zk_reconfig_enabled=zk_reconfig,
        superusers=superusers, admins=admins, default_acl=default_acl, status_requires_admin=status_admin,
        server_id=sid, cluster_id=cluster_id, data_dir=data_dir, peer_address=peer,
        client_address=client, members=members, join=join, tick_ms=tick_ms,
        election_ticks=election_ticks, heartbeat_ticks=heartbeat_ticks,
        snapshot_entries=snapshot_entries, max_data_bytes=max_data, fsync=fsync,
        min_session_timeout_ms=min_st, max_session_timeout_ms=max_st, wal_segment_bytes=wal_segment_bytes, **limits,
        http_address=http, ready_max_lag=ready_lag, ready_read_timeout_ms=ready_timeout,
        tls=tls, peer_secret_file=peer_secret_file, insecure_peer_network=insecure_peers, reap_interval_ms=reap_ms,
    )


def load_config(path: str) -> ServerConfig:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(doc, base_dir=os.path.dirname(os.path.abspath(path)))


def _auth_section(auth: dict) -> tuple[frozenset, frozenset, Any, bool]:
    for k in auth:
        if k not in ("superusers", "admins", "default_acl", "status_requires_admin"):
            raise ConfigError(f"auth.{k}: unknown setting (expected superusers, admins, default_acl, "
                              "status_requires_admin)")

    def identities(key: str) -> frozenset:
        raw = auth.get(key, [])
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ConfigError(f"auth.{key}: must be a list of identities such as \"digest:user:HASH\" "
                              "(see `coord digest`) or \"x509:CN=ops\"")
        try:
            return frozenset(parse_identity(x) for x in raw)
        except ValueError as e:
            raise ConfigError(f"auth.{key}: {e}") from None

    raw_acl = auth.get("default_acl")
    default_acl = None
    if raw_acl is not None:
        if not isinstance(raw_acl, list) or not raw_acl or not all(isinstance(x, str) for x in raw_acl):
            raise ConfigError('auth.default_acl: must be a non-empty list such as ["world:anyone:r"]')
        try:
            entries = tuple(parse_acl_text(x) for x in raw_acl)
        except Exception as e:  # InvalidACLError
            raise ConfigError(f"auth.default_acl: {e}") from None
        if any(e.scheme == "auth" for e in entries):
            raise ConfigError("auth.default_acl: the 'auth' scheme needs a session; name identities instead")
        default_acl = intern(entries)
    status_admin = _get(auth, "status_requires_admin", "auth.status_requires_admin", bool, False)
    return identities("superusers"), identities("admins"), default_acl, status_admin


def _zookeeper_section(zk: dict) -> tuple[frozenset, int, bool]:
    from coord.zookeeper.fourletter import parse_allow_list

    for k in zk:
        if k not in ("four_letter_words", "max_buffer", "reconfig_enabled"):
            raise ConfigError(f"zookeeper.{k}: unknown setting (expected four_letter_words, max_buffer, "
                              "reconfig_enabled)")
    words = _get(zk, "four_letter_words", "zookeeper.four_letter_words", str, None)
    allowed = parse_allow_list(words if words is not None else
                               "srvr, ruok, mntr, stat, conf, cons, envi, wchs, isro")
    max_buffer = _get(zk, "max_buffer", "zookeeper.max_buffer", int, 1 << 20, minimum=4096)
    if max_buffer > 64 << 20:
        raise ConfigError("zookeeper.max_buffer: at most 64 MiB")
    reconfig = _get(zk, "reconfig_enabled", "zookeeper.reconfig_enabled", bool, False)
    return allowed, max_buffer, reconfig
