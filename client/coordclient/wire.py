"""Length-prefixed CBOR framing: the one definition shared by client and server.

A frame is a 4-byte big-endian unsigned body length followed by one CBOR
item.  The same framing carries the client protocol (``DEFAULT_MAX_FRAME``)
and the server-to-server Raft transport (which passes a larger maximum for
log batches and snapshot chunks).

Everything that arrives on a socket is untrusted, so decoding never lets an
arbitrary exception escape: a length above the maximum raises
``FrameTooLarge`` as soon as the header is seen (before the body is
buffered), and anything wrong with a body raises ``MalformedFrame``.  Both
are ``FrameError`` (a ``ValueError``); the usual reaction is to drop the
connection.
"""

from __future__ import annotations

import io
import struct
from collections import deque
from typing import Any, Iterable

import cbor2
import trio

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_SIZE",
    "FrameError",
    "FrameTooLarge",
    "MalformedFrame",
    "TooManyItems",
    "check_item_budget",
    "encode_frame",
    "encode_frames",
    "decode_body",
    "FrameDecoder",
    "FramedStream",
]

DEFAULT_MAX_FRAME = 4 << 20  # client protocol: 4 MiB per frame
HEADER_SIZE = 4

_HEADER = struct.Struct(">I")
# Compact the decoder's buffer only once this much consumed data sits in
# front of it, so a stream of small frames does not cost a memmove each.
_COMPACT_AT = 64 << 10


class FrameError(ValueError):
    """The byte stream is not valid framing; the connection should be closed."""


class FrameTooLarge(FrameError):
    """A frame (announced or about to be sent) exceeds the size limit."""


class MalformedFrame(FrameError):
    """A frame's body is not exactly one well-formed CBOR item."""


