"""Process entry point of a server: wires the parts together and handles signals.

Until the coordination service (namespace, sessions, client port) lands,
the replicated state machine is a no-op: the server runs Raft (elections,
replication, membership) and nothing else.
"""

from __future__ import annotations

import signal

import trio

from coord.raft.types import Entry
from coord.server.config import ServerConfig
from coord.server.serve import Server


class NullStateMachine:
    """Applies nothing; stands in until the namespace state machine exists."""

    def apply(self, entry: Entry) -> None:
        return None

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        return None


async def serve_until_signal(cfg: ServerConfig) -> None:
    server = Server(cfg, NullStateMachine())
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(server.run)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def run_app(cfg: ServerConfig) -> None:
    trio.run(serve_until_signal, cfg)
