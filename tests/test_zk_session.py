"""The ZooKeeper connection state machine, driven by hand: bytes in,
coord calls and bytes out, in the orders ZooKeeper promises."""

from __future__ import annotations

import struct

from kazoo.protocol import serialization as kz
from kazoo.security import OPEN_ACL_UNSAFE

from coord.zookeeper.codes import Code, OpCode
from coord.zookeeper.jute import Reader
from coord.zookeeper.records import (
    ConnectRequest,
    ConnectResponse,
    GetDataRequest,
    RemoveWatchesRequest,
    ReplyHeader,
    SetWatches,
    WatcherEvent,
    encode_request,
)
from coord.zookeeper.session import (
    CloseConnection,
    CoordCall,
    FourLetterWord,
    Limits,
    SendBytes,
    State,
    ZkSession,
    frame,
)
from coord.zookeeper.translate import WatchClass, WatchKey

STAT = [10, 11, 12, 1000, 2000, 3, 4, 0, 5, 0]
HELLO_OK = {"ok": True, "zxid": 7, "r": {"sid": 0x42, "secret": b"k" * 16, "timeout_ms": 9000, "server_id": 1,
                                          "zxid": 7}}


def connect_frame(sid=0, last_zxid=0, timeout=10000, read_only=False) -> bytes:
    return frame(ConnectRequest(0, last_zxid, timeout, sid, b"p" * 16, read_only).encode())


def kazoo(xid: int, request_) -> bytes:
    return frame(struct.pack("!ii", xid, request_.type) + bytes(request_.serialize()))


def calls(actions) -> list[CoordCall]:
    return [a for a in actions if isinstance(a, CoordCall)]


def sent(actions) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendBytes))


def frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        (n,) = struct.unpack_from("!i", data)
        out.append(data[4:4 + n])
        data = data[4 + n:]
    return out


def headers(data: bytes) -> list[ReplyHeader]:
    return [ReplyHeader.read(Reader(f)) for f in frames(data)]


def ok(r=None, zxid=8) -> dict:
    return {"ok": True, "zxid": zxid, "r": r or {}}


def opened(**kw) -> ZkSession:
    s = ZkSession(peer_ip="10.0.0.9", **kw)
    (hello,) = calls(s.receive_data(connect_frame()))
    s.coord_response(hello.token, HELLO_OK)
    assert s.state is State.OPEN
    return s


# -- handshake ------------------------------------------------------------------------------

def test_handshake_is_coords_hello():
    s = ZkSession()
    actions = s.receive_data(connect_frame(last_zxid=5, timeout=30000))
    (hello,) = calls(actions)
    assert hello.request == {"op": "hello", "timeout_ms": 30000, "sid": 0, "secret": None, "last_zxid": 5}
    assert s.state is State.CONNECTING
    answer = sent(s.coord_response(hello.token, HELLO_OK))
    (payload,) = frames(answer)
    got, _ = kz.Connect.deserialize(payload, 0)  # what kazoo reads
    assert (got.session_id, got.time_out, got.passwd, got.read_only) == (0x42, 9000, b"k" * 16, False)
    assert (s.state, s.sid, s.timeout_ms) == (State.OPEN, 0x42, 9000)


def test_resume_sends_sid_secret_and_last_zxid():
    s = ZkSession()
    (hello,) = calls(s.receive_data(connect_frame(sid=0x42, last_zxid=99)))
    assert hello.request == {"op": "hello", "timeout_ms": 10000, "sid": 0x42, "secret": b"p" * 16, "last_zxid": 99}


def test_expired_session_gets_zookeepers_invalid_answer_and_close():
    s = ZkSession()
    (hello,) = calls(s.receive_data(connect_frame(sid=0x42)))
    actions = s.coord_response(hello.token, {"ok": False, "zxid": 3, "err": "SessionExpired", "msg": "gone"})
    resp = ConnectResponse.decode(frames(sent(actions))[0])
    assert (resp.timeOut, resp.sessionId, resp.passwd) == (0, 0, bytes(16))
    assert isinstance(actions[-1], CloseConnection) and s.state is State.CLOSED


def test_server_cut_off_closes_without_answer():
    s = ZkSession()
    (hello,) = calls(s.receive_data(connect_frame()))
    actions = s.coord_response(hello.token, {"ok": False, "zxid": 3, "err": "ConnectionLoss", "msg": "no leader"})
    assert sent(actions) == b"" and isinstance(actions[-1], CloseConnection)


