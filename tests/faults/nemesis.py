"""Fault kinds and seeded random schedules.

A fault is an async function ``fault(ctx) -> (description, heal)``: it
breaks something now and returns a callable that repairs it.  The schedule
alternates quiet spells and faults (sometimes two at once), chosen by a
``random.Random(seed)``, for a given duration; ``Nemesis.heal_all`` then
repairs everything, whatever is still broken.  Choices that depend on the
ensemble (who is leader) are made when the fault starts, so a seed fixes
the schedule's shape, not every detail.

Durations are chosen relative to the cluster's timing so that every fault
matters: pauses and partitions last longer than an election timeout, and
some longer than the clients' session timeouts.

``FAULTS`` is the registry (name -> (weight, function)); a fault returns
None when it cannot apply (e.g. no spare server left) and another is drawn.
``membership`` adds a spare server under load through the admin API
(learner, catch up, promote: a joint-consensus change) and its heal
removes it again; it combines with every other fault.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from coordclient.admin import AdminClient
from coordclient.errors import CoordError
from tests.faults.cluster import FaultCluster
from tests.faults.proxy import CLIENT

Heal = Callable[[], "Awaitable[None] | None"]
Fault = Callable[["Ctx"], Awaitable["tuple[str, Heal] | None"]]


@dataclass
class Ctx:
    cluster: FaultCluster
    rng: random.Random
    election_timeout: float  # seconds (the longest randomized one)
    session_timeout: float  # the longest client session timeout in use

    def hold(self) -> float:
        """How long a fault lasts: beyond an election timeout, sometimes a session timeout."""
        if self.rng.random() < 0.3:
            return self.rng.uniform(self.session_timeout, self.session_timeout * 1.5)
        return self.rng.uniform(self.election_timeout * 1.2, self.election_timeout * 4)

    async def victim(self, prefer_leader: float = 0.5) -> int:
        servers = [s for s in self.cluster.servers() if s in self.cluster.running()]
        if self.rng.random() < prefer_leader:
            leader = await self.cluster.leader_now()
            if leader is not None:
                return leader
        return self.rng.choice(servers or self.cluster.servers())


async def partition_halves(ctx: Ctx) -> tuple[str, Heal]:
    servers = ctx.cluster.servers()[:]
    ctx.rng.shuffle(servers)
    k = ctx.rng.randint(1, (len(servers) - 1) // 2)
    minority, majority = sorted(servers[:k]), sorted(servers[k:])
    ctx.cluster.partition(minority, majority)
    return f"partition {minority} | {majority}", ctx.cluster.heal_network


async def isolate_leader(ctx: Ctx) -> tuple[str, Heal]:
    sid = await ctx.victim(prefer_leader=1.0)
    ctx.cluster.isolate(sid)
    return f"isolate server {sid} (leader)", ctx.cluster.heal_network


async def bridge(ctx: Ctx) -> tuple[str, Heal]:
    servers = ctx.cluster.servers()[:]
    ctx.rng.shuffle(servers)
    mid = servers[len(servers) // 2]
    left, right = servers[:len(servers) // 2], servers[len(servers) // 2 + 1:]
    ctx.cluster.bridge(left, mid, right)
    return f"bridge {sorted(left)} - {mid} - {sorted(right)}", ctx.cluster.heal_network


async def one_way(ctx: Ctx) -> tuple[str, Heal]:
    """The leader can hear its followers but they cannot hear it (or the reverse)."""
    leader = await ctx.victim(prefer_leader=1.0)
    others = [s for s in ctx.cluster.servers() if s != leader]
    if ctx.rng.random() < 0.5:
        ctx.cluster.net.block([(leader, s) for s in others])
        return f"one-way: {leader} -> {others} cut", ctx.cluster.heal_network
    ctx.cluster.net.block([(s, leader) for s in others])
    return f"one-way: {others} -> {leader} cut", ctx.cluster.heal_network


async def slow_links(ctx: Ctx) -> tuple[str, Heal]:
    servers = ctx.cluster.servers()
    links = [(a, b) for a in servers for b in servers if a != b]
    links += [(CLIENT, s) for s in servers] + [(s, CLIENT) for s in servers]
    chosen = ctx.rng.sample(links, ctx.rng.randint(1, len(links)))
    seconds = ctx.rng.choice([0.02, 0.05, 0.1, 0.3])
    ctx.cluster.delay(chosen, seconds)
    return f"delay {int(seconds * 1000)} ms on {len(chosen)} links", ctx.cluster.heal_network


async def cut_clients(ctx: Ctx) -> tuple[str, Heal]:
    sid = await ctx.victim()
    mode = ctx.rng.choice(["both", "requests", "responses"])
    ctx.cluster.cut_clients(sid, requests=mode != "responses", responses=mode != "requests")
    return f"clients <-> server {sid} cut ({mode})", ctx.cluster.heal_network


async def kill(ctx: Ctx) -> tuple[str, Heal]:
    sid = await ctx.victim()
    ctx.cluster.crash(sid)
    return f"SIGKILL server {sid}", lambda: ctx.cluster.start_server(sid) if sid not in ctx.cluster.running() else None


async def restart(ctx: Ctx) -> tuple[str, Heal]:
    """Crash and come straight back on the same data (a crash-recovery loop)."""
    sid = await ctx.victim()
    ctx.cluster.crash(sid)
    ctx.cluster.start_server(sid)
    return f"SIGKILL + restart server {sid}", lambda: None


async def pause(ctx: Ctx) -> tuple[str, Heal]:
    sid = await ctx.victim()
    ctx.cluster.pause(sid)
    return f"SIGSTOP server {sid}", lambda: ctx.cluster.resume(sid) if sid in ctx.cluster.paused else None


async def membership(ctx: Ctx) -> tuple[str, Heal] | None:
    """Grow the ensemble by a spare server while the load runs (learner,
    catch up, promote); the heal removes it and stops it again.  Each
    spare id is used once.  A change refused because the ensemble is busy
    electing is retried a few times; an incomplete one is undone the same way."""
    cluster = ctx.cluster
    spares = [s for s in sorted(cluster.peer_ports) if s not in cluster.members and s not in cluster.procs]
    if not spares:
        return None
    sid = spares[0]
    cluster.start_joining(sid)
    cluster.members.add(sid)
    admin = AdminClient(cluster.direct_endpoints, timeout=5)

    async def attempt(**change) -> None:
        for k in range(3):
            try:
                await admin.change(timeout=5, **change)
                return
            except CoordError as e:
                if k == 2 or "retry" not in str(e):
                    raise
                await trio.sleep(0.5)

    try:
        await attempt(add_learners=[cluster.addrs(sid)])
        await admin.wait_caught_up([sid], timeout=8)
        await attempt(promote=[sid])
        outcome = "voter"
    except (CoordError, TimeoutError) as e:
        outcome = f"incomplete: {e!r}"[:120]

    async def heal() -> None:
        # Runs after the other heals (needs_leader): servers they resume or
        # restart may be needed to elect the leader that answers this.
        try:
            with trio.fail_after(20):
                while True:
                    try:
                        st = await admin.leader_status()
                        break
                    except CoordError:
                        await trio.sleep(0.5)
            if sid in {int(m) for m in st.get("members", {})}:
                await attempt(remove=[sid])
        except (CoordError, TimeoutError, trio.TooSlowError):
            return  # still a member as far as we know: it stays up, and the checks run with it
        cluster.members.discard(sid)
        cluster.crash(sid)

    heal.needs_leader = True  # type: ignore[attr-defined]
    return f"add server {sid} ({outcome})", heal


FAULTS: dict[str, tuple[int, Fault]] = {
    "membership": (2, membership),
    "partition": (3, partition_halves),
    "isolate-leader": (3, isolate_leader),
    "bridge": (1, bridge),
    "one-way": (2, one_way),
    "delay": (1, slow_links),
    "clients": (2, cut_clients),
    "kill": (3, kill),
    "restart": (1, restart),
    "pause": (3, pause),
}


@dataclass
class Nemesis:
    ctx: Ctx
    faults: dict[str, tuple[int, Fault]] = field(default_factory=lambda: dict(FAULTS))
    log: Callable[[str], None] = print
    active: list[Heal] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    async def run(self, duration: float) -> None:
        """Faults for ``duration`` seconds (then whatever is active stays
        until ``heal_all``)."""
        rng = self.ctx.rng
        names = sorted(self.faults)
        weights = [self.faults[n][0] for n in names]
        deadline = trio.current_time() + duration
        while trio.current_time() < deadline:
            await trio.sleep(min(rng.uniform(0.3, 1.5), max(0.0, deadline - trio.current_time())))
            if trio.current_time() >= deadline:
                break
            name = rng.choices(names, weights)[0]
            started = await self.faults[name][1](self.ctx)
            if started is None:
                continue
            what, heal = started
            self.counts[name] = self.counts.get(name, 0) + 1
            self.active.append(heal)
            self.log(f"start {what}")
            if rng.random() < 0.2:
                continue  # overlap this fault with the next one
            await trio.sleep(min(self.ctx.hold(), max(0.0, deadline - trio.current_time()) + 0.5))
            await self.heal_some()

    async def heal_some(self) -> None:
        """Undo the active faults, newest first; those that need a leader
        (membership changes) last, once the others are undone."""
        active, self.active = self.active, []
        ordered = [h for h in reversed(active) if not getattr(h, "needs_leader", False)]
        ordered += [h for h in reversed(active) if getattr(h, "needs_leader", False)]
        for heal in ordered:
            result = heal()
            if inspect.isawaitable(result):
                await result
        self.log("heal")

    async def heal_all(self) -> None:
        """Undo the active faults (membership ones included), then make sure
        the network is whole and every member runs."""
        await self.heal_some()
        self.ctx.cluster.heal_all()
        self.log("heal all (network, paused, stopped)")
