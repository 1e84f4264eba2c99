"""The seam: ZooKeeper requests as coord requests, coord answers as ZooKeeper replies.

A ZooKeeper front end must not be a second namespace: every ZooKeeper op
becomes the request a coord client would send (``coordclient``'s builders,
``PROTOCOL.md``), on the same session, with the same watches.  This module
is that mapping, op by op, and nothing else -- pure functions over frozen
values (``seam.py``), no I/O, no state of its own:

* ``kind_of(op)`` -> how the op may overlap with others on its connection
  (reads with reads, writes with writes, barriers alone).
* ``plan(op, body, ctx)`` -> a ``Plan`` (the coord requests to send, in
  order), or a ``Reply`` straight away (an op answered without the server:
  checkWatches, whoAmI, the /zookeeper subtree, refusals).
* ``finish(op, body, plan, responses, ctx)`` -> the ``Reply`` (ZooKeeper
  error code, response record, and what the session must remember: watches
  added or dropped, auth ids, whether to close) from the coord responses,
  one per planned request, in order.
* re-exported from ``mapping.py``: ``hello_request`` / ``connect_response``
  (the handshake as coord's ``hello``), ``stat``, ``error_code``,
  ``watcher_event``, ``resync_event``.

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

from types import MappingProxyType
from typing import Any, Callable, Mapping

from coord.zookeeper.codes import CONFIG_NODE, ZOOKEEPER_NODE, AddWatchMode, Code, CreateMode, OpCode, Perms, WatcherType
from coord.zookeeper.mapping import (
    connect_response,
    error_code,
    error_reply,
    hello_request,
    result_of,
    resync_event,
    stat,
    watcher_event,
)
from coord.zookeeper.membership import ReconfigRefused, parse_reconfig, render_config
from coord.zookeeper.records import (
    ACL,
    Id,
    AddWatchRequest,
    AuthPacket,
    CheckVersionRequest,
    CheckWatchesRequest,
    ClientInfo,
    Create2Response,
    CreateRequest,
    CreateResponse,
    CreateTTLRequest,
    DeleteRequest,
    ErrorResponse,
    GetAllChildrenNumberRequest,
    GetAllChildrenNumberResponse,
    GetEphemeralsRequest,
    GetEphemeralsResponse,
    ExistsResponse,
    GetACLResponse,
    GetChildren2Response,
    GetChildrenResponse,
    GetDataResponse,
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
    SyncResponse,
    WhoAmIResponse,
)
from coord.zookeeper.seam import Context, Kind, Options, Plan, Reply, WatchClass, WatchKey, error
from coordclient.protocol import MAX_TTL_MS
from coord.zookeeper.subtree import in_subtree, root_plus, virtual_plan, virtual_reply, virtual_stat

__all__ = ["Context", "Kind", "OPS", "Options", "Plan", "Reply", "WatchClass", "WatchKey", "connect_response",
           "error", "error_code", "finish", "hello_request", "kind_of", "plan", "resync_event", "stat",
           "watcher_event"]


# -- helpers ----------------------------------------------------------------------------


_ACL_SCHEMES = frozenset({"world", "digest", "ip", "x509", "auth"})


def _acl_wire(acl: tuple[ACL, ...] | None) -> list | Reply:
    """ZooKeeper ACL records as coord's ``[[perms, scheme, id], ...]``; the
    server checks them fully (coord/namespace/acl.py).  Schemes coord has no
    provider for (sasl, super, ...) are refused as ZooKeeper refuses an
    unknown scheme: InvalidACL."""
    if not acl:
        return error(Code.INVALID_ACL, "an ACL must not be empty")
    out = []
    for a in acl:
        ident = a.id
        scheme = ident.scheme if ident is not None else None
        if scheme not in _ACL_SCHEMES:
            return error(Code.INVALID_ACL, f"unsupported ACL scheme {scheme!r}"[:200])
        out.append([int(a.perms) & int(Perms.ALL), scheme, ident.id or ""])
    return out


def _acl_records(wire: Any) -> tuple[ACL, ...]:
    if not isinstance(wire, list):
        raise ValueError("malformed ACL from coord")
    return tuple(ACL(int(p), Id(str(sc), str(i))) for p, sc, i in wire)


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
    ttl = rec.ttl if isinstance(rec, CreateTTLRequest) else -1
    if mode.ttl:
        if not 0 < ttl <= MAX_TTL_MS:  # as ZooKeeper's EphemeralType.validateTTL
            return error(Code.BAD_ARGUMENTS, f"ttl {ttl} is not between 1 and {MAX_TTL_MS} ms")
    elif ttl >= 0:
        return error(Code.BAD_ARGUMENTS, f"a ttl for create mode {mode.name}")
    acl = _acl_wire(rec.acl)
    if isinstance(acl, Reply):
        return acl
    if in_subtree(rec.path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    f = {"op": "create", "path": rec.path, "data": rec.data or b"", "eph": mode.ephemeral,
         "sq": mode.sequential, "parents": False, "acl": acl}
    # The mode decides, as in ZooKeeper (whose clients send createContainer
    # and createTTL for those modes): a container, or a TTL node.
    if mode == CreateMode.CONTAINER:
        f["container"] = True
    elif mode.ttl:
        f["ttl"] = ttl
    return f


def _delete_fields(rec: DeleteRequest) -> dict | Reply:
    if rec.path is None:
        return error(Code.BAD_ARGUMENTS, "no path")
    if in_subtree(rec.path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    return _version_ok(rec.version) or {"op": "delete", "path": rec.path, "version": rec.version,
                                        "recursive": False}


def _set_fields(rec: SetDataRequest) -> dict | Reply:
    if rec.path is None:
        return error(Code.BAD_ARGUMENTS, "no path")
    if in_subtree(rec.path):
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
    if not isinstance(path, str):
        raise ValueError(f"malformed created path: {path!r}"[:200])
    if op == OpCode.CREATE:
        return CreateResponse(path)
    return Create2Response(path, stat(r.get("stat")))


def _wid(r: dict | None) -> int | None:
    wid = r.get("wid") if r else None
    return wid if type(wid) is int else None


def _adds(key: WatchKey, r: dict | None) -> tuple[tuple[WatchKey, int], ...]:
    wid = _wid(r)
    return () if wid is None else ((key, wid),)


# -- planners and finishers, per op -------------------------------------------------------------

Planner = Callable[[int, Any, Context], "Plan | Reply"]
Finisher = Callable[[int, Any, tuple, tuple, Context], Reply]


def _plan_create(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    f = _create_fields(op, rec)
    return f if isinstance(f, Reply) else Plan((f,))


def _finish_create(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])
    return error_reply(resps[0]) if r is None else Reply(body=_created_body(op, r))


def _plan_delete(op: int, rec: DeleteRequest, ctx: Context) -> Plan | Reply:
    f = _delete_fields(rec)
    return f if isinstance(f, Reply) else Plan((f,))


def _finish_empty(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    bad = next((r for r in resps if result_of(r) is None), None)
    return Reply() if bad is None else error_reply(bad)


def _plan_set(op: int, rec: SetDataRequest, ctx: Context) -> Plan | Reply:
    f = _set_fields(rec)
    return f if isinstance(f, Reply) else Plan((f,))


def _finish_set(op: int, rec: SetDataRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])
    return error_reply(resps[0]) if r is None else Reply(body=SetDataResponse(root_plus(stat(r.get("stat")), rec.path, ctx)))


def _path_or_refuse(rec: Any) -> str | Reply:
    path = getattr(rec, "path", None)
    return path if isinstance(path, str) else error(Code.BAD_ARGUMENTS, "no path")


def _plan_read(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    path = _path_or_refuse(rec)
    if isinstance(path, Reply):
        return path
    if ctx.options.zookeeper_subtree:
        v = virtual_plan(op, path)
        if v is not None:
            return v
    watch = bool(getattr(rec, "watch", False))
    if op == OpCode.EXISTS:
        return Plan((_read("exists", path, watch),))
    if op == OpCode.GET_DATA:
        return Plan((_read("get", path, watch),))
    if op == OpCode.GET_CHILDREN:
        return Plan((_read("children", path, watch, stats=False),))
    if op == OpCode.GET_CHILDREN2:  # the listing and the node's own stat, in one read
        return Plan((_read("children", path, watch, stats=False, node_stat=True),))
    if op == OpCode.GET_ACL:
        return Plan(({"op": "get_acl", "path": path, "lin": False},))
    return error(Code.UNIMPLEMENTED, f"op {op}")


def _finish_read(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    path = rec.path
    if ctx.options.zookeeper_subtree and in_subtree(path):
        r = result_of(resps[0])
        return error_reply(resps[0]) if r is None else virtual_reply(op, path, r)
    r = result_of(resps[0])
    if r is None:
        return error_reply(resps[0])
    if op == OpCode.EXISTS:
        adds = _adds(WatchKey(WatchClass.DATA, path), r)
        if r.get("stat") is None:
            return Reply(err=Code.NO_NODE, add_watches=adds)  # the watch stays: it fires on creation
        return Reply(body=ExistsResponse(root_plus(stat(r["stat"]), path, ctx)), add_watches=adds)
    if op == OpCode.GET_DATA:
        data = r.get("data")
        return Reply(body=GetDataResponse(data if isinstance(data, bytes) else b"",
                                          root_plus(stat(r.get("stat")), path, ctx)),
                     add_watches=_adds(WatchKey(WatchClass.DATA, path), r))
    if op == OpCode.GET_ACL:
        return Reply(body=GetACLResponse(_acl_records(r.get("acl")), root_plus(stat(r.get("stat")), path, ctx)))
    kids = r.get("children")
    kids = tuple(k for k in kids if isinstance(k, str)) if isinstance(kids, list) else ()
    if path == "/" and ctx.options.zookeeper_subtree and "zookeeper" not in kids:
        kids = kids + ("zookeeper",)
    adds = _adds(WatchKey(WatchClass.CHILD, path), r)
    if op == OpCode.GET_CHILDREN:
        return Reply(body=GetChildrenResponse(kids), add_watches=adds)
    return Reply(body=GetChildren2Response(kids, root_plus(stat(r.get("stat")), path, ctx)), add_watches=adds)


def _plan_sync(op: int, rec: Any, ctx: Context) -> Plan | Reply:
    return Plan(({"op": "sync"},))


def _finish_sync(op: int, rec: Any, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    return error_reply(resps[0]) if result_of(resps[0]) is None else Reply(body=SyncResponse(rec.path))


def _plan_check(op: int, rec: CheckVersionRequest, ctx: Context) -> Plan | Reply:
    f = _check_fields(rec)
    return f if isinstance(f, Reply) else Plan((_read("exists", rec.path),))


def _finish_check(op: int, rec: CheckVersionRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])
    if r is None:
        return error_reply(resps[0])
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
    r = result_of(resp)
    if r is None:
        index = resp.get("index") if isinstance(resp, dict) else None
        if type(index) is int and 0 <= index < len(rec.ops):
            return _failed_multi(len(rec.ops), index, error_code(resp.get("err")))
        return error_reply(resp)
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
        r = result_of(resp)
        if r is None:
            out.append(MultiResult(OpCode.ERROR, ErrorResponse(error_reply(resp).err)))
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
    if in_subtree(path):
        return error(Code.NO_AUTH, "the /zookeeper subtree is read-only")
    acl = _acl_wire(rec.acl)
    if isinstance(acl, Reply):
        return acl
    return _version_ok(rec.version) or Plan(({"op": "set_acl", "path": path, "acl": acl, "version": rec.version},))


def _finish_set_acl(op: int, rec: SetACLRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])
    if r is None:
        return error_reply(resps[0])
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
    r = result_of(resps[0])
    if r is None:
        return error_reply(resps[0])
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
        adds.extend(_adds(WatchKey(cls, path), result_of(resp)))  # a path coord refuses is skipped, as ZooKeeper does
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
    if result_of(resps[0]) is None:
        # ZooKeeper answers a failed auth with AuthFailed and closes.
        return Reply(err=Code.AUTH_FAILED, close=True, message=error_reply(resps[0]).message)
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
    bad = result_of(resps[0]) is None and isinstance(resps[0], dict) and resps[0].get("err") != "SessionExpired"
    return Reply(err=error_reply(resps[0]).err if bad else Code.OK, close=True)


def _plan_reconfig(op: int, rec: ReconfigRequest, ctx: Context) -> Plan | Reply:
    if not ctx.options.reconfig_enabled:
        return error(Code.RECONFIG_DISABLED, "reconfig is disabled")
    try:
        return Plan((parse_reconfig(rec),))
    except ReconfigRefused as e:
        return error(e.code, str(e))


def _finish_reconfig(op: int, rec: ReconfigRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])  # member_change answers with the new status
    if r is None:
        return error_reply(resps[0])
    data = render_config(r)
    return Reply(body=GetDataResponse(data, virtual_stat(CONFIG_NODE, data, r)))


def _plan_count(op: int, rec: GetAllChildrenNumberRequest, ctx: Context) -> Plan | Reply:
    path = _path_or_refuse(rec)
    if isinstance(path, Reply):
        return path
    if ctx.options.zookeeper_subtree and in_subtree(path):
        return Reply(body=GetAllChildrenNumberResponse(2 if path == ZOOKEEPER_NODE else 0))
    return Plan(({"op": "descendants", "path": path, "lin": False},))


def _finish_count(op: int, rec: GetAllChildrenNumberRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])
    if r is None:
        return error_reply(resps[0])
    n = int(r["count"])
    if ctx.options.zookeeper_subtree and rec.path == "/":
        n += 3  # /zookeeper, /zookeeper/config and /zookeeper/quota, as ZooKeeper counts them
    return Reply(body=GetAllChildrenNumberResponse(min(n, (1 << 31) - 1)))


def _plan_ephemerals(op: int, rec: GetEphemeralsRequest, ctx: Context) -> Plan | Reply:
    prefix = rec.prefixPath or "/"
    if not prefix.startswith("/"):
        prefix = "/" + prefix.strip()  # what ZooKeeper's filter could never match: nothing, not an error
    return Plan(({"op": "ephemerals", "prefix": prefix, "lin": False},))


def _finish_ephemerals(op: int, rec: GetEphemeralsRequest, calls: tuple, resps: tuple, ctx: Context) -> Reply:
    r = result_of(resps[0])
    if r is None:
        return error_reply(resps[0])
    return Reply(body=GetEphemeralsResponse(tuple(p for p in r["paths"] if isinstance(p, str))))


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
    OpCode.GET_ALL_CHILDREN_NUMBER: (_plan_count, _finish_count),
    OpCode.GET_EPHEMERALS: (_plan_ephemerals, _finish_ephemerals),
    OpCode.SASL: (_unimplemented("SASL is not supported"), None),
    OpCode.DELETE_CONTAINER: (_unimplemented("deleteContainer is internal to ZooKeeper servers"), None),
})


_READS = frozenset({OpCode.EXISTS, OpCode.GET_DATA, OpCode.GET_CHILDREN, OpCode.GET_CHILDREN2, OpCode.GET_ACL,
                    OpCode.CHECK, OpCode.GET_ALL_CHILDREN_NUMBER, OpCode.GET_EPHEMERALS, OpCode.MULTI_READ, OpCode.PING, OpCode.ADD_WATCH,
                    OpCode.SET_WATCHES, OpCode.SET_WATCHES2})
_WRITES = frozenset({OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL, OpCode.DELETE,
                     OpCode.SET_DATA, OpCode.SET_ACL, OpCode.MULTI, OpCode.SYNC})


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
