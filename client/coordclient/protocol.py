"""The client protocol: operation names, error codes, stat layout, limits.

This module and ``wire.py`` are the single definition of what travels
between clients and servers; the server imports them.  Every frame is a
CBOR map (see ``wire.py`` for framing).

Requests (client -> server)::

    {"id": <int request id, unique per connection>, "op": <str>, ...arguments}

Responses (server -> client)::

    {"id": <request id>, "ok": True,  "zxid": <server's applied zxid>, "r": <result>}
    {"id": <request id>, "ok": False, "zxid": <...>, "err": <error code>, "msg": <text>}

Events (server -> client, unsolicited)::

    {"ev": "watch", "wid": <watch id>, "type": <event type>, "path": <str>, "zxid": <int>}
    {"ev": "resync", "wid": <watch id>, "zxid": <int>}   # history too short: re-read state

Errors keep ZooKeeper's names so that users' knowledge carries over.
PROTOCOL.md beside this file is the full specification.
"""

from __future__ import annotations

import enum

PROTOCOL_VERSION = 1

# Limits enforced by both ends (servers may be configured lower).
MAX_PATH_LENGTH = 1024
MAX_PATH_DEPTH = 64
DEFAULT_MAX_DATA = 1 << 20
SEQUENTIAL_DIGITS = 10
MAX_TTL_MS = (1 << 40) - 1  # a TTL node's longest TTL: what ZooKeeper's ephemeralOwner encoding holds


class Op(str, enum.Enum):
    # session
    HELLO = "hello"  # open or resume a session
    PING = "ping"  # keepalive
    CLOSE = "close"  # close the session (deletes its ephemerals)
    # writes (carry "seq": the per-session request sequence number, for exactly-once)
    CREATE = "create"
    DELETE = "delete"
    SET = "set"
    MULTI = "multi"
    # reads
    GET = "get"
    EXISTS = "exists"
    CHILDREN = "children"
    SYNC = "sync"
    DESCENDANTS = "descendants"  # how many nodes are under a node (ZooKeeper's getAllChildrenNumber)
    EPHEMERALS = "ephemerals"  # the session's own ephemeral nodes (ZooKeeper's getEphemerals)
    # access control
    GET_ACL = "get_acl"
    SET_ACL = "set_acl"  # a write: carries "seq"
    ADD_AUTH = "add_auth"  # add an identity to the session (digest user:password; x509 from the certificate)
    WHOAMI = "whoami"
    # watches
    WATCH = "watch"  # persistent watch stream on a node or subtree
    UNWATCH = "unwatch"
    # tools and administration (allowed without a session)
    STATUS = "status"
    MEMBER_CHANGE = "member_change"  # add/remove/promote servers (one joint-consensus step)
    LEADER_TRANSFER = "leader_transfer"
    SNAPSHOT = "snapshot"  # stream a consistent snapshot of the state machine
    # operations inside MULTI only
    CHECK = "check"


WRITE_OPS = frozenset({Op.CREATE, Op.DELETE, Op.SET, Op.MULTI, Op.SET_ACL})
SESSIONLESS_OPS = frozenset({Op.HELLO, Op.STATUS, Op.MEMBER_CHANGE, Op.LEADER_TRANSFER, Op.SNAPSHOT,
                             Op.ADD_AUTH, Op.WHOAMI})
SNAPSHOT_CHUNK = 1 << 20


class Err(str, enum.Enum):
    """Error codes.  The value is what travels on the wire."""

    NO_NODE = "NoNode"
    NODE_EXISTS = "NodeExists"
    BAD_VERSION = "BadVersion"
    NOT_EMPTY = "NotEmpty"
    NO_CHILDREN_FOR_EPHEMERALS = "NoChildrenForEphemerals"
    INVALID_PATH = "InvalidPath"
    SESSION_EXPIRED = "SessionExpired"
    SESSION_MOVED = "SessionMoved"
    TOO_LARGE = "TooLarge"
    BAD_ARGUMENTS = "BadArguments"
    UNIMPLEMENTED = "Unimplemented"  # unknown operation
    NOT_LEADER = "NotLeader"
    CONNECTION_LOSS = "ConnectionLoss"
    OPERATION_TIMEOUT = "OperationTimeout"
    RUNTIME_INCONSISTENCY = "RuntimeInconsistency"  # a multi's failed op aborted the rest
    AUTH_FAILED = "AuthFailed"
    NO_AUTH = "NoAuth"  # the ACL (or the admin rule) does not allow it
    INVALID_ACL = "InvalidACL"
    LIMIT_EXCEEDED = "LimitExceeded"  # a server limit ([limits]): too many sessions, watches, ...
    NO_SPACE = "NoSpace"  # the server's disk is full: no writes there until space is freed; reads still work
    SYSTEM_ERROR = "SystemError"
    CONF_CHANGE = "ConfChange"  # membership change refused


class EventType(str, enum.Enum):
    CREATED = "created"
    DELETED = "deleted"
    CHANGED = "changed"  # data changed
    CHILDREN = "children"  # children list changed


# Stat fields, in this order on the wire (a CBOR array), as ZooKeeper's Stat.
STAT_FIELDS = (
    "czxid",
    "mzxid",
    "pzxid",
    "ctime",
    "mtime",
    "version",
    "cversion",
    "ephemeral_owner",
    "data_length",
    "num_children",
    "aversion",
)


def validate_path(path: object, *, allow_root: bool = True) -> str | None:
    """Return None if ``path`` is a valid node path, else the reason.

    ZooKeeper's rules: absolute, no trailing slash (except the root), no empty
    components, no "." or ".." components, no control characters or
    unassigned/surrogate code points, bounded length and depth.
    """
    if not isinstance(path, str):
        return "path must be a string"
    if not path.startswith("/"):
        return "path must start with /"
    if path == "/":
        return None if allow_root else "the root is not allowed here"
    if len(path) > MAX_PATH_LENGTH:
        return f"path longer than {MAX_PATH_LENGTH} characters"
    if path.endswith("/"):
        return "path must not end with /"
    parts = path[1:].split("/")
    if len(parts) > MAX_PATH_DEPTH:
        return f"path deeper than {MAX_PATH_DEPTH} levels"
    for part in parts:
        if part == "":
            return "empty path component"
        if part in (".", ".."):
            return "relative path component"
    for ch in path:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xF8FF or 0xFFF0 <= o <= 0xFFFF:
            return f"invalid character U+{o:04X} in path"
    return None


def parent_of(path: str) -> str:
    i = path.rfind("/")
    return "/" if i == 0 else path[:i]


def basename(path: str) -> str:
    return path[path.rfind("/") + 1:]
