"""The Trio driver around the Raft core: time, disk and network for one server.

One task owns the core and feeds it everything (messages, ticks, proposals,
read barriers, membership changes, disk completions) from a single inbox of
typed items, so the core is only ever touched from one place.  Readies are
carried out exactly as ``coord.raft.types.Ready`` prescribes:

* leader replication messages leave at once, in parallel with the leader's
  own disk write;
* everything to persist goes, in order, to the disk pipeline
  (``diskwriter.DiskWriter``: one thread, group commit).  A ready whose only
  durable change is the commit index needs no fsync of its own (see
  ``Ready.needs_sync``); it is written with the next batch;
* after the fsync: the acknowledgements that promise durability are sent,
  the core is told, committed entries are applied, futures resolved;
* a change of leader, role or term (``Ready.soft_state``) is reported to
  ``on_soft_state`` and wakes ``wait_leader``.

Snapshots of the state machine are due by ``snapshotschedule`` and written
by a forked child (``snapshotter``): the loop pauses for the fork only, the
WAL is compacted once the file is durable, and the core keeps the data
mapped from the file.  A snapshot installed from the leader is restored in
steps by a task of its own (``StateMachine.restore_steps``), the state
machine's part of the readies after it waiting, in order, meanwhile.

A full disk (``NoSpaceError`` from the disk thread) is waited out, see
``diskspace``: proposals are refused with ``DiskFull`` meanwhile, a leader
hands its leadership to an up-to-date voter, the failed write is retried
after a back-off on this loop's clock, and a read barrier queued behind the
stuck write still completes once the applied index reaches it.  Any other
disk error stops the node.

Callers wait on ``Future``s (``future.py``): ``propose``, ``read_index``,
``applied``, ``propose_membership``, ``transfer_leadership``.  The clock
(``ticker``), the network (``send``/``deliver``), the disk pipeline
(``disk``, a factory of a ``diskwriter.DiskPipeline``) and the snapshot
child (``snapshotter``) are parameters, so tests can drive time and the
simulation (tests/sim/driver.py) can run this driver on a simulated network
and disk.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import trio

from coord.raft.config import RaftConfig
from coord.raft.core import RaftCore
from coord.raft.types import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    Message,
    ProposalDropped,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from coord.observe.stats import RaftStats
from coord.server.diskspace import DiskSpace, transfer_target
from coord.server.diskwriter import (
    AdoptSnapshot,
    DiskPipeline,
    DiskWork,
    DiskWriter,
    LogStore,
    SaveSnapshot,
    SnapshotFiles,
)
from coord.server.future import Future
from coord.server.snapshotschedule import SnapshotSchedule
from coord.server.snapshotter import ChildSnapshot, SnapshotFailed, fork_snapshot

log = logging.getLogger("coord.raftnode")

__all__ = [
    "CommitUnknown",
    "DiskFull",
    "LogStore",
    "NodeOptions",
    "NodeStatus",
    "NotLeader",
    "RaftNode",
    "ReadFailed",
    "StateMachine",
    "SteppedRestore",
]


class StateMachine(Protocol):
    """What the driver needs from the replicated state machine."""

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry (every kind, in log order: no-op and
        configuration entries advance the zxid too); the result of a NORMAL
        entry goes to its proposer."""

    def snapshot(self) -> bytes:
        """Serialize the whole state (as of the last applied entry)."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's."""


@runtime_checkable
class SteppedRestore(Protocol):
    """A state machine that can also restore in steps (optional)."""

    def restore_steps(self, data: bytes | memoryview) -> Iterator[None]:
        """``restore`` in steps of bounded work, the state replaced at the
        end: the driver then installs a snapshot from the leader without
        holding its loop for the whole of it."""


class NotLeader(ProposalDropped):
    """This server is not the leader; ``leader`` names the one it knows of (or 0)."""


class DiskFull(ProposalDropped):
    """This server's disk is full: it accepts no proposals until a write
    succeeds again (``diskspace``).  A ProposalDropped, so that a leader
    refuses forwarded writes with it (the follower retries elsewhere)."""


