"""Questions between members over the peer links (coord/server/info.py), on
virtual time: answers arrive, silence and down links cost at most the
timeout, questions outstanding are bounded, and answers from the wrong
member or after the timeout are ignored."""

from __future__ import annotations

import cbor2
import pytest
import trio

from coord.server.info import MAX_PENDING, MemberInfo
from coord.transport.envelope import InfoQuery, InfoReply, decode_info


class Link:
    """Two or more MemberInfo wired to each other; messages are delivered
    after ``delay`` seconds, or dropped while ``up`` says a member is down."""

    def __init__(self, nursery: trio.Nursery, delay: float = 0.01):
        self.nursery = nursery
        self.delay = delay
        self.members: dict[int, MemberInfo] = {}
        self.up: dict[int, bool] = {}
        self.sent: list = []
        self.answer_queries = True

    def add(self, sid: int, answers: dict) -> MemberInfo:
        m = MemberInfo(sid, self.send, lambda pid: self.up.get(pid, False), answers)
        self.members[sid] = m
        self.up[sid] = True
        return m

    def send(self, msg) -> None:
        self.sent.append(msg)
        if self.up.get(msg.to) and (type(msg) is InfoReply or self.answer_queries):
            self.nursery.start_soon(self._deliver, msg)

    async def _deliver(self, msg) -> None:
        await trio.sleep(self.delay)
        m = self.members[msg.to]
        (m.on_query if type(msg) is InfoQuery else m.on_reply)(msg)


def status_of(sid):
    return lambda: {"server_id": sid, "role": "follower", "progress": {1: {"lag": 0}}}


async def test_a_member_answers_with_its_document(nursery, autojump_clock):
    link = Link(nursery)
    a = link.add(1, {"status": status_of(1)})
    link.add(2, {"status": status_of(2)})
    got = await a.ask(2, "status", timeout=0.5)
    assert got == {"server_id": 2, "role": "follower", "progress": {"1": {"lag": 0}}}
    assert a.pending_to(2) == 0 and a.unanswered == 0


async def test_unknown_kind_and_failing_answer_get_an_error_document(nursery, autojump_clock):
    def broken():
        raise RuntimeError("boom")

    link = Link(nursery)
    a = link.add(1, {})
    link.add(2, {"status": broken, "huge": lambda: {"x": "y" * (2 << 20)}})
    assert "unknown query 'connections'" in (await a.ask(2, "connections", timeout=0.5))["error"]
    assert "RuntimeError" in (await a.ask(2, "status", timeout=0.5))["error"]
    assert "ValueError" in (await a.ask(2, "huge", timeout=0.5))["error"]


async def test_silence_costs_the_timeout_and_a_down_link_costs_nothing(nursery, autojump_clock):
    link = Link(nursery)
    a = link.add(1, {})
    link.add(2, {"status": status_of(2)})
    link.answer_queries = False  # the query is lost
    t0 = trio.current_time()
    assert await a.ask(2, "status", timeout=0.5) is None
    assert trio.current_time() - t0 == pytest.approx(0.5) and a.unanswered == 1 and a.pending_to(2) == 0
    link.up[2] = False
    before = len(link.sent)
    t0 = trio.current_time()
    assert await a.ask(2, "status", timeout=0.5) is None
    assert trio.current_time() == t0 and len(link.sent) == before  # nothing queued for a link that is down
    assert await a.ask(1, "status", timeout=0.5) is None  # never itself


async def test_questions_outstanding_per_peer_are_bounded(nursery, autojump_clock):
    link = Link(nursery)
    a = link.add(1, {})
    link.add(2, {"status": status_of(2)})
    link.answer_queries = False
    results: list = []

    async def one():
        results.append(await a.ask(2, "status", timeout=1.0))

    async with trio.open_nursery() as n:
        for _ in range(MAX_PENDING + 5):
            n.start_soon(one)
        await trio.sleep(0.1)
        assert a.pending_to(2) == MAX_PENDING
    queries = [m for m in link.sent if type(m) is InfoQuery]
    assert len(queries) == MAX_PENDING and results == [None] * (MAX_PENDING + 5)


async def test_answers_from_another_member_late_or_malformed_are_not_taken(nursery, autojump_clock):
    link = Link(nursery, delay=0.3)
    a = link.add(1, {})
    link.add(2, {"status": status_of(2)})
    link.add(3, {"status": status_of(3)})

    async def forge():
        await trio.sleep(0.05)
        qid = next(m.qid for m in link.sent if type(m) is InfoQuery)
        a.on_reply(InfoReply(3, 1, qid, cbor2.dumps({"server_id": 3, "forged": True})))  # not who was asked
        a.on_reply(InfoReply(2, 1, qid, b"\xff"))  # who was asked, but garbage: the question ends unanswered

    nursery.start_soon(forge)
    assert await a.ask(2, "status", timeout=1.0) is None
    assert a.unanswered == 0  # it ended on the bad answer, not on the timeout
    # Member 2's real answer arrives after that: nobody waits for it any more.
    await trio.sleep(0.5)
    assert a.pending_to(2) == 0
    assert await a.ask(2, "status", timeout=0.1) is None  # too slow for this timeout
    await trio.sleep(0.5)  # its late answer is dropped without effect
    assert decode_info(next(m.body for m in reversed(link.sent) if type(m) is InfoReply))["server_id"] == 2
