"""ZooKeeper's four-letter words, answered from a plain status dict.

Monitoring built for ZooKeeper (zkServer.sh, Nagios checks, exporters,
benchmark harnesses) sends four ASCII bytes on the client port and reads
text until the server closes the connection.  ``render(word, status)``
produces that text in ZooKeeper's format; the session (``session.py``)
recognises the word, the server calls ``render`` and closes.

``status`` is coord's ``status`` answer (``server_id``, ``role``,
``applied``, ``nodes``, ``sessions``, ``watches``, ``voters``,
``learners``, ``members``, ``config_version``, ``progress``), plus what
only the ZooKeeper front end knows, all optional:

    version        coord's version string
    connections    [{"peer": "ip:port", "sid", "timeout_ms", "received", "sent",
                     "queued", "last_zxid", "last_op", "established_ms",
                     "last_response_ms", "latency": {"last", "min", "avg", "max"}}]
    received, sent, outstanding      packet counters of the ZooKeeper port
    latency        {"min", "avg", "max"} request latency in ms
    conf           {"client_port", "secure_client_port", "data_dir", "tick_ms",
                    "max_client_cnxns", "min_session_timeout_ms",
                    "max_session_timeout_ms"}
    env            {name: value} lines for ``envi``
    watch_summary  {"connections", "paths", "total"}
    ephemerals, data_size, open_fds, max_fds, uptime_ms

Which words run is an allow-list like ZooKeeper's
``4lw.commands.whitelist`` (``parse_allow_list("srvr, ruok")``, ``"*"`` for
all); ``srvr`` is always allowed, as in ZooKeeper (zkServer.sh needs it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from coord.zookeeper.membership import render_config

# The protocol level coord speaks; clients parse the leading digits
# (kazoo's server_version reads ``zookeeper.version`` from ``envi``).
ZK_COMPAT_VERSION = "3.9.0"

# Every word ZooKeeper knows; the ones coord answers are in _RENDERERS.
KNOWN_WORDS = frozenset({"conf", "cons", "crst", "dirs", "dump", "envi", "gtmk", "ruok", "stmk", "srst",
                         "srvr", "stat", "wchc", "wchp", "wchs", "mntr", "isro", "hash"})

NOT_SERVING = "This ZooKeeper instance is not currently serving requests\n"


def parse_allow_list(spec: str | None) -> frozenset[str]:
    """ZooKeeper's whitelist syntax: comma separated words, ``*`` for all.
    ``None`` (not configured) allows every word coord answers."""
    if spec is None:
        return IMPLEMENTED
    words = {w.strip() for w in spec.split(",") if w.strip()}
    if "*" in words:
        return IMPLEMENTED
    return frozenset((words & KNOWN_WORDS) | {"srvr"})


def _int(status: Mapping[str, Any], key: str, default: int = 0) -> int:
    v = status.get(key)
    return v if type(v) is int else default


def _num(v: Any, default: float = 0) -> Any:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def full_version(status: Mapping[str, Any]) -> str:
    v = status.get("version")
    return f"{ZK_COMPAT_VERSION}-coord-{v if isinstance(v, str) else 'dev'}, built on 01/01/1970 00:00 GMT"


def mode(status: Mapping[str, Any]) -> str | None:
    """ZooKeeper's server state name, None when not serving (no leader known)."""
    if status.get("serving") is False:
        return None
    role = status.get("role")
    voters = status.get("voters") if isinstance(status.get("voters"), list) else []
    learners = status.get("learners") if isinstance(status.get("learners"), list) else []
    if role == "leader":
        return "standalone" if len(voters) == 1 and not learners else "leader"
    if role == "follower":
        return "follower"
    if role == "learner":
        return "observer"
    return None


