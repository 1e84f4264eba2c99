"""Real coord server processes on 127.0.0.1, for end-to-end tests and scripts.

Each server is a separate ``python -m coord serve`` process with its own
data directory and free ports chosen at start.  Servers can be SIGKILLed,
paused (SIGSTOP/SIGCONT) and restarted on the same data.  The harness asks
servers for their status over the client protocol, the way any tool would.

    with Cluster(3, tmp_path) as c:
        c.start()
        leader = trio.run(c.wait_leader)
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from typing import Any, Callable

import trio

from coord.cli import free_ports, probe_status as status
from coord.security.peerauth import write_secret

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict[str, str]:
    """The children import the same code as this process, installed or not."""
    paths = [ROOT, os.path.join(ROOT, "client")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


class Cluster:
    def __init__(self, n: int, base_dir: str | os.PathLike, *, tick_ms: int = 50, election_ticks: int = 10,
                 heartbeat_ticks: int = 2, min_session_timeout_ms: int = 500, snapshot_entries: int = 10_000,
                 cluster_id: str = "test", log_level: str = "info", spare: int = 0, http: bool = False,
                 wal_segment_bytes: int = 1 << 20, extra_config: str = "", zookeeper: bool = False,
                 limits: dict | None = None, peer_secret: bool = True,
                 tls: Callable[[int], dict[str, Any]] | None = None, client_ssl: ssl.SSLContext | None = None):
        """``n`` initial members (ids 1..n); ``spare`` more ids get ports and
        can be started later with a joining configuration; ``http`` gives
        every server an HTTP port (``http_ports``).

        Peers authenticate with a cluster secret (``peer_secret``, written
        to ``peer.secret``) and/or mutual TLS: ``tls(sid)`` returns server
        ``sid``'s ``[tls]`` table (cert, key, ca, ...), and the harness
        then talks TLS to the client ports with ``client_ssl``."""
        self.n = n
        self.base = os.fspath(base_dir)
        self.tick_ms, self.election_ticks, self.heartbeat_ticks = tick_ms, election_ticks, heartbeat_ticks
        self.min_session_timeout_ms = min_session_timeout_ms
        self.snapshot_entries = snapshot_entries
        self.cluster_id = cluster_id
        self.log_level = log_level
        self.wal_segment_bytes = wal_segment_bytes  # small: segments are preallocated
        self.extra_config = extra_config  # more TOML sections, appended to every server's file
        self.limits = {"max_connections_per_ip": 0, **(limits or {})}  # every test client comes from 127.0.0.1
        zk_ports = free_ports(n + spare) if zookeeper else []
        self.zk_ports = {i: zk_ports[i - 1] for i in range(1, n + spare + 1)} if zookeeper else {}
        total = n + spare
        ports = free_ports(2 * total)
        self.peer_ports = {i: ports[i - 1] for i in range(1, total + 1)}
        self.client_ports = {i: ports[total + i - 1] for i in range(1, total + 1)}
        http_ports = free_ports(total) if http else []
        self.http_ports = {i: http_ports[i - 1] for i in range(1, total + 1)} if http else {}
        self.procs: dict[int, subprocess.Popen] = {}
        self._logs: dict[int, Any] = {}
        self.peer_secret = peer_secret
        self.tls = tls
        self.client_ssl = client_ssl
        if tls is not None and client_ssl is None:
            raise ValueError("a TLS cluster needs client_ssl for the harness's status probes")

    @property
    def secret_path(self) -> str:
        return os.path.join(self.base, "peer.secret")

    # -- configuration ----------------------------------------------------
    def config_path(self, sid: int) -> str:
        return os.path.join(self.base, f"server{sid}.toml")

    def log_path(self, sid: int) -> str:
        return os.path.join(self.base, f"server{sid}.log")

    def client_addr(self, sid: int) -> tuple[str, int]:
        return HOST, self.client_ports[sid]

    @property
    def endpoints(self) -> str:
        """Client endpoints of the initial members."""
        return self.endpoints_of(range(1, self.n + 1))

    @property
    def zk_hosts(self) -> str:
        """ZooKeeper connection string of the initial members (``zookeeper=True``)."""
        return ",".join(f"{HOST}:{self.zk_ports[i]}" for i in range(1, self.n + 1))

    def endpoints_of(self, sids) -> str:
        return ",".join(f"{HOST}:{self.client_ports[i]}" for i in sids)

    def advertised(self, sid: int) -> tuple[str, str]:
        """(peer, client) addresses the ensemble knows server ``sid`` by (its
        own ports here; a subclass may put proxies in front)."""
        return f"{HOST}:{self.peer_ports[sid]}", f"{HOST}:{self.client_ports[sid]}"

    def server_command(self, sid: int) -> list[str]:
        return [sys.executable, "-m", "coord", "serve", "--config", self.config_path(sid),
                "--log-level", self.log_level]

    def addrs(self, sid: int) -> dict:
        """A server's addresses as membership changes take them."""
        peer, client = self.advertised(sid)
        return {"id": sid, "peer": peer, "client": client}

    def start_joining(self, sid: int) -> None:
        """Start server ``sid`` with a configuration that says "join"."""
        self.write_config(sid, join=True)
        self.start_server(sid)

    def write_config(self, sid: int, members: list[int] | None = None, join: bool = False) -> None:
        members = list(range(1, self.n + 1)) if members is None else members
        lines = [
            "[server]",
            f"id = {sid}",
            f'cluster_id = "{self.cluster_id}"',
            f'data_dir = "{os.path.join(self.base, f"data{sid}")}"',
            f'peer_address = "{self.advertised(sid)[0]}"',
            f'client_address = "{HOST}:{self.client_ports[sid]}"',
            f"wal_segment_bytes = {self.wal_segment_bytes}",
        ]
        if self.peer_secret:
            if not os.path.exists(self.secret_path):
                os.makedirs(self.base, exist_ok=True)
                write_secret(self.secret_path)
            lines.append(f'peer_secret_file = "{self.secret_path}"')
        elif self.tls is None:
            lines.append("insecure_peer_network = true")
        if sid in self.http_ports:
            lines.append(f'http_address = "{HOST}:{self.http_ports[sid]}"')
        if sid in self.zk_ports:
            lines.append(f'zookeeper_address = "{HOST}:{self.zk_ports[sid]}"')
        lines += [
            "",
            "[cluster]",
        ]
        if join:
            lines.append("join = true")
        else:
            lines.append("[cluster.members]")
            for m in members:
                peer, client = self.advertised(m)
                zk = f', zookeeper = "{HOST}:{self.zk_ports[m]}"' if m in self.zk_ports else ""
                lines.append(f'{m} = {{ peer = "{peer}", client = "{client}"{zk} }}')
        lines += [
            "",
            "[raft]",
            f"tick_ms = {self.tick_ms}",
            f"election_ticks = {self.election_ticks}",
            f"heartbeat_ticks = {self.heartbeat_ticks}",
            f"snapshot_entries = {self.snapshot_entries}",
            "",
            "[limits]",
            f"min_session_timeout_ms = {self.min_session_timeout_ms}",
            *(f"{k} = {v}" for k, v in self.limits.items()),
            "",
            self.extra_config,
        ]
        if self.tls is not None:
            lines += ["", "[tls]"]
            for k, v in self.tls(sid).items():
                lines.append(f"{k} = {json.dumps(v)}")  # a JSON string or int is a TOML one
        with open(self.config_path(sid), "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- processes ----------------------------------------------------------
    def start(self) -> "Cluster":
        os.makedirs(self.base, exist_ok=True)
        for sid in range(1, self.n + 1):
            if not os.path.exists(self.config_path(sid)):
                self.write_config(sid)
            self.start_server(sid)
        return self

    def start_server(self, sid: int, extra_args: tuple[str, ...] = ()) -> None:
        if sid in self.procs and self.procs[sid].poll() is None:
            raise RuntimeError(f"server {sid} is already running")
        logf = open(self.log_path(sid), "ab")
        self._logs[sid] = logf
        self.procs[sid] = subprocess.Popen([*self.server_command(sid), *extra_args], stdout=logf,
                                           stderr=subprocess.STDOUT, env=child_env())

    def kill(self, sid: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(sid)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait(timeout=10)

    def pause(self, sid: int) -> None:
        self.kill(sid, signal.SIGSTOP)

    def resume(self, sid: int) -> None:
        self.kill(sid, signal.SIGCONT)

    def restart(self, sid: int) -> None:
        self.kill(sid)
        self.start_server(sid)

    def running(self) -> list[int]:
        return [sid for sid, p in self.procs.items() if p.poll() is None]

    def close(self) -> None:
        for sid, p in self.procs.items():
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for f in self._logs.values():
            f.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logs(self, sid: int, tail: int = 4000) -> str:
        try:
            with open(self.log_path(sid), "rb") as f:
                return f.read().decode("utf-8", "replace")[-tail:]
        except OSError:
            return ""

    # -- observation --------------------------------------------------------
    async def statuses(self) -> dict[int, dict]:
        out: dict[int, dict] = {}

        async def one(sid: int) -> None:
            st = await status(self.client_addr(sid), timeout=1.0, ssl_context=self.client_ssl)
            if st is not None:
                out[sid] = st

        async with trio.open_nursery() as n:
            for sid in self.running():
                n.start_soon(one, sid)
        return out

    async def wait_leader(self, timeout: float = 20.0, exclude: tuple[int, ...] = (),
                          among: tuple[int, ...] | None = None) -> int:
        """The id of a leader that every running server (or every server in
        ``among``, less ``exclude``) agrees on."""
        with trio.fail_after(timeout):
            while True:
                sts = await self.statuses()
                if among is not None:
                    sts = {k: v for k, v in sts.items() if k in among}
                sts = {k: v for k, v in sts.items() if k not in exclude}
                leaders = {st["server_id"] for st in sts.values() if st["role"] == "leader"}
                if len(leaders) == 1:
                    lid = leaders.pop()
                    term = sts[lid]["term"]
                    if all(st["leader"] == lid and st["term"] == term for st in sts.values()):
                        return lid
                await trio.sleep(0.05)

    async def wait_applied_all(self, zxid: int, timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while True:
                sts = await self.statuses()
                if len(sts) == len(self.running()) and all(st["applied"] >= zxid for st in sts.values()):
                    return
                await trio.sleep(0.05)


def dump_logs_on_failure(request, cluster: "Cluster") -> None:
    """Print every server's log tail when the test using ``cluster`` failed
    (pytest shows it with the failure); call it from the fixture's teardown."""
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for sid in sorted(cluster.procs):
            print(f"--- server {sid} log ---\n{cluster.logs(sid)}")
