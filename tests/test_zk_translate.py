"""ZooKeeper requests become exactly the requests a coord client sends, and
coord's answers become the replies ZooKeeper would give."""

from __future__ import annotations

import pytest
from coordclient import ops
from coordclient.protocol import Err

from coord.zookeeper import translate as t
from coord.zookeeper.codes import Code, OpCode
from coord.zookeeper.membership import parse_reconfig, render_config
from coord.zookeeper.records import (
    ACL,
    AddWatchRequest,
    CheckVersionRequest,
    ConnectRequest,
    Create2Response,
    CreateRequest,
    CreateResponse,
    CreateTTLRequest,
    DeleteRequest,
    ErrorResponse,
    ExistsRequest,
    GetACLRequest,
    GetChildren2Request,
    GetChildrenRequest,
    GetAllChildrenNumberRequest,
    GetDataRequest,
    GetEphemeralsRequest,
    Id,
    MultiOp,
    MultiRequest,
    ReconfigRequest,
    SetACLRequest,
    SetDataRequest,
    Stat,
    SyncRequest,
)

OPEN = (ACL(31, Id("world", "anyone")),)
COORD_STAT = [10, 11, 12, 1000, 2000, 3, 4, 0x42, 5, 2]
CTX = t.Context()


def ok(r=None, zxid=8):
    return {"ok": True, "zxid": zxid, "r": r or {}}


def fail(err, **extra):
    return {"ok": False, "zxid": 8, "err": err, "msg": "m", "path": None, **extra}


def run(op, body, *responses, ctx=CTX) -> t.Reply:
    planned = t.plan(op, body, ctx)
    assert isinstance(planned, t.Plan), planned
    return t.finish(op, body, planned, responses, ctx)


def test_stat_field_order():
    st = t.stat(COORD_STAT)
    assert st == Stat(czxid=10, mzxid=11, ctime=1000, mtime=2000, version=3, cversion=4, aversion=0,
                      ephemeralOwner=0x42, dataLength=5, numChildren=2, pzxid=12)
    assert t.stat([1 << 40] * 10).version == 0  # a 32-bit field wraps as Java's int, never an error


def test_every_coord_error_has_a_zookeeper_code():
    for e in Err:
        code = t.error_code(e.value)
        assert code in Code.__members__.values()
        assert (code == Code.SYSTEM_ERROR) == (e in (Err.SYSTEM_ERROR, Err.NO_SPACE))
    assert t.error_code("NoSpace") == Code.SYSTEM_ERROR == -1  # a full disk: ZooKeeper has no code of its own
    assert t.error_code("NoSuchThing") == Code.SYSTEM_ERROR
    assert t.error_code(None) == Code.SYSTEM_ERROR


@pytest.mark.parametrize("flags, eph, sq, container", [(0, False, False, False), (1, True, False, False),
                                                       (2, False, True, False), (3, True, True, False),
                                                       (4, False, False, True)])
def test_create_is_coords_create(flags, eph, sq, container):
    op = OpCode.CREATE_CONTAINER if container else OpCode.CREATE
    planned = t.plan(op, CreateRequest("/a", b"d", OPEN, flags), CTX)
    expected = ops.create("/a", b"d", ephemeral=eph, sequential=sq, container=container)  # what the SDK sends
    assert planned == t.Plan(({**expected, "acl": [[31, "world", "anyone"]]},))


@pytest.mark.parametrize("flags, sq", [(5, False), (6, True)])
def test_create_ttl_is_coords_create_with_a_ttl(flags, sq):
    planned = t.plan(OpCode.CREATE_TTL, CreateTTLRequest("/a", b"d", OPEN, flags, 1500), CTX)
    expected = ops.create("/a", b"d", sequential=sq, ttl=1.5)
    assert planned == t.Plan(({**expected, "acl": [[31, "world", "anyone"]]},))