class CommitUnknown(ProposalDropped):
    """Leadership was lost while the proposal was in flight: it may still commit.
    Callers retry with the same request id (the state machine deduplicates)."""


class ReadFailed(Exception):
    """A linearizable read could not be confirmed (no leader, leadership lost)."""


@dataclass(slots=True, frozen=True)
class NodeOptions:
    tick_seconds: float = 0.05
    snapshot_entries: int = 10_000  # snapshot the state machine after this many applied entries...
    snapshot_jitter: float = 0.25  # ...plus a random part of up to this share of them, so servers do not all at once
    snapshot_log_bytes: int = 64 << 20  # ...or once the entries applied since the last one reach this size
    snapshot_retain: int = 1_000  # keep this many entries before a snapshot for lagging followers...
    snapshot_retain_bytes: int = 4 << 20  # ...or fewer, up to this many bytes of them (S1: 1,000 multis were 38 MB)
    snapshot_in_child: bool = True  # in a forked child (snapshotter.py), if the store writes files; else on the loop
    snapshot_nice: int = 19  # the child's niceness: it takes the CPU the servers leave
    max_batch: int = 4096  # proposals per core.propose_batch call

    def __post_init__(self) -> None:
        if (self.tick_seconds <= 0 or self.snapshot_entries < 1 or self.snapshot_retain < 0 or self.max_batch < 1
                or not 0 <= self.snapshot_jitter <= 1 or self.snapshot_retain_bytes < 0 or self.snapshot_log_bytes < 1):
            raise ValueError(f"bad node options: {self}")


@dataclass(slots=True, frozen=True)
class NodeStatus:
    """A consistent picture of the node, for status pages and admin checks."""

    node_id: int
    role: Role
    term: int
    leader: int
    commit: int
    applied: int
    last_index: int
    membership: Membership
    membership_version: int
    recovering: bool
    progress: dict  # leader only: {peer: {"match", "next", "state"}}


# --- the inbox: everything the loop acts on ----------------------------------------

@dataclass(slots=True, frozen=True)
class _Tick:
    pass


@dataclass(slots=True, frozen=True)
class _Wake:
    """Proposals are waiting (they are queued beside the inbox, not in it)."""


@dataclass(slots=True, frozen=True)
class _ReadIndex:
    context: bytes


@dataclass(slots=True, frozen=True)
class _Unreachable:
    peer: int


@dataclass(slots=True, frozen=True)
class _Persisted:
    batch: list


@dataclass(slots=True, frozen=True)
class _DiskFailed:
    error: BaseException


@dataclass(slots=True, frozen=True)
class _DiskFull:
    """A write failed for lack of space; the disk thread waits for ``retry``."""

    error: BaseException


@dataclass(slots=True, frozen=True)
class _SnapshotWritten:
    """The child writing the snapshot of ``meta`` has exited (``error``: it failed)."""

    meta: SnapshotMeta
    job: ChildSnapshot
    error: str | None


@dataclass(slots=True, frozen=True)
class _Restored:
    """The task restoring ``ready``'s snapshot has finished (``error``: it failed)."""

    ready: Ready
    error: Exception | None
    seconds: float


@dataclass(slots=True, frozen=True)
class _CoreCall:
    """Run ``fn(core)`` inside the loop; its result or error resolves ``future``."""

    fn: Callable[[RaftCore], Any]
    future: Future


_TICK = _Tick()
_WAKE = _Wake()


async def _ticker(node: "RaftNode") -> None:
    """Real time: one tick per ``tick_seconds``."""
    while True:
        await trio.sleep(node.opts.tick_seconds)
        node.tick()


