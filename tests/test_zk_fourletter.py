"""Four-letter words in ZooKeeper's format, as monitoring parses them."""

from __future__ import annotations

import re

from coord.zookeeper.fourletter import IMPLEMENTED, parse_allow_list, render

STATUS = {
    "server_id": 2, "role": "follower", "applied": 0x1234, "nodes": 17, "sessions": 3, "watches": 5,
    "voters": [1, 2, 3], "learners": [], "config_version": 9, "version": "0.1.0",
    "members": {1: {"peer": "127.0.0.1:7001"}, 2: {"peer": "127.0.0.1:7002"}, 3: {"peer": "127.0.0.1:7003"}},
    "connections": [{"peer": "127.0.0.1:50000", "sid": 0x42, "timeout_ms": 10000, "received": 4, "sent": 3,
                     "last_zxid": 0x1200, "last_op": "GETD"}],
    "received": 40, "sent": 39, "latency": {"min": 0, "avg": 1.5, "max": 7},
    "conf": {"client_port": 2181, "tick_ms": 50, "min_session_timeout_ms": 1000, "max_session_timeout_ms": 60000,
             "data_dir": "/var/lib/coord"},
    "env": {"host.name": "box", "os.name": "Linux"},
    "watch_summary": {"connections": 1, "paths": 2, "total": 5},
}


def parse_like_the_benchmark(text: str) -> dict:
    """../shared/anchors/zookeeper/bench.py's node_srvr."""
    d = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            d[k.strip()] = v.strip()
    return d


def test_srvr_as_the_benchmark_reads_it():
    d = parse_like_the_benchmark(render("srvr", STATUS).decode())
    assert d["Mode"] == "follower"
    assert d["Zookeeper version"].startswith("3.9.0-coord-0.1.0")
    assert (d["Zxid"], d["Node count"], d["Connections"], d["Latency min/avg/max"]) == ("0x1234", "17", "1", "0/1.5/7")


def test_modes():
    def mode(**kw):
        return parse_like_the_benchmark(render("srvr", {**STATUS, **kw}).decode()).get("Mode")
    assert mode(role="leader") == "leader"
    assert mode(role="leader", voters=[1]) == "standalone"
    assert mode(role="learner") == "observer"
    assert mode(role="candidate") is None
    assert render("srvr", {**STATUS, "role": "candidate"}) == \
        b"This ZooKeeper instance is not currently serving requests\n"
    assert render("isro", {**STATUS, "role": "candidate"}) == b"null"


def test_simple_words():
    assert render("ruok", STATUS) == b"imok"
    assert render("isro", STATUS) == b"rw"


def test_stat_lists_clients_brief():
    text = render("stat", STATUS).decode()
    assert "Clients:\n /127.0.0.1:50000[1](queued=0,recved=4,sent=3)\n\nLatency min/avg/max" in text
    assert "Mode: follower\n" in text


def test_cons_lists_sessions():
    line = render("cons", STATUS).decode().splitlines()[0]
    assert line.startswith(" /127.0.0.1:50000[1](queued=0,recved=4,sent=3,sid=0x42,lop=GETD,")
    assert ",to=10000," in line and ",lzxid=0x1200," in line and line.endswith(")")


def test_mntr_is_tab_separated_zk_keys():
    rows = dict(line.split("\t") for line in render("mntr", STATUS).decode().splitlines())
    assert rows["zk_server_state"] == "follower"
    assert rows["zk_znode_count"] == "17" and rows["zk_watch_count"] == "5"
    assert rows["zk_avg_latency"] == "1.5" and rows["zk_global_sessions"] == "3"
    assert all(k.startswith("zk_") for k in rows)
    leader = dict(line.split("\t") for line in render("mntr", {
        **STATUS, "role": "leader", "server_id": 1, "progress": {1: {}, 2: {}, 3: {}}}).decode().splitlines())
    assert leader["zk_synced_followers"] == "2"


def test_envi_version_as_kazoo_parses_it():
    text = render("envi", STATUS).decode()
    assert text.startswith("Environment:\n")
    env = dict(line.split("=", 1) for line in text.splitlines()[1:])
    # kazoo's server_version: ENVI_VERSION = r"([\d\.]*).*" on zookeeper.version
    digits = re.match(r"([\d\.]*).*", env["zookeeper.version"]).group(1)
    assert tuple(int(d) for d in digits.split(".")) == (3, 9, 0)
    assert env["host.name"] == "box"


def test_conf_and_wchs():
    conf = render("conf", STATUS).decode()
    assert "clientPort=2181\n" in conf and "serverId=2\n" in conf and "tickTime=50\n" in conf
    assert "server.3=127.0.0.1:7003:7003:participant;" in conf and conf.endswith("version=9\n")
    assert render("wchs", STATUS) == b"1 connections watching 2 paths\nTotal watches:5\n"


def test_allow_list():
    allowed = parse_allow_list("ruok, mntr")
    assert allowed == frozenset({"ruok", "mntr", "srvr"})  # srvr always, as ZooKeeper
    assert render("mntr", STATUS, allowed).startswith(b"zk_version")
    assert render("conf", STATUS, allowed) == b"conf is not executed because it is not in the whitelist.\n"
    assert render("srvr", STATUS, frozenset()).startswith(b"Zookeeper version:")
    assert parse_allow_list("*") == IMPLEMENTED == parse_allow_list(None)
    assert render("dump", STATUS) == b"dump is not executed because it is not in the whitelist.\n"


def test_garbage_status_never_raises():
    for status in ({}, {"role": 5, "members": [1], "connections": "x", "latency": 3, "voters": None}):
        for word in IMPLEMENTED:
            assert isinstance(render(word, status), bytes)