def test_create_replies():
    r = run(OpCode.CREATE, CreateRequest("/a", b"", OPEN, 2), ok({"path": "/a0000000001", "stat": COORD_STAT}))
    assert r == t.Reply(body=CreateResponse("/a0000000001"))
    r = run(OpCode.CREATE2, CreateRequest("/a", b"", OPEN, 0), ok({"path": "/a", "stat": COORD_STAT}))
    assert r.body == Create2Response("/a", t.stat(COORD_STAT))
    r = run(OpCode.CREATE_CONTAINER, CreateRequest("/a", b"", OPEN, 4), fail("NodeExists"))
    assert (r.err, r.body) == (Code.NODE_EXISTS, None)


def test_create_refusals():
    # as ZooKeeper's EphemeralType.validateTTL: a TTL mode needs 0 < ttl <= 2^40-1, other modes no ttl
    for ttl in (0, -1, 1 << 40):
        assert t.plan(OpCode.CREATE_TTL, CreateTTLRequest("/a", b"", OPEN, 5, ttl), CTX).err == Code.BAD_ARGUMENTS
    assert t.plan(OpCode.CREATE_TTL, CreateTTLRequest("/a", b"", OPEN, 0, 1000), CTX).err == Code.BAD_ARGUMENTS
    assert t.plan(OpCode.CREATE, CreateRequest("/a", b"", OPEN, 6), CTX).err == Code.BAD_ARGUMENTS
    assert t.plan(OpCode.CREATE, CreateRequest("/a", b"", OPEN, 99), CTX).err == Code.BAD_ARGUMENTS
    assert t.plan(OpCode.CREATE, CreateRequest("/a", b"", (), 0), CTX).err == Code.INVALID_ACL
    digest = (ACL(31, Id("digest", "u:hash")),)
    assert t.plan(OpCode.CREATE, CreateRequest("/a", b"", digest, 0), CTX).calls[0]["acl"] == [[31, "digest", "u:hash"]]
    sasl = (ACL(1, Id("sasl", "bob")),)
    assert t.plan(OpCode.CREATE, CreateRequest("/a", b"", sasl, 0), CTX).err == Code.INVALID_ACL
    assert t.plan(OpCode.CREATE, CreateRequest("/zookeeper/x", b"", OPEN, 0), CTX).err == Code.NO_AUTH
    assert t.plan(OpCode.CREATE, CreateRequest(None, b"", OPEN, 0), CTX).err == Code.BAD_ARGUMENTS


def test_delete_set_and_versions():
    assert t.plan(OpCode.DELETE, DeleteRequest("/a", 3), CTX) == t.Plan((ops.delete("/a", version=3),))
    assert t.plan(OpCode.SET_DATA, SetDataRequest("/a", b"v", -1), CTX) == t.Plan((ops.set("/a", b"v"),))
    assert t.plan(OpCode.SET_DATA, SetDataRequest("/a", None, 2), CTX).calls[0]["data"] == b""
    assert t.plan(OpCode.DELETE, DeleteRequest("/a", -7), CTX).err == Code.BAD_VERSION
    assert t.plan(OpCode.DELETE, DeleteRequest("/zookeeper", -1), CTX).err == Code.NO_AUTH
    assert run(OpCode.DELETE, DeleteRequest("/a", 3), fail("BadVersion")).err == Code.BAD_VERSION
    assert run(OpCode.DELETE, DeleteRequest("/a", 3), fail("NotEmpty")).err == Code.NOT_EMPTY
    r = run(OpCode.SET_DATA, SetDataRequest("/a", b"v", -1), ok({"stat": COORD_STAT}))
    assert r.body.stat == t.stat(COORD_STAT)


