"""Framing (coordclient.wire) and the Raft message codec (coord.transport.codec)."""

import struct

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from coord.raft.types import Entry, EntryKind, Membership, Message, MsgType
from coord.transport.codec import message_from_wire, message_to_wire
from coordclient.wire import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameError,
    FramedStream,
    FrameTooLarge,
    MalformedFrame,
    encode_frame,
    encode_frames,
)

SAMPLES = [
    0,
    -1,
    2**64,
    "text",
    b"\x00bytes",
    None,
    True,
    1.5,
    [1, [2, [3]]],
    {"op": "put", "key": b"/a", "value": b"x" * 1000},
    {1: "int keys"},
]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ---------------------------------------------------------------- framing


def test_round_trip():
    dec = FrameDecoder()
    for obj in SAMPLES:
        assert dec.feed(encode_frame(obj)) == [obj]
    assert dec.buffered == 0


def test_many_frames_in_one_feed():
    assert FrameDecoder().feed(encode_frames(SAMPLES)) == SAMPLES


def test_frames_split_byte_by_byte():
    data = encode_frames(SAMPLES)
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):
        out.extend(dec.feed(data[i : i + 1]))
    assert out == SAMPLES
    assert dec.buffered == 0


def test_partial_frame_survives_compaction():
    # Enough small frames to push the read offset past the compaction
    # threshold while a partial frame is still buffered.
    objs = [{"i": i, "pad": b"p" * 100} for i in range(2000)]
    data = encode_frames(objs)
    dec = FrameDecoder()
    cut = len(data) - 7
    assert dec.feed(data[:cut]) == objs[:-1]
    assert dec.buffered == len(encode_frame(objs[-1])) - 7  # mid-frame, after compaction
    assert dec.feed(data[cut:]) == objs[-1:]
    assert dec.buffered == 0


def test_large_frame_in_small_pieces():
    blob = bytes(range(256)) * 8192  # 2 MiB
    data = encode_frame(blob)
    dec = FrameDecoder()
    out = []
    for i in range(0, len(data), 1000):
        out.extend(dec.feed(data[i : i + 1000]))
    assert out == [blob]


def test_oversize_header_rejected_before_body():
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge):
        dec.feed(struct.pack(">I", 1025))  # the header alone is enough
    assert dec.buffered == 0
    assert FrameDecoder(max_frame=1024).feed(frame(cbor2.dumps(b"x" * 1000))) == [b"x" * 1000]


def test_oversize_header_default_limit():
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(struct.pack(">I", DEFAULT_MAX_FRAME + 1) + b"\x00" * 10)


def test_encode_too_large():
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 2000, max_frame=1000)
    assert len(encode_frame(b"x" * 2000, max_frame=4000)) > 2000


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty body: no item at all
        b"\xff",  # lone break code
        b"\x82\x01",  # array of 2 with one element
        b"\x01\x02",  # trailing bytes after a complete item
        b"\x7f\x61",  # unterminated indefinite string
        b"\x9b" + (1 << 60).to_bytes(8, "big"),  # absurd array length
        b"\x81" * 100_000 + b"\x01",  # absurd nesting
        b"\x62\xff\xfe",  # invalid UTF-8
        b"\xc0\x01",  # datetime tag on an int
    ],
)
def test_garbage_cbor_is_malformed(body):
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(frame(body))


def test_frames_before_an_error_are_returned():
    dec = FrameDecoder(max_frame=100)
    assert dec.feed(encode_frame("good") + frame(b"\xff") + encode_frame("lost")) == ["good"]
    assert isinstance(dec.error, MalformedFrame)
    with pytest.raises(MalformedFrame):
        dec.feed(b"")
    with pytest.raises(MalformedFrame):
        dec.feed(encode_frame("more"))  # the stream position is lost for good

    dec = FrameDecoder(max_frame=100)
    assert dec.feed(encode_frame(1) + struct.pack(">I", 101)) == [1]
    with pytest.raises(FrameTooLarge):
        dec.feed(b"")


def test_frame_errors_are_value_errors():
    assert issubclass(FrameTooLarge, FrameError) and issubclass(MalformedFrame, FrameError)
    assert issubclass(FrameError, ValueError)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_random_bytes_raise_only_frame_errors(data, chunk):
    dec = FrameDecoder(max_frame=256)
    try:
        for i in range(0, len(data), chunk):
            dec.feed(data[i : i + chunk])
    except FrameError:
        pass


@given(st.binary(max_size=200))
def test_random_bodies_raise_only_malformed(body):
    try:
        FrameDecoder().feed(frame(body))
    except MalformedFrame:
        pass


