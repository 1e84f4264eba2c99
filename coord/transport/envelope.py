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

On the wire each is a list whose first item is a short string tag (a Raft
message's first item is an int), so one frame decoder serves both.  As with
Raft messages, decoding is the trust boundary: exact types, bounded ints,
``ValueError`` for anything else (the transport then drops the connection).
Unlike Raft messages, service messages are never dropped by a full queue:
the service bounds how many it has outstanding and pushes back instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "Forward",
    "ForwardRejected",
    "ServiceMessage",
    "SessionTouches",
    "TouchAck",
    "service_from_wire",
    "service_to_wire",
]

_U63 = 1 << 63
MAX_ITEMS = 1 << 16  # commands or sessions in one message


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


ServiceMessage = Union[Forward, ForwardRejected, SessionTouches, TouchAck]


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
    raise ValueError("service message: unknown tag or length")
