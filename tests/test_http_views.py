"""The dashboard's data on one in-process server: the tree browser pages,
sessions show no secrets, locks and elections are found from the
recipes' layout, and the event stream resumes from the last zxid seen."""

from __future__ import annotations

import base64
import json
import types

import pytest
import trio

import coord.http.app as http_app
from coord.observe.events import QUEUE, ChangeFeed
from coord.observe.views import PREVIEW_BYTES
from coordclient import Client, ops
from tests.httpclient import EventStream, get_json, http
from tests.httpserved import served  # noqa: F401 - the fixture


async def test_tree_browser_pages_children_and_previews_data(served):
    async with Client(served.endpoint, session_timeout=5) as c:
        await c.create("/t", b"hello\nworld")
        await c.multi([ops.create(f"/t/c{k:03d}", b"") for k in range(150)])
        await c.create("/bin", bytes(range(256)) * 20)
    port = served.http_port
    page = await get_json(port, "/api/node?path=/t&limit=100")
    assert page["total_children"] == 150 and len(page["children"]) == 100
    assert [ch["name"] for ch in page["children"]][:2] == ["c000", "c001"] and page["next"] == "c099"
    assert page["data"] == {"size": 11, "encoding": "text", "text": "hello\nworld", "truncated": False}
    assert page["stat"]["num_children"] == 150 and page["stat"]["data_length"] == 11
    rest = await get_json(port, "/api/node?path=/t&limit=100&after=c099")
    assert [ch["name"] for ch in rest["children"]] == [f"c{k:03d}" for k in range(100, 150)] and rest["next"] is None
    binary = await get_json(port, "/api/node?path=/bin")
    assert binary["data"]["encoding"] == "hex" and binary["data"]["hex"].startswith("000102")
    assert binary["data"]["truncated"] and binary["data"]["size"] == 5120 > PREVIEW_BYTES


async def test_tree_browser_names_each_nodes_kind(served):
    async with Client(served.endpoint, session_timeout=5) as c:
        await c.create("/kinds")
        await c.create("/kinds/box", container=True)
        await c.create("/kinds/cache", ttl=3600)
        await c.create("/kinds/me", ephemeral=True)
        page = await get_json(served.http_port, "/api/node?path=/kinds")
        assert {ch["name"]: ch["kind"] for ch in page["children"]} == {
            "box": "container", "cache": "ttl", "me": "ephemeral"}
        ttl = await get_json(served.http_port, "/api/node?path=/kinds/cache")
        assert ttl["stat"]["kind"] == "ttl" and ttl["stat"]["ttl_ms"] == 3_600_000
        assert page["stat"]["kind"] == "persistent" and "ttl_ms" not in page["stat"]


async def test_sessions_show_clients_and_never_secrets(served):
    async with Client(served.endpoint, session_timeout=5) as a, Client(served.endpoint, session_timeout=7) as b:
        await a.create("/e", b"", ephemeral=True)
        await b.exists("/e", watch=lambda ev: None)
        status, _, raw = await http(served.http_port, "/api/sessions")
        assert status == 200
        body = json.loads(raw)
        rows = {r["sid"]: r for r in body["sessions"]}
        assert body["total"] == 2 and set(rows) == {a.session_id, b.session_id}
        ra, rb = rows[a.session_id], rows[b.session_id]
        assert ra["ephemerals"] == 1 and ra["ephemeral_paths"] == ["/e"] and ra["timeout_ms"] == 5000
        assert ra["client"].startswith("127.0.0.1:") and ra["server"] == 1
        assert rb["watches"] == 1 and rb["timeout_ms"] == 7000
        for sid in rows:
            secret = served.service.ns.session(sid)[1]
            for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
                assert form.encode() not in raw
        assert b"secret" not in raw
        page = await get_json(served.http_port, f"/api/sessions?limit=1&after={min(rows)}")
        assert [r["sid"] for r in page["sessions"]] == [max(rows)]