def test_old_client_gets_old_connect_response():
    s = ZkSession()
    payload = ConnectRequest(0, 0, 5000, 0, bytes(16), None).encode()
    (hello,) = calls(s.receive_data(frame(payload)))
    (answer,) = frames(sent(s.coord_response(hello.token, HELLO_OK)))
    assert ConnectResponse.decode(answer).readOnly is None
    assert len(answer) == 4 + 4 + 8 + 4 + 16  # no readOnly byte


def test_requests_buffered_until_the_session_exists():
    s = ZkSession()
    actions = s.receive_data(connect_frame() + kazoo(1, kz.GetData("/a", None)))
    assert [c.request["op"] for c in calls(actions)] == ["hello"]
    (hello,) = calls(actions)
    actions = s.coord_response(hello.token, HELLO_OK)
    assert [c.request["op"] for c in calls(actions)] == ["get"]


def test_frame_split_anywhere_is_reassembled():
    s = opened()
    data = kazoo(1, kz.Exists("/a", None))
    out = []
    for b in data:
        out += s.receive_data(bytes([b]))
    assert [c.request for c in calls(out)] == [{"op": "exists", "path": "/a", "watch": False, "lin": False}]


# -- bad input ----------------------------------------------------------------------------------

def test_four_letter_word_before_handshake():
    for word in (b"srvr", b"ruok", b"mntr", b"dump"):
        s = ZkSession()
        assert s.receive_data(word) == [FourLetterWord(word.decode())]
        assert s.state is State.CLOSED and s.receive_data(b"more") == []


def test_four_letter_words_disabled_is_a_bad_length():
    s = ZkSession(four_letter_words=False)
    (a,) = s.receive_data(b"srvr")
    assert isinstance(a, CloseConnection) and "max_buffer" in a.reason


def test_negative_and_huge_lengths_close():
    for n in (-1, -(1 << 31), (1 << 20) + 1):
        s = opened()
        (a,) = s.receive_data(struct.pack("!i", n))
        assert isinstance(a, CloseConnection)
        assert not s.wants_data


def test_max_buffer_is_configurable():
    s = ZkSession(limits=Limits(max_buffer=100))
    (a,) = s.receive_data(struct.pack("!i", 101))
    assert isinstance(a, CloseConnection)


def test_garbage_first_frame_closes_without_calls():
    s = ZkSession()
    actions = s.receive_data(frame(struct.pack("!ii", 1, OpCode.GET_DATA)))  # a request where a connect belongs
    assert calls(actions) == [] and isinstance(actions[-1], CloseConnection)


def test_truncated_frame_waits():
    s = opened()
    data = kazoo(3, kz.GetData("/a", None))
    assert s.receive_data(data[:-2]) == []
    assert [c.request["op"] for c in calls(s.receive_data(data[-2:]))] == ["get"]


def test_unknown_op_gets_unimplemented_and_the_connection_goes_on():
    s = opened()
    actions = s.receive_data(frame(struct.pack("!ii", 17, 999)))
    assert [(h.xid, h.err) for h in headers(sent(actions))] == [(17, Code.UNIMPLEMENTED)]
    assert calls(actions) == []
    assert calls(s.receive_data(kazoo(18, kz.Sync("/"))))  # still serving


def test_bad_body_gets_marshalling_error():
    s = opened()
    actions = s.receive_data(frame(struct.pack("!ii", 4, OpCode.GET_DATA) + struct.pack("!i", 99)))
    assert [(h.xid, h.err) for h in headers(sent(actions))] == [(4, Code.MARSHALLING_ERROR)]
    assert calls(actions) == []


def test_unreadable_header_closes():
    s = opened()
    (a,) = s.receive_data(frame(b"\x00\x01"))
    assert isinstance(a, CloseConnection)


def test_input_beyond_the_bound_closes():
    s = opened(limits=Limits(max_buffer=64, max_outstanding=1))
    s.receive_data(kazoo(1, kz.GetData("/a", None)))  # one outstanding: the next are not decoded
    assert not s.wants_data
    actions = []
    for _ in range(50):  # a client that ignores TCP's pushback and the glue keeps feeding
        actions += s.receive_data(kazoo(2, kz.GetData("/b", None)) * 100)
    assert any(isinstance(a, CloseConnection) for a in actions) and s.state is State.CLOSED


# -- ordering ----------------------------------------------------------------------------------------

