"""The production driver in the simulation: real ``RaftNode``s, simulated world.

``Simulation`` (simulation.py) drives ``RaftCore`` directly; this one runs
N real ``coord.server.raftnode.RaftNode`` instances -- their Trio loops,
inboxes, group commit through ``DiskWriter.write_batch``, snapshots (on the
loop, or by a "child"), stepped snapshot installs, futures -- in one Trio
run on a ``MockClock``.  What the driver normally gets from the operating
system comes from the simulator, through the driver's own seams:

* time: ``ticker=`` (the simulator calls ``tick()`` at each node's own,
  drifting, tick period) and the MockClock, jumped with simulated time;
* network: ``send=`` puts messages in an outbox; the simulated network
  (network.py: loss, duplication, delay and so reordering, partitions)
  delivers them with ``deliver()``;
* disk: ``disk=`` builds a ``simdisk.SimDisk`` instead of the disk thread:
  runs are picked up and completed when the simulator says, and a crash
  keeps only what was fsync'd (or a torn prefix of the rest);
* snapshot children: ``snapshotter=`` returns a ``simdisk.SimChild``.

The workload uses the driver's public API only: ``propose`` (and
``propose_nowait``) with redirects, ``read_index``, ``propose_membership``,
``transfer_leadership``, ``peer_unreachable``.  Faults: crashes (single or
total) that restart the server from its simulated disk, partitions, loss
bursts, disk damage in the ``lossy`` profile.

Determinism: one ``random.Random(seed)``; after each event the simulator
waits until every Trio task is blocked, then collects what the nodes did
(messages, disk work, soft states, snapshot children) in node order and
draws all randomness itself, so the order in which Trio happened to run
the node tasks cannot change the run.  ``python -m tests.sim --driver
--seed N -v`` replays a seed.

Checks after every event: the ``SafetyChecker`` invariants (election
safety, log matching, leader completeness, state machine safety through a
hash chain applied by the state machine itself, durability at restart,
linearizable reads: a ``read_index`` future must not resolve below what was
committed when it was issued), plus the driver's promises (a proposal's
future carries the result of applying *that* entry; a read resolves only
once applied; the driver never crashes).  At the end, liveness: faults stop,
everything restarts, a fresh proposal must commit and every member must
apply the same prefix within a bounded simulated time.
"""

from __future__ import annotations

import collections
import heapq
import random
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import trio
import trio.testing

from coord.raft.core import decode_membership
from coord.raft.types import (
    ConfChangeError,
    Entry,
    EntryKind,
    Membership,
    Message,
    ProposalDropped,
    Ready,
    Role,
    SoftState,
)
from coord.server.diskwriter import AdoptSnapshot, DiskWork, SaveSnapshot
from coord.server.future import Future
from coord.server.raftnode import NodeOptions, RaftNode, ReadFailed

from .checkers import GENESIS, InvariantViolation, LogView, SafetyChecker
from .network import Network, copy_message
from .params import PROFILES, SimParams
from .simdisk import SimChild, SimDisk, SimStore
from .simulation import fmt_members, fmt_msg, fmt_ready
from .statemachine import HashChainSM, decode_snapshot

FAULT, LIVENESS, DONE = "fault", "liveness", "done"
LIVE_CHECK_US = 20_000

DRIVER_PROFILES = ("default", "churn", "crashy", "lossy", "calm")


@dataclass
class DriverKnobs:
    """What the driver simulation adds to ``SimParams`` (drawn from the seed too)."""

    snapshot_entries: int = 50
    snapshot_retain: int = 0
    snapshot_retain_bytes: int = 4 << 20
    child_prob: float = 0.5  # a node incarnation snapshots in a "child" (else on its loop)
    child_us: tuple[int, int] = (1_000, 50_000)
    child_fail_prob: float = 0.05
    fork_fail_prob: float = 0.02  # fork() fails: the driver falls back to the loop
    child_lands_on_crash: float = 0.3  # a crash finds the child's file already renamed into place
    stepped_prob: float = 0.5  # a node's state machine restores installed snapshots in steps
    max_batch: int = 4096
    nowait_prob: float = 0.1
    pickup_us: tuple[int, int] = (5, 200)  # the disk thread waking up
    commit_only_us: tuple[int, int] = (5, 100)  # a run without an fsync


def draw_knobs(rng: random.Random) -> DriverKnobs:
    return DriverKnobs(
        snapshot_entries=rng.choice((5, 20, 50, 200)),
        snapshot_retain=rng.choice((0, 0, 2, 20)),
        snapshot_retain_bytes=rng.choice((0, 200, 4 << 20)),
        child_prob=rng.choice((0.0, 0.5, 1.0)),
        child_us=rng.choice(((500, 5_000), (1_000, 50_000), (10_000, 300_000))),
        stepped_prob=rng.choice((0.0, 0.5, 1.0)),
        max_batch=rng.choice((1, 3, 4096)),
        nowait_prob=rng.choice((0.0, 0.1, 0.3)),
    )


