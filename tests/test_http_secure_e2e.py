"""The HTTP port of a secured ensemble: three real server processes, TLS on
every port (peers by mutual TLS only), [auth] with a superuser, admins and
``status_requires_admin``.  Every member's dashboard sees the whole
ensemble (asked over the peer links, which a client credential could not
replace), and the tree, the event stream and the session list follow the
ACLs and the admin rule, signed in with HTTP Basic over HTTPS."""

from __future__ import annotations

import json

import pytest
import trio

from coord.namespace.acl import digest_id
from coordclient import Client
from coordclient.acl import make_digest_acl
from tests.cluster import Cluster, dump_logs_on_failure
from tests.httpclient import EventStream, basic, get_json, http
from tests.tlsutil import TLSMaterial

ALICE, OPS, SUPER = "alice:pw-alice", "ops:pw-ops", "root:pw-super"
ALICE_ONLY = [make_digest_acl("alice", "pw-alice", all=True)]


@pytest.fixture(scope="module")
def secure_http(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure-http")
    material = TLSMaterial(base / "pki")
    extra = "\n".join([
        "[auth]",
        f'superusers = ["digest:{digest_id(SUPER)}"]',
        # The harness probes status over the client port with its certificate: an admin by x509.
        f'admins = ["digest:{digest_id(OPS)}", "x509:{TLSMaterial.subject("harness")}"]',
        "status_requires_admin = true",
    ])
    c = Cluster(3, base / "ensemble", peer_secret=False, http=True, extra_config=extra,
                client_ssl=material.client_context(material.client("harness")),
                tls=lambda sid: material.tls_table(sid, client_auth="request"))
    c.material = material
    c.https = material.client_context()  # trusts the CA, presents no certificate (as a browser)
    c.start()
    trio.run(c.wait_leader)
    yield c
    c.close()


@pytest.fixture
def cluster(secure_http, request):
    yield secure_http
    dump_logs_on_failure(request, secure_http)


async def until(fn, timeout: float = 15.0, what: str = ""):
    """``await fn()`` again and again until it returns something true (bounded)."""
    with trio.fail_after(timeout):
        while True:
            got = await fn()
            if got:
                return got
            await trio.sleep(0.1)


async def test_every_member_sees_the_whole_ensemble_over_tls(cluster):
    leader = await cluster.wait_leader()
    for sid in (1, 2, 3):
        port = cluster.http_ports[sid]
        status, _, raw = await http(port, "/api/ensemble", ssl_context=cluster.https)
        assert status == 403 and json.loads(raw)["code"] == "NoAuth"  # status_requires_admin

        async def whole():
            view = await get_json(port, "/api/ensemble", headers=basic(OPS), ssl_context=cluster.https)
            return view if all(m["reachable"] for m in view["members"]) else None

        view = await until(whole)
        assert [m["id"] for m in view["members"]] == [1, 2, 3]
        assert view["leader"] == leader and [m["role"] for m in view["members"]].count("leader") == 1
        assert all(m["health"] == "ok" and m["http"] for m in view["members"]), view["members"]
        assert [m["self"] for m in view["members"]] == [i == sid for i in (1, 2, 3)]


async def test_tree_browser_needs_read_on_the_node(cluster):
    async with Client(cluster.endpoints, tls=cluster.material.client_context(), auth=[("digest", ALICE)]) as c:
        await c.create("/e2e-secret", b"alice only", acl=ALICE_ONLY)
    for sid in (1, 2, 3):
        port = cluster.http_ports[sid]

        async def applied():
            status, _, raw = await http(port, "/api/node?path=/e2e-secret", ssl_context=cluster.https)
            return (status, raw) if status != 404 else None

        status, raw = await until(applied)
        assert status == 403 and json.loads(raw)["code"] == "NoAuth" and b"alice only" not in raw
        for cred in (ALICE, SUPER):
            node = await get_json(port, "/api/node?path=/e2e-secret", headers=basic(cred), ssl_context=cluster.https)
            assert node["data"]["text"] == "alice only"


async def test_event_stream_shows_readable_nodes_only(cluster):
    port = cluster.http_ports[2]
    stream = await EventStream.open(port, "/api/events?path=/ev", ssl_context=cluster.https)
    assert stream.status == 200 and (await stream.next_event())[0] == "hello"
    async with Client(cluster.endpoints, tls=cluster.material.client_context(), auth=[("digest", ALICE)]) as c:
        await c.create("/ev", b"")
        await c.create("/ev/hidden", b"x", acl=ALICE_ONLY)
        await c.set("/ev/hidden", b"y")
        await c.create("/ev/shown", b"")
        await c.delete("/ev/hidden")
        await c.create("/ev/last", b"")
    seen: list[str] = []
    with trio.fail_after(15):
        while "/ev/last" not in seen:
            event, data, _ = await stream.next_event()
            if event == "change":
                seen += [e["path"] for e in data["events"]]
    await stream.aclose()
    assert "/ev/shown" in seen and "/ev/hidden" in seen  # the deletion: /ev (readable) lists it
    assert seen.count("/ev/hidden") == 1  # but not its creation or its change


async def test_sessions_need_an_admin_and_come_from_every_member(cluster):
    leader = await cluster.wait_leader()
    far = next(s for s in (1, 2, 3) if s != leader)
    here = next(s for s in (1, 2, 3) if s not in (leader, far))
    async with Client(cluster.endpoints_of([far]), tls=cluster.material.client_context()) as c:
        port = cluster.http_ports[here]
        for headers in (None, basic(ALICE)):
            status, _, raw = await http(port, "/api/sessions", headers=headers, ssl_context=cluster.https)
            assert status == 403 and json.loads(raw)["code"] == "NoAuth"

        async def row():
            body = await get_json(port, "/api/sessions", headers=basic(OPS), ssl_context=cluster.https)
            rows = [r for r in body["sessions"] if r["sid"] == c.session_id]
            return rows[0] if rows and rows[0].get("client") else None

        r = await until(row)
        # The client's address and server come from the member it is connected to, over the peer link.
        assert r["server"] == far and r["client"].startswith("127.0.0.1:")
