"""Focused, hand-driven Raft scenarios: the paper's figures and the thesis'
extensions, each checked step by step on a few RaftCores.

The cluster helper (``tests/sim/harness.py``) persists instantly but keeps
the Ready order of the contract; tests choose which messages flow.
"""

import random

import pytest

from coord.raft.config import RaftConfig
from coord.raft.core import RaftCore
from coord.raft.types import Membership, Message, MsgType, ProposalDropped, Role
from tests.sim.harness import Cluster
from tests.sim.statemachine import encode_snapshot

ELECTION = 10


def cfg(**kw) -> RaftConfig:
    base = dict(election_ticks=ELECTION, heartbeat_ticks=1)
    base.update(kw)
    return RaftConfig(**base)


def voters(*ids) -> Membership:
    return Membership(voters=frozenset(ids))


def test_figure7_followers_converge_with_fast_backtracking():
    """Raft paper, Figure 7: the leader of term 8 repairs followers that miss
    entries (a, b, e), hold extra uncommitted ones (c, d) or both (f).  With
    the conflict-term hint each follower needs only a couple of rejected
    AppendEntries, not one per conflicting entry."""
    leader_terms = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
    followers = {
        2: [1, 1, 1, 4, 4, 5, 5, 6, 6],  # (a)
        3: [1, 1, 1, 4],  # (b)
        4: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  # (c)
        5: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  # (d)
        6: [1, 1, 1, 4, 4, 4, 4],  # (e)
        7: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  # (f)
    }
    m = voters(*range(1, 8))
    c = Cluster(cfg(pre_vote=False))
    c.add(1, membership=m, terms=leader_terms, term=7)
    for nid, terms in followers.items():
        c.add(nid, membership=m, terms=terms, term=7)
    c.elect(1)
    assert c[1].term == 8
    c.stabilize()

    final = leader_terms + [8]  # plus the new leader's no-op
    for nid in range(1, 8):
        assert c.log_terms(nid) == final, f"server {nid}: {c.log_terms(nid)}"
    assert c[1].commit_index == len(final)

    for nid, terms in followers.items():
        wrong = sum(1 for i, t in enumerate(terms) if i >= len(final) or final[i] != t)
        missing = max(0, len(final) - len(terms))
        conflicts = wrong + missing
        rejects = c.count(MsgType.APPEND_RESP, frm=nid, reject=True)
        assert rejects <= 3, f"server {nid}: {rejects} rejected appends"
        if conflicts > 3:
            assert rejects < conflicts, f"server {nid}: {rejects} round trips for {conflicts} conflicting entries"
    assert c.count(MsgType.APPEND_RESP, frm=7, reject=True) < 8  # (f): 8 entries of terms 2 and 3


def test_figure8_old_term_entry_commits_only_with_current_term_entry():
    """Raft paper, Figure 8: S1 (leader of term 4) gets the term-2 entry at
    index 2 onto a majority (S1, S2, S3).  That must not commit it: S5 could
    still be elected and overwrite it.  It commits once S1's own term-4 entry
    reaches a majority."""
    m = voters(1, 2, 3, 4, 5)
    c = Cluster(cfg(max_append_entries=1, pre_vote=False))
    c.add(1, membership=m, terms=[1, 2], term=3, commit=1)
    c.add(2, membership=m, terms=[1, 2], term=3, commit=1)
    c.add(3, membership=m, terms=[1], term=3, commit=1)
    c.add(4, membership=m, terms=[1], term=3, commit=1)
    c.add(5, membership=m, terms=[1, 3], term=3, vote=5, commit=1)
    for j in (4, 5):  # S4 and S5 stay away; S1 wins with S2 and S3
        c.blocked |= {(j, x) for x in range(1, 6) if x != j} | {(x, j) for x in range(1, 6) if x != j}

    def strip_term4(msg: Message) -> Message:
        """Lose the term-4 entries of every AppendEntries (the rest arrives)."""
        if msg.type == MsgType.APPEND:
            msg.entries = [e for e in msg.entries if e.term < 4]
        return msg

    c.transform = strip_term4
    c.elect(1)
    assert c[1].term == 4
    c.stabilize()
    c.tick(n=3)
    assert c.log_terms(3)[:2] == [1, 2]  # index 2 (term 2) is on S1, S2, S3: a majority
    assert c[1].log_term(3) == 4
    for nid in (1, 2, 3):
        assert c[nid].commit_index == 1, f"server {nid} committed a term-2 entry by counting replicas"

    c.transform = None
    c.tick(n=3)
    assert c[1].commit_index == 3
    assert [(e.index, e.term) for e in c.applied[1]][-2:] == [(2, 2), (3, 4)]


