"""The replicated session table and its exactly-once memory.

A session is born at the zxid of its ``session_open`` entry (that zxid is
its id, so ids are unique and identical on every server) and ends when it
is closed or expired, taking its ephemeral nodes with it.

Exactly-once: a client retries a write whose outcome it did not learn with
the same (sid, seq).  The session remembers the result of its last
``window`` seqs, as long as they take at most ``DEDUP_BYTES`` (the newest
is always kept); a retry of one of them gets the remembered result instead
of being applied twice.  A seq at or below the highest one already
forgotten is refused: whether it was applied can no longer be told, and
guessing would break exactly-once.

Results are remembered encoded (CBOR ``bytes``, one object each): a
remembered result is read back only when a request is retried, and the
decoded form of a multi of 1,000 creates (1,000 maps and stat lists) cost
~450 bytes per node it created, as long as the session lived, and left the
heap fragmented after it ended (S1: 819 -> 418 bytes a node of RSS with
nothing remembered).  Encoded, it is ~70 bytes per created node, and
``DEDUP_BYTES`` bounds a session's memory whatever the size of its writes
(1,024 results of big multis could otherwise take a gigabyte); a client
retries only what it has in flight, far less than that.
"""

from __future__ import annotations

import heapq
from typing import Any

import cbor2

from coordclient.errors import BadArgumentsError

DEFAULT_DEDUP_WINDOW = 1024
DEDUP_BYTES = 1 << 20  # encoded results a session remembers at most (besides its newest)


class Session:
    __slots__ = ("timeout_ms", "secret", "ephemerals", "results", "seqs", "floor", "last_t", "ids", "held")

    results: dict[int, bytes]

    def __init__(self, timeout_ms: int, secret: bytes, last_t: int) -> None:
        self.timeout_ms = timeout_ms
        self.secret = secret
        self.last_t = last_t  # the leader's clock ("t") in the last command from this session
        self.ephemerals: set[str] = set()
        self.results = {}  # seq -> result, CBOR-encoded
        self.seqs: list[int] = []  # min-heap of results' keys, to forget the smallest first
        self.floor = 0  # highest seq forgotten
        self.ids: tuple[tuple[str, str], ...] = ()  # identities added with add_auth (digest)
        self.held = 0  # bytes of the remembered results

    def recall(self, seq: int) -> dict | None:
        """The remembered result of ``seq`` (a fresh copy), None if it was never applied."""
        result = self.results.get(seq)
        if result is None:
            if seq <= self.floor:
                raise BadArgumentsError(f"request seq {seq} is too old to tell whether it was applied")
            return None
        return cbor2.loads(result)

    def remember(self, seq: int, result: dict, window: int) -> None:
        encoded = self.results[seq] = cbor2.dumps(result)
        self.held += len(encoded)
        heapq.heappush(self.seqs, seq)
        while len(self.seqs) > window or (self.held > DEDUP_BYTES and len(self.seqs) > 1):
            old = heapq.heappop(self.seqs)
            self.held -= len(self.results.pop(old))
            if old > self.floor:
                self.floor = old

    def to_row(self, sid: int, *, redact_secret: bool = False) -> list:
        """[sid, timeout_ms, secret, last_t, floor, [[seq, encoded result]...], ids, sorted ephemerals]."""
        return [sid, self.timeout_ms, b"" if redact_secret else self.secret, self.last_t, self.floor,
                [[seq, self.results[seq]] for seq in sorted(self.results)], [list(i) for i in self.ids],
                sorted(self.ephemerals)]

    @classmethod
    def from_row(cls, row: list) -> tuple[int, "Session"]:
        """Inverse of to_row, also of the rows of older snapshots: without ids
        and ephemerals (format /1), without ephemerals (/2), with results as
        maps (/1 and /2)."""
        sid, timeout_ms, secret, last_t, floor, results, *rest = row
        s = cls(timeout_ms, secret, last_t)
        s.floor = floor
        if rest:
            s.ids = tuple((a, b) for a, b in rest[0])
        if len(rest) > 1:
            s.ephemerals = set(rest[1])
        s.results = {seq: r if type(r) is bytes else _encode_result(r) for seq, r in results}
        s.held = sum(map(len, s.results.values()))
        s.seqs = sorted(s.results)  # a sorted list is a valid heap
        return sid, s


def _encode_result(r: Any) -> bytes:
    if type(r) is not dict:
        raise ValueError("a remembered result is a map")
    return cbor2.dumps(r)


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
