"""coordclient.Client against the in-process fake server: the API, errors,
multi, pipelining and argument checks."""

import random

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordclient import Client, ConnState, Stat, ops, parse_endpoints
from coordclient.errors import (
    BadVersionError,
    InvalidPathError,
    MultiError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RuntimeInconsistencyError,
    TooLargeError,
)
from coordclient.protocol import DEFAULT_MAX_DATA, STAT_FIELDS
from tests.backends import VIRTUAL_TIME
from tests.fakeserver import open_cluster

pytestmark = pytest.mark.anyio


async def test_crud_roundtrip():
    async with open_cluster(1) as cl, cl.client() as c:
        assert c.state is ConnState.CONNECTED and c.session_id and c.server_id == 1
        assert await c.create("/a", b"one") == "/a"
        data, stat = await c.get("/a")
        assert data == b"one" and stat.version == 0 and stat.data_length == 3 and stat.czxid == stat.mzxid
        stat2 = await c.set("/a", b"two", version=0)
        assert stat2.version == 1 and stat2.mzxid > stat.mzxid
        assert (await c.get("/a"))[0] == b"two"
        assert (await c.exists("/a")) == stat2
        assert await c.exists("/nope") is None
        assert await c.create("/a/b/c", b"deep", make_parents=True) == "/a/b/c"
        assert await c.children("/a") == ["b"]
        [(name, st_b)] = await c.children("/a", stats=True)
        assert name == "b" and isinstance(st_b, Stat) and st_b.num_children == 1
        await c.delete("/a", recursive=True)
        assert await c.exists("/a") is None
        assert c.last_zxid == cl.state.zxid


async def test_sequential_and_ephemeral_nodes():
    async with open_cluster(1) as cl:
        async with cl.client() as c:
            await c.create("/q")
            made = [await c.create("/q/item-", sequential=True) for _ in range(3)]
            assert made == ["/q/item-0000000000", "/q/item-0000000001", "/q/item-0000000002"]
            eph = await c.create("/q/lock", ephemeral=True)
            assert (await c.exists(eph)).ephemeral_owner == c.session_id
            with pytest.raises(NoChildrenForEphemeralsError):
                await c.create("/q/lock/child")
        # closing the session deleted the ephemeral node
        assert "/q/lock" not in cl.state.nodes and "/q/item-0000000000" in cl.state.nodes
        assert c.state is ConnState.CLOSED


async def test_errors_map_to_exceptions():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/e", b"x")
        await c.create("/e/kid")
        with pytest.raises(NoNodeError) as info:
            await c.get("/missing")
        assert info.value.path == "/missing"
        with pytest.raises(NoNodeError):
            await c.create("/no/parent")
        with pytest.raises(NodeExistsError):
            await c.create("/e")
        with pytest.raises(BadVersionError):
            await c.set("/e", b"y", version=7)
        with pytest.raises(BadVersionError):
            await c.delete("/e/kid", version=3)
        with pytest.raises(NotEmptyError):
            await c.delete("/e")
        with pytest.raises(NoNodeError):
            await c.children("/missing")


async def test_client_side_checks_send_nothing():
    async with open_cluster(1) as cl, cl.client() as c:
        before = sum(cl.state.op_counts.values())
        for bad in ["relative", "/trailing/", "//double", "/a/../b", "/ctl\x01"]:
            with pytest.raises(InvalidPathError):
                await c.get(bad)
        with pytest.raises(InvalidPathError):
            await c.create("/")
        with pytest.raises(InvalidPathError):
            await c.delete("/")
        with pytest.raises(TypeError):
            await c.create("/s", "text is not bytes")
        with pytest.raises(TooLargeError):
            await c.set("/s", b"x" * (DEFAULT_MAX_DATA + 1))
        with pytest.raises(ValueError):
            await c.set("/s", b"", version=-2)
        with pytest.raises(InvalidPathError):
            c.watch("no-slash")
        assert sum(cl.state.op_counts.values()) == before


async def test_request_over_the_frame_limit_fails_alone():
    async with open_cluster(1) as cl, cl.client() as c:
        big = b"x" * DEFAULT_MAX_DATA
        with pytest.raises(TooLargeError):
            await c.multi([ops.create(f"/big{i}", big) for i in range(5)])  # > 4 MiB in one frame
        assert c.connected and await c.create("/small") == "/small"
        assert cl.state.op_counts["multi"] == 0


