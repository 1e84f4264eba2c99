"""A full disk in the disk pipeline and the Raft driver (``diskspace.py``,
``diskwriter.py``, ``raftnode.py``).

The policy on a fake clock (one DISK FULL line, reminders at most every
60 s, back-off 50 ms -> 2 s, whom a full leader hands over to); the disk
thread keeping the failed step and doing it, as planned, when told to;
and real drivers on Trio's MockClock whose stores run out of space: the
node refuses proposals with ``DiskFull`` and keeps ticking, a follower
stops acknowledging while the others commit, a leader hands leadership
over, and once space is back every server applies the same entries, each
once, nothing acknowledged lost.  A failed fsync (EIO) stops the node.
"""

from __future__ import annotations

import logging
import threading

import pytest
import trio
import trio.testing

from coord.cli import _leaves
from coord.raft.config import RaftConfig
from coord.raft.types import Entry, EntryKind, HardState, Membership, Ready, Snapshot, SnapshotMeta
from coord.server.diskspace import Backoff, DiskSpace, transfer_target
from coord.server.diskwriter import DiskWriter, SaveSnapshot
from coord.server.raftnode import CommitUnknown, DiskFull, NodeOptions, NotLeader, RaftNode
from coord.storage import DiskIOError, NoSpaceError


# -- the policy ---------------------------------------------------------------------------

