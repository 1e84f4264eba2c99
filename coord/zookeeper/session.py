"""One ZooKeeper client connection as a sans-IO state machine.

Bytes from the client go in (``receive_data``); coord requests to send
(``CoordCall``), bytes for the client (``SendBytes``), a four-letter word
to answer (``FourLetterWord``) and the decision to close
(``CloseConnection``) come out.  coord's answers (``coord_response``) and
watch events (``coord_event``) go in and come out as ZooKeeper replies and
notifications.  No sockets, no clock, no tasks: the server's glue does the
I/O and this module does the protocol, so every path through it is a plain
unit test.

What the glue must do (the seam; everything else is here):

* Feed every byte the client sends to ``receive_data`` while
  ``wants_data`` is true (stop reading the socket while it is false: that
  is the connection's backpressure), and carry out the actions in order.
* For each ``CoordCall(token, request)``: serve ``request`` -- exactly a
  coord client request without ``"id"`` (and, for writes, without
  ``"seq"``: send ``"seq": 0``, i.e. no exactly-once memory, as ZooKeeper
  clients never retry a write under the same identity) -- on this
  connection's coord session, as clientport.py would, and hand the
  response map to ``coord_response(token, response)``.  Requirements:
  (1) the writes of one connection are applied in the order their calls
  were emitted (ZooKeeper's FIFO client order); (2) reads are answered in
  emission order and the events/responses of the connection reach this
  object in the order the server produced them (coord's guarantee: every
  event with zxid <= Z before any response stamped Z).  The first call is
  always ``hello``; its answer binds the coord session to the connection.
* Deliver the connection's coord watch events (``{"ev": "watch"|"resync"|
  "closing", ...}``, as clientport.py queues them) to ``coord_event``.
* On ``FourLetterWord(word)``: send ``fourletter.render(word, status,
  allowed)`` and close.  On ``CloseConnection``: send what was already
  emitted, then close.  When the socket closes, drop the connection's
  watches (its coord session lives on until its timeout, as in ZooKeeper).

Ordering: replies go out in request order, whatever order coord answers
in; a request runs only when what it depends on has been answered (reads
may overlap reads, writes may overlap writes, barriers run alone, see
``translate.Kind``); a watch notification is placed after every reply whose
answer arrived before it, so a client never sees data newer than an event
it has not yet been told about, nor an event before the reply that set its
watch.

Bounds: at most ``max_outstanding`` requests are decoded and pending
(then ``wants_data`` turns false), a frame is at most ``max_buffer`` bytes,
at most ``max_queued_events`` notifications wait behind slow replies, and
one watch per (class, path) is kept (a duplicate registration is
unwatched at once), so a client cannot make this connection grow without
bound.  Every malformed input gets ZooKeeper's error reply or closes the
connection; none raises.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import struct
from collections import deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Union

from coord.zookeeper import translate
from coord.zookeeper.codes import NOTIFICATION_XID, Code, OpCode
from coord.zookeeper.fourletter import KNOWN_WORDS
from coord.zookeeper.jute import DEFAULT_MAX_BUFFER, LONG_MAX, JuteError, Writer
from coord.zookeeper.records import (
    BadBody,
    ClientInfo,
    ConnectRequest,
    ReplyHeader,
    UnknownOp,
    WatcherEvent,
    decode_request,
    encode_reply,
)
from coord.zookeeper.translate import Context, Kind, Options, Plan, Reply, WatchClass, WatchKey

__all__ = ["Action", "CloseConnection", "CoordCall", "FourLetterWord", "Limits", "SendBytes", "State",
           "ZkSession", "frame"]

_LEN = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class SendBytes:
    data: bytes


@dataclass(frozen=True, slots=True)
class CoordCall:
    token: int
    request: dict


@dataclass(frozen=True, slots=True)
class FourLetterWord:
    word: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reason: str


Action = Union[SendBytes, CoordCall, FourLetterWord, CloseConnection]


@dataclass(frozen=True, slots=True)
class Limits:
    max_buffer: int = DEFAULT_MAX_BUFFER  # largest frame (jute.maxbuffer)
    max_outstanding: int = 1000  # decoded requests not yet answered (ZooKeeper's globalOutstandingLimit)
    max_queued_events: int = 10_000  # notifications waiting behind slow replies


class State(enum.Enum):
    HANDSHAKE = "handshake"  # waiting for the ConnectRequest (or a four-letter word)
    CONNECTING = "connecting"  # hello sent, waiting for coord's answer
    OPEN = "open"
    CLOSED = "closed"  # nothing more is read or sent


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


_ONE_SHOT = (WatchClass.DATA, WatchClass.CHILD)
_ENDS_ONE_SHOT = {WatchClass.DATA: {"created", "changed", "deleted"}, WatchClass.CHILD: {"children", "deleted"}}


class _Pending:
    """One ZooKeeper request between decoding and its reply."""

    __slots__ = ("xid", "op", "body", "kind", "plan", "responses", "missing", "reply")

    def __init__(self, xid: int, op: int, body: Any, kind: Kind) -> None:
        self.xid = xid
        self.op = op
        self.body = body
        self.kind = kind
        self.plan: Plan | None = None
        self.responses: list[Any] = []
        self.missing = 0
        self.reply: bytes | None = None  # set when complete


class _Event:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class ZkSession:
    def __init__(self, *, peer_ip: str = "", options: Options = Options(), limits: Limits = Limits(),
                 four_letter_words: bool = True) -> None:
        self.options = options
        self.limits = limits
        self.four_letter_words = four_letter_words
        self.state = State.HANDSHAKE
        self.sid = 0
        self.timeout_ms = 0
        self.last_zxid = 0
        self.close_reason: str | None = None
        self._buf = bytearray()
        self._connect: ConnectRequest | None = None
        self._tokens = itertools.count(1)
        self._calls: dict[int, tuple[_Pending | None, int]] = {}  # token -> (request, index); None: internal
        self._waiting: deque[_Pending] = deque()  # decoded, not yet sent to coord
        self._out: deque[_Pending | _Event] = deque()  # replies in request order, events placed among them
        self._inflight = 0  # requests sent to coord and not complete
        self._inflight_kind: Kind | None = None
        self._pending = 0  # decoded requests not yet replied
        self._events = 0  # events in _out
        self._watches: dict[WatchKey, int] = {}
        self._by_wid: dict[int, WatchKey] = {}
        self._auth: list[ClientInfo] = [ClientInfo("ip", peer_ip)] if peer_ip else []
        self._ev_zxid = -1
        self._ev_seen: set[tuple[int, str]] = set()
        # coord replays what a re-registered watch missed before answering
        # the registration: such events wait here for their watch id.
        self._replaying = 0  # setWatches requests in flight
        self._orphans: dict[int, list[dict]] = {}
        self._orphan_count = 0
        self.received = 0  # frames from the client (ZooKeeper's "recved")
        self.sent = 0  # frames to the client
        self.last_op = "NA"

    # -- inspection ---------------------------------------------------------------

    @property
    def wants_data(self) -> bool:
        """False while the glue should not read more from the socket."""
        if self.state is State.CLOSED:
            return False
        return len(self._buf) <= self.limits.max_buffer + 4 and self._pending < self.limits.max_outstanding

    @property
    def watches(self) -> dict[WatchKey, int]:
        return dict(self._watches)

    @property
    def auth(self) -> tuple[ClientInfo, ...]:
        return tuple(self._auth)

    def connection_info(self, peer: str = "?") -> dict:
        """This connection as ``fourletter`` lists it (``cons``, ``stat``)."""
        return {"peer": peer, "sid": self.sid, "timeout_ms": self.timeout_ms, "received": self.received,
                "sent": self.sent, "queued": self._pending, "last_zxid": self.last_zxid, "last_op": self.last_op}

    def _ctx(self) -> Context:
        return Context(MappingProxyType(self._watches), tuple(self._auth), self.options)

    # -- inputs -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Action]:
        """Bytes from the client."""
        if self.state is State.CLOSED:
            return []
        self._buf += data
        if len(self._buf) > 2 * (self.limits.max_buffer + 4) + (1 << 16):
            return self._close("the client sends faster than it reads its replies")
        out: list[Action] = []
        self._parse(out)
        return out

    def coord_response(self, token: int, response: dict) -> list[Action]:
        """coord's response to ``CoordCall(token, ...)``."""
        entry = self._calls.pop(token, None)
        if entry is None or self.state is State.CLOSED:
            return []
        resp = response if isinstance(response, dict) else {}
        z = resp.get("zxid")
        if type(z) is int and self.last_zxid < z <= LONG_MAX:  # a zxid jute cannot carry is no zxid
            self.last_zxid = z
        out: list[Action] = []
        pending, index = entry
        if pending is None:
            if token == self._hello_token and self.state is State.CONNECTING:
                self._on_hello(resp, out)
            return out  # else an internal unwatch: nothing to tell the client
        pending.responses[index] = resp
        pending.missing -= 1
        if pending.missing == 0:
            self._inflight -= 1
            assert pending.plan is not None
            reply = translate.finish(pending.op, pending.body, pending.plan, tuple(pending.responses), self._ctx())
            self._complete(pending, reply, out)
            self._dispatch(out)
        self._flush(out)
        self._parse(out)  # requests held back by max_outstanding may fit now
        return out

    def coord_event(self, event: dict) -> list[Action]:
        """A coord event for this connection (watch, resync, closing)."""
        if self.state is not State.OPEN or not isinstance(event, dict):
            return []
        out: list[Action] = []
        ev = event.get("ev")
        if ev == "closing":
            self._flush(out)
            return out + self._close(f"coord closed the session's connection: {event.get('reason', '')}"[:300])
        wid = event.get("wid")
        if type(wid) is not int:
            return []
        if wid not in self._by_wid:
            if self._replaying and self._orphan_count < self.limits.max_queued_events:
                self._orphans.setdefault(wid, []).append(event)
                self._orphan_count += 1
            return []  # else a watch this connection no longer holds
        self._watch_event(wid, event, out)
        self._flush(out)
        return out

    def _watch_event(self, wid: int, event: dict, out: list[Action]) -> None:
        """Notify the client of one coord event on a watch it holds."""
        key = self._by_wid[wid]
        ev = event.get("ev")
        z = event.get("zxid")
        zxid = z if type(z) is int and 0 <= z <= LONG_MAX else self.last_zxid
        if ev == "resync":
            if key.cls in _ONE_SHOT:
                self._forget(wid)
            note = translate.resync_event(key)
        elif ev == "watch":
            etype = event.get("type")
            path = event.get("path")
            if not isinstance(path, str) or not isinstance(etype, str):
                return
            if key.cls in _ONE_SHOT and etype in _ENDS_ONE_SHOT[key.cls]:
                self._forget(wid)
            note = translate.watcher_event(etype, path)
            if note is None:
                return
        else:
            return
        if zxid > self.last_zxid:
            self.last_zxid = zxid
        # ZooKeeper notifies a connection once per change, however many of
        # its watches the change matches.
        if zxid != self._ev_zxid:
            self._ev_zxid, self._ev_seen = zxid, set()
        if (note.type, note.path) in self._ev_seen:
            return
        self._ev_seen.add((note.type, note.path))
        if self._events >= self.limits.max_queued_events:
            out.extend(self._close("too many notifications are waiting behind unanswered requests"))
            return
        self._place_event(_Event(frame(_notification(zxid, note))))
        self._events += 1

    # -- handshake ------------------------------------------------------------------------

    def _parse(self, out: list[Action]) -> None:
        """Decode whole frames while the state and the bounds allow."""
        if self._parsing:
            return
        self._parsing = True
        try:
            self._parse_frames(out)
        finally:
            self._parsing = False

    _parsing = False

    def _parse_frames(self, out: list[Action]) -> None:
        while self.state in (State.HANDSHAKE, State.OPEN) and len(self._buf) >= 4:
            if self.state is State.HANDSHAKE and self.four_letter_words:
                word = bytes(self._buf[:4]).decode("latin-1")
                if word in KNOWN_WORDS:
                    self.state = State.CLOSED
                    self.close_reason = f"four-letter word {word}"
                    out.append(FourLetterWord(word))
                    return
            if self.state is State.OPEN and self._pending >= self.limits.max_outstanding:
                return  # resume when replies go out
            (n,) = _LEN.unpack_from(self._buf, 0)
            if n < 0 or n > self.limits.max_buffer:
                out.extend(self._close(f"frame length {n} is negative or above max_buffer"))
                return
            if len(self._buf) < 4 + n:
                return
            payload = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            self.received += 1
            if self.state is State.HANDSHAKE:
                self._on_connect(payload, out)
            else:
                self._on_request(payload, out)

    def _on_connect(self, payload: bytes, out: list[Action]) -> None:
        try:
            req = ConnectRequest.decode(payload, self.limits.max_buffer, strict=False)
        except JuteError as e:
            out.extend(self._close(f"bad ConnectRequest: {e}"))
            return
        self._connect = req
        self.state = State.CONNECTING
        self._hello_token = token = next(self._tokens)
        self._calls[token] = (None, 0)
        out.append(CoordCall(token, translate.hello_request(req)))

    def _on_hello(self, resp: dict, out: list[Action]) -> None:
        assert self._connect is not None
        answer, valid = translate.connect_response(self._connect, resp)
        if answer is not None:
            self.sent += 1
            out.append(SendBytes(frame(answer.encode())))
        if not valid:
            out.extend(self._close("session expired or refused" if answer is not None
                                   else f"hello failed: {resp.get('err')}: {resp.get('msg')}"[:300]))
            return
        self.sid = answer.sessionId
        self.timeout_ms = answer.timeOut
        self.state = State.OPEN
        self._parse(out)

    # -- requests -------------------------------------------------------------------------------

    def _on_request(self, payload: bytes, out: list[Action]) -> None:
        try:
            req = decode_request(payload, self.limits.max_buffer)
        except UnknownOp as e:
            self._local(e.xid, e.op, translate.error(Code.UNIMPLEMENTED, str(e)), out)
            return
        except BadBody as e:
            self._local(e.xid, e.op, translate.error(Code.MARSHALLING_ERROR, str(e)), out)
            return
        except JuteError as e:
            out.extend(self._close(f"unreadable request header: {e}"))
            return
        self.last_op = _op_name(req.op)
        p = _Pending(req.xid, req.op, req.body, translate.kind_of(req.op))
        self._pending += 1
        self._out.append(p)
        self._waiting.append(p)
        self._dispatch(out)
        self._flush(out)

    def _local(self, xid: int, op: int, reply: Reply, out: list[Action]) -> None:
        """A reply decided at decoding time (it depends on nothing)."""
        p = _Pending(xid, op, None, Kind.BARRIER)
        self._pending += 1
        self._out.append(p)
        self._complete(p, reply, out)
        self._flush(out)

    def _dispatch(self, out: list[Action]) -> None:
        """Start waiting requests, in order, while what runs allows."""
        while self._waiting and self.state is State.OPEN and self._closing_after is None:
            p = self._waiting[0]
            if self._inflight and (p.kind is Kind.BARRIER or p.kind is not self._inflight_kind):
                return
            self._waiting.popleft()
            planned = translate.plan(p.op, p.body, self._ctx())
            if isinstance(planned, Reply):
                self._complete(p, planned, out)
                continue
            p.plan = planned
            p.responses = [None] * len(planned.calls)
            p.missing = len(planned.calls)
            if not p.missing:
                self._complete(p, translate.finish(p.op, p.body, planned, (), self._ctx()), out)
                continue
            self._inflight += 1
            self._inflight_kind = p.kind
            if p.op in (OpCode.SET_WATCHES, OpCode.SET_WATCHES2):
                self._replaying += 1
            for k, call in enumerate(planned.calls):
                token = next(self._tokens)
                self._calls[token] = (p, k)
                out.append(CoordCall(token, call))

    def _complete(self, p: _Pending, reply: Reply, out: list[Action]) -> None:
        if reply.err == Code.SESSION_EXPIRED:
            # As ZooKeeper: the connection of an expired session ends; the
            # client learns it on reconnecting (the invalid-session answer).
            reply = dataclasses.replace(reply, close=True)
        for key, wid in reply.add_watches:
            if self._remember(key, wid, out):
                for event in self._orphans.pop(wid, ()):
                    self._orphan_count -= 1
                    if wid in self._by_wid:
                        self._watch_event(wid, event, out)
        if p.plan is not None and p.op in (OpCode.SET_WATCHES, OpCode.SET_WATCHES2):
            self._replaying -= 1
            if not self._replaying:
                self._orphans.clear()
                self._orphan_count = 0
        for wid in reply.drop_watches:
            self._forget(wid)
        self._auth.extend(reply.add_auth)
        try:
            payload = encode_reply(p.xid, self.last_zxid, int(reply.err), reply.body)
        except (JuteError, AttributeError, TypeError):
            payload = encode_reply(p.xid, self.last_zxid, int(Code.MARSHALLING_ERROR))
        p.reply = frame(payload)
        if reply.close:
            self._closing_after = p

    _closing_after: _Pending | None = None
    _hello_token = 0

    # -- watches ---------------------------------------------------------------------------------

    def _remember(self, key: WatchKey, wid: int, out: list[Action]) -> bool:
        """Hold ``wid`` for ``key``; False if it was a duplicate (unwatched)."""
        held = self._watches.get(key)
        if held is not None and held != wid:
            # Already armed for this (class, path): ZooKeeper keeps one, and
            # so do we -- the duplicate is dropped at the server at once.
            token = next(self._tokens)
            self._calls[token] = (None, 0)
            out.append(CoordCall(token, {"op": "unwatch", "wid": wid}))
            return False
        self._watches[key] = wid
        self._by_wid[wid] = key
        return True

    def _forget(self, wid: int) -> None:
        key = self._by_wid.pop(wid, None)
        if key is not None and self._watches.get(key) == wid:
            del self._watches[key]

    # -- output ---------------------------------------------------------------------------------

    def _place_event(self, ev: _Event) -> None:
        """After the last reply that is complete (its answer arrived before
        this event) or event already placed; before every reply still
        waiting for coord (those answers come later, at a later zxid)."""
        for i in range(len(self._out) - 1, -1, -1):
            item = self._out[i]
            if isinstance(item, _Event) or item.reply is not None:
                self._out.insert(i + 1, ev)
                return
        self._out.appendleft(ev)

    def _flush(self, out: list[Action]) -> None:
        chunks = []
        close = False
        while self._out:
            head = self._out[0]
            if isinstance(head, _Event):
                self._events -= 1
                chunks.append(head.data)
            elif head.reply is not None:
                self._pending -= 1
                chunks.append(head.reply)
                if head is self._closing_after:
                    close = True
            else:
                break
            self._out.popleft()
            if close:
                break
        if chunks:
            self.sent += len(chunks)
            out.append(SendBytes(b"".join(chunks)))
        if close:
            out.extend(self._close("session closed" if self._closing_after.op == OpCode.CLOSE_SESSION
                                   else "closed after the reply"))

    def _close(self, reason: str) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        self.close_reason = reason
        self._buf.clear()
        self._waiting.clear()
        return [CloseConnection(reason)]


