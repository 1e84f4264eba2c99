"""The Raft consensus core: a deterministic state machine with no I/O.

Inputs are ticks, received messages and proposals; outputs are collected in a
``Ready`` (hard state and entries to persist, messages to send, committed
entries to apply).  See ``API.md`` beside this file for the contract and
``types.Ready`` for the order in which a driver must carry a Ready out.

The design follows the Raft paper (and its thesis for pre-vote,
check-quorum, leadership transfer, ReadIndex and joint consensus) with
etcd's raft library as the model for flow control:

* Safety: votes and terms are persisted before any reply that depends on
  them (``messages_after_persist``); the leader counts its own log toward a
  majority only once its write is durable (``on_persisted``); only entries of
  the current term are committed by counting (Figure 8).
* Liveness without disruption: pre-vote, check-quorum and the leader lease
  ("heard from a leader within the election timeout -> ignore votes").
* Throughput: proposals and acknowledgements only mark work; the actual
  AppendEntries are built once per ``ready()`` so many proposals travel in one
  message and one fsync, and followers in REPLICATE state get a window of
  pipelined messages.
"""

from __future__ import annotations

import random
from typing import Iterable

import cbor2

from . import quorum
from .config import RaftConfig
from .log import RaftLog
from .progress import Progress, PState
from .quorum import VoteResult
from .types import (
    ConfChangeError,
    Entry,
    EntryKind,
    HardState,
    Membership,
    Message,
    MsgType,
    ProposalDropped,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

TRANSFER = b"transfer"  # context of a vote request caused by leadership transfer
# context of an APPEND_RESP or SNAPSHOT_RESP from a server that is recovering
# from a lost log suffix (a HEARTBEAT_RESP, whose context echoes the read
# round, says so with reject=True), and of the leader's APPEND that tells it
# it has everything again.
RECOVERING = b"recovering"
RECOVERED = b"recovered"
# Terms grow by one per election.  A message whose term is further ahead of
# ours than any run of elections could take it, or near the limit of the
# encoding, is refused whoever sends it.
MAX_TERM = 1 << 62
MAX_TERM_JUMP = 1 << 32

_LEADER_NOW = frozenset(
    {MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT, MsgType.TIMEOUT_NOW, MsgType.READ_INDEX_RESP}
)


def _says_recovering(m: Message) -> bool:
    """Whether a follower's response says it is recovering a lost log."""
    if m.type is MsgType.HEARTBEAT_RESP:
        return m.reject  # its context echoes the read round
    return m.context == RECOVERING


def encode_membership(m: Membership) -> bytes:
    return cbor2.dumps(m.to_wire())


def decode_membership(data: bytes) -> Membership:
    return Membership.from_wire(cbor2.loads(data))


class RaftCore:
    def __init__(
        self,
        node_id: int,
        config: RaftConfig,
        rng: random.Random,
        *,
        hard_state: HardState = HardState(),
        snapshot: SnapshotMeta | Snapshot | None = None,
        entries: Iterable[Entry] = (),
        membership: Membership | None = None,
    ):
        if node_id < 1:
            raise ValueError("node ids start at 1")
        self.node_id = node_id
        self.cfg = config
        self.rng = rng

        snap_data: bytes | memoryview | None = None
        if isinstance(snapshot, Snapshot):
            snap_data = snapshot.data
            snapshot = snapshot.meta
        if snapshot is None:
            snapshot = SnapshotMeta(0, 0, membership or Membership())
        self.snapshot_meta: SnapshotMeta = snapshot
        self._snap_data = snap_data

        self.log = RaftLog(snapshot.index, snapshot.term, list(entries))
        self.log.commit = max(snapshot.index, min(hard_state.commit, self.log.last_index()))
        # A log entry of a term newer than the saved hard state means the hard
        # state write was lost (torn) after the entries were written.  Take
        # that term; the vote is 0 because a vote is only ever sent once the
        # hard state holding it is durable, so none was sent in that term.
        self.term = max(hard_state.term, self.log.last_term())
        self.vote = hard_state.vote if self.term == hard_state.term else 0
        self._durable_term = hard_state.term
        # Recovering from a lost log suffix (see _handle_append): this server
        # may have acknowledged entries it no longer has, so its vote could
        # elect a leader without them.  It neither votes nor campaigns until
        # a leader has confirmed that its log holds everything the leader has.
        self.recovering = hard_state.recovering
        self._saved_hs = self._hard_state()

        # Configurations in the log, oldest first; the last one is in effect.
        self._confs: list[tuple[int, Membership]] = [(snapshot.index, snapshot.membership)]
        for e in self.log.entries:
            if e.kind == EntryKind.CONFIG:
                self._confs.append((e.index, decode_membership(e.data)))

        self.role = Role.FOLLOWER
        self.leader_id = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._hinted = False  # randomized_timeout was shortened by peer_unreachable
        self._reset_randomized_timeout()
        self.votes: dict[int, bool] = {}
        self._win_when_durable = False
        self.prs: dict[int, Progress] = {}
        self.lead_transferee = 0
        self._transfer_elapsed = 0

        # Leader's replication work, flushed once per ready().
        self._dirty: set[int] = set()
        self._nudge: set[int] = set()  # followers owed an AppendEntries even if empty
        self._bcast = False
        # ReadIndex state (leader): reads waiting for the no-op, reads waiting
        # for a heartbeat round, acks per follower of the latest round.
        self._reads_before_noop: list[tuple[bytes, int]] = []
        self._pending_reads: list[tuple[bytes, int, int, int]] = []  # ctx, from, index, round
        self._read_round = 0
        self._read_round_wanted = False
        self._read_acks: dict[int, int] = {}
        # Reads this follower forwarded to the leader: ctx -> ticks left.
        self._forwarded_reads: dict[bytes, int] = {}

        # Follower's partial InstallSnapshot transfer and completed snapshot to hand out.
        self._snap_recv: tuple[tuple, Membership, bytearray] | None = None
        self._snapshot_to_install: Snapshot | None = None

        self._soft = SoftState(0, Role.FOLLOWER, 0)  # the last one handed out: a Ready carries changes
        self.refused_terms = 0  # messages refused for an impossible term
        self._msgs_now: list[Message] = []
        self._msgs_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._failed_reads: list[bytes] = []

    # ------------------------------------------------------------------
    # observation
    # ------------------------------------------------------------------
    @property
    def commit_index(self) -> int:
        return self.log.commit

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    @property
    def first_index(self) -> int:
        return self.log.first_index()

    @property
    def membership(self) -> Membership:
        return self._confs[-1][1]

    @property
    def membership_version(self) -> int:
        return self._confs[-1][0]

    def log_term(self, index: int) -> int | None:
        return self.log.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self.log.slice(lo, hi)

    def progress(self) -> dict[int, dict]:
        return {pid: pr.describe() for pid, pr in self.prs.items()}

    def recent_members(self) -> frozenset[int]:
        """Members of the latest configuration and of the one before it: the
        servers a leader may still have to reach (a removed server must hear
        that it was removed)."""
        out = self.membership.members()
        if len(self._confs) > 1:
            out |= self._confs[-2][1].members()
        return out

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit, self.recovering)

    def promotable(self) -> bool:
        """May this server campaign?  A voter of its latest configuration may;
        so may a voter of the previous one while the latest is not known to be
        committed.  Without the second rule a leader that removed itself and
        lost its quorum before C_new committed leaves nobody able to finish the
        change (the remaining voters can lack C_new and need its vote).
        Votes are always counted in the candidate's latest configuration, so
        who campaigns does not affect safety.  A recovering server may not
        (unless it is the only voter: then nobody else can give it back
        what it lost, and the operator accepted that)."""
        me = self.node_id
        if self.recovering and self.membership.all_voters() - {me}:
            return False
        if me in self.membership.all_voters():
            return True
        return (self.membership_version > self.log.commit and len(self._confs) > 1
                and me in self._confs[-2][1].all_voters())

    # ------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self._forwarded_reads:
                self._age_forwarded_reads()
            if self.promotable() and self.election_elapsed >= self.randomized_timeout:
                self.election_elapsed = 0
                self._start_election(pre=self.cfg.pre_vote, transfer=False)

    def peer_unreachable(self, pid: int) -> None:
        """A hint from the driver that ``pid``'s process is gone (its port
        refused a connection: not a slow or partitioned link).  If it is our
        leader, stop honouring its lease and campaign after a short random
        delay (under half an election timeout) instead of a full timeout.
        Only liveness depends on this: a wrong hint costs an election at most,
        and pre-vote still needs a majority that has lost the leader too."""
        if (self.role is Role.LEADER or pid == 0 or pid != self.leader_id
                or self.election_elapsed >= self.cfg.election_ticks):
            return  # not our leader, or its lease is already over
        # (A wrong hint about a live leader is undone by its next heartbeat,
        # and a pre-vote sent before that is refused by followers that hear it.)
        e = self.cfg.election_ticks
        self.election_elapsed = e  # the lease is over: grant (pre-)votes now
        self.randomized_timeout = e + self.rng.randrange(max(1, e // 2))
        self._hinted = True  # undone if the leader turns out to be alive

    def campaign(self) -> None:
        if self.role is not Role.LEADER and self.promotable():
            self._start_election(pre=False, transfer=False)

    def propose(self, data: bytes) -> tuple[int, int]:
        return self.propose_batch([data])

    def propose_batch(self, datas: list[bytes]) -> tuple[int, int]:
        self._check_can_propose()
        first = self.log.last_index() + 1
        t = self.term
        self.log.append([Entry(t, first + k, EntryKind.NORMAL, d) for k, d in enumerate(datas)])
        self._bcast = True
        return first, t

    def propose_membership(
        self,
        voters: Iterable[int],
        learners: Iterable[int] = (),
        addrs: dict | None = None,
        *,
        expect_version: int | None = None,
    ) -> tuple[int, int]:
        self._check_can_propose()
        cur = self.membership
        if expect_version is not None and expect_version != self.membership_version:
            raise ConfChangeError(
                f"configuration changed: it is at version {self.membership_version}, "
                f"the change was computed from version {expect_version}"
            )
        if cur.joint or self.membership_version > self.log.commit:
            raise ConfChangeError("another membership change is in progress")
        if self.log.term(self.log.commit) != self.term:
            raise ConfChangeError("the new leader has not committed its first entry yet; retry")
        new_voters = frozenset(voters)
        new_learners = frozenset(learners) - new_voters
        if not new_voters:
            raise ConfChangeError("the configuration would have no voter")
        if any(v < 1 for v in new_voters | new_learners):
            raise ConfChangeError("server ids start at 1")
        demoted = (cur.voters - new_voters) & new_learners
        if demoted:
            raise ConfChangeError(
                f"cannot turn voters {sorted(demoted)} into learners in one step: remove them first"
            )
        # Never move to a configuration whose quorums need servers that cannot
        # vote (recovering a lost log) or that we have not heard from in this
        # term (they may be recovering, or down): it could stall for good.
        # Nor on servers silent for a while: they may have restarted on a
        # shortened log and not said so yet (lossy driver seed 3323).
        quiet = max(self.cfg.election_ticks // 2, self.cfg.heartbeat_ticks + 1)
        able = {pid for pid in self._able() if pid == self.node_id or self.prs[pid].silent_ticks < quiet}
        for vs in (new_voters, cur.voters):
            if not quorum.has_quorum(Membership(voters=vs), vs & able):
                doubtful = sorted(vs - able)
                raise ConfChangeError(
                    f"this change needs votes of servers {doubtful}, which are down, silent, unheard from "
                    "in this term, or recovering a lost log; retry once they have caught up"
                )
        members = new_voters | new_learners
        # A joint configuration still needs the addresses of the servers it removes.
        keep = members | cur.voters if new_voters != cur.voters else members
        merged = {k: v for k, v in cur.addrs.items() if k in keep}
        merged.update({k: v for k, v in (addrs or {}).items() if k in members})
        if new_voters == cur.voters:
            if new_learners == cur.learners and merged == cur.addrs:
                raise ConfChangeError("the configuration is unchanged")
            target = Membership(new_voters, frozenset(), new_learners, merged)
        else:
            target = Membership(new_voters, cur.voters, new_learners, merged)
        return self._append_config(target)

    def transfer_leadership(self, target: int) -> None:
        if self.role is not Role.LEADER:
            raise ProposalDropped("not the leader", self.leader_id)
        if target == self.node_id:
            return
        if target not in self.membership.all_voters():
            raise ConfChangeError(f"server {target} is not a voter")
        if self.prs[target].recovering:
            raise ConfChangeError(f"server {target} is recovering a lost log and cannot lead yet")
        self.lead_transferee = target
        self._transfer_elapsed = 0
        pr = self.prs[target]
        if pr.match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._dirty.add(target)

    def read_index(self, context: bytes) -> None:
        if self.role is Role.LEADER:
            self._leader_read(context, self.node_id)
        elif self.leader_id:
            self._forwarded_reads[context] = 2 * self.cfg.election_ticks
            self._send(Message(MsgType.READ_INDEX, self.node_id, self.leader_id, self.term, context=context))
        else:
            self._failed_reads.append(context)

    def snapshot_meta_at(self, index: int) -> SnapshotMeta:
        """The metadata of a snapshot of the state machine at applied index
        ``index``: its term and the configuration in force there (for the
        driver to name and head the file before ``compact``)."""
        if index > self.log.applied:
            raise ValueError(f"cannot snapshot at {index}: only {self.log.applied} applied")
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"cannot snapshot at {index}: entry not in the log")
        return SnapshotMeta(index, term, self._membership_at(index))

    def compact(self, index: int, data: bytes | memoryview, *, retain: int = 0) -> None:
        """The driver holds a durable state machine snapshot at ``index``.  Entries
        up to ``index - retain`` are dropped; keeping a few lets slightly lagging
        followers catch up from the log instead of a snapshot.  ``data`` may be
        a memoryview (of a mapped snapshot file): only its length and slices
        are used."""
        if index <= self.snapshot_meta.index:
            return
        self.snapshot_meta = self.snapshot_meta_at(index)
        self._snap_data = data
        cut = max(self.log.offset, index - max(0, retain))
        self.log.compact(cut)
        self._drop_confs_before(cut)

    def step(self, m: Message) -> None:
        if m.to != self.node_id:
            return
        if m.term > MAX_TERM or m.term - self.term > MAX_TERM_JUMP:
            # No election can produce such a term: a bug or a forgery.  Taking
            # it would stop this server for good (the term is durable, and one
            # near the encoding's limit cannot grow any further).
            self.refused_terms += 1
            return
        if m.term > self.term:
            if m.type in (MsgType.PREVOTE, MsgType.VOTE) and self._in_lease() and m.context != TRANSFER:
                return  # a leader is alive: ignore the (pre-)candidate (thesis 4.2.3)
            if m.type is MsgType.PREVOTE or (m.type is MsgType.PREVOTE_RESP and not m.reject):
                pass  # pre-vote traffic never changes terms
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if m.type in (MsgType.APPEND, MsgType.HEARTBEAT):
                # A stale leader: tell it our term so it steps down (with pre-vote it
                # would otherwise never learn it, since we no longer bump terms).
                self._send(Message(MsgType.APPEND_RESP, self.node_id, m.frm, self.term))
            elif m.type is MsgType.PREVOTE:
                self._send(Message(MsgType.PREVOTE_RESP, self.node_id, m.frm, self.term, reject=True))
            return

        t = m.type
        if t is MsgType.PREVOTE or t is MsgType.VOTE:
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif t is MsgType.READ_INDEX_RESP:
            self._handle_read_index_resp(m)
        elif t is MsgType.READ_INDEX:  # only a leader can confirm a read
            self._send(Message(MsgType.READ_INDEX_RESP, self.node_id, m.frm, self.term, context=m.context, reject=True))
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ------------------------------------------------------------------
    # outputs
    # ------------------------------------------------------------------
    def has_ready(self) -> bool:
        lg = self.log
        return bool(
            self._msgs_now
            or self._msgs_after
            or self._read_states
            or self._failed_reads
            or self._snapshot_to_install is not None
            or lg.unsaved_from <= lg.last_index()
            or min(lg.commit, lg.stable) > lg.applied
            or self._hard_state() != self._saved_hs
            or (self.role is Role.LEADER and (self._dirty or self._bcast or self._read_round_wanted))
            or self._soft_changed()
        )

    def _soft_changed(self) -> bool:
        ss = self._soft
        return ss.leader != self.leader_id or ss.role is not self.role or ss.term != self.term

    def ready(self) -> Ready:
        if self.role is Role.LEADER:
            self._flush_leader()
        rd = Ready()
        lg = self.log
        if self._snapshot_to_install is not None:
            rd.snapshot = self._snapshot_to_install
            self._snapshot_to_install = None
            lg.applied = max(lg.applied, rd.snapshot.meta.index)
        rd.entries = lg.take_unsaved()
        hs = self._hard_state()
        if hs != self._saved_hs:
            rd.hard_state = hs
            self._saved_hs = hs
        rd.messages, self._msgs_now = self._msgs_now, []
        rd.messages_after_persist, self._msgs_after = self._msgs_after, []
        hi = min(lg.commit, lg.stable)
        if hi > lg.applied:
            rd.committed = lg.slice(lg.applied + 1, hi + 1)
            lg.applied = hi
        rd.read_states, self._read_states = self._read_states, []
        rd.failed_reads, self._failed_reads = self._failed_reads, []
        if self._soft_changed():
            rd.soft_state = self._soft = SoftState(self.leader_id, self.role, self.term)
        return rd

    def on_persisted(self, rd: Ready) -> None:
        lg = self.log
        if rd.hard_state is not None:
            self._durable_term = max(self._durable_term, rd.hard_state.term)
            if self._win_when_durable and self.role is Role.CANDIDATE and self._durable_term == self.term:
                self._win_when_durable = False
                self._become_leader()
        if rd.snapshot is not None and lg.offset == rd.snapshot.meta.index:
            lg.stable = max(lg.stable, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            if lg.term(last.index) == last.term:
                lg.stable = max(lg.stable, last.index)
        if self.role is Role.LEADER:
            me = self.prs.get(self.node_id)
            if me is not None and lg.stable > me.match:
                me.match = lg.stable
                self._maybe_commit()

    # ------------------------------------------------------------------
    # role changes
    # ------------------------------------------------------------------
    def _reset_randomized_timeout(self) -> None:
        self._hinted = False
        e = self.cfg.election_ticks
        self.randomized_timeout = e + self.rng.randrange(e)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
        self.leader_id = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self.votes = {}
        self._win_when_durable = False
        self.lead_transferee = 0
        self._abort_leader_reads()
        self.prs = {}
        self._dirty.clear()
        self._nudge.clear()
        self._bcast = False

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader

    def _start_election(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            req_term, mtype = self.term + 1, MsgType.PREVOTE
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.node_id
            req_term, mtype = self.term, MsgType.VOTE
        self.votes = {self.node_id: True}
        if self._tally() is not VoteResult.PENDING:
            return
        ctx = TRANSFER if transfer else b""
        li, lt = self.log.last_index(), self.log.last_term()
        for pid in sorted(self.membership.all_voters()):
            if pid != self.node_id:
                self._send(Message(mtype, self.node_id, pid, req_term, log_term=lt, index=li, context=ctx))

    def _tally(self) -> VoteResult:
        r = quorum.vote_result(self.membership, self.votes)
        if r is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._start_election(pre=False, transfer=False)
            elif self._durable_term == self.term:
                self._become_leader()
            else:
                # Won without a vote exchange (a single voter): lead only once
                # the term is on disk, or a crash could let us win it twice.
                self._win_when_durable = True
        elif r is VoteResult.LOST:
            self._become_follower(self.term, 0)
        return r

    def _become_leader(self) -> None:
        self.recovering = False  # only a sole voter gets here while recovering: nobody to recover from
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.node_id
        self._read_acks = {}
        self._sync_progress()
        me = self.prs[self.node_id]
        me.match = self.log.stable
        me.become_replicate()
        # The no-op commits everything from earlier terms (Figure 8).
        self.log.append([Entry(self.term, self.log.last_index() + 1, EntryKind.NOOP)])
        self._bcast = True

    def _sync_progress(self) -> None:
        """Leader: one Progress per member (plus itself), after a config change.
        Servers that the newest, not yet committed, configuration removes keep
        receiving the log until it commits, so that they learn of their removal
        (and stop campaigning) instead of being cut off before it."""
        want = set(self.membership.members()) | {self.node_id}
        if self.membership_version > self.log.commit and len(self._confs) > 1:
            want |= self._confs[-2][1].members()
        for pid in list(self.prs):
            if pid not in want:
                del self.prs[pid]
                self._dirty.discard(pid)
        for pid in want:
            if pid not in self.prs:
                self.prs[pid] = Progress(self.log.last_index() + 1)
                if pid != self.node_id:
                    self._dirty.add(pid)

    def _in_lease(self) -> bool:
        return self.cfg.check_quorum and self.leader_id != 0 and self.election_elapsed < self.cfg.election_ticks

    # ------------------------------------------------------------------
    # votes
    # ------------------------------------------------------------------
    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PREVOTE
        resp = MsgType.PREVOTE_RESP if pre else MsgType.VOTE_RESP
        can_vote = not self.recovering and (
            self.vote == m.frm
            or (self.vote == 0 and self.leader_id == 0)
            or (pre and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # Granted responses carry the requested term (pre-vote: a term we did not take).
            self._send(Message(resp, self.node_id, m.frm, m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp, self.node_id, m.frm, self.term, reject=True))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._become_follower(m.term, m.frm)  # a leader of our term exists
            self._step_follower(m)
        elif t is MsgType.PREVOTE_RESP and self.role is Role.PRE_CANDIDATE:
            if m.reject or m.term == self.term + 1:
                self.votes[m.frm] = not m.reject
                self._tally()
        elif t is MsgType.VOTE_RESP and self.role is Role.CANDIDATE:
            self.votes[m.frm] = not m.reject
            self._tally()

    # ------------------------------------------------------------------
    # follower
    # ------------------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if self._hinted and t in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._reset_randomized_timeout()  # a wrong hint: the leader is alive
        if t is MsgType.APPEND:
            self.election_elapsed = 0
            self.leader_id = m.frm
            self._handle_append(m)
        elif t is MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.leader_id = m.frm
            self.log.commit = max(self.log.commit, min(m.commit, self.log.last_index()))
            # reject=True: "recovering" (the context must echo the read round).
            self._send(Message(MsgType.HEARTBEAT_RESP, self.node_id, m.frm, self.term, context=m.context,
                               reject=self.recovering))
            if self.recovering and m.commit > self.log.last_index():
                # The leader believes we hold entries we lost: say so, or an
                # idle leader would never send them again.
                hint = self.log.last_index() + 1
                self._send(Message(MsgType.APPEND_RESP, self.node_id, m.frm, self.term, index=hint,
                                   commit=hint, reject=True, context=RECOVERING))
        elif t is MsgType.SNAPSHOT:
            self.election_elapsed = 0
            self.leader_id = m.frm
            self._handle_snapshot_chunk(m)
        elif t is MsgType.TIMEOUT_NOW:
            if self.promotable():
                self._start_election(pre=False, transfer=True)

    def _handle_append(self, m: Message) -> None:
        lg = self.log
        prev, prev_term, ents = m.index, m.log_term, m.entries
        if prev < lg.commit:
            # Everything up to our commit index matches the leader's log
            # (committed entries are in every later leader's log): skip it.
            skip = lg.commit - prev
            ents = ents[skip:] if skip < len(ents) else []
            prev, prev_term = lg.commit, lg.term(lg.commit)
            if ents and ents[0].index != prev + 1:
                return
        if lg.term(prev) != prev_term:
            if prev > lg.last_index():
                conflict_term, hint = 0, lg.last_index() + 1
            else:
                conflict_term = lg.term(prev) or 0
                hint = max(lg.first_index_of_term(conflict_term, prev), lg.commit + 1)
            self._send(Message(MsgType.APPEND_RESP, self.node_id, m.frm, self.term, index=m.index,
                               log_term=conflict_term, commit=hint, reject=True, context=self._resp_context()))
            return
        if ents:
            trunc = lg.truncate_and_append(ents)
            if trunc is not None:
                self._on_truncate(trunc)
            self._note_configs(ents)
        last_new = prev + len(ents)
        if m.commit > lg.commit:
            lg.commit = min(m.commit, last_new)
        if self.recovering and m.context == RECOVERED:
            # The leader saw us recovering and holding its whole log (as of
            # m.index, which this append just matched): anything we ever
            # acknowledged that was (or will be) committed is in it.
            self.recovering = False
        self._send(Message(MsgType.APPEND_RESP, self.node_id, m.frm, self.term, index=last_new,
                           context=self._resp_context()))

    def _resp_context(self) -> bytes:
        """Every reply that updates the leader's view of this server says
        whether it is recovering: the leader's view otherwise dates from
        before a restart on a shortened log, and it could make a membership
        change that needs this server's vote (lossy driver seed 3167)."""
        return RECOVERING if self.recovering else b""

    def _handle_snapshot_chunk(self, m: Message) -> None:
        lg = self.log

        def reply(offset: int, *, done: bool = False, reject: bool = False) -> None:
            self._send(Message(MsgType.SNAPSHOT_RESP, self.node_id, m.frm, self.term,
                               index=m.index, offset=offset, done=done, reject=reject,
                               context=self._resp_context()))

        if m.index <= lg.commit:
            self._snap_recv = None
            reply(0, done=True)  # we already have all of it
            return
        # One transfer = one leader's snapshot in one term: two servers may
        # serialize the same state differently, so chunks of different
        # transfers must never be mixed even if index and term agree.
        key = (m.index, m.log_term, m.frm, m.term)
        buf = self._snap_recv
        if buf is None or buf[0] != key:
            if m.offset != 0:
                reply(0, reject=True)
                return
            buf = self._snap_recv = (key, m.membership or Membership(), bytearray())
        data = buf[2]
        if m.offset != len(data):
            reply(len(data), reject=True)
            return
        data += m.data
        if not m.done:
            reply(len(data))
            return
        self._snap_recv = None
        # A read-only view of the buffer, not a copy: a snapshot can be ~90 MB
        # (1M nodes), and nothing writes to the buffer once it is complete.
        snap = Snapshot(SnapshotMeta(m.index, m.log_term, buf[1]), memoryview(data).toreadonly())
        self._install_snapshot(snap)
        reply(len(data), done=True)

    def _install_snapshot(self, snap: Snapshot) -> None:
        lg, meta = self.log, snap.meta
        if lg.term(meta.index) == meta.term:
            # Our log already has the snapshot's last entry: just fast-forward commit.
            lg.commit = max(lg.commit, meta.index)
            return
        lg.restore(meta.index, meta.term)
        self._confs = [(meta.index, meta.membership)]
        self.snapshot_meta = meta
        self._snap_data = snap.data
        self._snapshot_to_install = snap

    # ------------------------------------------------------------------
    # leader
    # ------------------------------------------------------------------
    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise ProposalDropped("not the leader", self.leader_id)
        if self.lead_transferee:
            raise ProposalDropped("leadership transfer in progress", self.leader_id)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for pr in self.prs.values():
            pr.silent_ticks += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {pid for pid, pr in self.prs.items() if pr.recent_active}
                active.add(self.node_id)
                if not quorum.has_quorum(self.membership, active):
                    self._become_follower(self.term, 0)
                    return
                for pid, pr in self.prs.items():
                    if pid != self.node_id:
                        pr.recent_active = False
        if self._removed():
            self._maybe_leave()
            if self.role is not Role.LEADER:
                return
        if self.lead_transferee:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.cfg.transfer_timeout_ticks:
                self.lead_transferee = 0
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self._read_round)

    def _bcast_heartbeat(self, rnd: int) -> None:
        ctx = rnd.to_bytes(8, "big") if rnd else b""
        for pid, pr in self.prs.items():
            if pid != self.node_id:
                c = min(pr.match, self.log.commit)
                self._send(Message(MsgType.HEARTBEAT, self.node_id, pid, self.term, commit=c, context=ctx))

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        t = m.type
        if t is MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)
            return
        if pr is None or m.frm == self.node_id:
            return
        if t is MsgType.APPEND_RESP:
            pr.recent_active = True
            self._note_recovering(pr, _says_recovering(m))
            if m.reject:
                self._handle_append_reject(m.frm, pr, m)
            else:
                if pr.recovering and _says_recovering(m) and m.index >= pr.recover_to:
                    self._send_recovered(m.frm, pr, m.index)  # before the ack can make us step down
                self._handle_append_ack(m.frm, pr, m.index)
        elif t is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            self._note_recovering(pr, _says_recovering(m))
            pr.probe_sent = False
            if pr.recovering:  # its next APPEND_RESP lets us tell it it is whole again
                self._dirty.add(m.frm)
                self._nudge.add(m.frm)
            if pr.state is PState.REPLICATE and pr.paused(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes):
                pr.free_one()
            if pr.state is PState.SNAPSHOT:
                pr.snap_stall += 1
                if pr.snap_stall >= 2:
                    pr.snap_inflight = False
                    pr.snap_stall = 0
            if pr.match < self.log.last_index() or pr.state is PState.SNAPSHOT:
                # Also covers a lost last AppendEntries: an empty append at
                # next-1 makes the follower reject and the probe repairs it.
                self._dirty.add(m.frm)
                self._nudge.add(m.frm)
            if m.context:
                rnd = int.from_bytes(m.context, "big")
                if rnd > self._read_acks.get(m.frm, 0):
                    self._read_acks[m.frm] = rnd
                    self._release_reads()
        elif t is MsgType.SNAPSHOT_RESP:
            pr.recent_active = True
            self._note_recovering(pr, _says_recovering(m))
            self._handle_snapshot_resp(m.frm, pr, m)

    def _note_recovering(self, pr: Progress, recovering: bool) -> None:
        """Every response tells whether its sender is recovering a lost log.
        The flag is sticky: until we have told the follower it is whole
        again, an untagged response can only be a stale one from before its
        restart (in our term only we can clear its flag), and believing it
        would let a membership change depend on a server that cannot vote."""
        pr.heard = True
        pr.silent_ticks = 0
        if recovering:
            if not pr.recovering:
                pr.recovering = True
                # Everything it may have acknowledged before it restarted
                # (which is before now) that is or will be committed is in
                # our log up to here.
                pr.recover_to = self.log.last_index()
                pr.recovered_sent = False
        elif pr.recovering and pr.recovered_sent:
            pr.recovering = False

    def _send_recovered(self, pid: int, pr: Progress, index: int) -> None:
        """Tell a recovering follower that holds our log up to ``index`` (>=
        ``pr.recover_to``) that it may vote again.  The follower clears its
        flag only if its log matches ours at ``index``, so a stale or wrong
        acknowledgement cannot clear it early."""
        self._send(Message(MsgType.APPEND, self.node_id, pid, self.term, index=index,
                           log_term=self.log.term(index) or 0, commit=min(self.log.commit, index),
                           context=RECOVERED))
        pr.recovered_sent = True

    def _able(self) -> set[int]:
        """Voters that could elect a leader, as far as we know: ourselves and
        the servers we heard from in this term that are not recovering."""
        return {pid for pid, pr in self.prs.items() if pr.heard and not pr.recovering} | {self.node_id}

    def _handle_append_ack(self, pid: int, pr: Progress, index: int) -> None:
        if index > pr.match:
            pr.match = index
            if pr.next <= index:
                pr.next = index + 1
            pr.acked(index)
            if pr.state is PState.PROBE:
                pr.become_replicate()
            elif pr.state is PState.SNAPSHOT and pr.snap is not None and index >= pr.snap.meta.index:
                pr.become_probe(index + 1)
            self._maybe_commit()
        elif index == pr.match and pr.state is PState.PROBE:
            pr.become_replicate()
        if pr.match < self.log.last_index() or pr.commit_sent < self.log.commit:
            self._dirty.add(pid)
        if pid == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(pid)

    def _handle_append_reject(self, pid: int, pr: Progress, m: Message) -> None:
        rejected = m.index
        if rejected <= pr.match:
            if not _says_recovering(m):
                return  # stale: that position is already known to match
            # A follower that lost its log suffix: what we knew it held is
            # gone.  Forget it (a lower match only delays commits) and probe.
            pr.match = 0
        if pr.state is PState.PROBE and rejected != pr.next - 1:
            return  # stale probe answer
        if pr.state is PState.SNAPSHOT:
            return
        hint = m.commit
        if m.log_term > 0:
            j = self.log.last_index_with_term_at_most(m.log_term, rejected)
            if j > self.log.offset and self.log.term(j) == m.log_term:
                hint = j + 1
        nxt = max(min(hint, rejected), pr.match + 1)
        pr.become_probe(nxt)
        self._dirty.add(pid)

    def _handle_snapshot_resp(self, pid: int, pr: Progress, m: Message) -> None:
        if pr.state is not PState.SNAPSHOT or pr.snap is None or m.index != pr.snap.meta.index:
            return
        pr.snap_inflight = False
        pr.snap_stall = 0
        if m.done:
            pr.match = max(pr.match, m.index)
            pr.become_probe(m.index + 1)
            self._maybe_commit()
        else:
            pr.snap_offset = m.offset
        self._dirty.add(pid)

    def _send_timeout_now(self, pid: int) -> None:
        self._send(Message(MsgType.TIMEOUT_NOW, self.node_id, pid, self.term))

    def _flush_leader(self) -> None:
        """Build AppendEntries for every follower with work: new entries,
        commit advances, repairs.  Called once per ready(): this is where
        proposals get batched."""
        targets = self.prs.keys() if self._bcast else list(self._dirty)
        for pid in targets:
            if pid == self.node_id:
                continue
            pr = self.prs.get(pid)
            if pr is None:
                continue
            sent = False
            for _ in range(self.cfg.max_inflight_msgs):
                if not self._send_append(pid, pr, allow_empty=False):
                    break
                sent = True
                if pr.state is not PState.REPLICATE:
                    break
            if not sent and (pid in self._nudge or pr.commit_sent < min(self.log.commit, self._sent_upto(pr))):
                self._send_append(pid, pr, allow_empty=True)
        self._dirty.clear()
        self._nudge.clear()
        self._bcast = False
        if self._read_round_wanted:
            self._read_round_wanted = False
            self._read_round += 1
            self._read_acks[self.node_id] = self._read_round
            self._bcast_heartbeat(self._read_round)
            self._release_reads()

    @staticmethod
    def _sent_upto(pr: Progress) -> int:
        """The last index a follower will hold once what we sent arrives: a
        new commit index up to it can go out at once (an empty append at it
        carries it; the follower takes it only if its log matches there), so
        a follower learns of a commit one hop after the leader does, without
        waiting for its own acknowledgement to come back first."""
        return pr.next - 1 if pr.state is PState.REPLICATE else pr.match

    def _send_append(self, pid: int, pr: Progress, *, allow_empty: bool) -> bool:
        if pr.state is PState.SNAPSHOT:
            return self._send_snapshot_chunk(pid, pr)
        if pr.paused(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes):
            return False
        lg = self.log
        if pr.next > lg.last_index() + 1:
            pr.next = lg.last_index() + 1
        prev = pr.next - 1
        prev_term = lg.term(prev)
        if prev_term is None:
            # The follower needs entries we compacted away: send the snapshot.
            if self._snap_data is None:
                return False  # none in memory yet; the driver's next compact() provides one
            pr.become_snapshot(Snapshot(self.snapshot_meta, self._snap_data))
            return self._send_snapshot_chunk(pid, pr)
        ents = []
        if pr.next <= lg.last_index():
            hi = min(lg.last_index() + 1, pr.next + self.cfg.max_append_entries)
            ents = lg.slice(pr.next, hi, self.cfg.max_append_bytes)
        if not ents and not allow_empty:
            return False
        pr.commit_sent = lg.commit
        self._send(Message(MsgType.APPEND, self.node_id, pid, self.term, log_term=prev_term,
                           index=prev, entries=ents, commit=lg.commit))
        if ents:
            pr.sent_entries(ents[-1].index, sum(len(e.data) for e in ents) + 24 * len(ents))
        elif pr.state is PState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot_chunk(self, pid: int, pr: Progress) -> bool:
        snap = pr.snap
        if snap is None or pr.snap_inflight:
            return False
        size = self.cfg.snapshot_chunk_bytes
        off = min(pr.snap_offset, len(snap.data))
        chunk = bytes(snap.data[off:off + size])  # data may be a memoryview
        done = off + len(chunk) >= len(snap.data)
        self._send(Message(MsgType.SNAPSHOT, self.node_id, pid, self.term, index=snap.meta.index,
                           log_term=snap.meta.term, membership=snap.meta.membership,
                           offset=off, data=chunk, done=done))
        pr.snap_inflight = True
        return True

    def _maybe_commit(self) -> None:
        lg = self.log
        match = {pid: pr.match for pid, pr in self.prs.items()}
        ci = quorum.committed_index(self.membership, match)
        if ci <= lg.commit or ci > lg.last_index() or lg.term(ci) != self.term:
            return  # Figure 8: only entries of our own term are committed by counting
        lg.commit = ci
        self._bcast = True
        self._on_commit_advanced()

    def _on_commit_advanced(self) -> None:
        lg = self.log
        if self._reads_before_noop and lg.term(lg.commit) == self.term:
            waiting, self._reads_before_noop = self._reads_before_noop, []
            for ctx, frm in waiting:
                self._leader_read(ctx, frm)
        m = self.membership
        if self.membership_version <= lg.commit:
            if len(self.prs) > len(m.members() | {self.node_id}):
                # The removal committed: tell the removed servers (so they know
                # they are out), then stop replicating to them.
                self._flush_leader()
                self._sync_progress()
            if m.joint:
                # C_old,new is committed: move to C_new on our own (thesis 4.3).
                final = m.voters | m.learners
                self._append_config(Membership(m.voters, frozenset(), m.learners,
                                               {k: v for k, v in m.addrs.items() if k in final}))
            elif self.node_id not in m.voters:
                self._maybe_leave()

    def _maybe_leave(self) -> None:
        """We are not in the committed C_new: hand over and step down, but
        only once a quorum of C_new can elect a leader without us.  A voter
        recovering a lost log cannot vote until a leader repairs it, and a
        change can go through before we hear that a voter restarted so (its
        first reply may still be on the way): leaving then would leave no
        leader to repair it and no quorum to elect one, for good.  Until
        then we keep leading the servers of C_new (our log commits by their
        majority alone), and check again every tick."""
        m = self.membership
        if not quorum.has_quorum(m, m.voters & self._able()):
            return
        lg = self.log
        best = max(
            (pid for pid in m.voters if pid in self.prs and not self.prs[pid].recovering),
            key=lambda p: self.prs[p].match,
            default=0,
        )
        self._flush_leader()  # let followers learn that C_new committed
        if best and self.prs[best].match == lg.last_index():
            self._send_timeout_now(best)
        self._become_follower(self.term, 0)

    def _removed(self) -> bool:
        """A leader that a committed configuration no longer counts as a voter."""
        return (self.node_id not in self.membership.all_voters()
                and self.membership_version <= self.log.commit)

    def _append_config(self, target: Membership) -> tuple[int, int]:
        e = Entry(self.term, self.log.last_index() + 1, EntryKind.CONFIG, encode_membership(target))
        self.log.append([e])
        self._confs.append((e.index, target))
        self._sync_progress()
        self._bcast = True
        return e.index, e.term

    # ------------------------------------------------------------------
    # ReadIndex
    # ------------------------------------------------------------------
    def _leader_read(self, ctx: bytes, frm: int) -> None:
        if self.log.term(self.log.commit) != self.term:
            self._reads_before_noop.append((ctx, frm))  # not yet sure what is committed
            return
        if self.membership.all_voters() <= {self.node_id}:
            self._answer_read(ctx, frm, self.log.commit)
            return
        self._pending_reads.append((ctx, frm, self.log.commit, self._read_round + 1))
        self._read_round_wanted = True

    def _release_reads(self) -> None:
        if not self._pending_reads:
            return
        confirmed = quorum.committed_index(self.membership, self._read_acks)
        keep = []
        for ctx, frm, index, rnd in self._pending_reads:
            if rnd <= confirmed:
                self._answer_read(ctx, frm, index)
            else:
                keep.append((ctx, frm, index, rnd))
        self._pending_reads = keep

    def _answer_read(self, ctx: bytes, frm: int, index: int) -> None:
        if frm == self.node_id:
            self._read_states.append(ReadState(ctx, index))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, self.node_id, frm, self.term, index=index, context=ctx))

    def _abort_leader_reads(self) -> None:
        pending = [(c, f) for c, f, _, _ in self._pending_reads] + self._reads_before_noop
        self._pending_reads, self._reads_before_noop = [], []
        self._read_round_wanted = False
        for ctx, frm in pending:
            if frm == self.node_id:
                self._failed_reads.append(ctx)
            else:
                self._msgs_after.append(Message(MsgType.READ_INDEX_RESP, self.node_id, frm, self.term,
                                                context=ctx, reject=True))

    def _handle_read_index_resp(self, m: Message) -> None:
        if self._forwarded_reads.pop(m.context, None) is None:
            return
        if m.reject:
            self._failed_reads.append(m.context)
        else:
            self._read_states.append(ReadState(m.context, m.index))

    def _age_forwarded_reads(self) -> None:
        expired = []
        for ctx in self._forwarded_reads:
            self._forwarded_reads[ctx] -= 1
            if self._forwarded_reads[ctx] <= 0:
                expired.append(ctx)
        for ctx in expired:
            del self._forwarded_reads[ctx]
            self._failed_reads.append(ctx)

    # ------------------------------------------------------------------
    # configurations in the log
    # ------------------------------------------------------------------
    def _note_configs(self, ents: list[Entry]) -> None:
        for e in ents:
            if e.kind == EntryKind.CONFIG and e.index > self._confs[-1][0]:
                self._confs.append((e.index, decode_membership(e.data)))

    def _on_truncate(self, index: int) -> None:
        while len(self._confs) > 1 and self._confs[-1][0] >= index:
            self._confs.pop()

    def _membership_at(self, index: int) -> Membership:
        for ci, m in reversed(self._confs):
            if ci <= index:
                return m
        return self._confs[0][1]

    def _drop_confs_before(self, index: int) -> None:
        """Keep the configuration in effect at ``index`` and every later one."""
        k = 0
        while k + 1 < len(self._confs) and self._confs[k + 1][0] <= index:
            k += 1
        self._confs = self._confs[k:]

    # ------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        # A leader's replication messages may overlap its own disk write, but
        # only once its term is durable: otherwise a crash could let it win the
        # same term again and hand out different entries at the same indexes.
        if self.role is Role.LEADER and m.type in _LEADER_NOW and self._durable_term == self.term:
            self._msgs_now.append(m)
        else:
            self._msgs_after.append(m)
