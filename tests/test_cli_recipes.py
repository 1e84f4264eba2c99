"""coordctl lock / elect, as processes, against fake servers on TCP.

The commands are registered on the coordctl group by
``coordclient.cli_recipes.register``; COORDCTL runs coordctl that way.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from coordclient import SyncClient
from coordclient.recipes.blocking import SyncElection, SyncLock
from tests.cluster import child_env
from tests.fakeserver import ThreadedFakeCluster

COORDCTL = [sys.executable, "-c", "from coordclient.cli import cli; from coordclient.cli_recipes import register; "
            "register(cli); cli.main(prog_name='coordctl')", "--timeout", "2"]
PY = sys.executable

# A command that reports SIGTERM and carries on (so that only SIGKILL ends it).
STUBBORN = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: print("got TERM", flush=True))
    print("ready", flush=True)
    time.sleep(60)
""")


@pytest.fixture(scope="module")
def fake():
    with ThreadedFakeCluster(1) as cluster:
        yield cluster


@pytest.fixture
def env(fake):
    return {**child_env(), "COORD_ENDPOINTS": fake.endpoints}


def coordctl(env, *args, **kwargs):
    return subprocess.run([*COORDCTL, *args], env=env, capture_output=True, text=True, timeout=30, **kwargs)


def start(env, *args):
    return subprocess.Popen([*COORDCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_lock_runs_the_command_with_its_token_and_exit_status(env, fake):
    r = coordctl(env, "lock", "/cli/a", "--", PY, "-c",
                 "import os, sys; print(os.environ['COORD_FENCING_TOKEN'], os.environ['COORD_LOCK_NODE']); sys.exit(7)")
    assert r.returncode == 7, r.stderr
    token, node = r.stdout.split()
    assert int(token) > 0 and node.startswith("/cli/a/lock-")
    with SyncClient(fake.endpoints) as c:
        assert c.children("/cli/a") == []  # released
        with SyncLock(c, "/cli/a"):
            r = coordctl(env, "lock", "--wait", "0.3", "/cli/a", "--", "true")
            assert r.returncode == 3 and "not acquired within 0.3s" in r.stderr
    assert coordctl(env, "lock", "/cli/a", "--", "/no/such/command").returncode == 127


def test_lost_lock_sends_sigterm_then_sigkill(env, fake):
    proc = start(env, "lock", "--grace", "0.5", "/cli/b", "--", PY, "-c", STUBBORN)
    try:
        assert proc.stdout.readline() == "ready\n"
        with SyncClient(fake.endpoints) as admin:
            [node] = admin.children("/cli/b")
            t0 = time.monotonic()
            admin.delete(f"/cli/b/{node}")  # the lock is lost
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 128 + signal.SIGKILL
        assert out == "got TERM\n" and "was deleted; the command was stopped" in err
        assert time.monotonic() - t0 >= 0.5
    finally:
        proc.kill()


def test_sigterm_is_passed_on_and_the_lock_released(env, fake):
    script = textwrap.dedent("""
        import signal, sys
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))
        print("ready", flush=True)
        signal.pause()
    """)
    proc = start(env, "lock", "/cli/c", "--", PY, "-c", script)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 42
    finally:
        proc.kill()
    with SyncClient(fake.endpoints) as c:
        assert c.children("/cli/c") == []


def test_elect_runs_the_command_and_observe_prints_every_change(env, fake):
    observer = start(env, "-o", "json", "elect", "/cli/e", "--observe", "--count", "5")
    try:
        first = json.loads(observer.stdout.readline())
        assert first == {"path": "/cli/e", "leader": None, "token": None, "node": None}
        with SyncClient(fake.endpoints) as c:
            with SyncElection(c, "/cli/e", "alpha").campaign() as term:
                alpha_token = term.fencing_token
        r = coordctl(env, "elect", "/cli/e", "beta", "--", "sh", "-c",
                     'echo "$COORD_LEADER_IDENTITY $COORD_FENCING_TOKEN"; exit 3')
        assert r.returncode == 3
        identity, token = r.stdout.split()
        assert identity == "beta" and int(token) > alpha_token
        out, _ = observer.communicate(timeout=15)
        changes = [json.loads(line) for line in out.splitlines()]
        assert [c["leader"] for c in changes] == ["alpha", None, "beta", None]
        assert [changes[0]["token"], changes[2]["token"]] == [alpha_token, int(token)]
    finally:
        observer.kill()
    r = coordctl(env, "elect", "/cli/e", "--observe", "--count", "1")
    assert r.returncode == 0 and r.stdout == "(no leader)\n"


@pytest.mark.parametrize("args", [["lock", "/x"], ["elect", "/x", "me"], ["elect", "/x", "--observe", "me"]])
def test_usage_errors(env, args):
    r = coordctl(env, *args)
    assert r.returncode == 2 and "Usage" in r.stderr