def test_reads_are_coords_reads_and_watches_are_recorded():
    planned = t.plan(OpCode.GET_DATA, GetDataRequest("/a", True), CTX)
    assert planned.calls == ({"op": "get", "path": "/a", "watch": True, "lin": False},)
    r = t.finish(OpCode.GET_DATA, GetDataRequest("/a", True), planned,
                 (ok({"data": b"x", "stat": COORD_STAT, "wid": 3}),), CTX)
    assert (r.body.data, r.add_watches) == (b"x", ((t.WatchKey(t.WatchClass.DATA, "/a"), 3),))
    assert run(OpCode.GET_DATA, GetDataRequest("/a", False), fail("NoNode")).err == Code.NO_NODE


def test_exists_of_a_missing_node_is_nonode_with_its_watch_kept():
    r = run(OpCode.EXISTS, ExistsRequest("/gone", True), ok({"stat": None, "wid": 4}))
    assert r.err == Code.NO_NODE and r.add_watches == ((t.WatchKey(t.WatchClass.DATA, "/gone"), 4),)
    r = run(OpCode.EXISTS, ExistsRequest("/a", False), ok({"stat": COORD_STAT}))
    assert r.body.stat.numChildren == 2


def test_children_and_children2():
    r = run(OpCode.GET_CHILDREN, GetChildrenRequest("/a", True), ok({"children": ["x", "y"], "wid": 9}))
    assert r.body.children == ("x", "y") and r.add_watches == ((t.WatchKey(t.WatchClass.CHILD, "/a"), 9),)
    planned = t.plan(OpCode.GET_CHILDREN2, GetChildren2Request("/a", False), CTX)
    assert planned.calls == ({"op": "children", "path": "/a", "watch": False, "stats": False, "node_stat": True,
                              "lin": False},)  # one read: the listing and the node's stat together
    r = t.finish(OpCode.GET_CHILDREN2, GetChildren2Request("/a", False), planned,
                 (ok({"children": ["x"], "stat": COORD_STAT}),), CTX)
    assert (r.body.children, r.body.stat) == (("x",), t.stat(COORD_STAT))
    r = t.finish(OpCode.GET_CHILDREN2, GetChildren2Request("/a", False), planned, (fail("NoNode"),), CTX)
    assert r.err == Code.NO_NODE


def test_root_lists_the_zookeeper_node():
    r = run(OpCode.GET_CHILDREN, GetChildrenRequest("/", False), ok({"children": ["app"]}))
    assert r.body.children == ("app", "zookeeper")
    r = run(OpCode.EXISTS, ExistsRequest("/", False), ok({"stat": COORD_STAT}))
    assert r.body.stat.numChildren == 3
    off = t.Context(options=t.Options(zookeeper_subtree=False))
    assert run(OpCode.GET_CHILDREN, GetChildrenRequest("/", False), ok({"children": ["app"]}), ctx=off
               ).body.children == ("app",)


STATUS = {"server_id": 1, "role": "leader", "voters": [1, 2], "learners": [3], "config_version": 0x1f,
          "members": {1: {"peer": "10.0.0.1:7001", "client": "10.0.0.1:8001", "zookeeper": "10.0.0.1:2181"},
                      2: {"peer": "10.0.0.2:7001", "client": "10.0.0.2:8001"},
                      3: {"peer": "10.0.0.3:7001"}}}


def test_config_text():
    assert render_config(STATUS).decode().splitlines() == [
        "server.1=10.0.0.1:7001:7001:participant;10.0.0.1:2181",
        "server.2=10.0.0.2:7001:7001:participant;10.0.0.2:8001",
        "server.3=10.0.0.3:7001:7001:observer;",
        "version=1f",
    ]


