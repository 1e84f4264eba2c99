"""Every request the SDK sends, built in one place, and error responses
turned back into exceptions.

This is the client side's single definition of the request messages (the
wire format itself is ``protocol.py``/``wire.py``/PROTOCOL.md): the client,
the watch machinery and the recipes all build their requests here.
Arguments are checked before anything is sent, so a bad path raises
``InvalidPathError`` in the caller without a round trip.

``ops`` are the public builders for ``Client.multi``; the other functions
are the SDK's own requests.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from coordclient.acl import ACL, acl_to_wire

from coordclient.errors import CoordError, InvalidPathError, MultiError, TooLargeError
from coordclient.protocol import DEFAULT_MAX_DATA, MAX_TTL_MS, Err, Op, validate_path
from coordclient.types import Stat

__all__ = [
    "check_data",
    "check_path",
    "check_version",
    "error_from",
    "multi_results",
    "ops",
]

# Operations that carry a session sequence number (applied exactly once).
WRITES = frozenset(op.value for op in (Op.CREATE, Op.DELETE, Op.SET, Op.MULTI, Op.SET_ACL))
# Error answers the SDK retries on the same or another server.
RETRYABLE = frozenset(e.value for e in (Err.CONNECTION_LOSS, Err.OPERATION_TIMEOUT, Err.NOT_LEADER))
# Answers to hello that end the session for good.
FATAL_HELLO = frozenset(e.value for e in (Err.SESSION_EXPIRED, Err.AUTH_FAILED))
MULTI_OPS = ("create", "set", "delete", "check")


# -- argument checks ---------------------------------------------------------


def check_path(path: object, *, allow_root: bool = True) -> str:
    reason = validate_path(path, allow_root=allow_root)
    if reason is not None:
        raise InvalidPathError(reason, path=path if isinstance(path, str) else None)
    return path  # type: ignore[return-value]


def check_data(data: object) -> bytes:
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > DEFAULT_MAX_DATA:
        raise TooLargeError(f"{len(data)} bytes of data; the limit is {DEFAULT_MAX_DATA}")
    return data


def check_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < -1:
        raise ValueError(f"version must be an int >= -1, not {version!r}")
    return version


# -- multi operations (public) -------------------------------------------------


class ops:  # noqa: N801 - a namespace, used as ``coordclient.ops.create(...)``
    """Builders for the operations of ``Client.multi``.

    Each returns the operation's wire form (a dict, to be treated as
    opaque); arguments are checked here, so a bad path raises before
    anything is sent::

        await client.multi([
            ops.check("/cfg", version=3),
            ops.set("/cfg", b"new", version=3),
            ops.create("/cfg/log-", b"", sequential=True),
            ops.delete("/cfg/old"),
        ])

    ``create``, ``set`` and ``delete`` are also the requests the client's own
    calls of those names send.
    """

    @staticmethod
    def create(path: str, data: bytes = b"", *, ephemeral: bool = False, sequential: bool = False,
               make_parents: bool = False, acl: Iterable[ACL | str] | None = None, container: bool = False,
               ttl: float | None = None) -> dict:
        """``acl``: ``coordclient.acl.ACL`` entries or their text forms
        (``"world:anyone:r"``); None: the server's default ACL.
        ``container``: the server deletes the node once it has had children
        and has none left; ``ttl`` (seconds): once it has no children and has
        not changed for that long.  Neither goes with ``ephemeral``."""
        msg = {"op": "create", "path": check_path(path, allow_root=False), "data": check_data(data),
               "eph": bool(ephemeral), "sq": bool(sequential), "parents": bool(make_parents)}
        if acl is not None:
            msg["acl"] = acl_to_wire(acl)
        if (bool(ephemeral), bool(container), ttl is not None).count(True) > 1:
            raise ValueError("a node is at most one of ephemeral, container and TTL")
        if container:
            msg["container"] = True
        if ttl is not None:
            ms = round(ttl * 1000)
            if not 1 <= ms <= MAX_TTL_MS:
                raise ValueError(f"ttl must be between 0.001 and {MAX_TTL_MS / 1000:.0f} seconds")
            msg["ttl"] = ms
        return msg

    @staticmethod
    def set(path: str, data: bytes, *, version: int = -1) -> dict:
        return {"op": "set", "path": check_path(path), "data": check_data(data),
                "version": check_version(version)}

    @staticmethod
    def delete(path: str, *, version: int = -1, recursive: bool = False) -> dict:
        return {"op": "delete", "path": check_path(path, allow_root=False),
                "version": check_version(version), "recursive": bool(recursive)}

    @staticmethod
    def check(path: str, version: int) -> dict:
        return {"op": "check", "path": check_path(path), "version": check_version(version)}


def multi(operations: Sequence[dict]) -> dict:
    for op in operations:
        if not isinstance(op, dict) or op.get("op") not in MULTI_OPS:
            raise TypeError("multi takes operations built with coordclient.ops")
    return {"op": Op.MULTI.value, "ops": list(operations)}


def multi_results(operations: Sequence[dict], results: Sequence[Any]) -> list[Any]:
    """One value per operation: the created path, the new Stat, or None."""
    out: list[Any] = []
    for op, res in zip(operations, results):
        if op["op"] == "create":
            out.append(res["path"])
        elif op["op"] == "set":
            out.append(Stat.from_wire(res["stat"]))
        else:
            out.append(None)
    return out


# -- the SDK's other requests ----------------------------------------------------


def hello(timeout_ms: int, sid: int, secret: bytes | None, last_zxid: int) -> dict:
    return {"op": Op.HELLO.value, "timeout_ms": timeout_ms, "sid": sid, "secret": secret, "last_zxid": last_zxid}


def ping() -> dict:
    return {"op": Op.PING.value}


def close() -> dict:
    return {"op": Op.CLOSE.value}


def get(path: str, *, watch: bool = False, linearizable: bool = False) -> dict:
    return {"op": Op.GET.value, "path": check_path(path), "watch": watch, "lin": bool(linearizable)}


def exists(path: str, *, watch: bool = False, linearizable: bool = False) -> dict:
    return {"op": Op.EXISTS.value, "path": check_path(path), "watch": watch, "lin": bool(linearizable)}


def children(path: str, *, watch: bool = False, stats: bool = False, linearizable: bool = False,
             node_stat: bool = False) -> dict:
    msg = {"op": Op.CHILDREN.value, "path": check_path(path), "watch": watch, "stats": bool(stats),
           "lin": bool(linearizable)}
    if node_stat:
        msg["node_stat"] = True
    return msg


def descendants(path: str, *, linearizable: bool = False) -> dict:
    return {"op": Op.DESCENDANTS.value, "path": check_path(path), "lin": bool(linearizable)}


def ephemerals(prefix: str = "/", *, linearizable: bool = False) -> dict:
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError("prefix must be a string starting with '/'")
    return {"op": Op.EPHEMERALS.value, "prefix": prefix, "lin": bool(linearizable)}


def sync() -> dict:
    return {"op": Op.SYNC.value}


def get_acl(path: str, *, linearizable: bool = False) -> dict:
    return {"op": Op.GET_ACL.value, "path": check_path(path), "lin": bool(linearizable)}


def set_acl(path: str, acl: Iterable[ACL | str], *, version: int = -1) -> dict:
    return {"op": Op.SET_ACL.value, "path": check_path(path), "acl": acl_to_wire(acl),
            "version": check_version(version)}


def add_auth(scheme: str, credential: str | None) -> dict:
    if scheme not in ("digest", "x509"):
        raise ValueError(f"authentication schemes are digest and x509, not {scheme!r}")
    msg = {"op": Op.ADD_AUTH.value, "scheme": scheme}
    if credential is not None:
        msg["auth"] = credential
    return msg


def whoami() -> dict:
    return {"op": Op.WHOAMI.value}


def status() -> dict:
    return {"op": Op.STATUS.value}


def watch(path: str, kind: str, recursive: bool, from_zxid: int) -> dict:
    return {"op": Op.WATCH.value, "path": path, "kind": kind, "recursive": recursive, "from": from_zxid}


def unwatch(wid: int) -> dict:
    return {"op": Op.UNWATCH.value, "wid": wid}


# -- error responses ---------------------------------------------------------------


def error_from(frame: dict) -> CoordError:
    """The exception for an error response (a MultiError when it names a failing op)."""
    code = str(frame.get("err") or Err.SYSTEM_ERROR.value)
    message = str(frame.get("msg") or "")
    path = frame.get("path")
    if isinstance(frame.get("index"), int):
        cause = CoordError.from_code(code, message, path=path)
        results = [op_error(r) for r in frame.get("results") or []]
        return MultiError(message, path=path, index=frame["index"], cause=cause, results=results)
    return CoordError.from_code(code, message, path=path)


def op_error(result: object) -> CoordError | None:
    """One op's outcome in a failed multi: an error code, or a map with
    "err"/"msg"/"path" (both forms are accepted); None if it had none."""
    if isinstance(result, dict):
        if not result.get("err"):
            return None
        return CoordError.from_code(str(result["err"]), str(result.get("msg") or ""), path=result.get("path"))
    if result in (None, "ok", "Ok"):
        return None
    return CoordError.from_code(str(result))
