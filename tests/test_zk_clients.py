"""ZooKeeper's own clients against coord's ZooKeeper port, unmodified.

* ``zkCli.sh`` from Debian's ``zookeeper`` package (the Java client):
  create, ls, get -s, set, stat, getAcl, config, addWatch, delete, checking
  what it prints.
* node-zookeeper-client (pure JavaScript, from the npm registry, installed
  by ``.ci/run`` into tests/zkclients): create, getData, setData and
  getChildren with a watch.

Without the client installed the test is skipped here, and fails under CI
(``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import trio

from coordclient import SyncClient
from tests.cluster import Cluster, dump_logs_on_failure

ZKCLI = "/usr/share/zookeeper/bin/zkCli.sh"
HERE = os.path.dirname(os.path.abspath(__file__))
NODE_CLIENT = os.path.join(HERE, "zkclients", "nodeclient.js")
NODE_MODULES = os.path.join(HERE, "zkclients", "node_modules", "node-zookeeper-client")


def need(ok: bool, what: str) -> None:
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing; .ci/run installs it")
        pytest.skip(f"{what} is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def coord(tmp_path_factory):
    c = Cluster(3, tmp_path_factory.mktemp("zkclients"), zookeeper=True,
                extra_config="[namespace]\nreap_interval_ms = 100\n")
    c.start()
    trio.run(c.wait_leader)
    yield c
    c.close()


@pytest.fixture
def hosts(coord, request):
    yield coord.zk_hosts
    dump_logs_on_failure(request, coord)


def test_zkcli(hosts, coord):
    need(os.path.exists(ZKCLI) and shutil.which("java") is not None, "zkCli.sh (Debian package zookeeper)")
    script = "\n".join([
        "create /zkcli hello", "ls /", "get -s /zkcli", "set /zkcli v2", "stat /zkcli", "getAcl /zkcli",
        "config", "addWatch /zkcli", "delete /zkcli", "ls /", "quit", ""])
    p = subprocess.run([ZKCLI, "-server", hosts.split(",")[0]], input=script, capture_output=True, text=True,
                       timeout=120)
    out = p.stdout
    assert "Created /zkcli" in p.stdout + p.stderr
    assert "[zkcli, zookeeper]" in out  # ls /
    assert "hello\ncZxid = 0x" in out and "dataVersion = 0" in out and "aclVersion = 0" in out  # get -s
    assert "dataVersion = 1" in out and "dataLength = 2" in out  # stat after set
    assert "'world,'anyone\n: cdrwa" in out  # getAcl
    assert "server.1=127.0.0.1:" in out and "participant" in out  # config
    assert "type:NodeDeleted path:/zkcli" in out  # the addWatch fired on delete
    with SyncClient(coord.endpoints) as c:
        assert c.exists("/zkcli") is None


def test_zkcli_containers_ttl_nodes_and_session_listings(hosts, coord):
    """ZooKeeper 3.8's zkCli: create -c (container), create -t (TTL),
    getEphemerals, getAllChildrenNumber; then the leader reaps the empty
    container and the expired TTL node, as ZooKeeper's ContainerManager."""
    need(os.path.exists(ZKCLI) and shutil.which("java") is not None, "zkCli.sh (Debian package zookeeper)")
    script = "\n".join([
        "create -c /box", "create /box/item", "stat /box", "create -t 800 /ttl x", "stat /ttl",
        "create /tree", "create /tree/a", "create /tree/a/b", "getAllChildrenNumber /tree",
        "create -e /tree/mine", "getEphemerals /tree", "delete /box/item", "quit", ""])
    p = subprocess.run([ZKCLI, "-server", hosts.split(",")[0]], input=script, capture_output=True, text=True,
                       timeout=120)
    out = p.stdout
    assert "Created /box" in out + p.stderr and "Created /ttl" in out + p.stderr
    assert "ephemeralOwner = 0x8000000000000000" in out  # stat /box: ZooKeeper's container marker
    assert "ephemeralOwner = 0xff00000000000320" in out  # stat /ttl: 0xFF << 56 | 800
    assert "\n2\n" in out  # getAllChildrenNumber /tree: /tree/a and /tree/a/b
    assert "[/tree/mine]" in out  # getEphemerals /tree (the session's own)
    with SyncClient(coord.endpoints) as c:
        deadline = time.monotonic() + 20
        while (c.exists("/box") or c.exists("/ttl")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.exists("/box") is None, "the empty container was not reaped"
        assert c.exists("/ttl") is None, "the expired TTL node was not reaped"
        assert c.exists("/tree/a/b") is not None  # plain nodes stay
        assert c.exists("/tree/mine") is None  # zkCli's session ended: its ephemeral went


def test_node_zookeeper_client(hosts, coord):
    need(shutil.which("node") is not None and os.path.isdir(NODE_MODULES),
         "node-zookeeper-client (npm install in tests/zkclients)")
    p = subprocess.run(["node", NODE_CLIENT, hosts, "/fromnode"], capture_output=True, text=True, timeout=60)
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"created": "/fromnode", "data": "from-node", "version": 0, "children": [], "version_after": 1,
                   "event": {"type": "NODE_CHILDREN_CHANGED", "path": "/fromnode"}}, (got, p.stderr)
    with SyncClient(coord.endpoints) as c:  # the same node, seen through coord's own protocol
        data, stat = c.get("/fromnode")
        assert data == b"changed" and stat.num_children == 1
