"""What clients did and saw, with real-time bounds, and how it is saved.

An ``Op`` is one call by one logical *process* (a sequence of calls, one
at a time, Jepsen-style): invoked at ``invoke``, answered at ``complete``,
both taken from one monotonic clock in the process that runs every client.
Its ``status`` is

* ``ok``      -- the call returned; ``out`` is what it returned;
* ``fail``    -- the ensemble definitely refused it: ``out`` is the error
  code, and only codes that describe the data (``NoNode``, ``NodeExists``,
  ``BadVersion``) count, because they are answers of the state machine;
* ``unknown`` -- connection loss, timeout, session expiry, or still in
  flight when the run ended: a write may or may not have been applied (the
  SDK retries a write with the same seq, so after a lost connection the
  outcome is genuinely unknown), a read tells nothing.

Values are ``str`` (the workload writes unique ASCII values), so a history
is plain JSON and a saved one can be re-checked (``--check FILE``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Errors that are the state machine's answer about the data: a definite outcome.
DEFINITE_ERRORS = frozenset({"NoNode", "NodeExists", "BadVersion"})
READS = frozenset({"get", "read"})  # "get" is linearizable, "read" a plain (local) read


@dataclass(slots=True)
class Op:
    id: int
    process: int
    session: int  # which client (session) the process uses
    f: str  # get | read | set | cas | create | delete
    key: str
    value: str | None = None  # written value (set, cas, create)
    expect: int | None = None  # expected version (cas, delete; -1 = any)
    invoke: float = 0.0
    complete: float | None = None
    status: str = "pending"  # ok | fail | unknown | pending
    out: Any = None  # get/read: None (absent) or [value, version]; set/cas: new version; fail: error code
    mzxid: int | None = None  # the node's mzxid in the result, when the result has a stat

    @property
    def is_read(self) -> bool:
        return self.f in READS

    def describe(self, t0: float = 0.0) -> str:
        args = self.key
        if self.value is not None:
            args += f" {self.value!r}"
        if self.expect is not None and self.expect != -1:
            args += f" @v{self.expect}"
        end = "..." if self.complete is None else f"{self.complete - t0:8.3f}"
        if self.status == "ok":
            res = "absent" if self.is_read and self.out is None else f"{self.out}"
        else:
            res = f"{self.status} {self.out or ''}".strip()
        return f"[{self.invoke - t0:8.3f} {end}] p{self.process:<2} {self.f:<6} {args} -> {res}"


class History:
    """Append-only record of ``Op``s; the ids are positions in ``ops``."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def invoke(self, process: int, session: int, f: str, key: str, now: float, *, value: str | None = None,
               expect: int | None = None) -> Op:
        op = Op(len(self.ops), process, session, f, key, value, expect, invoke=now)
        self.ops.append(op)
        return op

    @staticmethod
    def ok(op: Op, now: float, out: Any = None, mzxid: int | None = None) -> None:
        op.complete, op.status, op.out, op.mzxid = now, "ok", out, mzxid

    @staticmethod
    def error(op: Op, now: float, code: str) -> None:
        """A call raised: a definite failure if the code is about the data,
        else the outcome is unknown (a read that failed tells nothing)."""
        op.complete, op.out = now, code
        op.status = "fail" if code in DEFINITE_ERRORS else "unknown"

    def finish(self) -> None:
        """The run is over: calls still in flight have unknown outcomes."""
        for op in self.ops:
            if op.status == "pending":
                op.status = "unknown"

    def to_list(self) -> list[dict]:
        return [asdict(op) for op in self.ops]

    @classmethod
    def from_list(cls, rows: list[dict]) -> "History":
        h = cls()
        h.ops = [Op(**row) for row in rows]
        return h


@dataclass
class RunRecord:
    """Everything one schedule produced: enough to re-run every checker."""

    seed: int
    t0: float = 0.0
    timeline: list[str] = field(default_factory=list)
    lin: list[dict] = field(default_factory=list)
    creates: dict = field(default_factory=dict)
    ephemerals: dict = field(default_factory=dict)
    locks: dict = field(default_factory=dict)
    watches: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)

    def save(self, directory: str | None = None) -> str:
        directory = directory or os.path.join(tempfile.gettempdir(), "coord-faults")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"history-seed{self.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=None, separators=(",", ":"), default=_jsonable)
        return path

    @classmethod
    def load(cls, path: str) -> "RunRecord":
        with open(path) as f:
            return cls(**json.load(f))


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")
