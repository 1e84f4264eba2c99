"""Containers and TTL nodes in the namespace: what they are, when they are
due, and that a ``reap`` deletes exactly the due ones, the same way on every
server (the check uses the command's clock, not the applying server's).
Also the two reads that came with them: a subtree's node count and a
session's ephemerals."""

from __future__ import annotations

import pytest

from coord.namespace import NamespaceStateMachine
from coord.namespace.commands import parse_request
from coord.namespace.records import CONTAINER, MAX_TTL_MS, ttl_of
from coordclient.errors import BadArgumentsError
from tests.test_namespace import NS, field, state

# ZooKeeper's ephemeralOwner values (EphemeralType), as jute's signed longs
ZK_CONTAINER = -(1 << 63)  # 0x8000000000000000


def zk_ttl_owner(ttl_ms: int) -> int:
    return (0xFF00000000000000 | ttl_ms) - (1 << 64)


@pytest.fixture
def ns():
    return NS()


def test_owner_fields_are_zookeepers(ns):
    ns.ok("create", path="/c", container=True)
    ns.ok("create", path="/t", ttl=5000)
    assert field(ns.stat("/c"), "ephemeral_owner") == CONTAINER == ZK_CONTAINER
    assert field(ns.stat("/t"), "ephemeral_owner") == zk_ttl_owner(5000)
    assert ttl_of(zk_ttl_owner(5000)) == 5000 and ttl_of(ZK_CONTAINER) == 0 and ttl_of(7) == 0
    assert ns.sm.reapable_count == 2


def test_containers_and_ttl_nodes_may_have_children(ns):
    ns.ok("create", path="/c", container=True)
    ns.ok("create", path="/t", ttl=1000)
    ns.ok("create", path="/c/x")
    ns.ok("create", path="/t/y", sq=True)
    assert ns.sm.children("/c") == ["x"]


@pytest.mark.parametrize("fields", [
    {"eph": True, "container": True},
    {"eph": True, "ttl": 10},
    {"container": True, "ttl": 10},
    {"ttl": MAX_TTL_MS + 1},
    {"ttl": -1},
])
def test_bad_combinations_are_refused(ns, fields):
    sid = ns.session()
    with pytest.raises(BadArgumentsError):
        ns.do("create", path="/n", sid=sid, **fields)
    with pytest.raises(BadArgumentsError):  # as the receiving server parses a client's request
        parse_request({"op": "create", "path": "/n", "seq": 1, **fields}, sid=sid, limit=1 << 20)
    assert ns.stat("/n") is None


def test_a_container_is_due_once_its_last_child_is_gone(ns):
    ns.ok("create", path="/c", container=True)
    assert ns.sm.reap_candidates(ns.t + 10**9, 100) == []  # never had a child: kept (ZooKeeper too)
    ns.ok("create", path="/c/a")
    assert ns.sm.reap_candidates(ns.t, 100) == []  # has one
    ns.ok("delete", path="/c/a")
    assert ns.sm.reap_candidates(ns.t, 100) == ["/c"]
    calls = len(ns.calls)
    r = ns.ok("reap", paths=["/c"])
    assert r == {"reaped": ["/c"]}
    assert ns.stat("/c") is None and ns.sm.reapable_count == 0
    assert ns.calls[calls][1] == [("deleted", "/c"), ("children", "/")]


def test_a_reap_keeps_a_node_that_is_no_longer_due(ns):
    ns.ok("create", path="/c", container=True)
    ns.ok("create", path="/c/a")
    ns.ok("delete", path="/c/a")
    due = ns.sm.reap_candidates(ns.t, 100)
    ns.ok("create", path="/c/b")  # between the leader's look and the apply
    before = state(ns)
    assert ns.ok("reap", paths=due) == {"reaped": []}
    after = state(ns)
    assert after["nodes"] == before["nodes"]


