"""One in-process coord server with its HTTP port, for tests of the port.

A single-member ensemble in the test's own Trio run: ports chosen by the
OS, no fsync, short ticks so it elects itself at once.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

from coord.http.server import serve_http
from coord.server.clientport import serve_clients
from coord.server.config import parse_config
from coord.server.service import CoordService


@dataclasses.dataclass
class Served:
    service: CoordService
    client_port: int
    http_port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


def single_config(tmp_path, auth: dict | None = None, **health):
    doc = {
        "server": {"id": 1, "cluster_id": "t", "data_dir": str(tmp_path / "data"), "peer_address": "127.0.0.1:0",
                   "client_address": "127.0.0.1:0", "http_address": "127.0.0.1:0", "fsync": False,
                   "insecure_peer_network": True},  # one server: no peer ever connects
        "cluster": {"members": {"1": "127.0.0.1:0"}},
        "raft": {"tick_ms": 10, "election_ticks": 4, "heartbeat_ticks": 1},
        "limits": {"min_session_timeout_ms": 1000},
    }
    if health:
        doc["health"] = health
    if auth:
        doc["auth"] = auth
    return parse_config(doc)


async def serve(tmp_path, nursery, auth: dict | None = None) -> Served:
    """Start one server (with an ``[auth]`` table if given) in ``nursery``."""
    service = CoordService(single_config(tmp_path, auth))
    await nursery.start(service.run)
    client_port = await nursery.start(serve_clients, service)
    http_port = await nursery.start(serve_http, service)
    with trio.fail_after(10):
        await service.node.wait_soft_state(lambda s: s.leader == 1)
        await service.node.applied(1).wait()  # the leader's first entry: the ensemble is settled
    return Served(service, client_port, http_port)


@pytest.fixture
async def served(tmp_path, nursery):
    yield await serve(tmp_path, nursery)


