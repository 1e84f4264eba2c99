"""``coord certs`` round trip, and ``coord dev`` (plain and ``--secure``)
starting an ensemble a client can use with what it prints."""

import os
import re
import signal
import ssl
import stat
import subprocess
import sys

import pytest
import trio
import trio.testing
from click.testing import CliRunner
from cryptography import x509

from coord.cli import main
from coord.security.tls import client_port_context, peer_client_context, peer_server_context, server_ids
from coord.server.config import TLSConfig
from tests.cluster import child_env
from tests.tlsutil import TLSClient


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_certs_round_trip(tmp_path):
    d = str(tmp_path / "pki")
    code, out = run("certs", "issue", "--dir", d, "--server-id", "1", "--host", "127.0.0.1")
    assert code == 1 and "no CA in" in out and "coord certs init" in out
    code, out = run("certs", "init", "--dir", d)
    assert code == 0, out
    assert mode(f"{d}/ca.key") == 0o600 and mode(f"{d}/ca.crt") == 0o644
    code, out = run("certs", "init", "--dir", d)
    assert code == 1 and "exists; pass --force" in out  # never overwritten by accident

    code, out = run("certs", "issue", "--dir", d, "--server-id", "1", "--host", "127.0.0.1", "--host", "localhost")
    assert code == 0, out
    assert "[tls]" in out and f'cert = "{d}/server-1.crt"' in out  # the lines to paste
    assert mode(f"{d}/server-1.key") == 0o600
    for sid in (2,):
        assert run("certs", "issue", "--dir", d, "--server-id", str(sid), "--host", "127.0.0.1")[0] == 0
    code, out = run("certs", "issue", "--dir", d, "--client", "alice")
    assert code == 0 and "x509:CN=alice" in out and mode(f"{d}/client-alice.key") == 0o600

    assert run("certs", "issue", "--dir", d, "--client", "a b")[0] == 1
    assert run("certs", "issue", "--dir", d, "--server-id", "3")[0] == 1  # no --host
    assert run("certs", "issue", "--dir", d, "--server-id", "3", "--client", "x")[0] == 2
    code, out = run("certs", "secret", "--out", str(tmp_path / "peer.secret"))
    assert code == 0 and mode(tmp_path / "peer.secret") == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", (tmp_path / "peer.secret").read_text())

    # What was issued: the id binding, the usages, a working TLS handshake with a client certificate.
    cert = x509.load_pem_x509_certificate(open(f"{d}/server-1.crt", "rb").read())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["coord:server:1"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]

    server_ctx = client_port_context(TLSConfig(f"{d}/server-1.crt", f"{d}/server-1.key", f"{d}/ca.crt", "require"))
    client_ctx = ssl.create_default_context(cafile=f"{d}/ca.crt")
    client_ctx.load_cert_chain(f"{d}/client-alice.crt", f"{d}/client-alice.key")
    subjects = []

    async def handshake(server_ctx, client_ctx, hostname):
        a, b = trio.testing.memory_stream_pair()
        srv = trio.SSLStream(a, server_ctx, server_side=True)
        cli = trio.SSLStream(b, client_ctx, server_hostname=hostname)
        async with trio.open_nursery() as n:
            n.start_soon(srv.do_handshake)
            n.start_soon(cli.do_handshake)
        subjects.append(x509.load_der_x509_certificate(srv.getpeercert(binary_form=True)).subject.rfc4514_string())
        return srv, cli

    await handshake(server_ctx, client_ctx, "127.0.0.1")
    assert subjects == ["CN=alice"]
    # Peers: server 2 dials server 1 with mutual TLS; each sees the other's id.
    t1 = TLSConfig(f"{d}/server-1.crt", f"{d}/server-1.key", f"{d}/ca.crt")
    t2 = TLSConfig(f"{d}/server-2.crt", f"{d}/server-2.key", f"{d}/ca.crt")
    srv, cli = await handshake(peer_server_context(t1), peer_client_context(t2), None)
    assert server_ids(srv.getpeercert()) == [2] and server_ids(cli.getpeercert()) == [1]


async def _start_dev(tmp_path, *extra):
    """Start ``coord dev`` with one server; the exports it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "coord", "dev", "-n", "1", "--data-dir", str(tmp_path / "dev"),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env(), text=True)
    wanted = 5 if extra else 1

    def read_exports():
        exports = {}
        for line in proc.stdout:  # ends at EOF if the process dies or is killed
            m = re.match(r"export (COORD_\w+)=(.*)", line.strip())
            if m:
                exports[m.group(1)] = m.group(2)
            if len(exports) == wanted:
                break
        return exports

    try:
        with trio.fail_after(90):
            exports = await trio.to_thread.run_sync(read_exports, abandon_on_cancel=True)
    except BaseException:
        _stop(proc)
        raise
    assert len(exports) == wanted, (exports, proc.poll())
    return proc, exports


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
async def test_dev_ensemble_works_with_its_exports(tmp_path, secure):
    proc, env = await _start_dev(tmp_path, *(["--secure"] if secure else []))
    try:
        host, port = env["COORD_ENDPOINTS"].split(",")[0].rsplit(":", 1)
        if not secure:
            assert mode(tmp_path / "dev" / "peer.secret") == 0o600
            assert 'peer_secret_file = "' in (tmp_path / "dev" / "server1.toml").read_text()
            from coordclient import Client
            async with Client(env["COORD_ENDPOINTS"], session_timeout=5) as c:
                await c.create("/dev", b"ok")
                assert (await c.get("/dev"))[0] == b"ok"
            return
        assert set(env) == {"COORD_ENDPOINTS", "COORD_CACERT", "COORD_CERT", "COORD_KEY", "COORD_USER"}
        user, _, password = env["COORD_USER"].partition(":")
        assert user == "super" and len(password) >= 16
        assert mode(env["COORD_KEY"]) == 0o600
        ctx = ssl.create_default_context(cafile=env["COORD_CACERT"])
        ctx.load_cert_chain(env["COORD_CERT"], env["COORD_KEY"])
        c = await TLSClient.connect((host, int(port)), ctx)
        await c.write("create", path="/dev", data=b"ok")
        assert (await c.call("get", path="/dev"))["data"] == b"ok"
        await c.aclose()
        plain = await trio.open_tcp_stream(host, int(port))  # the port speaks TLS only
        await plain.send_all(b"\x00\x00\x00\x10" + b"x" * 16)
        data = b""
        with trio.fail_after(10):
            try:
                while chunk := await plain.receive_some(100):
                    data += chunk
            except trio.BrokenResourceError:
                pass
        assert data == b"" or data[0] == 0x15  # closed, at most after a TLS alert record
        await plain.aclose()
    finally:
        _stop(proc)
