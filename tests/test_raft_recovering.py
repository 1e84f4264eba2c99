"""A server that lost part of its log must not vote until it is whole again.

The storage refuses to start on a shortened log unless the operator passes
``--recover-lost-log``; the core then starts with ``HardState.recovering``.
These scenarios show why (a server that votes on a shortened log can elect a
leader without committed entries) and how the flag prevents it and clears.
"""

import random

import pytest

from coord.raft.config import RaftConfig
from coord.raft.core import RECOVERED, RaftCore
from coord.raft.types import ConfChangeError, HardState, Membership, Message, MsgType, Role
from tests.sim.checkers import LogView
from tests.sim.harness import Cluster


def cfg() -> RaftConfig:
    return RaftConfig(election_ticks=10, heartbeat_ticks=1)


def restart_with_lost_suffix(c: Cluster, nid: int, keep: int, *, recovering: bool) -> RaftCore:
    """Restart ``nid`` as if its disk lost every entry after ``keep``."""
    old = c[nid]
    ents = [e for e in c.logs[nid].entries if e.index <= keep]
    hs = HardState(old.term, old.vote, min(old.commit_index, keep), recovering=recovering)
    core = RaftCore(nid, c.config, random.Random(nid), hard_state=hs, entries=ents,
                    membership=Membership(voters=frozenset(c.cores)))
    c.cores[nid] = core
    c.logs[nid] = LogView(0, 0, ents)
    c.queue = type(c.queue)(m for m in c.queue if m.to != nid and m.frm != nid)  # its connections died
    return core


