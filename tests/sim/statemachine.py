"""The simulated application: a hash chain over applied entries, and a fake disk.

The state machine does no real work; its whole state is (applied index, hash
of everything applied).  That is enough to detect any divergence between
servers, and small enough that a snapshot is a few bytes (padded on purpose
so that InstallSnapshot needs several chunks when the chunk size is small).
"""

from __future__ import annotations

import hashlib
import struct

import cbor2

from coord.raft.types import Entry, EntryKind, HardState, Membership, Ready, Snapshot, SnapshotMeta

from .checkers import GENESIS, LogView, chain_hash

_SNAP = struct.Struct(">4sQ16sI8s")
_MAGIC = b"SIMS"


def encode_snapshot(index: int, state_hash: bytes, pad: bytes = b"") -> bytes:
    """Snapshot payload: magic, applied index, hash, then ``pad`` filler.

    The filler is random, so two snapshots of the same state differ in their
    bytes (as real serializations may); its length and digest are in the
    header, so a payload stitched together from chunks of two different
    transfers is detected instead of silently installed."""
    digest = hashlib.blake2b(pad, digest_size=8).digest()
    return _SNAP.pack(_MAGIC, index, state_hash, len(pad), digest) + pad


def decode_snapshot(data: bytes) -> tuple[int, bytes]:
    """(applied index, hash) of a snapshot payload; ValueError if it is not one."""
    if len(data) < _SNAP.size:
        raise ValueError(f"snapshot payload too short ({len(data)} bytes)")
    magic, index, h, pad_len, digest = _SNAP.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("snapshot payload has a bad magic")
    pad = data[_SNAP.size:]
    if len(pad) != pad_len or hashlib.blake2b(pad, digest_size=8).digest() != digest:
        raise ValueError(f"snapshot payload is corrupt: {len(data)} bytes, "
                         f"header promises {_SNAP.size + pad_len} with another digest")
    return index, h


def decode_membership(data: bytes) -> Membership | None:
    """A CONFIG entry's payload (CBOR of ``Membership.to_wire()``), or None if unreadable."""
    try:
        return Membership.from_wire(cbor2.loads(data))
    except Exception:
        return None


def same_membership(a: Membership, b: Membership) -> bool:
    return a.voters == b.voters and a.outgoing == b.outgoing and a.learners == b.learners


class HashChainSM:
    """State machine of one node: applied index, term of that entry, hash,
    and the configuration in effect at the applied index (decoded from the
    applied CONFIG entries, so the driver can cross-check the core's
    snapshot metadata)."""

    __slots__ = ("applied", "term", "hash", "membership")

    def __init__(self, membership: Membership | None = None):
        self.applied = 0
        self.term = 0
        self.hash = GENESIS
        self.membership = membership

    def apply(self, e: Entry) -> None:
        self.hash = chain_hash(self.hash, e.index, e.term, e.kind, e.data)
        self.applied = e.index
        self.term = e.term
        if e.kind == EntryKind.CONFIG:
            m = decode_membership(e.data)
            if m is not None:
                self.membership = m

    def snapshot_data(self, pad: bytes = b"") -> bytes:
        return encode_snapshot(self.applied, self.hash, pad)

    def restore(self, snap: Snapshot) -> None:
        index, h = decode_snapshot(snap.data)
        if index != snap.meta.index:
            raise ValueError(f"snapshot payload is at index {index}, its metadata says {snap.meta.index}")
        self.applied = index
        self.term = snap.meta.term
        self.hash = h
        self.membership = snap.meta.membership


class FakeDisk:
    """What survives a crash: hard state, latest snapshot, log.

    ``write`` is the synced path (a whole Ready's persistence, in the order
    the Ready docstring prescribes).  ``write_ops`` replays a prefix of
    not-yet-synced writes, modelling data that reached the platter without
    an fsync before the crash.
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.log = LogView()

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def write(self, rd: Ready) -> None:
        for op in ready_ops(rd):
            self.apply_op(op)

    def apply_op(self, op: tuple) -> None:
        kind, val = op
        if kind == "snap":
            self.store_snapshot(val, install=True)
        elif kind == "ent":
            if val.index > self.snapshot_index:
                self.log.append([val])
        elif kind == "tv":
            self.hard_state = HardState(val.term, val.vote, self.hard_state.commit, val.recovering)
        elif kind == "commit":
            hs = self.hard_state
            self.hard_state = HardState(hs.term, hs.vote, val, hs.recovering)
        else:
            self.hard_state = val

    def store_snapshot(self, snap: Snapshot, *, install: bool, drop_log: bool = True) -> None:
        """Keep ``snap`` as the durable snapshot.  ``install``: it came from the
        leader, so the log follows Raft's InstallSnapshot rule; otherwise it is
        a local compaction and the covered log prefix may be dropped."""
        if snap.meta.index <= self.snapshot_index:
            return
        self.snapshot = snap
        if install:
            self.log.install_snapshot(snap.meta.index, snap.meta.term)
        elif drop_log:
            self.log.compact(snap.meta.index, snap.meta.term)

    def lose_log_after(self, index: int, *, recovering: bool) -> None:
        """Disk damage: the durable log ends at ``index`` (>= the snapshot)."""
        log = self.log
        keep = max(index, log.base_index)
        log.entries = log.entries[:keep - log.base_index]
        hs = self.hard_state
        self.hard_state = HardState(hs.term, hs.vote, min(hs.commit, max(keep, self.snapshot_index)),
                                    hs.recovering or recovering)

    def recovery_state(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
        """(hard state, snapshot meta, entries after the snapshot) for RaftCore()."""
        meta = self.snapshot.meta if self.snapshot is not None else None
        return self.hard_state, meta, self.log.after(self.snapshot_index)


def ready_ops(rd: Ready) -> list[tuple]:
    """A Ready's writes in disk order, as ``Ready`` prescribes and
    coord.storage does: term and vote, then snapshot, then entries, then the
    commit index (a record after the entries in the real WAL)."""
    ops: list[tuple] = []
    if rd.hard_state is not None:
        ops.append(("tv", rd.hard_state))
    if rd.snapshot is not None:
        ops.append(("snap", rd.snapshot))
    ops.extend(("ent", e) for e in rd.entries)
    if rd.hard_state is not None:
        ops.append(("commit", rd.hard_state.commit))
    return ops