def test_backoff_doubles_from_50_ms_to_2_s_and_resets():
    b = Backoff()
    assert [b.next() for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    b.reset()
    assert b.next() == 0.05


def test_disk_full_is_said_once_then_reminded_every_60_s(caplog):
    now = [100.0]
    space = DiskSpace(7, clock=lambda: now[0], free=lambda path: 12345)
    err = NoSpaceError("write to /data/wal/wal-1.seg", OSError(28, "No space left on device"),
                       path="/data/wal/wal-1.seg")
    with caplog.at_level(logging.INFO, logger="coord.disk"):
        delays = []
        for _ in range(200):  # a retry every half second for 100 s
            delays.append(space.failed(err))
            now[0] += 0.5
        assert space.full and space.times_full == 1
        full_lines = [r.getMessage() for r in caplog.records if "DISK FULL" in r.getMessage()]
        assert len(full_lines) == 2  # the first failure, one reminder after 60 s
        assert "wal-1.seg" in full_lines[0] and "12.1 KiB" in full_lines[0]
        assert delays[:3] == [0.05, 0.1, 0.2] and max(delays) == 2.0
        assert space.seconds_full == pytest.approx(100.0)
        assert "disk full" in space.describe()
        space.recovered()
        assert any("disk space is back" in r.getMessage() for r in caplog.records)
    assert not space.full and space.describe() == "the disk accepts writes"
    now[0] += 50
    assert space.seconds_full == pytest.approx(100.0)  # only while full
    space.failed(err)
    assert space.times_full == 2 and space.backoff.next() == 0.1  # a new spell starts over


def test_a_full_leader_hands_over_to_an_active_up_to_date_voter():
    prog = {1: {"match": 10, "active": True}, 2: {"match": 10, "active": False}, 3: {"match": 9, "active": True},
            4: {"match": 10, "active": True, "recovering": True}}
    assert transfer_target(1, [1, 2, 3, 4], prog, 10) == 3  # 2 does not answer (its disk may be full too)
    prog[3]["match"] = 10
    prog[5] = {"match": 10, "active": True}
    assert transfer_target(1, [1, 2, 3, 4, 5], prog, 10) == 3  # ties: the lowest id
    assert transfer_target(1, [1], prog, 10) is None


# -- the disk thread ----------------------------------------------------------------------

class FullStore:
    """A LogStore that records calls and has room for ``room`` more writes
    (saves and snapshots; None: unlimited)."""

    def __init__(self, room: int | None = None):
        self.calls = []
        self.room = room
        self.failures = 0

    @property
    def full(self) -> bool:
        return self.room == 0

    @full.setter
    def full(self, value: bool) -> None:
        self.room = 0 if value else None

    def _use(self, what):
        if self.room is not None:
            if self.room == 0:
                self.failures += 1
                raise NoSpaceError(f"{what}: no space", OSError(28, "No space left on device"), path="/d/wal")
            self.room -= 1

    def save(self, hs, entries, snapshot):
        self._use("save")
        self.calls.append(("save", hs, [e.index for e in entries], snapshot is not None))

    def save_snapshot(self, snapshot):
        self._use("snapshot")
        self.calls.append(("snapshot", snapshot.meta.index))

    def compact(self, index):
        self.calls.append(("compact", index))


def ents(lo, hi, term=1):
    return [Entry(term, i) for i in range(lo, hi + 1)]


def snap(i):
    return Snapshot(SnapshotMeta(i, 1, Membership(voters=frozenset({1}))), b"s")


def test_the_failed_step_and_the_rest_are_done_as_planned_when_resumed():
    st = FullStore(room=1)  # the first save goes through, then the disk is full
    w = DiskWriter(st, HardState(1, 1, 0))
    batch = [Ready(hard_state=HardState(1, 1, 1), entries=ents(1, 2)), SaveSnapshot(snap(2), 2),
             Ready(entries=ents(3, 4))]
    with pytest.raises(NoSpaceError):
        w.write_batch(batch)
    assert st.calls == [("save", HardState(1, 1, 1), [1, 2], False)]
    with pytest.raises(RuntimeError):
        w.write_batch([Ready(entries=ents(5, 5))])  # nothing new before the failed step is done
    with pytest.raises(NoSpaceError):
        w.resume()  # still full: nothing skipped, nothing done twice
    assert len(st.calls) == 1
    st.full = False
    w.resume()
    assert st.calls == [("save", HardState(1, 1, 1), [1, 2], False), ("snapshot", 2), ("compact", 2),
                        ("save", None, [3, 4], False)]
    w.write_batch([Ready(entries=ents(5, 5))])
    assert st.calls[-1] == ("save", None, [5], False) and w.fsyncs == 3


def test_the_thread_waits_for_retry_reports_nothing_before_and_goes_on_in_order():
    st = FullStore()
    st.full = True
    w = DiskWriter(st, HardState())
    done, failed, full = [], [], []
    reported = threading.Event()

    def on_full(exc):
        full.append(exc)
        reported.set()

    w.start(lambda b: done.append(b) or True, failed.append, on_full)
    w.submit([Ready(entries=ents(1, 1))])
    assert reported.wait(5)
    w.submit([Ready(entries=ents(2, 2))])  # queued behind the failed write
    reported.clear()
    w.retry()  # still full
    assert reported.wait(5) and len(full) == 2 and not done
    st.full = False
    w.retry()
    w.stop()
    w.join()
    assert not failed
    assert [e.index for b in done for rd in b for e in rd.entries] == [1, 2]
    assert [c[2] for c in st.calls] == [[1], [2]]


def test_stopping_while_the_disk_is_full_abandons_the_unacknowledged_write():
    st = FullStore()
    st.full = True
    w = DiskWriter(st, HardState())
    reported = threading.Event()
    done = []
    w.start(lambda b: done.append(b) or True, lambda e: None, lambda e: reported.set())
    w.submit([Ready(entries=ents(1, 1))])
    assert reported.wait(5)
    w.stop()
    w.join()  # returns: nobody waits for space that may never come
    assert not done and st.calls == []


def test_without_on_full_a_full_disk_is_a_failure():
    st = FullStore()
    st.full = True
    w = DiskWriter(st, HardState())
    failed = []
    w.start(lambda b: True, failed.append)
    w.submit([Ready(entries=ents(1, 1))])
    w.join()
    assert len(failed) == 1 and isinstance(failed[0], NoSpaceError)


# -- the driver -----------------------------------------------------------------------------

class MemStore:
    """A LogStore in memory with a switch for a full disk (or a broken one)."""

    def __init__(self):
        self.full = False
        self.broken = False
        self.saved: dict[int, Entry] = {}
        self.failures = 0

    def save(self, hard_state, entries, snapshot):
        if self.broken:
            raise DiskIOError("fsync of /data/wal/wal-1.seg (stop the server)", OSError(5, "Input/output error"),
                              path="/data/wal/wal-1.seg")
        if self.full:
            self.failures += 1
            raise NoSpaceError("write to /data/wal/wal-1.seg", OSError(28, "No space left on device"),
                               path="/data/wal/wal-1.seg")
        for e in entries:
            for i in [i for i in self.saved if i >= e.index]:
                del self.saved[i]
        for e in entries:
            self.saved[e.index] = e

    def save_snapshot(self, snapshot):
        if self.full:
            raise NoSpaceError("snapshot: no space")

    def compact(self, index):
        pass


class Applied:
    """A state machine: the applied payloads in order."""

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

    def sender(self, src: int):
        def send(m):
            dst = self.nodes.get(m.to)
            if dst is not None:
                dst.deliver(m)
        return send


def make_nodes(n: int, net: Net) -> None:
    m = Membership(voters=frozenset(range(1, n + 1)))
    for i in range(1, n + 1):
        net.nodes[i] = RaftNode(
            i, store=MemStore(), recovered_hard_state=HardState(), recovered_snapshot=None, recovered_entries=[],
            bootstrap=m, state_machine=Applied(), send=net.sender(i),
            raft_config=RaftConfig(election_ticks=10, heartbeat_ticks=2),
            options=NodeOptions(tick_seconds=0.05, snapshot_entries=10_000), seed=i)


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.01)


