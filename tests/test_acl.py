"""ACLs, ZooKeeper's model (coord/namespace/acl.py), in the state machine.

Commands are built the way the receiving server builds them
(``parse_request`` with the request's identities, ``encode``, ``entry_data``),
so these tests run the real path of a write.  The matrix: every operation x
every permission granted or missing x digest, ip and x509 identities.
"""

from __future__ import annotations

import pytest

from coord.namespace.acl import (
    ADMIN, ALL, CREATE, DELETE, OPEN_ACL, READ, WRITE, ACLEntry, Auth, acl_to_wire, allowed, digest_id,
    parse_acl_text,
)
from coord.namespace.commands import (
    Command, SessionOpen, AddAuth, encode, encode_command, entry_data, parse_request,
)
from coord.namespace.state import NamespaceStateMachine
from coord.raft.types import Entry, EntryKind
from coordclient.errors import AuthFailedError, InvalidACLError, NoAuthError

SUPER = Auth(frozenset(), True)
BOB = ("digest", digest_id("bob:secret"))
IP = ("ip", "10.1.2.3")
X509 = ("x509", "CN=svc,O=acme")
IDENTITIES = {"digest": BOB, "ip": IP, "x509": X509}
ACL_ID = {"digest": BOB[1], "ip": "10.0.0.0/8", "x509": X509[1]}


class SM:
    def __init__(self):
        self.sm = NamespaceStateMachine()
        self.seq = 0
        self.sid = self.apply(encode(Command("session_open", SessionOpen(10_000))))["r"]["sid"]

    def apply(self, data: bytes) -> dict:
        return self.sm.apply(Entry(1, self.sm.last_zxid + 1, EntryKind.NORMAL, entry_data(data, t=1000)))

    def write(self, auth: Auth, **req) -> dict:
        self.seq += 1
        cmd = parse_request({**req, "seq": self.seq}, sid=self.sid, limit=1 << 20, auth=auth)
        return self.apply(encode(cmd))


def acl(kind: str, perms: int) -> list:
    return [[perms, kind, ACL_ID[kind]]]


def setup(kind: str, perms: int) -> SM:
    """/p with the ACL under test, /p/n (open) and /q (with the ACL under test)."""
    s = SM()
    assert s.write(SUPER, op="create", path="/p", acl=acl(kind, perms))["ok"]
    assert s.write(SUPER, op="create", path="/p/n", data=b"x")["ok"]
    assert s.write(SUPER, op="create", path="/q", data=b"q", acl=acl(kind, perms))["ok"]
    return s


# operation -> (the permission it needs, how to run it as `who`)
def _create(s, who):
    return s.write(who, op="create", path="/p/new")


def _delete(s, who):
    return s.write(who, op="delete", path="/p/n")


def _set(s, who):
    return s.write(who, op="set", path="/q", data=b"z")


def _check(s, who):
    return s.write(who, op="multi", ops=[{"op": "check", "path": "/q", "version": 0}])


def _set_acl(s, who):
    return s.write(who, op="set_acl", path="/q", acl=[[ALL, "world", "anyone"]])


def _read(fn):
    def run(s, who):
        try:
            fn(s.sm, who)
        except NoAuthError as e:
            return {"ok": False, "err": "NoAuth", "msg": e.message}
        return {"ok": True}
    return run


OPS = {
    "create": (CREATE, _create),
    "delete": (DELETE, _delete),
    "set": (WRITE, _set),
    "check": (READ, _check),
    "set_acl": (ADMIN, _set_acl),
    "get": (READ, _read(lambda sm, who: sm.get("/q", who))),
    "children": (READ, _read(lambda sm, who: sm.children("/p", who))),
    "get_acl": (READ | ADMIN, _read(lambda sm, who: sm.get_acl("/q", who))),  # either one
}