async def test_multi_commits_atomically():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/m", b"v0")
        results = await c.multi([
            ops.check("/m", 0),
            ops.set("/m", b"v1", version=0),
            ops.create("/m/s-", b"", sequential=True),
            ops.create("/m/x"),
            ops.delete("/m/x"),
        ])
        assert results[0] is None and results[1].version == 1
        assert results[2] == "/m/s-0000000000" and results[3] == "/m/x" and results[4] is None
        # one transaction: one zxid for everything
        assert (await c.get("/m"))[1].mzxid == (await c.exists("/m/s-0000000000")).czxid


async def test_multi_failure_raises_multierror_and_applies_nothing():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/m", b"v0")
        zxid = cl.state.zxid
        with pytest.raises(MultiError) as info:
            await c.multi([ops.create("/m/new"), ops.check("/m", 5), ops.set("/m", b"no")])
        err = info.value
        assert err.index == 1 and isinstance(err.cause, BadVersionError)
        assert isinstance(err.results[0], RuntimeInconsistencyError) and isinstance(err.results[1], BadVersionError)
        assert "/m/new" not in cl.state.nodes and cl.state.data("/m") == b"v0" and cl.state.zxid == zxid
        with pytest.raises(TypeError):
            await c.multi([{"op": "frobnicate"}])


def test_multi_error_results_accept_codes_or_maps():
    from coordclient.messages import error_from as _error_from

    frame = {"ok": False, "err": "NoNode", "msg": "gone", "path": "/x", "index": 1,
             "results": [{"err": "RuntimeInconsistency", "msg": "", "path": None},
                         {"err": "NoNode", "msg": "gone", "path": "/x"}, "RuntimeInconsistency"]}
    err = _error_from(frame)
    assert isinstance(err, MultiError) and err.index == 1 and isinstance(err.cause, NoNodeError)
    assert [type(r) for r in err.results] == [RuntimeInconsistencyError, NoNodeError, RuntimeInconsistencyError]
    assert err.results[1].path == "/x"


async def test_pipelined_calls_complete_concurrently():
    async with open_cluster(1) as cl, cl.client() as c:
        cl.state.delay_reply = 0.01  # keep requests overlapping
        n = 200
        results = {}

        async def one(i):
            path = await c.create(f"/p{i}", str(i).encode())
            results[i] = (await c.get(path))[0]

        with anyio.fail_after(10):
            async with anyio.create_task_group() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)
        assert results == {i: str(i).encode() for i in range(n)}
        assert cl.state.max_active > 50  # really pipelined, not one at a time
        assert len(cl.state.apply_counts) == n and set(cl.state.apply_counts.values()) == {1}
        # seqs are 1..n with no gap
        assert sorted(seq for _, seq in cl.state.apply_counts) == list(range(1, n + 1))


async def test_sync_and_status_and_linearizable_reads():
    async with open_cluster(2) as cl, cl.client() as c:
        await c.create("/l", b"x")
        await c.sync()
        assert (await c.get("/l", linearizable=True))[0] == b"x"
        status = await c.status()
        assert status["server_id"] == c.server_id and status["role"] in ("leader", "follower")


async def test_one_shot_watches_fire_once():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/w", b"0")
        seen = {"data": [], "exists": [], "children": [], "async": []}
        done = anyio.Event()

        async def async_cb(ev):
            seen["async"].append(ev)
            done.set()

        await c.get("/w", watch=seen["data"].append)
        await c.exists("/w/new", watch=seen["exists"].append)
        await c.children("/w", watch=seen["children"].append)
        await c.get("/w", watch=async_cb)
        await c.set("/w", b"1")
        await c.create("/w/new")
        await c.set("/w", b"2")  # the data watches already fired
        with anyio.fail_after(5):
            await done.wait()
            while len(seen["children"]) < 1 or len(seen["exists"]) < 1:
                await anyio.sleep(0.01)
        assert [(e.type, e.path) for e in seen["data"]] == [("changed", "/w")]
        assert [(e.type, e.path) for e in seen["async"]] == [("changed", "/w")]
        assert [(e.type, e.path) for e in seen["exists"]] == [("created", "/w/new")]
        assert [(e.type, e.path) for e in seen["children"]] == [("children", "/w")]
        assert not c._watches  # fired watches are forgotten


async def test_watch_callback_errors_do_not_break_the_client():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/w")

        def broken(ev):
            raise RuntimeError("application bug")

        await c.get("/w", watch=broken)
        await c.set("/w", b"x")
        await anyio.sleep(0.05)
        assert (await c.get("/w"))[0] == b"x" and c.connected