def encode_frame(obj: Any, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return header + CBOR body for ``obj``.

    Raises ``FrameTooLarge`` when the body exceeds ``max_frame`` (the peer
    would refuse it anyway) and lets cbor2's ``CBOREncodeError`` through for
    objects CBOR cannot represent: both are the sender's bug, not the wire's.
    """
    body = cbor2.dumps(obj)
    if len(body) > max_frame:
        raise FrameTooLarge(f"frame body of {len(body)} bytes exceeds the {max_frame}-byte limit")
    return _HEADER.pack(len(body)) + body


def encode_frames(objs: Iterable[Any], max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Concatenate the frames of ``objs``: many messages, one write."""
    return b"".join([encode_frame(obj, max_frame) for obj in objs])


class TooManyItems(FrameError):
    """A frame holds more CBOR items than allowed (a decoding cost budget)."""


def check_item_budget(body: bytes, budget: int) -> None:
    """Walk the CBOR item headers of ``body`` and raise ``TooManyItems`` once
    more than ``budget`` items are seen, before anything is decoded.

    Decoding cost grows with the number of items, not bytes: four million
    empty arrays fit in a 4 MiB frame and took cbor2 over a second to build,
    a second in which the server's event loop answered nobody.  Strings are
    skipped by their length, so a frame of real data costs a handful of
    steps; a malformed body is left for the decoder to report."""
    n, pos, end = 0, 0, len(body)
    pending = [1]  # items still to read at each nesting level (-1: until a break)
    while pending and pos < end:
        if pending[-1] == 0:
            pending.pop()
            continue
        b = body[pos]
        pos += 1
        major, info = b >> 5, b & 0x1F
        if b == 0xFF:  # break: ends an indefinite container or string
            if pending[-1] == -1:
                pending.pop()
            continue
        if pending[-1] > 0:
            pending[-1] -= 1
        n += 1
        if n > budget:
            raise TooManyItems(f"frame holds more than {budget} CBOR items")
        if info < 24:
            value = info
        elif 24 <= info <= 27:
            size = 1 << (info - 24)
            value = int.from_bytes(body[pos:pos + size], "big")
            pos += size
        elif info == 31:
            value = -1
        else:
            return  # reserved: malformed, the decoder says so
        if major in (2, 3):
            if value >= 0:
                pos += value
            else:
                pending.append(-1)  # chunks until a break
        elif major == 4:
            pending.append(value)
        elif major == 5:
            pending.append(value * 2 if value >= 0 else -1)
        elif major == 6:
            pending.append(1)


def decode_body(body: bytes | bytearray | memoryview) -> Any:
    """Decode one frame body, which must hold exactly one CBOR item.

    ``cbor2.loads`` silently ignores trailing bytes, so a decoder over a
    ``BytesIO`` is used to check that the item used the whole body.  Any
    exception cbor2 raises on hostile input (decode errors, but also the odd
    ``ValueError``/``OverflowError``/``RecursionError`` from semantic tags)
    becomes ``MalformedFrame``.
    """
    fp = io.BytesIO(body)
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # noqa: BLE001 - untrusted input: every failure is "malformed"
        raise MalformedFrame(f"undecodable CBOR body: {type(exc).__name__}: {exc}") from None
    if fp.tell() != len(body):
        raise MalformedFrame(f"{len(body) - fp.tell()} trailing bytes after the CBOR item")
    return obj


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole objects back.

    The buffer is a ``bytearray`` read through an offset, and consumed bytes
    are discarded only occasionally, so feeding a large frame in many small
    pieces or many small frames in one piece stays linear.

    Frames that precede a bad one are still returned, whatever the packet
    boundaries: when a ``feed`` has completed good frames before hitting an
    error, it returns them and keeps the error in ``error``, to be raised by
    the next ``feed``.  After an error the stream position is lost for good.
    """

    __slots__ = ("max_frame", "max_items", "error", "_buf", "_pos")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_items: int | None = None):
        self.max_frame = max_frame
        self.max_items = max_items  # CBOR items per frame (None: no budget; see check_item_budget)
        self.error: FrameError | None = None
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Append ``data`` and return every object completed by it, in order."""
        if self.error is not None:
            raise self.error
        buf = self._buf
        buf += data
        pos = self._pos
        end = len(buf)
        out: list[Any] = []
        view = memoryview(buf)
        try:
            while end - pos >= HEADER_SIZE:
                (length,) = _HEADER.unpack_from(view, pos)
                if length > self.max_frame:
                    raise FrameTooLarge(f"peer announced a {length}-byte frame; the limit is {self.max_frame}")
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    break
                # bytes(): one copy, which BytesIO then shares instead of copying again.
                body = bytes(view[pos + HEADER_SIZE : stop])
                if self.max_items is not None:
                    check_item_budget(body, self.max_items)
                out.append(decode_body(body))
                pos = stop
        except FrameError as exc:
            view.release()
            buf.clear()  # the stream is unusable now; free the memory at once
            self._pos = 0
            self.error = exc
            if out:
                return out
            raise
        view.release()
        if pos == end:
            buf.clear()
            pos = 0
        elif pos >= _COMPACT_AT:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out


class FramedStream:
    """Send and receive whole objects over a ``trio.abc.Stream``.

    One task may send while another receives (as for any Trio stream), but
    two concurrent senders or receivers are not allowed.
    """

    def __init__(self, stream: trio.abc.Stream, max_frame: int = DEFAULT_MAX_FRAME, *, receive_size: int = 256 << 10,
                 max_items: int | None = None):
        self.stream = stream
        self.max_frame = max_frame
        self._receive_size = receive_size
        self._decoder = FrameDecoder(max_frame, max_items)
        self._pending: deque[Any] = deque()

    async def send(self, obj: Any) -> None:
        await self.stream.send_all(encode_frame(obj, self.max_frame))

    async def send_many(self, objs: Iterable[Any]) -> None:
        """Send several frames with a single ``send_all`` (one syscall, usually)."""
        data = encode_frames(objs, self.max_frame)
        if data:
            await self.stream.send_all(data)

    async def receive(self) -> Any:
        """Return the next object.

        Raises ``trio.EndOfChannel`` when the peer closed the stream cleanly
        between frames, ``MalformedFrame`` when it closed in the middle of
        one, ``FrameError`` on bad framing, and whatever the stream raises
        (``trio.BrokenResourceError``...) on transport failure.
        """
        while not self._pending:
            if self._decoder.error is not None:
                raise self._decoder.error
            data = await self.stream.receive_some(self._receive_size)
            if not data:
                if self._decoder.buffered:
                    raise MalformedFrame(f"stream closed inside a frame ({self._decoder.buffered} bytes pending)")
                raise trio.EndOfChannel
            self._pending.extend(self._decoder.feed(data))
        return self._pending.popleft()

    def __aiter__(self) -> "FramedStream":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> "FramedStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
