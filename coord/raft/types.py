"""Plain data types shared by the Raft core, its storage and its drivers.

Everything here is a value: no methods that do I/O, no references to the
core.  The simulator, the storage layer and the peer transport all speak in
these types, so they are kept small, slotted and cheap to build (a busy leader
creates hundreds of thousands of them per second).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class EntryKind(enum.IntEnum):
    """What an entry's payload means to the layers above the log."""

    NORMAL = 0  # opaque application command (bytes)
    NOOP = 1  # appended by every new leader; commits earlier terms (Figure 8)
    CONFIG = 2  # payload is a Membership encoded with Membership.to_wire()


@dataclass(slots=True, frozen=True)
class Entry:
    term: int
    index: int
    kind: int = EntryKind.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    """State that must be on disk before any message that depends on it leaves."""

    term: int = 0
    vote: int = 0  # 0 = voted for nobody (server ids are >= 1)
    commit: int = 0
    # This server restarted on a log that lost entries it had acknowledged
    # (the operator accepted the loss): it must not vote or campaign until a
    # leader has given it back everything (see RaftCore, "recovering").
    recovering: bool = False


@dataclass(slots=True, frozen=True)
class Membership:
    """A cluster configuration.

    ``voters`` is C_new (or the only configuration when ``outgoing`` is
    empty).  While a joint-consensus change is in flight, ``outgoing`` holds
    C_old and every decision needs a majority of *both* sets.  ``learners``
    receive the log but neither vote nor count.  ``addrs`` is opaque to the
    core: the driver keeps peer/client addresses there so that a
    configuration entry tells every server how to reach a new member.
    """

    voters: frozenset[int] = frozenset()
    outgoing: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    addrs: dict[int, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def joint(self) -> bool:
        return bool(self.outgoing)

    def all_voters(self) -> frozenset[int]:
        return self.voters | self.outgoing

    def members(self) -> frozenset[int]:
        return self.voters | self.outgoing | self.learners

    def to_wire(self) -> dict:
        return {
            "v": sorted(self.voters),
            "o": sorted(self.outgoing),
            "l": sorted(self.learners),
            "a": {int(k): v for k, v in self.addrs.items()},
        }

    @classmethod
    def from_wire(cls, d: dict) -> "Membership":
        return cls(
            voters=frozenset(int(x) for x in d.get("v", ())),
            outgoing=frozenset(int(x) for x in d.get("o", ())),
            learners=frozenset(int(x) for x in d.get("l", ())),
            addrs={int(k): v for k, v in (d.get("a") or {}).items()},
        )


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    membership: Membership = field(default_factory=Membership)


@dataclass(slots=True, frozen=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes | memoryview  # a memoryview of a mapped file when read back from disk


class MsgType(enum.IntEnum):
    PREVOTE = 1
    PREVOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # one chunk of an InstallSnapshot transfer
    SNAPSHOT_RESP = 10
    TIMEOUT_NOW = 11  # leadership transfer: "campaign now, skip pre-vote"
    READ_INDEX = 12  # follower -> leader: confirm leadership for a read
    READ_INDEX_RESP = 13
    # (Service traffic, such as forwarded writes, is not Raft: it has its own
    # typed messages in coord.transport.envelope.)


@dataclass(slots=True)
class Message:
    """One peer-to-peer message.  A single flat shape for every type keeps
    the wire codec trivial; unused fields stay at their defaults.

    Field use by type:
      PREVOTE/VOTE:      term (the candidate's, +1 for pre-vote), index/log_term
                         (candidate's last entry), context=b"transfer" for a
                         leadership-transfer election.
      *_RESP (votes):    term, reject.
      APPEND:            index/log_term (the entry before ``entries``),
                         entries, commit.
      APPEND_RESP:       index (highest index known to match on success; on
                         reject the conflict hint index), log_term (conflict
                         term on reject, 0 if the follower's log was short),
                         reject, context=b"recovering" from a server that
                         lost a log suffix (see API.md).
      APPEND (repair):   context=b"recovered": the follower now holds the
                         leader's whole log and may vote again.
      HEARTBEAT:         commit, context (read-index round, 8 bytes or empty).
      HEARTBEAT_RESP:    context echoed; reject=True from a server that
                         lost a log suffix (it does not refuse the heartbeat:
                         the context is taken, and the leader must learn of
                         the loss from every kind of reply).
      SNAPSHOT:          snapshot meta (index/log_term + membership), offset,
                         data (chunk), done.
      SNAPSHOT_RESP:     index (snapshot index), offset (bytes received so
                         far), reject, done (installed), context=b"recovering"
                         as for APPEND_RESP.
      READ_INDEX(_RESP): context (caller's request id), index (read index),
                         reject when the leader cannot serve it.
    """

    type: int
    frm: int
    to: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    context: bytes = b""
    membership: Membership | None = None
    offset: int = 0
    data: bytes = b""
    done: bool = False


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(slots=True, frozen=True)
class SoftState:
    """Who leads and what this server is: volatile, handed out in a Ready
    whenever it changes (as etcd's SoftState), so that drivers and services
    learn of elections without polling the core."""

    leader: int
    role: Role
    term: int


@dataclass(slots=True, frozen=True)
class ReadState:
    """A read that may be served once the local applied index reaches ``index``."""

    context: bytes
    index: int


@dataclass(slots=True)
class Ready:
    """Everything the core wants done, one batch at a time.

    A driver handles readies strictly in order:

      1. send ``messages`` at once (leader replication: safe to overlap with
         the leader's own disk write);
      2. persist, with as few fsyncs as possible: the term and vote of
         ``hard_state`` first (a log entry must never be durable before the
         term it belongs to), then ``snapshot`` (if any), then ``entries`` (the
         first entry's index may be <= the last stored index: truncate the
         stored log from there) and the commit index;
      3. send ``messages_after_persist`` (votes and acknowledgements that
         promise something is on disk);
      4. call ``core.on_persisted(ready)``;
      5. apply ``snapshot`` to the state machine (if any) and then
         ``committed`` in order; deliver ``read_states`` once applied.

    Steps 2-5 of one ready must finish before steps 2-5 of the next begin
    (a FIFO), but step 1 of later readies may run while an earlier one is
    still being written: that overlap is where group commit comes from.

    A hard state that differs from the last durable one only in ``commit``
    needs no fsync of its own (``needs_sync``) *when no earlier write is
    still in progress*: then every entry handed out is durable here, so the
    commit index (which never passes the last entry) is covered by this
    server's durable log, and committed entries are on a majority's disks;
    the commit index on disk is only a restart hint.  A driver may write it
    with the next batch that syncs anyway.  (With writes in progress, the
    ready queues behind them as usual.)
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    failed_reads: list[bytes] = field(default_factory=list)  # contexts of read_index calls that cannot be served
    soft_state: SoftState | None = None  # set when leader, role or term changed since the last Ready

    def needs_sync(self, durable: HardState) -> bool:
        """Whether this ready must be fsync'd before steps 3-5, given the
        term and vote already durable (a commit-only change does not)."""
        if self.entries or self.snapshot is not None:
            return True
        hs = self.hard_state
        return hs is not None and (hs.term != durable.term or hs.vote != durable.vote)

    def empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.messages_after_persist
            or self.committed
            or self.read_states
            or self.failed_reads
            or self.soft_state
        )


class ProposalDropped(Exception):
    """Raised by propose() when this server cannot accept a proposal now
    (not the leader, or a leadership transfer is in progress).  ``leader``
    is the id of the leader this server knows of, or 0."""

    def __init__(self, reason: str, leader: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.leader = leader


class ConfChangeError(Exception):
    """A membership change was refused; the message says why."""
