"""Commands: what a Raft entry of the namespace carries, and their typed form.

The data of a NORMAL entry is ``cbor2.dumps(cmd)``, ``cmd`` a map::

    {"op": str, "t": int (leader's clock, ms), "sid": int (0 = none),
     "seq": int (per-session request number, 0 = no dedup), ...op fields}

    create         path: str, data: bytes = b"", eph/sq/parents: bool = False
    delete         path: str, version: int = -1, recursive: bool = False
    set            path: str, data: bytes = b"", version: int = -1
    multi          ops: [ {"op": "check"|"create"|"set"|"delete", ...fields} ]
    check          (multi only) path: str, version: int = -1
    session_open   timeout_ms: int > 0, secret: bytes = b""
    session_close  -
    session_expire sids: [int > 0]

Decoding is strict (exact types, no unknown fields), because every server
must accept or refuse exactly the same bytes, and a misspelt field silently
taking its default (say, ``version`` -1 on a delete) would be worse than an
error.  Paths are checked when the command runs, where a bad path is an
ordinary InvalidPath result (inside a multi: with the op's index).  The
leader encodes through the same checks (``encode_command``), so a bad
request is refused before it reaches the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from coordclient.errors import BadArgumentsError, CoordError, MultiError, UnimplementedError
from coordclient.protocol import Err


@dataclass(slots=True, frozen=True)
class Create:
    path: str
    data: bytes = b""
    eph: bool = False
    sq: bool = False
    parents: bool = False


@dataclass(slots=True, frozen=True)
class Delete:
    path: str
    version: int = -1
    recursive: bool = False


@dataclass(slots=True, frozen=True)
class SetData:
    path: str
    data: bytes = b""
    version: int = -1


@dataclass(slots=True, frozen=True)
class Check:
    path: str
    version: int = -1


@dataclass(slots=True, frozen=True)
class Multi:
    ops: tuple  # of Create | Delete | SetData | Check


@dataclass(slots=True, frozen=True)
class SessionOpen:
    timeout_ms: int
    secret: bytes = b""


@dataclass(slots=True, frozen=True)
class SessionClose:
    pass


@dataclass(slots=True, frozen=True)
class SessionExpire:
    sids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class Command:
    op: str
    body: Any  # one of the classes above
    t: int = 0
    sid: int = 0
    seq: int = 0

    @property
    def dedup(self) -> bool:
        """Is this a write whose result the session remembers by seq?"""
        return self.seq > 0 and self.sid != 0 and self.op in WRITE_OPS


WRITE_OPS = frozenset({"create", "delete", "set", "multi"})
MULTI_OPS = frozenset({"check", "create", "set", "delete"})
_REQUIRED = object()
_ENVELOPE = ("op", "t", "sid", "seq")

# op -> (class, ((field, type, default), ...)); type list means "list", checked further below.
_SCHEMA: dict[str, tuple[type, tuple]] = {
    "create": (Create, (("path", str, _REQUIRED), ("data", bytes, b""), ("eph", bool, False),
                        ("sq", bool, False), ("parents", bool, False))),
    "delete": (Delete, (("path", str, _REQUIRED), ("version", int, -1), ("recursive", bool, False))),
    "set": (SetData, (("path", str, _REQUIRED), ("data", bytes, b""), ("version", int, -1))),
    "check": (Check, (("path", str, _REQUIRED), ("version", int, -1))),
    "multi": (Multi, (("ops", list, _REQUIRED),)),
    "session_open": (SessionOpen, (("timeout_ms", int, _REQUIRED), ("secret", bytes, b""))),
    "session_close": (SessionClose, ()),
    "session_expire": (SessionExpire, (("sids", list, _REQUIRED),)),
}


def _field(d: dict, name: str, typ: type, default: Any) -> Any:
    v = d.get(name, default)
    if v is _REQUIRED:
        raise BadArgumentsError(f"missing field {name!r}")
    if type(v) is not typ:  # exact: bool is not an int here, bytearray is not bytes
        raise BadArgumentsError(f"field {name!r} must be {typ.__name__}")
    return v


def _body(op: Any, d: dict, allowed_extra: tuple[str, ...]) -> Any:
    if not isinstance(op, str):
        raise BadArgumentsError("'op' must be a string")
    spec = _SCHEMA.get(op)
    if spec is None:
        raise UnimplementedError(f"unknown operation {op!r}"[:200])
    cls, fields = spec
    known = {name for name, _, _ in fields}
    for k in d:
        if k not in known and k not in allowed_extra:
            raise BadArgumentsError(f"unknown field {k!r} for {op}"[:200])
    vals = {name: _field(d, name, typ, default) for name, typ, default in fields}
    if vals.get("version", -1) < -1:
        raise BadArgumentsError("'version' must be >= -1")
    if op == "session_open" and vals["timeout_ms"] <= 0:
        raise BadArgumentsError("'timeout_ms' must be positive")
    if op == "session_expire":
        sids = vals["sids"]
        if any(type(s) is not int or s <= 0 for s in sids):
            raise BadArgumentsError("'sids' must be a list of positive integers")
        vals["sids"] = tuple(sids)
    if op == "multi":
        vals["ops"] = _multi_ops(vals["ops"])
    return cls(**vals)


def _multi_ops(raw: list) -> tuple:
    ops = []
    for i, o in enumerate(raw):
        try:
            if type(o) is not dict:
                raise BadArgumentsError("a multi operation must be a map")
            op = o.get("op")
            if isinstance(op, str) and op in _SCHEMA and op not in MULTI_OPS:
                raise BadArgumentsError(f"{op} is not allowed inside a multi")
            ops.append(_body(op, o, ("op",)))
        except CoordError as e:
            raise multi_failure(i, e, len(raw)) from None
    return tuple(ops)


def multi_failure(index: int, cause: CoordError, n_ops: int) -> MultiError:
    """A MultiError whose ``results`` are the wire form of each op's outcome:
    the failing op's error, RuntimeInconsistency for the others."""
    msg = f"the multi failed at operation {index}"
    results = [{"err": Err.RUNTIME_INCONSISTENCY.value, "msg": msg, "path": None} for _ in range(n_ops)]
    results[index] = {"err": cause.code.value, "msg": cause.message, "path": cause.path}
    return MultiError(cause.message, path=cause.path, index=index, cause=cause, results=results)


