"""The HTTP port under [auth] and node ACLs, on one in-process server: who a
request is (address, HTTP Basic digest, superuser), node ACLs on the tree
browser, the event stream and the lock list, the admin rule on sessions,
connections and status, refusals counted and logged without the password,
and /login for a browser."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from coord.http.identity import BadCredentials, basic_credential, requester
from coord.namespace.acl import digest_id
from coordclient import Client
from coordclient.acl import make_digest_acl
from tests.httpclient import EventStream, basic, get_json, http
from tests.httpserved import serve, served  # noqa: F401 - the fixture

ALICE, BOB, OPS, SUPER = "alice:pw-alice", "bob:pw-bob", "ops:pw-ops", "root:pw-super"
AUTH = {"superusers": [f"digest:{digest_id(SUPER)}"], "admins": [f"digest:{digest_id(OPS)}"],
        "status_requires_admin": True}
ALICE_ONLY = [make_digest_acl("alice", "pw-alice", all=True)]


@pytest.fixture
async def secured(tmp_path, nursery):
    return await serve(tmp_path, nursery, auth=AUTH)


def denied_total(served) -> int:
    return served.service.obs.denied


# -- who a request is ------------------------------------------------------------

def test_basic_credentials_are_parsed_strictly():
    assert basic_credential(None) is None
    assert basic_credential(basic("alice:p:w")["Authorization"]) == "alice:p:w"  # ':' allowed in the password
    assert basic_credential("basic " + basic(ALICE)["Authorization"].split()[1]) == ALICE
    for bad in ("Bearer abc", "Basic !!!", "Basic " + basic("nocolon")["Authorization"].split()[1],
                basic(":pw")["Authorization"], basic("user:")["Authorization"], "Basic /w==",
                "Basic " + "A" * 5000):
        with pytest.raises(BadCredentials) as e:
            basic_credential(bad)
        assert "pw" not in str(e.value)


def test_requester_has_address_digest_and_superuser(tmp_path):
    from tests.httpserved import single_config

    cfg = single_config(tmp_path, AUTH)
    who = requester({"client": ("10.1.2.3", 4000)}, {"authorization": basic(SUPER)["Authorization"]}, cfg)
    assert who.auth.ids == {("ip", "10.1.2.3"), ("digest", digest_id(SUPER))}
    assert who.auth.superuser and who.user == "root" and who.peer == "10.1.2.3:4000"
    anon = requester({"client": None}, {}, cfg)
    assert anon.auth.ids == frozenset() and not anon.auth.superuser and not anon.signed_in
    assert "pw-super" not in repr(who)


# -- node ACLs ---------------------------------------------------------------------

async def make_tree(endpoint: str) -> None:
    async with Client(endpoint, session_timeout=5, auth=[("digest", ALICE)]) as c:
        await c.create("/open", b"for everyone")
        await c.create("/secret", b"alice's", acl=ALICE_ONLY)
        await c.create("/secret/kid", b"", acl=ALICE_ONLY)  # a child has its own ACL


async def test_tree_browser_follows_node_acls(secured, caplog):
    await make_tree(secured.endpoint)
    port = secured.http_port
    caplog.set_level(logging.WARNING, logger="coord.http")
    before = denied_total(secured)
    status, _, raw = await http(port, "/api/node?path=/secret")
    body = json.loads(raw)
    assert status == 403 and body["code"] == "NoAuth" and body["signin"] == "/login" and not body["signed_in"]
    assert b"alice's" not in raw and b"kid" not in raw
    assert (await http(port, "/api/node?path=/secret", headers=basic(BOB)))[0] == 403
    assert denied_total(secured) == before + 2
    for cred in (ALICE, SUPER):
        node = await get_json(port, "/api/node?path=/secret", headers=basic(cred))
        assert node["data"]["text"] == "alice's" and [ch["name"] for ch in node["children"]] == ["kid"]
        assert node["acl"] == [f"digest:{digest_id(ALICE)}:cdrwa"]
    root = await get_json(port, "/api/node?path=/")  # the root is open: children listed, even unreadable ones
    assert {"open", "secret"} <= {ch["name"] for ch in root["children"]} and root["acl"] == ["world:anyone:cdrwa"]
    assert (await get_json(port, "/api/node?path=/open"))["data"]["text"] == "for everyone"
    # Counted on /metrics as the client port's refusals are, logged without the password.
    _, _, metrics = await http(port, "/metrics")
    assert f"\ncoord_requests_denied_total {float(before + 2)}\n".encode() in metrics
    assert "denied HTTP GET /api/node on /secret for ['digest:bob', 'ip:127.0.0.1']" in caplog.text
    assert "pw-bob" not in caplog.text and digest_id(BOB).split(":")[1] not in caplog.text


async def test_malformed_authorization_is_a_400_that_changes_nothing(secured):
    before = denied_total(secured)
    status, _, body = await http(secured.http_port, "/api/node?path=/", headers={"Authorization": "Basic %%%"})
    assert status == 400 and b"base64" in body
    status, _, _ = await http(secured.http_port, "/health", headers={"Authorization": "Bearer x"})
    assert status == 200  # probes never look at credentials
    assert denied_total(secured) == before


async def test_node_acls_hold_on_the_http_port_without_auth_config_too(served):
    await make_tree(served.endpoint)
    assert (await http(served.http_port, "/api/node?path=/secret"))[0] == 403
    assert (await get_json(served.http_port, "/api/node?path=/secret", headers=basic(ALICE)))["path"] == "/secret"
    assert (await http(served.http_port, "/api/sessions"))[0] == 200  # no [auth]: no admin rule


async def next_change_paths(stream: EventStream, until: str) -> list[str]:
    seen: list[str] = []
    with trio.fail_after(10):
        while until not in seen:
            event, data, _ = await stream.next_event()
            if event == "change":
                seen += [e["path"] for e in data["events"]]
    return seen


async def test_event_stream_leaves_out_unreadable_nodes(secured):
    port = secured.http_port
    anon = await EventStream.open(port, "/api/events?path=/")
    alice = await EventStream.open(port, "/api/events?path=/", headers=basic(ALICE))
    for s in (anon, alice):
        assert s.status == 200 and (await s.next_event())[0] == "hello"
    await make_tree(secured.endpoint)
    async with Client(secured.endpoint, session_timeout=5, auth=[("digest", ALICE)]) as c:
        await c.set("/secret", b"changed")
        await c.create("/last", b"")
    seen_anon = await next_change_paths(anon, "/last")
    seen_alice = await next_change_paths(alice, "/last")
    assert "/open" in seen_anon and not any(p.startswith("/secret") for p in seen_anon)
    assert "/secret" in seen_alice and "/secret/kid" in seen_alice
    # A replay (reconnect from a zxid) follows the same rule.
    replay = await EventStream.open(port, "/api/events?path=/&from=1")
    assert (await replay.next_event())[0] == "hello"
    seen_replay = await next_change_paths(replay, "/last")
    assert "/open" in seen_replay and not any(p.startswith("/secret") for p in seen_replay)
    for s in (anon, alice, replay):
        await s.aclose()


async def test_lock_list_shows_only_readable_queues(secured):
    async with Client(secured.endpoint, session_timeout=5, auth=[("digest", ALICE)]) as c:
        await c.create("/private", b"", acl=ALICE_ONLY)
        await c.create("/private/lk", b"", acl=ALICE_ONLY)
        async with c.lock("/private/lk"), c.lock("/public-lk"):
            anon = await get_json(secured.http_port, "/api/recipes")
            mine = await get_json(secured.http_port, "/api/recipes", headers=basic(ALICE))
    assert [r["path"] for r in anon["recipes"]] == ["/public-lk"]
    assert sorted(r["path"] for r in mine["recipes"]) == ["/private/lk", "/public-lk"]


# -- the admin rule ------------------------------------------------------------------

@pytest.mark.parametrize("page", ["/api/sessions", "/api/connections", "/api/status", "/api/ensemble"])
async def test_admin_pages_need_an_admin_or_superuser(secured, page):
    port = secured.http_port
    async with Client(secured.endpoint, session_timeout=5) as c:
        for headers in (None, basic(ALICE)):
            status, _, raw = await http(port, page, headers=headers)
            assert status == 403 and json.loads(raw)["code"] == "NoAuth", (page, headers, raw[:200])
            assert b"127.0.0.1:" not in raw and str(c.session_id).encode() not in raw
        for cred in (OPS, SUPER):
            body = await get_json(port, page, headers=basic(cred))
            if page == "/api/sessions":
                assert [r["sid"] for r in body["sessions"]] == [c.session_id]
            elif page == "/api/connections":
                assert [r["sid"] for r in body["connections"]] == [c.session_id]
            else:
                assert body["server_id"] == 1


async def test_probes_metrics_and_the_page_stay_open(secured):
    for page in ("/metrics", "/health", "/ready", "/", "/static/app.js", "/api/history"):
        status, _, _ = await http(secured.http_port, page)
        assert status == 200, page


async def test_whoami_says_who_and_what(secured):
    port = secured.http_port
    anon = await get_json(port, "/api/whoami")
    assert anon == {"user": None, "ids": ["ip:127.0.0.1"], "superuser": False, "admin": False, "restricted": True}
    ops = await get_json(port, "/api/whoami", headers=basic(OPS))
    assert ops["user"] == "ops" and ops["admin"] and not ops["superuser"] and "digest:ops" in ops["ids"]
    raw = (await http(port, "/api/whoami", headers=basic(SUPER)))[2]
    assert json.loads(raw)["superuser"] and b"pw-super" not in raw


# -- signing in ------------------------------------------------------------------------

async def test_login_challenges_until_a_credential_then_redirects(secured):
    port = secured.http_port
    status, headers, _ = await http(port, "/login")
    assert status == 401 and headers["www-authenticate"].startswith('Basic realm="coord"')
    status, headers, _ = await http(port, "/login", headers={"Authorization": "Basic ###"})
    assert status == 401
    status, headers, _ = await http(port, "/login", headers=basic(ALICE))
    assert status == 303 and headers["location"] == "/"
    # Signing in as someone else: asked again while the browser still sends alice.
    assert (await http(port, "/login?not=alice", headers=basic(ALICE)))[0] == 401
    status, headers, _ = await http(port, "/login?not=alice", headers=basic(BOB))
    assert status == 303 and headers["location"] == "/"
