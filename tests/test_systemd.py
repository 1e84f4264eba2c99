"""The systemd unit is valid, and READY=1 reaches $NOTIFY_SOCKET once the server serves."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from coord.server.sdnotify import notify
from tests.cluster import Cluster, child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "coord@.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_unit_verifies(tmp_path):
    exe = shutil.which("coord") or "/bin/true"  # verify wants an existing executable
    text = open(UNIT).read().replace("/usr/local/bin/coord", exe)
    unit = tmp_path / "coord@.service"
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "coord@server1.service")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Unknown" not in r.stderr and "ignoring" not in r.stderr, r.stderr


def test_unit_has_the_promised_settings():
    text = open(UNIT).read()
    for line in ("Type=notify", "DynamicUser=yes", "StateDirectory=coord/%i", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "Restart=on-failure", "/etc/coord/%i.toml"):
        assert line in text, line


def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_server_sends_ready_once_serving(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(30)
    c = Cluster(1, tmp_path)
    c.write_config(1)
    env = {**child_env(), "NOTIFY_SOCKET": sock_path}
    proc = subprocess.Popen([sys.executable, "-m", "coord", "serve", "--config", c.config_path(1)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        msg = srv.recv(4096).decode()
        assert "READY=1" in msg
        # It really serves by then: a client connection is accepted at once.
        with socket.create_connection(c.client_addr(1), timeout=5):
            pass
        proc.terminate()
        assert "STOPPING=1" in srv.recv(4096).decode()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.close()