def parse_command(d: Any) -> Command:
    """Typed form of a command map; raises CoordError (BadArguments,
    Unimplemented, or MultiError for a bad op inside a multi)."""
    if type(d) is not dict:
        raise BadArgumentsError("a command must be a map")
    env = [_field(d, k, int, 0) for k in _ENVELOPE[1:]]
    if any(v < 0 for v in env):
        raise BadArgumentsError("'t', 'sid' and 'seq' must be >= 0")
    op = d.get("op")
    return Command(op, _body(op, d, _ENVELOPE), *env)


def decode_command(data: bytes) -> Command:
    try:
        d = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types on garbage; all mean the same here
        raise BadArgumentsError(f"malformed command: {e}"[:200]) from None
    return parse_command(d)


def _plain(v: Any) -> Any:
    """Enums (protocol.Op) to their plain values, memoryviews to bytes."""
    if isinstance(v, str):
        return str(v.value) if hasattr(v, "value") else v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


def encode_command(op: str, *, t: int = 0, sid: int = 0, seq: int = 0, **fields: Any) -> bytes:
    """The entry data for one command, checked as decode_command will check it.
    ``ops`` of a multi is a list of maps, each with its "op"."""
    cmd = {"op": _plain(op), "t": t, "sid": sid, "seq": seq}
    for k, v in fields.items():
        if k == "ops" and isinstance(v, (list, tuple)):
            v = [{ok: _plain(ov) for ok, ov in o.items()} if isinstance(o, dict) else o for o in v]
        cmd[k] = _plain(v)
    parse_command(cmd)
    return cbor2.dumps(cmd)
