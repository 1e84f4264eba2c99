"""Units of the observability code: histograms and quantiles, the index
clock behind per-peer lag in seconds, election counting, the ring of
samples, the namespace's data-bytes counter, and the configuration."""

from __future__ import annotations

import types

import cbor2
import pytest
import trio

from coord.namespace.state import NamespaceStateMachine
from coord.observe.observer import IndexClock, Observer
from coord.observe.ring import Ring
from coord.observe.stats import Histogram, RaftStats, ServiceStats, quantile
from coord.raft.types import Entry, Membership, Role
from coord.server.config import ConfigError, parse_config


def test_histogram_buckets_follow_prometheus_le():
    h = Histogram((1, 2, 4))
    for v in (0.5, 1, 1.5, 4, 9):
        h.observe(v)
    assert h.cumulative() == [("1.0", 2), ("2.0", 3), ("4.0", 4), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(16.0)


def test_quantile_interpolates_inside_the_bucket():
    bounds = (1.0, 2.0, 4.0)
    assert quantile(bounds, [0, 0, 0, 0], 0.99) is None
    assert quantile(bounds, [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert quantile(bounds, [100, 0, 0, 0], 0.99) == pytest.approx(0.99)
    assert quantile(bounds, [0, 0, 0, 3], 0.99) == 4.0  # +Inf reports the top bound


def test_service_stats_bound_labels():
    st = ServiceStats()
    st.request("get", {"ok": True}, 0.0)
    st.request(["not", "hashable"], {"ok": False, "err": "BadArguments"}, 0.0)
    st.request("drop table", {"ok": False, "err": "Unimplemented"}, 0.0)
    assert st.requests == {("get", "ok"): 1, ("other", "BadArguments"): 1, ("other", "Unimplemented"): 1}
    assert st.count(frozenset({"get"})) == 1


def test_index_clock_tells_lag_in_seconds():
    ic = IndexClock()
    ic.note(term=3, last_index=10, now=100.0)
    ic.note(term=3, last_index=15, now=101.0)
    ic.note(term=3, last_index=15, now=102.0)  # no new entry: no new point
    ic.note(term=3, last_index=20, now=103.0)
    assert ic.lag_seconds(match=20, last_index=20, now=110.0) == 0.0
    assert ic.lag_seconds(match=15, last_index=20, now=110.0) == pytest.approx(7.0)  # lacks entries since t=103
    assert ic.lag_seconds(match=12, last_index=20, now=110.0) == pytest.approx(9.0)  # since t=101
    ic.note(term=4, last_index=21, now=111.0)  # a new term starts a new clock
    assert ic.lag_seconds(match=12, last_index=21, now=112.0) == pytest.approx(1.0)


def fake_core(**kw):
    base = dict(node_id=1, term=1, vote=0, role=Role.FOLLOWER, leader_id=0)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_elections_and_leader_changes_are_inferred_from_the_core():
    core = fake_core()
    st = RaftStats(core)
    core.leader_id = 2  # a leader appears
    st.observe_core(core)
    core.term, core.vote, core.role, core.leader_id = 2, 1, Role.CANDIDATE, 0  # we campaign
    st.observe_core(core)
    core.role, core.leader_id = Role.LEADER, 1  # and win
    st.observe_core(core)
    st.observe_core(core)
    core.term, core.vote, core.role, core.leader_id = 3, 3, Role.FOLLOWER, 3  # someone else wins the next term
    st.observe_core(core)
    assert (st.elections_started, st.elections_won, st.leader_changes) == (1, 1, 3)


def fake_service():
    core = types.SimpleNamespace(commit_index=0, term=1, leader_id=1, role=Role.LEADER, last_index=0)
    node = types.SimpleNamespace(core=core, obs=RaftStats(fake_core(role=Role.LEADER, leader_id=1)))
    ns = types.SimpleNamespace(session_count=0, node_count=1)
    return types.SimpleNamespace(obs=ServiceStats(), node=node, ns=ns, connections=set())


def test_ring_samples_rates_and_quantiles_and_is_bounded():
    svc = fake_service()
    ring = Ring(svc, size=3)
    assert ring.take(now=1000.0) is None  # the baseline
    for _ in range(10):
        svc.obs.request("create", {"ok": True}, 0.0)
    svc.node.core.commit_index = 20
    svc.node.obs.fsync.observe(0.003)
    svc.node.obs.leader_changes += 1
    smp = ring.take(now=1002.0)
    assert smp.writes == 5.0 and smp.commits == 10.0 and smp.reads == 0.0
    assert smp.leader_changed and 2.5 <= smp.p99_fsync_ms <= 5.0
    assert smp.p99_read_ms is None and smp.p99_write_ms is not None
    for k in range(5):
        ring.take(now=1003.0 + k)
    assert len(ring.samples) == 3 and not ring.samples[-1].leader_changed
    assert [s.t for s in ring.since(1005.0)] == [1006.0, 1007.0]


def test_observer_tick_keeps_the_index_clock_only_while_leader():
    svc = fake_service()
    obs = Observer(svc)
    obs.tick(10.0)
    svc.node.core.last_index = 5
    obs.tick(10.25)
    assert obs.last_tick == 10.25
    assert obs.index_clock.lag_seconds(0, 5, 11.25) == pytest.approx(1.0)
    svc.node.core.role = Role.FOLLOWER
    obs.tick(10.5)
    assert obs.index_clock.lag_seconds(0, 5, 11.0) == 0.0  # not leader: no clock


async def test_observer_task_records_loop_lag(autojump_clock):
    svc = fake_service()
    obs = Observer(svc)
    async with trio.open_nursery() as n:
        await n.start(obs.run)
        await trio.sleep(2.1)
        n.cancel_scope.cancel()
    assert obs.loop_lag.count >= 8  # one per quarter second
    assert obs.loop_lag.counts[0] == obs.loop_lag.count  # no lag under a mock clock
    assert len(obs.ring.samples) >= 1


def cmd(**kw) -> Entry:
    cmd.index = getattr(cmd, "index", 0) + 1
    return Entry(1, cmd.index, data=cbor2.dumps({"t": 1, "sid": 0, "seq": 0, **kw}))


def total_data(ns: NamespaceStateMachine) -> int:
    return sum(len(node[0]) for node in ns.dump()["nodes"].values())


def test_data_bytes_follows_every_change_and_undo():
    ns = NamespaceStateMachine()
    steps = [
        dict(op="create", path="/a", data=b"12345"),
        dict(op="create", path="/a/b/c", data=b"xy", parents=True),
        dict(op="set", path="/a", data=b"1"),
        dict(op="multi", ops=[{"op": "set", "path": "/a", "data": b"longer"},
                              {"op": "create", "path": "/a/b/c", "data": b"dup"}]),  # fails: rolled back
        dict(op="multi", ops=[{"op": "create", "path": "/z", "data": b"zzz"},
                              {"op": "delete", "path": "/a/b/c"}]),
        dict(op="delete", path="/a", recursive=True),
    ]
    for step in steps:
        ns.apply(cmd(**step))
        assert ns.data_bytes == total_data(ns), step
    assert ns.data_bytes == 3
    snap = ns.snapshot()
    other = NamespaceStateMachine()
    other.restore(snap)
    assert other.data_bytes == 3
    other.restore(b"")
    assert other.data_bytes == 0


def test_children_page_is_ordered_and_cursor_based():
    ns = NamespaceStateMachine()
    ns.apply(cmd(op="create", path="/p", data=b""))
    for name in ("d", "a", "c", "b", "e"):
        ns.apply(cmd(op="create", path=f"/p/{name}", data=b""))
    assert ns.children_page("/p", "", 2) == (["a", "b"], 5)
    assert ns.children_page("/p", "b", 2) == (["c", "d"], 5)
    assert ns.children_page("/p", "e", 2) == ([], 5)


def base_doc(**server):
    return {"server": {"id": 1, "cluster_id": "c", "data_dir": "/tmp/x", "peer_address": "127.0.0.1:1",
                       "client_address": "127.0.0.1:2", "insecure_peer_network": True, **server},
            "cluster": {"members": {"1": "127.0.0.1:1"}}}


def test_config_http_address_and_health_settings():
    assert parse_config(base_doc()).http_address is None
    cfg = parse_config({**base_doc(http_address="127.0.0.1:8080"),
                        "health": {"max_applied_lag": 5, "read_timeout_ms": 300}})
    assert cfg.http_address == ("127.0.0.1", 8080) and cfg.ready_max_lag == 5 and cfg.ready_read_timeout_ms == 300
    for doc, field in [(base_doc(http_address="8080"), "server.http_address"),
                       ({**base_doc(), "health": {"max_lag": 1}}, "health.max_lag"),
                       ({**base_doc(), "health": {"read_timeout_ms": 0}}, "health.read_timeout_ms")]:
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            parse_config(doc)


def test_membership_roles_in_the_ensemble_view():
    from coord.observe.ensemble import member_role
    m = Membership(voters=frozenset({1, 2, 4}), outgoing=frozenset({1, 2, 3}), learners=frozenset({5}))
    assert [member_role(i, m) for i in (1, 3, 4, 5)] == ["voter", "voter (leaving)", "voter (joining)", "learner"]