def committed_on_1_and_2_only() -> Cluster:
    """Leader 1 commits entries 2..6 with server 2's acknowledgements; 3 never sees them."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    c.blocked |= {(1, 3), (3, 1)}
    for k in range(5):
        c[1].propose(b"w%d" % k)
    c.stabilize()
    assert c[1].commit_index == 6 and c[2].last_index == 6 and c[3].last_index == 1
    return c


@pytest.mark.parametrize("recovering", [False, True])
def test_a_server_voting_on_a_shortened_log_can_lose_committed_entries(recovering):
    c = committed_on_1_and_2_only()
    restart_with_lost_suffix(c, 2, 1, recovering=recovering)
    c.isolate(1)  # the only other copy of entries 2..6 is now unreachable
    c.heal(3)
    c.blocked |= {(1, 2), (2, 1), (1, 3), (3, 1)}
    c.sent.clear()
    c[3].campaign()
    c.stabilize()
    if recovering:
        assert c[3].role is not Role.LEADER  # 2 refuses: nobody lacking 2..6 can lead
        assert c.count(MsgType.VOTE_RESP, frm=2, reject=False) == 0
        for _ in range(5):  # and 2 never campaigns itself
            c.tick([2], n=20)
            assert c[2].role is Role.FOLLOWER
    else:
        # What coord did before refusing shortened logs: committed entries gone.
        assert c[3].role is Role.LEADER and c[3].last_index < 6


def test_the_leader_repairs_a_recovering_follower_which_then_votes_again():
    c = committed_on_1_and_2_only()
    c.heal()
    c.stabilize()
    core = restart_with_lost_suffix(c, 2, 2, recovering=True)
    assert core.recovering
    # Same leader, same term: the leader believed 2 held 1..6 (match = 6).
    # 2's rejections say it is recovering, so the leader forgets that match
    # and sends the entries again, then confirms 2 is whole.
    c.tick([1], n=2)
    c.stabilize()
    assert c.log_terms(2) == c.log_terms(1)
    assert not c[2].recovering
    rd_flags = c[2]._saved_hs
    assert rd_flags.recovering is False  # the cleared flag was handed out to be persisted
    assert c.count(MsgType.APPEND_RESP, frm=2) > 0
    # 2 votes again: with 1 gone, 2 and 3 elect a leader between them.
    c.isolate(1)
    c.tick([2, 3], n=30)
    new = c.leader()
    assert new in (2, 3) and c[new].commit_index >= 6


def test_a_recovering_server_is_not_a_transfer_target_and_blocks_changes_needing_it():
    c = Cluster.of(3, cfg())
    c.elect(1)
    c[1].propose(b"x")
    c.stabilize()
    restart_with_lost_suffix(c, 2, 1, recovering=True)
    c.drop = lambda m: m.context == RECOVERED  # the last step of the repair is held back
    c.tick([1], n=2)
    c.stabilize()
    assert c[2].recovering and c[1].prs[2].recovering
    with pytest.raises(ConfChangeError, match="recovering"):
        c[1].transfer_leadership(2)
    with pytest.raises(ConfChangeError, match=r"\[2\]"):
        c[1].propose_membership([1, 2])  # {1, 2} needs 2's vote
    c[1].propose_membership([1, 2, 3], learners=[4])  # a change that does not need it is fine


def test_a_sole_voter_recovering_has_nobody_to_wait_for():
    c = Cluster.of(1, cfg())
    c.elect(1)
    c[1].propose(b"x")
    c.stabilize()
    restart_with_lost_suffix(c, 1, 1, recovering=True)
    c.tick([1], n=25)
    assert c[1].role is Role.LEADER and not c[1].recovering


def test_heartbeat_replies_say_a_follower_is_recovering():
    """An idle leader that believed a follower held everything it sent hears
    nothing but heartbeat replies from it after it restarted on a shortened
    log (the commit index it is sent is within what it kept).  Those replies
    must say it is recovering, or the leader lets through a change that
    needs its vote (lossy driver seed 3167's mechanism)."""
    c = Cluster.of(5, cfg())
    c.elect(1)
    c[1].propose(b"a")
    c.stabilize()
    assert c[1].commit_index == 2
    # 3 alone acknowledges entry 3: the leader counts it at 3 but cannot commit it.
    for other in (2, 4, 5):
        c.isolate(other)
    c[1].propose(b"b")
    c.stabilize()
    assert c[1].prs[3].match == 3 and c[1].commit_index == 2
    restart_with_lost_suffix(c, 3, 2, recovering=True)
    c.drop = lambda m: m.context == RECOVERED  # the last step of the repair is held back
    c.tick([1], n=3)  # heartbeats at commit 2: 3 has it, so only heartbeat replies come back
    assert c[1].prs[3].recovering and c[3].last_index == 3  # it learned, and sent entry 3 again
    with pytest.raises(ConfChangeError, match=r"\[3\]"):
        c[1].propose_membership([1, 3])


@pytest.mark.parametrize("kind", [MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT])
def test_every_reply_of_a_recovering_follower_says_so(kind):
    """Whatever the leader sends it, a recovering follower's reply says it is
    recovering, and the leader then counts it out of membership changes.
    (Seed 3167: the restarted server was being sent a snapshot, so it sent
    only heartbeat and snapshot replies until after the leader had removed
    itself, leaving voters {2, 3}.)"""
    c = Cluster.of(3, cfg())
    c.elect(1)
    c[1].propose(b"a")
    c.stabilize()
    assert c[1].prs[3].heard and not c[1].prs[3].recovering
    restart_with_lost_suffix(c, 3, 2, recovering=True)
    t, commit = c[1].term, c[1].commit_index
    msg = {
        MsgType.APPEND: Message(MsgType.APPEND, 1, 3, t, index=commit, log_term=t, commit=commit),
        MsgType.HEARTBEAT: Message(MsgType.HEARTBEAT, 1, 3, t, commit=commit),
        MsgType.SNAPSHOT: Message(MsgType.SNAPSHOT, 1, 3, t, index=commit, log_term=t,
                                  membership=c[1].membership, data=b"s", done=True),
    }[kind]
    c[3].step(msg)
    replies = c[3].ready().messages_after_persist
    assert replies
    for r in replies:
        c[1].step(r)
    assert c[1].prs[3].recovering
    with pytest.raises(ConfChangeError, match=r"\[3\]"):
        c[1].propose_membership([2, 3])


def test_a_removed_leader_stays_until_its_successors_can_elect_a_leader():
    """A change can be proposed before the leader hears that a voter restarted
    recovering.  A leader that removed itself must not step down while a
    quorum of C_new needs a voter that still cannot vote: nobody else could
    ever repair it, and no leader could ever be elected again."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    for k in range(3):
        c[1].propose(b"w%d" % k)
    c.stabilize()
    restart_with_lost_suffix(c, 3, 2, recovering=True)
    c[1].propose_membership([2, 3])  # 1 still believes 3 holds everything
    c.drop = lambda m: m.context == RECOVERED  # the repair's last step is lost, for now
    c.stabilize()
    c.tick([1, 2, 3], n=5)
    assert c[1].membership.voters == {2, 3} and c[1].membership_version <= c[1].commit_index
    assert c[3].recovering and c[1].prs[3].recovering
    assert c[1].role is Role.LEADER  # not yet: 2 alone cannot elect anyone
    c.drop = None
    c.tick([1, 2, 3], n=40)
    assert not c[3].recovering
    new = c.leader()
    assert new in (2, 3), c.describe()
    c[new].propose(b"after")
    c.stabilize()
    assert c[new].log_term(c[new].commit_index) == c[new].term


def test_a_busy_leader_repairs_a_recovering_follower():
    """The leader tells a recovering follower it is whole once it holds the
    leader's log as of when the leader learned it was recovering: waiting for
    it to match the leader's last index could wait forever under load."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    for k in range(5):
        c[1].propose(b"w%d" % k)
    c.stabilize()
    restart_with_lost_suffix(c, 2, 2, recovering=True)
    # A new proposal before each message is delivered: 2 never holds the leader's last entry.
    for step in range(400):
        c[1].propose(b"p%d" % step)
        c.pump()
        if step % 10 == 0:
            c[1].tick()
        c.pump()
        c.deliver_one()
        if not c[2].recovering:
            break
    assert not c[2].recovering


def test_a_change_does_not_rely_on_a_voter_silent_for_a_while():
    """A voter that stopped answering may have restarted on a shortened log
    without having said so yet (lossy driver seed 3323: the leader removed
    itself from {1, 2, 3} while 2, recovering, had been silent for seven
    heartbeats, then lost its quorum; no leader could be elected again)."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    c[1].propose(b"a")
    c.stabilize()
    c.isolate(3)
    c.tick([1], n=4)
    c[1].propose_membership([1, 2, 3], learners=[4])  # needs nobody silent
    c.stabilize()
    c.tick([1], n=2)
    with pytest.raises(ConfChangeError, match=r"\[3\].*silent"):
        c[1].propose_membership([2, 3])
    c.heal(3)
    c.tick([1], n=1)
    c[1].propose_membership([2, 3])
