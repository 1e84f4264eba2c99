"""Write commands: their one schema, their encoding, and how the log carries them.

A command is a map::

    {"op": str, "sid": int (0 = none), "seq": int (per-session request
     number, 0 = no dedup), ...op fields}

    create         path: str, data: bytes = b"", eph/sq/parents: bool = False,
                   acl: [[perms, scheme, id], ...] (absent: open to everybody),
                   container: bool = False, ttl: int = 0 (ms; a TTL node)
    delete         path: str, version: int = -1, recursive: bool = False
    set            path: str, data: bytes = b"", version: int = -1
    set_acl        path: str, acl: [[perms, scheme, id], ...], version: int = -1 (of the ACL)
    multi          ops: [ {"op": "check"|"create"|"set"|"delete", ...fields} ]
    check          (multi only) path: str, version: int = -1
    session_open   timeout_ms: int > 0, secret: bytes = b""
    session_close  -
    session_expire sids: [int > 0]
    add_auth       ids: [[scheme, id], ...] (digest identities the session gains)
    reap           paths: [str] (containers and TTL nodes the leader found
                   due; each is deleted only if it is still due when applied)

Writes that touch nodes also carry who asked (``acl.Auth``): ``ids``, the
request's identities as [[scheme, id], ...], and ``su``, whether a
superuser asked.  The receiving server fills them in from the connection
and its configuration, so applying the command checks ACLs the same way on
every server.  Commands without ``ids`` (logged before ACLs existed) are
applied unchecked, as they were then.

``_SCHEMA`` below is the only definition of these fields.  The server that
receives a client's write parses the request straight into a typed
``Command`` (``parse_request``: the same field specs, plus the checks that
only the receiving server can make, such as the data size limit), encodes it
once (``encode``), and those bytes travel unchanged: forwarded to the leader,
wrapped by the leader in an entry (``entry_data``: its clock, and which
server and request the command came from), replicated and applied.

The data of a NORMAL entry (``decode_entry``)::

    version 2:  0x02 | t (8 bytes) | origin (8) | rid (8) | command (CBOR map)
    version 1:  the command map itself, with "t" in it (logs written before
                version 2; still read)

``t`` is the leader's clock in ms; ``origin`` the id of the server that
received the write and ``rid`` its number for it, so that server answers
its client when it applies the entry itself (0, 0: nobody is waiting).

Decoding is strict (exact types, no unknown fields), because every server
must accept or refuse exactly the same bytes, and a misspelt field silently
taking its default (say, ``version`` -1 on a delete) would be worse than an
error.  Paths are checked again when the command runs, where a bad path is
an ordinary InvalidPath result (inside a multi: with the op's index).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from coordclient.errors import (
    BadArgumentsError,
    CoordError,
    InvalidPathError,
    MultiError,
    TooLargeError,
    UnimplementedError,
)
from coord.namespace.acl import Auth, acl_from_wire, acl_to_wire
from coordclient.protocol import MAX_TTL_MS, Err, validate_path


@dataclass(slots=True)
class Create:
    path: str
    data: bytes = b""
    eph: bool = False
    sq: bool = False
    parents: bool = False
    acl: Any = None  # ACL (tuple of ACLEntry) once parsed; None: open to everybody
    container: bool = False  # deleted once its last child is (ZooKeeper's CONTAINER)
    ttl: int = 0  # ms: deleted once childless and unchanged for this long (ZooKeeper's TTL modes)


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
class SetACL:
    path: str
    acl: Any  # ACL
    version: int = -1


@dataclass(slots=True)
class AddAuth:
    ids: tuple[tuple[str, str], ...]


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
class Reap:
    paths: tuple[str, ...]


@dataclass(slots=True)
class Command:
    op: str
    body: Any  # one of the classes above
    t: int = 0  # the leader's clock, from the entry (not part of the encoded command)
    sid: int = 0
    seq: int = 0
    auth: Auth | None = None  # who asked; None: logged before ACLs, applied unchecked

    @property
    def dedup(self) -> bool:
        """Is this a write whose result the session remembers by seq?"""
        return self.seq > 0 and self.sid != 0 and self.op in WRITE_OPS


WRITE_OPS = frozenset({"create", "delete", "set", "multi", "set_acl"})
MULTI_OPS = frozenset({"check", "create", "set", "delete"})
_REQUIRED = object()
_ENVELOPE = (("t", int, 0), ("sid", int, 0), ("seq", int, 0), ("ids", list, None), ("su", bool, False))
IDENTITY_SCHEMES = frozenset({"digest", "ip", "x509"})
MAX_IDS = 64


def _identities(raw: list) -> tuple[tuple[str, str], ...]:
    if len(raw) > MAX_IDS:
        raise BadArgumentsError(f"at most {MAX_IDS} identities")
    out = []
    for e in raw:
        if (type(e) is not list or len(e) != 2 or e[0] not in IDENTITY_SCHEMES or type(e[1]) is not str
                or not e[1] or len(e[1]) > 1024):
            raise BadArgumentsError("identities are [scheme, id] pairs (digest, ip or x509)")
        out.append((e[0], e[1]))
    return tuple(out)


def _check_acl_field(b: Any) -> None:
    if b.acl is not None:
        b.acl = acl_from_wire(b.acl, allow_auth=True)


MAX_REAP = 10_000


def _check_create(b: Create) -> None:
    _check_acl_field(b)
    if not 0 <= b.ttl <= MAX_TTL_MS:
        raise BadArgumentsError(f"'ttl' must be between 1 and {MAX_TTL_MS} ms")
    if (b.eph, b.container, b.ttl > 0).count(True) > 1:
        raise BadArgumentsError("a node is at most one of ephemeral, container and TTL")


def _check_reap(b: Reap) -> None:
    if len(b.paths) > MAX_REAP or any(type(p) is not str for p in b.paths):
        raise BadArgumentsError(f"'paths' must be a list of at most {MAX_REAP} paths")
    b.paths = tuple(b.paths)


def _check_set_acl(b: SetACL) -> None:
    _check_version(b)
    _check_acl_field(b)


def _check_add_auth(b: AddAuth) -> None:
    b.ids = _identities(b.ids)
    if any(s != "digest" for s, _ in b.ids):
        raise BadArgumentsError("only digest identities belong to a session")


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
                             ("sq", bool, False), ("parents", bool, False), ("acl", list, None),
                             ("container", bool, False), ("ttl", int, 0)), _check_create),
    "delete": _Spec(Delete, (("path", str, _REQUIRED), ("version", int, -1), ("recursive", bool, False)),
                    _check_version),
    "set": _Spec(SetData, (("path", str, _REQUIRED), ("data", bytes, b""), ("version", int, -1)), _check_version),
    "check": _Spec(Check, (("path", str, _REQUIRED), ("version", int, -1)), _check_version),
    "set_acl": _Spec(SetACL, (("path", str, _REQUIRED), ("acl", list, _REQUIRED), ("version", int, -1)),
                     _check_set_acl),
    "add_auth": _Spec(AddAuth, (("ids", list, _REQUIRED),), _check_add_auth),
    "multi": _Spec(Multi, (("ops", list, _REQUIRED),), _check_multi),
    "session_open": _Spec(SessionOpen, (("timeout_ms", int, _REQUIRED), ("secret", bytes, b"")), _check_open),
    "session_close": _Spec(SessionClose, ()),
    "session_expire": _Spec(SessionExpire, (("sids", list, _REQUIRED),), _check_expire),
    "reap": _Spec(Reap, (("paths", list, _REQUIRED),), _check_reap),
}


def _values(d: dict, fields: tuple) -> list:
    out = []
    for name, typ, default in fields:
        v = d.get(name, default)
        if type(v) is not typ and not (v is None and default is None):  # exact: bool is not an int here
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
    t, sid, seq, ids, su = _values(d, _ENVELOPE)
    if t < 0 or sid < 0 or seq < 0:
        raise BadArgumentsError("'t', 'sid' and 'seq' must be >= 0")
    op = d.get("op")
    auth = None if ids is None else Auth(frozenset(_identities(ids)), su)
    return Command(op, _body(op, d, False), t, sid, seq, auth)


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


# --- the receiving server: request -> command -> bytes ----------------------------

MAX_MULTI_OPS = 1000
_REQUEST_KEYS = frozenset({"id", "seq"})  # a client request's envelope, besides "op"


def _from_request(op: Any, req: dict, in_multi: bool) -> Any:
    """The body of one client-requested op (None-valued fields count as absent)."""
    if not isinstance(op, str):
        raise BadArgumentsError("'op' must be a string")
    spec = _SCHEMA.get(op)
    if spec is None or op not in _CLIENT_OPS or (in_multi and op not in MULTI_OPS) or (not in_multi and op == "check"):
        raise UnimplementedError(f"unknown operation {op!r}"[:200])
    allowed = spec.multi_keys if in_multi else spec.multi_keys | _REQUEST_KEYS
    fields = {k: v for k, v in req.items() if v is not None}
    if not fields.keys() <= allowed:
        unknown = sorted(map(repr, fields.keys() - allowed))
        raise BadArgumentsError(f"unknown field(s) for {op}: {', '.join(unknown)}"[:200])
    body = spec.cls(*_values(fields, spec.fields))
    if spec.check is not None:
        spec.check(body)
    return body


_CLIENT_OPS = frozenset({"create", "delete", "set", "multi", "check", "set_acl"})


def _check_request_body(body: Any, limit: int) -> int:
    """Path syntax and data size, checked where the client is (a bad path
    never reaches the log).  Returns the data size."""
    if isinstance(body, Multi):
        return 0
    why = validate_path(body.path)
    if why is not None:
        raise InvalidPathError(f"{why}: {body.path!r}"[:300], path=body.path)
    n = len(getattr(body, "data", b""))
    if n > limit:
        raise TooLargeError(f"'data' is {n} bytes; the limit is {limit}", path=body.path)
    return n


def parse_request(req: dict, *, sid: int, limit: int, auth: Auth | None = None,
                  default_acl: Any = None, require_seq: bool = True) -> Command:
    """A client's write request (create, set, delete, set_acl, multi) as a
    typed command of session ``sid`` on behalf of ``auth``; a create without
    an ACL gets ``default_acl``.  Raises the CoordError to answer with (a bad
    op inside a multi: MultiError with its index).  ``require_seq=False``
    (ZooKeeper's protocol, which has none): a write without ``seq`` is applied
    without exactly-once memory, as ZooKeeper applies it."""
    if not require_seq and req.get("seq") in (None, 0):
        req = {**req, "seq": None}
    cmd = _parse_request(req, sid, limit, require_seq)
    cmd.auth = auth
    if default_acl is not None:
        for body in (cmd.body.ops if type(cmd.body) is Multi else (cmd.body,)):
            if type(body) is Create and body.acl is None:
                body.acl = default_acl
    return cmd


def _parse_request(req: dict, sid: int, limit: int, require_seq: bool) -> Command:
    op = req.get("op")
    seq = req.get("seq")
    if seq is None and not require_seq:
        seq = 0
    elif type(seq) is not int or not 1 <= seq < 1 << 63:
        raise BadArgumentsError("'seq' must be an integer >= 1")
    if op == "multi":
        raw = req.get("ops")
        if type(raw) is not list or len(raw) > MAX_MULTI_OPS:
            raise BadArgumentsError(f"'ops' must be a list of at most {MAX_MULTI_OPS} operations")
        if not req.keys() <= {"op", "ops"} | _REQUEST_KEYS:
            raise BadArgumentsError("unknown field(s) for multi")
        ops, total = [], 0
        for i, o in enumerate(raw):
            try:
                if type(o) is not dict:
                    raise BadArgumentsError("a multi operation must be a map")
                body = _from_request(o.get("op"), o, True)
                total += _check_request_body(body, limit)
            except CoordError as e:
                raise multi_failure(i, e, len(raw)) from None
            ops.append(body)
        if total > limit:
            raise TooLargeError(f"the multi carries {total} bytes of data; the limit is {limit}")
        return Command("multi", Multi(tuple(ops)), 0, sid, seq)
    body = _from_request(op, req, False)
    _check_request_body(body, limit)
    return Command(op, body, 0, sid, seq)


_OP_OF = {spec.cls: name for name, spec in _SCHEMA.items()}


def _fields(body: Any) -> dict:
    spec = _SCHEMA[_OP_OF[type(body)]]
    out = {"op": _OP_OF[type(body)]}
    for name, _, default in spec.fields:
        v = getattr(body, name)
        if name == "ops":
            v = [_fields(b) for b in v]
        elif name == "acl" and v is not None:
            v = acl_to_wire(v)
        elif type(v) is tuple:
            v = [list(x) if type(x) is tuple else x for x in v]
        if v != default or default is _REQUIRED:
            out[name] = v
    return out


def encode(cmd: Command) -> bytes:
    """The command's bytes, as they travel and as the log stores them
    (``t`` is not in them: the leader's entry header carries it)."""
    d = _fields(cmd.body)
    d["sid"], d["seq"] = cmd.sid, cmd.seq
    if cmd.auth is not None:
        d["ids"] = sorted([s, i] for s, i in cmd.auth.ids)
        if cmd.auth.superuser:
            d["su"] = True
    return cbor2.dumps(d)


# --- the log: an entry's data ---------------------------------------------------------

ENTRY_V2 = 2
_HEADER = struct.Struct(">BQQQ")
HEADER_SIZE = _HEADER.size
_V2 = bytes([ENTRY_V2])


def entry_data(command: bytes, *, t: int, origin: int = 0, rid: int = 0) -> bytes:
    """What the leader proposes: the command bytes as received, behind a header."""
    return _HEADER.pack(ENTRY_V2, t, origin, rid) + command


@dataclass(slots=True, frozen=True)
class LogCommand:
    """A decoded entry: the command (or why it is refused), and who waits for it."""

    command: Command | None
    error: CoordError | None
    origin: int = 0
    rid: int = 0


def decode_entry(data: bytes) -> LogCommand:
    """Never raises: a refused entry is refused the same way on every server."""
    origin = rid = t = 0
    v2 = data[:1] == _V2 and len(data) >= HEADER_SIZE
    if v2:
        _, t, origin, rid = _HEADER.unpack_from(data)
        body = memoryview(data)[HEADER_SIZE:]
    else:
        body = data
    try:
        try:
            d = cbor2.loads(body)
        except Exception as e:  # cbor2 raises several types on garbage; all mean the same here
            raise BadArgumentsError(f"malformed command: {e}"[:200]) from None
        if v2:
            if type(d) is not dict or "t" in d:
                raise BadArgumentsError("a version 2 entry's command has no 't'")
            d["t"] = t
        cmd = parse_command(d)
    except CoordError as e:
        return LogCommand(None, e, origin, rid)
    return LogCommand(cmd, None, origin, rid)
