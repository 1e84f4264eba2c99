"""``FaultCluster``: the real-process ensemble of ``tests.cluster`` with every
link behind a proxy, plus the fault operations a nemesis needs.

Addresses: server ``s`` listens on ``peer_ports[s]`` / ``client_ports[s]``
(as in ``Cluster``); its proxies listen on ``peer_proxy_ports[s]`` /
``client_proxy_ports[s]``.  Every configuration lists every member at its
*proxy* addresses -- the same table on every server, as the replicated
membership requires -- so all server-to-server traffic, including replies
and snapshot transfers, crosses a proxy.  Servers are started through
``tests.faults.serve``, which binds the peer transport to the real port.
Clients use ``endpoints`` (the client proxies); the harness itself observes
servers through ``statuses()`` on the real client ports, so a cut never
blinds it.

The proxies run as tasks of the caller's Trio run: ``await
nursery.start(cluster.run_proxies)`` before ``cluster.start()``.

Membership: ``spare`` ids (see ``Cluster``) get proxies too and ``addrs``
names the proxies, so a server added under load (``start_joining`` + the
admin API) is behind proxies like the others; ``members`` is who should be
running once everything heals.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from coord.cli import free_ports
from tests.cluster import HOST, Cluster
from tests.faults.proxy import CLIENT, Net, Proxies


class FaultCluster(Cluster):
    def __init__(self, n: int, base_dir: str | os.PathLike, **kw):
        super().__init__(n, base_dir, **kw)
        self.net = Net()
        self.proxies = Proxies(self.net)
        self.peer_proxy_ports: dict[int, int] = {}
        self.client_proxy_ports: dict[int, int] = {}
        self.paused: set[int] = set()
        self.members: set[int] = set(range(1, n + 1))  # who should be running once everything heals
        ids = sorted(self.peer_ports)  # the initial members and the spares
        ports = free_ports(2 * len(ids))
        for k, sid in enumerate(ids):
            self._add_proxies(sid, ports[k], ports[len(ids) + k])

    def _add_proxies(self, sid: int, peer_proxy: int, client_proxy: int) -> None:
        self.peer_proxy_ports[sid] = peer_proxy
        self.client_proxy_ports[sid] = client_proxy
        self.proxies.add_peer(sid, peer_proxy, self.peer_ports[sid])
        self.proxies.add_client(sid, client_proxy, self.client_ports[sid])

    async def run_proxies(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.proxies.run(task_status=task_status)

    # -- configuration and processes ---------------------------------------
    @property
    def endpoints(self) -> str:
        """Where clients connect: the client proxies."""
        return ",".join(f"{HOST}:{self.client_proxy_ports[i]}" for i in sorted(self.client_proxy_ports))

    @property
    def direct_endpoints(self) -> str:
        """The servers' own client ports (for the harness and admin calls)."""
        return ",".join(f"{HOST}:{self.client_ports[i]}" for i in sorted(self.client_ports))

    def proxy_endpoint(self, sid: int) -> str:
        return f"{HOST}:{self.client_proxy_ports[sid]}"

    def advertised(self, sid: int) -> tuple[str, str]:
        """Every member is listed at its proxies (its own peer transport binds
        the real port: see ``tests.faults.serve``)."""
        return f"{HOST}:{self.peer_proxy_ports[sid]}", f"{HOST}:{self.client_proxy_ports[sid]}"

    def server_command(self, sid: int) -> list[str]:
        return [sys.executable, "-m", "tests.faults.serve", "--config", self.config_path(sid),
                "--peer-listen", f"{HOST}:{self.peer_ports[sid]}", "--log-level", self.log_level]

    def start_server(self, sid: int, extra_args: tuple[str, ...] = ()) -> None:
        super().start_server(sid, extra_args)
        self.paused.discard(sid)

    # -- process faults ---------------------------------------------------------
    def pause(self, sid: int) -> None:
        super().pause(sid)
        self.paused.add(sid)

    def resume(self, sid: int) -> None:
        super().resume(sid)
        self.paused.discard(sid)

    def crash(self, sid: int) -> None:
        """SIGKILL (a paused process is killed as it is)."""
        self.kill(sid, signal.SIGKILL)
        self.paused.discard(sid)

    def stopped(self) -> list[int]:
        """Members that are not running (removed servers stay down)."""
        return [sid for sid in sorted(self.members) if sid not in self.running()]

    # -- network faults -----------------------------------------------------------
    def servers(self) -> list[int]:
        return sorted(self.members | set(self.running()))

    def partition(self, *groups: list[int]) -> None:
        """Cut every link between different groups, both ways (clients unaffected)."""
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                self.net.block(self.net.between(a, b))

    def isolate(self, sid: int) -> None:
        self.partition([sid], [s for s in self.servers() if s != sid])

    def bridge(self, left: list[int], middle: int, right: list[int]) -> None:
        """``left`` and ``right`` cannot talk to each other; ``middle`` talks to both."""
        self.net.block(self.net.between(left, right))

    def cut(self, src: int | str, dst: int | str) -> None:
        """One direction of one link (``CLIENT`` names all clients)."""
        self.net.block([(src, dst)])

    def cut_clients(self, sid: int, *, requests: bool = True, responses: bool = True) -> None:
        if requests:
            self.cut(CLIENT, sid)
        if responses:
            self.cut(sid, CLIENT)

    def delay(self, links: list[tuple], seconds: float) -> None:
        self.net.set_delay(links, seconds)

    def heal_network(self) -> None:
        self.net.heal()

    # -- everything back to normal ---------------------------------------------------
    def heal_all(self) -> None:
        """Network healed, paused servers resumed, stopped servers restarted on their data."""
        self.heal_network()
        for sid in list(self.paused):
            self.resume(sid)
        for sid in self.stopped():
            self.start_server(sid)

    async def leader_now(self) -> int | None:
        """The leader with the highest term among servers answering right now."""
        sts = await self.statuses()
        leaders = [(st["term"], sid) for sid, st in sts.items() if st["role"] == "leader"]
        return max(leaders)[1] if leaders else None
