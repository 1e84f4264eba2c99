"""One seeded schedule end to end: ensemble, load, faults, heal, checks.

``run_schedule(seed, duration)`` returns a ``Verdict``; every process it
started is gone when it returns (the cluster is closed in ``finally``),
and every wait in it is bounded.  The phases:

1. a 3-server ``FaultCluster`` (plus a spare id for membership faults) and
   its proxies; the workload's sessions open through the client proxies;
2. load + nemesis for ``duration`` seconds;
3. heal everything, keep the load running a little (the ensemble must
   serve again), stop it;
4. final observations: an end marker write that every live watcher must
   see; the replayed history of changes (a fresh watch from the earliest
   watcher start, on each server until one can replay it); the created
   nodes; the ephemerals, with each owner session proven live by a sync
   before and after the read, or waited out when expired;
5. the checkers; a failed (or ``keep``) run saves its history as JSON.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

import trio

from coordclient import Client, ConnState
from coordclient.errors import CoordError
from tests.faults import checkers, linearizability
from tests.faults.cluster import FaultCluster
from tests.faults.history import History, RunRecord
from tests.faults.nemesis import FAULTS, Ctx, Nemesis
from tests.faults.workload import CREATES, EPH, LIN, LIVE, ROOT, Params, Workload

RECOVERY = 3.0  # seconds of load after the heal


@dataclass
class Verdict:
    seed: int
    ok: bool | None  # None: no verdict (a search ran out of budget, or the run could not finish)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    history_path: str | None = None
    seconds: float = 0.0
    timeline: list[str] = field(default_factory=list)

    def line(self) -> str:
        word = {True: "ok", False: "VIOLATION", None: "NO VERDICT"}[self.ok]
        s = self.stats
        head = (f"seed {self.seed}: {word} in {self.seconds:.1f}s -- {s.get('lin_ops', 0)} lin ops "
                f"({s.get('unknown', 0)} unknown), {s.get('creates', 0)} creates, {s.get('holds', 0)} lock holds, "
                f"{s.get('events', 0)} watch events; faults {s.get('faults', {})}")
        if self.history_path:
            head += f"\n    history: {self.history_path}"
        if self.ok is not True and self.timeline:
            head += "\n    timeline: " + "; ".join(t.strip() for t in self.timeline)
        for v in self.violations:
            head += "\n" + "\n".join("    " + line for line in v.splitlines())
        for n in self.notes:
            head += f"\n    note: {n}"
        return head


def judge(rec: RunRecord, budget: int = linearizability.DEFAULT_BUDGET) -> tuple[list[str], list[str], bool]:
    """Run every checker on a record; (violations, notes, complete)."""
    ops = History.from_list(rec.lin).ops
    violations, notes, complete = [], [], True
    for r in linearizability.check(ops, budget=budget):
        if r.ok is False:
            violations.append("[linearizability] " + r.report(rec.t0))
        elif r.ok is None:
            notes.append(r.report(rec.t0))
            complete = False
    found = checkers.check_session_order(ops)
    if rec.creates.get("final") is not None:
        found += checkers.check_creates(rec.creates["acked"], rec.creates["unknown"], rec.creates["final"])
    else:
        notes.append("creates not checked: the final read failed")
    if rec.ephemerals.get("final") is not None:
        found += checkers.check_ephemerals(rec.ephemerals["sessions"], {p: int(o) for p, o in
                                                                         rec.ephemerals["final"].items()})
    else:
        notes.append("ephemerals not checked: the final read failed")
    found += checkers.check_locks(rec.locks["holds"], rec.locks["writes"], rec.locks["end"], rec.t0)
    w = rec.watches
    found += checkers.check_watches(w["watchers"], w.get("reference"), w.get("reference_from"), w["acked"])
    if w.get("reference") is None:
        notes.append("no server could replay the history of changes: watches checked against acknowledged writes")
    violations += [str(v) for v in found]
    return violations, notes, complete


async def run_schedule(seed: int, duration: float = 20.0, *, params: Params | None = None, n: int = 3,
                       spare: int = 1, save_dir: str | None = None, keep: bool = False, log=None,
                       faults: dict | None = None, budget: int = linearizability.DEFAULT_BUDGET) -> Verdict:
    started = time.monotonic()
    params = params or Params()
    rng = random.Random(seed)
    base = tempfile.mkdtemp(prefix=f"coord-faults-{seed}-")
    rec = RunRecord(seed=seed)
    say = log or (lambda msg: None)

    def timeline(msg: str) -> None:
        rec.timeline.append(f"{trio.current_time() - rec.t0:7.2f} {msg}")
        say(f"[seed {seed}] {rec.timeline[-1]}")

    cluster = FaultCluster(n, base, spare=spare, snapshot_entries=2000, min_session_timeout_ms=500)
    verdict = Verdict(seed, None)
    liveness: list[str] = []  # the ensemble did not recover after the heal
    try:
        async with trio.open_nursery() as outer:
            await outer.start(cluster.run_proxies)
            cluster.start()
            await cluster.wait_leader(timeout=30)
            rec.t0 = trio.current_time()
            wl = Workload(cluster.endpoints, seed, params)
            with trio.fail_after(30):
                await wl.setup()
            ctx = Ctx(cluster, rng, election_timeout=2 * cluster.election_ticks * cluster.tick_ms / 1000,
                      session_timeout=params.longest_session())
            nemesis = Nemesis(ctx, faults=dict(FAULTS if faults is None else faults), log=timeline)
            async with trio.open_nursery() as load:
                wl.start(load)
                timeline("load started")
                await nemesis.run(duration)
                await nemesis.heal_all()
                try:
                    await cluster.wait_leader(timeout=30, among=tuple(cluster.members))
                except trio.TooSlowError:
                    liveness.append("[liveness] no leader that every server agrees on within 30 s of the heal: "
                                    f"{await cluster.statuses()}")
                timeline(f"leader {await cluster.leader_now()}; load continues {RECOVERY}s")
                await trio.sleep(RECOVERY)
                wl.stop()
                timeline("load stopped")
                with trio.move_on_after(60) as finals:
                    await final_observations(cluster, wl, rec)
                if finals.cancelled_caught:
                    liveness.append("[liveness] the final reads did not complete within 60 s of the heal")
                wl.release()
                load.cancel_scope.deadline = trio.current_time() + 10  # sessions close, bounded
            outer.cancel_scope.cancel()
        wl.history.finish()
        rec.lin = wl.history.to_list()
        rec.creates.update(acked=wl.creates["acked"], unknown=wl.creates["unknown"])
        rec.ephemerals["sessions"] = wl.sessions
        rec.locks = {"holds": wl.holds, "writes": wl.guarded, "end": trio.current_time()}
        rec.watches.update(watchers=wl.watchers, acked=wl.acked_changes())
        violations, notes, complete = judge(rec, budget)
        verdict.violations, verdict.notes = liveness + violations, verdict.notes + notes
        verdict.timeline = rec.timeline
        verdict.ok = False if verdict.violations else (True if complete else None)
        ops = wl.history.ops
        verdict.stats = {
            "lin_ops": len(ops), "unknown": sum(op.status == "unknown" for op in ops),
            "creates": len(wl.creates["acked"]), "holds": len(wl.holds),
            "events": sum(len(w["events"]) for w in wl.watchers), "faults": nemesis.counts,
        }
    except Exception as e:  # the harness itself failed: no verdict, but keep the evidence
        verdict.ok = None
        verdict.notes.append(f"run failed: {e!r}")
    finally:
        cluster.close()
    if verdict.ok is not True or keep:
        rec.final["verdict"] = asdict(verdict)
        verdict.history_path = rec.save(save_dir)
        for sid in sorted(cluster.procs):
            shutil.copy(cluster.log_path(sid), verdict.history_path.replace(".json", f".server{sid}.log"))
    shutil.rmtree(base, ignore_errors=True)
    verdict.seconds = time.monotonic() - started
    return verdict


async def final_observations(cluster: FaultCluster, wl: Workload, rec: RunRecord) -> None:
    """What the checkers compare against: read once everything has healed."""
    async with Client(cluster.endpoints, session_timeout=10) as c:
        # 1. the end marker: every live watcher must see it
        marker = f"{LIN}/end"
        await c.create(marker, b"")
        end = (await c.exists(marker)).czxid
        with trio.move_on_after(15):
            while any(w["end"] < end for w in wl.live_watchers.values()):
                await trio.sleep(0.05)
        for w in wl.live_watchers.values():
            w["end"] = end  # a live watcher is accountable for everything up to the marker
        # 2. the history of changes, replayed by a server
        # (the whole /faults subtree is kept for diagnosis: lock and ephemeral deletions show there)
        ref_from = min([w["start"] for w in wl.watchers], default=0)
        for sid in sorted(cluster.members):
            changes = await replay(f"127.0.0.1:{cluster.client_ports[sid]}", ROOT, ref_from, end)
            if changes is not None:
                ref = [e for e in changes if e[2] == LIN or e[2].startswith(LIN + "/")]
                rec.watches.update(reference=ref, reference_from=ref_from, reference_server=sid)
                rec.final["changes"] = changes
                break
        # 3. creates
        rec.creates["final"] = list(await c.children(CREATES, linearizable=True))
        # 4. ephemerals: owners proven live around the read, expired ones waited out
        live = []
        for s in wl.sessions:
            client = wl.eph_clients.get(s["sid"])
            if s["state"] == "unknown" and client is not None:
                if await _synced(client):
                    live.append((s, client))
                elif client.state is ConnState.EXPIRED:
                    s["state"] = "expired"
        deadline = trio.current_time() + wl.params.ephemeral_session_timeout + 10
        while True:
            final = {name: st.ephemeral_owner for name, st in await c.children(EPH, stats=True, linearizable=True)}
            ended = {s["sid"] for s in wl.sessions if s["state"] == "expired"}
            if not ended & set(final.values()) or trio.current_time() > deadline:
                break
            await trio.sleep(0.2)
        for s, client in live:
            if await _synced(client):
                s["state"] = "live"
        rec.ephemerals["final"] = {f"{EPH}/{name}": owner for name, owner in final.items()}


async def _synced(client: Client) -> bool:
    """The session is alive right now (a sync went through the leader)."""
    if client.state not in LIVE:
        try:
            await client.wait_state(*LIVE, ConnState.EXPIRED, ConnState.CLOSED, timeout=5)
        except trio.TooSlowError:
            return False
    with trio.move_on_after(5):
        try:
            await client.sync()
            return True
        except CoordError:
            return False
    return False


async def replay(endpoint: str, path: str, start: int, end: int) -> list | None:
    """Every change under ``path`` after ``start`` up to ``end`` as one server
    replays it to a new watch; None if it cannot (resync) or in time."""
    out: list = []
    with trio.move_on_after(10):
        try:
            async with Client(endpoint, session_timeout=5) as c:
                async with c.watch(path, recursive=True, start_zxid=start, buffer=1_000_000) as events:
                    async for ev in events:
                        if ev.type == "resync":
                            return None
                        out.append([ev.zxid, ev.type, ev.path])
                        if ev.zxid >= end:
                            return out
        except CoordError:
            return None
    return None


def recheck(path: str, budget: int = linearizability.DEFAULT_BUDGET) -> Verdict:
    """Run the checkers again on a saved history."""
    rec = RunRecord.load(path)
    violations, notes, complete = judge(rec, budget)
    v = Verdict(rec.seed, False if violations else (True if complete else None), violations, notes,
                history_path=path)  # re-checked: the stats below come from the record
    v.stats = {"lin_ops": len(rec.lin), "unknown": sum(o["status"] == "unknown" for o in rec.lin),
               "creates": len(rec.creates.get("acked", [])), "holds": len(rec.locks.get("holds", [])),
               "events": sum(len(w["events"]) for w in rec.watches.get("watchers", [])),
               "faults": rec.final.get("verdict", {}).get("stats", {}).get("faults", {})}
    return v


__all__ = ["Verdict", "judge", "recheck", "replay", "run_schedule"]
