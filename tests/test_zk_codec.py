"""The jute codec against the bytes kazoo (an unmodified ZooKeeper client)
produces and parses.

Requests: kazoo's own serializers build the frame; our decoder must read
exactly the record kazoo meant.  Responses: our encoder builds the reply;
kazoo's own deserializers must read back what we meant.  Ops kazoo has no
serializer for are built by hand from zookeeper.jute's layout with struct
(independent of our encoder).
"""

from __future__ import annotations

import struct

import pytest
from kazoo.protocol import serialization as kz
from kazoo.security import ACL as KzACL
from kazoo.security import Id as KzId
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from coord.zookeeper.codes import OpCode
from coord.zookeeper.jute import JuteError, Reader, Writer
from coord.zookeeper.records import (
    ACL,
    AddWatchRequest,
    AuthPacket,
    BadBody,
    CheckVersionRequest,
    CheckWatchesRequest,
    ConnectRequest,
    ConnectResponse,
    Create2Response,
    CreateRequest,
    CreateResponse,
    CreateTTLRequest,
    DeleteRequest,
    ErrorResponse,
    ExistsRequest,
    ExistsResponse,
    GetACLRequest,
    GetACLResponse,
    GetAllChildrenNumberRequest,
    GetChildren2Request,
    GetChildren2Response,
    GetChildrenRequest,
    GetChildrenResponse,
    GetDataRequest,
    GetDataResponse,
    GetEphemeralsRequest,
    GetSASLRequest,
    Id,
    MultiOp,
    MultiRequest,
    MultiResponse,
    MultiResult,
    ReconfigRequest,
    RemoveWatchesRequest,
    ReplyHeader,
    SetACLRequest,
    SetACLResponse,
    SetDataRequest,
    SetDataResponse,
    SetWatches,
    SetWatches2,
    Stat,
    SyncRequest,
    SyncResponse,
    UnknownOp,
    WatcherEvent,
    decode_request,
    encode_reply,
)

OPEN = (ACL(31, Id("world", "anyone")),)
STAT = Stat(czxid=1, mzxid=2, ctime=3, mtime=4, version=5, cversion=6, aversion=7, ephemeralOwner=8,
            dataLength=9, numChildren=10, pzxid=11)


def kazoo_frame(xid: int, request) -> bytes:
    """The payload kazoo's connection sends for ``request`` (its _submit)."""
    return struct.pack("!ii", xid, request.type) + bytes(request.serialize())


def s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("!i", len(b)) + b


# -- requests: kazoo's bytes -> our records -------------------------------------------

KAZOO_REQUESTS = [
    (kz.Create("/a/b", b"data", OPEN_ACL_UNSAFE, 3), OpCode.CREATE, CreateRequest("/a/b", b"data", OPEN, 3)),
    (kz.Create2("/c", b"", [make_digest_acl("u", "p", read=True)], 0), OpCode.CREATE2,
     CreateRequest("/c", b"", (ACL(1, Id("digest", make_digest_acl("u", "p").id.id)),), 0)),
    (kz.Delete("/a", 7), OpCode.DELETE, DeleteRequest("/a", 7)),
    (kz.Exists("/a", True), OpCode.EXISTS, ExistsRequest("/a", True)),
    (kz.GetData("/a", None), OpCode.GET_DATA, GetDataRequest("/a", False)),
    (kz.SetData("/a", b"\x00\xff", -1), OpCode.SET_DATA, SetDataRequest("/a", b"\x00\xff", -1)),
    (kz.GetACL("/a"), OpCode.GET_ACL, GetACLRequest("/a")),
    (kz.SetACL("/a", [KzACL(31, KzId("world", "anyone"))], 2), OpCode.SET_ACL, SetACLRequest("/a", OPEN, 2)),
    (kz.GetChildren("/", True), OpCode.GET_CHILDREN, GetChildrenRequest("/", True)),
    (kz.GetChildren2("/x", False), OpCode.GET_CHILDREN2, GetChildren2Request("/x", False)),
    (kz.Sync("/a"), OpCode.SYNC, SyncRequest("/a")),
    (kz.CheckVersion("/a", 4), OpCode.CHECK, CheckVersionRequest("/a", 4)),
    (kz.Reconfig("server.4=h:1:2:participant;3", "5", None, -1), OpCode.RECONFIG,
     ReconfigRequest("server.4=h:1:2:participant;3", "5", None, -1)),
    (kz.Auth(0, "digest", "user:pw"), OpCode.AUTH, AuthPacket(0, "digest", b"user:pw")),
    (kz.SASL(b"token"), OpCode.SASL, GetSASLRequest(b"token")),
]


