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


class SessionTracker:
    def __init__(self) -> None:
        self._deadline: dict[int, float] = {}
        self._timeout: dict[int, float] = {}
        self._expiring: dict[int, float] = {}  # sid -> when we last proposed its expiry

    def __len__(self) -> int:
        return len(self._deadline)

    def reset(self, sessions: dict[int, int], now: float) -> None:
        """Start tracking exactly ``sessions`` (sid -> timeout ms), each with a full timeout."""
        self._deadline = {sid: now + ms / 1000 for sid, ms in sessions.items()}
        self._timeout = {sid: ms / 1000 for sid, ms in sessions.items()}
        self._expiring.clear()

    def reconcile(self, sessions: dict[int, int], now: float) -> None:
        """Follow the replicated session table: track new sessions, forget ended ones."""
        for sid, ms in sessions.items():
            if sid not in self._deadline:
                self._deadline[sid] = now + ms / 1000
                self._timeout[sid] = ms / 1000
        if len(self._deadline) != len(sessions):
            for sid in [s for s in self._deadline if s not in sessions]:
                del self._deadline[sid]
                del self._timeout[sid]
                self._expiring.pop(sid, None)

    def touch(self, sid: int, now: float) -> None:
        t = self._timeout.get(sid)
        if t is not None:
            self._deadline[sid] = now + t
            self._expiring.pop(sid, None)

    def expired(self, now: float, retry_after: float) -> list[int]:
        """Sessions past their deadline whose expiry is not already proposed
        (or was proposed more than ``retry_after`` seconds ago and not applied)."""
        out = []
        for sid, dl in self._deadline.items():
            if dl < now:
                last = self._expiring.get(sid)
                if last is None or now - last > retry_after:
                    out.append(sid)
        for sid in out:
            self._expiring[sid] = now
        return sorted(out)
