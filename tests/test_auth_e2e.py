"""Authentication, ACLs and admin authorization against a real server.

One server configured with ``[auth]`` (a superuser, an admin, the default
ACL), driven over the client protocol the way any client would: digest
identities kept across a reconnect, nodes only their owner can touch,
watches that say nothing to those who may not read, admin operations
refused to everybody but admins, snapshots without session secrets, and
credentials that never reach the log.
"""

from __future__ import annotations

import pytest
import trio

from coord.namespace.acl import digest_id
from coordclient.wire import FramedStream
from tests.cluster import Cluster, dump_logs_on_failure

SUPER, OPS, BOB = "super:s3cret-super", "ops:s3cret-ops", "bob:s3cret-bob"


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    extra = "\n".join([
        "[auth]",
        f'superusers = ["digest:{digest_id(SUPER)}"]',
        f'admins = ["digest:{digest_id(OPS)}"]',
        'default_acl = ["world:anyone:cdrwa"]',
    ])
    c = Cluster(1, tmp_path_factory.mktemp("auth"), extra_config=extra)
    c.start()
    try:
        trio.run(c.wait_leader)
        yield c
    finally:
        c.close()


class Conn:
    def __init__(self, stream, fs):
        self.stream, self.fs, self.ids, self.events = stream, fs, 100, []
        self.seq = 0

    @classmethod
    async def open(cls, server, *, hello: bool = True, sid: int = 0, secret: bytes = b""):
        stream = await trio.open_tcp_stream(*server.client_addr(1))
        c = cls(stream, FramedStream(stream))
        if hello:
            r = await c.call(op="hello", timeout_ms=10_000, sid=sid, secret=secret or None, last_zxid=0)
            assert r["ok"], r
            c.sid, c.secret = r["r"]["sid"], r["r"]["secret"]
        return c

    async def call(self, **req):
        self.ids += 1
        req = {k: v for k, v in req.items() if v is not None}
        if req["op"] in ("create", "set", "delete", "multi", "set_acl"):
            self.seq += 1
            req["seq"] = self.seq
        await self.fs.send({"id": self.ids, **req})
        with trio.fail_after(10):
            while True:
                r = await self.fs.receive()
                if "ev" in r:
                    self.events.append(r)
                elif r.get("id") == self.ids:
                    return r

    async def close(self):
        await self.stream.aclose()


async def test_owner_only_nodes_and_identities_kept_across_a_reconnect(server):
    bob = await Conn.open(server)
    r = await bob.call(op="add_auth", scheme="digest", auth=BOB)
    assert r["ok"] and ["digest", digest_id(BOB)] in r["r"]["ids"] and not r["r"]["superuser"]
    acl = [[31, "digest", digest_id(BOB)]]
    assert (await bob.call(op="create", path="/bob", data=b"private", acl=acl))["ok"]
    assert (await bob.call(op="create", path="/bob/kid", data=b"k"))["ok"]  # default ACL (open)

    eve = await Conn.open(server)
    for req in ({"op": "get", "path": "/bob"}, {"op": "children", "path": "/bob"},
                {"op": "set", "path": "/bob", "data": b"x"}, {"op": "delete", "path": "/bob/kid"},
                {"op": "create", "path": "/bob/eve"}, {"op": "set_acl", "path": "/bob", "acl": acl},
                {"op": "multi", "ops": [{"op": "check", "path": "/bob", "version": 0}]}):
        r = await eve.call(**req)
        assert not r["ok"] and r["err"] == "NoAuth", (req, r)
    assert (await eve.call(op="exists", path="/bob"))["ok"]  # existence needs no permission
    assert (await eve.call(op="add_auth", scheme="digest", auth="bob:wrong"))["ok"]  # a digest of its own
    assert (await eve.call(op="get", path="/bob"))["err"] == "NoAuth"

    # Bob reconnects: the session keeps his identity.
    sid, secret = bob.sid, bob.secret
    await bob.close()
    bob2 = await Conn.open(server, sid=sid, secret=secret)
    r = await bob2.call(op="get", path="/bob")
    assert r["ok"] and r["r"]["data"] == b"private"
    r = await bob2.call(op="get_acl", path="/bob")
    assert r["r"]["acl"] == acl and r["r"]["stat"][-1] == 0

    # A superuser bypasses every ACL.
    su = await Conn.open(server)
    assert (await su.call(op="add_auth", scheme="digest", auth=SUPER))["r"]["superuser"]
    assert (await su.call(op="get", path="/bob"))["r"]["data"] == b"private"
    for c in (bob2, eve, su):
        await c.close()


async def test_watch_events_never_reach_a_connection_that_may_not_read(server):
    owner = await Conn.open(server)
    await owner.call(op="add_auth", scheme="digest", auth=BOB)
    assert (await owner.call(op="create", path="/hidden", acl=[[31, "digest", digest_id(BOB)]]))["ok"]
    spy = await Conn.open(server)
    assert (await spy.call(op="watch", path="/", kind="persistent", recursive=True))["ok"]
    await owner.call(op="set", path="/hidden", data=b"changed")
    await owner.call(op="create", path="/visible")
    await spy.call(op="ping")  # events queued before this answer have arrived
    paths = [e["path"] for e in spy.events if e.get("ev") == "watch"]
    assert "/visible" in paths and "/hidden" not in paths
    await owner.call(op="delete", path="/visible")
    await owner.close()
    await spy.close()


async def test_admin_operations_need_an_admin_and_snapshots_carry_no_secrets(server):
    anon = await Conn.open(server, hello=False)
    for req in ({"op": "leader_transfer", "to": 0}, {"op": "snapshot"},
                {"op": "member_change", "remove": [9]}):
        r = await anon.call(**req)
        assert not r["ok"] and r["err"] == "NoAuth", (req, r)
    assert (await anon.call(op="status"))["ok"]  # status stays open
    ops = await Conn.open(server, hello=False)
    assert (await ops.call(op="add_auth", scheme="digest", auth=OPS))["ok"]
    victim = await Conn.open(server)  # a session whose secret must not leak
    r = await ops.call(op="member_change", remove=[9])
    assert r["err"] == "ConfChange"  # allowed to ask: refused only because 9 is not a member
    ops.ids += 1
    await ops.fs.send({"id": ops.ids, "op": "snapshot"})
    data = b""
    with trio.fail_after(10):
        while True:
            m = await ops.fs.receive()
            if m.get("ev") == "chunk":
                data += m["data"]
            elif m.get("id") == ops.ids:
                assert m["ok"], m
                break
    assert len(data) == m["r"]["size"] and victim.secret not in data
    for c in (anon, ops, victim):
        await c.close()


async def test_bad_credentials_fail_and_never_reach_the_log(server):
    c = await Conn.open(server)
    r = await c.call(op="add_auth", scheme="digest", auth="no-colon-s3cret-zzz")
    assert r["err"] == "AuthFailed" and "s3cret-zzz" not in r["msg"]
    r = await c.call(op="add_auth", scheme="kerberos", auth="x")
    assert r["err"] == "AuthFailed"
    r = await c.call(op="add_auth", scheme="x509")
    assert r["err"] == "AuthFailed"  # no certificate on a plain port
    r = await c.call(op="whoami")
    assert r["ok"] and all(s == "ip" for s, _ in r["r"]["ids"])
    await c.close()
    log = server.logs(1, tail=1_000_000)
    for secret in ("s3cret-zzz", "s3cret-bob", "s3cret-super", "s3cret-ops"):
        assert secret not in log