class DriverSM:
    """The simulated application under a real driver: the hash chain of
    statemachine.py, reporting every apply and restore to the checker."""

    def __init__(self, sim: "DriverSimulation", nid: int, rng: random.Random, membership: Membership | None):
        self.sim = sim
        self.nid = nid
        self.rng = rng
        self.chain = HashChainSM(membership)
        sim.checker.on_restore(nid, 0, GENESIS)

    def apply(self, e: Entry) -> Any:
        self.sim.guard(self.sim.checker.on_apply, self.nid, e)
        self.chain.apply(e)
        self.sim.stats["applied"] += 1
        return (e.index, e.data)

    def snapshot(self) -> bytes:
        return self.chain.snapshot_data(self.rng.randbytes(self.rng.randint(0, self.sim.p.snapshot_pad)))

    def restore(self, data: bytes | memoryview) -> None:
        index, h = decode_snapshot(bytes(data))  # ValueError: the driver crashes, and the run reports it
        self.chain.applied, self.chain.hash = index, h
        self.sim.guard(self.sim.checker.on_restore, self.nid, index, h)


class SteppedSM(DriverSM):
    """Also restores in steps (``raftnode.SteppedRestore``)."""

    def restore_steps(self, data: bytes | memoryview):
        for _ in range(self.rng.randint(1, 4)):
            yield
        self.restore(data)


class DNode:
    """One server: its durable store survives crashes; the rest is one incarnation."""

    def __init__(self, nid: int, initial: bool, tick_us: int):
        self.id = nid
        self.initial = initial
        self.tick_us = tick_us
        self.store = SimStore()
        self.raft: RaftNode | None = None
        self.disk: SimDisk | None = None
        self.scope: trio.CancelScope | None = None
        self.inc = 0
        self.view = LogView()
        self.outbox: list[Message] = []
        self.batches: list[list[DiskWork]] = []
        self.softs: list[SoftState] = []
        self.kicked = False
        self.new_children: list[SimChild] = []
        self.children: list[SimChild] = []
        self.seen_commit = 0
        self.seen_term = 0
        self.seen_role = Role.FOLLOWER

    @property
    def up(self) -> bool:
        return self.raft is not None


async def _sim_ticker(node: RaftNode) -> None:
    """The simulator ticks the node (``RaftNode.tick``): no timer of its own."""
    await trio.sleep_forever()