@pytest.mark.parametrize("kind", sorted(IDENTITIES))
@pytest.mark.parametrize("op", sorted(OPS))
def test_acl_matrix(kind, op):
    need, run = OPS[op]
    who = Auth(frozenset({IDENTITIES[kind]}))
    stranger = Auth(frozenset({("digest", digest_id("eve:x")), ("ip", "192.168.0.9"), ("x509", "CN=eve")}))
    for perms, expect in ((need & -need, True), (ALL & ~need, False), (ALL, True)):
        s = setup(kind, perms)
        before = s.sm.dump()
        res = run(s, who)
        assert res["ok"] is expect, (op, kind, perms, res)
        if not expect:
            assert res["err"] == "NoAuth"
            assert s.sm.dump()["nodes"] == before["nodes"]  # a denied operation changes nothing
        assert run(setup(kind, perms), stranger)["ok"] is False  # others never get in
        assert run(setup(kind, perms), SUPER)["ok"] is True  # a superuser always does


def test_get_acl_also_allowed_with_admin_and_exists_needs_nothing():
    s = setup("digest", ADMIN)
    who = Auth(frozenset({BOB}))
    acl_wire, st = s.sm.get_acl("/q", who)
    assert acl_wire == acl("digest", ADMIN)
    assert s.sm.exists("/q") is not None


def test_a_multi_with_one_denied_op_fails_whole_at_its_index_and_changes_nothing():
    s = setup("digest", READ)
    who = Auth(frozenset({BOB}))
    before = s.sm.dump()
    res = s.write(who, op="multi", ops=[{"op": "create", "path": "/free"},
                                        {"op": "set", "path": "/q", "data": b"no"}])
    assert not res["ok"] and res["err"] == "NoAuth" and res["index"] == 1
    assert s.sm.exists("/free") is None and s.sm.get("/q")[0] == b"q"
    after = s.sm.dump()
    assert after["nodes"] == before["nodes"]


def test_set_acl_checks_the_acl_version_and_counts_aversion():
    s = setup("digest", ALL)
    who = Auth(frozenset({BOB}))
    r = s.write(who, op="set_acl", path="/q", acl=[[READ, "world", "anyone"]], version=5)
    assert r["err"] == "BadVersion"
    r = s.write(who, op="set_acl", path="/q", acl=[[READ | ADMIN, "world", "anyone"]], version=0)
    assert r["ok"] and r["r"]["stat"][-1] == 1  # aversion
    assert s.sm.get_acl("/q", who)[0] == [[READ | ADMIN, "world", "anyone"]]
    assert s.write(who, op="set", path="/q", data=b"w")["err"] == "NoAuth"  # WRITE is gone now


def test_the_auth_scheme_becomes_the_sessions_identities():
    s = SM()
    who = Auth(frozenset({BOB, X509, IP}))
    assert s.write(who, op="create", path="/mine", acl=[[ALL, "auth", ""]])["ok"]
    got = s.sm.get_acl("/mine", who)[0]
    assert sorted(map(tuple, got)) == sorted([(ALL, "digest", BOB[1]), (ALL, "x509", X509[1])])  # not ip
    r = s.write(Auth(frozenset({IP})), op="create", path="/nobody", acl=[[ALL, "auth", ""]])
    assert r["err"] == "InvalidACL"


def test_create_with_parents_needs_create_on_the_nearest_existing_ancestor():
    s = setup("digest", READ)
    who = Auth(frozenset({BOB}))
    assert s.write(who, op="create", path="/p/a/b", parents=True)["err"] == "NoAuth"
    assert s.sm.exists("/p/a") is None
    s2 = setup("digest", CREATE | READ)
    assert s2.write(who, op="create", path="/p/a/b", parents=True, acl=acl("digest", ALL))["ok"]
    assert s2.sm.get_acl("/p/a", who)[0] == acl("digest", ALL)  # made parents get the node's ACL


