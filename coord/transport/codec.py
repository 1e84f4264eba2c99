"""Raft ``Message`` <-> CBOR-ready list, for the peer transport.

A message travels as a flat list in ``Message`` field order::

    [type, frm, to, term, log_term, index, entries, commit, reject,
     context, membership, offset, data, done]

with trailing fields left out while they hold their default (a heartbeat
response is ``[8, 2, 1, 5, 0, 0, [], 0, False, ctx]``, a vote response just
``[4, 2, 1, 5, 0, 0, [], 0, True]``).  Entries are ``[term, index, kind,
data]`` lists and the membership is ``Membership.to_wire()`` or ``None``.

Decoding is the trust boundary between servers: ``message_from_wire``
accepts only exactly-typed values (``bool`` is not an ``int``), integers in
[0, 2**63) so that storage can always pack them, ids >= 1, known message and
entry kinds, and APPEND entries that follow ``index`` contiguously.  Anything
else raises ``ValueError`` with the reason, and the transport drops the
connection; a peer's bad bytes never reach the core.
"""

from __future__ import annotations

from typing import Any

from coord.raft.types import Entry, EntryKind, Membership, Message, MsgType

__all__ = ["message_to_wire", "message_from_wire", "entry_to_wire", "entry_from_wire"]

_U63 = 1 << 63
_NFIELDS = 14
# Defaults of the fields that may be omitted (positions 3..13); they are all
# falsy, and every falsy value of a field's type equals its default, which
# is what lets the encoder trim with a plain truthiness test.
_DEFAULTS: tuple[Any, ...] = (None, None, None, 0, 0, 0, (), 0, False, b"", None, 0, b"", False)
_MSG_TYPES = {int(t): t for t in MsgType}
_ENTRY_KINDS = {int(k): k for k in EntryKind}
_SEQ = (list, tuple)
_MAX_ADDR_DEPTH = 8


def entry_to_wire(e: Entry) -> list:
    return [e.term, e.index, e.kind, e.data]


def message_to_wire(m: Message) -> list:
    """Encode ``m`` as a list for CBOR, omitting trailing default fields."""
    w = [
        m.type,
        m.frm,
        m.to,
        m.term,
        m.log_term,
        m.index,
        [[e.term, e.index, e.kind, e.data] for e in m.entries],
        m.commit,
        bool(m.reject),
        m.context,
        None if m.membership is None else m.membership.to_wire(),
        m.offset,
        m.data,
        bool(m.done),
    ]
    n = _NFIELDS
    while n > 3 and not w[n - 1]:
        n -= 1
    del w[n:]
    return w


def _bad(field: str, want: str, got: Any) -> ValueError:
    # Only the type name: repr() of hostile values can be huge or even fail
    # (int -> str conversion limit).
    return ValueError(f"{field}: expected {want}, got {type(got).__name__}")


def _uint(v: Any, field: str) -> int:
    if type(v) is not int:
        raise _bad(field, "an int", v)
    if not 0 <= v < _U63:
        raise ValueError(f"{field}: {v.bit_length()}-bit {'negative ' if v < 0 else ''}int is out of [0, 2**63)")
    return v


def _node_id(v: Any, field: str) -> int:
    if type(v) is not int:
        raise _bad(field, "a node id (int)", v)
    if not 0 < v < _U63:
        raise ValueError(f"{field}: node ids are ints in [1, 2**63)")
    return v


def entry_from_wire(e: Any) -> Entry:
    """Decode one ``[term, index, kind, data]`` entry (indexes start at 1)."""
    if type(e) not in _SEQ or len(e) != 4:
        raise ValueError("entry: expected a [term, index, kind, data] list")
    term, index, kind, data = e
    if type(term) is not int or type(index) is not int or not (0 <= term < _U63 and 0 < index < _U63):
        raise ValueError("entry: term must be an int in [0, 2**63) and index in [1, 2**63)")
    k = _ENTRY_KINDS.get(kind) if type(kind) is int else None
    if k is None:
        raise ValueError("entry: unknown kind")
    if type(data) is not bytes:
        raise _bad("entry data", "bytes", data)
    return Entry(term, index, k, data)


def _check_addr_value(v: Any, depth: int) -> None:
    """Addresses are opaque to the core, but must be plain CBOR data so that
    storing or forwarding a configuration can never fail on them."""
    if v is None or type(v) in (bool, int, float, str, bytes):
        return
    if depth >= _MAX_ADDR_DEPTH:
        raise ValueError("membership addrs: nested too deeply")
    if type(v) in _SEQ:
        for x in v:
            _check_addr_value(x, depth + 1)
    elif type(v) is dict:
        for k, x in v.items():
            if type(k) not in (str, int):
                raise _bad("membership addrs key", "str or int", k)
            _check_addr_value(x, depth + 1)
    else:
        raise _bad("membership addrs value", "plain data", v)


def _membership_from_wire(d: Any) -> Membership:
    if type(d) is not dict:
        raise _bad("membership", "a map", d)
    for key in d:
        if key not in ("v", "o", "l", "a"):
            raise ValueError("membership: unknown key")
    for key in ("v", "o", "l"):
        ids = d.get(key, ())
        if type(ids) not in _SEQ:
            raise _bad(f"membership.{key}", "a list of node ids", ids)
        for x in ids:
            _node_id(x, f"membership.{key}")
    addrs = d.get("a")
    if addrs is not None:
        if type(addrs) is not dict:
            raise _bad("membership.a", "a map", addrs)
        for k, v in addrs.items():
            _node_id(k, "membership.a key")
            _check_addr_value(v, 1)
    return Membership.from_wire(d)


def message_from_wire(obj: Any) -> Message:
    """Decode and validate a message list; raises ``ValueError`` on anything off."""
    if type(obj) not in _SEQ:
        raise _bad("message", "a list", obj)
    n = len(obj)
    if not 3 <= n <= _NFIELDS:
        raise ValueError(f"message: expected 3 to {_NFIELDS} fields, got {n}")
    (mtype, frm, to, term, log_term, index, entries, commit, reject, context, membership, offset, data, done) = (
        *obj,
        *_DEFAULTS[n:],
    )
    t = _MSG_TYPES.get(mtype) if type(mtype) is int else None
    if t is None:
        raise ValueError("message: unknown message type")
    _node_id(frm, "frm")
    _node_id(to, "to")
    _uint(term, "term")
    _uint(log_term, "log_term")
    _uint(index, "index")
    _uint(commit, "commit")
    _uint(offset, "offset")
    if type(reject) is not bool:
        raise _bad("reject", "bool", reject)
    if type(done) is not bool:
        raise _bad("done", "bool", done)
    if type(context) is not bytes:
        raise _bad("context", "bytes", context)
    if type(data) is not bytes:
        raise _bad("data", "bytes", data)
    if type(entries) not in _SEQ:
        raise _bad("entries", "a list", entries)
    ents = [entry_from_wire(e) for e in entries]
    if ents:
        first = ents[0].index
        if t == MsgType.APPEND and first != index + 1:
            raise ValueError("entries: first entry must follow the message's index")
        for i, e in enumerate(ents):
            if e.index != first + i:
                raise ValueError("entries: indexes are not contiguous")
    mem = None if membership is None else _membership_from_wire(membership)
    return Message(t, frm, to, term, log_term, index, ents, commit, reject, context, mem, offset, data, done)