class DriverSimulation:
    def __init__(self, seed: int, profile: str = "default", *, fault_seconds: float | None = None,
                 steps: int | None = None, trace_len: int = 200, params: SimParams | None = None,
                 knobs: DriverKnobs | None = None, bug: str | None = None):
        self.seed = seed
        self.profile = profile
        self.rng = random.Random(seed)
        p = params if params is not None else PROFILES[profile](self.rng)
        if fault_seconds is not None:
            p = p.replace(fault_us=int(fault_seconds * 1_000_000))
        self.p = p
        self.k = knobs if knobs is not None else draw_knobs(self.rng)
        self.bug = bug
        self.steps = steps
        self.net = Network(
            random.Random(self.rng.getrandbits(64)), delay_us=p.delay_us,
            long_delay_prob=p.long_delay_prob, long_delay_us=p.long_delay_us,
            drop_prob=p.drop_prob, dup_prob=p.dup_prob,
        )
        self.checker = SafetyChecker(unique_data=True)
        self.nodes: dict[int, DNode] = {}
        self.bootstrap = Membership(voters=frozenset(range(1, p.n_initial + 1)))
        self.next_id = p.n_initial + 1
        self._heap: list[tuple[int, int, Callable, tuple]] = []
        self._seq = 0
        self.now = 0
        self.events = 0
        self.phase = FAULT
        self.trace: collections.deque = collections.deque(maxlen=max(1, trace_len))
        self.stats: collections.Counter = collections.Counter()
        self._counter = 0
        self.violations: list[InvariantViolation] = []
        self.errors: list[tuple[int, int, BaseException, str]] = []
        self.burst_until = 0
        self.live_deadline = 0
        self.live_at = 0
        self.live_proposed_at: tuple[int, int] | None = None
        self.live_committed = False
        self.clock = trio.testing.MockClock(rate=0)
        self.nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------
    # event loop
    # ------------------------------------------------------------------
    def _at(self, t: int, fn: Callable, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, args))

    def note(self, text: str) -> None:
        self.trace.append((self.now, None, text))

    def guard(self, fn: Callable, *args: Any) -> None:
        """Run a check from inside a node's task: a violation is kept, not
        raised there (the driver would take it for the state machine's
        answer to the proposer), and raised by the event loop."""
        try:
            fn(*args)
        except InvariantViolation as e:
            self.violations.append(e)

    def run(self) -> dict:
        """Run to the end; raises InvariantViolation.  Returns statistics."""
        return trio.run(self._run, clock=self.clock)

    async def _run(self) -> dict:
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                await self._main()
            except Exception as e:  # noqa: BLE001 - raised below, outside the nursery (no ExceptionGroup)
                error = e
            nursery.cancel_scope.cancel()  # the nodes' loops
        self.nursery = None
        if error is not None:
            raise error
        return self.summary()

    async def _main(self) -> None:
        p = self.p
        for nid in range(1, p.n_initial + 1):
            self._spawn(nid, initial=True)
        for fn, rate in (
            (self._op_propose, p.propose_rate), (self._op_read, p.read_rate),
            (self._op_membership, p.member_rate), (self._op_transfer, p.transfer_rate),
            (self._op_crash, p.crash_rate), (self._op_partition, p.partition_rate),
            (self._op_burst, p.burst_rate),
        ):
            if rate > 0:
                self._at(self._exp(rate), self._process, fn, rate)
        if self.steps is None:
            self._at(p.fault_us, self._end_fault_phase)
        await self._settle()
        heap = self._heap
        trace = self.trace
        tick = self._tick
        while heap and self.phase is not DONE:
            t, _, fn, args = heapq.heappop(heap)
            if t > self.now:
                self.clock.jump((t - self.now) / 1e6)
                self.now = t
            self.events += 1
            if fn != tick:
                trace.append((t, fn, args))
            fn(*args)
            await self._settle()
            if self.steps is not None and self.phase is FAULT and self.events >= self.steps:
                self._end_fault_phase()
                await self._settle()
        if self.phase is not DONE:
            raise InvariantViolation("liveness", "the simulation ran out of events")

    async def _settle(self) -> None:
        """Let every node's loop run until all are blocked, then collect
        what they did, in node order, and check."""
        await trio.testing.wait_all_tasks_blocked()
        if self.errors:
            nid, inc, exc, tb = self.errors[0]
            raise InvariantViolation("driver-crash", f"node {nid} (life {inc}): {type(exc).__name__}: {exc}\n{tb}")
        for nid in sorted(self.nodes):
            node = self.nodes[nid]
            if node.raft is not None:
                self._collect(node)
        if self.violations:
            raise self.violations[0]

    def summary(self) -> dict:
        s = dict(self.stats)
        s.update(events=self.events, sim_ms=self.now // 1000, nodes=len(self.nodes),
                 max_term=max((t for t in self.checker.leaders), default=0),
                 committed=self.checker.max_commit)
        return s

    def _exp(self, rate: float) -> int:
        return self.now + max(1, int(self.rng.expovariate(rate) * 1_000_000))

    def _process(self, fn: Callable, rate: float) -> None:
        if self.phase is not FAULT:
            return
        fn()
        self._at(self._exp(rate), self._process, fn, rate)

    # ------------------------------------------------------------------
    # node lifecycle
    # ------------------------------------------------------------------
    def _spawn(self, nid: int, *, initial: bool) -> DNode:
        drift = 1.0 + self.rng.uniform(-self.p.tick_drift, self.p.tick_drift)
        node = DNode(nid, initial, max(1, int(self.p.tick_us * drift)))
        self.nodes[nid] = node
        self._start(node)
        return node

    def _start(self, node: DNode) -> None:
        """(Re)start ``node`` from its simulated disk, as coord.server.serve does from DiskStorage."""
        nid = node.id
        hs, snap, entries, refuse = node.store.recover()
        if refuse is not None:
            raise InvariantViolation("durability", f"node {nid} cannot restart: {refuse}")
        si, st = (snap.meta.index, snap.meta.term) if snap is not None else (0, 0)
        self.checker.on_restart(nid, hs, si, st, entries)
        node.inc += 1
        inc = node.inc
        rng = random.Random(self.rng.getrandbits(64))
        sm_cls = SteppedSM if rng.random() < self.k.stepped_prob else DriverSM
        sm = sm_cls(self, nid, random.Random(rng.getrandbits(64)), self.bootstrap if node.initial else None)
        node.view = LogView(si, st, entries)
        node.outbox, node.batches, node.softs = [], [], []
        node.kicked = False
        node.new_children, node.children = [], []
        node.seen_commit = 0
        node.seen_term = 0
        node.seen_role = Role.FOLLOWER
        k = self.k
        opts = NodeOptions(snapshot_entries=k.snapshot_entries, snapshot_retain=k.snapshot_retain,
                           snapshot_retain_bytes=k.snapshot_retain_bytes,
                           snapshot_in_child=rng.random() < k.child_prob, max_batch=k.max_batch)
        child_rng = random.Random(rng.getrandbits(64))
        pids = iter(range(1, 1 << 30))

        def make_disk(store, durable, stats):
            node.disk = SimDisk(store, durable, stats, kick=lambda d: self._kick(node, d), bug=self.bug,
                                on_batch=node.batches.append)
            return node.disk

        def fork(serialize, write, *, nice=0):
            if child_rng.random() < k.fork_fail_prob:
                raise OSError(11, "simulated: cannot fork")
            child = SimChild(nid * 1_000_000 + inc * 1_000 + next(pids), serialize(), write, trio.Event())
            node.new_children.append(child)
            return child

        self.note(f"n{nid} start (life {inc}): term {hs.term} vote {hs.vote} commit {hs.commit} snapshot {si} "
                  f"log ..{entries[-1].index if entries else si}" + (" RECOVERING" if hs.recovering else "")
                  + f", {'child' if opts.snapshot_in_child else 'loop'} snapshots, {sm_cls.__name__}")
        try:
            raft = RaftNode(
                nid, store=node.store, recovered_hard_state=hs, recovered_snapshot=snap,
                recovered_entries=list(entries), bootstrap=self.bootstrap if node.initial else None,
                state_machine=sm, send=node.outbox.append, raft_config=self.p.raft, options=opts,
                seed=rng.getrandbits(64), on_soft_state=node.softs.append, ticker=_sim_ticker,
                disk=make_disk, snapshotter=fork,
            )
        except Exception as e:
            raise InvariantViolation("driver-crash", f"node {nid} cannot start: {type(e).__name__}: {e}\n"
                                     f"{traceback.format_exc()}") from None
        node.raft = raft
        node.scope = trio.CancelScope()
        self.nursery.start_soon(self._run_node, node, raft, node.scope, inc)
        self._at(self.now + self.rng.randint(1, node.tick_us), self._tick, nid, inc)

    async def _run_node(self, node: DNode, raft: RaftNode, scope: trio.CancelScope, inc: int) -> None:
        with scope:
            try:
                await raft.run()
            except Exception as e:  # noqa: BLE001 - reported by the event loop
                self.errors.append((node.id, inc, e, traceback.format_exc()))

    def _crash(self, node: DNode) -> None:
        """Power loss: the loop dies, unsynced writes go (or a torn prefix stays),
        snapshot children die (one may have finished its file)."""
        if node.raft is None:
            return
        kept = node.disk.crash(self.rng, self.p.torn_write_prob)
        landed = 0
        for c in node.children:
            if not c.finished and not c.killed and self.rng.random() < self.k.child_lands_on_crash:
                c.write(c.data)
                landed += 1
            c.kill()
        self.note(f"n{node.id} CRASH ({kept} unsynced writes kept, {landed} snapshot files landed)")
        node.scope.cancel()
        node.raft = None
        node.disk = None
        node.inc += 1
        self.checker.on_crash(node.id)
        self.stats["crashes"] += 1
        for other in self.nodes.values():
            if other.raft is not None and self.rng.random() < self.p.unreachable_hint_prob:
                self._at(self.now + self.rng.randint(*self.p.delay_us), self._hint_unreachable,
                         other.id, other.inc, node.id)

    def _restart(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.raft is None:
            if self.p.log_loss_prob and self.rng.random() < self.p.log_loss_prob and self._may_lose_log(node):
                self._lose_log(node)
            self._start(node)
            self.stats["restarts"] += 1

    def _may_lose_log(self, node: DNode) -> bool:
        st = node.store
        if st.log.last_index <= max(st.files, default=0):
            return False
        if any(o.store.term_vote.recovering or (o.raft is not None and o.raft.core.recovering)
               for o in self.nodes.values() if o is not node):
            return False
        for m in self._known_configs():
            for voters in (m.voters, m.outgoing):
                if node.id in voters and len(voters) < 3:
                    return False
        return True

    def _known_configs(self) -> list[Membership]:
        out = [self.bootstrap]
        for o in self.nodes.values():
            if o.raft is not None:
                out.append(o.raft.core.membership)
            out.extend(s.meta.membership for s in o.store.files.values())
            out.extend(decode_membership(e.data) for e in o.store.log.entries if e.kind == EntryKind.CONFIG)
        return out

    def _lose_log(self, node: DNode) -> None:
        st = node.store
        lo = max(max(st.files, default=0), st.log.base_index)
        keep = self.rng.randint(lo, st.log.last_index - 1)
        self.note(f"n{node.id} DISK LOST log after {keep} (was ..{st.log.last_index}), restarted with the "
                  f"recovery flag")
        st.lose_log_after(keep, recovering=True)
        self.stats["log_losses"] += 1

    # ------------------------------------------------------------------
    # the node's world: ticks, network, disk, children
    # ------------------------------------------------------------------
    def _current(self, nid: int, inc: int) -> DNode | None:
        node = self.nodes.get(nid)
        if node is None or node.inc != inc or node.raft is None:
            return None
        return node

    def _tick(self, nid: int, inc: int) -> None:
        node = self._current(nid, inc)
        if node is None:
            return
        node.raft.tick()
        if self.rng.random() < self.p.spurious_hint_per_tick:
            node.raft.peer_unreachable(self.rng.choice(sorted(self.nodes)))
        self._at(self.now + node.tick_us, self._tick, nid, inc)

    def _hint_unreachable(self, nid: int, inc: int, gone: int) -> None:
        node = self._current(nid, inc)
        if node is not None:
            node.raft.peer_unreachable(gone)

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.raft is None or self.net.blocked(m.frm, m.to):
            return
        node.raft.deliver(m)

    def _kick(self, node: DNode, disk: SimDisk) -> None:
        if disk is node.disk:
            node.kicked = True

    def _pick_up(self, nid: int, inc: int) -> None:
        node = self._current(nid, inc)
        if node is None:
            return
        fsyncs = node.disk.pick_up()
        if fsyncs is None:
            return
        lat = sum(self.rng.randint(*self.p.disk_us) for _ in range(fsyncs)) if fsyncs else \
            self.rng.randint(*self.k.commit_only_us)
        self._at(self.now + lat, self._disk_done, nid, inc)

    def _disk_done(self, nid: int, inc: int) -> None:
        node = self._current(nid, inc)
        if node is not None:
            node.disk.complete()

    def _child_exit(self, nid: int, inc: int, child: SimChild) -> None:
        node = self._current(nid, inc)
        if node is None or child.killed:
            return
        if self.rng.random() < self.k.child_fail_prob:
            child.exit(fail="simulated: the snapshot child failed")
            self.stats["snapshot_children_failed"] += 1
        else:
            child.exit()
            self.stats["snapshot_children"] += 1

    def _collect(self, node: DNode) -> None:
        """What the node did during the last event, in its own order."""
        nid = node.id
        # (Emptied in place: the driver holds their append methods.)
        if node.batches:
            batches = node.batches[:]
            node.batches.clear()
            for batch in batches:
                for work in batch:
                    self._watch_disk_work(node, work)
        if node.softs:
            softs = node.softs[:]
            node.softs.clear()
            for s in softs:
                self.note(f"n{nid} {Role(s.role).name} term {s.term} leader {s.leader}")
                if s.role is Role.LEADER:
                    self.checker.on_leader(nid, s.term, node.view, node.inc)
                    self.stats["elections"] += 1
        if node.outbox:
            out = node.outbox[:]
            node.outbox.clear()
            for m in out:
                if m.frm != nid:
                    raise InvariantViolation("driver-contract", f"node {nid} sent a message from {m.frm}: "
                                             f"{fmt_msg(m)}")
                for d in self.net.plan(m):
                    self._at(self.now + d, self._deliver, copy_message(m))
        if node.kicked:
            node.kicked = False
            self._at(self.now + self.rng.randint(*self.k.pickup_us), self._pick_up, nid, node.inc)
        if node.new_children:
            kids = node.new_children[:]
            node.new_children.clear()
            for c in kids:
                node.children.append(c)
                self._at(self.now + self.rng.randint(*self.k.child_us), self._child_exit, nid, node.inc, c)
        self._observe(node)

    def _watch_disk_work(self, node: DNode, work: DiskWork) -> None:
        """Every Ready with entries or a snapshot goes through the disk
        pipeline: the node's log as handed out, for the checkers."""
        if type(work) is SaveSnapshot:
            self.note(f"n{node.id} disk: own snapshot at {work.snapshot.meta.index}, compact to {work.compact_to}")
            self.stats["snapshots_on_loop"] += 1
            return
        if type(work) is AdoptSnapshot:
            self.note(f"n{node.id} disk: adopt the child's snapshot at {work.meta.index}")
            return
        rd: Ready = work
        self.trace.append((self.now, "ready", (node.id, rd)))
        view = node.view
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            view.install_snapshot(meta.index, meta.term)
            self.stats["snapshots_installed"] += 1
        if rd.entries:
            ents = rd.entries
            first = ents[0].index
            if first > view.last_index + 1:
                raise InvariantViolation(
                    "log-matching", f"node {node.id}: Ready entries start at {first}, log ends at {view.last_index}")
            for e in ents:
                if e.index > node.seen_commit:
                    break
                t = view.term_at(e.index)
                if t is not None and t != e.term:
                    raise InvariantViolation(
                        "state-machine-safety",
                        f"node {node.id} overwrites committed entry {e.index} (term {t}) with term {e.term}")
            self.checker.on_entries(node.id, ents, view.term_at(first - 1))
            view.append(ents)

    def _observe(self, node: DNode) -> None:
        core = node.raft.core
        nid = node.id
        term = core.term
        if term < node.seen_term:
            raise InvariantViolation("term", f"node {nid}: term went back from {node.seen_term} to {term}")
        node.seen_term = term
        c = core.commit_index
        if c != node.seen_commit:
            if c < node.seen_commit:
                raise InvariantViolation("commit", f"node {nid}: commit index went back from {node.seen_commit} "
                                         f"to {c}")
            view = node.view
            if c > view.last_index:
                raise InvariantViolation(
                    "commit", f"node {nid}: commit index {c} is beyond its log (last index {view.last_index})")
            for i in range(max(node.seen_commit + 1, view.base_index, 1), c + 1):
                self.checker.on_commit(nid, i, view.term_at(i), term)
            node.seen_commit = c
        if core.last_index > node.view.last_index:
            raise InvariantViolation(
                "driver-contract", f"node {nid}: the core's log ends at {core.last_index} but the driver only "
                f"handed entries up to {node.view.last_index} to its disk")
        if node.raft.applied_index > c:
            raise InvariantViolation("driver-contract", f"node {nid} applied {node.raft.applied_index} beyond its "
                                     f"commit index {c}")

    # ------------------------------------------------------------------
    # workload (the driver's public API)
    # ------------------------------------------------------------------
    def _up(self) -> list[DNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def _leader(self) -> DNode | None:
        best = None
        for n in self.nodes.values():
            if n.raft is not None and n.raft.core.role is Role.LEADER:
                if best is None or n.raft.core.term > best.raft.core.term:
                    best = n
        return best

    def _data(self, prefix: bytes) -> bytes:
        self._counter += 1
        return b"%s%d:" % (prefix, self._counter) + self.rng.randbytes(self.rng.randint(0, 40))

    def _op_propose(self) -> None:
        up = self._up()
        if not up:
            return
        node = self.rng.choice(up)
        n = self.rng.randint(2, 8) if self.rng.random() < self.p.batch_prob else 1
        for _ in range(n):
            data = self._data(b"c")
            nowait = self.rng.random() < self.k.nowait_prob
            for attempt in range(2):
                try:
                    if nowait:
                        node.raft.propose_nowait(data)
                        f = None
                    else:
                        f = node.raft.propose(data)
                except ProposalDropped as e:  # NotLeader: a client follows the redirect once
                    self.stats["proposals_refused"] += 1
                    target = self.nodes.get(e.leader)
                    if attempt == 0 and target is not None and target.raft is not None and target is not node:
                        node = target
                        continue
                    return
                self.stats["proposals"] += 1
                if f is not None:
                    f.add_done_callback(lambda f, data=data, nid=node.id: self._proposal_done(nid, data, f))
                break

    def _proposal_done(self, nid: int, data: bytes, f: Future) -> None:
        err = f.error
        if err is None:
            index, applied = f.result()
            if applied != data:
                self.violations.append(InvariantViolation(
                    "proposal", f"node {nid}: the future of {data[:24]!r} resolved with the result of "
                    f"{applied[:24]!r} (index {index})"))
                return
            g = self.checker.applied[index] if index < len(self.checker.applied) else None
            if g is None or g[2] != data:
                self.violations.append(InvariantViolation(
                    "proposal", f"node {nid}: {data[:24]!r} acknowledged at index {index}, which holds "
                    f"{g!r:.60}"))
                return
            self.stats["proposals_acked"] += 1
        elif isinstance(err, ProposalDropped):
            self.stats["proposals_dropped"] += 1
        else:
            self.violations.append(InvariantViolation(
                "proposal", f"node {nid}: a proposal failed with {type(err).__name__}: {err}"))

    def _op_read(self) -> None:
        up = self._up()
        if not up:
            return
        node = self.rng.choice(up)
        raft = node.raft
        floor = self.checker.max_commit
        f = raft.read_index()
        self.stats["reads"] += 1
        f.add_done_callback(lambda f, nid=node.id: self._read_done(nid, raft, floor, f))

    def _read_done(self, nid: int, raft: RaftNode, floor: int, f: Future) -> None:
        err = f.error
        if err is None:
            index = f.result()
            if index < floor:
                self.violations.append(InvariantViolation(
                    "linearizable-read", f"node {nid}: read_index() resolved to {index}, but index {floor} was "
                    f"already committed when it was called"))
            elif raft.applied_index < index:
                self.violations.append(InvariantViolation(
                    "linearizable-read", f"node {nid}: read_index() resolved to {index} with only "
                    f"{raft.applied_index} applied"))
            else:
                self.stats["reads_ok"] += 1
        elif isinstance(err, ReadFailed):
            self.stats["reads_failed"] += 1
        else:
            self.violations.append(InvariantViolation(
                "linearizable-read", f"node {nid}: read_index() failed with {type(err).__name__}: {err}"))

    def _op_membership(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        raft = leader.raft
        m = raft.membership
        voters, learners = set(m.voters), set(m.learners)
        rng = self.rng
        ops = []
        if len(self.nodes) < self.p.max_nodes:
            ops += ["add", "add"]
        if learners and len(voters) < self.p.max_voters:
            ops += ["promote", "promote"]
        if len(voters) > 1:
            ops += ["remove_voter"]
        if learners:
            ops += ["remove_learner"]
        if learners and len(voters) > 1:
            ops += ["replace"]
        if not ops:
            return
        op = rng.choice(ops)
        new_id = 0
        addrs = None
        if op == "add":
            new_id = self.next_id
            learners.add(new_id)
            addrs = {new_id: f"sim-{new_id}"}
        elif op == "promote":
            lr = rng.choice(sorted(learners))
            learners.discard(lr)
            voters.add(lr)
        elif op == "remove_voter":
            voters.discard(rng.choice(sorted(voters)))
        elif op == "remove_learner":
            learners.discard(rng.choice(sorted(learners)))
        else:
            lr = rng.choice(sorted(learners))
            learners.discard(lr)
            voters.discard(rng.choice(sorted(voters)))
            voters.add(lr)
        r = rng.random()
        version = raft.core.membership_version
        expect = None if r < 0.5 else version if r < 0.95 else version + 1
        f = raft.propose_membership(sorted(voters), sorted(learners), addrs, expect_version=expect)
        self.stats["conf_changes"] += 1
        self.note(f"n{leader.id} proposes membership {op}: voters {sorted(voters)} learners {sorted(learners)}")
        f.add_done_callback(lambda f, nid=leader.id, op=op: self._conf_done(nid, op, f))
        if new_id:
            self.next_id += 1
            self._spawn(new_id, initial=False)

    def _conf_done(self, nid: int, op: str, f: Future) -> None:
        err = f.error
        if err is None:
            self.note(f"n{nid} membership {op} appended at {f.result()}")
        elif isinstance(err, (ConfChangeError, ProposalDropped)):
            self.stats["conf_changes_refused"] += 1
            self.note(f"n{nid} membership {op} refused: {err}")
        else:
            self.violations.append(InvariantViolation(
                "driver-contract", f"node {nid}: propose_membership failed with {type(err).__name__}: {err}"))

    def _op_transfer(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        others = sorted(leader.raft.membership.all_voters() - {leader.id})
        if not others:
            return
        target = self.rng.choice(others)
        leader.raft.transfer_leadership(target)  # its future: refused or not, nothing to check
        self.stats["transfers"] += 1
        self.note(f"n{leader.id} transfers leadership to n{target}")

    # ------------------------------------------------------------------
    # faults
    # ------------------------------------------------------------------
    def _op_crash(self) -> None:
        up = self._up()
        if not up:
            return
        victims = up if self.rng.random() < self.p.total_crash_prob else [self.rng.choice(up)]
        for node in victims:
            self._crash(node)
            self._at(self.now + self.rng.randint(*self.p.downtime_us), self._restart, node.id)

    def _op_partition(self) -> None:
        ids = sorted(self.nodes)
        if len(ids) < 2:
            return
        rng = self.rng
        kind = rng.choice(("split", "isolate", "isolate-leader", "one-way"))
        if kind == "isolate-leader":
            leader = self._leader()
            kind = "isolate"
            a = [leader.id] if leader is not None else [rng.choice(ids)]
        elif kind == "split":
            shuffled = ids[:]
            rng.shuffle(shuffled)
            a = shuffled[: rng.randint(1, len(ids) - 1)]
        else:
            a = [rng.choice(ids)]
        b = [i for i in ids if i not in a]
        links = [(x, y) for x in a for y in b]
        if kind == "one-way":
            if rng.random() < 0.5:
                links = [(y, x) for x, y in links]
        else:
            links += [(y, x) for x, y in links]
        self.net.block(links)
        self.note(f"partition {kind}: {sorted(a)} | {b} ({len(links)} links)")
        self.stats["partitions"] += 1
        self._at(self.now + rng.randint(*self.p.partition_us), self._heal, links)

    def _heal(self, links: list[tuple[int, int]]) -> None:
        if self.phase is FAULT:
            self.net.unblock(links)

    def _op_burst(self) -> None:
        self.net.burst_drop = self.rng.uniform(0.3, 1.0)
        self.burst_until = self.now + self.rng.randint(*self.p.burst_us)
        self.note(f"drop burst {self.net.burst_drop:.2f} until {self.burst_until / 1000:.1f}ms")
        self._at(self.burst_until, self._end_burst)

    def _end_burst(self) -> None:
        if self.now >= self.burst_until:
            self.net.burst_drop = 0.0

    # ------------------------------------------------------------------
    # liveness
    # ------------------------------------------------------------------
    def _end_fault_phase(self) -> None:
        if self.phase is not FAULT:
            return
        self.phase = LIVENESS
        self.live_at = self.now
        self.live_deadline = self.now + max(self.p.liveness_us, int(2.5 * self.p.fault_us))
        self.net.heal_all()
        self.net.drop_prob = 0.0
        self.note("fault phase over: network healed, restarting every crashed server")
        for node in list(self.nodes.values()):
            if node.raft is None:
                self._start(node)
        self._at(self.now, self._live_check)

    def _live_check(self) -> None:
        if self.now > self.live_deadline:
            raise InvariantViolation(
                "liveness",
                f"no recovery within {(self.now - self.live_at) / 1e6:.1f}s after the faults stopped "
                f"({'a fresh proposal committed' if self.live_committed else 'no fresh proposal committed'})\n"
                + self.status())
        leader = self._leader()
        if leader is not None:
            if not self.live_committed:
                key = (leader.id, leader.raft.core.term)
                if self.live_proposed_at != key:
                    try:
                        f = leader.raft.propose(self._data(b"live"))
                    except ProposalDropped:
                        pass
                    else:
                        self.live_proposed_at = key
                        f.add_done_callback(self._live_done)
            elif self._converged(leader):
                self.phase = DONE
                self.stats["recovery_ms"] = (self.now - self.live_at) // 1000
                return
        self._at(self.now + LIVE_CHECK_US, self._live_check)

    def _live_done(self, f: Future) -> None:
        if f.error is None:
            self.live_committed = True
        else:
            self.live_proposed_at = None  # try again with the next leader (or this one)

    def _converged(self, leader: DNode) -> bool:
        raft = leader.raft
        core = raft.core
        m = core.membership
        c = core.commit_index
        if m.joint or core.membership_version > c or raft.applied_index != c:
            return False
        for nid in m.members():
            node = self.nodes.get(nid)
            if node is None or node.raft is None or node.raft.applied_index != c:
                return False
        return True

    # ------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------
    def status(self) -> str:
        lines = [f"  knobs: {self.k}"]
        for nid, n in sorted(self.nodes.items()):
            if n.raft is None:
                lines.append(f"  n{nid}: down")
                continue
            c = n.raft.core
            d = n.disk
            lines.append(
                f"  n{nid}: {Role(c.role).name} term {c.term} vote {c.vote} leader {c.leader_id} "
                f"first {c.first_index} last {c.last_index} commit {c.commit_index} applied {n.raft.applied_index} "
                f"snapshot {c.snapshot_meta.index} membership {fmt_members(c.membership)} "
                f"(v{c.membership_version}) disk queued {len(d.queue)} running {d.running is not None}"
            )
            if c.role == Role.LEADER:
                lines.append(f"      progress {c.progress()}")
        return "\n".join(lines)

    def format_trace(self) -> str:
        return "\n".join(_fmt(item) for item in self.trace)


def _fmt(item: tuple) -> str:
    t, fn, args = item
    ts = f"{t / 1000:10.3f}ms"
    if fn is None:
        return f"{ts}  # {args}"
    if fn == "ready":
        return f"{ts}  {fmt_ready(*args)}"
    name = getattr(fn, "__name__", str(fn)).lstrip("_")
    if name == "deliver":
        return f"{ts}  deliver {fmt_msg(args[0])}"
    if name == "process":
        return f"{ts}  {args[0].__name__.lstrip('_')}"
    if name == "child_exit":
        return f"{ts}  n{args[0]} snapshot child {args[2].pid} exits"
    if name == "heal":
        return f"{ts}  heal {len(args[0])} links"
    return f"{ts}  {name} {args}"