@pytest.mark.parametrize("pre_vote", [False, True])
def test_vote_refused_to_candidate_with_out_of_date_log(pre_vote):
    m = voters(1, 2, 3)
    c = Cluster(cfg(pre_vote=pre_vote))
    c.add(1, membership=m, terms=[1, 1], term=1)
    c.add(2, membership=m, terms=[1, 1], term=1)
    c.add(3, membership=m, terms=[1], term=1)
    if pre_vote:
        c.tick([3], n=2 * ELECTION)  # times out: pre-vote only
        assert c.count(MsgType.PREVOTE_RESP, to=3, reject=False) == 0
        assert c.count(MsgType.PREVOTE_RESP, to=3, reject=True) >= 2
        assert (c[1].term, c[2].term, c[3].term) == (1, 1, 1)  # nobody's term moved
    else:
        c[3].campaign()
        c.stabilize()
        assert c.count(MsgType.VOTE_RESP, to=3, reject=False) == 0
        assert c.count(MsgType.VOTE_RESP, to=3, reject=True) == 2
    assert c[3].role != Role.LEADER
    assert c[1].vote != 3 and c[2].vote != 3


def _cluster_with_leader(n=3, **kw) -> Cluster:
    c = Cluster.of(n, cfg(**kw))
    c.elect(1)
    for k in range(3):
        c[1].propose(b"x%d" % k)
    c.stabilize()
    return c


def test_prevote_rejoining_partitioned_node_does_not_disrupt():
    c = _cluster_with_leader(pre_vote=True, check_quorum=True)
    term = c[1].term
    c.isolate(3)
    c.tick(n=5 * ELECTION)
    assert c[3].term == term, "an isolated server bumped its term despite pre-vote"
    c[1].propose(b"while-away")
    c.heal()
    c.tick(n=3 * ELECTION)
    assert c[1].role == Role.LEADER and c[1].term == term
    assert c[3].role == Role.FOLLOWER and c[3].leader_id == 1 and c[3].term == term
    assert c[3].commit_index == c[1].commit_index


def test_check_quorum_isolated_leader_steps_down():
    c = _cluster_with_leader(check_quorum=True)
    c.isolate(1)
    for t in range(2 * ELECTION + 1):
        c.tick([1])
        if c[1].role != Role.LEADER:
            break
    assert c[1].role != Role.LEADER, "a leader cut off from its quorum kept leading"
    assert t <= 2 * ELECTION


def test_removed_server_that_keeps_ticking_does_not_disrupt():
    c = _cluster_with_leader(pre_vote=True, check_quorum=True)
    c.isolate(3)  # server 3 never learns it was removed
    c[1].propose_membership({1, 2})
    c.stabilize()
    c.tick([1, 2], n=3)
    assert c[1].membership.voters == {1, 2} and not c[1].membership.joint
    assert c[1].membership_version <= c[1].commit_index
    term = c[1].term
    assert c[3].membership.voters == {1, 2, 3}
    c.heal()
    c.tick(n=10 * ELECTION)
    assert c[1].role == Role.LEADER and c[1].term == term and c[2].term == term


def test_joint_consensus_needs_both_majorities():
    """C_old = {1, 2, 3}, C_new = {3, 4, 5}: while joint, an entry acknowledged
    by 1, 2, 3 (a majority of C_old only) must not commit."""
    c = Cluster(cfg())
    m = voters(1, 2, 3)
    for nid in (1, 2, 3):
        c.add(nid, membership=m)
    c.add(4)  # joiners: no configuration until the leader's log says so
    c.add(5)
    c.elect(1)
    c[1].propose_membership({1, 2, 3}, learners={4, 5})
    c.stabilize()
    c.tick(n=2)
    assert c[4].last_index == c[1].last_index and c[5].last_index == c[1].last_index

    for j in (4, 5):
        c.blocked |= {(j, x) for x in c.cores if x != j} | {(x, j) for x in c.cores if x != j}
    idx, _ = c[1].propose_membership({3, 4, 5})
    assert c[1].membership.joint and c[1].membership.outgoing == {1, 2, 3}
    p, _ = c[1].propose(b"during-joint")
    c.stabilize()
    c.tick(n=3)
    assert c[3].last_index >= p  # replicated to all of C_old ...
    assert c[1].commit_index < idx, "joint entry committed with a majority of C_old only"

    c.heal(4)  # now {3, 4} is a majority of C_new
    c.tick(n=3)
    assert c[1].commit_index >= p
    c.heal()
    c.tick(n=4 * ELECTION)
    leader = c.leader()
    assert leader in (3, 4, 5), c.describe()
    final = c[leader].membership
    assert final.voters == {3, 4, 5} and not final.joint
    assert c[leader].membership_version <= c[leader].commit_index
    assert c[1].role != Role.LEADER