@pytest.mark.parametrize("request_, op, expected", KAZOO_REQUESTS, ids=lambda v: type(v).__name__)
def test_kazoo_request_decodes(request_, op, expected):
    req = decode_request(kazoo_frame(42, request_), strict=True)
    assert (req.xid, req.op, req.body) == (42, op, expected)
    # and our encoder writes the very bytes kazoo wrote
    assert expected.encode() == bytes(request_.serialize())


def test_kazoo_ping_and_close_have_no_body():
    for request_, op in ((kz.PingInstance, OpCode.PING), (kz.CloseInstance, OpCode.CLOSE_SESSION)):
        req = decode_request(kazoo_frame(-2, request_), strict=True)
        assert (req.xid, req.op, req.body) == (-2, op, None)


def test_kazoo_transaction_decodes():
    txn = kz.Transaction([
        kz.Create("/t", b"1", OPEN_ACL_UNSAFE, 1),
        kz.Delete("/u", -1),
        kz.SetData("/v", b"2", 3),
        kz.CheckVersion("/w", 0),
        kz.Create2("/x", b"", OPEN_ACL_UNSAFE, 2),
    ])
    req = decode_request(kazoo_frame(9, txn), strict=True)
    assert req.op == OpCode.MULTI
    assert req.body == MultiRequest((
        MultiOp(OpCode.CREATE, CreateRequest("/t", b"1", OPEN, 1)),
        MultiOp(OpCode.DELETE, DeleteRequest("/u", -1)),
        MultiOp(OpCode.SET_DATA, SetDataRequest("/v", b"2", 3)),
        MultiOp(OpCode.CHECK, CheckVersionRequest("/w", 0)),
        MultiOp(OpCode.CREATE2, CreateRequest("/x", b"", OPEN, 2)),
    ))
    assert req.body.encode() == bytes(txn.serialize())


@pytest.mark.parametrize("read_only", [True, False])
def test_kazoo_connect_request_decodes(read_only):
    payload = bytes(kz.Connect(0, 77, 30000, 0x1234, b"\x01" * 16, read_only).serialize())
    assert ConnectRequest.decode(payload) == ConnectRequest(0, 77, 30000, 0x1234, b"\x01" * 16, read_only)


def test_old_connect_request_without_read_only():
    payload = struct.pack("!iqiq", 0, 5, 4000, 0) + struct.pack("!i", 16) + bytes(16)
    req = ConnectRequest.decode(payload)
    assert req.readOnly is None and req.timeOut == 4000 and req.lastZxidSeen == 5
    assert req.encode() == payload  # and answered in the old form too


# Ops kazoo does not serialize, built from zookeeper.jute's layout.
HAND_BUILT = [
    (OpCode.CREATE_CONTAINER, s("/c") + struct.pack("!i", 1) + b"z" + struct.pack("!i", 1) + struct.pack("!i", 31)
     + s("world") + s("anyone") + struct.pack("!i", 4), CreateRequest("/c", b"z", OPEN, 4)),
    (OpCode.CREATE_TTL, s("/t") + struct.pack("!i", -1) + struct.pack("!i", 0) + struct.pack("!iq", 5, 60000),
     CreateTTLRequest("/t", None, (), 5, 60000)),
    (OpCode.DELETE_CONTAINER, s("/c") + struct.pack("!i", -1), DeleteRequest("/c", -1)),
    (OpCode.CHECK_WATCHES, s("/w") + struct.pack("!i", 2), CheckWatchesRequest("/w", 2)),
    (OpCode.REMOVE_WATCHES, s("/w") + struct.pack("!i", 3), RemoveWatchesRequest("/w", 3)),
    (OpCode.GET_EPHEMERALS, s("/e"), GetEphemeralsRequest("/e")),
    (OpCode.GET_ALL_CHILDREN_NUMBER, s("/n"), GetAllChildrenNumberRequest("/n")),
    (OpCode.ADD_WATCH, s("/p") + struct.pack("!i", 1), AddWatchRequest("/p", 1)),
    (OpCode.SET_WATCHES, struct.pack("!q", 99) + struct.pack("!i", 1) + s("/d") + struct.pack("!i", 0)
     + struct.pack("!i", 2) + s("/c1") + s("/c2"), SetWatches(99, ("/d",), (), ("/c1", "/c2"))),
    (OpCode.SET_WATCHES2, struct.pack("!q", 1) + struct.pack("!i", 0) * 3 + struct.pack("!i", 1) + s("/p")
     + struct.pack("!i", -1), SetWatches2(1, (), (), (), ("/p",), None)),
    (OpCode.WHO_AM_I, b"", None),
    (OpCode.MULTI_READ, struct.pack("!i?i", OpCode.GET_DATA, False, -1) + s("/a") + b"\x00"
     + struct.pack("!i?i", OpCode.GET_CHILDREN, False, -1) + s("/b") + b"\x00" + struct.pack("!i?i", -1, True, -1),
     MultiRequest((MultiOp(OpCode.GET_DATA, GetDataRequest("/a", False)),
                   MultiOp(OpCode.GET_CHILDREN, GetChildrenRequest("/b", False))))),
]


