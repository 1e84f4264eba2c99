"""Session liveness, as the leader sees it.

Sessions themselves (id, secret, timeout, ephemerals) are replicated state;
*liveness* is not: it is the leader's local view of when it last heard of
each session, from its own clients or from followers' batched keepalives.
Only the leader decides expiry, and it does so by proposing an expiry entry,
so every server deletes the same ephemerals at the same zxid.

A newly elected leader knows nothing of recent keepalives, so it starts every
session with a fresh full timeout (``reset``): an election never causes a
mass expiry.
"""

from __future__ import annotations

import heapq


class SessionTracker:
    """Deadlines of the tracked sessions, with a heap so that finding the
    expired ones costs O(expired + sessions/timeout) per second, not a scan
    of every session each period (which, with 10,000 idle sessions, was
    most of an idle leader's CPU).

    Every tracked session has exactly one heap entry whose time is <= its
    deadline; ``touch`` only moves the deadline later, so it pushes nothing.
    An entry popped early is pushed again at the session's real deadline.
    """

    def __init__(self) -> None:
        self._deadline: dict[int, float] = {}
        self._timeout: dict[int, float] = {}
        self._expiring: dict[int, float] = {}  # sid -> when we last proposed its expiry
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._deadline)

    def reset(self, sessions: dict[int, int], now: float) -> None:
        """Start tracking exactly ``sessions`` (sid -> timeout ms), each with a full timeout."""
        self._deadline = {sid: now + ms / 1000 for sid, ms in sessions.items()}
        self._timeout = {sid: ms / 1000 for sid, ms in sessions.items()}
        self._expiring.clear()
        self._heap = [(dl, sid) for sid, dl in self._deadline.items()]
        heapq.heapify(self._heap)

    def reconcile(self, sessions: dict[int, int], now: float) -> None:
        """Follow the replicated session table: track new sessions, forget ended ones."""
        for sid, ms in sessions.items():
            if sid not in self._deadline:
                dl = self._deadline[sid] = now + ms / 1000
                self._timeout[sid] = ms / 1000
                heapq.heappush(self._heap, (dl, sid))
        if len(self._deadline) != len(sessions):
            for sid in [s for s in self._deadline if s not in sessions]:
                del self._deadline[sid]  # its heap entry is dropped when popped
                del self._timeout[sid]
                self._expiring.pop(sid, None)

    def touch(self, sid: int, now: float) -> None:
        t = self._timeout.get(sid)
        if t is not None:
            self._deadline[sid] = now + t
            if self._expiring:
                self._expiring.pop(sid, None)

    def expired(self, now: float, retry_after: float) -> list[int]:
        """Sessions past their deadline whose expiry is not already proposed
        (or was proposed more than ``retry_after`` seconds ago and not applied)."""
        heap = self._heap
        out = []
        while heap and heap[0][0] < now:
            _, sid = heapq.heappop(heap)
            dl = self._deadline.get(sid)
            if dl is None:
                continue  # no longer tracked
            if dl >= now:
                heapq.heappush(heap, (dl, sid))  # touched since: check again at its deadline
                continue
            last = self._expiring.get(sid)
            if last is None or now - last > retry_after:
                out.append(sid)
                self._expiring[sid] = now
                last = now
            heapq.heappush(heap, (last + retry_after + 1e-6, sid))  # retry if the expiry never applies
        return sorted(out)
