"""The production Raft driver (coord/server/raftnode.py), several in one Trio run.

Real ``RaftNode``s with their disk threads, over an in-memory network and
in-memory stores, on Trio's MockClock: elections, proposals answered at
apply, read barriers, soft-state notifications, membership changes and a
leadership transfer, a crashed leader, and every applied sequence equal.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from coord.raft.config import RaftConfig
from coord.raft.types import ConfChangeError, Entry, EntryKind, HardState, Membership, Role
from coord.server.raftnode import NodeOptions, NotLeader, RaftNode


class MemStore:
    """LogStore in memory; durability is not what these tests are about."""

    def __init__(self):
        self.saves = 0

    def save(self, hard_state, entries, snapshot):
        self.saves += 1

    def save_snapshot(self, snapshot):
        pass

    def compact(self, index):
        pass


class Counter:
    """A state machine: the sequence of applied payloads; returns its length."""

    def __init__(self):
        self.applied: list[bytes] = []

    def apply(self, entry: Entry):
        if entry.kind == EntryKind.NORMAL:
            self.applied.append(entry.data)
        return len(self.applied)

    def snapshot(self) -> bytes:
        return b"|".join(self.applied)

    def restore(self, data: bytes) -> None:
        self.applied = bytes(data).split(b"|") if data else []


class Net:
    def __init__(self):
        self.nodes: dict[int, RaftNode] = {}
        self.down: set[int] = set()

    def sender(self, src: int):
        def send(m):
            if src in self.down or m.to in self.down:
                return
            dst = self.nodes.get(m.to)
            if dst is not None:
                dst.deliver(m)
        return send


def make_nodes(n: int, net: Net, softs: dict):
    m = Membership(voters=frozenset(range(1, n + 1)))
    for i in range(1, n + 1):
        net.nodes[i] = RaftNode(
            i, store=MemStore(), recovered_hard_state=HardState(),
            recovered_snapshot=None, recovered_entries=[], bootstrap=m, state_machine=Counter(),
            send=net.sender(i), raft_config=RaftConfig(election_ticks=10, heartbeat_ticks=2),
            options=NodeOptions(tick_seconds=0.05, snapshot_entries=50), seed=i,
            on_soft_state=lambda st, i=i: softs.setdefault(i, []).append(st),
        )


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.01)


async def leader_of(net: Net) -> int:
    """The leader all live drivers agree on (a live one)."""
    live = [n for i, n in net.nodes.items() if i not in net.down]
    with trio.fail_after(10):
        while True:
            st = await live[0].wait_soft_state(lambda s: s.leader != 0 and s.leader not in net.down)
            if all(n.leader_id == st.leader and n.term == st.term for n in live):
                return st.leader
            await trio.sleep(0.05)


async def test_three_drivers_elect_replicate_read_and_fail_over(clock):
    net, softs = Net(), {}
    make_nodes(3, net, softs)
    scopes = {}
    async with trio.open_nursery() as nursery:
        for i, node in net.nodes.items():
            scopes[i] = trio.CancelScope()

            async def run(node=node, scope=scopes[i]):
                with scope:
                    await node.run()
            nursery.start_soon(run)
        lid = await leader_of(net)
        leader = net.nodes[lid]
        assert leader.is_leader and all(softs[i][-1].leader == lid for i in net.nodes)
        follower = next(n for i, n in net.nodes.items() if i != lid)
        with pytest.raises(NotLeader):
            follower.propose(b"x")
        results = [await leader.propose(b"w%d" % k).wait() for k in range(120)]  # past a snapshot
        assert results == list(range(1, 121))
        index = await follower.read_index().wait()  # a barrier through a follower
        assert follower.applied_index >= index >= 120

        # Leadership transfer, then a membership change through the driver's methods.
        target = follower.node_id
        await leader.transfer_leadership(target).wait()
        with trio.fail_after(5):
            await leader.wait_soft_state(lambda s: s.leader == target)
        new = net.nodes[target]
        await new.wait_soft_state(lambda s: s.role is Role.LEADER)
        with pytest.raises(ConfChangeError):
            await new.propose_membership([1, 2, 3], [], expect_version=999).wait()

        # Crash the leader: the other two elect one and keep committing.
        net.down.add(target)
        scopes[target].cancel()
        lid2 = await leader_of(net)
        assert lid2 != target
        assert await net.nodes[lid2].propose(b"after").wait() >= 121
        with trio.fail_after(5):
            while len({tuple(n.sm.applied) for i, n in net.nodes.items() if i not in net.down}) != 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    survivors = [n.sm.applied for i, n in net.nodes.items() if i != target]
    assert survivors[0] == survivors[1] and survivors[0][-1] == b"after"
    # What the crashed leader applied is a prefix of what the others did.
    crashed = net.nodes[target].sm.applied
    assert survivors[0][:len(crashed)] == crashed


# --- regressions found by the driver simulation (tests/sim/driver.py) -------------

class DurableStore(MemStore):
    """What was saved survives a restart (durable on return, as DiskStorage.save)."""

    def __init__(self):
        super().__init__()
        self.hs = HardState()
        self.log: dict[int, Entry] = {}

    def save(self, hard_state, entries, snapshot):
        super().save(hard_state, entries, snapshot)
        if hard_state is not None:
            self.hs = hard_state
        if entries:
            for i in [i for i in self.log if i >= entries[0].index]:
                del self.log[i]
            self.log.update((e.index, e) for e in entries)

    def entries(self) -> list[Entry]:
        return [self.log[i] for i in sorted(self.log)]


class HoldingNet(Net):
    """Net whose ``hold`` predicate keeps messages back (in ``held``) instead of delivering them."""

    def __init__(self):
        super().__init__()
        self.hold = lambda m: False
        self.held: list = []

    def sender(self, src: int):
        deliver = super().sender(src)

        def send(m):
            if src in self.down or m.to in self.down:
                return
            if self.hold(m):
                self.held.append(m)
            else:
                deliver(m)
        return send


async def test_a_reply_to_a_read_asked_before_a_restart_cannot_release_a_read_asked_after_it(clock):
    """A follower asks the leader to confirm a read, crashes, restarts (same
    term) and asks again.  The leader's late reply to the first request must
    not release the second: it carries an older read index, and writes
    acknowledged meanwhile would be missing from the read.  (Read contexts
    used to restart at 1 in every incarnation of a server.)"""
    from coord.raft.types import MsgType

    net = HoldingNet()
    m = Membership(voters=frozenset({1, 2, 3}))
    stores = {i: DurableStore() for i in (1, 2, 3)}
    scopes: dict[int, trio.CancelScope] = {}

    def make(i: int, seed: int) -> RaftNode:
        st = stores[i]
        net.nodes[i] = RaftNode(
            i, store=st, recovered_hard_state=st.hs, recovered_snapshot=None, recovered_entries=st.entries(),
            bootstrap=m, state_machine=Counter(), send=net.sender(i),
            raft_config=RaftConfig(election_ticks=10, heartbeat_ticks=2),
            options=NodeOptions(tick_seconds=0.05, snapshot_entries=10_000), seed=seed)
        return net.nodes[i]

    async with trio.open_nursery() as nursery:
        def start(node: RaftNode) -> None:
            scopes[node.node_id] = scope = trio.CancelScope()

            async def run():
                with scope:
                    await node.run()
            nursery.start_soon(run)

        for i in (1, 2, 3):
            start(make(i, seed=i))
        lid = await leader_of(net)
        leader = net.nodes[lid]
        fid = next(i for i in (1, 2, 3) if i != lid)
        for k in range(3):
            await leader.propose(b"before%d" % k).wait()

        # The follower's first read: the leader's answer is held back.
        net.hold = lambda msg: msg.type == MsgType.READ_INDEX_RESP and msg.to == fid
        net.nodes[fid].read_index()
        with trio.fail_after(5):
            while not net.held:
                await trio.sleep(0.01)
        stale = net.held.pop()

        # The follower crashes; more writes are acknowledged without it.
        net.down.add(fid)
        scopes[fid].cancel()
        for k in range(5):
            await leader.propose(b"after%d" % k).wait()
        floor = leader.core.commit_index
        assert stale.index < floor

        # It restarts in the same term and asks again; its request is held,
        # and the old answer arrives first.
        net.down.discard(fid)
        net.hold = lambda msg: msg.type == MsgType.READ_INDEX and msg.frm == fid
        follower = make(fid, seed=fid + 100)
        start(follower)
        with trio.fail_after(5):
            await follower.wait_soft_state(lambda s: s.leader == lid)
        assert follower.term == stale.term
        read = follower.read_index()
        with trio.fail_after(5):
            while not net.held:
                await trio.sleep(0.01)
        follower.deliver(stale)
        await trio.sleep(0.3)  # time to catch up (a stale index would be released now), not to time out
        assert not read.done, read.error or (read.result(), floor)

        # The real answer releases it.
        net.hold = lambda msg: False
        for msg in net.held:
            net.nodes[msg.to].deliver(msg)
        with trio.fail_after(5):
            assert await read.wait() >= floor
        nursery.cancel_scope.cancel()


async def test_a_snapshot_due_when_a_newer_one_from_the_leader_is_being_installed():
    """A follower applies entries (their write completes) while a snapshot
    from the leader, beyond them, waits behind that write in the disk
    pipeline; a snapshot of its own falls due at those entries.  The core no
    longer has them (its log now starts at the leader's snapshot): the
    driver must skip its own snapshot, not crash asking for their term."""
    from coord.raft.types import Message, MsgType
    from tests.sim.simdisk import SimDisk, SimStore

    async def no_ticks(node):
        await trio.sleep_forever()

    m = Membership(voters=frozenset({1, 2, 3}))
    sent = []
    disks = []
    leader_state = Counter()
    node = RaftNode(
        2, store=SimStore(), recovered_hard_state=HardState(), recovered_snapshot=None, recovered_entries=[],
        bootstrap=m, state_machine=Counter(), send=sent.append, raft_config=RaftConfig(),
        options=NodeOptions(snapshot_entries=5, snapshot_jitter=0, snapshot_in_child=False), seed=2,
        ticker=no_ticks,
        disk=lambda store, hs, stats: disks.append(SimDisk(store, hs, stats, kick=lambda d: None)) or disks[-1])
    disk = disks[0]

    def ents(lo, hi):
        return [Entry(1, i, EntryKind.NORMAL, b"e%d" % i) for i in range(lo, hi + 1)]

    async def write_all():
        while not disk.idle:
            disk.pick_up()
            disk.complete()
            await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        await trio.testing.wait_all_tasks_blocked()
        node.deliver(Message(MsgType.APPEND, 1, 2, 1, entries=ents(1, 6)))
        await trio.testing.wait_all_tasks_blocked()
        await write_all()  # entries 1..6 durable, nothing committed yet
        # Entry 7 with commit 6: one write, with entries 1..6 to apply after it.
        node.deliver(Message(MsgType.APPEND, 1, 2, 1, log_term=1, index=6, entries=ents(7, 7), commit=6))
        await trio.testing.wait_all_tasks_blocked()
        assert node.applied_index == 0 and not disk.idle
        # Meanwhile the leader's snapshot at 10 arrives: queued behind that write.
        for e in ents(1, 10):
            leader_state.apply(e)
        node.deliver(Message(MsgType.SNAPSHOT, 1, 2, 1, log_term=1, index=10, membership=m,
                             data=leader_state.snapshot(), done=True))
        await trio.testing.wait_all_tasks_blocked()
        await write_all()
        assert node.applied_index == 10
        assert node.sm.applied == [b"e%d" % i for i in range(1, 11)]
        nursery.cancel_scope.cancel()