@pytest.mark.parametrize("op, body, expected", HAND_BUILT, ids=lambda v: getattr(v, "name", None))
def test_hand_built_request_decodes(op, body, expected):
    req = decode_request(struct.pack("!ii", 5, op) + body, strict=True)
    assert (req.xid, req.op, req.body) == (5, op, expected)
    if expected is not None:
        assert expected.encode() == body


def test_unknown_op_and_bad_body_carry_the_xid():
    with pytest.raises(UnknownOp) as e:
        decode_request(struct.pack("!ii", 12, 999))
    assert (e.value.xid, e.value.op) == (12, 999)
    with pytest.raises(BadBody) as e2:
        decode_request(struct.pack("!ii", 13, OpCode.GET_DATA) + struct.pack("!i", 50) + b"short")
    assert (e2.value.xid, e2.value.op) == (13, OpCode.GET_DATA)
    with pytest.raises(JuteError):
        decode_request(b"\x00\x00\x00")  # no header


def test_trailing_bytes_ignored_unless_strict():
    payload = kazoo_frame(1, kz.Sync("/a")) + b"junk"
    assert decode_request(payload).body == SyncRequest("/a")
    with pytest.raises(BadBody):
        decode_request(payload, strict=True)


# -- responses: our bytes -> kazoo's records ------------------------------------------------

def kazoo_reads(payload: bytes, request_):
    hdr, offset = kz.ReplyHeader.deserialize(payload, 0)
    return hdr, request_.deserialize(payload, offset)


def test_reply_header_for_kazoo():
    hdr, _ = kz.ReplyHeader.deserialize(encode_reply(-2, 1 << 40, 0), 0)
    assert (hdr.xid, hdr.zxid, hdr.err) == (-2, 1 << 40, 0)
    payload = encode_reply(3, 9, -101, GetDataResponse(b"x", STAT))
    hdr, _ = kz.ReplyHeader.deserialize(payload, 0)
    assert hdr.err == -101 and len(payload) == 16  # an error reply carries no body


def kazoo_stat(st: Stat):
    return kz.ZnodeStat(st.czxid, st.mzxid, st.ctime, st.mtime, st.version, st.cversion, st.aversion,
                        st.ephemeralOwner, st.dataLength, st.numChildren, st.pzxid)


def test_responses_for_kazoo():
    zst = kazoo_stat(STAT)
    assert kazoo_reads(encode_reply(1, 2, 0, CreateResponse("/a0000000001")), kz.Create("/a", b"", [], 0))[1] \
        == "/a0000000001"
    assert kazoo_reads(encode_reply(1, 2, 0, Create2Response("/b", STAT)), kz.Create2("/b", b"", [], 0))[1] \
        == ("/b", zst)
    assert kazoo_reads(encode_reply(1, 2, 0, ExistsResponse(STAT)), kz.Exists("/a", None))[1] == zst
    assert kazoo_reads(encode_reply(1, 2, 0, GetDataResponse(b"hello", STAT)), kz.GetData("/a", None))[1] \
        == (b"hello", zst)
    assert kazoo_reads(encode_reply(1, 2, 0, SetDataResponse(STAT)), kz.SetData("/a", b"", -1))[1] == zst
    acl, st = kazoo_reads(encode_reply(1, 2, 0, GetACLResponse(OPEN, STAT)), kz.GetACL("/a"))[1]
    assert (acl[0].perms, acl[0].id.scheme, acl[0].id.id, st) == (31, "world", "anyone", zst)
    assert kazoo_reads(encode_reply(1, 2, 0, SetACLResponse(STAT)), kz.SetACL("/a", [], -1))[1] == zst
    assert kazoo_reads(encode_reply(1, 2, 0, GetChildrenResponse(("x", "y"))), kz.GetChildren("/", None))[1] \
        == ["x", "y"]
    assert kazoo_reads(encode_reply(1, 2, 0, GetChildren2Response(("x",), STAT)), kz.GetChildren2("/", None))[1] \
        == (["x"], zst)
    assert kazoo_reads(encode_reply(1, 2, 0, SyncResponse("/a")), kz.Sync("/a"))[1] == "/a"
    assert kazoo_reads(encode_reply(1, 2, 0, GetDataResponse(b"server.1=...", STAT)),
                       kz.Reconfig(None, None, None, -1))[1] == (b"server.1=...", zst)


