"""End to end: real server processes whose disks fill up and are freed again.

Each server's data directory is a small tmpfs of its own (8 MiB, mounted
here: root is needed; the test is skipped with the reason where mounting is
not permitted, and fails under CI).  A filler file takes all of one server's
space; writes go on until that server can no longer allocate its next WAL
segment.  Then: a follower refuses writes with ``NoSpace`` while the others
take them, keeps serving reads and its sessions, shows it in its status,
metrics and /ready, and resumes by itself once the filler is deleted; a
leader hands its leadership over; and every acknowledged write is still
there after the whole ensemble is killed and restarted.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
import trio

from coordclient import Client, NoSpaceError
from coordclient.errors import ConnectionLossError, OperationTimeoutError
from tests.cluster import Cluster, child_env, dump_logs_on_failure
from tests.httpclient import http

VALUE = b"v" * 4000  # ~16 of these fill a 64 KiB WAL segment


def _mount_tmpfs(path: str, size: str = "8m") -> None:
    os.makedirs(path, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                           capture_output=True, text=True, timeout=30)
        reason = (r.stderr or r.stdout).strip() if r.returncode else ""
    except (OSError, subprocess.SubprocessError) as e:
        reason = str(e)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs under CI (the disk-full test needs root): {reason}")
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {reason}")


def _umount(path: str) -> None:
    if subprocess.run(["umount", path], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


@pytest.fixture
def cluster(request, tmp_path):
    c = Cluster(3, tmp_path, http=True, wal_segment_bytes=64 << 10, min_session_timeout_ms=2000)
    mounted = []
    try:
        for sid in (1, 2, 3):
            d = data_dir(c, sid)
            _mount_tmpfs(d)
            mounted.append(d)
        c.start()
        yield c
    finally:
        dump_logs_on_failure(request, c)
        c.close()
        for d in mounted:
            _umount(d)


def data_dir(c: Cluster, sid: int) -> str:
    return os.path.join(c.base, f"data{sid}")


def fill(directory: str) -> str:
    """Take all the space left on ``directory``'s file system; the filler's path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            buf = b"\xff" * size
            while True:
                try:
                    if os.write(fd, buf) < size:
                        break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize < 4096, "the filler did not fill the file system"
    return path


async def status_of(c: Cluster, sid: int) -> dict:
    return (await c.statuses()).get(sid, {})


