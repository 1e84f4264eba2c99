"""The programs in examples/ run, against a real ensemble, and do what they say."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import trio

from coord.cli import free_ports
from tests.cluster import ROOT, Cluster, child_env


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory):
    with Cluster(3, tmp_path_factory.mktemp("examples")) as cluster:
        cluster.start()
        trio.run(cluster.wait_leader)
        yield cluster.endpoints


def run_example(name, endpoints, *args, timeout=90):
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args],
                          env={**child_env(), "COORD_ENDPOINTS": endpoints}, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_threaded_worker_takes_the_lock_with_fencing(endpoints):
    out = run_example("threaded_worker_lock.py", endpoints, "--threads", "4", "--tasks", "12")
    assert out.returncode == 0, out.stderr
    assert "12 tasks done under the lock on 4 threads; 12 fenced ledger entries" in out.stdout


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_ring_sharding_does_every_job_once(endpoints, loop):
    out = run_example("ring_sharding.py", endpoints, "--workers", "3", "--jobs", "40", *(["--trio"] if loop == "trio" else []))
    assert out.returncode == 0, out.stderr
    assert "all 40 jobs done exactly once by 3 workers" in out.stdout
    assert out.stdout.count("worker-") == 3


def get_json(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/leader", timeout=2) as resp:
        return json.loads(resp.read())


def test_fastapi_job_runs_only_on_the_leader_and_moves_when_it_dies(endpoints):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    ports = free_ports(2)
    procs = {}
    try:
        for i, port in enumerate(ports):
            env = {**child_env(), "COORD_ENDPOINTS": endpoints, "JOB_IDENTITY": f"replica-{i}",
                   "JOB_INTERVAL": "0.1"}
            procs[port] = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "fastapi_leader_job.py"),
                                            "--port", str(port)], env=env, cwd=ROOT,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def states():
            out = {}
            for port in procs:
                if procs[port].poll() is None:
                    try:
                        out[port] = get_json(port)
                    except OSError:
                        pass
            return out

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = states()
            if len(st) == 2 and any(s["me"]["leading"] and s["me"]["runs"] > 2 for s in st.values()):
                break
            time.sleep(0.2)
        st = states()
        leading = [p for p, s in st.items() if s["me"]["leading"]]
        assert len(leading) == 1, st  # the job runs on one replica only
        leader_port = leading[0]
        assert {s["leader"] for s in st.values()} == {st[leader_port]["me"]["identity"]}
        assert all(s["me"]["runs"] == 0 for p, s in st.items() if p != leader_port)
        procs[leader_port].send_signal(signal.SIGKILL)  # the leader dies: its session expires in 10 s
        other = next(p for p in procs if p != leader_port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not get_json(other)["me"]["leading"]:
            time.sleep(0.2)
        after = get_json(other)
        assert after["me"]["leading"] and after["me"]["token"] > st[leader_port]["me"]["token"]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)
