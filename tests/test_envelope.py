"""Service messages on the peer links (coord/transport/envelope.py): typed,
round-tripped, and hostile input refused with ValueError before it reaches
the service."""

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.transport.codec import message_from_wire
from coord.transport.envelope import (
    MAX_INFO_BODY,
    MAX_INFO_DEPTH,
    Forward,
    ForwardRejected,
    InfoQuery,
    InfoReply,
    SessionTouches,
    TouchAck,
    decode_info,
    encode_info,
    service_from_wire,
    service_to_wire,
)

MESSAGES = [
    Forward(2, 1, ((5, b"\xa1bopfcreate"), (6, b""))),
    ForwardRejected(1, 2, 3, ((5, "not the leader"),)),
    SessionTouches(2, 1, 17, (3, 9)),
    TouchAck(1, 2, 17),
    InfoQuery(2, 3, 9, "status"),
    InfoReply(3, 2, 9, cbor2.dumps({"role": "leader"})),
]


@pytest.mark.parametrize("m", MESSAGES)
def test_round_trip_through_cbor(m):
    assert service_from_wire(cbor2.loads(cbor2.dumps(service_to_wire(m)))) == m


@pytest.mark.parametrize("bad", [
    [], ["fw"], ["fw", 2, 1], ["fw", 0, 1, []], ["fw", 2, 1, [[0, b""]]], ["fw", 2, 1, [[1, "str"]]],
    ["fw", 2, 1, [[1, b"", 3]]], ["fx", 1, 2, -1, []], ["st", 2, 1, 1, [0]], ["st", 2, 1, 1, [True]],
    ["sa", 1, 2, 2 ** 63], ["zz", 1, 2, 3], ["fw", 2, 1, [[1, b""]] * 70_000], [1, 2, 3, 4],
    # info questions and answers
    ["iq", 2, 3, 0, "status"], ["iq", 2, 3, 1, ""], ["iq", 2, 3, 1, "x" * 33], ["iq", 2, 3, 1, "Status"],
    ["iq", 2, 3, 1, "sta tus"], ["iq", 2, 3, 1, b"status"], ["iq", 2, 3, 1, None], ["iq", 2, 3, 1],
    ["iq", 2, 3, 1, "status", 0], ["iq", 2, 3, True, "status"], ["iq", 0, 3, 1, "status"],
    ["ir", 3, 2, 1, "text"], ["ir", 3, 2, 1, b"x" * (MAX_INFO_BODY + 1)], ["ir", 3, 2, -1, b""],
    ["ir", 3, 2, 1], ["ir", 3, 2, 1, b"", b""],
])
def test_malformed_service_messages_are_refused(bad):
    with pytest.raises(ValueError):
        service_from_wire(bad)


def test_raft_messages_do_not_parse_as_service_messages_and_vice_versa():
    with pytest.raises(ValueError):
        message_from_wire(service_to_wire(MESSAGES[0]))


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=8) | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=5), max_leaves=30))
def test_garbage_never_raises_anything_but_value_error(obj):
    try:
        service_from_wire(obj)
    except ValueError:
        pass


def test_info_query_names_are_checked_for_shape_not_for_known_kinds():
    # A newer member may ask for a kind this one does not answer: that is
    # the service's business (an error answer), not a reason to drop the link.
    assert service_from_wire(["iq", 2, 3, 1, "future_kind"]) == InfoQuery(2, 3, 1, "future_kind")


def test_info_documents_round_trip_with_json_key_rules():
    doc = {"server_id": 2, "progress": {3: {"match": 7, "lag": 0}}, "ok": True, "x": None, "f": 1.5,
           "rows": [{"sid": 1, "client": "127.0.0.1:5"}]}
    got = decode_info(encode_info(doc))
    assert got["progress"] == {"3": {"match": 7, "lag": 0}}  # int keys become strings, as in JSON
    assert got["rows"] == doc["rows"] and got["f"] == 1.5 and got["x"] is None


@pytest.mark.parametrize("doc", [
    [1, 2], {"a": b"bytes"}, {"a": float("nan")}, {"a": {1.5: 2}}, {"a": object()}, {"a": 2 ** 64},
    {"big": "x" * (MAX_INFO_BODY + 1)},
])
def test_encode_info_refuses_what_is_not_a_bounded_json_like_map(doc):
    with pytest.raises(ValueError):
        encode_info(doc)


def nested(depth):
    doc: dict = {}
    for _ in range(depth):
        doc = {"a": doc}
    return doc


@pytest.mark.parametrize("body", [
    b"", b"\xff", cbor2.dumps([1]), cbor2.dumps({1: 2}), cbor2.dumps({"a": 1}) + b"\x00",
    cbor2.dumps({"a": b"x"}), cbor2.dumps({"a": {1, 2}}), cbor2.dumps(nested(MAX_INFO_DEPTH + 2)),
    cbor2.dumps({"when": cbor2.CBORTag(1, 0)}), b"x" * (MAX_INFO_BODY + 1),
])
def test_decode_info_refuses_anything_but_one_json_like_map(body):
    with pytest.raises(ValueError):
        decode_info(body)


def test_decode_info_accepts_the_deepest_allowed_document():
    assert decode_info(cbor2.dumps(nested(MAX_INFO_DEPTH))) == nested(MAX_INFO_DEPTH)


@given(st.binary(max_size=64))
def test_decode_info_never_raises_anything_but_value_error(body):
    try:
        decode_info(body)
    except ValueError:
        pass
