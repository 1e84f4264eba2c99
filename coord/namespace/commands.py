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


@dataclass(slots=True)
class Create:
    path: str
    data: bytes = b""
    eph: bool = False
    sq: bool = False
    parents: bool = False


@dataclass(slots=True)
class Delete:
    path: str
    version: int = -1
    recursive: bool = False


@dataclass(slots=True)
class SetData:
    path: str
    data: bytes = b""
    version: int = -1


@dataclass(slots=True)
class Check:
    path: str
    version: int = -1


@dataclass(slots=True)
class Multi:
    ops: tuple  # of Create | Delete | SetData | Check


@dataclass(slots=True)
class SessionOpen:
    timeout_ms: int
    secret: bytes = b""


@dataclass(slots=True)
class SessionClose:
    pass


@dataclass(slots=True)
class SessionExpire:
    sids: tuple[int, ...]


@dataclass(slots=True)
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
_ENVELOPE = (("t", int, 0), ("sid", int, 0), ("seq", int, 0))


def _check_version(b: Any) -> None:
    if b.version < -1:
        raise BadArgumentsError("'version' must be >= -1")


def _check_open(b: SessionOpen) -> None:
    if b.timeout_ms <= 0:
        raise BadArgumentsError("'timeout_ms' must be positive")


def _check_expire(b: SessionExpire) -> None:
    if any(type(s) is not int or s <= 0 for s in b.sids):
        raise BadArgumentsError("'sids' must be a list of positive integers")
    b.sids = tuple(b.sids)


def _check_multi(b: Multi) -> None:
    b.ops = _multi_ops(b.ops)


class _Spec:
    """How to read one op: its class, fields (name, exact type, default) and extra check."""

    __slots__ = ("cls", "fields", "check", "top_keys", "multi_keys")

    def __init__(self, cls: type, fields: tuple, check: Any = None) -> None:
        self.cls, self.fields, self.check = cls, fields, check
        names = {name for name, _, _ in fields} | {"op"}
        self.top_keys = frozenset(names | {name for name, _, _ in _ENVELOPE})
        self.multi_keys = frozenset(names)


_SCHEMA: dict[str, _Spec] = {
    "create": _Spec(Create, (("path", str, _REQUIRED), ("data", bytes, b""), ("eph", bool, False),
                             ("sq", bool, False), ("parents", bool, False))),
    "delete": _Spec(Delete, (("path", str, _REQUIRED), ("version", int, -1), ("recursive", bool, False)),
                    _check_version),
    "set": _Spec(SetData, (("path", str, _REQUIRED), ("data", bytes, b""), ("version", int, -1)), _check_version),
    "check": _Spec(Check, (("path", str, _REQUIRED), ("version", int, -1)), _check_version),
    "multi": _Spec(Multi, (("ops", list, _REQUIRED),), _check_multi),
    "session_open": _Spec(SessionOpen, (("timeout_ms", int, _REQUIRED), ("secret", bytes, b"")), _check_open),
    "session_close": _Spec(SessionClose, ()),
    "session_expire": _Spec(SessionExpire, (("sids", list, _REQUIRED),), _check_expire),
}


def _values(d: dict, fields: tuple) -> list:
    out = []
    for name, typ, default in fields:
        v = d.get(name, default)
        if type(v) is not typ:  # exact: bool is not an int here, bytearray is not bytes
            if v is _REQUIRED:
                raise BadArgumentsError(f"missing field {name!r}")
            raise BadArgumentsError(f"field {name!r} must be {typ.__name__}")
        out.append(v)
    return out


def _body(op: Any, d: dict, in_multi: bool) -> Any:
    if not isinstance(op, str):
        raise BadArgumentsError("'op' must be a string")
    spec = _SCHEMA.get(op)
    if spec is None:
        raise UnimplementedError(f"unknown operation {op!r}"[:200])
    if not d.keys() <= (spec.multi_keys if in_multi else spec.top_keys):
        unknown = sorted(map(repr, d.keys() - (spec.multi_keys if in_multi else spec.top_keys)))
        raise BadArgumentsError(f"unknown field(s) for {op}: {', '.join(unknown)}"[:200])
    body = spec.cls(*_values(d, spec.fields))
    if spec.check is not None:
        spec.check(body)
    return body


def _multi_ops(raw: list) -> tuple:
    ops = []
    for i, o in enumerate(raw):
        try:
            if type(o) is not dict:
                raise BadArgumentsError("a multi operation must be a map")
            op = o.get("op")
            if isinstance(op, str) and op in _SCHEMA and op not in MULTI_OPS:
                raise BadArgumentsError(f"{op} is not allowed inside a multi")
            ops.append(_body(op, o, True))
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
    t, sid, seq = _values(d, _ENVELOPE)
    if t < 0 or sid < 0 or seq < 0:
        raise BadArgumentsError("'t', 'sid' and 'seq' must be >= 0")
    op = d.get("op")
    return Command(op, _body(op, d, False), t, sid, seq)


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
