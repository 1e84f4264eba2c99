"""Serve the HTTP port inside the server's own Trio loop, with Hypercorn.

Hypercorn's Trio worker runs an ASGI application as tasks of the caller's
Trio run: no second event loop, no thread per request, and HTTP parsing,
keep-alive and limits by a maintained server rather than by us.  The
observer task (event-loop lag, index clock, the dashboard's ring) runs
beside it.
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


def hypercorn_config(address: tuple[str, int]) -> Config:
    cfg = Config()
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
        binds = await nursery.start(lambda task_status: serve(app, hypercorn_config(service.cfg.http_address),
                                                              task_status=task_status, mode="asgi"))
        port = int(binds[0].rsplit(":", 1)[1])
        log.info("server %d: HTTP port (dashboard, /metrics, /health, /ready) on %s", service.server_id, binds)
        task_status.started(port)
