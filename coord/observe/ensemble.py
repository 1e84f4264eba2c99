"""The ensemble as one server sees it, for a dashboard opened on any member.

Every member's status is asked over its *client* port (the ``status`` op,
the one ``coordctl status`` uses): client addresses are in the replicated
configuration, so any server can reach every other without knowing their
HTTP ports.  A member that does not answer within ``PROBE_TIMEOUT`` is shown
unreachable.  Results are cached for ``CACHE_SECONDS`` and concurrent
callers share one round of probes, so ten open dashboards cost the same as
one.

Members advertise their HTTP address in their status; ``fetch_json`` reads
a small JSON document from one (the sessions view asks each member which
sessions are connected to it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from coord.server.config import MemberAddrs, parse_addr
from coordclient.wire import FramedStream

log = logging.getLogger("coord.observe")

PROBE_TIMEOUT = 0.5
CACHE_SECONDS = 0.5
MAX_HTTP_BODY = 4 << 20


async def probe_status(addr: tuple[str, int], timeout: float = PROBE_TIMEOUT) -> dict | None:
    """One server's status over the client protocol, or None."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(*addr)
        except OSError:
            return None
        async with stream:
            fs = FramedStream(stream)
            try:
                await fs.send({"id": 1, "op": "status"})
                resp = await fs.receive()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel, ValueError):
                return None
            return resp.get("r") if isinstance(resp, dict) and resp.get("ok") else None
    return None


async def fetch_json(addr: tuple[str, int], path: str, timeout: float = PROBE_TIMEOUT) -> Any | None:
    """GET ``path`` from another member's HTTP port; the decoded JSON body of
    a 200 answer, or None (unreachable, slow, not 200, too big, not JSON)."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(*addr)
        except OSError:
            return None
        async with stream:
            try:
                host = f"{addr[0]}:{addr[1]}"
                await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                buf = bytearray()
                while len(buf) <= MAX_HTTP_BODY:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    buf += chunk
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return None
        if len(buf) > MAX_HTTP_BODY:
            return None
        head, sep, body = bytes(buf).partition(b"\r\n\r\n")
        if not sep or not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None
    return None


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
        """Every member's status (cached briefly; one probe round at a time)."""
        if trio.current_time() - self._at < CACHE_SECONDS and self._cached is not None:
            return self._cached
        if self._inflight is not None:
            await self._inflight.wait()
            assert self._cached is not None
            return self._cached
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
            a = addrs.get(mid)
            statuses[mid] = await probe_status(a) if a is not None else None

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
                if not st.get("leader"):
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

    async def remote_json(self, path: str) -> dict[int, Any]:
        """``path`` fetched from every other member that advertises an HTTP
        address (those that do not answer are left out)."""
        view = await self.view()
        out: dict[int, Any] = {}

        async def one(mid: int, http: str) -> None:
            try:
                addr = parse_addr(http, "http")
            except ValueError:
                return
            doc = await fetch_json(addr, path)
            if doc is not None:
                out[mid] = doc

        async with trio.open_nursery() as nursery:
            for row in view["members"]:
                if not row["self"] and row.get("http"):
                    nursery.start_soon(one, row["id"], row["http"])
        return out
