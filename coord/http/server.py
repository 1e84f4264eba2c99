"""Serve the HTTP port inside the server's own Trio loop, with Hypercorn.

Hypercorn's Trio worker runs an ASGI application as tasks of the caller's
Trio run: no second event loop, no thread per request, and HTTP parsing,
keep-alive and limits by a maintained server rather than by us.  The
observer task (event-loop lag, index clock, the dashboard's ring) runs
beside it.

With ``[tls]`` the port serves HTTPS with the server's certificate and the
same client-certificate policy as the client port; the context is the one
``Server.reload_credentials`` reloads in place on SIGHUP.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from coord.http.app import App
from coord.observe.observer import Observer
from coord.server.config import format_addr

log = logging.getLogger("coord.http")


class _TLSConfig(Config):
    """Hypercorn builds its SSL context from file names once; ours is built
    (and reloaded) by ``coord.security``, so hand that one over instead."""

    def __init__(self, ssl_context: Any, handshake_timeout: float):
        super().__init__()
        self._coord_ssl = ssl_context
        self.certfile = self.keyfile = "<coord.security>"  # only makes ``ssl_enabled`` true
        self.ssl_handshake_timeout = handshake_timeout

    def create_ssl_context(self) -> Any:
        return self._coord_ssl


def hypercorn_config(address: tuple[str, int], ssl_context: Any = None, handshake_timeout: float = 5.0) -> Config:
    """Hypercorn's configuration for the HTTP port; HTTPS with ``ssl_context``."""
    cfg = Config() if ssl_context is None else _TLSConfig(ssl_context, handshake_timeout)
    cfg.bind = [format_addr(address)]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("coord.http.hypercorn")
    cfg.include_server_header = False
    cfg.keep_alive_timeout = 30  # the dashboard polls every second or two
    cfg.graceful_timeout = 1.0  # event streams never finish by themselves
    return cfg


async def serve_http(service: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the HTTP port of ``service`` at ``service.cfg.http_address``;
    ``task_status.started`` gets the bound port (useful with port 0)."""
    observer = Observer(service)
    app = App(service, observer)
    async with trio.open_nursery() as nursery:
        await nursery.start(observer.run)
        creds = service.server.credentials
        config = hypercorn_config(service.cfg.http_address, creds.http_ssl, creds.handshake_timeout)
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status, mode="asgi"))
        port = int(binds[0].rsplit(":", 1)[1])
        log.info("server %d: HTTP port (dashboard, /metrics, /health, /ready) on %s", service.server_id, binds)
        task_status.started(port)
