"""The HTTP port's ASGI application: probes, metrics, the dashboard and its API.

Routes (GET or HEAD only; anything else is 405, so the port cannot change
anything):

    /                 the dashboard (static/index.html)
    /static/<file>    its script, style and the vendored chart library
    /metrics          Prometheus text exposition
    /health           liveness, JSON, 200 or 503
    /ready            readiness, JSON naming what is missing, 200 or 503
    /api/status       this server's status (as ``coordctl status`` shows it)
    /api/ensemble     every member's status, as seen from here
    /api/history      the last ten minutes, one sample a second (?since=<unix time>)
    /api/node         one node: stat, data preview, a page of children (?path=&after=&limit=)
    /api/sessions     a page of sessions (?after=<sid>&limit=)
    /api/connections  this server's client connections with a session
    /api/recipes      locks, rwlocks, semaphores and elections found in the tree
    /api/events       server-sent events of changes under ?path= (&recursive=, &from=<zxid>)
    /api/whoami       who this request is (identities, superuser, admin)
    /login            HTTP Basic sign-in for a browser: 401 with a challenge until the
                      request carries a credential, then a redirect to /

Who sees what (``coord.http.identity`` says who a request is: its address,
and a digest identity from HTTP Basic ``user:password``):

* Node ACLs, as on the client port: /api/node needs READ on the node (else
  403, ``NoAuth``); /api/events leaves out events about nodes the requester
  may not READ; /api/recipes lists only queues under readable parents.
* The admin rule (once [auth] names superusers or admins): /api/sessions and
  /api/connections (client addresses, session ids) need an admin or
  superuser; so do /api/status and /api/ensemble with
  ``status_requires_admin``.
* Always open: the page and its files, /metrics, /health, /ready (probes
  and scrapers carry no credentials), /api/history (what /metrics shows).

A refusal is a 403 whose JSON names ``NoAuth`` and points at /login; it is
counted in ``coord_requests_denied_total`` and logged (rate-limited) as the
client port's are (``coord.security.denials``).  With no [auth] and no
node ACLs, nothing is refused: the port behaves as it did before.

Handlers run in the server's own Trio loop; each reads state in one
synchronous step, so none of them waits on the Raft loop or slows it beyond
that step, which the views keep small.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from typing import Any, Awaitable, Callable

import trio

from coord.http.asgi import (
    BadRequest,
    Query,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    error_response,
    headers_of,
    json_response,
    send_response,
)
from coord.http.identity import BadCredentials, Requester, basic_credential, requester
from coord.observe.ensemble import Ensemble
from coord.observe.events import KEEPALIVE, MAX_FEEDS, ChangeFeed
from coord.observe.health import Health
from coord.observe.metrics import Metrics
from coord.observe.observer import Observer
from coord.observe.views import MAX_PAGE, ViewError, check_path, local_connections, node_view, recipes_view, \
    sessions_view
from coord.security.denials import note_denied, shown_ids
from coordclient.errors import NoAuthError

log = logging.getLogger("coord.http")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

Handler = Callable[[Request], Awaitable[Response | None]]

REALM = b'Basic realm="coord", charset="UTF-8"'
PAGE_CSP = b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"


def _static_files() -> dict[str, str]:
    """URL path -> file, for every file shipped under static/ (nothing else is served)."""
    out = {}
    for root, _, files in os.walk(STATIC_DIR):
        for name in files:
            full = os.path.join(root, name)
            out["/static/" + os.path.relpath(full, STATIC_DIR).replace(os.sep, "/")] = full
    return out


class App:
    def __init__(self, service: Any, observer: Observer) -> None:
        self.s = service
        self.observer = observer
        self.metrics = Metrics(service, observer)
        self.health = Health(service, observer)
        self.ensemble = Ensemble(service)
        self.feeds = 0
        self.static = _static_files()
        self.routes: dict[str, Handler] = {
            "/": self.index, "/metrics": self.get_metrics, "/health": self.get_health, "/ready": self.get_ready,
            "/api/status": self.api_status, "/api/ensemble": self.api_ensemble, "/api/history": self.api_history,
            "/api/node": self.api_node, "/api/sessions": self.api_sessions,
            "/api/connections": self.api_connections, "/api/recipes": self.api_recipes,
            "/api/events": self.api_events, "/api/whoami": self.api_whoami, "/login": self.login,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not offered
        method = scope.get("method", "GET")
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await send_response(send, Response(405, b'{"error":"read-only: only GET and HEAD"}',
                                               headers=[(b"allow", b"GET, HEAD")]))
            return
        path = scope.get("path", "/")
        req: Request | None = None
        try:
            handler = self.routes.get(path)
            if handler is None and path in self.static:
                resp: Response | None = self.static_file(path)
            elif handler is None:
                resp = error_response(404, f"no such page: {path[:200]}")
            else:
                req = Request(scope, receive, send, path, Query(scope.get("query_string", b"")), headers_of(scope))
                resp = await handler(req)
        except NoAuthError as e:  # only a handler refuses, and only once it knows who asked
            resp = self._denied(req, e) if req is not None and req.who is not None else error_response(403, str(e))
        except (BadRequest, BadCredentials) as e:
            resp = error_response(400, str(e))
        except ViewError as e:
            resp = error_response(e.status, str(e))
        except Exception:
            log.exception("HTTP %s %s failed", method, path[:200])
            resp = error_response(500, "internal error (see the server's log)")
        if resp is not None:
            await send_response(send, resp, head_only=head)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- who may see what -------------------------------------------------------
    def who(self, req: Request) -> Requester:
        """Who ``req`` is (worked out once; BadCredentials for a malformed
        Authorization header)."""
        if req.who is None:
            req.who = requester(req.scope, req.headers, self.s.cfg)
        return req.who

    def require_admin(self, req: Request, what: str) -> Requester:
        """The admin rule of the client port: once [auth] names superusers or
        admins, only they pass (NoAuthError otherwise)."""
        who = self.who(req)
        if not self.s.cfg.may_administer(who.auth):
            raise NoAuthError(f"{what} needs an admin identity: sign in (HTTP Basic) with a credential "
                              "listed in [auth] admins or superusers")
        return who

    def require_status_access(self, req: Request, what: str) -> None:
        if self.s.cfg.status_requires_admin:
            self.require_admin(req, what)

    def _denied(self, req: Request, e: NoAuthError) -> Response:
        """A 403 naming NoAuth, counted and logged like a client's refusal."""
        who = req.who
        assert who is not None
        note_denied(self.s.obs, log, f"HTTP GET {req.path}", e.path, who.auth, who.peer,
                    f"HTTP user {who.user!r}" if who.signed_in else "HTTP, not signed in")
        return json_response({"error": f"NoAuth: {e.message}", "code": "NoAuth", "path": e.path,
                              "signed_in": who.signed_in, "user": who.user, "signin": "/login"}, 403)

    # -- pages ----------------------------------------------------------------
    def static_file(self, path: str) -> Response:
        full = self.static[path]
        with open(full, "rb") as f:
            body = f.read()
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype == "application/javascript":
            ctype += "; charset=utf-8"
        return Response(200, body, ctype, [(b"cache-control", b"no-cache")])

    async def index(self, req: Request) -> Response:
        resp = self.static_file("/static/index.html")
        resp.headers.append((b"content-security-policy", PAGE_CSP))
        return resp

    async def login(self, req: Request) -> Response:
        """Sign in for a browser: a 401 with a Basic challenge makes it ask
        for a user and password once and send them with every request to
        this port afterwards (the dashboard's fetches and event streams
        too); with a credential, back to the dashboard.  ``?not=<user>``
        asks again while the credential is still that user's (to sign in as
        someone else: a browser has no other way to forget Basic
        credentials).  The credential is not checked against anything: a
        digest identity is whatever ACLs and [auth] make of it."""
        try:
            credential = basic_credential(req.headers.get("authorization"))
        except BadCredentials:
            credential = None
        user = credential.partition(":")[0] if credential is not None else None
        if user is None or user == req.query.values.get("not"):
            body = (b"<!doctype html><meta charset=utf-8><title>coord: sign in</title>"
                    b"<p>Signing in to coord needs a user name and password (a <code>digest</code> identity). "
                    b"<a href=\"/\">Back to the dashboard</a></p>")
            return Response(401, body, "text/html; charset=utf-8",
                            [(b"www-authenticate", REALM), (b"cache-control", b"no-store"),
                             (b"content-security-policy", b"default-src 'none'")])
        return Response(303, b"", "text/plain", [(b"location", b"/"), (b"cache-control", b"no-store")])

    async def get_metrics(self, req: Request) -> Response:
        return Response(200, self.metrics.render(), self.metrics.content_type)

    async def get_health(self, req: Request) -> Response:
        ok, body = self.health.liveness()
        return json_response(body, 200 if ok else 503)

    async def get_ready(self, req: Request) -> Response:
        ok, body = await self.health.readiness()
        return json_response(body, 200 if ok else 503)

    # -- API --------------------------------------------------------------------
    async def api_status(self, req: Request) -> Response:
        self.require_status_access(req, "this server's status")
        return json_response(self.s.status())

    async def api_ensemble(self, req: Request) -> Response:
        self.require_status_access(req, "the ensemble's status")
        return json_response(await self.ensemble.view())

    async def api_whoami(self, req: Request) -> Response:
        who = self.who(req)
        return json_response({"user": who.user, "ids": shown_ids(who.auth), "superuser": who.auth.superuser,
                              "admin": self.s.cfg.may_administer(who.auth),
                              "restricted": self.s.cfg.admin_restricted})

    async def api_history(self, req: Request) -> Response:
        since = req.query.float("since", 0.0)
        samples = [smp.to_json() for smp in self.observer.ring.since(since)]
        return json_response({"server_id": self.s.server_id, "interval": 1.0, "samples": samples})

    async def api_node(self, req: Request) -> Response:
        path = check_path(req.query.str("path", "/"))
        limit = req.query.int("limit", 100, 1, MAX_PAGE)
        return json_response(node_view(self.s.ns, path, req.query.str("after", ""), limit, self.who(req).auth))

    async def api_sessions(self, req: Request) -> Response:
        self.require_admin(req, "the session list")
        after = req.query.int("after", 0, 0, (1 << 63) - 1)
        limit = req.query.int("limit", 100, 1, MAX_PAGE)
        conns: dict[int, dict] = {c["sid"]: c for c in local_connections(self.s)}
        if req.query.bool("all_servers", True):
            for rows in (await self.ensemble.remote_connections()).values():
                for c in rows:
                    conns.setdefault(c["sid"], c)
        return json_response(sessions_view(self.s.ns, after, limit, conns))

    async def api_connections(self, req: Request) -> Response:
        self.require_admin(req, "the connection list")
        return json_response(self.s.connections_doc())

    async def api_recipes(self, req: Request) -> Response:
        return json_response(recipes_view(self.s.ns, self.who(req).auth))

    async def api_events(self, req: Request) -> Response | None:
        path = check_path(req.query.str("path", "/"))
        recursive = req.query.bool("recursive", True)
        last = req.headers.get("last-event-id") or req.query.values.get("from")
        after: int | None = None
        if last:
            try:
                after = int(last)
            except ValueError:
                raise BadRequest(f"'from' / Last-Event-ID must be a zxid, got {last[:40]!r}") from None
            if after < 0:
                raise BadRequest("'from' / Last-Event-ID must be >= 0")
        if self.feeds >= MAX_FEEDS:
            return error_response(503, f"too many event streams open on this server (at most {MAX_FEEDS})")
        auth = self.who(req).auth
        self.feeds += 1
        feed = ChangeFeed(self.s, path, recursive, auth)
        try:
            await self._stream(req, feed, after)
        finally:
            feed.stop()
            self.feeds -= 1
        return None

    async def _stream(self, req: Request, feed: ChangeFeed, after: int | None) -> None:
        send = req.send
        if after is not None and after > self.s.node.applied_index:
            with trio.move_on_after(2):  # a zxid seen on a server ahead of this one
                await self.s.node.wait_applied(after)
        first = feed.start(after)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]})
        if req.scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return

        async def until_disconnect(scope: trio.CancelScope) -> None:
            while (await req.receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_disconnect, nursery.cancel_scope)
            try:
                await send({"type": "http.response.body", "body": b"retry: 1000\n\n" + b"".join(first),
                            "more_body": True})
                while True:
                    with trio.move_on_after(KEEPALIVE):
                        await feed.wakeup.wait()
                    frames = feed.take()
                    await send({"type": "http.response.body", "body": b"".join(frames) or b": keepalive\n\n",
                                "more_body": True})
                    if feed.overflow:
                        break
                await send({"type": "http.response.body", "body": b""})
            except OSError:
                pass  # the client went away
            nursery.cancel_scope.cancel()
