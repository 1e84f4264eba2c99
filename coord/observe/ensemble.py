"""The ensemble as one server sees it, for a dashboard opened on any member.

Every other member is asked for its status over the peer links
(``InfoQuery("status")``, see ``coord.server.info``), not over its client
port: the peer links are up and authenticated whatever ``[tls]`` and
``[auth]`` say, so no client certificate or admin identity is needed, and
a member's answer is trusted.  A member that does not answer within
``PROBE_TIMEOUT`` (or whose link is down) is shown unreachable.  Results
are cached for ``CACHE_SECONDS`` and concurrent callers share one round of
questions, so ten open dashboards cost the same as one.

The sessions view asks each member the same way which sessions are
connected to it (``connections``).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from coord.observe.views import MAX_CONNECTIONS
from coord.server.config import MemberAddrs

log = logging.getLogger("coord.observe")

PROBE_TIMEOUT = 0.5
CACHE_SECONDS = 0.5


def member_role(sid: int, m: Any) -> str:
    if sid in m.learners:
        return "learner"
    if sid in m.voters and sid in m.outgoing:
        return "voter"
    if sid in m.voters:
        return "voter (joining)" if m.outgoing else "voter"
    return "voter (leaving)"


class Ensemble:
    def __init__(self, service: Any) -> None:
        self.s = service
        self._cached: dict | None = None
        self._at = -1e9
        self._inflight: trio.Event | None = None

    def client_addresses(self) -> dict[int, tuple[str, int]]:
        out = {}
        for mid, raw in self.s.node.core.membership.addrs.items():
            try:
                a = MemberAddrs.from_wire(raw)
            except ValueError:
                continue
            if a.client is not None:
                out[mid] = a.client
        return out

    async def view(self) -> dict:
        """Every member's status (cached briefly; one round of questions at
        a time, whose result every caller waiting on it shares)."""
        while True:
            if trio.current_time() - self._at < CACHE_SECONDS and self._cached is not None:
                return self._cached
            if self._inflight is None:
                break
            await self._inflight.wait()  # then fresh, unless that round failed: then ask anew
        done = self._inflight = trio.Event()
        try:
            self._cached = await self._probe_all()
            self._at = trio.current_time()
        finally:
            self._inflight = None
            done.set()
        return self._cached

    async def _probe_all(self) -> dict:
        s = self.s
        m = s.node.core.membership
        addrs = self.client_addresses()
        statuses: dict[int, dict | None] = {s.server_id: s.status()}

        async def one(mid: int) -> None:
            st = await s.info.ask(mid, "status", PROBE_TIMEOUT)
            statuses[mid] = st if st is not None and "error" not in st else None

        async with trio.open_nursery() as nursery:
            for mid in sorted(m.members()):
                if mid != s.server_id:
                    nursery.start_soon(one, mid)
        leaders = [st for st in statuses.values() if st and st.get("role") == "leader"]
        # The leader with the highest term is the one the others follow.
        leader = max(leaders, key=lambda st: st.get("term", 0)) if leaders else None
        progress = {int(k): v for k, v in (leader or {}).get("progress", {}).items()}
        top_commit = max([st.get("commit", 0) for st in statuses.values() if st] or [0])
        members = []
        for mid in sorted(m.members() | set(statuses)):
            st = statuses.get(mid)
            row: dict[str, Any] = {"id": mid, "membership": member_role(mid, m), "self": mid == s.server_id,
                                   "client": "%s:%d" % addrs[mid] if mid in addrs else None}
            if st is None:
                row.update(reachable=False, health="unreachable")
            else:
                lag = progress.get(mid, {}).get("lag")
                if lag is None:
                    lag = max(0, top_commit - st.get("applied", 0))
                health = "ok"
                if st.get("disk_full"):
                    health = "disk full"  # writes refused there until space is freed (diskspace.py)
                elif not st.get("leader"):
                    health = "no leader"
                elif lag > s.cfg.ready_max_lag:
                    health = "lagging"
                row.update(reachable=True, role=st.get("role"), term=st.get("term"), leader=st.get("leader"),
                           commit=st.get("commit"), applied=st.get("applied"), lag=lag, health=health,
                           http=st.get("http"), sessions=st.get("sessions"), nodes=st.get("nodes"),
                           watches=st.get("watches"))
            members.append(row)
        return {
            "server_id": s.server_id,
            "leader": leader["server_id"] if leader else 0,
            "term": leader["term"] if leader else s.node.core.term,
            "voters": sorted(m.voters), "outgoing": sorted(m.outgoing), "learners": sorted(m.learners),
            "joint": m.joint, "config_index": s.node.core.membership_version,
            "members": members,
        }

    async def remote_connections(self) -> dict[int, list[dict]]:
        """Every other member's client connections with a session, by
        member (those that do not answer are left out), at most
        ``MAX_CONNECTIONS`` rows each."""
        s = self.s
        out: dict[int, list[dict]] = {}

        async def one(mid: int) -> None:
            doc = await s.info.ask(mid, "connections", PROBE_TIMEOUT)
            rows = doc.get("connections") if doc is not None else None
            if type(rows) is list:
                out[mid] = [r for r in rows[:MAX_CONNECTIONS] if type(r) is dict and type(r.get("sid")) is int]

        async with trio.open_nursery() as nursery:
            for mid in sorted(s.node.core.membership.members()):
                if mid != s.server_id:
                    nursery.start_soon(one, mid)
        return out
