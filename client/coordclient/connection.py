"""One client connection: framing, request ids, the reader and writer tasks.

A ``Connection`` knows nothing about sessions, retries or reconnects (that
is ``client.py``); it turns one byte stream into "send a request, await its
response" plus a stream of watch events routed by watch id.

Ordering is what makes watches correct, so it is kept simple: a single
reader task handles frames strictly in arrival order and does all the
bookkeeping for a frame (``last_zxid``, event delivery, watch-id binding)
synchronously, before the task waiting for a response is woken.  The
protocol promises that every event with zxid <= Z arrives before a response
carrying Z, so when a caller sees a response every event it implies has
already been delivered.

All requests go through one writer task fed by a bounded channel of
encoded frames: a caller cancelled while waiting for a response never
leaves half a frame on the wire, bursts of pipelined requests go out in few
writes, and a request too large to send fails in its caller (encoding
happens there) instead of killing the connection.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Protocol

import anyio
import anyio.abc

from coordclient import messages
from coordclient.errors import TooLargeError
from coordclient.wire import DEFAULT_MAX_FRAME, FrameDecoder, FrameError, FrameTooLarge, MalformedFrame, encode_frame

__all__ = ["Connection", "ConnectionClosed", "WatchHandler"]

log = logging.getLogger(__name__)

# Frames waiting for the writer; callers block (cancellably) beyond this.
SEND_QUEUE = 256
# Frames the writer coalesces into one send.
SEND_BATCH = 64
# Events for watch ids not bound yet (a watch registration replays history
# before its response names the wid); beyond this the connection is dropped.
MAX_UNCLAIMED_EVENTS = 10_000

# Bytes asked of the stream per receive.
RECEIVE_SIZE = 256 << 10

# Errors that mean "this byte stream is finished".
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, FrameError, OSError)


class ConnectionClosed(Exception):
    """The connection ended before a response arrived (internal to the SDK)."""


class WatchHandler(Protocol):
    def on_event(self, frame: dict) -> bool:
        """Handle a ``watch``/``resync`` event; return True when the watch is done (one-shot fired)."""


# claim(conn, wid) -> handler for the wid, or None to have it unwatched.
Claim = Callable[["Connection", int], "WatchHandler | None"]


# callback(response frame, or None when the connection ended first).
Callback = Callable[["dict | None"], None]


class _Pending:
    """One request awaiting its response: a waiting task (``done``) or, for
    ``submit``, a callback run by the reader."""

    __slots__ = ("done", "response", "claim", "abandoned", "callback")

    def __init__(self, claim: Claim | None, callback: Callback | None = None):
        self.done = anyio.Event() if callback is None else None
        self.response: dict | None = None
        self.claim = claim
        self.abandoned = False
        self.callback = callback

    def settle(self, frame: dict | None) -> None:
        self.response = frame
        if self.callback is not None:
            callback, self.callback = self.callback, None
            try:
                callback(frame)
            except Exception:  # noqa: BLE001 - a callback bug must not kill the connection
                log.exception("response callback failed")
        elif self.done is not None:
            self.done.set()


class Connection:
    """A framed connection to one server.

    ``run()`` must be running (in some nursery) for requests to complete; it
    returns once the connection is finished, after failing every pending
    request with ``ConnectionClosed``.  ``on_zxid`` is called with the zxid
    of every response and event, in arrival order.
    """

    def __init__(self, stream: anyio.abc.ByteStream, *, on_zxid: Callable[[int], None],
                 max_frame: int = DEFAULT_MAX_FRAME, label: str = ""):
        self.label = label
        self._stream = stream
        self._decoder = FrameDecoder(max_frame)
        self._on_zxid = on_zxid
        self._max_frame = max_frame
        self._send_ch, self._send_rx = anyio.create_memory_object_stream[bytes](SEND_QUEUE)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._claims_pending = 0
        self._wids: dict[int, WatchHandler] = {}
        self._unclaimed: dict[int, list[dict]] = {}
        self._unclaimed_count = 0
        self._scope = anyio.CancelScope()
        self.closed = False
        self.close_reason: str | None = None
        self.closed_event = anyio.Event()
        self.last_recv = self.last_send = anyio.current_time()
        # Highest zxid of a *response*: every event up to it has been delivered.
        # (An event's zxid says less: a multi's other events may still follow.)
        self.max_zxid = 0

    def __repr__(self) -> str:
        return f"<Connection {self.label}{' closed' if self.closed else ''}>"

    # -- lifecycle --------------------------------------------------------

    async def run(self) -> None:
        """Read and write until the stream fails or ``abort`` is called."""
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer)
                    await self._reader()
                    tg.cancel_scope.cancel()
        finally:
            self._finish()
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)

    def abort(self, reason: str) -> None:
        """End the connection (synchronously as far as callers can tell)."""
        if self.close_reason is None:
            self.close_reason = reason
        self._scope.cancel()
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.close_reason is None:
            self.close_reason = "connection closed"
        self._send_ch.close()
        self._send_rx.close()
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.settle(None)  # ConnectionClosed
        self._wids.clear()
        self._unclaimed.clear()
        self._claims_pending = 0
        self.closed_event.set()

    # -- requests ---------------------------------------------------------

    async def request(self, msg: dict, *, claim: Claim | None = None) -> dict:
        """Send ``msg`` (an id is added) and return the response frame.

        ``claim`` is for requests that may register a watch: when the
        response carries a ``wid`` the reader calls ``claim(conn, wid)``
        before anything else is read, so no event for the new watch can be
        missed.  If the caller gave up waiting, or ``claim`` returns None, the
        server-side watch is removed with a fire-and-forget ``unwatch``.
        """
        if self.closed:
            raise ConnectionClosed(self.close_reason)
        rid = next(self._ids)
        try:
            frame = encode_frame({**msg, "id": rid}, self._max_frame)
        except FrameTooLarge as exc:
            raise TooLargeError(str(exc), path=msg.get("path")) from None
        pending = _Pending(claim)
        self._pending[rid] = pending
        if claim is not None:
            self._claims_pending += 1
        queued = False
        try:
            await self._send_ch.send(frame)
            queued = True
            await pending.done.wait()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ConnectionClosed(self.close_reason) from None
        finally:
            if not pending.done.is_set():
                pending.abandoned = True
                # A queued watch request keeps its slot so that a late wid is unwatched.
                if not (queued and claim is not None) and self._pending.pop(rid, None) is not None:
                    if claim is not None:
                        self._claims_pending -= 1
        if pending.response is None:
            raise ConnectionClosed(self.close_reason)
        return pending.response

    def submit(self, msg: dict, callback: Callback, *, claim: Claim | None = None) -> int | None:
        """Send ``msg`` without a task: ``callback(frame)`` runs in the
        reader when the response arrives (``callback(None)`` if the
        connection ends first).  Returns the request id, or None when the
        request could not be queued at once (closed, or the send queue is
        full): the caller then takes the task-based path.  ``claim`` works
        as for ``request``."""
        if self.closed:
            return None
        rid = next(self._ids)
        try:
            frame = encode_frame({**msg, "id": rid}, self._max_frame)
        except FrameTooLarge as exc:
            raise TooLargeError(str(exc), path=msg.get("path")) from None
        try:
            self._send_ch.send_nowait(frame)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return None
        self._pending[rid] = _Pending(claim, callback)
        if claim is not None:
            self._claims_pending += 1
        return rid

    def abandon(self, rid: int) -> None:
        """The submitter of ``rid`` gave up: its callback will not run (a
        watch it registers is then removed, as for a cancelled ``request``)."""
        pending = self._pending.get(rid)
        if pending is None:
            return
        pending.callback = None
        pending.abandoned = True
        if pending.claim is None:
            del self._pending[rid]

    def forget(self, wid: int) -> None:
        """Stop routing events for ``wid`` (before an explicit unwatch)."""
        self._wids.pop(wid, None)

    def send_unwatch(self, wid: int) -> None:
        """Best-effort removal of a server-side watch nobody wants; never blocks."""
        self._wids.pop(wid, None)
        if not self.closed:
            try:
                self._send_ch.send_nowait(encode_frame({**messages.unwatch(wid), "id": next(self._ids)}))
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the watch dies with the connection at the latest

    # -- tasks ------------------------------------------------------------

    async def _writer(self) -> None:
        try:
            async for first in self._send_rx:
                batch = [first]
                while len(batch) < SEND_BATCH:
                    try:
                        batch.append(self._send_rx.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._stream.send(b"".join(batch))
                self.last_send = anyio.current_time()
        except STREAM_ERRORS as exc:
            self.abort(f"send failed: {exc!r}")

    async def _reader(self) -> None:
        decoder = self._decoder
        try:
            while True:
                try:
                    data = await self._stream.receive(RECEIVE_SIZE)
                except anyio.EndOfStream:
                    if decoder.buffered:
                        raise MalformedFrame(f"stream closed inside a frame ({decoder.buffered} bytes pending)")
                    raise
                self.last_recv = anyio.current_time()
                # Frames that precede a framing error are still handled;
                # the error is raised by the next feed.
                for frame in decoder.feed(data):
                    if not isinstance(frame, dict):
                        self.abort("protocol error: frame is not a map")
                        return
                    self._dispatch(frame)
                    if self.closed:
                        return
                if decoder.error is not None:
                    raise decoder.error
        except anyio.EndOfStream:
            self.close_reason = self.close_reason or "server closed the connection"
        except STREAM_ERRORS as exc:
            self.close_reason = self.close_reason or f"receive failed: {exc!r}"

    # -- dispatch (reader task, synchronous) ------------------------------

    def _dispatch(self, frame: dict) -> None:
        zxid = frame.get("zxid")
        if isinstance(zxid, int):
            self._on_zxid(zxid)
        ev = frame.get("ev")
        if ev is not None:
            self._event(ev, frame)
            return
        if isinstance(zxid, int) and zxid > self.max_zxid:
            self.max_zxid = zxid
        pending = self._pending.pop(frame.get("id"), None)
        if pending is None:
            return  # the caller gave up (or an unwatch we fired and forgot)
        if pending.claim is not None:
            self._claims_pending -= 1
            self._settle_claim(pending, frame)
        pending.settle(frame)

    def _settle_claim(self, pending: _Pending, frame: dict) -> None:
        wid = None
        if frame.get("ok"):
            result = frame.get("r")
            wid = result.get("wid") if isinstance(result, dict) else None
            if wid is None:
                wid = frame.get("wid")
        if isinstance(wid, int):
            handler = None if pending.abandoned else pending.claim(self, wid)
            if handler is None:
                self.send_unwatch(wid)
            else:
                self._wids[wid] = handler
                for event in self._unclaimed.pop(wid, ()):
                    self._unclaimed_count -= 1
                    if self._deliver(wid, handler, event):
                        break
        if self._claims_pending == 0 and self._unclaimed:
            # No registration is outstanding: leftovers belong to watches we dropped.
            self._unclaimed.clear()
            self._unclaimed_count = 0

    def _event(self, ev: object, frame: dict) -> None:
        if ev == "closing":
            self.close_reason = f"server closing: {frame.get('reason')}"
            return
        if ev not in ("watch", "resync"):
            return  # unknown event kinds are ignored: room for protocol growth
        wid = frame.get("wid")
        handler = self._wids.get(wid)
        if handler is not None:
            self._deliver(wid, handler, frame)
        elif self._claims_pending and isinstance(wid, int):
            if self._unclaimed_count >= MAX_UNCLAIMED_EVENTS:
                self.abort("too many events for unregistered watches")
                return
            self._unclaimed.setdefault(wid, []).append(frame)
            self._unclaimed_count += 1

    def _deliver(self, wid: int, handler: WatchHandler, frame: dict) -> bool:
        try:
            done = handler.on_event(frame)
        except Exception:  # noqa: BLE001 - a handler bug must not kill the connection
            log.exception("watch handler failed")
            done = True
        if done:
            self._wids.pop(wid, None)
        return done

