"""Server configuration: the examples load, and bad files are refused naming the field."""

import glob
import os

import pytest

from coord.server.config import ConfigError, load_config, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base(**over):
    doc = {
        "server": {"id": 1, "cluster_id": "c", "data_dir": "/tmp/x", "peer_address": "127.0.0.1:1",
                   "client_address": "127.0.0.1:2", "insecure_peer_network": True},
        "cluster": {"members": {"1": "127.0.0.1:1", "2": "127.0.0.1:3"}},
    }
    for section, fields in over.items():
        doc.setdefault(section, {}).update(fields)
    return doc


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "conf", "**", "*.toml"), recursive=True)))
def test_example_configs_load(path):
    cfg = load_config(path)
    assert cfg.server_id >= 1 and cfg.data_dir


def test_valid_minimal():
    cfg = parse_config(base())
    assert cfg.server_id == 1 and sorted(cfg.members) == [1, 2]
    assert cfg.members[1].client == ("127.0.0.1", 2)  # own client address filled in


@pytest.mark.parametrize("over, field", [
    ({"server": {"id": 0}}, "server.id"),
    ({"server": {"id": "one"}}, "server.id"),
    ({"server": {"peer_address": "nohost"}}, "server.peer_address"),
    ({"server": {"client_address": "127.0.0.1:99999"}}, "server.client_address"),
    ({"server": {"cluster_id": ""}}, "server.cluster_id"),
    ({"raft": {"tick_ms": 0}}, "raft.tick_ms"),
    ({"raft": {"heartbeat_ticks": 10, "election_ticks": 10}}, "raft.heartbeat_ticks"),
    ({"limits": {"max_data_bytes": 1 << 30}}, "limits.max_data_bytes"),
    ({"cluster": {"members": {"2": "127.0.0.1:3"}}}, "cluster.members"),
    ({"cluster": {"members": {"x": "127.0.0.1:3"}}}, "cluster.members.x"),
    ({"cluster": {"join": True}}, "cluster.members"),
    ({"bogus": {}}, "bogus"),
    ({"cluster": {"members": {"1": {"peer": "127.0.0.1:1", "zookeeper": "x"}}}}, "cluster.members.1.zookeeper"),
    ({"cluster": {"members": {"1": {"peer": "127.0.0.1:1", "zk": "h:1"}}}}, "cluster.members.1.zk"),
    ({"namespace": {"reap_interval_ms": 0}}, "namespace.reap_interval_ms"),
    ({"namespace": {"reap": 1}}, "namespace.reap"),
])
def test_bad_config_names_the_field(over, field):
    with pytest.raises(ConfigError) as e:
        parse_config(base(**over))
    assert str(e.value).startswith(field), str(e.value)


def test_member_addresses_include_zookeeper_ports():
    cfg = parse_config(base(server={"zookeeper_address": "127.0.0.1:9"},
                            cluster={"members": {"1": "127.0.0.1:1",
                                                 "2": {"peer": "127.0.0.1:3", "zookeeper": "127.0.0.1:4"}}},
                            namespace={"reap_interval_ms": 250}))
    assert cfg.members[1].zookeeper == ("127.0.0.1", 9)  # own ZooKeeper address filled in
    assert cfg.members[2].to_wire() == {"peer": "127.0.0.1:3", "zookeeper": "127.0.0.1:4"}
    assert cfg.reap_interval_ms == 250


def test_missing_required_field():
    doc = base()
    del doc["server"]["data_dir"]
    with pytest.raises(ConfigError, match="server.data_dir: required"):
        parse_config(doc)


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