def test_replies_in_request_order():
    s = opened()
    a, b = calls(s.receive_data(kazoo(1, kz.GetData("/a", None)) + kazoo(2, kz.Exists("/b", None))))
    assert sent(s.coord_response(b.token, ok({"stat": STAT}))) == b""  # held for xid 1
    out = sent(s.coord_response(a.token, ok({"data": b"x", "stat": STAT})))
    assert [h.xid for h in headers(out)] == [1, 2]


def test_read_waits_for_earlier_write():
    s = opened()
    actions = s.receive_data(kazoo(1, kz.Create("/a", b"", OPEN_ACL_UNSAFE, 0)) + kazoo(2, kz.GetData("/a", None))
                             + kazoo(3, kz.SetData("/a", b"v", -1)))
    (w,) = calls(actions)
    assert w.request == {"op": "create", "path": "/a", "data": b"", "eph": False, "sq": False, "parents": False,
                         "acl": [[31, "world", "anyone"]]}
    actions = s.coord_response(w.token, ok({"path": "/a", "stat": STAT}))
    (r,) = calls(actions)  # the read now, the write after it still waits
    assert r.request["op"] == "get"
    (w2,) = calls(s.coord_response(r.token, ok({"data": b"", "stat": STAT})))
    assert w2.request["op"] == "set"


def test_writes_pipeline_and_reads_pipeline():
    s = opened()
    ws = calls(s.receive_data(b"".join(kazoo(i, kz.SetData("/a", b"v", -1)) for i in range(1, 4))))
    assert len(ws) == 3
    for w in ws:
        s.coord_response(w.token, ok({"stat": STAT}))
    rs = calls(s.receive_data(b"".join(kazoo(i, kz.Exists("/a", None)) for i in range(4, 8))))
    assert len(rs) == 4


def test_barrier_runs_alone():
    s = opened()
    actions = s.receive_data(kazoo(1, kz.Exists("/a", None)) + kazoo(-4, kz.Auth(0, "digest", "u:p"))
                             + kazoo(2, kz.Exists("/b", None)))
    (r1,) = calls(actions)
    (auth,) = calls(s.coord_response(r1.token, ok({"stat": STAT})))
    assert auth.request == {"op": "add_auth", "scheme": "digest", "auth": b"u:p"}
    (r2,) = calls(s.coord_response(auth.token, ok()))
    assert r2.request["path"] == "/b"
    assert s.auth[-1].authScheme == "digest" and s.auth[-1].user == "u"


def test_ping_reply_carries_xid_minus_two():
    s = opened()
    (p,) = calls(s.receive_data(kazoo(-2, kz.PingInstance)))
    assert p.request == {"op": "ping"}
    assert [(h.xid, h.err) for h in headers(sent(s.coord_response(p.token, ok(zxid=20))))] == [(-2, 0)]
    assert s.last_zxid == 20


# -- watches ------------------------------------------------------------------------------------------

def notifications(data: bytes) -> list[tuple[int, WatcherEvent]]:
    out = []
    for f in frames(data):
        r = Reader(f)
        h = ReplyHeader.read(r)
        if h.xid == -1:
            out.append((h.zxid, WatcherEvent.read(r)))
    return out


def watched_get(s: ZkSession, xid: int, path: str, wid: int) -> None:
    (c,) = calls(s.receive_data(kazoo(xid, kz.GetData(path, True))))
    assert c.request == {"op": "get", "path": path, "watch": True, "lin": False}
    s.coord_response(c.token, ok({"data": b"", "stat": STAT, "wid": wid}))


def test_watch_event_becomes_notification_once():
    s = opened()
    watched_get(s, 1, "/a", 5)
    assert s.watches == {WatchKey(WatchClass.DATA, "/a"): 5}
    out = sent(s.coord_event({"ev": "watch", "wid": 5, "type": "changed", "path": "/a", "zxid": 30}))
    assert [(z, e.type, e.state, e.path) for z, e in notifications(out)] == [(30, 3, 3, "/a")]
    assert s.watches == {}  # one-shot
    assert s.coord_event({"ev": "watch", "wid": 5, "type": "deleted", "path": "/a", "zxid": 31}) == []


def test_duplicate_watch_is_unwatched_at_the_server():
    s = opened()
    watched_get(s, 1, "/a", 5)
    (c,) = calls(s.receive_data(kazoo(2, kz.GetData("/a", True))))
    (unwatch,) = calls(s.coord_response(c.token, ok({"data": b"", "stat": STAT, "wid": 6})))
    assert unwatch.request == {"op": "unwatch", "wid": 6}
    assert s.watches == {WatchKey(WatchClass.DATA, "/a"): 5}
    assert s.coord_response(unwatch.token, ok()) == []  # internal: nothing for the client