# ZooKeeper's names for the last operation in ``cons`` (FinalRequestProcessor's lastOp).
_LAST_OP = {OpCode.PING: "PING", OpCode.CREATE: "CREA", OpCode.CREATE2: "CREA", OpCode.CREATE_CONTAINER: "CREA",
            OpCode.CREATE_TTL: "CREA", OpCode.DELETE: "DELE", OpCode.SET_DATA: "SETD", OpCode.RECONFIG: "RECO",
            OpCode.SET_ACL: "SETA", OpCode.CLOSE_SESSION: "CLOS", OpCode.SYNC: "SYNC", OpCode.CHECK: "CHEC",
            OpCode.EXISTS: "EXIS", OpCode.GET_DATA: "GETD", OpCode.SET_WATCHES: "SETW", OpCode.SET_WATCHES2: "STW2",
            OpCode.ADD_WATCH: "ADDW", OpCode.GET_ACL: "GETA", OpCode.GET_CHILDREN: "GETC",
            OpCode.GET_CHILDREN2: "GETC", OpCode.GET_ALL_CHILDREN_NUMBER: "GETACN", OpCode.CHECK_WATCHES: "CHKW",
            OpCode.REMOVE_WATCHES: "REMW", OpCode.WHO_AM_I: "HOMI", OpCode.GET_EPHEMERALS: "GETE",
            OpCode.MULTI: "MULT", OpCode.MULTI_READ: "MLTR", OpCode.AUTH: "AUTH"}


def _op_name(op: int) -> str:
    return _LAST_OP.get(op, "NA")


def _notification(zxid: int, note: WatcherEvent) -> bytes:
    w = Writer()
    ReplyHeader(NOTIFICATION_XID, zxid, 0).write(w)
    note.write(w)
    return w.getvalue()
