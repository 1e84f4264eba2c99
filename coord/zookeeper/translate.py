"""The seam: ZooKeeper requests as coord requests, coord answers as ZooKeeper replies.

A ZooKeeper front end must not be a second namespace: every ZooKeeper op
becomes the request a coord client would send (``coordclient``'s builders,
``PROTOCOL.md``), on the same session, with the same watches.  This module
is that mapping and nothing else -- pure functions over frozen values, no
I/O, no state of its own:

* ``plan(op, body, ctx)`` -> a ``Plan`` (the coord requests to send, and
  whether they read, write or must run alone), or a ``Reply`` straight away
  (an op answered without the server: checkWatches, whoAmI, refusals).
* ``finish(op, body, responses, ctx)`` -> the ``Reply`` (ZooKeeper error
  code, response record, and what the session must remember: watches
  added or dropped, auth ids, whether to close) from the coord responses,
  one per planned request, in order.
* ``hello_request`` / ``connect_response``: the handshake, as coord's ``hello``.
* ``stat``, ``error_code``, ``watcher_event``, ``render_config``: the
  value mappings.

What the server must provide (the glue, see ``session.py``): it sends each
planned request as a coord client request (adding ``"id"``; writes carry
``"seq": 0``, i.e. no exactly-once memory, because ZooKeeper clients never
retry a write with the same identity) and hands back the coord response
map (``{"ok", "zxid", "r"}`` or ``{"ok": False, "zxid", "err", "msg",
"path", ["index", "results"]}``) unchanged.

Requests the server does not know yet are emitted anyway with the shape the
pending reshapes are expected to take (``add_auth``) so that wiring them
is mechanical; until then the server answers ``Unimplemented`` and the
client gets ZooKeeper's answer for an unsupported op.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from coord.zookeeper.codes import (
    CONFIG_NODE,
    QUOTA_NODE,
    ZOOKEEPER_NODE,
    AddWatchMode,
    Code,
    CreateMode,
    EventType,
    KeeperState,
    OpCode,
    Perms,
    WatcherType,
)
from coord.zookeeper.jute import wrap_int, wrap_long
from coord.zookeeper.membership import ReconfigRefused, parse_reconfig, render_config
from coord.zookeeper.records import (
    ACL,
    AddWatchRequest,
    AuthPacket,
    CheckVersionRequest,
    CheckWatchesRequest,
    ClientInfo,
    ConnectRequest,
    ConnectResponse,
    Create2Response,
    CreateRequest,
    CreateResponse,
    CreateTTLRequest,
    DeleteRequest,
    ErrorResponse,
    ExistsResponse,
    GetACLResponse,
    GetChildren2Response,
    GetChildrenResponse,
    GetDataResponse,
    Id,
    MultiRequest,
    MultiResponse,
    MultiResult,
    Record,
    ReconfigRequest,
    RemoveWatchesRequest,
    SetACLRequest,
    SetACLResponse,
    SetDataRequest,
    SetDataResponse,
    SetWatches,
    SetWatches2,
    Stat,
    SyncResponse,
    WatcherEvent,
    WhoAmIResponse,
)

# -- values crossing the seam -----------------------------------------------------


class Kind(enum.Enum):
    """How a plan's requests may overlap with others of the same connection.

    ZooKeeper serves one session's requests in order.  coord serves reads
    at once and writes through the log, so the session only lets requests
    of one kind be in flight together: reads with reads, writes with writes
    (the server applies one connection's writes in the order it gets them),
    and a barrier alone.
    """

    READ = "read"
    WRITE = "write"
    BARRIER = "barrier"


class WatchClass(str, enum.Enum):
    """ZooKeeper's watch tables: one watch per (class, path) per connection."""

    DATA = "data"  # getData / exists watches (ZooKeeper's dataWatches)
    CHILD = "child"
    PERSISTENT = "persistent"
    RECURSIVE = "recursive"


@dataclass(frozen=True, slots=True)
class WatchKey:
    cls: WatchClass
    path: str


@dataclass(frozen=True, slots=True)
class Options:
    """Front-end settings (from the server's config)."""

    reconfig_enabled: bool = False  # ZooKeeper's reconfigEnabled (default false)
    zookeeper_subtree: bool = True  # serve /zookeeper, /zookeeper/config, /zookeeper/quota


@dataclass(frozen=True, slots=True)
class Context:
    """What translation may know about the connection: its watches (one
    coord watch id per key), its auth ids, the front end's options."""

    watches: Mapping[WatchKey, int] = field(default_factory=lambda: MappingProxyType({}))
    auth: tuple[ClientInfo, ...] = ()
    options: Options = Options()


@dataclass(frozen=True, slots=True)
class Plan:
    """The coord requests to send for one ZooKeeper request, in order."""

    calls: tuple[dict, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """A ZooKeeper reply and its effects on the connection."""

    err: int = Code.OK
    body: Record | None = None
    close: bool = False  # close the connection once this reply is sent
    add_watches: tuple[tuple[WatchKey, int], ...] = ()
    drop_watches: tuple[int, ...] = ()  # coord watch ids no longer registered
    add_auth: tuple[ClientInfo, ...] = ()
    message: str = ""  # for logs only: ZooKeeper replies carry no text


def error(code: int, message: str = "") -> Reply:
    return Reply(err=code, message=message)


# -- values ---------------------------------------------------------------------------

# coord error names (coordclient.protocol.Err, plus the ACL model's) -> ZooKeeper codes.
ERROR_CODES: Mapping[str, int] = MappingProxyType({
    "NoNode": Code.NO_NODE,
    "NodeExists": Code.NODE_EXISTS,
    "BadVersion": Code.BAD_VERSION,
    "NotEmpty": Code.NOT_EMPTY,
    "NoChildrenForEphemerals": Code.NO_CHILDREN_FOR_EPHEMERALS,
    "InvalidPath": Code.BAD_ARGUMENTS,  # ZooKeeper refuses bad paths with BadArguments
    "SessionExpired": Code.SESSION_EXPIRED,
    "SessionMoved": Code.SESSION_MOVED,
    "TooLarge": Code.BAD_ARGUMENTS,
    "BadArguments": Code.BAD_ARGUMENTS,
    "Unimplemented": Code.UNIMPLEMENTED,
    "NotLeader": Code.CONNECTION_LOSS,  # outcome unknown; the client may retry elsewhere
    "ConnectionLoss": Code.CONNECTION_LOSS,
    "OperationTimeout": Code.OPERATION_TIMEOUT,
    "RuntimeInconsistency": Code.RUNTIME_INCONSISTENCY,
    "AuthFailed": Code.AUTH_FAILED,
    "SystemError": Code.SYSTEM_ERROR,
    "ConfChange": Code.RECONFIG_IN_PROGRESS,
    "NoAuth": Code.NO_AUTH,
    "InvalidACL": Code.INVALID_ACL,
})


def error_code(name: Any) -> int:
    """ZooKeeper's code for a coord error name; an unknown name is a
    SystemError (a ZooKeeper client must never see a code it does not know)."""
    return ERROR_CODES.get(name, Code.SYSTEM_ERROR) if isinstance(name, str) else Code.SYSTEM_ERROR


def stat(raw: Any) -> Stat:
    """ZooKeeper's Stat from coord's (``STAT_FIELDS`` order: czxid, mzxid,
    pzxid, ctime, mtime, version, cversion, ephemeral_owner, data_length,
    num_children).  coord has no ACL version yet: ``aversion`` is 0, as for
    a node whose ACL was never set."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 10 or not all(type(v) is int for v in raw):
        raise ValueError(f"malformed coord stat: {raw!r}"[:200])
    czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, length, kids = raw
    return Stat(wrap_long(czxid), wrap_long(mzxid), wrap_long(ctime), wrap_long(mtime), wrap_int(version),
                wrap_int(cversion), 0, wrap_long(owner), wrap_int(length), wrap_int(kids), wrap_long(pzxid))


_EVENT_TYPES = MappingProxyType({
    "created": EventType.NODE_CREATED,
    "deleted": EventType.NODE_DELETED,
    "changed": EventType.NODE_DATA_CHANGED,
    "children": EventType.NODE_CHILDREN_CHANGED,
})


def watcher_event(etype: str, path: str) -> WatcherEvent | None:
    """The notification for a coord watch event (None: not one ZooKeeper has)."""
    t = _EVENT_TYPES.get(etype)
    return None if t is None else WatcherEvent(t, KeeperState.SYNC_CONNECTED, path)


def resync_event(key: WatchKey) -> WatcherEvent:
    """What a ZooKeeper client is told when coord cannot replay what a
    re-registered watch missed: "this changed, read it again"."""
    t = EventType.NODE_CHILDREN_CHANGED if key.cls is WatchClass.CHILD else EventType.NODE_DATA_CHANGED
    return WatcherEvent(t, KeeperState.SYNC_CONNECTED, key.path)


OPEN_ACL = (ACL(Perms.ALL, Id("world", "anyone")),)
ZERO_STAT = Stat(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)

# -- the handshake ---------------------------------------------------------------------


def hello_request(req: ConnectRequest) -> dict:
    """coord's ``hello`` for a ConnectRequest: a new session (sessionId 0)
    or the resumption of one, never older than ``lastZxidSeen``."""
    sid = req.sessionId if req.sessionId > 0 else 0
    return {"op": "hello", "timeout_ms": max(1, req.timeOut), "sid": sid,
            "secret": (req.passwd or b"") if sid else None, "last_zxid": max(0, req.lastZxidSeen)}


def connect_response(req: ConnectRequest, resp: dict) -> tuple[ConnectResponse | None, bool]:
    """(ConnectResponse or None, session valid) for coord's answer to hello.

    An expired or unknown session, or a wrong password, gets ZooKeeper's
    "invalid session" answer (timeout 0, id 0, zero password) and the
    connection closes; any other failure (e.g. this server cannot reach the
    leader, or has not caught up with ``lastZxidSeen``) closes it without an
    answer, so the client tries another server, as ZooKeeper does."""
    ro = None if req.readOnly is None else False
    if resp.get("ok") is True and isinstance(resp.get("r"), dict):
        r = resp["r"]
        sid, secret, timeout = r.get("sid"), r.get("secret"), r.get("timeout_ms")
        if type(sid) is int and type(timeout) is int and isinstance(secret, bytes):
            return ConnectResponse(0, wrap_int(timeout), wrap_long(sid), secret, ro), True
        return None, False
    if resp.get("err") in ("SessionExpired", "AuthFailed", "BadArguments"):
        return ConnectResponse(0, 0, 0, bytes(16), ro), False
    return None, False


# -- helpers ----------------------------------------------------------------------------


def _ok(resp: Any) -> dict | None:
    """The result map of a successful coord response, None for an error."""
    if isinstance(resp, dict) and resp.get("ok") is True:
        r = resp.get("r")
        return r if isinstance(r, dict) else {}
    return None


def _err(resp: Any) -> Reply:
    if isinstance(resp, dict):
        return error(error_code(resp.get("err")), str(resp.get("msg") or ""))
    return error(Code.SYSTEM_ERROR, "malformed response")


def _in_subtree(path: str) -> bool:
    return path == ZOOKEEPER_NODE or path.startswith(ZOOKEEPER_NODE + "/")


def _acl_ok(acl: tuple[ACL, ...] | None) -> Reply | None:
    """None if the ACL is one coord can honour today, else the refusal.

    Until coord's ACL model lands every node is open to everyone, which is
    exactly ZooKeeper's OPEN_ACL_UNSAFE; any other ACL would be a promise we
    could not keep, so it is refused rather than ignored."""
    if not acl:
        return error(Code.INVALID_ACL, "an ACL must not be empty")
    if all(a.id == OPEN_ACL[0].id and a.perms & Perms.ALL == Perms.ALL for a in acl):
        return None
    return error(Code.UNIMPLEMENTED, "ACLs other than world:anyone are not supported yet")


def _version_ok(version: int) -> Reply | None:
    # ZooKeeper: -1 matches any version; any other negative matches none.
    return error(Code.BAD_VERSION, f"version {version}") if version < -1 else None


def _create_fields(op: int, rec: CreateRequest | CreateTTLRequest) -> dict | Reply:
    """coord create fields for a create-family request (top level or in a multi)."""
    if rec.path is None:
        return error(Code.BAD_ARGUMENTS, "no path")
    try:
        mode = CreateMode(rec.flags)
    except ValueError:
        return error(Code.BAD_ARGUMENTS, f"invalid create flags {rec.flags}")
    if op == OpCode.CREATE_TTL or mode.ttl:
        # As ZooKeeper without zookeeper.extendedTypesEnabled.
        return error(Code.UNIMPLEMENTED, "TTL nodes are not supported")
    refused = _acl_ok(rec.acl)
    if refused is not None:
        return refused
    if _in_subtree(rec.path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    # Containers (op createContainer or flag 4) are created as persistent
    # nodes: same behaviour except that coord does not reap empty ones yet.
    return {"op": "create", "path": rec.path, "data": rec.data or b"", "eph": mode.ephemeral,
            "sq": mode.sequential, "parents": False}


def _delete_fields(rec: DeleteRequest) -> dict | Reply:
    if rec.path is None:
        return error(Code.BAD_ARGUMENTS, "no path")
    if _in_subtree(rec.path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    return _version_ok(rec.version) or {"op": "delete", "path": rec.path, "version": rec.version,
                                        "recursive": False}


def _set_fields(rec: SetDataRequest) -> dict | Reply:
    if rec.path is None:
        return error(Code.BAD_ARGUMENTS, "no path")
    if _in_subtree(rec.path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    return _version_ok(rec.version) or {"op": "set", "path": rec.path, "data": rec.data or b"",
                                        "version": rec.version}


def _check_fields(rec: CheckVersionRequest) -> dict | Reply:
    if rec.path is None:
        return error(Code.BAD_ARGUMENTS, "no path")
    return _version_ok(rec.version) or {"op": "check", "path": rec.path, "version": rec.version}


def _read(op: str, path: str, watch: bool = False, **extra: Any) -> dict:
    return {"op": op, "path": path, "watch": bool(watch), **extra, "lin": False}


def _created_body(op: int, r: dict) -> Record:
    path = r.get("path")
    if op == OpCode.CREATE:
        return CreateResponse(path)
    return Create2Response(path, stat(r.get("stat")))


def _wid(r: dict | None) -> int | None:
    wid = r.get("wid") if r else None
    return wid if type(wid) is int else None


def _adds(key: WatchKey, r: dict | None) -> tuple[tuple[WatchKey, int], ...]:
    wid = _wid(r)
    return () if wid is None else ((key, wid),)


def _root_plus(st: Stat, path: str, ctx: Context) -> Stat:
    """The root's stat counts /zookeeper among its children, as ZooKeeper's does."""
    if path == "/" and ctx.options.zookeeper_subtree:
        return Stat(st.czxid, st.mzxid, st.ctime, st.mtime, st.version, st.cversion, st.aversion,
                    st.ephemeralOwner, st.dataLength, wrap_int(st.numChildren + 1), st.pzxid)
    return st


# -- the /zookeeper subtree -------------------------------------------------------------

_VIRTUAL_CHILDREN = MappingProxyType({ZOOKEEPER_NODE: ("config", "quota"), CONFIG_NODE: (), QUOTA_NODE: ()})


def _virtual_stat(path: str, data: bytes, status: Mapping[str, Any] | None) -> Stat:
    version = status.get("config_version", 0) if status else 0
    mzxid = version if path == CONFIG_NODE and type(version) is int else 0
    return Stat(0, wrap_long(mzxid), 0, 0, 0, 0, 0, 0, len(data), len(_VIRTUAL_CHILDREN[path]), 0)


def _virtual_plan(op: int, path: str) -> Plan | Reply | None:
    """Reads of the /zookeeper subtree (None: ``path`` is not in it)."""
    if not _in_subtree(path):
        return None
    if path not in _VIRTUAL_CHILDREN:
        return error(Code.NO_NODE, path)
    if op in (OpCode.GET_DATA, OpCode.EXISTS, OpCode.GET_ACL) and path == CONFIG_NODE:
        return Plan(({"op": "status"},))
    return _virtual_reply(op, path, None)


def _virtual_reply(op: int, path: str, status: Mapping[str, Any] | None) -> Reply:
    data = render_config(status) if path == CONFIG_NODE and status is not None else b""
    st = _virtual_stat(path, data, status)
    if op == OpCode.EXISTS:
        return Reply(body=ExistsResponse(st))
    if op == OpCode.GET_DATA:
        return Reply(body=GetDataResponse(data, st))
    if op == OpCode.GET_CHILDREN:
        return Reply(body=GetChildrenResponse(_VIRTUAL_CHILDREN[path]))
    if op == OpCode.GET_CHILDREN2:
        return Reply(body=GetChildren2Response(_VIRTUAL_CHILDREN[path], st))
    if op == OpCode.GET_ACL:
        return Reply(body=GetACLResponse((ACL(Perms.READ, Id("world", "anyone")),), st))
    return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")


# -- planners and finishers, per op -------------------------------------------------------------

Planner = Callable[[int, Any, Context], "Plan | Reply"]
Finisher = Callable[[int, Any, tuple, tuple, Context], Reply]


def _plan_create(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    f = _create_fields(op, rec)
    return f if isinstance(f, Reply) else Plan((f,))


def _finish_create(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = _ok(resps[0])
    return _err(resps[0]) if r is None else Reply(body=_created_body(op, r))


def _plan_delete(op: int, rec: DeleteRequest, ctx: Context) -> Plan | Reply:
    f = _delete_fields(rec)
    return f if isinstance(f, Reply) else Plan((f,))


def _finish_empty(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    bad = next((r for r in resps if _ok(r) is None), None)
    return Reply() if bad is None else _err(bad)


def _plan_set(op: int, rec: SetDataRequest, ctx: Context) -> Plan | Reply:
    f = _set_fields(rec)
    return f if isinstance(f, Reply) else Plan((f,))


def _finish_set(op: int, rec: SetDataRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = _ok(resps[0])
    return _err(resps[0]) if r is None else Reply(body=SetDataResponse(_root_plus(stat(r.get("stat")), rec.path, ctx)))


def _path_or_refuse(rec: Any) -> str | Reply:
    path = getattr(rec, "path", None)
    return path if isinstance(path, str) else error(Code.BAD_ARGUMENTS, "no path")


def _plan_read(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    path = _path_or_refuse(rec)
    if isinstance(path, Reply):
        return path
    if ctx.options.zookeeper_subtree:
        v = _virtual_plan(op, path)
        if v is not None:
            return v
    watch = bool(getattr(rec, "watch", False))
    if op == OpCode.EXISTS:
        return Plan((_read("exists", path, watch),))
    if op == OpCode.GET_DATA:
        return Plan((_read("get", path, watch),))
    if op == OpCode.GET_CHILDREN:
        return Plan((_read("children", path, watch, stats=False),))
    if op == OpCode.GET_CHILDREN2:
        # coord's children answer has no stat of the node itself: read it
        # right after (same connection, reads in order, no write between).
        return Plan((_read("children", path, watch, stats=False), _read("exists", path)))
    if op == OpCode.GET_ACL:
        return Plan((_read("exists", path),))
    return error(Code.UNIMPLEMENTED, f"op {op}")


def _finish_read(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    path = rec.path
    if ctx.options.zookeeper_subtree and _in_subtree(path):
        r = _ok(resps[0])
        return _err(resps[0]) if r is None else _virtual_reply(op, path, r)
    r = _ok(resps[0])
    if r is None:
        return _err(resps[0])
    if op == OpCode.EXISTS:
        adds = _adds(WatchKey(WatchClass.DATA, path), r)
        if r.get("stat") is None:
            return Reply(err=Code.NO_NODE, add_watches=adds)  # the watch stays: it fires on creation
        return Reply(body=ExistsResponse(_root_plus(stat(r["stat"]), path, ctx)), add_watches=adds)
    if op == OpCode.GET_DATA:
        data = r.get("data")
        return Reply(body=GetDataResponse(data if isinstance(data, bytes) else b"",
                                          _root_plus(stat(r.get("stat")), path, ctx)),
                     add_watches=_adds(WatchKey(WatchClass.DATA, path), r))
    if op == OpCode.GET_ACL:
        if r.get("stat") is None:
            return error(Code.NO_NODE, path)
        return Reply(body=GetACLResponse(OPEN_ACL, _root_plus(stat(r["stat"]), path, ctx)))
    kids = r.get("children")
    kids = tuple(k for k in kids if isinstance(k, str)) if isinstance(kids, list) else ()
    if path == "/" and ctx.options.zookeeper_subtree and "zookeeper" not in kids:
        kids = kids + ("zookeeper",)
    adds = _adds(WatchKey(WatchClass.CHILD, path), r)
    if op == OpCode.GET_CHILDREN:
        return Reply(body=GetChildrenResponse(kids), add_watches=adds)
    r2 = _ok(resps[1])
    if r2 is None or r2.get("stat") is None:
        # Deleted between the two reads: as if the list had been read after.
        return Reply(err=Code.NO_NODE if r2 is not None else _err(resps[1]).err, add_watches=adds)
    return Reply(body=GetChildren2Response(kids, _root_plus(stat(r2["stat"]), path, ctx)), add_watches=adds)


def _plan_sync(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    return Plan(({"op": "sync"},))


def _finish_sync(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    return _err(resps[0]) if _ok(resps[0]) is None else Reply(body=SyncResponse(rec.path))


def _plan_check(op: int, rec: CheckVersionRequest, ctx: Context) -> Plan | Reply:
    f = _check_fields(rec)
    return f if isinstance(f, Reply) else Plan((_read("exists", rec.path),))


def _finish_check(op: int, rec: CheckVersionRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = _ok(resps[0])
    if r is None:
        return _err(resps[0])
    if r.get("stat") is None:
        return error(Code.NO_NODE, rec.path)
    st = stat(r["stat"])
    if rec.version != -1 and st.version != rec.version:
        return error(Code.BAD_VERSION, rec.path)
    return Reply(body=SetDataResponse(st))


_MULTI_WRITES = frozenset({OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL,
                           OpCode.DELETE, OpCode.SET_DATA, OpCode.CHECK})
_MULTI_READS = frozenset({OpCode.GET_DATA, OpCode.GET_CHILDREN})


def _failed_multi(n: int, index: int, code: int) -> Reply:
    """A failed multi as ZooKeeper reports it: the header says OK; the ops
    before the failing one say OK, it says why, the ones after say
    RuntimeInconsistency."""
    res = tuple(MultiResult(OpCode.ERROR, ErrorResponse(Code.OK if k < index else code if k == index
                                                        else Code.RUNTIME_INCONSISTENCY))
                for k in range(n))
    return Reply(body=MultiResponse(res))


def _plan_multi(op: int, rec: MultiRequest, ctx: Context) -> Plan | Reply:
    if not rec.ops:
        return Reply(body=MultiResponse(()))
    ops = []
    for k, mop in enumerate(rec.ops):
        if mop.type not in _MULTI_WRITES:
            return error(Code.MARSHALLING_ERROR, "a multi mixes reads and writes")
        if mop.type == OpCode.DELETE:
            f = _delete_fields(mop.request)
        elif mop.type == OpCode.SET_DATA:
            f = _set_fields(mop.request)
        elif mop.type == OpCode.CHECK:
            f = _check_fields(mop.request)
        else:
            f = _create_fields(mop.type, mop.request)
        if isinstance(f, Reply):
            return _failed_multi(len(rec.ops), k, f.err)
        ops.append(f)
    return Plan(({"op": "multi", "ops": ops},))


def _finish_multi(op: int, rec: MultiRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    resp = resps[0]
    r = _ok(resp)
    if r is None:
        index = resp.get("index") if isinstance(resp, dict) else None
        if type(index) is int and 0 <= index < len(rec.ops):
            return _failed_multi(len(rec.ops), index, error_code(resp.get("err")))
        return _err(resp)
    results = r.get("results")
    if not isinstance(results, list) or len(results) != len(rec.ops):
        return error(Code.SYSTEM_ERROR, "malformed multi results")
    out = []
    for mop, res in zip(rec.ops, results):
        res = res if isinstance(res, dict) else {}
        if mop.type in (OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL):
            t = OpCode.CREATE if mop.type == OpCode.CREATE else OpCode.CREATE2
            out.append(MultiResult(t, _created_body(t, res)))
        elif mop.type == OpCode.SET_DATA:
            out.append(MultiResult(OpCode.SET_DATA, SetDataResponse(stat(res.get("stat")))))
        else:
            out.append(MultiResult(mop.type))
    return Reply(body=MultiResponse(tuple(out)))


def _plan_multi_read(op: int, rec: MultiRequest, ctx: Context) -> Plan | Reply:
    if not rec.ops:
        return Reply(body=MultiResponse(()))
    calls = []
    for mop in rec.ops:
        if mop.type not in _MULTI_READS:
            return error(Code.MARSHALLING_ERROR, "a multiRead carries a write")
        path = mop.request.path or ""
        calls.append(_read("get", path) if mop.type == OpCode.GET_DATA else _read("children", path, stats=False))
    return Plan(tuple(calls))


def _finish_multi_read(op: int, rec: MultiRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    out = []
    for mop, resp in zip(rec.ops, resps):
        r = _ok(resp)
        if r is None:
            out.append(MultiResult(OpCode.ERROR, ErrorResponse(_err(resp).err)))
        elif mop.type == OpCode.GET_DATA:
            data = r.get("data")
            out.append(MultiResult(OpCode.GET_DATA, GetDataResponse(data if isinstance(data, bytes) else b"",
                                                                    stat(r.get("stat")))))
        else:
            kids = r.get("children")
            out.append(MultiResult(OpCode.GET_CHILDREN, GetChildrenResponse(
                tuple(k for k in kids if isinstance(k, str)) if isinstance(kids, list) else ())))
    return Reply(body=MultiResponse(tuple(out)))


def _plan_set_acl(op: int, rec: SetACLRequest, ctx: Context) -> Plan | Reply:
    path = _path_or_refuse(rec)
    if isinstance(path, Reply):
        return path
    if _in_subtree(path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    return _acl_ok(rec.acl) or Plan((_read("exists", path),))


def _finish_set_acl(op: int, rec: SetACLRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    # Setting the open ACL on an open node changes nothing, as in
    # ZooKeeper only the ACL version would move; coord keeps none yet.
    r = _ok(resps[0])
    if r is None:
        return _err(resps[0])
    if r.get("stat") is None:
        return error(Code.NO_NODE, rec.path)
    if rec.version not in (-1, 0):
        return error(Code.BAD_VERSION, rec.path)
    return Reply(body=SetACLResponse(stat(r["stat"])))


def _watch_call(path: str, kind: str, recursive: bool = False, frm: int | None = None) -> dict:
    call = {"op": "watch", "path": path, "kind": kind, "recursive": recursive}
    if frm is not None:
        call["from"] = frm
    return call


def _plan_add_watch(op: int, rec: AddWatchRequest, ctx: Context) -> Plan | Reply:
    path = _path_or_refuse(rec)
    if isinstance(path, Reply):
        return path
    if rec.mode not in (AddWatchMode.PERSISTENT, AddWatchMode.PERSISTENT_RECURSIVE):
        return error(Code.BAD_ARGUMENTS, f"invalid watch mode {rec.mode}")
    return Plan((_watch_call(path, "persistent", rec.mode == AddWatchMode.PERSISTENT_RECURSIVE),))


def _finish_add_watch(op: int, rec: AddWatchRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = _ok(resps[0])
    if r is None:
        return _err(resps[0])
    cls = WatchClass.RECURSIVE if rec.mode == AddWatchMode.PERSISTENT_RECURSIVE else WatchClass.PERSISTENT
    return Reply(body=ErrorResponse(0), add_watches=_adds(WatchKey(cls, rec.path), r))


# (field of SetWatches/SetWatches2, coord kind, recursive, the ZooKeeper class)
_SET_WATCHES_FIELDS = (
    ("dataWatches", "data", False, WatchClass.DATA),
    ("existWatches", "exists", False, WatchClass.DATA),
    ("childWatches", "children", False, WatchClass.CHILD),
    ("persistentWatches", "persistent", False, WatchClass.PERSISTENT),
    ("persistentRecursiveWatches", "persistent", True, WatchClass.RECURSIVE),
)


def _set_watches_items(rec: SetWatches | SetWatches2) -> list[tuple[str, str, bool, WatchClass]]:
    out = []
    for name, kind, recursive, cls in _SET_WATCHES_FIELDS:
        for path in getattr(rec, name, None) or ():
            if isinstance(path, str):
                out.append((path, kind, recursive, cls))
    return out


def _plan_set_watches(op: int, rec: SetWatches | SetWatches2, ctx: Context) -> Plan | Reply:
    """Watches re-registered after a reconnect, each replaying from the
    client's last zxid what it missed (coord's ``watch`` with ``from``)."""
    items = _set_watches_items(rec)
    if not items:
        return Reply()
    frm = max(0, rec.relativeZxid)
    return Plan(tuple(_watch_call(p, kind, rec_, frm) for p, kind, rec_, _ in items))


def _finish_set_watches(op: int, rec: SetWatches | SetWatches2, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    adds = []
    for (path, _, _, cls), resp in zip(_set_watches_items(rec), resps):
        adds.extend(_adds(WatchKey(cls, path), _ok(resp)))  # a path coord refuses is skipped, as ZooKeeper does
    return Reply(add_watches=tuple(adds))


_REMOVE_CLASSES = MappingProxyType({
    WatcherType.CHILDREN: (WatchClass.CHILD,),
    WatcherType.DATA: (WatchClass.DATA,),
    WatcherType.ANY: tuple(WatchClass),
    WatcherType.PERSISTENT: (WatchClass.PERSISTENT,),
    WatcherType.PERSISTENT_RECURSIVE: (WatchClass.RECURSIVE,),
})


def _matching_watches(rec: CheckWatchesRequest | RemoveWatchesRequest, ctx: Context) -> list[int] | Reply:
    path = _path_or_refuse(rec)
    if isinstance(path, Reply):
        return path
    classes = _REMOVE_CLASSES.get(rec.type)
    if classes is None:
        return error(Code.BAD_ARGUMENTS, f"invalid watcher type {rec.type}")
    wids = [ctx.watches[WatchKey(c, path)] for c in classes if WatchKey(c, path) in ctx.watches]
    return wids or error(Code.NO_WATCHER, path)


def _plan_check_watches(op: int, rec: CheckWatchesRequest, ctx: Context) -> Plan | Reply:
    m = _matching_watches(rec, ctx)
    return m if isinstance(m, Reply) else Reply()


def _plan_remove_watches(op: int, rec: RemoveWatchesRequest, ctx: Context) -> Plan | Reply:
    m = _matching_watches(rec, ctx)
    return m if isinstance(m, Reply) else Plan(tuple({"op": "unwatch", "wid": w} for w in m))


def _finish_remove_watches(op: int, rec: RemoveWatchesRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    # Dropped whatever each unwatch answered: the watch is gone either way.
    return Reply(drop_watches=tuple(c["wid"] for c in calls))


def _plan_auth(op: int, rec: AuthPacket, ctx: Context) -> Plan | Reply:
    if not rec.scheme:
        return Reply(err=Code.AUTH_FAILED, close=True, message="no auth scheme")
    return Plan(({"op": "add_auth", "scheme": rec.scheme, "auth": rec.auth or b""},))


def _finish_auth(op: int, rec: AuthPacket, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    if _ok(resps[0]) is None:
        # ZooKeeper answers a failed auth with AuthFailed and closes.
        return Reply(err=Code.AUTH_FAILED, close=True, message=_err(resps[0]).message)
    user = (rec.auth or b"").decode("utf-8", "replace")
    if rec.scheme == "digest":
        user = user.split(":", 1)[0]
    return Reply(add_auth=(ClientInfo(rec.scheme, user),))


def _plan_who_am_i(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    return Reply(body=WhoAmIResponse(ctx.auth))


def _plan_ping(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    return Plan(({"op": "ping"},))


def _plan_close(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    return Plan(({"op": "close"},))


def _finish_close(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    # The connection ends either way; an already expired session is closed too.
    bad = _ok(resps[0]) is None and isinstance(resps[0], dict) and resps[0].get("err") != "SessionExpired"
    return Reply(err=_err(resps[0]).err if bad else Code.OK, close=True)


def _plan_reconfig(op: int, rec: ReconfigRequest, ctx: Context) -> Plan | Reply:
    if not ctx.options.reconfig_enabled:
        return error(Code.RECONFIG_DISABLED, "reconfig is disabled")
    try:
        return Plan((parse_reconfig(rec),))
    except ReconfigRefused as e:
        return error(e.code, str(e))


def _finish_reconfig(op: int, rec: ReconfigRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = _ok(resps[0])  # member_change answers with the new status
    if r is None:
        return _err(resps[0])
    data = render_config(r)
    return Reply(body=GetDataResponse(data, _virtual_stat(CONFIG_NODE, data, r)))


def _unimplemented(why: str) -> Planner:
    def plan_(op: int, rec: Any, ctx: Context) -> Plan | Reply:
        return error(Code.UNIMPLEMENTED, why)
    return plan_


# op -> (planner, finisher or None when the planner always answers itself)
OPS: Mapping[int, tuple[Planner, Finisher | None]] = MappingProxyType({
    OpCode.CREATE: (_plan_create, _finish_create),
    OpCode.CREATE2: (_plan_create, _finish_create),
    OpCode.CREATE_CONTAINER: (_plan_create, _finish_create),
    OpCode.CREATE_TTL: (_plan_create, _finish_create),
    OpCode.DELETE: (_plan_delete, _finish_empty),
    OpCode.EXISTS: (_plan_read, _finish_read),
    OpCode.GET_DATA: (_plan_read, _finish_read),
    OpCode.GET_CHILDREN: (_plan_read, _finish_read),
    OpCode.GET_CHILDREN2: (_plan_read, _finish_read),
    OpCode.GET_ACL: (_plan_read, _finish_read),
    OpCode.SET_DATA: (_plan_set, _finish_set),
    OpCode.SET_ACL: (_plan_set_acl, _finish_set_acl),
    OpCode.SYNC: (_plan_sync, _finish_sync),
    OpCode.CHECK: (_plan_check, _finish_check),
    OpCode.MULTI: (_plan_multi, _finish_multi),
    OpCode.MULTI_READ: (_plan_multi_read, _finish_multi_read),
    OpCode.ADD_WATCH: (_plan_add_watch, _finish_add_watch),
    OpCode.SET_WATCHES: (_plan_set_watches, _finish_set_watches),
    OpCode.SET_WATCHES2: (_plan_set_watches, _finish_set_watches),
    OpCode.CHECK_WATCHES: (_plan_check_watches, None),
    OpCode.REMOVE_WATCHES: (_plan_remove_watches, _finish_remove_watches),
    OpCode.AUTH: (_plan_auth, _finish_auth),
    OpCode.WHO_AM_I: (_plan_who_am_i, None),
    OpCode.PING: (_plan_ping, _finish_empty),
    OpCode.CLOSE_SESSION: (_plan_close, _finish_close),
    OpCode.RECONFIG: (_plan_reconfig, _finish_reconfig),
    OpCode.GET_ALL_CHILDREN_NUMBER: (_unimplemented("getAllChildrenNumber needs a server-side count"), None),
    OpCode.GET_EPHEMERALS: (_unimplemented("getEphemerals needs a server-side listing"), None),
    OpCode.SASL: (_unimplemented("SASL is not supported"), None),
    OpCode.DELETE_CONTAINER: (_unimplemented("deleteContainer is internal to ZooKeeper servers"), None),
})


_READS = frozenset({OpCode.EXISTS, OpCode.GET_DATA, OpCode.GET_CHILDREN, OpCode.GET_CHILDREN2, OpCode.GET_ACL,
                    OpCode.SET_ACL, OpCode.CHECK, OpCode.MULTI_READ, OpCode.PING, OpCode.ADD_WATCH,
                    OpCode.SET_WATCHES, OpCode.SET_WATCHES2})
_WRITES = frozenset({OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL, OpCode.DELETE,
                     OpCode.SET_DATA, OpCode.MULTI, OpCode.SYNC})


def kind_of(op: int) -> Kind:
    """How a request of this op may overlap with others (see ``Kind``);
    known before planning, so the session can hold a request back until
    what it depends on is answered."""
    if op in _READS:
        return Kind.READ
    if op in _WRITES:
        return Kind.WRITE
    return Kind.BARRIER


def plan(op: int, body: Any, ctx: Context) -> Plan | Reply:
    """What to ask coord for one decoded ZooKeeper request (or the reply
    itself when no coord request is needed).  Never raises for any decoded
    request: unknown ops and refusals are replies."""
    entry = OPS.get(op)
    if entry is None:
        return error(Code.UNIMPLEMENTED, f"unknown op {op}")
    try:
        return entry[0](op, body, ctx)
    except (ValueError, TypeError, AttributeError) as e:  # a body of the wrong shape
        return error(Code.MARSHALLING_ERROR, str(e)[:200])


def finish(op: int, body: Any, planned: Plan, responses: tuple[dict, ...], ctx: Context) -> Reply:
    """The ZooKeeper reply for the coord responses to ``planned.calls`` (one
    per call, in order).  A malformed coord response is a SystemError reply,
    never an exception."""
    entry = OPS.get(op)
    if entry is None or entry[1] is None or len(responses) != len(planned.calls):
        return error(Code.SYSTEM_ERROR, "nothing to finish")
    try:
        return entry[1](op, body, planned.calls, tuple(responses), ctx)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        return error(Code.SYSTEM_ERROR, f"malformed coord response: {e}"[:200])
