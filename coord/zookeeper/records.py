"""ZooKeeper's client-protocol records (``zookeeper.jute``) as frozen dataclasses.

Each record lists its fields in wire order with their jute type; one
generic reader/writer walks that list, so a record is declared once and its
decoder and encoder cannot disagree.  The few records whose layout is not a
plain field list are written out by hand: ``ConnectRequest`` and
``ConnectResponse`` (the trailing ``readOnly`` flag is absent in pre-3.5
clients), and ``MultiRequest`` / ``MultiResponse`` (a ``MultiHeader``-framed
list ending in a ``done`` header).

``REQUESTS`` maps each op code to its request record (None: no body),
``RESPONSES`` to its response record; ``decode_request`` turns one frame
into a ``Request``.  Every decoding failure is a ``JuteError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

from coord.zookeeper.codes import OpCode
from coord.zookeeper.jute import DEFAULT_MAX_BUFFER, JuteError, Reader, Writer

# -- field types --------------------------------------------------------------


class JuteType:
    min_size = 1

    def read(self, r: Reader) -> Any:
        raise NotImplementedError

    def write(self, w: Writer, v: Any) -> None:
        raise NotImplementedError


class _Prim(JuteType):
    def __init__(self, name: str, min_size: int) -> None:
        self.name = name
        self.min_size = min_size

    def read(self, r: Reader) -> Any:
        return getattr(r, self.name)()

    def write(self, w: Writer, v: Any) -> None:
        getattr(w, self.name)(v)

    def __repr__(self) -> str:
        return self.name


INT = _Prim("int", 4)
LONG = _Prim("long", 8)
BOOL = _Prim("bool", 1)
BUFFER = _Prim("buffer", 4)
USTRING = _Prim("ustring", 4)


class Vec(JuteType):
    min_size = 4

    def __init__(self, elem: JuteType) -> None:
        self.elem = elem

    def read(self, r: Reader) -> Any:
        v = r.vector(self.elem.read, self.elem.min_size)
        return None if v is None else tuple(v)

    def write(self, w: Writer, v: Any) -> None:
        w.vector(v, self.elem.write)


class Rec(JuteType):
    def __init__(self, cls: "type[Record]") -> None:
        self.cls = cls

    @property
    def min_size(self) -> int:  # type: ignore[override]
        return self.cls.min_size()

    def read(self, r: Reader) -> Any:
        return self.cls.read(r)

    def write(self, w: Writer, v: Any) -> None:
        if not isinstance(v, self.cls):
            raise JuteError(f"expected a {self.cls.__name__}, got {type(v).__name__}")
        v.write(w)


def jf(t: JuteType, **kw: Any) -> Any:
    """A dataclass field carrying its jute type."""
    return field(metadata={"jute": t}, **kw)


# -- records ------------------------------------------------------------------


class Record:
    """Base of all records: generic read/write over the fields' jute types."""

    __slots__ = ()
    _schema: ClassVar[tuple[tuple[str, JuteType], ...]] = ()

    @classmethod
    def schema(cls) -> tuple[tuple[str, JuteType], ...]:
        s = cls.__dict__.get("_schema_cache")
        if s is None:
            s = tuple((f.name, f.metadata["jute"]) for f in dataclasses.fields(cls) if "jute" in f.metadata)
            type.__setattr__(cls, "_schema_cache", s)
        return s

    @classmethod
    def min_size(cls) -> int:
        return sum(t.min_size for _, t in cls.schema())

    @classmethod
    def read(cls, r: Reader) -> Any:
        return cls(*(t.read(r) for _, t in cls.schema()))

    def write(self, w: Writer) -> None:
        for name, t in self.schema():
            t.write(w, getattr(self, name))

    @classmethod
    def decode(cls, data: bytes, max_buffer: int = DEFAULT_MAX_BUFFER, *, strict: bool = True) -> Any:
        """One record from ``data``; ``strict`` refuses trailing bytes."""
        r = Reader(data, max_buffer)
        rec = cls.read(r)
        if strict:
            r.end()
        return rec

    def encode(self) -> bytes:
        w = Writer()
        self.write(w)
        return w.getvalue()


def record(cls: type) -> type:
    return dataclass(frozen=True, slots=True)(cls)


@record
class Id(Record):
    scheme: str | None = jf(USTRING)
    id: str | None = jf(USTRING)


@record
class ACL(Record):
    perms: int = jf(INT)
    id: Id = jf(Rec(Id))


