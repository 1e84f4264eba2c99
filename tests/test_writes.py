"""The write path of one server (coord/server/writes.py), against a fake node.

The fake node records proposals; a test plays the leader's and the state
machine's part by hand: it "applies" entries (which answers the write that
names this server) and sends rejections.  Time is Trio's MockClock.
"""

import pytest
import trio
import trio.testing

from coord.namespace.commands import Command, Create, decode_entry, encode, parse_request
from coord.raft.types import ProposalDropped, Role, SoftState
from coord.server.writes import WritePath
from coord.transport.envelope import Forward, ForwardRejected
from coordclient.errors import NotLeaderError, OperationTimeoutError


class FakeNode:
    def __init__(self, me: int, leader: int = 0):
        self.me = me
        self.proposed: list[bytes] = []
        self.refuse = False
        self.set_leader(leader)

    def set_leader(self, leader: int) -> None:
        self.soft = SoftState(leader, Role.LEADER if leader == self.me else Role.FOLLOWER, 1)

    @property
    def is_leader(self) -> bool:
        return self.soft.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        return self.soft.leader

    def propose_nowait(self, data: bytes) -> None:
        if not self.is_leader or self.refuse:
            raise ProposalDropped("not the leader", self.leader_id)
        self.proposed.append(data)


def cmd(path: str = "/a", seq: int = 1) -> bytes:
    return encode(Command("create", Create(path), sid=7, seq=seq))


def make(me=2, leader=1, **kw):
    node = FakeNode(me, leader)
    sent: list = []
    wp = WritePath(me, node, sent.append, timeout=5.0, clock=lambda: 1.5, **kw)
    return wp, node, sent


async def settle():
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0)


async def test_the_leader_proposes_the_bytes_behind_a_header_and_answers_at_apply():
    wp, node, sent = make(me=1, leader=1)
    f = wp.submit(cmd())
    (entry,) = node.proposed
    lc = decode_entry(entry)
    assert (lc.origin, lc.command.t, lc.command.body) == (1, 1500, Create("/a"))
    assert entry.endswith(cmd())  # the command's bytes travel unchanged
    assert not f.done
    wp.applied(3, lc.rid, 10, {"ok": True})  # another server's write: not ours
    assert not f.done
    wp.applied(1, lc.rid, 11, {"ok": True, "r": {}})
    assert f.result() == (11, {"ok": True, "r": {}})
    assert not sent


async def test_a_follower_forwards_a_scheduler_pass_worth_in_one_message():
    wp, node, sent = make(me=2, leader=1)
    futures = [wp.submit(cmd(f"/n{k}", seq=k + 1)) for k in range(5)]
    assert not sent  # flushed once per scheduler pass, not per write
    await settle()
    (fw,) = sent
    assert isinstance(fw, Forward) and (fw.frm, fw.to) == (2, 1)
    assert [data for _, data in fw.items] == [cmd(f"/n{k}", seq=k + 1) for k in range(5)]
    # The follower answers each write when it applies the entry naming it.
    for (rid, _), f in zip(fw.items, futures):
        wp.applied(2, rid, rid % 1000, {"ok": True, "r": {"path": "x"}})
        assert f.done and f.result()[1]["ok"]


async def test_the_leader_side_wraps_forwarded_bytes_and_rejects_what_it_cannot_propose():
    wp, node, sent = make(me=1, leader=1)
    wp.on_forward(Forward(2, 1, ((5, cmd("/x")), (6, cmd("/y")))))
    assert [decode_entry(e).origin for e in node.proposed] == [2, 2]
    assert [decode_entry(e).rid for e in node.proposed] == [5, 6]
    node.refuse = True
    wp.on_forward(Forward(3, 1, ((9, cmd("/z")),)))
    (rej,) = sent
    assert isinstance(rej, ForwardRejected) and rej.to == 3 and rej.items == ((9, "not the leader"),)


async def test_a_rejection_or_a_leader_change_ends_pending_writes_with_a_retryable_error():
    wp, node, sent = make(me=2, leader=1)
    a, b = wp.submit(cmd("/a")), wp.submit(cmd("/b", seq=2))
    await settle()
    (fw,) = sent
    wp.on_rejected(ForwardRejected(1, 2, 3, ((fw.items[0][0], "transfer in progress"),)))
    with pytest.raises(NotLeaderError, match="transfer in progress"):
        a.result()
    node.set_leader(3)
    wp.leader_changed(3)
    with pytest.raises(NotLeaderError, match="may or may not"):
        b.result()
    # A late entry for it changes nothing.
    wp.applied(2, fw.items[1][0], 20, {"ok": True})


async def test_without_a_leader_writes_wait_for_one_then_go_to_it():
    wp, node, sent = make(me=2, leader=0)
    f = wp.submit(cmd())
    await settle()
    assert not sent and not f.done
    node.set_leader(3)
    wp.leader_changed(3)
    await settle()
    (fw,) = sent
    assert fw.to == 3 and fw.items[0][1] == cmd()


async def test_writes_past_their_deadline_time_out(autojump_clock):
    wp, node, sent = make(me=2, leader=0)
    f = wp.submit(cmd())
    await trio.sleep(4)
    wp.expire(trio.current_time())
    assert not f.done
    await trio.sleep(2)
    wp.expire(trio.current_time())
    with pytest.raises(OperationTimeoutError):
        f.result()


async def test_leader_only_writes_are_never_forwarded():
    wp, node, sent = make(me=2, leader=1)
    f = wp.submit(cmd(), leader_only=True)
    await settle()
    assert not sent
    with pytest.raises(NotLeaderError):
        f.result()


async def test_pending_writes_are_bounded_and_push_back():
    wp, node, sent = make(me=1, leader=1, max_pending=3)
    futures = [wp.submit(cmd(seq=k + 1)) for k in range(3)]
    assert wp.full
    released = []

    async def reader():
        await wp.wait_room()
        released.append(True)

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await settle()
        assert not released  # the connection's reader stops reading
        rid = decode_entry(node.proposed[0]).rid
        wp.applied(1, rid, 5, {"ok": True, "r": {}})
        await settle()
        assert released and futures[0].done and not wp.full


def test_requests_parse_straight_into_the_one_schema():
    c = parse_request({"id": 4, "op": "set", "path": "/p", "data": b"x", "version": 3, "seq": 9}, sid=5, limit=10)
    assert (c.op, c.sid, c.seq, c.body.path, c.body.data, c.body.version) == ("set", 5, 9, "/p", b"x", 3)
    assert decode_entry(encode(c)).command == c  # a version-1 style read of the same bytes


async def test_a_server_whose_disk_is_full_refuses_writes_with_no_space_at_once():
    from coordclient.errors import NoSpaceError

    for me, leader in ((1, 1), (2, 1)):  # as leader, and as a follower (it could not apply them)
        wp, node, sent = make(me=me, leader=leader)
        node.disk_full = True
        f = wp.submit(cmd())
        assert f.done and isinstance(f.error, NoSpaceError) and "disk is full" in str(f.error)
        assert not node.proposed
        await settle()
        assert not sent  # nothing forwarded either
        node.disk_full = False
        wp.submit(cmd(seq=2))
        await settle()
        assert node.proposed or sent  # space is back: writes go through again
