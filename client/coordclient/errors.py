"""Typed exceptions, one per protocol error code (``protocol.Err``).

``CoordError.from_code`` turns a wire error into the matching exception, so
``except NoNodeError`` works the same whether the error came from the
server or from the SDK's own checks.
"""

from __future__ import annotations

from coordclient.protocol import Err


class CoordError(Exception):
    """Base of every error coord reports.  ``code`` is the wire error code."""

    code: Err = Err.SYSTEM_ERROR

    def __init__(self, message: str = "", *, path: str | None = None):
        self.message = message or self.code.value
        self.path = path
        super().__init__(f"{self.code.value}: {self.message}" if message else self.code.value)

    @staticmethod
    def from_code(code: str, message: str = "", *, path: str | None = None) -> "CoordError":
        cls = _BY_CODE.get(code, CoordError)
        err = cls(message or code, path=path)
        if cls is CoordError:
            err.message = f"{code}: {message}"
        return err


class NoNodeError(CoordError):
    code = Err.NO_NODE


class NodeExistsError(CoordError):
    code = Err.NODE_EXISTS


class BadVersionError(CoordError):
    code = Err.BAD_VERSION


class NotEmptyError(CoordError):
    code = Err.NOT_EMPTY


class NoChildrenForEphemeralsError(CoordError):
    code = Err.NO_CHILDREN_FOR_EPHEMERALS


class InvalidPathError(CoordError):
    code = Err.INVALID_PATH


class SessionExpiredError(CoordError):
    code = Err.SESSION_EXPIRED


class SessionMovedError(CoordError):
    code = Err.SESSION_MOVED


class TooLargeError(CoordError):
    code = Err.TOO_LARGE


class BadArgumentsError(CoordError):
    code = Err.BAD_ARGUMENTS


class UnimplementedError(CoordError):
    code = Err.UNIMPLEMENTED


class NotLeaderError(CoordError):
    code = Err.NOT_LEADER


class ConnectionLossError(CoordError):
    code = Err.CONNECTION_LOSS


class OperationTimeoutError(CoordError):
    code = Err.OPERATION_TIMEOUT


class RuntimeInconsistencyError(CoordError):
    code = Err.RUNTIME_INCONSISTENCY


class AuthFailedError(CoordError):
    code = Err.AUTH_FAILED


class NoAuthError(CoordError):
    """The request's identities lack the permission the node's ACL (or the
    server's admin rule) requires; nothing was changed."""

    code = Err.NO_AUTH


class InvalidACLError(CoordError):
    code = Err.INVALID_ACL


class LimitExceededError(CoordError):
    """A server limit was reached (sessions, watches per connection, ...);
    nothing was changed.  The message names the limit."""

    code = Err.LIMIT_EXCEEDED


class NoSpaceError(CoordError):
    """The server's disk is full (ENOSPC/EDQUOT): it refused the write and
    changed nothing.  It still serves reads and sessions, and accepts
    writes again by itself once space is freed; other servers may accept
    the write meanwhile (etcd's "database space exceeded", ZooKeeper's
    SystemError)."""

    code = Err.NO_SPACE


class ConfChangeError(CoordError):
    code = Err.CONF_CHANGE


class MultiError(CoordError):
    """A multi failed: ``index`` is the failing operation, ``cause`` its error,
    ``results`` one error per operation (the others RuntimeInconsistency)."""

    def __init__(self, message: str = "", *, path: str | None = None, index: int = -1,
                 cause: CoordError | None = None, results: list | None = None):
        self.index = index
        self.cause = cause
        self.results = results or []
        self.code = cause.code if cause is not None else Err.RUNTIME_INCONSISTENCY
        super().__init__(message, path=path)


_BY_CODE = {cls.code.value: cls for cls in CoordError.__subclasses__() if cls is not MultiError}
