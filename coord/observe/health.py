"""/health (liveness) and /ready (readiness), as probes a load balancer or
Kubernetes can use.

Liveness asks only "is this process's event loop turning?": if the handler
runs at all the loop is, and the observer's tick must be recent (a loop
that was blocked for seconds has just recovered, and says so).  Restarting
a server for anything more would turn a slow disk into a restart loop.

Readiness asks "should clients be sent here?", and names each unmet
condition so an operator reading the probe output knows why not:

* ``leader``: this server knows a leader;
* ``member``: it is a voter, or a learner that has caught up;
* ``caught_up``: its applied index is within ``ready_max_lag`` entries of
  the commit index the leader told it;
* ``leader_contact``: the leader acknowledges its session keepalives (a
  server the leader cannot hear drops its clients, so it is not ready);
* ``linearizable_read``: a ReadIndex barrier completes within
  ``ready_read_timeout_ms``;
* ``disk``: its disk accepts writes (a server whose disk is full refuses
  writes with ``NoSpace`` until space is freed; see
  ``coord.server.diskspace``).

Probes arriving together share one read barrier, and a result is reused for
a short while, so a probe storm costs one heartbeat round, not one each.
"""

from __future__ import annotations

from typing import Any

import trio

from coord.observe.metrics import role_name
from coord.server.raftnode import ReadFailed

STALL_SECONDS = 5.0  # an observer tick older than this means the loop was blocked
READ_REUSE_SECONDS = 0.25  # a read-barrier result is reused for this long


class Health:
    def __init__(self, service: Any, observer: Any) -> None:
        self.s = service
        self.obs = observer
        self._read_at = -1e9
        self._read_ok = False
        self._read_detail = ""
        self._read_done: trio.Event | None = None  # set while a barrier is in flight

    def liveness(self) -> tuple[bool, dict]:
        now = trio.current_time()
        since = now - self.obs.last_tick if self.obs.last_tick else 0.0
        ok = since < STALL_SECONDS
        body = {"status": "ok" if ok else "stalled", "server_id": self.s.server_id,
                "seconds_since_tick": round(since, 3)}
        if not ok:
            body["missing"] = [f"the event loop did not tick for {since:.1f} s"]
        return ok, body

    async def _read_barrier(self) -> tuple[bool, str]:
        """One shared ReadIndex barrier under the readiness timeout."""
        if trio.current_time() - self._read_at < READ_REUSE_SECONDS:
            return self._read_ok, self._read_detail
        if self._read_done is not None:
            await self._read_done.wait()
            return self._read_ok, self._read_detail
        done = self._read_done = trio.Event()
        timeout = self.s.cfg.ready_read_timeout_ms / 1000
        ok, detail = False, ""
        try:
            with trio.move_on_after(timeout):
                try:
                    await self.s.node.read_index().wait()
                    ok = True
                except ReadFailed as e:
                    detail = f"the read was refused: {e}"
            if not ok and not detail:
                detail = f"no linearizable read could be confirmed within {timeout:g} s"
        finally:
            self._read_ok, self._read_detail, self._read_at = ok, detail, trio.current_time()
            self._read_done = None
            done.set()
        return ok, detail

    async def readiness(self) -> tuple[bool, dict]:
        s = self.s
        core = s.node.core
        m = core.membership
        applied, commit = s.node.applied_index, core.commit_index
        max_lag = s.cfg.ready_max_lag
        checks: dict[str, tuple[bool, str]] = {}
        leader = core.leader_id
        checks["leader"] = (bool(leader), f"leader is {leader}" if leader else "no leader is known")
        lag = max(0, commit - applied)
        caught_up = lag <= max_lag
        if s.server_id in m.all_voters():
            checks["member"] = (True, "voter")
        elif s.server_id in m.learners:
            checks["member"] = (caught_up, "learner, caught up" if caught_up else "learner, still catching up")
        else:
            checks["member"] = (False, "not a member of the configuration")
        checks["caught_up"] = (caught_up, f"applied {applied}, leader's commit {commit} "
                                          f"({lag} behind; at most {max_lag} allowed)")
        contact = s.reaches_leader()
        checks["leader_contact"] = (contact, "the leader hears this server" if contact
                                    else "the leader has not acknowledged this server's keepalives")
        if checks["leader"][0] and checks["member"][0]:
            checks["linearizable_read"] = await self._read_barrier()
            if checks["linearizable_read"][0]:
                checks["linearizable_read"] = (True, "a linearizable read was confirmed")
        else:
            checks["linearizable_read"] = (False, "not attempted without a leader and membership")
        space = s.node.diskspace
        checks["disk"] = (not space.full, space.describe())
        ready = all(ok for ok, _ in checks.values())
        body = {
            "ready": ready, "server_id": s.server_id, "role": role_name(s), "term": core.term,
            "leader": leader, "applied": applied, "commit": commit,
            "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in checks.items()},
            "missing": [k for k, (ok, _) in checks.items() if not ok],
        }
        return ready, body