async def test_framed_stream():
    left, right = trio.testing.memory_stream_pair()
    a = FramedStream(left)
    b = FramedStream(right)
    with trio.fail_after(5):
        await a.send({"hello": 1})
        await a.send_many(SAMPLES)
        await a.send_many([])
        assert await b.receive() == {"hello": 1}
        assert [await b.receive() for _ in SAMPLES] == SAMPLES
        await a.aclose()
        with pytest.raises(trio.EndOfChannel):
            await b.receive()


async def test_framed_stream_iterates_until_eof():
    left, right = trio.testing.memory_stream_pair()
    async with FramedStream(left) as a:
        await a.send_many([1, 2, 3])
    with trio.fail_after(5):
        assert [x async for x in FramedStream(right)] == [1, 2, 3]


async def test_framed_stream_eof_inside_frame():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(encode_frame("complete") + encode_frame("cut short")[:-2])
    await left.aclose()
    b = FramedStream(right)
    with trio.fail_after(5):
        assert await b.receive() == "complete"
        with pytest.raises(MalformedFrame):
            await b.receive()


async def test_framed_stream_error_after_good_frames():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(encode_frames(["a", "b"]) + frame(b"\x01\x02"))
    b = FramedStream(right)
    with trio.fail_after(5):
        assert [await b.receive(), await b.receive()] == ["a", "b"]
        with pytest.raises(MalformedFrame):  # raised without waiting for more data
            await b.receive()


async def test_framed_stream_limit():
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(FrameTooLarge):
        await FramedStream(left, max_frame=10).send(b"x" * 11)
    await left.send_all(encode_frame(b"x" * 11))
    with trio.fail_after(5), pytest.raises(FrameTooLarge):
        await FramedStream(right, max_frame=10).receive()


# ------------------------------------------------------------------ codec


MEMBERSHIP = Membership(
    voters=frozenset({1, 2, 3}),
    outgoing=frozenset({1, 2}),
    learners=frozenset({4}),
    addrs={1: {"peer": ["127.0.0.1", 7001], "client": "127.0.0.1:2379"}, 4: ["h", 1]},
)
ENTRIES = [
    Entry(3, 8, EntryKind.NORMAL, b"put /a 1"),
    Entry(3, 9, EntryKind.NOOP, b""),
    Entry(4, 10, EntryKind.CONFIG, cbor2.dumps(MEMBERSHIP.to_wire())),
]


def sample_message(t: MsgType) -> Message:
    m = Message(type=t, frm=1, to=2, term=4)
    if t == MsgType.APPEND:
        m.index, m.log_term, m.entries, m.commit = 7, 3, list(ENTRIES), 6
    elif t == MsgType.SNAPSHOT:
        m.index, m.log_term, m.membership = 100, 4, MEMBERSHIP
        m.offset, m.data, m.done = 1 << 20, b"chunk" * 100, True
    elif t in (MsgType.HEARTBEAT, MsgType.HEARTBEAT_RESP, MsgType.READ_INDEX, MsgType.READ_INDEX_RESP):
        m.commit, m.context, m.index = 5, b"\x00" * 8, 9
    else:
        m.index, m.log_term, m.reject, m.context = 12, 3, True, b"transfer"
    return m


def through_the_wire(m: Message) -> Message:
    (obj,) = FrameDecoder().feed(encode_frame(message_to_wire(m)))
    return message_from_wire(obj)


@pytest.mark.parametrize("t", list(MsgType))
def test_codec_round_trip_every_type(t):
    m = sample_message(t)
    back = through_the_wire(m)
    assert back == m
    assert back.membership is None or back.membership.addrs == m.membership.addrs
    assert isinstance(back.type, MsgType)
    assert all(isinstance(e.kind, EntryKind) for e in back.entries)


def test_codec_round_trip_defaults():
    m = Message(type=MsgType.VOTE_RESP, frm=3, to=1)
    assert message_to_wire(m) == [MsgType.VOTE_RESP, 3, 1]
    assert through_the_wire(m) == m
    # An empty default field before a non-default one stays in place.
    hb = Message(type=MsgType.HEARTBEAT, frm=1, to=2, term=2, context=b"c")
    assert len(message_to_wire(hb)) == 10
    assert through_the_wire(hb) == hb


messages = st.builds(
    Message,
    type=st.sampled_from(list(MsgType)).filter(lambda t: t != MsgType.APPEND),
    frm=st.integers(1, 2**63 - 1),
    to=st.integers(1, 2**63 - 1),
    term=st.integers(0, 2**63 - 1),
    log_term=st.integers(0, 2**40),
    index=st.integers(0, 2**40),
    entries=st.integers(1, 2**40).flatmap(
        lambda first: st.lists(
            st.tuples(st.integers(0, 2**40), st.sampled_from(list(EntryKind)), st.binary(max_size=20)), max_size=5
        ).map(lambda es: [Entry(t, first + i, k, d) for i, (t, k, d) in enumerate(es)])
    ),
    commit=st.integers(0, 2**40),
    reject=st.booleans(),
    context=st.binary(max_size=16),
    membership=st.none()
    | st.builds(
        Membership,
        voters=st.frozensets(st.integers(1, 100), max_size=5),
        outgoing=st.frozensets(st.integers(1, 100), max_size=5),
        learners=st.frozensets(st.integers(1, 100), max_size=5),
        addrs=st.dictionaries(
            st.integers(1, 100),
            st.text(max_size=10) | st.tuples(st.text(max_size=5), st.integers(0, 65535)).map(list),
            max_size=3,
        ),
    ),
    offset=st.integers(0, 2**40),
    data=st.binary(max_size=50),
    done=st.booleans(),
)


