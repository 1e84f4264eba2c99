"""Jute, ZooKeeper's binary serialization: the primitives and nothing else.

ZooKeeper's client protocol is a sequence of jute records (``records.py``);
this module reads and writes the building blocks: big-endian ``int``
(4 bytes) and ``long`` (8), ``boolean`` (one byte), ``buffer`` and
``ustring`` (an int length, -1 meaning null, then the bytes), and
``vector`` (an int count, -1 meaning null, then the elements).

The reader is the first thing a client's bytes meet, so it is strict and
bounded: every read checks what is left, every length and count is checked
against ``max_buffer`` (ZooKeeper's ``jute.maxbuffer``) and against the bytes
actually present, so no length field can make us allocate more than the
frame we already hold, and every failure is a ``JuteError`` -- nothing else
ever escapes, whatever the bytes.
"""

from __future__ import annotations

import struct
from typing import Callable, TypeVar

__all__ = ["DEFAULT_MAX_BUFFER", "INT_MAX", "INT_MIN", "JuteError", "LONG_MAX", "LONG_MIN", "Reader",
           "Writer", "wrap_int", "wrap_long"]

# ZooKeeper's jute.maxbuffer default is 0xfffff; we round to 1 MiB.
DEFAULT_MAX_BUFFER = 1 << 20

INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1

_INT = struct.Struct(">i")
_LONG = struct.Struct(">q")

T = TypeVar("T")


class JuteError(ValueError):
    """The bytes are not a valid encoding (truncated, a bad length, trailing
    garbage), or a value cannot be encoded."""


def wrap_int(v: int) -> int:
    """``v`` as Java's int arithmetic would hold it (two's complement wrap).
    Used where a coord value (unbounded) meets a 32-bit jute field."""
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def wrap_long(v: int) -> int:
    return ((v + (1 << 63)) & 0xFFFFFFFFFFFFFFFF) - (1 << 63)


class Reader:
    """Reads jute primitives from one frame's bytes."""

    __slots__ = ("_buf", "_pos", "max_buffer")

    def __init__(self, data: bytes, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self._buf = bytes(data)
        self._pos = 0
        self.max_buffer = max_buffer

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> bytes:
        if n > self.remaining:
            raise JuteError(f"truncated: needed {n} bytes at offset {self._pos}, {self.remaining} left")
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def int(self) -> int:
        if self.remaining < 4:
            raise JuteError(f"truncated: an int at offset {self._pos}")
        (v,) = _INT.unpack_from(self._buf, self._pos)
        self._pos += 4
        return v

    def long(self) -> int:
        if self.remaining < 8:
            raise JuteError(f"truncated: a long at offset {self._pos}")
        (v,) = _LONG.unpack_from(self._buf, self._pos)
        self._pos += 8
        return v

    def bool(self) -> bool:
        # Java's DataInput.readBoolean: any non-zero byte is true.
        return self._take(1) != b"\x00"

    def _length(self, what: str) -> int:
        n = self.int()
        if n == -1:
            return -1
        if n < 0 or n > self.max_buffer:
            raise JuteError(f"unreasonable {what} length {n} (max_buffer is {self.max_buffer})")
        if n > self.remaining:
            raise JuteError(f"truncated: a {what} of {n} bytes, {self.remaining} left")
        return n

    def buffer(self) -> bytes | None:
        n = self._length("buffer")
        return None if n < 0 else self._take(n)

    def ustring(self) -> str | None:
        n = self._length("string")
        if n < 0:
            return None
        # As Java's new String(bytes, UTF_8): malformed sequences become U+FFFD
        # (which no valid path contains, so such a path is refused later).
        return self._take(n).decode("utf-8", "replace")

    def vector(self, element: Callable[["Reader"], T], min_size: int = 1) -> list[T] | None:
        """A vector of ``element(self)``; ``min_size`` is the fewest bytes one
        element can take, so a count beyond what the frame can hold is
        refused before anything is allocated."""
        n = self.int()
        if n == -1:
            return None
        if n < 0 or n > self.max_buffer or n * max(min_size, 1) > self.remaining:
            raise JuteError(f"unreasonable vector count {n} ({self.remaining} bytes left)")
        return [element(self) for _ in range(n)]

    def end(self) -> None:
        """Trailing bytes after a record are refused: a frame is exactly one
        request, and anything else means we misread it."""
        if self.remaining:
            raise JuteError(f"{self.remaining} unexpected trailing bytes")


class Writer:
    """Writes jute primitives; ``getvalue()`` returns the bytes."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def int(self, v: int) -> "Writer":
        if type(v) is bool or not isinstance(v, int) or not INT_MIN <= v <= INT_MAX:
            raise JuteError(f"not a jute int: {v!r}")
        self._parts.append(_INT.pack(v))
        return self

    def long(self, v: int) -> "Writer":
        if type(v) is bool or not isinstance(v, int) or not LONG_MIN <= v <= LONG_MAX:
            raise JuteError(f"not a jute long: {v!r}")
        self._parts.append(_LONG.pack(v))
        return self

    def bool(self, v: bool) -> "Writer":
        self._parts.append(b"\x01" if v else b"\x00")
        return self

    def buffer(self, v: bytes | None) -> "Writer":
        if v is None:
            return self.int(-1)
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise JuteError(f"not a jute buffer: {type(v).__name__}")
        v = bytes(v)
        self.int(len(v))
        self._parts.append(v)
        return self

    def ustring(self, v: str | None) -> "Writer":
        if v is None:
            return self.int(-1)
        if not isinstance(v, str):
            raise JuteError(f"not a jute ustring: {type(v).__name__}")
        return self.buffer(v.encode("utf-8", "surrogatepass"))

    def vector(self, items: "list[T] | tuple[T, ...] | None", element: Callable[["Writer", T], object]) -> "Writer":
        if items is None:
            return self.int(-1)
        self.int(len(items))
        for item in items:
            element(self, item)
        return self

    def raw(self, data: bytes) -> "Writer":
        self._parts.append(bytes(data))
        return self