def _latency(status: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    lat = status.get("latency") if isinstance(status.get("latency"), dict) else {}
    return _num(lat.get("min")), float(_num(lat.get("avg"), 0.0)), _num(lat.get("max"))


def _connections(status: Mapping[str, Any]) -> list[dict]:
    conns = status.get("connections")
    return [c for c in conns if isinstance(c, dict)] if isinstance(conns, list) else []


def _conn_line(c: Mapping[str, Any], brief: bool) -> str:
    """One connection as ServerCnxn.dumpConnectionInfo prints it."""
    out = f" /{c.get('peer', '?')}[1](queued={_int(c, 'queued')},recved={_int(c, 'received')},sent={_int(c, 'sent')}"
    sid = _int(c, "sid")
    if not brief and sid:
        lat = c.get("latency") if isinstance(c.get("latency"), dict) else {}
        out += (f",sid=0x{sid:x},lop={c.get('last_op', 'NA')},est={_int(c, 'established_ms')}"
                f",to={_int(c, 'timeout_ms')},lzxid=0x{_int(c, 'last_zxid'):x},lresp={_int(c, 'last_response_ms')}"
                f",llat={_num(lat.get('last'))},minlat={_num(lat.get('min'))},avglat={_num(lat.get('avg'))}"
                f",maxlat={_num(lat.get('max'))}")
    return out + ")"


def _server_stats(status: Mapping[str, Any], with_clients: bool) -> str:
    m = mode(status)
    if m is None:
        return NOT_SERVING
    lo, avg, hi = _latency(status)
    lines = [f"Zookeeper version: {full_version(status)}"]
    if with_clients:
        lines.append("Clients:")
        lines.extend(_conn_line(c, True) for c in _connections(status))
        lines.append("")
    lines += [
        f"Latency min/avg/max: {lo}/{avg}/{hi}",
        f"Received: {_int(status, 'received')}",
        f"Sent: {_int(status, 'sent')}",
        f"Connections: {len(_connections(status))}",
        f"Outstanding: {_int(status, 'outstanding')}",
        f"Zxid: 0x{_int(status, 'applied'):x}",
        f"Mode: {m}",
        f"Node count: {_int(status, 'nodes')}",
    ]
    if m == "leader":
        lines.append("Proposal sizes last/min/max: -1/-1/-1")
    return "\n".join(lines) + "\n"


def _srvr(status: Mapping[str, Any]) -> str:
    return _server_stats(status, False)


def _stat(status: Mapping[str, Any]) -> str:
    return _server_stats(status, True)


def _ruok(status: Mapping[str, Any]) -> str:
    return "imok"


def _isro(status: Mapping[str, Any]) -> str:
    return "rw" if mode(status) is not None else "null"


def _conf(status: Mapping[str, Any]) -> str:
    if mode(status) is None:
        return NOT_SERVING
    conf = status.get("conf") if isinstance(status.get("conf"), dict) else {}
    lines = [
        f"clientPort={_int(conf, 'client_port')}",
        f"secureClientPort={_int(conf, 'secure_client_port', -1)}",
        f"dataDir={conf.get('data_dir', '')}",
        "dataDirSize=0",
        f"dataLogDir={conf.get('data_dir', '')}",
        "dataLogSize=0",
        f"tickTime={_int(conf, 'tick_ms')}",
        f"maxClientCnxns={_int(conf, 'max_client_cnxns')}",
        f"minSessionTimeout={_int(conf, 'min_session_timeout_ms')}",
        f"maxSessionTimeout={_int(conf, 'max_session_timeout_ms')}",
        "clientPortListenBacklog=-1",
        f"serverId={_int(status, 'server_id')}",
        "membership: ",
        render_config(status).decode(),
    ]
    return "\n".join(lines) + "\n"


def _cons(status: Mapping[str, Any]) -> str:
    if mode(status) is None:
        return NOT_SERVING
    return "".join(_conn_line(c, False) + "\n" for c in _connections(status)) + "\n"


def _envi(status: Mapping[str, Any]) -> str:
    env = status.get("env") if isinstance(status.get("env"), dict) else {}
    lines = ["Environment:", f"zookeeper.version={full_version(status)}"]
    lines += [f"{k}={v}" for k, v in env.items() if k != "zookeeper.version"]
    return "\n".join(lines) + "\n"


def _wchs(status: Mapping[str, Any]) -> str:
    if mode(status) is None:
        return NOT_SERVING
    w = status.get("watch_summary") if isinstance(status.get("watch_summary"), dict) else {}
    total = _int(w, "total", _int(status, "watches"))
    return f"{_int(w, 'connections')} connections watching {_int(w, 'paths')} paths\nTotal watches:{total}\n"


def _mntr(status: Mapping[str, Any]) -> str:
    m = mode(status)
    if m is None:
        return NOT_SERVING
    lo, avg, hi = _latency(status)
    rows: list[tuple[str, Any]] = [
        ("version", full_version(status)),
        ("server_state", m),
        ("avg_latency", avg),
        ("max_latency", hi),
        ("min_latency", lo),
        ("packets_received", _int(status, "received")),
        ("packets_sent", _int(status, "sent")),
        ("num_alive_connections", len(_connections(status))),
        ("outstanding_requests", _int(status, "outstanding")),
        ("znode_count", _int(status, "nodes")),
        ("watch_count", _int(status, "watches")),
        ("ephemerals_count", _int(status, "ephemerals")),
        ("approximate_data_size", _int(status, "data_size")),
        ("open_file_descriptor_count", _int(status, "open_fds")),
        ("max_file_descriptor_count", _int(status, "max_fds")),
        ("global_sessions", _int(status, "sessions")),
        ("uptime", _int(status, "uptime_ms")),
        ("quorum_size", len(status.get("voters") or [])),
    ]
    if m == "leader":
        progress = status.get("progress") if isinstance(status.get("progress"), dict) else {}
        others = [p for sid, p in progress.items() if sid != status.get("server_id") and isinstance(p, dict)]
        voters = set(status.get("voters") or [])
        rows += [
            ("learners", len(others)),
            ("synced_followers", sum(1 for sid in progress if sid != status.get("server_id") and sid in voters)),
            ("synced_non_voting_followers",
             sum(1 for sid in progress if sid != status.get("server_id") and sid not in voters)),
            ("pending_syncs", 0),
        ]
    return "".join(f"zk_{k}\t{v}\n" for k, v in rows)


_RENDERERS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "ruok": _ruok, "srvr": _srvr, "stat": _stat, "mntr": _mntr, "conf": _conf, "cons": _cons,
    "envi": _envi, "wchs": _wchs, "isro": _isro,
}
IMPLEMENTED = frozenset(_RENDERERS)


def render(word: str, status: Mapping[str, Any], allowed: frozenset[str] = IMPLEMENTED) -> bytes:
    """The bytes to send for ``word``; the server then closes the connection.
    A word that is not allowed (or that coord does not answer) gets
    ZooKeeper's refusal line, as ZooKeeper answers words off its whitelist."""
    fn = _RENDERERS.get(word)
    if fn is None or (word not in allowed and word != "srvr"):
        return f"{word} is not executed because it is not in the whitelist.\n".encode()
    return fn(status if isinstance(status, Mapping) else {}).encode()