def test_a_ttl_node_is_due_when_childless_and_unchanged_for_its_ttl(ns):
    ns.ok("create", path="/t", ttl=1000, t=10_000)
    assert ns.sm.reap_candidates(11_000, 100) == []  # exactly ttl: not yet (elapsed > ttl)
    assert ns.sm.reap_candidates(11_001, 100) == ["/t"]
    ns.ok("set", path="/t", data=b"x", t=10_500)  # a change restarts the clock
    assert ns.sm.reap_candidates(11_001, 100) == []
    ns.ok("create", path="/t/kid", t=10_600)
    assert ns.sm.reap_candidates(99_999, 100) == []  # has a child
    ns.ok("delete", path="/t/kid", t=10_700)
    # the reap's own clock decides, whoever applies it
    assert ns.ok("reap", paths=["/t"], t=11_400) == {"reaped": []}
    assert ns.ok("reap", paths=["/t"], t=11_501) == {"reaped": ["/t"]}
    assert ns.stat("/t") is None


def test_reap_ignores_plain_ephemeral_and_missing_nodes(ns):
    sid = ns.session()
    ns.ok("create", path="/p")
    ns.ok("create", path="/e", eph=True, sid=sid)
    assert ns.ok("reap", paths=["/p", "/e", "/nope", "/", "/p"]) == {"reaped": []}
    assert ns.stat("/p") is not None and ns.stat("/e") is not None


def test_a_failed_multi_leaves_no_reapable_behind(ns):
    res = ns.do("multi", ops=[{"op": "create", "path": "/c", "container": True},
                              {"op": "delete", "path": "/missing"}])
    assert not res["ok"]
    assert ns.sm.reapable_count == 0 and ns.stat("/c") is None


def test_reapable_survives_a_snapshot(ns):
    ns.ok("create", path="/c", container=True)
    ns.ok("create", path="/c/a")
    ns.ok("delete", path="/c/a")
    ns.ok("create", path="/t", ttl=10)
    other = NamespaceStateMachine()
    other.restore(ns.sm.snapshot())
    assert sorted(other._tree.reapable) == ["/c", "/t"]
    assert other.reap_candidates(ns.t + 1000, 10) == ["/c", "/t"]


def test_a_snapshot_listing_a_plain_node_as_reapable_is_refused(ns):
    import cbor2

    ns.ok("create", path="/p")
    snap = ns.sm.snapshot()
    dec = cbor2.loads(snap)  # the header item
    head = cbor2.dumps(dec)
    assert snap.startswith(head)
    bad = cbor2.dumps({**dec, "reapable": ["/p"]}) + snap[len(head):]
    with pytest.raises(ValueError, match="not"):
        NamespaceStateMachine().restore(bad)


def test_descendant_count(ns):
    assert ns.sm.descendant_count("/") == 0
    for p in ("/a", "/a/b", "/a/b/c", "/a/d", "/e"):
        ns.ok("create", path=p)
    assert ns.sm.descendant_count("/") == 5
    assert ns.sm.descendant_count("/a") == 3
    assert ns.sm.descendant_count("/a/b/c") == 0
    with pytest.raises(Exception, match="does not exist"):
        ns.sm.descendant_count("/zz")


def test_ephemerals_of_a_session_by_prefix(ns):
    s1, s2 = ns.session(), ns.session()
    ns.ok("create", path="/a")
    ns.ok("create", path="/ab", eph=True, sid=s1)
    ns.ok("create", path="/a/x", eph=True, sid=s1)
    ns.ok("create", path="/a/y", eph=True, sid=s2)
    assert ns.sm.ephemerals(s1) == ["/a/x", "/ab"]
    assert ns.sm.ephemerals(s1, "/a") == ["/a/x", "/ab"]  # a string prefix, as ZooKeeper's
    assert ns.sm.ephemerals(s1, "/a/") == ["/a/x"]
    assert ns.sm.ephemerals(s2, "/") == ["/a/y"]
    assert ns.sm.ephemerals(12345) == []
