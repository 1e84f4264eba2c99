"""A deterministic discrete-event simulation of a Raft cluster.

N ``RaftCore`` instances run in one process over a fake network and fake
disks.  Every random choice (delays, losses, faults, workload, each core's
own Random) is drawn from one ``random.Random(seed)``, and events are ordered
by (simulated time, sequence number), so a seed number is a complete bug
report: ``python -m tests.sim --seed N -v`` replays it exactly.

The driver of each node follows ``Ready``'s handling order to the letter
(see ``coord/raft/types.py``): messages go out at once, the persistence is
queued on the node's disk, and only when that write has "synced" are
``messages_after_persist`` sent, ``on_persisted`` called, and the snapshot and
committed entries applied.  Syncs of one node complete in FIFO order.

After every event the checkers in ``checkers.py`` are fed what the event
changed; the run ends with a liveness phase: faults stop, the network heals,
every crashed server restarts, and within a bounded simulated time a leader
must commit a fresh proposal and every member must apply the same prefix.
"""

from __future__ import annotations

import collections
import heapq
import random
from typing import Any, Callable

from coord.raft.core import RaftCore, decode_membership
from coord.raft.types import (
    ConfChangeError,
    EntryKind,
    HardState,
    Membership,
    Message,
    MsgType,
    ProposalDropped,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

from .checkers import InvariantViolation, LogView, SafetyChecker
from .network import Network, copy_message
from .params import PROFILES, SimParams
from .statemachine import FakeDisk, HashChainSM, ready_ops, same_membership

FAULT, LIVENESS, DONE = "fault", "liveness", "done"
LIVE_CHECK_US = 20_000
MAX_READIES_PER_INPUT = 10_000


class SimNode:
    """One server: the core under test plus everything its driver owns."""

    def __init__(self, nid: int, initial: bool, tick_us: int):
        self.id = nid
        self.initial = initial  # bootstrap member (else it joined in "join" mode)
        self.tick_us = tick_us
        self.core: RaftCore | None = None  # None while crashed
        self.inc = 0  # incarnation: events of an earlier life are ignored
        self.disk = FakeDisk()
        self.sm = HashChainSM()
        self.view = LogView()  # the log as handed out in Readies, synced or not
        self.pending: collections.deque[tuple[Ready, bool]] = collections.deque()  # (ready, needs sync), not done
        self.queued_hs = HardState()  # term/vote durable or queued, as the server driver tracks it
        self.lazy_commit: int | None = None  # a commit-only change acted on, written with the next sync
        self.disk_free_at = 0
        self.next_snapshot_at = 0
        # What the observer last saw of this incarnation.
        self.seen_commit = 0
        self.seen_term = 0
        self.seen_role = Role.FOLLOWER
        self.leader_term = -1

    @property
    def up(self) -> bool:
        return self.core is not None


class Simulation:
    def __init__(self, seed: int, profile: str = "default", *, fault_seconds: float | None = None,
                 steps: int | None = None, trace_len: int = 200, params: SimParams | None = None):
        self.seed = seed
        self.profile = profile
        self.rng = random.Random(seed)
        p = params if params is not None else PROFILES[profile](self.rng)
        if fault_seconds is not None:
            p = p.replace(fault_us=int(fault_seconds * 1_000_000))
        self.p = p
        self.steps = steps
        self.net = Network(
            random.Random(self.rng.getrandbits(64)), delay_us=p.delay_us,
            long_delay_prob=p.long_delay_prob, long_delay_us=p.long_delay_us,
            drop_prob=p.drop_prob, dup_prob=p.dup_prob,
        )
        self.checker = SafetyChecker(unique_data=True)
        self.nodes: dict[int, SimNode] = {}
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
        self.proposals: dict[tuple[int, int], bytes] = {}
        self.burst_until = 0
        self.live_deadline = 0
        self.live_proposals: dict[tuple[int, int], int] = {}
        self.live_proposed_at: tuple[int, int] | None = None
        self.live_committed = False
        self.live_at = 0
        self._tick_fn = self._tick  # one bound method, so the loop can recognise (and not trace) ticks

    # ------------------------------------------------------------------
    # event loop
    # ------------------------------------------------------------------
    def _at(self, t: int, fn: Callable, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, args))

    def note(self, text: str) -> None:
        self.trace.append((self.now, None, text))

    def run(self) -> dict:
        """Run to the end; raises InvariantViolation.  Returns statistics."""
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
        heap = self._heap
        trace = self.trace
        tick = self._tick_fn
        while heap and self.phase is not DONE:
            t, _, fn, args = heapq.heappop(heap)
            self.now = t
            self.events += 1
            if fn is not tick:
                trace.append((t, fn, args))
            fn(*args)
            if self.steps is not None and self.phase is FAULT and self.events >= self.steps:
                self._end_fault_phase()
        if self.phase is not DONE:
            raise InvariantViolation("liveness", "the simulation ran out of events")
        return self.summary()

    def summary(self) -> dict:
        s = dict(self.stats)
        s.update(events=self.events, sim_ms=self.now // 1000, nodes=len(self.nodes),
                 max_term=max((t for t in self.checker.leaders), default=0),
                 committed=self.checker.max_commit)
        return s

    def _exp(self, rate: float) -> int:
        return self.now + max(1, int(self.rng.expovariate(rate) * 1_000_000))

    def _process(self, fn: Callable, rate: float) -> None:
        """A Poisson process of workload or fault actions, during the fault phase only."""
        if self.phase is not FAULT:
            return
        fn()
        self._at(self._exp(rate), self._process, fn, rate)

    # ------------------------------------------------------------------
    # node lifecycle
    # ------------------------------------------------------------------
    def _spawn(self, nid: int, *, initial: bool) -> SimNode:
        drift = 1.0 + self.rng.uniform(-self.p.tick_drift, self.p.tick_drift)
        node = SimNode(nid, initial, max(1, int(self.p.tick_us * drift)))
        self.nodes[nid] = node
        self._start(node)
        return node

    def _start(self, node: SimNode) -> None:
        """(Re)start ``node`` from its durable state, exactly as API.md prescribes."""
        nid = node.id
        hs, meta, entries = node.disk.recovery_state()
        snap_index = meta.index if meta is not None else 0
        snap_term = meta.term if meta is not None else 0
        self.checker.on_restart(nid, hs, snap_index, snap_term, entries)
        # API.md documents ``snapshot`` as the SnapshotMeta, but with the meta
        # alone a restarted leader has no snapshot *data* to send to a follower
        # that needs one until the driver compacts again (a liveness stall).
        # The core also takes the full Snapshot, as the server driver passes it.
        core = RaftCore(
            nid, self.p.raft, random.Random(self.rng.getrandbits(64)),
            hard_state=hs, snapshot=node.disk.snapshot, entries=list(entries),
            membership=self.bootstrap if node.initial else None,
        )
        node.core = core
        node.inc += 1
        node.pending.clear()
        node.queued_hs = hs
        node.lazy_commit = None
        node.disk_free_at = self.now
        node.sm = HashChainSM(self.bootstrap if node.initial else None)
        if node.disk.snapshot is not None:
            node.sm.restore(node.disk.snapshot)
        self.checker.on_restore(nid, node.sm.applied, node.sm.hash)
        node.view = LogView(snap_index, snap_term, entries)
        node.seen_commit = 0
        node.seen_term = 0
        node.seen_role = Role.FOLLOWER
        node.leader_term = -1
        node.next_snapshot_at = node.sm.applied + self.rng.randint(*self.p.snapshot_every)
        self.note(f"n{nid} start: term {hs.term} vote {hs.vote} commit {hs.commit} snapshot {snap_index} "
                  f"log {entries[0].index if entries else snap_index + 1}..{snap_index + len(entries)}")
        self._at(self.now + self.rng.randint(1, node.tick_us), self._tick_fn, nid, node.inc)
        self._settle(node)

    def _crash(self, node: SimNode) -> None:
        """Lose the core and every unsynced write, except (sometimes) a prefix of
        them that reached the disk without an fsync."""
        if node.core is None:
            return
        kept = 0
        if node.pending and self.rng.random() < self.p.torn_write_prob:
            ops = [op for rd, _ in node.pending for op in ready_ops(rd)]
            kept = self.rng.randint(0, len(ops))
            for op in ops[:kept]:
                node.disk.apply_op(op)
        self.note(f"n{node.id} CRASH ({len(node.pending)} unsynced readies, {kept} writes kept)")
        node.core = None
        node.inc += 1
        node.pending.clear()
        self.checker.on_crash(node.id)
        self.stats["crashes"] += 1
        for other in self.nodes.values():
            if other.core is not None and self.rng.random() < self.p.unreachable_hint_prob:
                self._at(self.now + self.rng.randint(*self.p.delay_us), self._hint_unreachable,
                         other.id, other.inc, node.id)

    def _restart(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.core is None:
            if self.p.log_loss_prob and self.rng.random() < self.p.log_loss_prob and self._may_lose_log(node):
                self._lose_log(node)
            self._start(node)
            self.stats["restarts"] += 1

    def _may_lose_log(self, node: SimNode) -> bool:
        """Damage the cluster can survive: nobody else recovering, and every
        configuration any server holds has quorums without this one (a
        recovering server does not vote until a leader has repaired it)."""
        if node.disk.log.last_index <= node.disk.snapshot_index:
            return False
        if any(o.disk.hard_state.recovering or (o.core is not None and o.core.recovering)
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
            if o.core is not None:
                out.append(o.core.membership)
            if o.disk.snapshot is not None:
                out.append(o.disk.snapshot.meta.membership)
            out.extend(decode_membership(e.data) for e in o.disk.log.entries if e.kind == EntryKind.CONFIG)
        return out

    def _lose_log(self, node: SimNode) -> None:
        disk = node.disk
        lo = max(disk.snapshot_index, disk.log.base_index)
        keep = self.rng.randint(lo, disk.log.last_index - 1)
        self.note(f"n{node.id} DISK LOST log after {keep} (was ..{disk.log.last_index})"
                  + (", restarted with the recovery flag" if self.p.log_loss_recover else ", restarted silently"))
        disk.lose_log_after(keep, recovering=self.p.log_loss_recover)
        self.stats["log_losses"] += 1

    # ------------------------------------------------------------------
    # the driver: inputs, Readies, syncs
    # ------------------------------------------------------------------
    def _tick(self, nid: int, inc: int) -> None:
        node = self.nodes[nid]
        if node.inc != inc or node.core is None:
            return
        node.core.tick()
        if self.rng.random() < self.p.spurious_hint_per_tick:
            node.core.peer_unreachable(self.rng.choice(sorted(self.nodes)))
        self._settle(node)
        self._at(self.now + node.tick_us, self._tick_fn, nid, inc)

    def _hint_unreachable(self, nid: int, inc: int, gone: int) -> None:
        node = self.nodes[nid]
        if node.inc != inc or node.core is None:
            return
        node.core.peer_unreachable(gone)
        self._settle(node)

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.core is None or self.net.blocked(m.frm, m.to):
            return
        node.core.step(m)
        self._settle(node)

    def _send(self, node: SimNode, m: Message) -> None:
        if m.frm != node.id:
            raise InvariantViolation("driver-contract", f"node {node.id} emitted a message from {m.frm}: {fmt_msg(m)}")
        for d in self.net.plan(m):
            self._at(self.now + d, self._deliver, copy_message(m))

    def _settle(self, node: SimNode) -> None:
        """After an input: take every Ready, then let the checkers observe."""
        core = node.core
        n = 0
        while core.has_ready():
            n += 1
            if n > MAX_READIES_PER_INPUT:
                raise InvariantViolation("driver-contract", f"node {node.id}: has_ready() never becomes false")
            self._handle_ready(node, core.ready())
            if node.core is not core:
                return
        self._observe(node)

    def _handle_ready(self, node: SimNode, rd: Ready) -> None:
        """Ready steps 1 and 2: send ``messages``, queue the write on the disk."""
        self.trace.append((self.now, "ready", (node.id, rd)))
        view = node.view
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            view.install_snapshot(meta.index, meta.term)
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
        for m in rd.messages:
            self._send(node, m)
        # As the server driver does: a commit-only hard state change needs no
        # fsync of its own (Ready.needs_sync); it is written with the next sync.
        sync = rd.needs_sync(node.queued_hs)
        if rd.hard_state is not None:
            node.queued_hs = rd.hard_state
        if sync:
            latency = self.rng.randint(*self.p.disk_us)
        elif not node.pending:
            self._complete(node, rd, synced=False)  # nothing to sync, nothing queued: steps 3-5 now
            return
        else:
            latency = 0
        node.pending.append((rd, sync))
        t = max(self.now, node.disk_free_at) + latency
        node.disk_free_at = t
        self._at(t, self._sync_done, node.id, node.inc)

    def _sync_done(self, nid: int, inc: int) -> None:
        node = self.nodes[nid]
        if node.inc != inc or node.core is None:
            return
        rd, sync = node.pending.popleft()
        self._complete(node, rd, synced=sync)
        self._settle(node)

    def _complete(self, node: SimNode, rd: Ready, *, synced: bool) -> None:
        """Ready steps 2-5 once the write is durable (or, for a commit-only
        change, at once: its commit index reaches the disk with the next sync)."""
        nid = node.id
        if synced:
            if node.lazy_commit is not None and rd.hard_state is None:
                node.disk.apply_op(("commit", node.lazy_commit))
            node.lazy_commit = None
            node.disk.write(rd)
        elif rd.hard_state is not None:
            node.lazy_commit = rd.hard_state.commit
        for m in rd.messages_after_persist:
            self._send(node, m)
        node.core.on_persisted(rd)
        if rd.snapshot is not None:
            meta = rd.snapshot.meta
            if meta.index < node.sm.applied:
                raise InvariantViolation(
                    "state-machine-safety",
                    f"node {nid}: installing a snapshot at {meta.index} would rewind the state machine "
                    f"from {node.sm.applied}")
            try:
                node.sm.restore(rd.snapshot)
            except ValueError as e:
                raise InvariantViolation("snapshot", f"node {nid}: bad snapshot payload: {e}") from None
            self.checker.on_restore(nid, node.sm.applied, node.sm.hash)
            self.stats["snapshots_installed"] += 1
        sm = node.sm
        for e in rd.committed:
            self.checker.on_apply(nid, e)
            sm.apply(e)
            key = (e.index, e.term)
            data = self.proposals.pop(key, None)
            if data is not None and data != e.data:
                raise InvariantViolation(
                    "proposal", f"propose() returned {key} for {data[:32]!r} but {e.data[:32]!r} committed there")
            if self.live_proposals.get(key) == nid:
                self.live_committed = True
        self.stats["applied"] += len(rd.committed)
        for rs in rd.read_states:
            self.checker.on_read_state(nid, rs.context, rs.index)
            self.stats["reads_ok"] += 1
        for ctx in rd.failed_reads:
            self.checker.on_read_failed(nid, ctx)
            self.stats["reads_failed"] += 1
        if sm.applied >= node.next_snapshot_at:
            self._take_snapshot(node)

    def _take_snapshot(self, node: SimNode) -> None:
        """Driver-initiated compaction: snapshot the state machine, tell the core,
        keep the snapshot on disk.

        Like the server driver, half the time the core is asked to retain a
        few entries below the snapshot for slightly lagging followers."""
        sm = node.sm
        node.next_snapshot_at = sm.applied + self.rng.randint(*self.p.snapshot_every)
        if sm.applied <= node.disk.snapshot_index:
            return
        data = sm.snapshot_data(self.rng.randbytes(self.rng.randint(0, self.p.snapshot_pad)))
        retain = self.rng.choice((0, 0, 2, 20))
        if retain:
            node.core.compact(sm.applied, data, retain=retain)
        else:
            node.core.compact(sm.applied, data)
        meta = node.core.snapshot_meta
        if meta.index > sm.applied:
            # The core already holds a newer snapshot from the leader whose Ready
            # is still being written: it rightly ignored this one.
            meta = SnapshotMeta(sm.applied, sm.term, sm.membership or Membership())
        elif meta.index < sm.applied:
            raise InvariantViolation(
                "snapshot", f"node {node.id}: compact({sm.applied}) left the core's snapshot at {meta.index}")
        elif meta.term != sm.term:
            raise InvariantViolation(
                "snapshot", f"node {node.id}: compact({sm.applied}) gave snapshot term {meta.term}; "
                f"the entry applied at that index has term {sm.term}")
        elif sm.membership is not None and not same_membership(meta.membership, sm.membership):
            raise InvariantViolation(
                "snapshot", f"node {node.id}: snapshot at {meta.index} records membership "
                f"{fmt_members(meta.membership)} but {fmt_members(sm.membership)} was in effect at that index")
        node.disk.store_snapshot(Snapshot(meta, data), install=False,
                                 drop_log=self.rng.random() < self.p.drop_log_prob)
        if meta is node.core.snapshot_meta:
            node.view.compact(meta.index, meta.term)
        self.stats["snapshots_taken"] += 1

    def _observe(self, node: SimNode) -> None:
        """Feed the checkers what this node's last input changed."""
        core = node.core
        nid = node.id
        term = core.term
        if term < node.seen_term:
            raise InvariantViolation("term", f"node {nid}: term went back from {node.seen_term} to {term}")
        role = core.role
        if role != node.seen_role or term != node.seen_term:
            self.note(f"n{nid} {Role(role).name} term {term} leader {core.leader_id} "
                      f"last {core.last_index} commit {core.commit_index}")
            node.seen_role = role
        node.seen_term = term
        c = core.commit_index
        if c != node.seen_commit:
            if c < node.seen_commit:
                raise InvariantViolation("commit", f"node {nid}: commit index went back from {node.seen_commit} to {c}")
            view = node.view
            if c > view.last_index:
                raise InvariantViolation(
                    "commit", f"node {nid}: commit index {c} is beyond its log (last index {view.last_index})")
            on_commit = self.checker.on_commit
            for i in range(max(node.seen_commit + 1, view.base_index, 1), c + 1):
                on_commit(nid, i, view.term_at(i), term)
            node.seen_commit = c
        if role == Role.LEADER and node.leader_term != term:
            node.leader_term = term
            self.checker.on_leader(nid, term, node.view, node.inc)
            self.stats["elections"] += 1
        if core.last_index > node.view.last_index:
            raise InvariantViolation(
                "driver-contract", f"node {nid}: the core's log ends at {core.last_index} but Readies only "
                f"handed out entries up to {node.view.last_index}")

    # ------------------------------------------------------------------
    # workload
    # ------------------------------------------------------------------
    def _up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.core is not None]

    def _leader(self) -> SimNode | None:
        """The live node claiming leadership in the highest term."""
        best = None
        for n in self.nodes.values():
            if n.core is not None and n.core.role == Role.LEADER:
                if best is None or n.core.term > best.core.term:
                    best = n
        return best

    def _data(self, prefix: bytes) -> bytes:
        self._counter += 1
        return b"%s%d:" % (prefix, self._counter) + self.rng.randbytes(self.rng.randint(0, 40))

    def _op_propose(self) -> None:
        up = self._up_nodes()
        if not up:
            return
        node = self.rng.choice(up)
        batch = self.rng.random() < self.p.batch_prob
        datas = [self._data(b"c") for _ in range(self.rng.randint(2, 8) if batch else 1)]
        for attempt in range(2):
            try:
                if batch:
                    idx, term = node.core.propose_batch(datas)
                else:
                    idx, term = node.core.propose(datas[0])
            except ProposalDropped as e:
                self.stats["proposals_dropped"] += 1
                target = self.nodes.get(e.leader)
                if attempt == 0 and target is not None and target.core is not None and target is not node:
                    node = target  # a client follows the redirect once
                    continue
                return
            for k, d in enumerate(datas):
                self.proposals[(idx + k, term)] = d
            self.stats["proposals"] += len(datas)
            self._settle(node)
            return

    def _op_read(self) -> None:
        up = self._up_nodes()
        if not up:
            return
        node = self.rng.choice(up)
        self._counter += 1
        ctx = b"r%d" % self._counter
        self.checker.on_read_start(node.id, ctx)
        node.core.read_index(ctx)
        self.stats["reads"] += 1
        self._settle(node)

    def _op_membership(self) -> None:
        """A random reconfiguration computed from the leader's current membership."""
        leader = self._leader()
        if leader is None:
            return
        core = leader.core
        m = core.membership
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
        else:  # replace: one learner in, one voter out, in a single joint change
            lr = rng.choice(sorted(learners))
            learners.discard(lr)
            voters.discard(rng.choice(sorted(voters)))
            voters.add(lr)
        r = rng.random()
        expect = None if r < 0.5 else core.membership_version if r < 0.95 else core.membership_version + 1
        try:
            idx, term = core.propose_membership(voters, learners, addrs, expect_version=expect)
        except (ConfChangeError, ProposalDropped) as e:
            self.stats["conf_changes_refused"] += 1
            self.note(f"n{leader.id} membership {op} refused: {e}")
            return
        self.stats["conf_changes"] += 1
        self.note(f"n{leader.id} proposes membership {op}: voters {sorted(voters)} learners {sorted(learners)} "
                  f"at ({idx}, {term})")
        self._settle(leader)
        if new_id:
            self.next_id += 1
            self._spawn(new_id, initial=False)

    def _op_transfer(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        others = sorted(leader.core.membership.all_voters() - {leader.id})
        if not others:
            return
        target = self.rng.choice(others)
        try:
            leader.core.transfer_leadership(target)
        except (ProposalDropped, ConfChangeError):
            return
        self.stats["transfers"] += 1
        self.note(f"n{leader.id} transfers leadership to n{target}")
        self._settle(leader)

    # ------------------------------------------------------------------
    # faults
    # ------------------------------------------------------------------
    def _op_crash(self) -> None:
        up = self._up_nodes()
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
        # The bound grows with the fault phase: a leader keeps accepting
        # proposals while its commit index is stuck, and with one-entry
        # appends and a window of one message a follower catches up at about
        # one entry per round trip plus fsync (~100/s), so a long fault phase
        # can leave a backlog that alone takes longer than the base bound.
        self.live_deadline = self.now + max(self.p.liveness_us, int(2.5 * self.p.fault_us))
        self.net.heal_all()
        self.net.drop_prob = 0.0
        self.note("fault phase over: network healed, restarting every crashed server")
        for node in list(self.nodes.values()):
            if node.core is None:
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
                key = (leader.id, leader.core.term)
                if self.live_proposed_at != key:
                    try:
                        idx, term = leader.core.propose(self._data(b"live"))
                    except ProposalDropped:
                        pass
                    else:
                        self.live_proposals[(idx, term)] = leader.id
                        self.live_proposed_at = key
                        self._settle(leader)
            elif self._converged(leader):
                self.phase = DONE
                self.stats["recovery_ms"] = (self.now - self.live_at) // 1000
                return
        self._at(self.now + LIVE_CHECK_US, self._live_check)

    def _converged(self, leader: SimNode) -> bool:
        core = leader.core
        m = core.membership
        c = core.commit_index
        if m.joint or core.membership_version > c or leader.sm.applied != c:
            return False
        for nid in m.members():
            node = self.nodes.get(nid)
            if node is None or node.core is None or node.sm.applied != c:
                return False
        return True

    # ------------------------------------------------------------------
    # reporting
    # ------------------------------------------------------------------
    def status(self) -> str:
        lines = []
        for nid, n in sorted(self.nodes.items()):
            c = n.core
            if c is None:
                lines.append(f"  n{nid}: down")
                continue
            lines.append(
                f"  n{nid}: {Role(c.role).name} term {c.term} vote {c.vote} leader {c.leader_id} "
                f"first {c.first_index} last {c.last_index} commit {c.commit_index} applied {n.sm.applied} "
                f"membership {fmt_members(c.membership)} (v{c.membership_version})"
            )
            if c.role == Role.LEADER:
                lines.append(f"      progress {c.progress()}")
        return "\n".join(lines)

    def format_trace(self) -> str:
        return "\n".join(fmt_trace_item(item) for item in self.trace)


# ----------------------------------------------------------------------
# formatting (only used when reporting a failure)
# ----------------------------------------------------------------------
def fmt_members(m: Membership | None) -> str:
    if m is None:
        return "none"
    s = f"v{sorted(m.voters)}"
    if m.outgoing:
        s += f"+old{sorted(m.outgoing)}"
    if m.learners:
        s += f" l{sorted(m.learners)}"
    return s


def fmt_entries(ents: list) -> str:
    if not ents:
        return ""
    return f" ents[{ents[0].index}..{ents[-1].index} t{ents[0].term}..{ents[-1].term}]"


def fmt_msg(m: Message) -> str:
    try:
        name = MsgType(m.type).name
    except ValueError:
        name = str(m.type)
    s = f"{name} {m.frm}->{m.to} t{m.term}"
    if m.index or m.log_term:
        s += f" idx {m.index} lt {m.log_term}"
    s += fmt_entries(m.entries)
    if m.commit:
        s += f" commit {m.commit}"
    if m.reject:
        s += " REJECT"
    if m.context:
        s += f" ctx {m.context[:16]!r}"
    if m.type in (MsgType.SNAPSHOT, MsgType.SNAPSHOT_RESP):
        s += f" off {m.offset} len {len(m.data)} done {m.done}"
    return s


def fmt_ready(nid: int, rd: Ready) -> str:
    parts = [f"n{nid} ready"]
    if rd.snapshot is not None:
        parts.append(f"snapshot({rd.snapshot.meta.index},{rd.snapshot.meta.term})")
    if rd.entries:
        parts.append(fmt_entries(rd.entries).strip())
    if rd.hard_state is not None:
        hs = rd.hard_state
        parts.append(f"hs(t{hs.term} v{hs.vote} c{hs.commit})")
    if rd.committed:
        parts.append(f"apply {rd.committed[0].index}..{rd.committed[-1].index}")
    if rd.messages:
        parts.append(f"{len(rd.messages)} msgs")
    if rd.messages_after_persist:
        parts.append(f"{len(rd.messages_after_persist)} msgs after persist")
    if rd.read_states:
        parts.append("reads " + ",".join(f"{r.context!r}@{r.index}" for r in rd.read_states))
    if rd.failed_reads:
        parts.append(f"{len(rd.failed_reads)} failed reads")
    return " ".join(parts)


def fmt_trace_item(item: tuple) -> str:
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
    if name == "sync_done":
        return f"{ts}  n{args[0]} disk sync"
    if name == "heal":
        return f"{ts}  heal {len(args[0])} links"
    return f"{ts}  {name} {args}"