def test_one_notification_per_change_per_connection():
    s = opened()
    watched_get(s, 1, "/a", 5)
    (c,) = calls(s.receive_data(frame(encode_request(2, OpCode.ADD_WATCH, __import__(
        "coord.zookeeper.records", fromlist=["AddWatchRequest"]).AddWatchRequest("/a", 0)))))
    assert c.request == {"op": "watch", "path": "/a", "kind": "persistent", "recursive": False}
    s.coord_response(c.token, ok({"wid": 6}))
    out = sent(s.coord_event({"ev": "watch", "wid": 5, "type": "changed", "path": "/a", "zxid": 40}))
    out += sent(s.coord_event({"ev": "watch", "wid": 6, "type": "changed", "path": "/a", "zxid": 40}))
    assert len(notifications(out)) == 1
    out = sent(s.coord_event({"ev": "watch", "wid": 6, "type": "changed", "path": "/a", "zxid": 41}))
    assert len(notifications(out)) == 1  # the persistent watch stays


def test_event_is_not_sent_before_the_reply_that_set_its_watch():
    s = opened()
    w1, w2 = calls(s.receive_data(kazoo(1, kz.SetData("/x", b"1", -1)) + kazoo(2, kz.SetData("/y", b"2", -1))))
    watch_key_wid = 9
    s._remember(WatchKey(WatchClass.DATA, "/z"), watch_key_wid, [])
    assert sent(s.coord_response(w2.token, ok({"stat": STAT}, zxid=50))) == b""
    # an event after w2's answer, w1 still outstanding: it must follow w1 and w2
    assert sent(s.coord_event({"ev": "watch", "wid": 9, "type": "changed", "path": "/z", "zxid": 51})) == b""
    out = sent(s.coord_response(w1.token, ok({"stat": STAT}, zxid=52)))
    assert [h.xid for h in headers(out)] == [1, 2, -1]


def test_event_goes_before_replies_still_waiting_for_coord():
    s = opened()
    watched_get(s, 1, "/z", 9)
    (w,) = calls(s.receive_data(kazoo(2, kz.SetData("/x", b"1", -1))))
    out = sent(s.coord_event({"ev": "watch", "wid": 9, "type": "deleted", "path": "/z", "zxid": 60}))
    assert [h.xid for h in headers(out)] == [-1]  # at once: xid 2's answer will come later
    assert [h.xid for h in headers(sent(s.coord_response(w.token, ok({"stat": STAT}, zxid=61))))] == [2]


def test_set_watches_replays_from_the_clients_zxid_and_resync_is_a_change():
    s = opened()
    body = SetWatches(77, ("/d",), ("/e",), ("/c",))
    cs = calls(s.receive_data(frame(encode_request(-8, OpCode.SET_WATCHES, body))))
    assert [c.request for c in cs] == [
        {"op": "watch", "path": "/d", "kind": "data", "recursive": False, "from": 77},
        {"op": "watch", "path": "/e", "kind": "exists", "recursive": False, "from": 77},
        {"op": "watch", "path": "/c", "kind": "children", "recursive": False, "from": 77},
    ]
    out = b""
    for k, c in enumerate(cs):
        out += sent(s.coord_response(c.token, ok({"wid": 20 + k})))
    assert [(h.xid, h.err) for h in headers(out)] == [(-8, 0)]
    assert s.watches[WatchKey(WatchClass.CHILD, "/c")] == 22
    out = sent(s.coord_event({"ev": "resync", "wid": 22, "zxid": 90}))
    assert [(e.type, e.path) for _, e in notifications(out)] == [(4, "/c")]


def test_remove_and_check_watches():
    s = opened()
    watched_get(s, 1, "/a", 5)
    (c,) = calls(s.receive_data(frame(encode_request(2, OpCode.REMOVE_WATCHES, RemoveWatchesRequest("/a", 3)))))
    assert c.request == {"op": "unwatch", "wid": 5}
    assert [(h.xid, h.err) for h in headers(sent(s.coord_response(c.token, ok())))] == [(2, 0)]
    assert s.watches == {}
    out = sent(s.receive_data(frame(encode_request(3, OpCode.CHECK_WATCHES, RemoveWatchesRequest("/a", 2)))))
    assert [(h.xid, h.err) for h in headers(out)] == [(3, Code.NO_WATCHER)]


# -- ending ---------------------------------------------------------------------------------------------

