"""The consistent-hash ring: the pure ring's movement properties, and
``RingMember`` hand-off against the fake ensemble under joins, leaves, a
crash and a network cut, checked with recorded ownership intervals and
fencing tokens (virtual time: the cut waits out a session timeout)."""

import collections

import anyio
import pytest

from coordclient import ops
from coordclient.recipes import HashRing, RingMember, key_hash
from coordclient.recipes.ring import RING_SIZE
from tests.backends import VIRTUAL_OR_REAL, VIRTUAL_TIME
from tests.fakeserver import open_cluster

pytestmark = pytest.mark.anyio

KEYS = [f"job-{i}" for i in range(4000)]


def owners(ring):
    return {k: ring.owner(k) for k in KEYS}


def test_keys_move_only_to_or_from_the_changed_member():
    members = {m: 32 for m in "abcde"}
    before = owners(HashRing(members, partitions=1024))
    grown = owners(HashRing({**members, "f": 32}, partitions=1024))
    moved = [k for k in KEYS if before[k] != grown[k]]
    assert moved and all(grown[k] == "f" for k in moved)  # only to the new member
    assert 0.08 < len(moved) / len(KEYS) < 0.3  # about 1/6
    shrunk = owners(HashRing({m: 32 for m in "abde"}, partitions=1024))
    moved = [k for k in KEYS if before[k] != shrunk[k]]
    assert moved and all(before[k] == "c" for k in moved)  # only from the removed member
    assert {k for k in KEYS if before[k] == "c"} == set(moved)
    assert 0.1 < len(moved) / len(KEYS) < 0.35  # about 1/5
    assert HashRing({}, 16).owner("x") is None


def test_a_slice_belongs_to_the_successor_of_its_start_point():
    ring = HashRing({"a": 4, "b": 4, "c": 4}, partitions=64)
    points = sorted((key_hash(f"{m}#{i}"), m) for m in "abc" for i in range(4))
    for n in range(64):
        start = ring.partition_start(n)
        after = [m for p, m in points if p >= start]
        assert ring.partition_owner(n) == (after[0] if after else points[0][1])
        assert start < RING_SIZE
    assert ring.partition("job-1") == key_hash("job-1") >> (160 - 6)
    with pytest.raises(ValueError):
        HashRing({}, partitions=48)


PARTITIONS = 16
KEY_OF = {}
for _k in KEYS:
    KEY_OF.setdefault(HashRing({}, PARTITIONS).partition(_k), _k)


class Recorder:
    """Every member runs one worker per slice it owns, inside ``guard``: the
    worker's lifetime is when the member acted on the slice."""

    def __init__(self):
        self.intervals = collections.defaultdict(list)  # partition -> [(token, start, end, member)]
        self.revoked = collections.Counter()

    def member(self, client, member_id, tg, **kw):
        rec = self

        async def work(n, token, ring):
            key = KEY_OF[n]
            start = anyio.current_time()
            try:
                async with ring.guard(key) as held:
                    assert held == token and ring.owns(key)
                    await ring.fenced(key, [ops.set("/work", b"%s %d" % (member_id.encode(), n))])
                    await anyio.sleep_forever()
            except Exception:  # noqa: BLE001 - PartitionLostError: the slice moved on
                pass
            finally:
                rec.intervals[n].append((token, start, anyio.current_time(), member_id))

        ring = None

        def assign(n, token):
            tg.start_soon(work, n, token, ring)

        def revoke(n):
            rec.revoked[member_id] += 1

        ring = RingMember(client, "/ring", member_id, vnodes=8, partitions=PARTITIONS, on_assign=assign,
                          on_revoke=revoke, handoff_timeout=1.0, **kw)
        return ring

    def check(self):
        """No slice had two owners at once, and tokens increased per slice."""
        for n, spans in self.intervals.items():
            spans = sorted(spans, key=lambda s: s[1])
            for (tok_a, _, end_a, who_a), (tok_b, start_b, _, who_b) in zip(spans, spans[1:]):
                assert end_a <= start_b, f"partition {n}: {who_a} until {end_a}, {who_b} from {start_b}"
                assert tok_a < tok_b, f"partition {n}: token {tok_a} then {tok_b}"


async def settle(*rings, timeout=30):
    with anyio.fail_after(timeout):
        for r in rings:
            await wait_view(r, {x.member_id for x in rings})
            await r.settled()


async def wait_view(ring, ids):
    while set(ring.members.ids) != ids:
        await anyio.sleep(0.01)


