"""The replicated session table and its exactly-once memory.

A session is born at the zxid of its ``session_open`` entry (that zxid is
its id, so ids are unique and identical on every server) and ends when it
is closed or expired, taking its ephemeral nodes with it.

Exactly-once: a client retries a write whose outcome it did not learn with
the same (sid, seq).  The session remembers the result of its last
``window`` seqs; a retry of one of them gets the remembered result instead
of being applied twice.  A seq at or below the highest one already
forgotten is refused: whether it was applied can no longer be told, and
guessing would break exactly-once.
"""

from __future__ import annotations

import heapq

from coordclient.errors import BadArgumentsError

DEFAULT_DEDUP_WINDOW = 1024


class Session:
    __slots__ = ("timeout_ms", "secret", "ephemerals", "results", "seqs", "floor", "last_t", "ids")

    def __init__(self, timeout_ms: int, secret: bytes, last_t: int) -> None:
        self.timeout_ms = timeout_ms
        self.secret = secret
        self.last_t = last_t  # the leader's clock ("t") in the last command from this session
        self.ephemerals: set[str] = set()
        self.results: dict[int, dict] = {}  # seq -> result
        self.seqs: list[int] = []  # min-heap of results' keys, to forget the smallest first
        self.floor = 0  # highest seq forgotten
        self.ids: tuple[tuple[str, str], ...] = ()  # identities added with add_auth (digest)

    def recall(self, seq: int) -> dict | None:
        """The remembered result of ``seq``, None if it was never applied."""
        result = self.results.get(seq)
        if result is None and seq <= self.floor:
            raise BadArgumentsError(f"request seq {seq} is too old to tell whether it was applied")
        return result

    def remember(self, seq: int, result: dict, window: int) -> None:
        self.results[seq] = result
        heapq.heappush(self.seqs, seq)
        while len(self.seqs) > window:
            old = heapq.heappop(self.seqs)
            del self.results[old]
            if old > self.floor:
                self.floor = old

    def to_row(self, sid: int, *, redact_secret: bool = False) -> list:
        return [sid, self.timeout_ms, b"" if redact_secret else self.secret, self.last_t, self.floor,
                [[seq, self.results[seq]] for seq in sorted(self.results)], [list(i) for i in self.ids]]

    @classmethod
    def from_row(cls, row: list) -> tuple[int, "Session"]:
        sid, timeout_ms, secret, last_t, floor, results, *rest = row  # rest: ids (absent before ACLs)
        s = cls(timeout_ms, secret, last_t)
        s.floor = floor
        if rest:
            s.ids = tuple((a, b) for a, b in rest[0])
        s.results = {seq: r for seq, r in results}
        s.seqs = sorted(s.results)  # a sorted list is a valid heap
        return sid, s


class SessionTable:
    __slots__ = ("by_id", "window", "changes")

    def __init__(self, window: int = DEFAULT_DEDUP_WINDOW) -> None:
        self.by_id: dict[int, Session] = {}
        self.window = window
        self.changes = 0  # bumped whenever a session appears or goes: lets watchers skip rescans

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, sid: int) -> Session | None:
        return self.by_id.get(sid)

    def open(self, sid: int, timeout_ms: int, secret: bytes, t: int) -> Session:
        s = self.by_id[sid] = Session(timeout_ms, secret, t)
        self.changes += 1
        return s

    def remove(self, sid: int) -> Session:
        self.changes += 1
        return self.by_id.pop(sid)

    def put_back(self, sid: int, session: Session) -> None:
        self.changes += 1
        self.by_id[sid] = session

    def to_rows(self, *, redact_secrets: bool = False) -> list[list]:
        return [s.to_row(sid, redact_secret=redact_secrets) for sid, s in sorted(self.by_id.items())]

    @classmethod
    def from_rows(cls, rows: list, window: int) -> "SessionTable":
        table = cls(window)
        for row in rows:
            sid, s = Session.from_row(row)
            table.by_id[sid] = s
        return table
