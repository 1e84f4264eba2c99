"""coordctl (click) against fake servers on TCP in a background thread."""

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from coordclient import SyncClient
from coordclient.cli import cli
from tests.fakeserver import ThreadedFakeCluster


@pytest.fixture(scope="module")
def fake():
    with ThreadedFakeCluster(1) as cluster:
        yield cluster


@pytest.fixture
def run(fake):
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(cli, list(args), env={"COORD_ENDPOINTS": fake.endpoints, **(env or {})})

    return invoke


def test_create_get_set_ls_stat_rm_text(run):
    assert run("create", "/c", "hello").stdout == "/c\n"
    assert run("create", "-p", "/c/a/b").stdout == "/c/a/b\n"
    assert run("create", "-s", "/c/q-", "x").stdout == "/c/q-0000000001\n"
    assert run("get", "/c").stdout == "hello\n"
    r = run("set", "/c", "bye", "--version", "0")
    assert r.exit_code == 0 and r.stdout == ""
    assert run("get", "/c").stdout == "bye\n"
    assert run("ls", "/c").stdout == "a\nq-0000000001\n"
    long_lines = run("ls", "-l", "/c").stdout.splitlines()
    assert long_lines[0].split() == ["0", "0", "1", "-", "a"]
    stat = dict(line.split(" = ") for line in run("stat", "/c").stdout.splitlines())
    assert stat["version"] == "1" and stat["num_children"] == "2" and stat["data_length"] == "3"
    assert run("rm", "-r", "/c").exit_code == 0
    assert "c" not in run("ls", "/").stdout.split()


def test_json_output(run, fake):
    with SyncClient(fake.endpoints) as c:
        c.create("/j", "text é".encode())
        c.create("/bin", b"\xff\x00")
    got = json.loads(run("-o", "json", "get", "/j").stdout)
    assert got["data"] == "text é" and got["path"] == "/j" and got["stat"]["version"] == 0
    binary = json.loads(run("-o", "json", "get", "/bin").stdout)
    assert "data" not in binary and base64.b64decode(binary["data_b64"]) == b"\xff\x00"
    assert json.loads(run("-o", "json", "set", "/j", "v2").stdout)["stat"]["version"] == 1
    assert json.loads(run("-o", "json", "create", "/j/k").stdout) == {"path": "/j/k"}
    listing = json.loads(run("-o", "json", "ls", "-l", "/j").stdout)
    assert [e["name"] for e in listing["children"]] == ["k"] and listing["children"][0]["stat"]["version"] == 0
    assert {"bin", "j"} <= set(json.loads(run("-o", "json", "ls", "/").stdout)["children"])
    assert json.loads(run("-o", "json", "stat", "/j").stdout)["stat"]["num_children"] == 1
    assert json.loads(run("-o", "json", "rm", "-r", "/j").stdout) == {"deleted": True, "path": "/j"}
    run("rm", "/bin")


def test_operation_errors_exit_1_with_one_line(run):
    r = run("get", "/nope")
    assert r.exit_code == 1 and r.stderr == "coordctl: NoNode: /nope\n" and r.stdout == ""
    assert run("stat", "/nope").stderr == "coordctl: NoNode: /nope\n"
    run("create", "/v")
    r = run("rm", "/v", "--version", "5")
    assert r.exit_code == 1 and r.stderr.startswith("coordctl: BadVersion: /v")
    r = run("create", "/v")
    assert r.exit_code == 1 and r.stderr == "coordctl: NodeExists: /v\n"
    r = run("get", "relative")
    assert r.exit_code == 1 and r.stderr.startswith("coordctl: InvalidPath:")
    run("rm", "/v")


def test_usage_errors_exit_2(run):
    r = CliRunner().invoke(cli, ["get", "/"], env={"COORD_ENDPOINTS": ""})
    assert r.exit_code == 2 and "COORD_ENDPOINTS" in r.stderr
    r = CliRunner().invoke(cli, ["--endpoints", "nonsense", "get", "/"])
    assert r.exit_code == 2 and "--endpoints" in r.stderr
    assert run("get").exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_unreachable_exits_3():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(cli, ["--endpoints", f"127.0.0.1:{port}", "--timeout", "0.5", "get", "/"])
    assert r.exit_code == 3 and r.stderr.startswith("coordctl: ConnectionLoss: no server reachable")


def test_watch_prints_events_until_count(run, fake):
    with SyncClient(fake.endpoints) as c:
        c.create("/wt")

    def make_changes():
        # Wait until coordctl's watch is registered, then change the node.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if fake.call(lambda: any(w.kind == "persistent" for conn in fake.state.conns
                                     for w in conn.watches.values())):
                break
            time.sleep(0.01)
        with SyncClient(fake.endpoints) as writer:
            writer.set("/wt", b"1")
            writer.create("/wt/child")

    t = threading.Thread(target=make_changes)
    t.start()
    r = run("-o", "json", "watch", "-r", "/wt", "--count", "2")
    t.join(10)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0
    assert [(e["type"], e["path"]) for e in events] == [("changed", "/wt"), ("created", "/wt/child")]
    run("rm", "-r", "/wt")


def test_main_entry_point_in_a_subprocess(fake):
    env = {**os.environ, "COORD_ENDPOINTS": fake.endpoints,
           "PYTHONPATH": os.pathsep.join([os.path.join(os.path.dirname(os.path.dirname(__file__)), "client"),
                                          os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from coordclient.cli import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, "get", "/missing"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr == "coordctl: NoNode: /missing\n"


def test_help_works_without_endpoints_or_credentials():
    # a newcomer's first `coordctl get --help` must not demand COORD_ENDPOINTS
    for args in (["--help"], ["get", "--help"], ["acl", "set", "--help"], ["members", "--help"]):
        r = CliRunner().invoke(cli, args, env={"COORD_ENDPOINTS": ""})
        assert r.exit_code == 0 and "Usage:" in r.stdout, (args, r.stderr)


def test_output_options_may_follow_the_command(run):
    run("create", "/late", "v")
    r = run("stat", "/late", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["stat"]["data_length"] == 1
    r = run("get", "/late", "--output", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["data"] == "v"
    run("rm", "/late")


def test_bad_credentials_are_usage_errors_naming_the_option(run, tmp_path):
    r = run("--user", "nocolon", "get", "/")
    assert r.exit_code == 2 and "--user" in r.stderr
    r = run("--cacert", str(tmp_path / "missing.crt"), "get", "/")
    assert r.exit_code == 2 and "missing.crt" in r.stderr
    bogus = tmp_path / "bogus.crt"
    bogus.write_text("not a certificate")
    r = run("--cacert", str(bogus), "get", "/")
    assert r.exit_code == 2 and "--cacert" in r.stderr
    r = run("acl", "set", "/", "world:anyone:xyz")
    assert r.exit_code == 2 and "unknown permission" in r.stderr