def test_close_session_replies_then_closes():
    s = opened()
    (c,) = calls(s.receive_data(kazoo(5, kz.CloseInstance) + kazoo(6, kz.Exists("/late", None))))
    assert c.request == {"op": "close"}
    actions = s.coord_response(c.token, ok())
    assert [h.xid for h in headers(sent(actions))] == [5]
    assert isinstance(actions[-1], CloseConnection) and s.state is State.CLOSED
    assert calls(actions) == []  # the request after closeSession is never run


def test_failed_auth_replies_auth_failed_and_closes():
    s = opened()
    (c,) = calls(s.receive_data(kazoo(-4, kz.Auth(0, "digest", "u:bad"))))
    actions = s.coord_response(c.token, {"ok": False, "zxid": 9, "err": "AuthFailed", "msg": "no"})
    assert [(h.xid, h.err) for h in headers(sent(actions))] == [(-4, Code.AUTH_FAILED)]
    assert isinstance(actions[-1], CloseConnection)


def test_coord_closing_event_closes():
    s = opened()
    actions = s.coord_event({"ev": "closing", "reason": "session expired"})
    assert isinstance(actions[-1], CloseConnection)


def test_outstanding_bound_holds_requests_back_then_resumes():
    s = opened(limits=Limits(max_outstanding=2))
    data = b"".join(kazoo(i, kz.Exists("/a", None)) for i in range(1, 4))
    cs = calls(s.receive_data(data))
    assert len(cs) == 2 and not s.wants_data
    actions = s.coord_response(cs[0].token, ok({"stat": STAT}))
    (third,) = calls(actions)  # decoded once a reply went out
    assert third.request["path"] == "/a"


def test_who_am_i_lists_the_ip_and_added_auth():
    s = opened()
    (payload,) = frames(sent(s.receive_data(frame(struct.pack("!ii", 3, OpCode.WHO_AM_I)))))
    from coord.zookeeper.records import WhoAmIResponse
    r = Reader(payload)
    ReplyHeader.read(r)
    assert WhoAmIResponse.read(r).clientInfo[0].user == "10.0.0.9"


def test_getdata_request_with_watch_false_sets_nothing():
    s = opened()
    (c,) = calls(s.receive_data(frame(encode_request(1, OpCode.GET_DATA, GetDataRequest("/a", False)))))
    s.coord_response(c.token, ok({"data": b"", "stat": STAT}))
    assert s.watches == {}


def test_events_replayed_before_the_watch_answer_are_delivered():
    s = opened()
    body = SetWatches(77, ("/d",), (), ())
    (c,) = calls(s.receive_data(frame(encode_request(-8, OpCode.SET_WATCHES, body))))
    # coord replays the missed change first, then answers the registration
    assert s.coord_event({"ev": "watch", "wid": 31, "type": "changed", "path": "/d", "zxid": 80}) == []
    assert s.coord_event({"ev": "watch", "wid": 99, "type": "changed", "path": "/x", "zxid": 80}) == []
    out = sent(s.coord_response(c.token, ok({"wid": 31}, zxid=81)))
    assert [h.xid for h in headers(out)] == [-1, -8]  # the notification, then setWatches' reply
    assert [(e.type, e.path) for _, e in notifications(out)] == [(3, "/d")]
    assert s.watches == {}  # the one-shot watch fired
    assert s._orphans == {}  # and nothing else is kept once no re-registration is in flight


def test_session_expired_answer_closes_after_the_reply():
    s = opened()
    (c,) = calls(s.receive_data(kazoo(3, kz.Exists("/a", None))))
    actions = s.coord_response(c.token, {"ok": False, "zxid": 9, "err": "SessionExpired", "msg": "gone"})
    assert [(h.xid, h.err) for h in headers(sent(actions))] == [(3, Code.SESSION_EXPIRED)]
    assert isinstance(actions[-1], CloseConnection)


def test_connection_info_feeds_the_four_letter_words():
    from coord.zookeeper.fourletter import render

    s = opened()
    (c,) = calls(s.receive_data(kazoo(1, kz.GetData("/a", None))))
    s.coord_response(c.token, ok({"data": b"", "stat": STAT}, zxid=12))
    info = s.connection_info("127.0.0.1:5555")
    assert (info["received"], info["sent"], info["sid"], info["last_op"], info["last_zxid"]) == \
        (2, 2, 0x42, "GETD", 12)
    line = render("cons", {"role": "leader", "voters": [1, 2], "connections": [info]}).decode()
    assert line.startswith(" /127.0.0.1:5555[1](queued=0,recved=2,sent=2,sid=0x42,lop=GETD,")