async def test_locks_and_elections_are_found_from_the_recipes_layout(served):
    async with Client(served.endpoint, session_timeout=5) as a, Client(served.endpoint, session_timeout=5) as b:
        async with trio.open_nursery() as n:
            held = trio.Event()
            release = trio.Event()

            async def holder():
                async with a.lock("/locks/db"):
                    held.set()
                    await release.wait()

            async def waiter():
                await held.wait()
                async with b.lock("/locks/db"):
                    pass

            async def candidate(cl, name):
                async with cl.election("/elections/sched", name).campaign():
                    await release.wait()

            n.start_soon(holder)
            await held.wait()
            n.start_soon(waiter)
            n.start_soon(candidate, a, "host a")  # a space: identities are percent-encoded in node names
            with trio.fail_after(10):
                while True:
                    view = await get_json(served.http_port, "/api/recipes")
                    by_path = {r["path"]: r for r in view["recipes"]}
                    if len(by_path.get("/locks/db", {}).get("queue", [])) == 2 and "/elections/sched" in by_path:
                        break
                    await trio.sleep(0.02)
            lock = by_path["/locks/db"]
            assert lock["kind"] == "lock"
            assert [(q["state"], q["session"]) for q in lock["queue"]] == [
                ("holding", f"{a.session_id:#x}"), ("waiting", f"{b.session_id:#x}")]
            assert lock["queue"][0]["token"] < lock["queue"][1]["token"]
            election = by_path["/elections/sched"]
            assert election["kind"] == "election" and election["leader"] == "host a"
            release.set()


async def test_event_stream_groups_by_zxid_and_resumes_after_the_last_one_seen(served):
    port = served.http_port
    svc = served.service
    async with Client(served.endpoint, session_timeout=5) as c:
        await c.create("/ev", b"")
        stream = await EventStream.open(port, "/api/events?path=/ev")
        assert stream.status == 200
        kind, hello, _ = await stream.next_event()
        assert kind == "hello" and hello["path"] == "/ev" and hello["recursive"] is True
        assert svc.watches.count() == 1
        await c.create("/ev/a", b"1")
        await c.set("/ev/a", b"2")
        seen = []
        with trio.fail_after(10):
            while len(seen) < 2:
                kind, data, eid = await stream.next_event()
                assert kind == "change" and int(eid) == data["zxid"]
                seen.append(data)
        assert seen[0]["events"] == [{"type": "created", "path": "/ev/a"}]
        assert seen[1]["events"] == [{"type": "changed", "path": "/ev/a"}]
        last = seen[-1]["zxid"]
        await stream.aclose()
        with trio.fail_after(10):
            while svc.watches.count():  # the stream's watch goes with it
                await trio.sleep(0.01)
        # changes while disconnected are replayed after the last zxid seen
        await c.create("/ev/b", b"")
        await c.delete("/ev/a")
        await c.create("/elsewhere", b"")
        again = await EventStream.open(port, "/api/events?path=/ev", headers={"Last-Event-ID": str(last)})
        assert (await again.next_event())[0] == "hello"
        replay = [(await again.next_event())[1] for _ in range(2)]
        assert [e["events"] for e in replay] == [[{"type": "created", "path": "/ev/b"}],
                                                   [{"type": "deleted", "path": "/ev/a"}]]
        assert replay[0]["zxid"] > last
        await again.aclose()


async def test_event_streams_are_bounded(served, monkeypatch):
    monkeypatch.setattr(http_app, "MAX_FEEDS", 1)
    first = await EventStream.open(served.http_port, "/api/events?path=/")
    assert (await first.next_event())[0] == "hello"
    status, _, body = await http(served.http_port, "/api/events?path=/")
    assert status == 503 and b"too many event streams" in body
    await first.aclose()


def test_change_feed_overflow_and_resync():
    registry = types.SimpleNamespace(added=[], add=lambda *a: registry.added.append(a))
    ns = types.SimpleNamespace(events_since=lambda z: None, may_read=lambda path, auth: True)
    svc = types.SimpleNamespace(node=types.SimpleNamespace(applied_index=50), ns=ns, watches=registry)
    feed = ChangeFeed(svc, "/x", recursive=True)
    frames = feed.start(after=3)  # history does not reach back: say resync
    assert frames[0].startswith(b"event: hello") and b"event: resync" in frames[1] and registry.added
    for k in range(QUEUE + 5):
        feed.deliver_event(1, "created", f"/x/{k}", 100 + k)
    out = feed.take()
    assert len(out) == QUEUE + 1 and out[-1].startswith(b"event: overflow")
    assert len(feed.pending) == 0


@pytest.mark.parametrize("path", ["/api/ensemble", "/api/history", "/api/connections", "/api/recipes"])
async def test_api_pages_answer_json(served, path):
    body = await get_json(served.http_port, path)
    assert isinstance(body, dict) and body