def test_leader_transfer():
    c = _cluster_with_leader()
    term = c[1].term
    c[1].transfer_leadership(2)
    c.stabilize()
    assert c[2].role == Role.LEADER and c[2].term == term + 1
    assert c[1].role == Role.FOLLOWER and c[1].leader_id == 2
    idx, t = c[2].propose(b"after-transfer")
    c.stabilize()
    assert any(e.index == idx and e.term == t for e in c.applied[1])


def test_removed_leader_with_longest_log_stays_electable_until_c_new_commits():
    """Raft thesis 4.2.2: a server not in its own latest configuration must
    still start elections, because until C_new commits it may be needed.
    Here leader 2 is being removed (C_old = {1, 2}, C_new = {1}); it appends
    C_new, then loses leadership before C_new reaches 1.  Server 1 is in the
    joint configuration and needs 2's vote, which 2 refuses (2's log is
    longer); unless 2 campaigns, the cluster never elects a leader again."""
    c = Cluster.of(2, cfg(pre_vote=True, check_quorum=True))
    c.elect(2)
    c.stabilize()
    j, _ = c[2].propose_membership({1})
    c.drop = lambda m: m.type == MsgType.APPEND and any(e.index > j for e in m.entries)
    c.stabilize()
    c.tick(n=2)
    assert c[2].commit_index >= j and c[2].last_index > j  # joint committed, C_new only on 2
    assert c[1].membership.joint
    c.isolate(2)
    c.tick([2], n=2 * ELECTION + 1)
    assert c[2].role != Role.LEADER  # check-quorum: 2 lost its quorum ({1})
    c.drop = None
    c.heal()
    c.tick(n=10 * ELECTION)
    assert c.leader() != 0, f"no leader can ever be elected: {c.describe()}"


def test_snapshot_chunks_of_two_transfers_are_never_stitched():
    """Two leaders may hold different bytes for a snapshot at the same
    (index, term) (each server serializes its own).  A follower that got the
    first chunk from one leader must not complete it with another leader's
    chunks: that installs a payload nobody wrote."""
    a = encode_snapshot(10, b"\x11" * 16, bytes(range(100)))
    b = encode_snapshot(10, b"\x11" * 16, bytes(60))
    m = voters(1, 2, 3)
    follower = RaftCore(3, cfg(), random.Random(3), membership=m)

    def chunk(frm, term, data, off, done):
        return Message(MsgType.SNAPSHOT, frm, 3, term, index=10, log_term=2, membership=m,
                       offset=off, data=data, done=done)

    follower.step(chunk(1, 2, a[:64], 0, False))  # leader 1 (term 2) starts a transfer
    follower.step(chunk(2, 3, b[64:], 64, True))  # leader 2 (term 3) finishes its own
    installed = []
    while follower.has_ready():
        rd = follower.ready()
        if rd.snapshot is not None:
            installed.append(rd.snapshot.data)
        follower.on_persisted(rd)
    for data in installed:
        assert data in (a, b), "installed a snapshot stitched from two different transfers"