def test_zookeeper_subtree_is_served():
    planned = t.plan(OpCode.GET_DATA, GetDataRequest("/zookeeper/config", True), CTX)
    assert planned.calls == ({"op": "status"},)
    r = t.finish(OpCode.GET_DATA, GetDataRequest("/zookeeper/config", True), planned, (ok(STATUS),), CTX)
    assert r.body.data == render_config(STATUS) and r.body.stat.mzxid == 0x1f
    assert t.plan(OpCode.GET_CHILDREN, GetChildrenRequest("/zookeeper", False), CTX).body.children == \
        ("config", "quota")
    assert t.plan(OpCode.EXISTS, ExistsRequest("/zookeeper/quota", False), CTX).body.stat.numChildren == 0
    assert t.plan(OpCode.GET_DATA, GetDataRequest("/zookeeper/nothing", False), CTX).err == Code.NO_NODE
    assert t.plan(OpCode.SET_DATA, SetDataRequest("/zookeeper/config", b"", -1), CTX).err == Code.NO_AUTH


def test_multi_success():
    body = MultiRequest((MultiOp(OpCode.CHECK, CheckVersionRequest("/a", 1)),
                         MultiOp(OpCode.CREATE, CreateRequest("/a/b", b"1", OPEN, 0)),
                         MultiOp(OpCode.CREATE2, CreateRequest("/a/c", b"", OPEN, 1)),
                         MultiOp(OpCode.SET_DATA, SetDataRequest("/a", b"2", -1)),
                         MultiOp(OpCode.DELETE, DeleteRequest("/a/d", -1))))
    planned = t.plan(OpCode.MULTI, body, CTX)
    open_acl = {"acl": [[31, "world", "anyone"]]}
    assert planned.calls == ({"op": "multi", "ops": [ops.check("/a", 1), {**ops.create("/a/b", b"1"), **open_acl},
                                                     {**ops.create("/a/c", ephemeral=True), **open_acl},
                                                     ops.set("/a", b"2"), ops.delete("/a/d")]},)
    r = t.finish(OpCode.MULTI, body, planned, (ok({"results": [{}, {"path": "/a/b", "stat": COORD_STAT},
                                                                {"path": "/a/c", "stat": COORD_STAT},
                                                                {"stat": COORD_STAT}, {}]}),), CTX)
    assert r.err == 0
    assert [(x.type, type(x.record).__name__) for x in r.body.results] == [
        (OpCode.CHECK, "NoneType"), (OpCode.CREATE, "CreateResponse"), (OpCode.CREATE2, "Create2Response"),
        (OpCode.SET_DATA, "SetDataResponse"), (OpCode.DELETE, "NoneType")]


def test_multi_failure_is_reported_per_op_as_zookeeper_does():
    body = MultiRequest(tuple(MultiOp(OpCode.DELETE, DeleteRequest(f"/n{k}", -1)) for k in range(4)))
    r = run(OpCode.MULTI, body, fail("NoNode", index=1, results=[]))
    assert r.err == 0  # the header says OK, the results say why
    assert [x.record.err for x in r.body.results] == [0, Code.NO_NODE, Code.RUNTIME_INCONSISTENCY,
                                                      Code.RUNTIME_INCONSISTENCY]
    # an op refused before reaching coord fails the multi the same way
    bad = MultiRequest((MultiOp(OpCode.DELETE, DeleteRequest("/a", -1)),
                        MultiOp(OpCode.CREATE_TTL, CreateTTLRequest("/t", b"", OPEN, 5, 0))))
    r = t.plan(OpCode.MULTI, bad, CTX)
    assert [x.record.err for x in r.body.results] == [0, Code.BAD_ARGUMENTS]
    # a whole-request failure is the header's
    assert run(OpCode.MULTI, body, fail("SessionExpired")).err == Code.SESSION_EXPIRED
    # reads in a multi are refused
    mixed = MultiRequest((MultiOp(OpCode.GET_DATA, GetDataRequest("/a", False)),))
    assert t.plan(OpCode.MULTI, mixed, CTX).err == Code.MARSHALLING_ERROR


