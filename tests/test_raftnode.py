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
        self.applied = data.split(b"|") if data else []


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
