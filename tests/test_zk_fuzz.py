"""Hypothesis over the ZooKeeper codec, translation and connection machine:
round trips for every record, and no exception but JuteError out of the
decoder -- nor any exception out of the session -- whatever the bytes."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from coord.zookeeper import translate
from coord.zookeeper.jute import JuteError
from coord.zookeeper.records import (
    BOOL,
    BUFFER,
    INT,
    LONG,
    MULTI_OP_REQUESTS,
    MULTI_RESULT_RECORDS,
    REQUESTS,
    USTRING,
    ConnectRequest,
    ConnectResponse,
    MultiOp,
    MultiRequest,
    MultiResponse,
    MultiResult,
    Rec,
    Vec,
    decode_request,
    encode_request,
    iter_records,
)
from coord.zookeeper.session import CoordCall, ZkSession, frame

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


def _for_type(t) -> st.SearchStrategy:
    if t is INT:
        return st.integers(-(1 << 31), (1 << 31) - 1)
    if t is LONG:
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if t is BOOL:
        return st.booleans()
    if t is BUFFER:
        return st.none() | st.binary(max_size=40)
    if t is USTRING:
        return st.none() | _text
    if isinstance(t, Vec):
        return st.none() | st.lists(_for_type(t.elem), max_size=4).map(tuple)
    if isinstance(t, Rec):
        return records(t.cls)
    raise AssertionError(t)


def records(cls) -> st.SearchStrategy:
    if cls is MultiRequest:
        op = st.sampled_from(sorted(MULTI_OP_REQUESTS)).flatmap(
            lambda t: records(MULTI_OP_REQUESTS[t]).map(lambda r: MultiOp(t, r)))
        return st.lists(op, max_size=5).map(lambda ops: MultiRequest(tuple(ops)))
    if cls is MultiResponse:
        res = st.sampled_from(sorted(MULTI_RESULT_RECORDS)).flatmap(
            lambda t: st.just(MultiResult(t)) if MULTI_RESULT_RECORDS[t] is None
            else records(MULTI_RESULT_RECORDS[t]).map(lambda r: MultiResult(t, r)))
        return st.lists(res, max_size=5).map(lambda rs: MultiResponse(tuple(rs)))
    fields = st.tuples(*(_for_type(t) for _, t in cls.schema()))
    if cls in (ConnectRequest, ConnectResponse):
        return st.tuples(fields, st.none() | st.booleans()).map(lambda fr: cls(*fr[0], fr[1]))
    return fields.map(lambda f: cls(*f))


ALL_RECORDS = sorted(iter_records(), key=lambda c: c.__name__)


def test_every_record_is_covered():
    names = {c.__name__ for c in ALL_RECORDS}
    assert {"ConnectRequest", "MultiRequest", "SetWatches2", "WhoAmIResponse", "Stat", "ACL"} <= names
    from coord.zookeeper.records import RESPONSES
    every = {r.__name__ for r in list(REQUESTS.values()) + list(RESPONSES.values()) if r is not None}
    assert every <= names  # each request and response record is round-tripped and fuzzed below


@given(st.sampled_from(ALL_RECORDS).flatmap(records))
def test_round_trip(rec):
    assert type(rec).decode(rec.encode()) == rec


@given(st.sampled_from(sorted(op for op, r in REQUESTS.items() if r is not None)).flatmap(
    lambda op: st.tuples(st.just(op), records(REQUESTS[op]))), st.integers(-(1 << 31), (1 << 31) - 1))
def test_request_round_trip(op_rec, xid):
    op, rec = op_rec
    req = decode_request(encode_request(xid, op, rec), strict=True)
    assert (req.xid, req.op, req.body) == (xid, op, rec)


def _mutations(data: bytes) -> st.SearchStrategy:
    n = len(data)
    cut = st.integers(0, n).map(lambda k: data[:k])
    flip = st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)).map(
        lambda kb: data[:kb[0]] + bytes([kb[1]]) + data[kb[0] + 1:] if n else data)
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=8)).map(
        lambda kb: data[:kb[0]] + kb[1] + data[kb[0]:])
    return cut | flip | insert


@settings(max_examples=300)
@given(st.sampled_from(sorted(op for op in REQUESTS)).flatmap(
    lambda op: (st.just(None) if REQUESTS[op] is None else records(REQUESTS[op])).map(
        lambda r: encode_request(1, op, r))).flatmap(_mutations))
def test_mutated_requests_only_raise_jute_error(payload):
    try:
        req = decode_request(payload, max_buffer=1 << 12)
    except JuteError:
        return
    # and whatever decodes, translation answers without raising
    out = translate.plan(req.op, req.body, translate.Context())
    assert isinstance(out, (translate.Plan, translate.Reply))


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from(ALL_RECORDS + [None]))
def test_random_bytes_only_raise_jute_error(data, cls):
    try:
        if cls is None:
            decode_request(data)
        else:
            cls.decode(data, max_buffer=1 << 12)
    except JuteError:
        pass


@given(st.sampled_from(sorted(op for op, r in REQUESTS.items() if r is not None)).flatmap(
    lambda op: st.tuples(st.just(op), records(REQUESTS[op]))))
def test_plan_never_raises_on_any_decoded_request(op_rec):
    op, rec = op_rec
    out = translate.plan(op, rec, translate.Context())
    assert isinstance(out, (translate.Plan, translate.Reply))
    if isinstance(out, translate.Plan):
        assert all(isinstance(c, dict) and isinstance(c.get("op"), str) for c in out.calls)
        # any answer at all, even nonsense, finishes into a reply
        for resp in ({}, {"ok": True, "zxid": 3, "r": {}}, {"ok": False, "err": "NoNode"}):
            reply = translate.finish(op, rec, out, tuple(resp for _ in out.calls), translate.Context())
            assert isinstance(reply, translate.Reply)


def _open_session() -> ZkSession:
    s = ZkSession(peer_ip="127.0.0.1")
    (hello,) = s.receive_data(frame(ConnectRequest(0, 0, 10000, 0, bytes(16), False).encode()))
    assert isinstance(hello, CoordCall)
    s.coord_response(hello.token, {"ok": True, "zxid": 1, "r": {"sid": 5, "secret": b"k" * 16,
                                                                  "timeout_ms": 10000}})
    return s


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=64) | st.builds(lambda op, b: frame(struct.pack("!ii", 1, op) + b),
                                                   st.sampled_from(sorted(REQUESTS) + [999, -5]),
                                                   st.binary(max_size=40)), max_size=8),
       st.booleans())
def test_session_never_raises(chunks, handshake_done):
    s = _open_session() if handshake_done else ZkSession()
    for chunk in chunks:
        actions = s.receive_data(chunk)
        for a in actions:
            if isinstance(a, CoordCall):  # answer everything with an error: nothing changes
                s.coord_response(a.token, {"ok": False, "zxid": 1, "err": "SystemError", "msg": "x"})
    assert s.state is not None


_json = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | _text | st.binary(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                     max_leaves=12)
_coord_response = st.fixed_dictionaries({"ok": st.booleans(), "zxid": _json}, optional={
    "r": st.dictionaries(st.sampled_from(["path", "stat", "data", "children", "wid", "results", "sid", "secret",
                                          "timeout_ms", "members", "voters", "config_version"]), _json, max_size=5),
    "err": st.sampled_from(["NoNode", "BadVersion", "SessionExpired", "Weird", 5]),
    "index": _json, "results": _json})


@settings(max_examples=300)
@given(st.sampled_from(sorted(op for op, r in REQUESTS.items() if r is not None)).flatmap(
    lambda op: st.tuples(st.just(op), records(REQUESTS[op]))), st.data())
def test_finish_never_raises_on_any_coord_answer(op_rec, data):
    op, rec = op_rec
    planned = translate.plan(op, rec, translate.Context(options=translate.Options(reconfig_enabled=True)))
    if isinstance(planned, translate.Plan):
        resps = tuple(data.draw(_coord_response) for _ in planned.calls)
        reply = translate.finish(op, rec, planned, resps, translate.Context())
        assert isinstance(reply, translate.Reply)
        if reply.body is not None:
            assert isinstance(reply.body.encode(), bytes)  # a reply always encodes


@settings(max_examples=100)
@given(st.data())
def test_session_survives_any_coord_answers_and_events(data):
    s = _open_session()
    actions = s.receive_data(b"".join(
        frame(encode_request(k, op, None if REQUESTS[op] is None else data.draw(records(REQUESTS[op]))))
        for k, op in enumerate(data.draw(st.lists(st.sampled_from(sorted(REQUESTS)), max_size=6)))))
    for _ in range(20):  # bounded: answer what was asked, interleaved with arbitrary events
        pending = [a for a in actions if isinstance(a, CoordCall)]
        if not pending:
            break
        actions = []
        for call in pending:
            actions += s.coord_response(call.token, data.draw(_coord_response))
            actions += s.coord_event(data.draw(st.fixed_dictionaries(
                {"ev": st.sampled_from(["watch", "resync", "other"]), "wid": st.integers(0, 5),
                 "type": st.sampled_from(["created", "changed", "deleted", "children", "bogus"]),
                 "path": _json, "zxid": _json})))