def test_multi_read_answers_each_op():
    body = MultiRequest((MultiOp(OpCode.GET_DATA, GetDataRequest("/a", False)),
                         MultiOp(OpCode.GET_CHILDREN, GetChildrenRequest("/b", False))))
    r = run(OpCode.MULTI_READ, body, ok({"data": b"x", "stat": COORD_STAT}), fail("NoNode"))
    assert r.body.results[0].record.data == b"x"
    assert (r.body.results[1].type, r.body.results[1].err) == (OpCode.ERROR, Code.NO_NODE)


def test_acls_map_to_coords_get_acl_and_set_acl():
    coord_acl = [[31, "digest", "u:h"], [1, "world", "anyone"]]
    assert t.plan(OpCode.GET_ACL, GetACLRequest("/a"), CTX).calls == ({"op": "get_acl", "path": "/a", "lin": False},)
    r = run(OpCode.GET_ACL, GetACLRequest("/a"), ok({"acl": coord_acl, "stat": COORD_STAT}))
    assert r.body.acl == (ACL(31, Id("digest", "u:h")), ACL(1, Id("world", "anyone")))
    assert run(OpCode.GET_ACL, GetACLRequest("/a"), fail("NoNode")).err == Code.NO_NODE
    assert run(OpCode.GET_ACL, GetACLRequest("/a"), fail("NoAuth")).err == Code.NO_AUTH
    digest = (ACL(31, Id("digest", "u:h")),)
    planned = t.plan(OpCode.SET_ACL, SetACLRequest("/a", digest, 2), CTX)
    assert planned.calls == ({"op": "set_acl", "path": "/a", "acl": [[31, "digest", "u:h"]], "version": 2},)
    assert run(OpCode.SET_ACL, SetACLRequest("/a", OPEN, -1), ok({"stat": COORD_STAT})).err == 0
    assert run(OpCode.SET_ACL, SetACLRequest("/a", OPEN, 5), fail("BadVersion")).err == Code.BAD_VERSION
    assert t.kind_of(OpCode.SET_ACL) is t.Kind.WRITE


def test_check_sync_and_add_watch():
    assert run(OpCode.CHECK, CheckVersionRequest("/a", 3), ok({"stat": COORD_STAT})).err == 0
    assert run(OpCode.CHECK, CheckVersionRequest("/a", 4), ok({"stat": COORD_STAT})).err == Code.BAD_VERSION
    assert run(OpCode.SYNC, SyncRequest("/a"), ok()).body.path == "/a"
    planned = t.plan(OpCode.ADD_WATCH, AddWatchRequest("/p", 1), CTX)
    assert planned.calls == ({"op": "watch", "path": "/p", "kind": "persistent", "recursive": True},)
    r = t.finish(OpCode.ADD_WATCH, AddWatchRequest("/p", 1), planned, (ok({"wid": 2}),), CTX)
    assert r.body == ErrorResponse(0) and r.add_watches == ((t.WatchKey(t.WatchClass.RECURSIVE, "/p"), 2),)
    assert t.plan(OpCode.ADD_WATCH, AddWatchRequest("/p", 7), CTX).err == Code.BAD_ARGUMENTS


@pytest.mark.parametrize("op", [OpCode.SASL, OpCode.DELETE_CONTAINER, 555])
def test_unsupported_ops_are_unimplemented(op):
    assert t.plan(op, None, CTX).err == Code.UNIMPLEMENTED


def test_get_all_children_number():
    planned = t.plan(OpCode.GET_ALL_CHILDREN_NUMBER, GetAllChildrenNumberRequest("/a"), CTX)
    assert planned == t.Plan(({"op": "descendants", "path": "/a", "lin": False},))
    assert run(OpCode.GET_ALL_CHILDREN_NUMBER, GetAllChildrenNumberRequest("/a"), ok({"count": 7})).body.totalNumber == 7
    # the root counts /zookeeper, /zookeeper/config and /zookeeper/quota, as ZooKeeper's does
    assert run(OpCode.GET_ALL_CHILDREN_NUMBER, GetAllChildrenNumberRequest("/"), ok({"count": 7})).body.totalNumber == 10
    assert t.plan(OpCode.GET_ALL_CHILDREN_NUMBER, GetAllChildrenNumberRequest("/zookeeper"), CTX).body.totalNumber == 2
    assert run(OpCode.GET_ALL_CHILDREN_NUMBER, GetAllChildrenNumberRequest("/x"), fail("NoNode")).err == Code.NO_NODE


