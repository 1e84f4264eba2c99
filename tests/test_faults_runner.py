"""The fault soak's runner (``python -m tests.faults``) leaves no server
behind when it is stopped with SIGTERM (as ``timeout`` and CI runners stop
it): the servers of the schedule under way are killed, not orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _children_serving(ppid: int) -> list[int]:
    """Pids of the fault servers (``tests.faults.serve``) whose parent is ``ppid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == ppid and b"tests.faults.serve" in cmd:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_schedules_servers(tmp_path):
    runner = subprocess.Popen(
        [sys.executable, "-m", "tests.faults", "--seeds", "1", "--duration", "60", "--save-dir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(servers) < 3 and time.monotonic() < deadline and runner.poll() is None:
            time.sleep(0.2)
            servers = _children_serving(runner.pid)
        assert len(servers) == 3, f"the schedule did not start its servers: {runner.poll()}"
        time.sleep(1.0)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
        assert runner.returncode == 130, err.decode()[-2000:]
        assert b"interrupted" in err
        left = [pid for pid in servers if _alive(pid)]
        assert left == [], f"servers left running after SIGTERM: {left}"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