@record
class Stat(Record):
    """ZooKeeper's Stat, in its wire order (pzxid last)."""

    czxid: int = jf(LONG)
    mzxid: int = jf(LONG)
    ctime: int = jf(LONG)
    mtime: int = jf(LONG)
    version: int = jf(INT)
    cversion: int = jf(INT)
    aversion: int = jf(INT)
    ephemeralOwner: int = jf(LONG)  # noqa: N815 - ZooKeeper's names
    dataLength: int = jf(INT)  # noqa: N815
    numChildren: int = jf(INT)  # noqa: N815
    pzxid: int = jf(LONG)


@record
class ClientInfo(Record):
    authScheme: str | None = jf(USTRING)  # noqa: N815
    user: str | None = jf(USTRING)


@record
class ConnectRequest(Record):
    """``read_only`` is None for clients older than 3.5, which do not send it."""

    protocolVersion: int = jf(INT)  # noqa: N815
    lastZxidSeen: int = jf(LONG)  # noqa: N815
    timeOut: int = jf(INT)  # noqa: N815
    sessionId: int = jf(LONG)  # noqa: N815
    passwd: bytes | None = jf(BUFFER)
    readOnly: bool | None = None  # noqa: N815

    @classmethod
    def read(cls, r: Reader) -> "ConnectRequest":
        base = [t.read(r) for _, t in cls.schema()]
        read_only = r.bool() if r.remaining else None
        return cls(*base, read_only)

    def write(self, w: Writer) -> None:
        super(ConnectRequest, self).write(w)
        if self.readOnly is not None:
            w.bool(self.readOnly)


@record
class ConnectResponse(Record):
    """``readOnly`` None: the old form (answering a client that sent none)."""

    protocolVersion: int = jf(INT)  # noqa: N815
    timeOut: int = jf(INT)  # noqa: N815
    sessionId: int = jf(LONG)  # noqa: N815
    passwd: bytes | None = jf(BUFFER)
    readOnly: bool | None = None  # noqa: N815

    @classmethod
    def read(cls, r: Reader) -> "ConnectResponse":
        base = [t.read(r) for _, t in cls.schema()]
        read_only = r.bool() if r.remaining else None
        return cls(*base, read_only)

    def write(self, w: Writer) -> None:
        super(ConnectResponse, self).write(w)
        if self.readOnly is not None:
            w.bool(self.readOnly)


_STRINGS = Vec(USTRING)


@record
class SetWatches(Record):
    relativeZxid: int = jf(LONG)  # noqa: N815
    dataWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815
    existWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815
    childWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815


@record
class SetWatches2(Record):
    relativeZxid: int = jf(LONG)  # noqa: N815
    dataWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815
    existWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815
    childWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815
    persistentWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815
    persistentRecursiveWatches: tuple[str, ...] | None = jf(_STRINGS)  # noqa: N815


@record
class RequestHeader(Record):
    xid: int = jf(INT)
    type: int = jf(INT)


@record
class MultiHeader(Record):
    type: int = jf(INT)
    done: bool = jf(BOOL)
    err: int = jf(INT)


@record
class AuthPacket(Record):
    type: int = jf(INT)
    scheme: str | None = jf(USTRING)
    auth: bytes | None = jf(BUFFER)


@record
class ReplyHeader(Record):
    xid: int = jf(INT)
    zxid: int = jf(LONG)
    err: int = jf(INT)


@record
class GetDataRequest(Record):
    path: str | None = jf(USTRING)
    watch: bool = jf(BOOL)


@record
class SetDataRequest(Record):
    path: str | None = jf(USTRING)
    data: bytes | None = jf(BUFFER)
    version: int = jf(INT)


@record
class ReconfigRequest(Record):
    joiningServers: str | None = jf(USTRING)  # noqa: N815
    leavingServers: str | None = jf(USTRING)  # noqa: N815
    newMembers: str | None = jf(USTRING)  # noqa: N815
    curConfigId: int = jf(LONG)  # noqa: N815


@record
class SetDataResponse(Record):
    stat: Stat = jf(Rec(Stat))


@record
class GetSASLRequest(Record):
    token: bytes | None = jf(BUFFER)


@record
class SetSASLResponse(Record):
    token: bytes | None = jf(BUFFER)


_ACLS = Vec(Rec(ACL))


@record
class CreateRequest(Record):
    path: str | None = jf(USTRING)
    data: bytes | None = jf(BUFFER)
    acl: tuple[ACL, ...] | None = jf(_ACLS)
    flags: int = jf(INT)


