"""Process entry point of a server: builds the service, serves clients,
stops cleanly on SIGTERM/SIGINT, re-reads its certificates, keys and peer
secret on SIGHUP (new connections use them; see ``Server.reload_credentials``)."""

from __future__ import annotations

import logging
import resource
import signal
import sys

import trio

from coord.server.allocator import tune_allocator
from coord.server.clientport import serve_clients
from coord.server.config import ServerConfig
from coord.server.sdnotify import notify
from coord.server.service import CoordService

log = logging.getLogger("coord.server")


async def serve_until_signal(cfg: ServerConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        service = CoordService(cfg)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await nursery.start(serve_clients, service)
            if cfg.zookeeper_address is not None:  # ZooKeeper's client protocol, same service
                from coord.server.zkport import serve_zookeeper
                await nursery.start(serve_zookeeper, service)
            if cfg.http_address is not None:  # observability: /metrics, /health, /ready, the dashboard
                from coord.http.server import serve_http
                await nursery.start(serve_http, service)
            log.info("server %d ready (cluster %r, data in %s)", cfg.server_id, cfg.cluster_id, cfg.data_dir)
            notify(f"READY=1\nSTATUS=serving clients on {cfg.client_address[0]}:{cfg.client_address[1]}")
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("server %d: SIGHUP, reloading credentials", cfg.server_id)
                    service.server.reload_credentials()
                    continue
                log.info("server %d: signal %d, stopping", cfg.server_id, signum)
                notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


def _raise_fd_limit() -> None:
    """Use every file descriptor the hard limit allows: client connections
    are counted against it (with a reserve), so more means more clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
        except (ValueError, OSError):
            pass


def run_app(cfg: ServerConfig) -> None:
    _raise_fd_limit()
    # The disk thread needs the GIL for a moment after every fsync to report
    # it; with the default 5 ms switch interval a busy event loop made it
    # wait that long, which is write latency.  0.5 ms keeps the handoff short.
    sys.setswitchinterval(0.0005)
    tune_allocator()  # freed log entries go back to the system (see allocator.py)
    trio.run(serve_until_signal, cfg)
