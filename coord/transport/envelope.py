"""Service traffic between servers: what shares the peer links with Raft but is not Raft.

The Raft core's ``MsgType`` holds Raft messages only (as etcd's raftpb does);
forwarding writes to the leader and keeping sessions alive are a service's
business, with typed messages of their own:

``Forward``         follower -> leader: commands to propose, in order, each
                    with the follower's request id (the leader wraps the
                    bytes unchanged in an entry naming the follower and id,
                    and the follower answers its client when it applies it).
``ForwardRejected`` leader -> follower: commands it could not propose (not
                    the leader any more, a transfer in progress), with why.
``SessionTouches``  follower -> leader: sessions seen alive, numbered batch.
``TouchAck``        leader -> follower: that batch arrived.
``InfoQuery``       any member -> any member: tell me your ``what`` (a short
                    name such as ``"status"`` or ``"connections"``); numbered
                    by the asker (``qid``), for the dashboard's ensemble and
                    sessions views.
``InfoReply``       the answer: ``body`` is CBOR of a bounded JSON-like
                    document (``encode_info`` / ``decode_info``).  Asking
                    over the peer links, not the client ports, means no
                    client credentials, no TLS client context and no admin
                    rule stand between members: the link is already
                    authenticated (cluster secret or mutual TLS), so the
                    answer is trusted.

On the wire each is a list whose first item is a short string tag (a Raft
message's first item is an int), so one frame decoder serves both.  As with
Raft messages, decoding is the trust boundary: exact types, bounded ints,
``ValueError`` for anything else (the transport then drops the connection).
Unlike Raft messages, service messages are never dropped by a full queue:
the service bounds how many it has outstanding and pushes back instead.

``InfoQuery.what`` is checked for shape only (a short lowercase name), not
against the kinds this version answers: a newer member asking for a kind an
older one does not know gets an answer saying so, instead of a dropped link.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Union

import cbor2

__all__ = [
    "Forward",
    "ForwardRejected",
    "INFO_KINDS",
    "InfoQuery",
    "InfoReply",
    "MAX_INFO_BODY",
    "ServiceMessage",
    "SessionTouches",
    "TouchAck",
    "decode_info",
    "encode_info",
    "service_from_wire",
    "UnknownServiceMessage",
    "service_to_wire",
]

_U63 = 1 << 63
MAX_ITEMS = 1 << 16  # commands or sessions in one message
MAX_WHAT = 32  # characters in InfoQuery.what
MAX_INFO_BODY = 1 << 20  # bytes of an InfoReply's body
MAX_INFO_DEPTH = 8  # nesting of the document in an InfoReply
INFO_KINDS = ("status", "connections")  # what this version answers


@dataclass(slots=True, frozen=True)
class Forward:
    frm: int
    to: int
    items: tuple[tuple[int, bytes], ...]  # (request id, encoded command)


@dataclass(slots=True, frozen=True)
class ForwardRejected:
    frm: int
    to: int
    leader: int  # the leader the sender knows of (0: none)
    items: tuple[tuple[int, str], ...]  # (request id, reason)


@dataclass(slots=True, frozen=True)
class SessionTouches:
    frm: int
    to: int
    seq: int  # batch number, echoed by TouchAck
    sids: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class TouchAck:
    frm: int
    to: int
    seq: int


@dataclass(slots=True, frozen=True)
class InfoQuery:
    frm: int
    to: int
    qid: int  # the asker's number for this query, echoed by InfoReply
    what: str  # a short lowercase name, e.g. "status" (INFO_KINDS)


@dataclass(slots=True, frozen=True)
class InfoReply:
    frm: int
    to: int
    qid: int
    body: bytes  # CBOR of a JSON-like document (decode_info), at most MAX_INFO_BODY bytes


ServiceMessage = Union[Forward, ForwardRejected, SessionTouches, TouchAck, InfoQuery, InfoReply]


def service_to_wire(m: ServiceMessage) -> list:
    t = type(m)
    if t is Forward:
        return ["fw", m.frm, m.to, [[rid, data] for rid, data in m.items]]
    if t is ForwardRejected:
        return ["fx", m.frm, m.to, m.leader, [[rid, why] for rid, why in m.items]]
    if t is SessionTouches:
        return ["st", m.frm, m.to, m.seq, list(m.sids)]
    if t is TouchAck:
        return ["sa", m.frm, m.to, m.seq]
    if t is InfoQuery:
        return ["iq", m.frm, m.to, m.qid, m.what]
    if t is InfoReply:
        return ["ir", m.frm, m.to, m.qid, m.body]
    raise TypeError(f"not a service message: {t.__name__}")


def _uint(v: Any, what: str, lo: int = 0) -> int:
    if type(v) is not int or not lo <= v < _U63:
        raise ValueError(f"{what}: expected an int in [{lo}, 2**63)")
    return v


def _items(v: Any, what: str) -> list:
    if type(v) is not list or len(v) > MAX_ITEMS:
        raise ValueError(f"{what}: expected a list of at most {MAX_ITEMS} items")
    return v


def _pair(p: Any, what: str, second: type) -> tuple:
    if type(p) is not list or len(p) != 2 or type(p[1]) is not second:
        raise ValueError(f"{what}: expected [request id, {second.__name__}] pairs")
    return _uint(p[0], f"{what} request id", 1), p[1]


def service_from_wire(obj: Any) -> ServiceMessage:
    """Decode and validate; raises ValueError on anything off."""
    if type(obj) is not list or len(obj) < 4 or type(obj[0]) is not str:
        raise ValueError("service message: expected [tag, from, to, ...]")
    tag, n = obj[0], len(obj)
    frm, to = _uint(obj[1], "from", 1), _uint(obj[2], "to", 1)
    if tag == "fw" and n == 4:
        return Forward(frm, to, tuple(_pair(p, "forward", bytes) for p in _items(obj[3], "forward")))
    if tag == "fx" and n == 5:
        leader = _uint(obj[3], "leader")
        items = tuple(_pair(p, "rejection", str) for p in _items(obj[4], "rejections"))
        return ForwardRejected(frm, to, leader, tuple((rid, why[:500]) for rid, why in items))
    if tag == "st" and n == 5:
        seq = _uint(obj[3], "seq")
        return SessionTouches(frm, to, seq, tuple(_uint(s, "session id", 1) for s in _items(obj[4], "sessions")))
    if tag == "sa" and n == 4:
        return TouchAck(frm, to, _uint(obj[3], "seq"))
    if tag == "iq" and n == 5:
        what = obj[4]
        if type(what) is not str or not 0 < len(what) <= MAX_WHAT or not _is_name(what):
            raise ValueError(f"info query: 'what' must be a lowercase name of at most {MAX_WHAT} characters")
        return InfoQuery(frm, to, _uint(obj[3], "query id", 1), what)
    if tag == "ir" and n == 5:
        body = obj[4]
        if type(body) is not bytes or len(body) > MAX_INFO_BODY:
            raise ValueError(f"info reply: the body must be bytes, at most {MAX_INFO_BODY}")
        return InfoReply(frm, to, _uint(obj[3], "query id", 1), body)
    if tag not in _KNOWN_TAGS:
        raise UnknownServiceMessage(tag[:16])
    raise ValueError(f"service message {tag!r}: wrong length {n}")


_KNOWN_TAGS = frozenset({"fw", "fx", "st", "sa", "iq", "ir"})


class UnknownServiceMessage(ValueError):
    """A well-formed service message of a kind this version does not know:
    a newer member's (during a rolling upgrade).  The receiver skips it and
    keeps the link, unlike a malformed message."""

    def __init__(self, tag: str):
        super().__init__(f"service message of unknown kind {tag!r}")
        self.tag = tag


def _is_name(s: str) -> bool:
    return all("a" <= c <= "z" or c == "_" or "0" <= c <= "9" for c in s)


# -- the documents InfoReply carries ----------------------------------------------

def _json_like(obj: Any, depth: int, keys_to_str: bool) -> Any:
    """``obj`` checked to be JSON-like (maps with string keys, lists, strings,
    ints, finite floats, booleans, null), nested at most MAX_INFO_DEPTH deep.
    With ``keys_to_str`` int keys become strings, as JSON writes them."""
    if depth > MAX_INFO_DEPTH:
        raise ValueError(f"info document nested deeper than {MAX_INFO_DEPTH}")
    t = type(obj)
    if obj is None or t in (str, bool):
        return obj
    if t is int:
        if not -_U63 <= obj < _U63:
            raise ValueError("info document: integer out of range")
        return obj
    if t is float:
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError("info document: numbers must be finite")
        return obj
    if t in (list, tuple):
        return [_json_like(v, depth + 1, keys_to_str) for v in obj]
    if t is dict:
        out = {}
        for k, v in obj.items():
            if type(k) is int and keys_to_str:
                k = str(k)
            if type(k) is not str:
                raise ValueError("info document: map keys must be strings")
            out[k] = _json_like(v, depth + 1, keys_to_str)
        return out
    raise ValueError(f"info document: {t.__name__} is not JSON-like")


def encode_info(doc: dict) -> bytes:
    """An InfoReply body for ``doc`` (int map keys become strings, as in
    JSON); ValueError if it is not JSON-like or too big."""
    if type(doc) is not dict:
        raise ValueError("an info document is a map")
    body = cbor2.dumps(_json_like(doc, 0, True))
    if len(body) > MAX_INFO_BODY:
        raise ValueError(f"info document of {len(body)} bytes is over {MAX_INFO_BODY}")
    return body


def decode_info(body: bytes) -> dict:
    """The document in an InfoReply body; ValueError unless it is one
    JSON-like map (nothing after it, no CBOR tags, bounded nesting)."""
    if type(body) is not bytes or len(body) > MAX_INFO_BODY:
        raise ValueError(f"an info body is at most {MAX_INFO_BODY} bytes")
    fp = io.BytesIO(body)
    try:
        doc = cbor2.CBORDecoder(fp).decode()
    except Exception as e:  # cbor2 raises several kinds on garbage; all mean "not a document"
        raise ValueError(f"info body is not CBOR: {type(e).__name__}") from None
    if fp.tell() != len(body):
        raise ValueError("info body: data after the document")
    if type(doc) is not dict:
        raise ValueError("an info document is a map")
    return _json_like(doc, 0, False)
