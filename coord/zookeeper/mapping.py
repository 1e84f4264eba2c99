"""Value mappings between coord and ZooKeeper: error names to codes,
coord's stat to ZooKeeper's, watch events to notifications, and the
handshake (ConnectRequest as coord's ``hello``, its answer as
ConnectResponse).  Pure functions; malformed coord values raise
ValueError, which translation turns into a SystemError reply."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from coord.zookeeper.codes import Code, EventType, KeeperState, Perms
from coord.zookeeper.jute import wrap_int, wrap_long
from coord.zookeeper.records import ACL, ConnectRequest, ConnectResponse, Id, Stat, WatcherEvent
from coord.zookeeper.seam import Reply, WatchClass, WatchKey, error


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
    "LimitExceeded": Code.BAD_ARGUMENTS,
    "NoSpace": Code.SYSTEM_ERROR,  # this server's disk is full (ZooKeeper has no code of its own for it)
})


def error_code(name: Any) -> int:
    """ZooKeeper's code for a coord error name; an unknown name is a
    SystemError (a ZooKeeper client must never see a code it does not know)."""
    return ERROR_CODES.get(name, Code.SYSTEM_ERROR) if isinstance(name, str) else Code.SYSTEM_ERROR


def stat(raw: Any) -> Stat:
    """ZooKeeper's Stat from coord's (``STAT_FIELDS`` order: czxid, mzxid,
    pzxid, ctime, mtime, version, cversion, ephemeral_owner, data_length,
    num_children, aversion; a server from before ACLs sends no aversion: 0)."""
    if not isinstance(raw, (list, tuple)) or len(raw) not in (10, 11) or not all(type(v) is int for v in raw):
        raise ValueError(f"malformed coord stat: {raw!r}"[:200])
    czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, length, kids, *rest = raw
    aversion = rest[0] if rest else 0
    return Stat(wrap_long(czxid), wrap_long(mzxid), wrap_long(ctime), wrap_long(mtime), wrap_int(version),
                wrap_int(cversion), wrap_int(aversion), wrap_long(owner), wrap_int(length), wrap_int(kids),
                wrap_long(pzxid))


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


# -- coord responses ------------------------------------------------------------------


def result_of(resp: Any) -> dict | None:
    """The result map of a successful coord response, None for an error."""
    if isinstance(resp, dict) and resp.get("ok") is True:
        r = resp.get("r")
        return r if isinstance(r, dict) else {}
    return None


def error_reply(resp: Any) -> Reply:
    if isinstance(resp, dict):
        return error(error_code(resp.get("err")), str(resp.get("msg") or ""))
    return error(Code.SYSTEM_ERROR, "malformed response")
