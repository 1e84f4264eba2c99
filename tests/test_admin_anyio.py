"""``AdminClient`` on asyncio as well as Trio: status, finding the leader,
a membership change there and back, against real server processes."""

from __future__ import annotations

import pytest
import trio
import anyio

from coordclient.admin import AdminClient
from coordclient.errors import NotLeaderError
from tests.cluster import Cluster, dump_logs_on_failure

pytestmark = pytest.mark.anyio


@pytest.fixture
def cluster(request, tmp_path):
    c = Cluster(3, tmp_path, spare=1)
    c.start()
    try:
        trio.run(c.wait_leader)
        yield c
    finally:
        dump_logs_on_failure(request, c)
        c.close()


async def test_status_leader_and_a_membership_change_there_and_back(cluster):
    admin = AdminClient(cluster.endpoints_of(range(1, 5)), timeout=10)
    addr, st = await admin.find_leader()
    assert st["role"] == "leader" and st["voters"] == [1, 2, 3]
    assert (await admin.status(addr))["server_id"] == st["server_id"]
    sts = await admin.all_statuses()
    assert sum(s is not None for s in sts.values()) == 3  # server 4 is not running yet: None, no error
    cluster.start_joining(4)
    st = await admin.converge(add=[cluster.addrs(4)], timeout=60)
    assert st["voters"] == [1, 2, 3, 4] and st["learners"] == []
    st = await admin.converge(add=[cluster.addrs(4)], timeout=60)  # already there: nothing to do
    assert st["voters"] == [1, 2, 3, 4]
    st = await admin.converge(remove=[4], timeout=60)
    assert st["voters"] == [1, 2, 3]


async def test_no_server_reachable_is_a_clear_error_within_the_timeout(cluster):
    cluster.close()
    admin = AdminClient(cluster.endpoints, timeout=1.5)
    with anyio.fail_after(10):
        with pytest.raises(NotLeaderError):
            await admin.find_leader()
