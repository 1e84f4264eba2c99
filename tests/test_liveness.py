"""A follower's right to keep client sessions (coord.server.liveness).

A follower keeps a session's client only while the leader is known to
hear its keepalives: it drops the client at most half the session's own
timeout after the newest keepalive batch the leader acknowledged was sent.
Each session by its own timeout: a leader busy enough to acknowledge late
must not make a follower drop every client after half the shortest
timeout, which turned a CPU-saturated ensemble into a reconnect storm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from coord.raft.types import Role, SoftState
from coord.server.liveness import SessionLiveness
from coord.transport.envelope import SessionTouches, TouchAck


@dataclass
class FollowerNode:
    """What SessionLiveness reads of a RaftNode: a follower of server 1."""

    leader_id: int = 1
    is_leader: bool = False
    term: int = 3

    @property
    def soft(self) -> SoftState:
        return SoftState(self.leader_id, Role.FOLLOWER, self.term)


@dataclass
class Dropped:
    reasons: list[str] = field(default_factory=list)


def follower(dropped: Dropped, sent: list) -> SessionLiveness:
    return SessionLiveness(2, FollowerNode(), ns=None, writes=None, send=sent.append,
                           min_session_timeout=10.0, write_timeout=5.0, drop_session_clients=dropped.reasons.append)


async def test_each_session_is_held_to_half_its_own_timeout(autojump_clock):
    dropped, sent = Dropped(), []
    lv = follower(dropped, sent)
    lv.on_period(trio.current_time(), False, nursery=None)  # sends batch 1 to the leader
    batch = sent[-1]
    assert isinstance(batch, SessionTouches) and batch.to == 1
    lv.on_ack(TouchAck(1, 2, batch.seq))
    await trio.sleep(4.9)
    assert lv.reaches_leader() and lv.reaches_leader(60.0)
    await trio.sleep(0.2)  # 5.1 s since the acknowledged batch was sent: half of the shortest timeout passed
    assert not lv.reaches_leader()  # a new session (or a 10 s one) is not vouched for
    assert not lv.reaches_leader(10.0)
    assert lv.reaches_leader(60.0)  # a 60 s session is, until 30 s
    await trio.sleep(24.8)
    assert lv.reaches_leader(60.0)
    await trio.sleep(0.2)
    assert not lv.reaches_leader(60.0)


async def test_an_acknowledgement_from_another_server_counts_for_nothing(autojump_clock):
    dropped, sent = Dropped(), []
    lv = follower(dropped, sent)
    lv.on_period(trio.current_time(), False, nursery=None)
    lv.on_ack(TouchAck(3, 2, sent[-1].seq))  # server 3 is not the leader
    assert not lv.reaches_leader(60.0)


async def test_the_period_asks_to_drop_only_when_some_session_may_be_due(autojump_clock):
    dropped, sent = Dropped(), []
    lv = follower(dropped, sent)
    lv.on_period(trio.current_time(), False, nursery=None)
    assert len(dropped.reasons) == 1  # nothing acknowledged yet: asked to check
    dropped.reasons.clear()
    lv.on_ack(TouchAck(1, 2, sent[-1].seq))
    for _ in range(3):
        await trio.sleep(lv.period)
        lv.on_period(trio.current_time(), False, nursery=None)
    assert dropped.reasons == []  # acknowledged 3.75 s ago: nobody is due
    await trio.sleep(2)  # no acknowledgement of the later batches
    lv.on_period(trio.current_time(), False, nursery=None)
    assert dropped.reasons == ["this server cannot reach the leader right now"]


async def test_an_election_alone_drops_nobody(autojump_clock):
    dropped, sent = Dropped(), []
    lv = follower(dropped, sent)
    lv.on_period(trio.current_time(), False, nursery=None)
    lv.on_ack(TouchAck(1, 2, sent[-1].seq))
    lv.node.leader_id = 0  # the leader died; an election is on
    await trio.sleep(1)
    assert lv.reaches_leader(10.0)  # the old leader cannot have expired anybody yet; a new one resets timers
    await trio.sleep(4.2)
    assert not lv.reaches_leader(10.0)  # but not for ever: no leader for half the timeout
