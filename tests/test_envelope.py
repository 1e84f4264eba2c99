"""Service messages on the peer links (coord/transport/envelope.py): typed,
round-tripped, and hostile input refused with ValueError before it reaches
the service."""

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.transport.codec import message_from_wire
from coord.transport.envelope import (
    Forward,
    ForwardRejected,
    SessionTouches,
    TouchAck,
    service_from_wire,
    service_to_wire,
)

MESSAGES = [
    Forward(2, 1, ((5, b"\xa1bopfcreate"), (6, b""))),
    ForwardRejected(1, 2, 3, ((5, "not the leader"),)),
    SessionTouches(2, 1, 17, (3, 9)),
    TouchAck(1, 2, 17),
]


@pytest.mark.parametrize("m", MESSAGES)
def test_round_trip_through_cbor(m):
    assert service_from_wire(cbor2.loads(cbor2.dumps(service_to_wire(m)))) == m


@pytest.mark.parametrize("bad", [
    [], ["fw"], ["fw", 2, 1], ["fw", 0, 1, []], ["fw", 2, 1, [[0, b""]]], ["fw", 2, 1, [[1, "str"]]],
    ["fw", 2, 1, [[1, b"", 3]]], ["fx", 1, 2, -1, []], ["st", 2, 1, 1, [0]], ["st", 2, 1, 1, [True]],
    ["sa", 1, 2, 2 ** 63], ["zz", 1, 2, 3], ["fw", 2, 1, [[1, b""]] * 70_000], [1, 2, 3, 4],
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
