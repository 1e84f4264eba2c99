"""The HTTP port of one in-process server: /metrics moves as it should,
/health and /ready answer, bad input is refused and changes nothing.

The server is a single-member ensemble in this test's Trio run (ports 0,
no fsync), reached through the SDK and a plain HTTP client.
"""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordclient import Client
from coordclient.errors import NodeExistsError
from tests.httpclient import get_json, http
from tests.httpserved import served  # noqa: F401 - the fixture


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, headers, body = await http(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_write_moves_the_counters_it_should(served):
    before = await scrape(served.http_port)
    async with Client(served.endpoint, session_timeout=5) as c:
        await c.create("/m", b"12345")
        with pytest.raises(NodeExistsError):
            await c.create("/m", b"x")
        assert (await c.get("/m"))[0] == b"12345"
        assert (await c.get("/m", linearizable=True))[0] == b"12345"
        after = await scrape(served.http_port)
        assert val(after, "coord_requests_total", op="create", outcome="ok") == \
            val(before, "coord_requests_total", op="create", outcome="ok") + 1
        assert val(after, "coord_requests_total", op="create", outcome="NodeExists") == 1
        assert val(after, "coord_requests_total", op="get", outcome="ok") >= 1
        assert val(after, "coord_request_duration_seconds_count", op="create") == 2
        assert val(after, "coord_linearizable_read_batches_total") >= 1
        assert val(after, "coord_linearizable_reads_total") >= 1
        assert val(after, "coord_nodes") == val(before, "coord_nodes") + 1
        assert val(after, "coord_data_bytes") == val(before, "coord_data_bytes") + 5
        assert val(after, "coord_sessions") == val(before, "coord_sessions") + 1
        assert val(after, "coord_client_connections") == 1
        assert val(after, "coord_raft_commit_index") > val(before, "coord_raft_commit_index")
        assert val(after, "coord_raft_applied_index") == val(after, "coord_raft_commit_index")
        # the session open, the create and the refused create were proposed and committed here
        assert val(after, "coord_raft_proposals_committed_total") >= \
            val(before, "coord_raft_proposals_committed_total") + 3
        assert val(after, "coord_disk_wal_fsync_duration_seconds_count") > \
            val(before, "coord_disk_wal_fsync_duration_seconds_count")
        assert val(after, "coord_raft_append_batch_entries_sum") >= \
            val(before, "coord_raft_append_batch_entries_sum") + 3
    final = await scrape(served.http_port)
    assert val(final, "coord_sessions") == val(before, "coord_sessions")  # closed with the client


async def test_metric_set_names_and_raft_state(served):
    m = await scrape(served.http_port)
    names = {name for name, _ in m}
    for required in (
        "coord_raft_term", "coord_raft_role", "coord_raft_is_leader", "coord_raft_has_leader",
        "coord_raft_leader_changes_total", "coord_raft_elections_started_total", "coord_raft_elections_won_total",
        "coord_raft_commit_index", "coord_raft_applied_index", "coord_raft_last_index",
        "coord_raft_proposals_committed_total", "coord_raft_proposals_dropped_total",
        "coord_raft_append_batch_entries_bucket", "coord_disk_wal_fsync_duration_seconds_bucket",
        "coord_raft_snapshots_total", "coord_raft_snapshot_duration_seconds_count",
        "coord_raft_snapshot_size_bytes", "coord_raft_snapshot_pause_seconds", "coord_raft_voters",
        "coord_raft_learners", "coord_raft_joint_config",
        "coord_sessions", "coord_sessions_expired_total", "coord_reapable_nodes", "coord_reaped_nodes_total",
        "coord_watches", "coord_nodes", "coord_data_bytes",
        "coord_client_connections", "coord_forwarded_writes_total", "coord_linearizable_read_batches_total",
        "coord_process_cpu_seconds_total", "coord_process_resident_memory_bytes", "coord_process_open_fds",
        "coord_event_loop_lag_seconds_bucket",
    ):
        assert required in names, required
    assert all(n.startswith("coord_") for n in names)
    assert val(m, "coord_raft_role", role="leader") == 1 and val(m, "coord_raft_role", role="follower") == 0
    assert val(m, "coord_raft_has_leader") == 1 and val(m, "coord_raft_is_leader") == 1
    assert val(m, "coord_raft_elections_won_total") == 1 and val(m, "coord_raft_elections_started_total") == 1
    assert val(m, "coord_raft_leader_changes_total") == 1
    assert val(m, "coord_raft_voters") == 1 and val(m, "coord_raft_joint_config") == 0


async def test_every_metric_family_is_declared_once(served):
    """A counter ``x_total`` and a gauge ``x`` are both family ``x`` in
    OpenMetrics (Prometheus' parser refuses the whole scrape for a second
    TYPE line of one family)."""
    status, _, body = await http(served.http_port, "/metrics")
    assert status == 200
    names = [fam.name for fam in text_string_to_metric_families(body.decode())]
    assert len(names) > 40
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


async def test_health_and_ready(served):
    status, _, body = await http(served.http_port, "/health")
    assert status == 200 and b'"status":"ok"' in body
    ready = await get_json(served.http_port, "/ready")
    assert ready["ready"] is True and ready["missing"] == [] and ready["role"] == "leader"
    assert set(ready["checks"]) == {"leader", "member", "caught_up", "leader_contact", "linearizable_read", "disk"}


async def test_ready_names_what_is_missing(served):
    svc = served.service
    # Pretend this server has fallen far behind: readiness must say so.
    svc.cfg = dataclasses.replace(svc.cfg, ready_max_lag=-1)
    body = await get_json(served.http_port, "/ready", expect=503)
    assert body["ready"] is False and "caught_up" in body["missing"]
    assert "at most -1" in body["checks"]["caught_up"]["detail"]


async def test_bad_input_is_refused_and_changes_nothing(served):
    port = served.http_port
    before = served.service.node.core.commit_index
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = await http(port, "/api/node?path=/x", method=method)
        assert status == 405 and "GET" in headers["allow"]
    cases = [
        ("/api/node?path=nope", 400), ("/api/node?path=/a//b", 400), ("/api/node?path=/missing", 404),
        ("/api/node?path=/&limit=0", 400), ("/api/node?path=/&limit=abc", 400), ("/api/node?path=/&limit=100000", 400),
        ("/api/sessions?after=-1", 400), ("/api/history?since=nan", 400), ("/api/events?path=/&from=x", 400),
        ("/api/events?path=/&recursive=maybe", 400), ("/no/such/page", 404), ("/static/../app.py", 404),
        ("/api/node?path=/&x=" + "a" * 5000, 400),
    ]
    for path, want in cases:
        status, _, body = await http(port, path)
        assert status == want, (path, status, body)
        assert b'"error"' in body
    assert served.service.node.core.commit_index == before  # nothing was proposed


async def test_status_pages_and_static_files(served):
    st = await get_json(served.http_port, "/api/status")
    assert st["server_id"] == 1 and st["role"] == "leader" and st["http"].startswith("127.0.0.1:")
    status, headers, body = await http(served.http_port, "/static/vendor/uplot/LICENSE")
    assert status == 200 and b"MIT" in body
    status, headers, _ = await http(served.http_port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    status, _, body = await http(served.http_port, "/metrics", method="HEAD")
    assert status == 200 and body == b""
