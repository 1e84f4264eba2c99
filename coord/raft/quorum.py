"""Majority arithmetic for simple and joint configurations.

Joint consensus (C_old,new) needs a majority of *both* voter sets for every
decision, so each function computes the answer per set and combines them.
An empty outgoing set means "not joint" and never constrains anything.
"""

from __future__ import annotations

import enum
from typing import Mapping

from .types import Membership

UNBOUNDED = 1 << 62  # the committed index of an empty voter set: no constraint


class VoteResult(enum.Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def _majority_index(voters: frozenset[int], match: Mapping[int, int]) -> int:
    if not voters:
        return UNBOUNDED
    vals = sorted((match.get(v, 0) for v in voters), reverse=True)
    return vals[len(vals) // 2]


def committed_index(m: Membership, match: Mapping[int, int]) -> int:
    """Highest index held by a majority of every voter set in ``m``."""
    if not m.voters:
        return 0
    return min(_majority_index(m.voters, match), _majority_index(m.outgoing, match))


def _vote(voters: frozenset[int], votes: Mapping[int, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    need = len(voters) // 2 + 1
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def vote_result(m: Membership, votes: Mapping[int, bool]) -> VoteResult:
    if not m.voters:
        return VoteResult.LOST
    a, b = _vote(m.voters, votes), _vote(m.outgoing, votes)
    if VoteResult.LOST in (a, b):
        return VoteResult.LOST
    if a is VoteResult.WON and b is VoteResult.WON:
        return VoteResult.WON
    return VoteResult.PENDING


def has_quorum(m: Membership, active: set[int] | frozenset[int]) -> bool:
    """True if ``active`` contains a majority of every voter set."""
    return vote_result(m, {v: True for v in active}) is VoteResult.WON