async def start_all(nursery, net: Net) -> None:
    for node in net.nodes.values():
        nursery.start_soon(node.run)


async def until(pred, timeout: float = 30.0, step: float = 0.05) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


async def the_leader(net: Net) -> RaftNode:
    def agreed():
        ls = {n.leader_id for n in net.nodes.values()}
        return len(ls) == 1 and 0 not in ls and net.nodes[ls.pop()].is_leader
    await until(agreed)
    return next(n for n in net.nodes.values() if n.is_leader)


async def propose(node: RaftNode, data: bytes) -> int:
    return await node.propose(data).wait()


def assert_same_applied_once(net: Net, expected_acked: list[bytes]) -> None:
    seqs = [n.sm.applied for n in net.nodes.values()]
    assert all(s == seqs[0] for s in seqs), seqs
    assert len(set(seqs[0])) == len(seqs[0])  # no entry applied twice
    assert set(expected_acked) <= set(seqs[0])  # nothing acknowledged lost


async def test_a_lone_leader_with_a_full_disk_refuses_proposals_keeps_leading_and_resumes(clock):
    net = Net()
    make_nodes(1, net)
    node = net.nodes[1]
    async with trio.open_nursery() as nursery:
        await start_all(nursery, net)
        await until(lambda: node.is_leader)
        assert await propose(node, b"a") == 1
        node.disk.store.full = True
        pending = node.propose(b"b")  # accepted before the disk was known to be full
        await until(lambda: node.disk_full)
        with pytest.raises(DiskFull):
            node.propose(b"c")
        with pytest.raises(DiskFull):
            await node.propose_membership([1], [2]).wait()
        with trio.fail_after(1):
            # A read barrier needs no disk: it reads what is applied (b is not committed: not on disk).
            assert await node.read_index().wait() == node.applied_index
        term = node.term
        await trio.sleep(30)  # 600 ticks: still the leader, retrying every 2 s at most
        assert node.is_leader and node.term == term and node.disk_full
        assert 10 <= node.disk.store.failures <= 30
        assert not pending.done and node.sm.applied == [b"a"]  # nothing applied before it is on disk
        assert node.diskspace.seconds_full >= 30
        node.disk.store.full = False
        assert await pending.wait() == 2  # the very write that failed, now done: acknowledged once
        assert not node.disk_full and node.diskspace.times_full == 1
        assert await propose(node, b"d") == 3
        nursery.cancel_scope.cancel()
    assert node.sm.applied == [b"a", b"b", b"d"]