def test_multi_response_for_kazoo():
    ok = MultiResponse((MultiResult(OpCode.CREATE, CreateResponse("/t")), MultiResult(OpCode.DELETE),
                        MultiResult(OpCode.SET_DATA, SetDataResponse(STAT)), MultiResult(OpCode.CHECK)))
    results = kazoo_reads(encode_reply(1, 2, 0, ok), kz.Transaction([]))[1]
    assert results == ["/t", True, kazoo_stat(STAT), True]
    failed = MultiResponse((MultiResult(OpCode.ERROR, ErrorResponse(0)),
                            MultiResult(OpCode.ERROR, ErrorResponse(-110)),
                            MultiResult(OpCode.ERROR, ErrorResponse(-2))))
    results = kazoo_reads(encode_reply(1, 2, 0, failed), kz.Transaction([]))[1]
    assert [type(r).__name__ for r in results] == ["RolledBackError", "NodeExistsError", "RuntimeInconsistency"]


@pytest.mark.parametrize("read_only", [True, False])
def test_connect_response_for_kazoo(read_only):
    resp = ConnectResponse(0, 12000, 0xABC, b"s" * 16, read_only)
    got, _ = kz.Connect.deserialize(resp.encode(), 0)
    assert (got.time_out, got.session_id, got.passwd, got.read_only) == (12000, 0xABC, b"s" * 16, read_only)
    old = ConnectResponse(0, 12000, 0xABC, b"s" * 16, None).encode()
    assert len(old) == len(resp.encode()) - 1  # the old form has no readOnly byte


def test_notification_for_kazoo():
    w = Writer()
    ReplyHeader(-1, 7, 0).write(w)
    WatcherEvent(3, 3, "/a/b").write(w)
    hdr, offset = kz.ReplyHeader.deserialize(w.getvalue(), 0)
    watch, _ = kz.Watch.deserialize(w.getvalue(), offset)
    assert (hdr.xid, watch.type, watch.state, watch.path) == (-1, 3, 3, "/a/b")


# -- primitives ------------------------------------------------------------------------------

def test_reader_bounds():
    with pytest.raises(JuteError, match="unreasonable"):
        Reader(struct.pack("!i", 2000), max_buffer=1000).buffer()
    with pytest.raises(JuteError, match="unreasonable"):
        Reader(struct.pack("!i", -2)).ustring()
    with pytest.raises(JuteError, match="truncated"):
        Reader(struct.pack("!i", 10) + b"abc").buffer()
    with pytest.raises(JuteError, match="vector count"):
        Reader(struct.pack("!i", 1 << 20)).vector(Reader.int, 4)  # more elements than bytes
    assert Reader(struct.pack("!i", -1)).vector(Reader.int) is None
    assert Reader(struct.pack("!i", -1)).buffer() is None
    assert Reader(b"\x02").bool() is True  # any non-zero byte, as Java's readBoolean
    assert Reader(struct.pack("!i", 2) + b"\xff\xfe").ustring() == "\ufffd\ufffd"  # as Java's decoder


def test_writer_refuses_out_of_range():
    with pytest.raises(JuteError):
        Writer().int(1 << 31)
    with pytest.raises(JuteError):
        Writer().long(-(1 << 63) - 1)
    with pytest.raises(JuteError):
        Writer().buffer("text")  # type: ignore[arg-type]
    assert Writer().ustring(None).buffer(b"").getvalue() == struct.pack("!ii", -1, 0)
