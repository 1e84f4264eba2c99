"""The Trio driver around the Raft core: time, disk and network for one server.

One task owns the core and feeds it everything (messages, ticks, proposals,
read barriers, disk completions) from a single inbox, so the core is only
ever touched from one place.  Readies are carried out exactly as
``coord.raft.types.Ready`` prescribes:

* leader replication messages leave at once, in parallel with the leader's
  own disk write;
* everything to persist goes, in order, to one long-lived disk thread.
  While one fsync runs, later readies pile up in its queue and are written
  together with the next fsync: that is group commit, and it is why
  throughput grows with load instead of being capped at one fsync per
  proposal.  (A dedicated thread, not ``trio.to_thread`` per batch: the
  thread handoff was a visible share of the CPU per write.)  A ready whose
  only durable change is the commit index needs no fsync of its own (see
  ``Ready.needs_sync``); it is written with the next batch;
* after the fsync: the acknowledgements that promise durability are sent,
  the core is told, committed entries are applied and proposers answered.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import trio

from coord.raft.config import RaftConfig
from coord.raft.core import RaftCore
from coord.raft.types import (
    Entry,
    HardState,
    Membership,
    Message,
    APP_MESSAGES,
    ProposalDropped,
    Ready,
    Role,
    Snapshot,
)
from coord.observe.stats import RaftStats

log = logging.getLogger("coord.raftnode")


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


class LogStore(Protocol):
    """The blocking storage API the driver uses (coord.storage.disk.DiskStorage)."""

    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None) -> None: ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...

    def compact(self, index: int) -> None: ...


class NotLeader(ProposalDropped):
    """This server is not the leader; ``leader`` names the one it knows of (or 0)."""


class CommitUnknown(ProposalDropped):
    """Leadership was lost while the proposal was in flight: it may still commit.
    Callers retry with the same request id (the state machine deduplicates)."""


class ReadFailed(Exception):
    """A linearizable read could not be confirmed (no leader, leadership lost)."""


@dataclass(slots=True)
class NodeOptions:
    tick_seconds: float = 0.05
    snapshot_entries: int = 10_000  # snapshot the state machine after this many applied entries
    snapshot_retain: int = 1_000  # keep this many entries before a snapshot for lagging followers
    max_batch: int = 4096  # proposals per core.propose_batch call


class _Waiter:
    """A one-shot result slot for a task waiting on the event loop."""

    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any) -> None:
        self.value = value
        self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()

    async def wait(self) -> Any:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.value


def merge_entries(acc: list[Entry], new: list[Entry]) -> list[Entry]:
    """Combine two consecutive entry writes into one (the later may overwrite a
    suffix of the earlier, as after a follower's log truncation)."""
    if not acc:
        return list(new)
    if not new:
        return acc
    first = new[0].index
    if first <= acc[-1].index:
        del acc[max(0, first - acc[0].index):]
    acc.extend(new)
    return acc


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
        on_app_message: Callable[[Message], None] | None = None,
        on_leader: Callable[[int], None] | None = None,
    ):
        self.node_id = node_id
        self.store = store
        self.sm = state_machine
        self.send = send
        self.opts = options
        self.on_membership = on_membership
        self.on_app_message = on_app_message
        self.on_leader = on_leader  # called with the new leader id (0: none) when it changes
        self._leader_seen = -1
        if recovered_snapshot is not None and recovered_snapshot.meta.index > 0:
            state_machine.restore(recovered_snapshot.data)
        self.core = RaftCore(
            node_id,
            raft_config,
            random.Random(seed),
            hard_state=recovered_hard_state,
            snapshot=recovered_snapshot,
            entries=recovered_entries,
            membership=bootstrap,
        )
        self._last_snapshot_index = self.core.snapshot_meta.index
        self._send_in, self._recv_in = trio.open_memory_channel(math.inf)
        self._disk_q: queue.SimpleQueue = queue.SimpleQueue()  # lists of writes to the disk thread, in order
        self._to_disk: list = []  # this loop iteration's writes, put on _disk_q at its end
        self._queued_hs = recovered_hard_state  # term/vote durable or queued for writing
        self._disk_hs = recovered_hard_state  # disk thread only: the last hard state it wrote
        self._lazy_hs: HardState | None = None  # newest commit-only change, for the disk thread's next write
        self._proposals: list[tuple[bytes, _Waiter]] = []
        self._waiters: dict[int, tuple[int, _Waiter]] = {}  # index -> (term, waiter)
        self._reads: dict[bytes, _Waiter] = {}
        self._read_ids = itertools.count(1)
        self._applied = self.core.applied_index
        self._applied_waiters: list[tuple[int, _Waiter]] = []
        self._applied_changed = trio.Event()
        self._membership_seen: Membership | None = None
        self._in_pipeline = 0  # readies queued or being written, not yet completed
        self.fsyncs = 0
        self.entries_applied = 0
        self.obs = RaftStats(self.core)  # observability counters (coord.observe)

    # ------------------------------------------------------------------
    # public API (call from tasks in the same Trio run)
    # ------------------------------------------------------------------
    def deliver(self, msg: Message) -> None:
        """Called by the transport for every received message (never blocks)."""
        if msg.type in APP_MESSAGES:
            if self.on_app_message is not None:
                self.on_app_message(msg)
            return
        self._send_in.send_nowait(msg)

    def peer_unreachable(self, pid: int) -> None:
        """The transport found ``pid``'s port closed (its process is gone)."""
        self._send_in.send_nowait(("unreachable", pid))

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return self.core.leader_id

    @property
    def applied_index(self) -> int:
        return self._applied

    async def propose(self, data: bytes) -> Any:
        """Replicate ``data``; returns the state machine's result once it is
        committed and applied here.  Raises NotLeader at once on a follower, and
        ProposalDropped if leadership was lost before the entry committed."""
        w = _Waiter()
        self.propose_with(data, w)
        return await w.wait()

    def propose_with(self, data: bytes, slot: Any) -> None:
        """Like ``propose``, for a caller that cannot wait in a task (the
        leader serving forwarded writes): the outcome is delivered by calling
        ``slot.set(result)`` or ``slot.fail(error)`` from the loop, exactly
        once.  Raises NotLeader at once on a follower."""
        if self.core.role is not Role.LEADER:
            raise NotLeader("not the leader", self.core.leader_id)
        self._proposals.append((data, slot))
        if len(self._proposals) == 1:
            self._send_in.send_nowait(None)  # wake the loop once per batch

    async def read_barrier(self) -> int:
        """Linearizable read barrier (ReadIndex): returns once this server has
        applied everything committed before the call; the index is returned."""
        ctx = next(self._read_ids).to_bytes(8, "big") + self.node_id.to_bytes(4, "big")
        w = _Waiter()
        self._reads[ctx] = w
        self._send_in.send_nowait(("read", ctx))
        index = await w.wait()
        await self.wait_applied(index)
        return index

    async def wait_applied(self, index: int) -> None:
        while self._applied < index:
            w = _Waiter()
            self._applied_waiters.append((index, w))
            await w.wait()

    def call(self, fn: Callable[[RaftCore], Any]) -> Any:
        """Run ``fn(core)`` on the core (e.g. propose_membership, transfer) and
        make sure its output is processed."""
        result = fn(self.core)
        self._send_in.send_nowait(None)
        return result

    # ------------------------------------------------------------------
    # tasks
    # ------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        disk = threading.Thread(target=self._disk_thread, args=(token,), name=f"coord-disk-{self.node_id}",
                                daemon=True)
        disk.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker)
                self._process_ready()
                task_status.started()
                await self._main_loop()
        finally:
            # The thread writes what is queued, then exits; wait for it, so
            # nobody closes the storage under a write in progress.
            self._disk_q.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(disk.join)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.opts.tick_seconds)
            self._send_in.send_nowait("tick")

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
                for _, w in waiters.values():
                    w.fail(CommitUnknown("leadership lost before the entry committed; it may or may not commit"))

    def _handle(self, item: Any) -> None:
        core = self.core
        if item is None:
            return
        if item == "tick":
            core.tick()
        elif isinstance(item, Message):
            core.step(item)
        elif item[0] == "read":
            core.read_index(item[1])
        elif item[0] == "unreachable":
            core.peer_unreachable(item[1])
        elif item[0] == "persisted":
            self._in_pipeline -= len(item[1])
            for rd in item[1]:
                self._after_persist(rd)
        elif item[0] == "disk_failed":
            raise item[1]  # a storage error is fatal: stop the server rather than lie

    def _take_proposals(self) -> None:
        props, self._proposals = self._proposals, []
        for k in range(0, len(props), self.opts.max_batch):
            chunk = props[k:k + self.opts.max_batch]
            try:
                first, term = self.core.propose_batch([d for d, _ in chunk])
            except ProposalDropped as e:
                self.obs.proposals_dropped += len(chunk)  # observability
                for _, w in chunk:
                    w.fail(NotLeader(e.reason, e.leader))
                continue
            for j, (_, w) in enumerate(chunk):
                self._waiters[first + j] = (term, w)

    def _process_ready(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            for m in rd.messages:
                self.send(m)
            sync = rd.needs_sync(self._queued_hs)
            if rd.hard_state is not None:
                self._queued_hs = rd.hard_state
            if sync or self._in_pipeline:
                # Readies complete strictly in order, so even one with nothing
                # to write queues behind earlier writes.
                self._enqueue(rd)
            else:
                if rd.hard_state is not None:
                    self._enqueue_lazy(rd.hard_state)
                self._after_persist(rd)
        self._flush_to_disk()
        self.obs.observe_core(core)  # observability: elections, leader changes
        if core.leader_id != self._leader_seen:
            self._leader_seen = core.leader_id
            if self.on_leader is not None:
                self.on_leader(core.leader_id)
        m = core.membership
        if m is not self._membership_seen:
            self._membership_seen = m
            if self.on_membership is not None:
                self.on_membership(m)

    def _enqueue(self, item: Ready | tuple) -> None:
        self._in_pipeline += 1
        self._to_disk.append(item)

    def _enqueue_lazy(self, hs: HardState) -> None:
        """A commit-only hard state, already acted upon: the disk thread
        writes it with its next batch.  Not queued, so it wakes nobody."""
        self._lazy_hs = hs

    def _flush_to_disk(self) -> None:
        """Hand this loop iteration's writes to the disk thread in one put
        (each put may wake the thread: a futex call and a GIL handoff)."""
        if self._to_disk:
            batch, self._to_disk = self._to_disk, []
            self._disk_q.put(batch)

    def _disk_thread(self, token: trio.lowlevel.TrioToken) -> None:
        """The disk thread: take everything queued, write it with one fsync,
        report completion to the loop, repeat.  Ends at None."""
        q = self._disk_q
        while True:
            batch = q.get()
            stop = batch is None
            batch = [] if stop else list(batch)
            while True:
                try:
                    more = q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.extend(more)
            try:
                self._write_batch(batch)
                report: tuple = ("persisted", batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which stops the server
                report, stop = ("disk_failed", exc), True
            if report[0] != "persisted" or report[1]:
                try:
                    token.run_sync_soon(self._send_in.send_nowait, report)
                except trio.RunFinishedError:
                    return
            if stop:
                return

    def _write_batch(self, batch: list) -> None:
        """Disk thread: write a run of readies with as few fsyncs as possible
        (one, unless a snapshot install splits the run; none if all that
        changed is the commit index)."""
        hs: HardState | None = None
        entries: list[Entry] = []
        snap: Snapshot | None = None
        dirty = False

        def flush() -> None:
            nonlocal hs, entries, snap, dirty
            lazy = self._lazy_hs  # set by the loop; only its commit may be newer
            if lazy is not None and (lazy.term, lazy.vote) == (self._disk_hs.term, self._disk_hs.vote) and (
                    hs is None or ((hs.term, hs.vote) == (lazy.term, lazy.vote) and lazy.commit > hs.commit)):
                hs = lazy
            t0 = time.perf_counter()  # observability
            self.store.save(hs, entries, snap)
            self.obs.fsync_done(t0, len(entries))  # observability
            self.fsyncs += 1
            if hs is not None:
                self._disk_hs = hs
            hs, entries, snap, dirty = None, [], None, False

        for rd in batch:
            if isinstance(rd, tuple):  # ("snapshot", Snapshot, index): our own state machine snapshot
                if dirty:
                    flush()
                self.store.save_snapshot(rd[1])
                self.store.compact(rd[2])
                continue
            if rd.snapshot is not None:
                if dirty:
                    flush()
                snap = rd.snapshot
                dirty = True
            if rd.entries:
                entries = merge_entries(entries, rd.entries)
                dirty = True
            if rd.hard_state is not None:
                hs = rd.hard_state
                if (hs.term, hs.vote) != (self._disk_hs.term, self._disk_hs.vote):
                    dirty = True
        if dirty:
            flush()
        elif hs is not None:
            # Only commit-only readies, queued behind a write: like lazy ones.
            # (The loop may have set a newer one meanwhile; keep the newest.)
            cur = self._lazy_hs
            if cur is None or hs.commit > cur.commit:
                self._lazy_hs = hs

    def _after_persist(self, rd: Ready | tuple) -> None:
        if isinstance(rd, tuple):
            return
        core = self.core
        for m in rd.messages_after_persist:
            self.send(m)
        core.on_persisted(rd)
        if rd.snapshot is not None:
            self.obs.snapshot_installed(len(rd.snapshot.data))  # observability
            self.sm.restore(rd.snapshot.data)
            self._last_snapshot_index = rd.snapshot.meta.index
            self._set_applied(rd.snapshot.meta.index)
            for idx in [i for i in self._waiters if i <= rd.snapshot.meta.index]:
                self._waiters.pop(idx)[1].fail(ProposalDropped("replaced by a snapshot"))
        for e in rd.committed:
            self._apply(e)
        if rd.committed:
            self._set_applied(rd.committed[-1].index)
            self._maybe_snapshot()
        for rs in rd.read_states:
            w = self._reads.pop(rs.context, None)
            if w is not None:
                w.set(rs.index)
        for ctx in rd.failed_reads:
            w = self._reads.pop(ctx, None)
            if w is not None:
                w.fail(ReadFailed("no leader could confirm the read"))

    def _apply(self, e: Entry) -> None:
        result = None
        error: BaseException | None = None
        try:
            result = self.sm.apply(e)
        except Exception as exc:  # a deterministic state machine error is the proposer's answer
            error = exc
        self.entries_applied += 1
        pending = self._waiters.pop(e.index, None)
        if pending is not None:
            term, w = pending
            self.obs.proposal_done(term == e.term)  # observability
            if term != e.term:
                w.fail(ProposalDropped("leadership changed before the entry committed"))
            elif error is not None:
                w.fail(error)
            else:
                w.set(result)

    def _set_applied(self, index: int) -> None:
        self._applied = index
        if self._applied_waiters:
            keep = []
            for target, w in self._applied_waiters:
                if target <= index:
                    w.set(None)
                else:
                    keep.append((target, w))
            self._applied_waiters = keep

    def _maybe_snapshot(self) -> None:
        if self._applied - self._last_snapshot_index < self.opts.snapshot_entries:
            return
        index = self._applied
        t0 = time.perf_counter()  # observability
        data = self.sm.snapshot()
        self.obs.snapshot_taken(t0, len(data))  # observability
        self.core.compact(index, data, retain=self.opts.snapshot_retain)
        self._last_snapshot_index = index
        # The WAL keeps its entries until the snapshot file is durable (FIFO).
        self._enqueue(("snapshot", Snapshot(self.core.snapshot_meta, data), index))