def test_single_voter_leader_does_not_reuse_a_term_after_losing_its_unsynced_state():
    """A single voter elects itself without sending a message, so nothing
    forces its new term to disk before it acts as leader.  If its first
    AppendEntries (sent before the fsync, as leaders may) reach a learner and
    it then crashes, the restarted server must not win the *same* term again:
    it would hand out a different entry for an (index, term) the learner
    already holds, and the learner would keep the old one as "matching"."""
    m = Membership(voters=frozenset({1}), learners=frozenset({2}))
    leader = RaftCore(1, cfg(), random.Random(1), membership=m)
    learner = RaftCore(2, cfg(), random.Random(2))

    def drain(core, persist=True):
        out, applied = [], []
        while core.has_ready():
            rd = core.ready()
            out += rd.messages
            if persist:
                out += rd.messages_after_persist
                core.on_persisted(rd)
                applied += rd.committed
        return out, applied

    def deliver(msgs, core):
        for msg in msgs:
            if msg.to == core.node_id:
                core.step(msg)

    leader.campaign()
    # It won without a vote exchange, but leads only once its term is durable:
    # until then it sends nothing and accepts no proposal.
    assert leader.role is not Role.LEADER
    with pytest.raises(ProposalDropped):
        leader.propose(b"A")
    sent, _ = drain(leader, persist=False)  # then a crash before the fsync
    assert sent == []
    deliver(sent, learner)
    learner_applied = []
    back, a = drain(learner)
    learner_applied += a

    leader = RaftCore(1, cfg(), random.Random(3), membership=m)  # restarted: nothing was durable
    leader.campaign()
    drain(leader)  # the term reaches the disk: now it leads
    assert leader.role is Role.LEADER
    idx, term = leader.propose(b"B")
    leader_applied = []
    for _ in range(20):
        out, a = drain(leader)
        leader_applied += a
        deliver(out, learner)
        back, a = drain(learner)
        learner_applied += a
        deliver(back, leader)
        leader.tick()
    mine = {e.index: e.data for e in leader_applied}
    theirs = {e.index: e.data for e in learner_applied}
    assert mine.get(idx) == b"B"
    assert theirs.get(idx) == b"B", f"learner applied {theirs.get(idx)!r} at index {idx}, leader applied b'B'"


def test_unreachable_leader_hint_shortens_failover_and_is_ignored_otherwise():
    """peer_unreachable (a refused connect: the leader's process is gone)
    ends the leader's lease at once and makes the follower campaign within
    half an election timeout, instead of 1-2 full timeouts.  A hint about a
    server that is not our leader changes nothing."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    c.stabilize()
    term = c[1].term
    c[2].peer_unreachable(3)  # not the leader: ignored
    c.tick([2], n=ELECTION - 1)
    assert c[2].role is Role.FOLLOWER and c[2].term == term
    c.tick([1], n=1)  # a heartbeat resets the followers' timers

    c.isolate(1)  # "SIGKILL" of the leader
    c[2].peer_unreachable(1)
    c[3].peer_unreachable(1)
    for ticks in range(1, ELECTION // 2 + 1):
        c.tick([2, 3], n=1)
        if c.leader() in (2, 3):
            break
    assert c.leader() in (2, 3), c.describe()
    assert ticks <= ELECTION // 2  # well under the election timeout of 10-19 ticks
    assert c[c.leader()].term == term + 1


def test_wrong_unreachable_hint_from_one_follower_does_not_depose_a_live_leader():
    """Only one follower believes the leader is gone: its pre-vote is refused
    by the other follower, which still hears the leader, so no term changes."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    c.stabilize()
    term = c[1].term
    c.tick([2], n=1)
    c[2].peer_unreachable(1)
    assert c[2]._hinted
    for _ in range(ELECTION // 2 + 1):
        c.tick([2], n=1)
        c.tick([1], n=1)  # the live leader keeps heart-beating
    assert c[1].role is Role.LEADER and c[1].term == term
    assert c[2].term == term and c[3].term == term
    assert not c[2]._hinted and c[2].randomized_timeout >= ELECTION  # the full timeout range is back


@pytest.mark.parametrize("term", [(1 << 63) - 1, (1 << 62) + 1, 10 + (1 << 32) + 1])
def test_a_term_no_election_could_produce_is_refused(term):
    """One forged HEARTBEAT with a huge term used to stop the ensemble for
    good (the term is durable and no longer encodes); it changes nothing now."""
    c = Cluster.of(3, cfg())
    c.elect(1)
    c[1].propose(b"x")
    c.stabilize()
    before = [(c[i].term, c[i].role, c[i].leader_id) for i in (1, 2, 3)]
    for target in (1, 2, 3):
        c[target].step(Message(MsgType.HEARTBEAT, 9 if target != 1 else 2, target, term, commit=10**6))
        c[target].step(Message(MsgType.VOTE, 2, target, term, index=10**6, log_term=term))
    c.stabilize()
    assert [(c[i].term, c[i].role, c[i].leader_id) for i in (1, 2, 3)] == before
    assert all(c[i].refused_terms >= 2 for i in (1, 2, 3))
    c[1].propose(b"y")  # and the ensemble still works
    c.stabilize()
    assert c[3].commit_index == c[1].commit_index == 3