@given(messages)
def test_codec_round_trip_random(m):
    back = through_the_wire(m)
    assert back == m
    assert back.membership is None or back.membership.addrs == m.membership.addrs


# As decoded from CBOR (plain ints, no enums), with all 14 fields spelled
# out so that any position can be replaced.
GOOD = cbor2.loads(cbor2.dumps(message_to_wire(sample_message(MsgType.APPEND)))) + [False, b"", None, 0, b"", False]
assert len(GOOD) == 14


def replaced(pos, value):
    w = list(GOOD)
    w[pos] = value
    return w


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {"type": 5},
        b"\x05",
        [5, 1],  # too short
        GOOD + [0],  # too long
        replaced(0, 99),  # unknown type
        replaced(0, True),  # bool is not an int
        replaced(0, 5.0),
        replaced(1, 0),  # node ids start at 1
        replaced(2, "2"),
        replaced(3, -1),
        replaced(3, 2**63),  # would not fit storage's 64-bit fields
        replaced(3, 2**1000),
        replaced(6, "entries"),
        replaced(6, [[3, 8, 0]]),  # entry too short
        replaced(6, [[3, 8, 7, b""]]),  # unknown entry kind
        replaced(6, [[3, 8, 0, "text"]]),  # data must be bytes
        replaced(6, [[3, 0, 0, b""]]),  # entry indexes start at 1
        replaced(6, [[3, 9, 0, b""]]),  # APPEND entries must follow index (7)
        replaced(6, [[3, 8, 0, b""], [3, 10, 0, b""]]),  # gap
        replaced(8, 1),  # reject must be a bool
        replaced(9, "ctx"),
        replaced(10, [1, 2]),  # membership must be a map
        replaced(10, {"v": [0]}),
        replaced(10, {"v": [1], "x": []}),
        replaced(10, {"v": "123"}),
        replaced(10, {"a": {"1": "host"}}),
        replaced(10, {"a": {1: cbor2.CBORTag(999, 1)}}),
        replaced(10, {"a": {1: [[[[[[[[[["deep"]]]]]]]]]]}}),
        replaced(11, -5),
        replaced(12, bytearray(b"x")),
        replaced(13, None),
    ],
)
def test_codec_rejects(obj):
    with pytest.raises(ValueError):
        message_from_wire(obj)


def test_codec_accepts_the_unmodified_sample():
    assert message_from_wire(GOOD) == sample_message(MsgType.APPEND)


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5) | st.binary(max_size=5),
    lambda children: (
        st.lists(children, max_size=6)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=2) | st.integers(), children, max_size=4)
    ),
    max_leaves=30,
)


@given(junk)
def test_codec_junk_raises_only_value_error(obj):
    try:
        message_from_wire(obj)
    except ValueError:
        pass


@given(st.integers(0, len(GOOD) - 1), junk)
def test_codec_mutated_field_raises_only_value_error(pos, value):
    try:
        m = message_from_wire(replaced(pos, value))
    except ValueError:
        return
    assert isinstance(m, Message)


def test_item_budget_stops_hostile_frames_before_decoding():
    from coordclient.wire import FrameDecoder, TooManyItems, check_item_budget

    ok = cbor2.dumps({"op": "multi", "ops": [{"op": "create", "path": f"/n{i}", "data": b"x" * 50} for i in range(100)]})
    check_item_budget(ok, 1000)  # ~700 items
    with pytest.raises(TooManyItems):
        check_item_budget(ok, 100)
    hostile = bytes([0x9a]) + (10**6).to_bytes(4, "big") + b"\x80" * 10**6
    with pytest.raises(TooManyItems):
        check_item_budget(hostile, 5000)
    indefinite = b"\x9f" + b"\x80" * 200 + b"\xff"
    with pytest.raises(TooManyItems):
        check_item_budget(indefinite, 100)
    big_string = cbor2.dumps([b"y" * (1 << 20)])
    check_item_budget(big_string, 3)  # strings are skipped, not counted per byte
    dec = FrameDecoder(max_items=100)
    with pytest.raises(TooManyItems):
        dec.feed(struct.pack(">I", len(hostile)) + hostile)