async def test_persistent_watch_stream():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/t")
        async with c.watch("/t", recursive=True) as events:
            await c.create("/t/a", b"1")
            await c.set("/t/a", b"2")
            await c.delete("/t/a")
            await c.set("/t", b"top")
            got = []
            with anyio.fail_after(5):
                async for ev in events:
                    got.append((ev.type, ev.path))
                    if len(got) == 4:
                        break
        assert got == [("created", "/t/a"), ("changed", "/t/a"), ("deleted", "/t/a"), ("changed", "/t")]
        assert not cl.state.conns or all(not conn.watches for conn in cl.state.conns)  # unwatched on exit


async def test_watch_starts_now_or_after_start_zxid():
    async with open_cluster(2) as cl, cl.client(servers=[1]) as watcher, cl.client(servers=[2]) as writer:
        await writer.create("/cfg", b"0")  # committed before the watch: not an event of it
        read_at = writer.last_zxid
        await writer.set("/cfg", b"1")
        async with watcher.watch("/cfg") as now, watcher.watch("/cfg", start_zxid=read_at) as since:
            await writer.set("/cfg", b"2")
            with anyio.fail_after(5):
                assert [(await now.__anext__()).zxid] == [cl.state.zxid]
                assert [(await since.__anext__()).zxid, (await since.__anext__()).zxid] == [read_at + 1, cl.state.zxid]
        with pytest.raises(ValueError):
            watcher.watch("/cfg", start_zxid=-1)


async def test_non_recursive_persistent_watch_sees_children_events():
    async with open_cluster(1) as cl, cl.client() as c:
        await c.create("/t")
        async with c.watch("/t") as events:
            await c.create("/t/a")
            await c.create("/t/a/deeper")
            await c.set("/t", b"x")
            with anyio.fail_after(5):
                first, second = await events.__anext__(), await events.__anext__()
        assert (first.type, first.path) == ("children", "/t")
        assert (second.type, second.path) == ("changed", "/t")


async def test_listeners_and_wait_state():
    async with open_cluster(1) as cl:
        c = cl.client()
        states = []
        c.add_listener(states.append)
        c.add_listener(lambda s: 1 / 0)  # a broken listener is logged, not fatal
        async with c:
            assert await c.wait_state(timeout=1) is ConnState.CONNECTED
            with pytest.raises(TimeoutError):
                await c.wait_state(ConnState.EXPIRED, timeout=0.01)
        assert states == [ConnState.CONNECTED, ConnState.CLOSED]
        assert cl.state.op_counts["close"] == 1 and not cl.state.sessions


async def test_calls_outside_the_context_fail_cleanly():
    async with open_cluster(1) as cl:
        c = cl.client()
        from coordclient.errors import ConnectionLossError

        with pytest.raises(ConnectionLossError, match="not open"):
            await c.get("/")
        async with c:
            pass
        with pytest.raises(ConnectionLossError, match="closed"):
            await c.get("/")
        with pytest.raises(RuntimeError):
            async with c:
                pass


async def test_real_tcp_connection():
    async with open_cluster(1) as cl:
        port = await cl.servers[0].listen_tcp()
        async with Client(f"127.0.0.1:{port}", session_timeout=5) as c:
            await c.create("/tcp", b"over a socket")
            assert (await c.get("/tcp"))[0] == b"over a socket"


@VIRTUAL_TIME
async def test_unreachable_endpoints_fail_to_open():
    async with open_cluster(2) as cl:
        for s in cl.servers:
            s.stop()
        from coordclient.errors import ConnectionLossError

        with pytest.raises(ConnectionLossError, match="no server reachable"):
            async with cl.client(session_timeout=2):
                pass


def test_parse_endpoints():
    assert parse_endpoints("a:1, b:2,") == [("a", 1), ("b", 2)]
    assert parse_endpoints(["[::1]:2181", ("h", 3)]) == [("::1", 2181), ("h", 3)]
    for bad in ["", "nohost", "h:0", "h:x", ":5"]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), st.integers(1, 65535)),
                min_size=1, max_size=5))
def test_parse_endpoints_roundtrip(pairs):
    assert parse_endpoints(",".join(f"{h}:{p}" for h, p in pairs)) == pairs


def test_stat_layout_matches_protocol():
    assert tuple(Stat.__dataclass_fields__) == STAT_FIELDS
    with pytest.raises(Exception):
        Stat.from_wire([1, 2, 3])


def test_endpoint_order_is_shuffled_by_rng():
    orders = {tuple(Client("a:1,b:2,c:3,d:4", rng=random.Random(seed))._endpoints) for seed in range(20)}
    assert len(orders) > 1