class RaftNode:
    def __init__(
        self,
        node_id: int,
        *,
        store: LogStore,
        recovered_hard_state: HardState,
        recovered_snapshot: Snapshot | None,
        recovered_entries: list[Entry],
        bootstrap: Membership | None,
        state_machine: StateMachine,
        send: Callable[[Message], None],
        raft_config: RaftConfig = RaftConfig(),
        options: NodeOptions = NodeOptions(),
        seed: int | None = None,
        on_membership: Callable[[Membership], None] | None = None,
        on_soft_state: Callable[[SoftState], None] | None = None,
        ticker: Callable[["RaftNode"], Any] = _ticker,
        disk: Callable[[LogStore, HardState, RaftStats], DiskPipeline] | None = None,
        snapshotter: Callable[..., ChildSnapshot] = fork_snapshot,
    ):
        self.node_id = node_id
        self.sm = state_machine
        self.send = send
        self.opts = options
        self.on_membership = on_membership
        self.on_soft_state = on_soft_state
        self._ticker = ticker
        self._fork_snapshot = snapshotter  # a seam: the simulation's children are not processes
        if recovered_snapshot is not None and recovered_snapshot.meta.index > 0:
            state_machine.restore(recovered_snapshot.data)
            if isinstance(store, SnapshotFiles):
                store.release_snapshot_data(recovered_snapshot.data)  # mapped: its pages need not stay in RSS
        self.core = RaftCore(
            node_id,
            raft_config,
            random.Random(seed),
            hard_state=recovered_hard_state,
            snapshot=recovered_snapshot,
            entries=recovered_entries,
            membership=bootstrap,
        )
        self.soft = SoftState(0, Role.FOLLOWER, self.core.term)
        self._recovering = self.core.recovering
        self._led_term = -1  # the last term in which this server was leader
        o = options
        self._schedule = SnapshotSchedule(
            entries=o.snapshot_entries, jitter=o.snapshot_jitter, log_bytes=o.snapshot_log_bytes,
            retain=o.snapshot_retain, retain_bytes=o.snapshot_retain_bytes,
            last_index=self.core.snapshot_meta.index, seed=node_id if seed is None else seed)
        self._snapshot_job: ChildSnapshot | None = None  # a child writing a snapshot
        self._restoring = False  # a task is restoring an installed snapshot into the state machine
        self._backlog: collections.deque[Ready] = collections.deque()  # readies whose state machine part waits
        self._nursery: trio.Nursery | None = None
        self._send_in, self._recv_in = trio.open_memory_channel(math.inf)
        self.obs = RaftStats(self.core)  # observability counters (coord.observe)
        if disk is None:
            self.disk: DiskPipeline = DiskWriter(store, recovered_hard_state, name=f"coord-disk-{node_id}",
                                                 stats=self.obs)
        else:
            self.disk = disk(store, recovered_hard_state, self.obs)
        self.diskspace = DiskSpace(node_id, clock=lambda: trio.current_time())  # is the disk full (diskspace.py)
        self._to_disk: list[DiskWork] = []  # this loop iteration's work, handed over at its end
        self._queued_hs = recovered_hard_state  # term/vote durable or queued for writing
        self._proposals: list[tuple[bytes, Future | None]] = []
        self._waiters: dict[int, tuple[int, Future]] = {}  # index -> (term, future)
        self._reads: dict[bytes, Future] = {}
        self._read_ids = itertools.count(1)
        # Read contexts are unique across this server's restarts too: the
        # leader's late answer to a read asked before a restart (in the same
        # term) must not release one asked after it with an older index.
        self._read_prefix = os.urandom(8) if seed is None else random.Random(f"reads-{seed}").randbytes(8)
        self._applied = self.core.applied_index
        self._applied_waiters: list[tuple[int, int, Future]] = []  # heap of (index, seq, future)
        self._waiter_seq = itertools.count()
        self._soft_event = trio.Event()  # set (and replaced) at every soft state change
        self._membership_seen: Membership | None = None
        self._in_pipeline = 0  # disk work queued or being written, not yet completed
        self.entries_applied = 0

    # ------------------------------------------------------------------
    # observation
    # ------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.soft.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return self.soft.leader

    @property
    def term(self) -> int:
        return self.soft.term

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def membership(self) -> Membership:
        return self.core.membership

    def recent_members(self) -> frozenset[int]:
        """Members of the latest configuration and of the one before it (whom to keep links to)."""
        return self.core.recent_members()

    @property
    def fsyncs(self) -> int:
        return self.disk.fsyncs

    @property
    def disk_full(self) -> bool:
        """A write failed for lack of space and has not succeeded since: no
        proposals are accepted (``DiskFull``)."""
        return self.diskspace.full

    def status(self) -> NodeStatus:
        c = self.core
        return NodeStatus(self.node_id, c.role, c.term, c.leader_id, c.commit_index, self._applied, c.last_index,
                          c.membership, c.membership_version, c.recovering,
                          c.progress() if c.role is Role.LEADER else {})

    # ------------------------------------------------------------------
    # inputs (call from tasks in the same Trio run; none of them blocks)
    # ------------------------------------------------------------------
    def deliver(self, msg: Message) -> None:
        """Called by the transport for every received Raft message."""
        self._send_in.send_nowait(msg)

    def peer_unreachable(self, pid: int) -> None:
        """The transport found ``pid``'s port closed (its process is gone)."""
        self._send_in.send_nowait(_Unreachable(pid))

    def tick(self) -> None:
        self._send_in.send_nowait(_TICK)

    def propose(self, data: bytes) -> Future:
        """Replicate ``data``; the future resolves to the state machine's
        result once the entry is committed and applied here.  Raises NotLeader
        at once on a follower (or during a leadership transfer); the future
        fails with ProposalDropped/CommitUnknown if leadership is lost first."""
        f = Future()
        self._queue_proposal(data, f)
        return f

    def propose_nowait(self, data: bytes) -> None:
        """Like ``propose`` for a caller that learns the outcome elsewhere (the
        service answers writes when it applies them, and fails what is pending
        when the leader changes): no future, no per-entry bookkeeping."""
        self._queue_proposal(data, None)

    def _queue_proposal(self, data: bytes, f: Future | None) -> None:
        core = self.core
        if core.role is not Role.LEADER:
            raise NotLeader("not the leader", core.leader_id)
        if self.diskspace.full:
            raise DiskFull("the leader's disk is full", core.leader_id)
        if core.lead_transferee:
            raise NotLeader("leadership transfer in progress", core.leader_id)
        self._proposals.append((data, f))
        if len(self._proposals) == 1:
            self._send_in.send_nowait(_WAKE)  # wake the loop once per batch

    def read_index(self) -> Future:
        """Linearizable read barrier (ReadIndex): resolves to the read index
        once this server has applied it (everything committed before the
        call); fails with ReadFailed if no leader could confirm it."""
        ctx = self._read_prefix + next(self._read_ids).to_bytes(8, "big")
        f = Future()
        self._reads[ctx] = f
        self._send_in.send_nowait(_ReadIndex(ctx))
        return f

    def applied(self, index: int) -> Future:
        """Resolves once this server has applied ``index``."""
        f = Future()
        self._when_applied(index, f)
        return f

    async def wait_applied(self, index: int) -> None:
        if self._applied < index:
            await self.applied(index).wait()

    async def wait_leader(self) -> int:
        """The current leader's id, once there is one."""
        await self.wait_soft_state(lambda s: s.leader != 0)
        return self.soft.leader

    async def wait_soft_state(self, pred: Callable[[SoftState], bool]) -> SoftState:
        """Until ``pred(soft state)`` holds (checked at every change)."""
        while not pred(self.soft):
            await self._soft_event.wait()
        return self.soft

    def term_at(self, index: int) -> int | None:
        """Term of the log entry at ``index`` (None: compacted away or not there)."""
        return self.core.log_term(index)

    def propose_membership(self, voters: Iterable[int], learners: Iterable[int] = (), addrs: dict | None = None,
                           *, expect_version: int | None = None) -> Future:
        """Resolves to the (index, term) of the configuration entry, or fails
        with ConfChangeError / ProposalDropped."""
        voters, learners = list(voters), list(learners)
        if self.diskspace.full:
            f = Future()
            f.fail(DiskFull("this server's disk is full", self.core.leader_id))
            return f
        return self._call(lambda c: c.propose_membership(voters, learners, addrs, expect_version=expect_version))

    def transfer_leadership(self, target: int) -> Future:
        return self._call(lambda c: c.transfer_leadership(target))

    def campaign(self) -> Future:
        return self._call(lambda c: c.campaign())

    def _call(self, fn: Callable[[RaftCore], Any]) -> Future:
        f = Future()
        self._send_in.send_nowait(_CoreCall(fn, f))
        return f

    # ------------------------------------------------------------------
    # tasks
    # ------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()

        def done(batch: list) -> bool:
            try:
                token.run_sync_soon(self._send_in.send_nowait, _Persisted(batch))
                return True
            except trio.RunFinishedError:
                return False

        def failed(exc: BaseException) -> None:
            try:
                token.run_sync_soon(self._send_in.send_nowait, _DiskFailed(exc))
            except trio.RunFinishedError:
                pass

        def full(exc: BaseException) -> None:
            try:
                token.run_sync_soon(self._send_in.send_nowait, _DiskFull(exc))
            except trio.RunFinishedError:
                self.disk.stop()

        self.disk.start(done, failed, full)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._ticker, self)
                self._process_ready()
                task_status.started()
                await self._main_loop()
        finally:
            # The thread writes what is queued, then exits; wait for it, so
            # nobody closes the storage under a write in progress.
            self.disk.stop()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.disk.join)

    async def _main_loop(self) -> None:
        core = self.core
        recv = self._recv_in
        while True:
            item = await recv.receive()
            while True:
                self._handle(item)
                try:
                    item = recv.receive_nowait()
                except trio.WouldBlock:
                    break
            if self._proposals:
                self._take_proposals()
            self._process_ready()
            if core.role is not Role.LEADER and self._waiters:
                # Entries we proposed may still commit under the next leader,
                # or be overwritten: the proposer cannot know which.
                waiters, self._waiters = self._waiters, {}
                self.obs.proposals_dropped += len(waiters)  # observability
                for _, f in waiters.values():
                    f.fail(CommitUnknown("leadership lost before the entry committed; it may or may not commit"))

    def _handle(self, item: Any) -> None:
        core = self.core
        t = type(item)
        if t is Message:
            core.step(item)
        elif t is _Tick:
            core.tick()
        elif t is _Wake:
            pass
        elif t is _Persisted:
            if self.diskspace.full:
                self.diskspace.recovered()
            self._in_pipeline -= len(item.batch)
            for work in item.batch:
                self._after_persist(work)
        elif t is _ReadIndex:
            core.read_index(item.context)
        elif t is _Unreachable:
            core.peer_unreachable(item.peer)
        elif t is _CoreCall:
            try:
                item.future.set(item.fn(core))
            except Exception as e:  # the caller's answer (ConfChangeError, ProposalDropped, ...)
                item.future.fail(e)
        elif t is _SnapshotWritten:
            self._snapshot_written(item)
        elif t is _Restored:
            self._restored(item)
        elif t is _DiskFull:
            self._disk_full(item.error)
        elif t is _DiskFailed:
            raise item.error  # a storage error is fatal: stop the server rather than lie
        else:
            raise TypeError(f"unknown inbox item {item!r}")

    # ------------------------------------------------------------------
    # a full disk (diskspace.py)
    # ------------------------------------------------------------------
    def _disk_full(self, error: BaseException) -> None:
        """The disk thread could not write for lack of space and waits: tell
        ``diskspace`` (logs, metrics), hand leadership on, retry later."""
        delay = self.diskspace.failed(error)
        self._hand_over_leadership()
        if self._nursery is not None:
            self._nursery.start_soon(self._retry_disk, delay)
        else:
            self.disk.retry()

    async def _retry_disk(self, delay: float) -> None:
        await trio.sleep(delay)
        self.disk.retry()

    def _hand_over_leadership(self) -> None:
        """A leader that cannot write lets an up-to-date voter lead, so the
        ensemble goes on taking writes (the core catches the target up and
        sends it TIMEOUT_NOW; abandoned after transfer_timeout_ticks, then
        tried again at the next failed retry)."""
        core = self.core
        if core.role is not Role.LEADER or core.lead_transferee:
            return
        target = transfer_target(self.node_id, core.membership.all_voters(), core.progress(), core.last_index)
        if target is None:
            log.warning("server %d: disk full and no other voter to hand leadership to: writes wait for space",
                        self.node_id)
            return
        try:
            core.transfer_leadership(target)
        except Exception as e:  # noqa: BLE001 - ConfChangeError, ProposalDropped: tried again later
            log.warning("server %d: disk full: could not hand leadership to server %d: %s", self.node_id, target, e)
            return
        log.warning("server %d: disk full: handing leadership to server %d", self.node_id, target)

    def _take_proposals(self) -> None:
        props, self._proposals = self._proposals, []
        for k in range(0, len(props), self.opts.max_batch):
            chunk = props[k:k + self.opts.max_batch]
            try:
                first, term = self.core.propose_batch([d for d, _ in chunk])
            except ProposalDropped as e:
                self.obs.proposals_dropped += len(chunk)  # observability
                for _, f in chunk:
                    if f is not None:
                        f.fail(NotLeader(e.reason, e.leader))
                continue
            for j, (_, f) in enumerate(chunk):
                if f is not None:
                    self._waiters[first + j] = (term, f)

    def _process_ready(self) -> None:
        core = self.core
        soft = None
        while core.has_ready():
            rd = core.ready()
            if rd.soft_state is not None:
                soft = rd.soft_state
            for m in rd.messages:
                self.send(m)
            sync = rd.needs_sync(self._queued_hs)
            if rd.hard_state is not None:
                self._queued_hs = rd.hard_state
            if sync or self._in_pipeline:
                # Readies complete strictly in order, so even one with nothing
                # to write queues behind earlier writes.  Its read states need
                # not wait for the disk, only for the applied index: a read
                # is served once this server has applied its read index, and
                # applying waits for the disk anyway (a server whose disk is
                # full keeps answering linearizable reads it has applied).
                if rd.read_states:
                    self._register_reads(rd)
                self._enqueue(rd)
            else:
                if rd.hard_state is not None:
                    self.disk.set_lazy(rd.hard_state)
                self._after_persist(rd)
        self._flush_disk()
        if soft is not None:
            self.obs.observe_core(core)  # observability: elections, leader changes
            self._soft_state_changed(soft)
        if self._recovering and not core.recovering:
            self._recovering = False
            log.info("server %d: the leader has sent back everything this server lost: voting again", self.node_id)
        m = core.membership
        if m is not self._membership_seen:
            self._membership_seen = m
            if self.on_membership is not None:
                self.on_membership(m)

    def _flush_disk(self) -> None:
        if self._to_disk:
            batch, self._to_disk = self._to_disk, []
            self.disk.submit(batch)  # one hand-off per loop iteration (each may wake the thread)

    def _soft_state_changed(self, soft: SoftState) -> None:
        self.soft = soft
        if soft.role is Role.LEADER:
            self._led_term = soft.term
        event, self._soft_event = self._soft_event, trio.Event()
        event.set()
        if self.on_soft_state is not None:
            self.on_soft_state(soft)

    def _enqueue(self, work: DiskWork) -> None:
        self._in_pipeline += 1
        self._to_disk.append(work)

    def _after_persist(self, work: DiskWork) -> None:
        if type(work) is SaveSnapshot or type(work) is AdoptSnapshot:
            return
        rd: Ready = work
        for m in rd.messages_after_persist:
            self.send(m)
        self.core.on_persisted(rd)
        for ctx in rd.failed_reads:
            f = self._reads.pop(ctx, None)
            if f is not None:
                f.fail(ReadFailed("no leader could confirm the read"))
        if self._restoring or self._backlog:
            self._backlog.append(rd)  # the state machine is being restored: its part waits, in order
        else:
            self._to_state_machine(rd)

    def _to_state_machine(self, rd: Ready) -> None:
        """The state machine's part of a durable ready: install its snapshot,
        apply its committed entries, resolve read barriers.  A snapshot is
        restored in steps by a task of its own when the state machine can
        (``restore_steps``), the rest of this ready and of the ones after it
        waiting until it is in."""
        if rd.snapshot is not None:
            self.obs.snapshot_installed(len(rd.snapshot.data))  # observability
            if isinstance(self.sm, SteppedRestore) and self._nursery is not None:
                self._restoring = True
                self._nursery.start_soon(self._restore, rd, self.sm.restore_steps(rd.snapshot.data))
                return
            self.sm.restore(rd.snapshot.data)
            self._installed(rd)
        self._apply_ready(rd)

    async def _restore(self, rd: Ready, steps: Iterator[None]) -> None:
        """Run ``restore_steps`` with a checkpoint after each (bounded) step,
        so the loop goes on serving reads, heartbeats and the log meanwhile."""
        error = None
        t0 = time.perf_counter()
        try:
            for _ in steps:
                await trio.sleep(0)
        except Exception as e:  # a damaged snapshot: raised in the loop, which stops the server as before
            error = e
        self._send_in.send_nowait(_Restored(rd, error, time.perf_counter() - t0))

    def _restored(self, item: "_Restored") -> None:
        if item.error is not None:
            raise item.error
        self._restoring = False
        log.info("server %d: installed the snapshot at index %d in %.2f s of steps", self.node_id,
                 item.ready.snapshot.meta.index, item.seconds)
        self._installed(item.ready)
        self._apply_ready(item.ready)
        backlog = self._backlog
        while backlog and not self._restoring:
            self._to_state_machine(backlog.popleft())

    def _installed(self, rd: Ready) -> None:
        index = rd.snapshot.meta.index
        self._schedule.taken(index)
        self._set_applied(index)
        for idx in [i for i in self._waiters if i <= index]:
            self._waiters.pop(idx)[1].fail(ProposalDropped("replaced by a snapshot"))

    def _apply_ready(self, rd: Ready) -> None:
        for e in rd.committed:
            self._apply(e)
        if rd.committed:
            self._set_applied(rd.committed[-1].index)
            self._maybe_snapshot()
        if rd.read_states:
            self._register_reads(rd)

    def _register_reads(self, rd: Ready) -> None:
        """Each read barrier of ``rd`` resolves once its read index is applied here."""
        for rs in rd.read_states:
            f = self._reads.pop(rs.context, None)
            if f is not None:
                self._when_applied(rs.index, f)

    def _apply(self, e: Entry) -> None:
        result = None
        error: BaseException | None = None
        try:
            result = self.sm.apply(e)
        except Exception as exc:  # a deterministic state machine error is the proposer's answer
            error = exc
        self.entries_applied += 1
        self._schedule.applied(len(e.data))
        if e.term == self._led_term and e.kind == EntryKind.NORMAL:
            self.obs.proposals_committed += 1  # observability: proposed here, as leader of its term
        pending = self._waiters.pop(e.index, None) if self._waiters else None
        if pending is not None:
            term, f = pending
            if term != e.term:
                self.obs.proposals_dropped += 1  # observability
                f.fail(ProposalDropped("leadership changed before the entry committed"))
            elif error is not None:
                f.fail(error)
            else:
                f.set(result)

    def _when_applied(self, index: int, f: Future) -> None:
        if self._applied >= index:
            f.set(index)
        else:
            heapq.heappush(self._applied_waiters, (index, next(self._waiter_seq), f))

    def _set_applied(self, index: int) -> None:
        self._applied = index
        w = self._applied_waiters
        while w and w[0][0] <= index:
            target, _, f = heapq.heappop(w)
            f.set(target)

    # ------------------------------------------------------------------
    # snapshots
    # ------------------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        """A snapshot when one is due (``snapshotschedule``), in a forked
        child when the store can write files from one (``snapshotter``),
        else on the loop."""
        if self._snapshot_job is not None or not self._schedule.is_due(self._applied):
            return
        if self.core.snapshot_meta.index >= self._applied:
            # A snapshot from the leader at least as new is being written or
            # installed (behind the write whose entries were just applied):
            # it supersedes this one, and the core no longer has these entries.
            return
        self._schedule.started()
        index = self._applied
        meta = self.core.snapshot_meta_at(index)
        store = self.disk.store
        if self.opts.snapshot_in_child and isinstance(store, SnapshotFiles) and self._nursery is not None:
            try:
                job = self._fork_snapshot(self.sm.snapshot,
                                          lambda data: store.write_snapshot_file(Snapshot(meta, data)),
                                          nice=self.opts.snapshot_nice)
            except OSError as e:
                log.warning("server %d: cannot fork to snapshot (%s); taking it on the event loop", self.node_id, e)
            else:
                self._snapshot_job = job
                self.obs.snapshot_paused(job.fork_seconds)  # observability
                self._nursery.start_soon(self._await_snapshot, meta, job)
                return
        t0 = time.perf_counter()  # observability
        data = self.sm.snapshot()
        self.obs.snapshot_taken(t0, len(data))  # observability
        self.obs.snapshot_paused(time.perf_counter() - t0)  # observability
        log.info("server %d: snapshot at index %d (%d bytes) taken on the event loop: paused the loop %.1f ms",
                 self.node_id, index, len(data), self.obs.snapshot_pause * 1e3)
        self.core.compact(index, data, retain=self._to_keep(index))
        self._schedule.taken(index)
        # The WAL keeps its entries until the snapshot file is durable (FIFO).
        self._enqueue(SaveSnapshot(Snapshot(self.core.snapshot_meta, data), index))

    def _to_keep(self, index: int) -> int:
        return self._schedule.to_keep(index, self.core.log.first_index(), self.core.entries)

    async def _await_snapshot(self, meta: SnapshotMeta, job: ChildSnapshot) -> None:
        error = None
        try:
            await job.wait()
        except SnapshotFailed as e:
            error = str(e)
        self._send_in.send_nowait(_SnapshotWritten(meta, job, error))

    def _snapshot_written(self, item: _SnapshotWritten) -> None:
        """In the loop: the child is gone.  On success its file is durable:
        the core gets the data (mapped, for lagging followers), then the
        disk thread adopts the file and only then compacts the WAL."""
        self._snapshot_job = None
        store = self.disk.store
        meta = item.meta
        data = None
        error = item.error
        if error is None:
            try:
                data = store.snapshot_data(meta)
            except Exception as e:  # noqa: BLE001 - StorageError, OSError: the file is not usable
                error = f"cannot read back {meta}: {e!r}"
        if error is not None:
            store.discard_snapshot_file(meta, item.job.pid)
            self._schedule.failed(self._applied)
            log.error("server %d: snapshot at index %d failed: %s; the log keeps growing until one succeeds",
                      self.node_id, meta.index, error)
            return
        self.obs.snapshot_taken(item.job.started, len(data))  # observability
        log.info("server %d: snapshot at index %d (%d bytes) written by a child in %.2f s; fork paused the loop "
                 "%.1f ms", self.node_id, meta.index, len(data), time.perf_counter() - item.job.started,
                 item.job.fork_seconds * 1e3)
        self.core.compact(meta.index, data, retain=self._to_keep(meta.index))
        self._schedule.taken(meta.index)
        self._enqueue(AdoptSnapshot(meta, meta.index))