async def wait_status(c: Cluster, sid: int, pred, timeout: float = 30.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            st = await status_of(c, sid)
            if st and pred(st):
                return st
            await trio.sleep(0.05)


async def metrics(c: Cluster, sid: int) -> dict[str, float]:
    status, _, body = await http(c.http_ports[sid], "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("coord_disk_full"):
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


async def write_until_full(c: Cluster, w: Client, victim: int, acked: list[str], prefix: str) -> None:
    """Create nodes through ``w`` until ``victim`` reports a full disk
    (its current WAL segment used up, no room for the next)."""
    with trio.fail_after(60):
        k = 0
        while not (await status_of(c, victim)).get("disk_full"):
            path = f"/d/{prefix}{k}"
            try:
                await w.create(path, VALUE)
                acked.append(path)
            except (NoSpaceError, ConnectionLossError, OperationTimeoutError):
                pass  # outcome unknown or refused: not counted as acknowledged
            k += 1


async def test_a_follower_whose_disk_fills_refuses_writes_serves_reads_and_resumes_by_itself(cluster):
    c = cluster
    leader = await c.wait_leader()
    victim = next(s for s in (1, 2, 3) if s != leader)
    others = [s for s in (1, 2, 3) if s != victim]
    acked: list[str] = []
    async with Client(c.endpoints_of(others), session_timeout=5) as w, \
            Client(c.endpoints_of([victim]), session_timeout=5) as on_victim:
        await w.create("/d", b"")
        filler = fill(data_dir(c, victim))
        await write_until_full(c, w, victim, acked, "a")
        for k in range(10):  # the ensemble goes on: the leader commits with the other server
            await w.create(f"/d/b{k}", VALUE)
            acked.append(f"/d/b{k}")

        with pytest.raises(NoSpaceError):
            await on_victim.create("/d/refused", b"x")
        data, _ = await on_victim.get("/d")  # reads and the session are still served
        assert data == b"" and await on_victim.exists("/d") is not None
        st = await status_of(c, victim)
        assert st["disk_full"] and st["role"] == "follower" and st["leader"] == leader
        m = await metrics(c, victim)
        assert m["coord_disk_full"] == 1 and m["coord_disk_full_episodes_total"] == 1 and m["coord_disk_full_seconds_total"] > 0
        code, _, body = await http(c.http_ports[victim], "/ready")
        ready = json.loads(body)
        assert code == 503 and "disk" in ready["missing"] and "disk full" in ready["checks"]["disk"]["detail"]
        assert (await metrics(c, leader))["coord_disk_full"] == 0
        r = await trio.run_process([sys.executable, "-m", "coordclient.cli", "--endpoints", c.endpoints, "status"],
                                   capture_stdout=True, env=child_env())
        row = next(line for line in r.stdout.decode().splitlines() if f":{c.client_ports[victim]} " in line)
        assert "disk_full" in row  # what an operator sees in `coordctl status`

        os.unlink(filler)  # the operator frees space: nothing else to do
        commit = (await status_of(c, leader))["commit"]
        await wait_status(c, victim, lambda s: not s["disk_full"] and s["applied"] >= commit)
        await on_victim.create("/d/after", b"x")  # writes accepted again
        kids = set(await on_victim.children("/d"))
        assert {p.rsplit("/", 1)[1] for p in acked} <= kids and "after" in kids
        m = await metrics(c, victim)
        assert m["coord_disk_full"] == 0 and m["coord_disk_full_episodes_total"] == 1
    log = c.logs(victim, tail=1 << 20)
    assert 1 <= log.count("DISK FULL") <= 2, log  # once (a reminder only after 60 s), never a flood
    assert "No space left on device" in log and "disk space is back" in log


async def test_a_leader_whose_disk_fills_hands_over_and_no_acknowledged_write_is_lost(cluster):
    c = cluster
    old = await c.wait_leader()
    others = [s for s in (1, 2, 3) if s != old]
    acked: list[str] = []
    async with Client(c.endpoints_of(others), session_timeout=5) as w, \
            Client(c.endpoints_of([old]), session_timeout=5) as on_old:
        await w.create("/d", b"")
        filler = fill(data_dir(c, old))
        await write_until_full(c, w, old, acked, "a")
        new = await c.wait_leader(timeout=20, among=tuple(others))  # the full leader handed over
        assert new != old
        st = await wait_status(c, old, lambda s: s["leader"] == new)
        assert st["disk_full"] and st["role"] == "follower"
        for k in range(20):
            await w.create(f"/d/b{k}", VALUE)  # the ensemble takes writes on the others
            acked.append(f"/d/b{k}")
        with pytest.raises(NoSpaceError):
            await on_old.create("/d/refused", b"x")
        assert await on_old.exists("/d") is not None
        assert "handing leadership to server" in c.logs(old, tail=1 << 20)

        os.unlink(filler)
        commit = (await status_of(c, new))["commit"]
        await wait_status(c, old, lambda s: not s["disk_full"] and s["applied"] >= commit)

    # Everything acknowledged survives a kill -9 of the whole ensemble.
    for sid in (1, 2, 3):
        c.kill(sid)
    for sid in (1, 2, 3):
        c.start_server(sid)
    await c.wait_leader()
    names = {p.rsplit("/", 1)[1] for p in acked}
    for sid in (1, 2, 3):
        async with Client(c.endpoints_of([sid]), session_timeout=5) as r:
            await r.sync()
            kids = set(await r.children("/d"))
            assert names <= kids, (sid, sorted(names - kids))