@record
class CreateTTLRequest(Record):
    path: str | None = jf(USTRING)
    data: bytes | None = jf(BUFFER)
    acl: tuple[ACL, ...] | None = jf(_ACLS)
    flags: int = jf(INT)
    ttl: int = jf(LONG)


@record
class DeleteRequest(Record):
    path: str | None = jf(USTRING)
    version: int = jf(INT)


@record
class GetChildrenRequest(Record):
    path: str | None = jf(USTRING)
    watch: bool = jf(BOOL)


@record
class GetAllChildrenNumberRequest(Record):
    path: str | None = jf(USTRING)


@record
class GetChildren2Request(Record):
    path: str | None = jf(USTRING)
    watch: bool = jf(BOOL)


@record
class CheckVersionRequest(Record):
    path: str | None = jf(USTRING)
    version: int = jf(INT)


@record
class SyncRequest(Record):
    path: str | None = jf(USTRING)


@record
class SyncResponse(Record):
    path: str | None = jf(USTRING)


@record
class GetACLRequest(Record):
    path: str | None = jf(USTRING)


@record
class SetACLRequest(Record):
    path: str | None = jf(USTRING)
    acl: tuple[ACL, ...] | None = jf(_ACLS)
    version: int = jf(INT)


@record
class SetACLResponse(Record):
    stat: Stat = jf(Rec(Stat))


@record
class AddWatchRequest(Record):
    path: str | None = jf(USTRING)
    mode: int = jf(INT)


@record
class WatcherEvent(Record):
    type: int = jf(INT)
    state: int = jf(INT)
    path: str | None = jf(USTRING)


@record
class ErrorResponse(Record):
    err: int = jf(INT)


@record
class CreateResponse(Record):
    path: str | None = jf(USTRING)


@record
class Create2Response(Record):
    path: str | None = jf(USTRING)
    stat: Stat = jf(Rec(Stat))


@record
class ExistsRequest(Record):
    path: str | None = jf(USTRING)
    watch: bool = jf(BOOL)


@record
class ExistsResponse(Record):
    stat: Stat = jf(Rec(Stat))


@record
class GetDataResponse(Record):
    data: bytes | None = jf(BUFFER)
    stat: Stat = jf(Rec(Stat))


@record
class GetChildrenResponse(Record):
    children: tuple[str, ...] | None = jf(_STRINGS)


@record
class GetAllChildrenNumberResponse(Record):
    totalNumber: int = jf(INT)  # noqa: N815


@record
class GetChildren2Response(Record):
    children: tuple[str, ...] | None = jf(_STRINGS)
    stat: Stat = jf(Rec(Stat))


@record
class GetACLResponse(Record):
    acl: tuple[ACL, ...] | None = jf(_ACLS)
    stat: Stat = jf(Rec(Stat))


@record
class CheckWatchesRequest(Record):
    path: str | None = jf(USTRING)
    type: int = jf(INT)


@record
class RemoveWatchesRequest(Record):
    path: str | None = jf(USTRING)
    type: int = jf(INT)


@record
class GetEphemeralsRequest(Record):
    prefixPath: str | None = jf(USTRING)  # noqa: N815


@record
class GetEphemeralsResponse(Record):
    ephemerals: tuple[str, ...] | None = jf(_STRINGS)


@record
class WhoAmIResponse(Record):
    clientInfo: tuple[ClientInfo, ...] | None = jf(Vec(Rec(ClientInfo)))  # noqa: N815


# -- multi --------------------------------------------------------------------

# The request record of each op a multi (or multiRead) may carry.
MULTI_OP_REQUESTS: dict[int, type[Record]] = {
    OpCode.CREATE: CreateRequest,
    OpCode.CREATE2: CreateRequest,
    OpCode.CREATE_CONTAINER: CreateRequest,
    OpCode.CREATE_TTL: CreateTTLRequest,
    OpCode.DELETE: DeleteRequest,
    OpCode.SET_DATA: SetDataRequest,
    OpCode.CHECK: CheckVersionRequest,
    OpCode.GET_CHILDREN: GetChildrenRequest,
    OpCode.GET_DATA: GetDataRequest,
}

