"""Tunables of the Raft core, in ticks and sizes (the core has no clock)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RaftConfig:
    # A follower campaigns after a randomized timeout in [election_ticks, 2*election_ticks).
    election_ticks: int = 10
    # A leader sends heartbeats (and read-index rounds) every heartbeat_ticks.
    heartbeat_ticks: int = 1
    # Pre-vote: a server first asks whether it *could* win before bumping its term.
    pre_vote: bool = True
    # Check-quorum: a leader that has not heard from a quorum within an
    # election timeout steps down; followers that heard from a leader within
    # election_ticks ignore (pre-)vote requests.
    check_quorum: bool = True
    # Replication batching and flow control, per follower.
    max_append_entries: int = 1024
    max_append_bytes: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 32 << 20
    # Size of one InstallSnapshot chunk.
    snapshot_chunk_bytes: int = 1 << 20
    # A pending leadership transfer is abandoned after this many ticks.
    transfer_timeout_ticks: int = 20

    def __post_init__(self) -> None:
        if self.election_ticks < 2 or self.heartbeat_ticks < 1:
            raise ValueError("election_ticks must be >= 2 and heartbeat_ticks >= 1")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ValueError("heartbeat_ticks must be smaller than election_ticks")
        for name in ("max_append_entries", "max_append_bytes", "max_inflight_msgs",
                     "max_inflight_bytes", "snapshot_chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
