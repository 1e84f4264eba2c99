"""The simulated network: delay, loss, duplication and partitions.

Reordering is not a separate knob: every copy of every message gets its own
random delay (occasionally a long one), so later messages overtake earlier
ones as a matter of course.
"""

from __future__ import annotations

import random

from coord.raft.types import Message


def copy_message(m: Message) -> Message:
    """A private copy of ``m``: each delivery (and each duplicate) gets its
    own object, so nothing a receiver does can change what another sees.
    Entries, memberships and bytes are immutable and can be shared."""
    return Message(
        m.type, m.frm, m.to, m.term, m.log_term, m.index, list(m.entries), m.commit,
        m.reject, m.context, m.membership, m.offset, m.data, m.done,
    )


class Network:
    def __init__(self, rng: random.Random, *, delay_us: tuple[int, int], long_delay_prob: float,
                 long_delay_us: int, drop_prob: float, dup_prob: float):
        self.rng = rng
        self.delay_lo, self.delay_hi = delay_us
        self.long_delay_prob = long_delay_prob
        self.long_delay_us = long_delay_us
        self.drop_prob = drop_prob
        self.dup_prob = dup_prob
        self.burst_drop = 0.0
        self._blocked: dict[tuple[int, int], int] = {}  # directed link -> number of partitions cutting it

    # --- partitions -------------------------------------------------------
    def block(self, links: list[tuple[int, int]]) -> None:
        for link in links:
            self._blocked[link] = self._blocked.get(link, 0) + 1

    def unblock(self, links: list[tuple[int, int]]) -> None:
        for link in links:
            n = self._blocked.get(link, 0) - 1
            if n > 0:
                self._blocked[link] = n
            else:
                self._blocked.pop(link, None)

    def heal_all(self) -> None:
        self._blocked.clear()
        self.burst_drop = 0.0

    def blocked(self, frm: int, to: int) -> bool:
        return (frm, to) in self._blocked

    @property
    def partitioned(self) -> bool:
        return bool(self._blocked)

    # --- sending ----------------------------------------------------------
    def _delay(self) -> int:
        rng = self.rng
        if rng.random() < self.long_delay_prob:
            return rng.randint(self.delay_hi, self.long_delay_us)
        return rng.randint(self.delay_lo, self.delay_hi)

    def plan(self, m: Message) -> list[int]:
        """Delays (microseconds) of the copies of ``m`` that will arrive: none
        if lost, two if duplicated.  A partition is checked again on arrival."""
        if (m.frm, m.to) in self._blocked:
            return []
        rng = self.rng
        drop = self.drop_prob if self.drop_prob > self.burst_drop else self.burst_drop
        if drop and rng.random() < drop:
            return []
        delays = [self._delay()]
        if self.dup_prob and rng.random() < self.dup_prob:
            delays.append(self._delay())
        return delays