# The result record of each op type in a MultiResponse (None: no body).
MULTI_RESULT_RECORDS: dict[int, type[Record] | None] = {
    OpCode.CREATE: CreateResponse,
    OpCode.CREATE2: Create2Response,
    OpCode.DELETE: None,
    OpCode.CHECK: None,
    OpCode.SET_DATA: SetDataResponse,
    OpCode.GET_CHILDREN: GetChildrenResponse,
    OpCode.GET_DATA: GetDataResponse,
    OpCode.ERROR: ErrorResponse,
}

_DONE = MultiHeader(-1, True, -1)


@dataclass(frozen=True, slots=True)
class MultiOp:
    type: int
    request: Record


@dataclass(frozen=True, slots=True)
class MultiRequest(Record):
    """The ops of a multi or multiRead (MultiOperationRecord)."""

    ops: tuple[MultiOp, ...] = ()

    @classmethod
    def min_size(cls) -> int:
        return 9

    @classmethod
    def read(cls, r: Reader) -> "MultiRequest":
        ops = []
        h = MultiHeader.read(r)
        while not h.done:  # each turn consumes at least a 9-byte header: bounded by the frame
            rec = MULTI_OP_REQUESTS.get(h.type)
            if rec is None:
                raise JuteError(f"invalid op type {h.type} in a multi")
            ops.append(MultiOp(h.type, rec.read(r)))
            h = MultiHeader.read(r)
        return cls(tuple(ops))

    def write(self, w: Writer) -> None:
        for op in self.ops:
            MultiHeader(op.type, False, -1).write(w)
            op.request.write(w)
        _DONE.write(w)


@dataclass(frozen=True, slots=True)
class MultiResult:
    """One op's result: ``type`` is the op code (``OpCode.ERROR`` for a
    failed or aborted op, with ``ErrorResponse`` as ``record``)."""

    type: int
    record: Record | None = None

    @property
    def err(self) -> int:
        return self.record.err if isinstance(self.record, ErrorResponse) else 0


@dataclass(frozen=True, slots=True)
class MultiResponse(Record):
    results: tuple[MultiResult, ...] = ()

    @classmethod
    def min_size(cls) -> int:
        return 9

    @classmethod
    def read(cls, r: Reader) -> "MultiResponse":
        out = []
        h = MultiHeader.read(r)
        while not h.done:
            if h.type not in MULTI_RESULT_RECORDS:
                raise JuteError(f"invalid result type {h.type} in a multi response")
            rec = MULTI_RESULT_RECORDS[h.type]
            out.append(MultiResult(h.type, None if rec is None else rec.read(r)))
            h = MultiHeader.read(r)
        return cls(tuple(out))

    def write(self, w: Writer) -> None:
        for res in self.results:
            MultiHeader(res.type, False, res.err).write(w)
            if res.record is not None:
                res.record.write(w)
        _DONE.write(w)


# -- requests by op code --------------------------------------------------------

# Every op a client may send, with its request record (None: no body).
REQUESTS: dict[int, type[Record] | None] = {
    OpCode.CREATE: CreateRequest,
    OpCode.DELETE: DeleteRequest,
    OpCode.EXISTS: ExistsRequest,
    OpCode.GET_DATA: GetDataRequest,
    OpCode.SET_DATA: SetDataRequest,
    OpCode.GET_ACL: GetACLRequest,
    OpCode.SET_ACL: SetACLRequest,
    OpCode.GET_CHILDREN: GetChildrenRequest,
    OpCode.SYNC: SyncRequest,
    OpCode.PING: None,
    OpCode.GET_CHILDREN2: GetChildren2Request,
    OpCode.CHECK: CheckVersionRequest,
    OpCode.MULTI: MultiRequest,
    OpCode.CREATE2: CreateRequest,
    OpCode.RECONFIG: ReconfigRequest,
    OpCode.CHECK_WATCHES: CheckWatchesRequest,
    OpCode.REMOVE_WATCHES: RemoveWatchesRequest,
    OpCode.CREATE_CONTAINER: CreateRequest,
    OpCode.DELETE_CONTAINER: DeleteRequest,
    OpCode.CREATE_TTL: CreateTTLRequest,
    OpCode.MULTI_READ: MultiRequest,
    OpCode.AUTH: AuthPacket,
    OpCode.SET_WATCHES: SetWatches,
    OpCode.SASL: GetSASLRequest,
    OpCode.GET_EPHEMERALS: GetEphemeralsRequest,
    OpCode.GET_ALL_CHILDREN_NUMBER: GetAllChildrenNumberRequest,
    OpCode.SET_WATCHES2: SetWatches2,
    OpCode.ADD_WATCH: AddWatchRequest,
    OpCode.WHO_AM_I: None,
    OpCode.CLOSE_SESSION: None,
}