def test_recursive_delete_needs_delete_on_every_parent_in_the_subtree():
    s = SM()
    who = Auth(frozenset({BOB}))
    assert s.write(SUPER, op="create", path="/t", acl=[[ALL, "world", "anyone"]])["ok"]
    assert s.write(SUPER, op="create", path="/t/a", acl=acl("digest", READ))["ok"]
    assert s.write(SUPER, op="create", path="/t/a/leaf")["ok"]
    r = s.write(who, op="delete", path="/t/a", recursive=True)
    assert r["err"] == "NoAuth" and s.sm.exists("/t/a/leaf") is not None


def test_old_commands_without_identities_apply_unchecked():
    s = setup("digest", READ)
    old = encode_command("set", t=5, sid=s.sid, seq=99, path="/q", data=b"old")  # a version 1 entry
    res = s.sm.apply(Entry(1, s.sm.last_zxid + 1, EntryKind.NORMAL, old))
    assert res["ok"]  # logged before ACLs existed: applied as it was then


def test_add_auth_adds_digest_identities_to_the_session():
    s = SM()
    r = s.apply(encode(Command("add_auth", AddAuth((BOB,)), sid=s.sid)))
    assert r["ok"] and s.sm.session_ids(s.sid) == (BOB,)
    s.apply(encode(Command("add_auth", AddAuth((BOB,)), sid=s.sid)))
    assert s.sm.session_ids(s.sid) == (BOB,)  # once


def test_watch_events_only_reach_readers():
    s = setup("digest", READ)
    assert s.sm.may_read("/q", Auth(frozenset({BOB})))
    assert not s.sm.may_read("/q", Auth(frozenset({IP})))
    assert s.sm.may_read("/gone/deep", Auth(frozenset({IP})))  # the root is open
    assert s.sm.may_read("/p/n/gone", Auth(frozenset({IP})))  # /p/n is open


def test_snapshots_keep_acls_and_aversions_and_old_ones_read_as_open():
    s = setup("ip", READ | ADMIN)
    s.write(SUPER, op="set_acl", path="/q", acl=acl("ip", ALL))
    data = s.sm.snapshot()
    fresh = NamespaceStateMachine()
    fresh.restore(data)
    assert fresh.dump() == s.sm.dump()
    # format /1 (before ACLs; tests/data/make_namespace_snapshots.py): every node open, aversion 0
    import os

    import cbor2
    with open(os.path.join(os.path.dirname(__file__), "data", "namespace-v1.cbor"), "rb") as f:
        old_snapshot = cbor2.loads(f.read())["snapshot"]
    old = NamespaceStateMachine()
    old.restore(old_snapshot)
    for path in ("/p", "/p/n"):
        assert old.get_acl(path)[0] == acl_to_wire(OPEN_ACL) and old.exists(path)[-1] == 0


def test_acl_text_forms_and_bad_acls():
    assert parse_acl_text("digest:bob:HASH=:cdrwa") == ACLEntry(ALL, "digest", "bob:HASH=")
    assert parse_acl_text("world:anyone:r") == ACLEntry(READ, "world", "anyone")
    assert parse_acl_text("ip:10.0.0.0/8:rw") == ACLEntry(READ | WRITE, "ip", "10.0.0.0/8")
    assert parse_acl_text("x509:CN=svc:rw") == ACLEntry(READ | WRITE, "x509", "CN=svc")
    for bad in ["world:someone:r", "digest:nocolon:r", "ip:999.1.1.1:r", "foo:x:r", "world:anyone:q", "world"]:
        with pytest.raises(InvalidACLError):
            parse_acl_text(bad)
    with pytest.raises(AuthFailedError) as ei:
        digest_id("no-colon-password")
    assert "password" not in str(ei.value).replace("user:password", "")
    import base64, hashlib
    assert digest_id("super:secret") == "super:" + base64.b64encode(hashlib.sha1(b"super:secret").digest()).decode()
    assert allowed(OPEN_ACL, Auth(), READ)