def test_get_ephemerals():
    planned = t.plan(OpCode.GET_EPHEMERALS, GetEphemeralsRequest("/a"), CTX)
    assert planned == t.Plan(({"op": "ephemerals", "prefix": "/a", "lin": False},))
    assert t.plan(OpCode.GET_EPHEMERALS, GetEphemeralsRequest(None), CTX).calls[0]["prefix"] == "/"
    r = run(OpCode.GET_EPHEMERALS, GetEphemeralsRequest("/"), ok({"paths": ["/a", "/b"]}))
    assert r.body.ephemerals == ("/a", "/b")


def test_reconfig():
    req = ReconfigRequest("server.4=10.0.0.4:2888:3888:participant;2181,server.5=10.0.0.5:2888:3888:observer",
                          "2", None, -1)
    assert t.plan(OpCode.RECONFIG, req, CTX).err == Code.RECONFIG_DISABLED  # ZooKeeper's default
    on = t.Context(options=t.Options(reconfig_enabled=True))
    planned = t.plan(OpCode.RECONFIG, req, on)
    assert planned.calls == ({"op": "member_change",
                              "add_voters": [{"id": 4, "peer": "10.0.0.4:2888", "zookeeper": "10.0.0.4:2181"}],
                              "add_learners": [{"id": 5, "peer": "10.0.0.5:2888"}], "remove": [2],
                              "version": None},)
    with_host = ReconfigRequest("server.6=h6:1:2;0.0.0.0:2182", None, None, -1)
    assert t.plan(OpCode.RECONFIG, with_host, on).calls[0]["add_voters"][0]["zookeeper"] == "0.0.0.0:2182"
    r = t.finish(OpCode.RECONFIG, req, planned, (ok(STATUS),), on)
    assert r.body.data == render_config(STATUS)
    assert parse_reconfig(ReconfigRequest(None, "3", None, 17))["version"] == 17
    for bad in ("server.x=h:1", "server.4=h", "server.4=h:99999", "4", "server.4=h:1:2;port"):
        assert t.plan(OpCode.RECONFIG, ReconfigRequest(bad, None, None, -1), on).err == Code.BAD_ARGUMENTS
    assert t.plan(OpCode.RECONFIG, ReconfigRequest(None, None, "server.1=h:1:2", -1), on).err == \
        Code.UNIMPLEMENTED


def test_handshake_mapping():
    req = ConnectRequest(0, -5, 0, 0, bytes(16), True)
    assert t.hello_request(req) == {"op": "hello", "timeout_ms": 1, "sid": 0, "secret": None, "last_zxid": 0}
    resp, valid = t.connect_response(req, ok({"sid": 9, "secret": b"s" * 16, "timeout_ms": 4000}))
    assert valid and (resp.sessionId, resp.timeOut, resp.passwd, resp.readOnly) == (9, 4000, b"s" * 16, False)
    resp, valid = t.connect_response(req, fail("AuthFailed"))
    assert not valid and resp.timeOut == 0
    assert t.connect_response(req, fail("OperationTimeout")) == (None, False)
    assert t.connect_response(req, ok({"sid": "nonsense"})) == (None, False)


def test_malformed_coord_answers_are_system_errors_not_exceptions():
    for bad in ({}, {"ok": True, "r": {"stat": "x"}}, {"ok": True, "r": {"data": 5}}, None):
        r = run(OpCode.GET_DATA, GetDataRequest("/a", False), bad)
        assert (r.err, r.body) == (Code.SYSTEM_ERROR, None)
