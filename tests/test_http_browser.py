"""The dashboard in a real browser: headless Chromium from Debian's
packages (``apt-get install chromium``), driven by Playwright for Python
with that browser's executable (Playwright's own browser download is not
used), against a real 3-process ensemble.

Locally the test is skipped when Chromium or Playwright is missing; under
CI (``CI=true``, which ``.ci/run`` sets) it fails instead, so a CI machine
without the browser cannot pass by skipping it.
"""

from __future__ import annotations

import os
import time

import pytest
import trio

from coordclient import SyncClient
from tests.cluster import Cluster, dump_logs_on_failure

CHROMIUM = os.environ.get("COORD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_or_skip():
    """Playwright's sync API, or skip (fail under CI) naming what is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "Playwright for Python is not installed (pip install -e '.[test]')"
        sync_playwright = None
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser test cannot run under CI: {missing}")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def cluster(request, tmp_path):
    c = Cluster(3, tmp_path / "ensemble", http=True)
    c.start()
    try:
        yield c
    finally:
        dump_logs_on_failure(request, c)
        c.close()


def test_dashboard_follows_the_ensemble_the_tree_and_the_event_stream(cluster, tmp_path):
    sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    c = cluster
    leader = trio.run(c.wait_leader)
    watcher = min(s for s in (1, 2, 3) if s != leader)  # the page is served by a server that survives
    url = f"http://127.0.0.1:{c.http_ports[watcher]}/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            members = page.locator("#members tbody tr")
            expect(members).to_have_count(3, timeout=15_000)
            expect(page.locator("#members tr.leader")).to_have_count(1)
            expect(page.locator("#members tr.leader")).to_have_attribute("data-member", str(leader))
            expect(page.locator('#members tr[data-role="follower"]')).to_have_count(2)
            # follow the event stream from before the write
            page.click('button[data-tab="events"]')
            expect(page.locator("#events-state")).to_contain_text("following /", timeout=5_000)
            page.click('button[data-tab="tree"]')
            expect(page.locator("#tree-live")).to_have_text("live", timeout=5_000)

            c.kill(leader)  # SIGKILL
            t0 = time.monotonic()
            page.wait_for_function(
                "old => { const r = document.querySelector('#members tr.leader');"
                " return r !== null && r.dataset.member !== old && r.dataset.role === 'leader'; }",
                arg=str(leader), timeout=3_000)
            shown_after = time.monotonic() - t0
            new_leader = int(page.locator("#members tr.leader").get_attribute("data-member"))
            assert new_leader != leader and shown_after < 3.0
            expect(page.locator(f'#members tr[data-member="{leader}"]')).to_have_attribute("data-role", "unreachable")

            survivors = [s for s in (1, 2, 3) if s != leader]
            with SyncClient(c.endpoints_of(survivors), session_timeout=5) as client:
                client.create("/from-sdk", b"hello from the SDK")
            child = page.locator('#children li[data-name="from-sdk"]')
            expect(child).to_be_visible(timeout=5_000)  # the tree updates live
            child.click()
            expect(page.locator("#data")).to_have_text("hello from the SDK")
            page.click('button[data-tab="events"]')
            expect(page.locator('#events tr[data-path="/from-sdk"]').first).to_be_visible(timeout=5_000)
            expect(page.locator('#events tr[data-path="/from-sdk"] td').nth(2)).to_have_text("created")
            page.click('button[data-tab="tree"]')
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert errors == [], errors
        finally:
            browser.close()


def test_secured_dashboard_shows_refusals_and_signs_in_with_basic(tmp_path):
    """TLS + [auth]: without credentials the page says what is refused and
    offers "sign in"; signed in at /login (HTTP Basic) as an admin it shows
    the whole ensemble, the node's data and the session list."""
    sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    from coord.namespace.acl import digest_id
    from coordclient.acl import make_digest_acl
    from tests.tlsutil import TLSMaterial

    material = TLSMaterial(tmp_path / "pki")
    extra = "\n".join(["[auth]", f'admins = ["digest:{digest_id("ops:pw-ops")}", '
                                  f'"x509:{TLSMaterial.subject("harness")}"]', "status_requires_admin = true"])
    c = Cluster(3, tmp_path / "ensemble", http=True, peer_secret=False, extra_config=extra,
                client_ssl=material.client_context(material.client("harness")),
                tls=lambda sid: material.tls_table(sid, client_auth="request"))
    c.start()
    try:
        leader = trio.run(c.wait_leader)
        with SyncClient(c.endpoints, tls=material.client_context(), auth=[("digest", "ops:pw-ops")]) as client:
            client.create("/ops-only", b"for ops", acl=[make_digest_acl("ops", "pw-ops", all=True)])
            url = f"https://127.0.0.1:{c.http_ports[leader]}/"
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    anon = browser.new_context(ignore_https_errors=True).new_page()
                    errors: list[str] = []
                    anon.on("pageerror", lambda e: errors.append(str(e)))
                    anon.goto(url)
                    expect(anon.locator("#whoami .denied")).to_contain_text("NoAuth", timeout=15_000)
                    expect(anon.locator("#signin a.signin")).to_have_attribute("href", "/login")
                    anon.fill("#tree-path", "/ops-only")
                    anon.click("#tree-form button")
                    expect(anon.locator("#data.is-denied")).to_contain_text("NoAuth")
                    expect(anon.locator("#data a.signin")).to_have_text("sign in")
                    expect(anon.locator("#data")).not_to_contain_text("for ops")
                    anon.screenshot(path=str(tmp_path / "secured-anonymous.png"), full_page=True)

                    ops = browser.new_context(ignore_https_errors=True,
                                              http_credentials={"username": "ops", "password": "pw-ops"}).new_page()
                    ops.on("pageerror", lambda e: errors.append(str(e)))
                    ops.goto(url + "login")
                    expect(ops).to_have_url(url)  # redirected to the dashboard once signed in
                    expect(ops.locator("#signin")).to_contain_text("signed in as ops (admin)", timeout=15_000)
                    expect(ops.locator("#members tbody tr")).to_have_count(3, timeout=15_000)
                    expect(ops.locator('#members tr[data-role="unreachable"]')).to_have_count(0, timeout=15_000)
                    expect(ops.locator("#members tr.leader")).to_have_attribute("data-member", str(leader))
                    ops.fill("#tree-path", "/ops-only")
                    ops.click("#tree-form button")
                    expect(ops.locator("#data")).to_have_text("for ops")
                    expect(ops.locator("#acl")).to_contain_text("digest:ops:")
                    ops.click('button[data-tab="sessions"]')
                    expect(ops.locator(f'#sessions tr[data-session="{client.session_id:#x}"]')).to_be_visible()
                    shot = tmp_path / "secured.png"
                    ops.screenshot(path=str(shot), full_page=True)
                    assert shot.stat().st_size > 10_000
                    assert errors == [], errors
                finally:
                    browser.close()
    finally:
        c.close()


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch):
    import tests.test_http_browser as me

    monkeypatch.setattr(me, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run under CI"):
        me.browser_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        me.browser_or_skip()