def assert_disjoint_and_complete(rings):
    owned = collections.Counter()
    for r in rings:
        for n in r.owned():
            owned[n] += 1
            assert r.owner(KEY_OF[n]) == r.member_id
    assert sorted(owned) == list(range(PARTITIONS)) and set(owned.values()) == {1}
    for k in KEYS[:200]:  # every member answers owner() alike, and owns() only on the owner
        answers = {r.owner(k) for r in rings}
        assert len(answers) == 1
        assert [r.member_id for r in rings if r.owns(k)] == [answers.pop()]


@VIRTUAL_OR_REAL
async def test_ring_hand_off_on_join_leave_and_crash():
    rec = Recorder()
    async with open_cluster(3) as cl, anyio.create_task_group() as tg:
        clients = {}
        for name in ("a", "b", "c", "d"):
            clients[name] = await tg.start(_client_task, cl, name)
        async with rec.member(clients["a"], "a", tg) as a, rec.member(clients["b"], "b", tg) as b, \
                rec.member(clients["c"], "c", tg) as c:
            await settle(a, b, c)
            assert_disjoint_and_complete([a, b, c])
            before = {n: r.member_id for r in (a, b, c) for n in r.owned()}
            async with rec.member(clients["d"], "d", tg) as d:
                await settle(a, b, c, d)
                assert_disjoint_and_complete([a, b, c, d])
                after = {n: r.member_id for r in (a, b, c, d) for n in r.owned()}
                moved = [n for n in before if before[n] != after[n]]
                assert moved and all(after[n] == "d" for n in moved)  # only to the new member
            await settle(a, b, c)  # d left: its slices went back, and only its slices moved
            back = {n: r.member_id for r in (a, b, c) for n in r.owned()}
            assert back == before
            # c crashes: its session expires and the others take its slices
            c_slices = set(c.owned())
            cl.state.expire_session(clients["c"].session_id)
            with anyio.fail_after(30):
                while set(a.owned()) | set(b.owned()) != set(range(PARTITIONS)):
                    await anyio.sleep(0.05)
            assert c_slices and not c.owned()
        rec.check()
        assert rec.revoked["d"] == len(moved)  # d handed each slice over through on_revoke
        # tenures: the first 16, each move to d and back, and c's slices after the crash
        assert sum(len(v) for v in rec.intervals.values()) >= PARTITIONS + 2 * len(moved) + len(c_slices)
        tg.cancel_scope.cancel()


@VIRTUAL_TIME
async def test_no_slice_has_two_owners_across_a_network_cut():
    rec = Recorder()
    async with open_cluster(3) as cl, anyio.create_task_group() as tg:
        tg.start_soon(cl.state.reap_sessions)
        cut_client = await tg.start(_client_task, cl, "cut", [1])
        others = [await tg.start(_client_task, cl, name, [2, 3]) for name in ("x", "y")]
        async with rec.member(cut_client, "cut", tg) as cut, rec.member(others[0], "x", tg) as x, \
                rec.member(others[1], "y", tg) as y:
            await settle(cut, x, y)
            theirs = set(cut.owned())
            assert theirs
            cl.server(1).blackhole = True  # the cut member's only server stops answering
            t0 = anyio.current_time()
            with anyio.fail_after(60):
                while set(x.owned()) | set(y.owned()) != set(range(PARTITIONS)):
                    await anyio.sleep(0.05)
            assert anyio.current_time() - t0 >= 3.0  # only after its session (3 s) expired
            assert not cut.owned()
            # the cut member's late fenced write is refused by coord
            data = cl.state.data("/work")
            for n in theirs:
                assert not cut.owns(KEY_OF[n])
            assert cl.state.data("/work") == data
        rec.check()
        ends = [end for n in theirs for _, _, end, who in rec.intervals[n] if who == "cut"]
        starts = [start for n in theirs for _, start, _, who in rec.intervals[n] if who != "cut"]
        assert ends and starts and max(ends) <= min(starts)
        assert max(ends) - t0 < 3.0  # the cut member stopped before its session could expire
        tg.cancel_scope.cancel()


async def _client_task(cl, name, servers=None, *, task_status=anyio.TASK_STATUS_IGNORED):
    """A client that lives until the test's task group is cancelled."""
    try:
        async with cl.client(seed=hash(name) % 1000, servers=servers, session_timeout=3.0) as c:
            if await c.exists("/work") is None:
                try:
                    await c.create("/work", b"")
                except Exception:  # noqa: BLE001 - another client made it
                    pass
            task_status.started(c)
            await anyio.sleep_forever()
    except Exception:  # noqa: BLE001 - a crashed client's session is gone: that is the test
        pass
