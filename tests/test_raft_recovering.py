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
from coord.raft.types import ConfChangeError, HardState, Membership, MsgType, Role
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