# The response record of each op on success (None: the reply header only).
RESPONSES: dict[int, type[Record] | None] = {
    OpCode.CREATE: CreateResponse,
    OpCode.DELETE: None,
    OpCode.EXISTS: ExistsResponse,
    OpCode.GET_DATA: GetDataResponse,
    OpCode.SET_DATA: SetDataResponse,
    OpCode.GET_ACL: GetACLResponse,
    OpCode.SET_ACL: SetACLResponse,
    OpCode.GET_CHILDREN: GetChildrenResponse,
    OpCode.SYNC: SyncResponse,
    OpCode.PING: None,
    OpCode.GET_CHILDREN2: GetChildren2Response,
    OpCode.CHECK: SetDataResponse,
    OpCode.MULTI: MultiResponse,
    OpCode.CREATE2: Create2Response,
    OpCode.RECONFIG: GetDataResponse,
    OpCode.CHECK_WATCHES: None,
    OpCode.REMOVE_WATCHES: None,
    OpCode.CREATE_CONTAINER: Create2Response,
    OpCode.DELETE_CONTAINER: None,
    OpCode.CREATE_TTL: Create2Response,
    OpCode.MULTI_READ: MultiResponse,
    OpCode.AUTH: None,
    OpCode.SET_WATCHES: None,
    OpCode.SASL: SetSASLResponse,
    OpCode.GET_EPHEMERALS: GetEphemeralsResponse,
    OpCode.GET_ALL_CHILDREN_NUMBER: GetAllChildrenNumberResponse,
    OpCode.SET_WATCHES2: None,
    OpCode.ADD_WATCH: ErrorResponse,
    OpCode.WHO_AM_I: WhoAmIResponse,
    OpCode.CLOSE_SESSION: None,
}


@dataclass(frozen=True, slots=True)
class Request:
    """One decoded request frame."""

    xid: int
    op: int
    body: Record | None


class UnknownOp(JuteError):
    """The header is fine but the op code is not one ZooKeeper defines; the
    caller answers ``UNIMPLEMENTED`` to ``xid``."""

    def __init__(self, xid: int, op: int) -> None:
        super().__init__(f"unknown op code {op}")
        self.xid = xid
        self.op = op


class BadBody(JuteError):
    """The header is fine but the body is not; the caller answers
    ``MARSHALLING_ERROR`` to ``xid``."""

    def __init__(self, xid: int, op: int, why: str) -> None:
        super().__init__(why)
        self.xid = xid
        self.op = op


def decode_request(payload: bytes, max_buffer: int = DEFAULT_MAX_BUFFER, *, strict: bool = False) -> Request:
    """Decode one request frame (after the handshake).

    Raises ``UnknownOp`` / ``BadBody`` (both carry the xid, so the caller can
    answer with an error) or a plain ``JuteError`` when not even the header
    is readable.  ``strict`` refuses trailing bytes; ZooKeeper ignores them,
    and so does the session.
    """
    r = Reader(payload, max_buffer)
    hdr = RequestHeader.read(r)
    if hdr.type not in REQUESTS:
        raise UnknownOp(hdr.xid, hdr.type)
    rec = REQUESTS[hdr.type]
    try:
        body = None if rec is None else rec.read(r)
        if strict:
            r.end()
    except JuteError as e:
        raise BadBody(hdr.xid, hdr.type, str(e)) from None
    return Request(hdr.xid, hdr.type, body)


def encode_request(xid: int, op: int, body: Record | None) -> bytes:
    """A request frame's payload (what a client sends, without the length)."""
    w = Writer()
    RequestHeader(xid, op).write(w)
    if body is not None:
        body.write(w)
    return w.getvalue()


def encode_reply(xid: int, zxid: int, err: int, body: Record | None = None) -> bytes:
    """A reply frame's payload: header, then the body (only when err is 0)."""
    w = Writer()
    ReplyHeader(xid, zxid, err).write(w)
    if body is not None and err == 0:
        body.write(w)
    return w.getvalue()


def iter_records() -> Iterator[type[Record]]:
    """Every plain record class (for tests and fuzzing)."""
    for v in list(globals().values()):
        if isinstance(v, type) and issubclass(v, Record) and v is not Record and dataclasses.is_dataclass(v):
            yield v