async def test_a_follower_with_a_full_disk_stops_acknowledging_and_catches_up_by_itself(clock):
    net = Net()
    make_nodes(3, net)
    async with trio.open_nursery() as nursery:
        await start_all(nursery, net)
        leader = await the_leader(net)
        acked = [b"w%d" % k for k in range(5)]
        for d in acked:
            await propose(leader, d)
        follower = next(n for n in net.nodes.values() if n is not leader)
        follower.disk.store.full = True
        more = [b"x%d" % k for k in range(20)]
        for d in more:  # committed by the leader and the other follower
            await propose(leader, d)
        acked += more
        await until(lambda: follower.disk_full)
        stuck = follower.applied_index
        term = leader.term
        await trio.sleep(10)
        assert leader.is_leader and leader.term == term and follower.leader_id == leader.node_id  # no election
        assert follower.applied_index == stuck < leader.applied_index and follower.disk_full
        follower.disk.store.full = False
        await until(lambda: follower.applied_index == leader.applied_index and not follower.disk_full)
        assert_same_applied_once(net, acked)
        nursery.cancel_scope.cancel()


async def test_a_leader_with_a_full_disk_hands_over_and_the_others_go_on(clock):
    net = Net()
    make_nodes(3, net)
    async with trio.open_nursery() as nursery:
        await start_all(nursery, net)
        leader = await the_leader(net)
        acked = [b"w%d" % k for k in range(5)]
        for d in acked:
            await propose(leader, d)
        leader.disk.store.full = True
        f = leader.propose(b"in flight")  # committed by the followers, not on the leader's disk
        await until(lambda: leader.disk_full)
        await until(lambda: not leader.is_leader and leader.leader_id not in (0, leader.node_id), timeout=10)
        new = await the_leader(net)
        assert new is not leader
        with pytest.raises((CommitUnknown, DiskFull)):
            await f.wait()  # the proposer learns the outcome is unknown (it may have committed)
        with pytest.raises(NotLeader):
            leader.propose(b"no")
        after = [b"y%d" % k for k in range(10)]
        for d in after:
            await propose(new, d)
        acked += after
        assert leader.disk_full and leader.applied_index < new.applied_index
        leader.disk.store.full = False
        await until(lambda: leader.applied_index == new.applied_index and not leader.disk_full)
        assert_same_applied_once(net, acked)
        nursery.cancel_scope.cancel()


async def test_a_failed_fsync_stops_the_node(clock):
    net = Net()
    make_nodes(1, net)
    node = net.nodes[1]
    with pytest.raises(BaseException) as info:
        async with trio.open_nursery() as nursery:
            await start_all(nursery, net)
            await until(lambda: node.is_leader)
            node.disk.store.broken = True
            node.propose(b"x")
            await trio.sleep(60)
            pytest.fail("the node kept running after a failed fsync")
    (err,) = [e for e in _leaves(info.value) if isinstance(e, DiskIOError)]
    assert "wal-1.seg" in str(err) and err.path == "/data/wal/wal-1.seg"
    assert node.sm.applied == []


# -- the process: what an operator reads ------------------------------------------------------

@pytest.mark.parametrize("strict", [True, False])
def test_coord_serve_exits_74_naming_the_file_when_a_write_or_fsync_fails(tmp_path, monkeypatch, strict):
    from click.testing import CliRunner

    import coord.server.app
    from coord.cli import EXIT_IO_ERROR, main
    from tests.cluster import Cluster

    cluster = Cluster(1, tmp_path)
    cluster.write_config(1)
    err = DiskIOError("fsync of /data/wal/wal-00000000000000000001.seg (stop the server)",
                      OSError(5, "Input/output error"), path="/data/wal/wal-00000000000000000001.seg")

    def run_app(cfg):
        if strict:  # as Trio's nurseries deliver it: wrapped, next to a cancelled sibling
            raise BaseExceptionGroup("nursery", [ExceptionGroup("inner", [err]), trio.Cancelled._create()])
        raise err

    monkeypatch.setattr(coord.server.app, "run_app", run_app)
    res = CliRunner().invoke(main, ["serve", "--config", cluster.config_path(1)])
    assert res.exit_code == EXIT_IO_ERROR == 74, res.output
    out = res.output
    assert "server 1 stopped" in out and "wal-00000000000000000001.seg" in out and "Input/output error" in out
    assert "Traceback" not in out and "ExceptionGroup" not in out
