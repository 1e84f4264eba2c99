"""The client port (and the HTTP port) over TLS, on one in-process server.

What is checked: a TLS client writes and reads, and the connection knows
who it is (``transport_info``); clients that are not TLS, never finish
their handshake, or lack a good certificate are dropped within the
handshake timeout while other clients carry on; SIGHUP's reload serves a
new certificate to new connections and keeps the old ones going.
"""

import os
import shutil
import ssl

import pytest
import trio
from coordclient.wire import FramedStream

from coord.http.server import serve_http
from coord.server.clientport import serve_clients
from coord.server.config import parse_config
from coord.server.service import CoordService
from tests.tlsutil import TLSClient, TLSMaterial

HANDSHAKE_TIMEOUT = 0.5


def tls_config(tmp_path, material, client_auth="request"):
    table = material.tls_table(1, client_auth=client_auth, handshake_timeout_ms=int(HANDSHAKE_TIMEOUT * 1000))
    return parse_config({
        "server": {"id": 1, "cluster_id": "t", "data_dir": str(tmp_path / "data"), "peer_address": "127.0.0.1:0",
                   "client_address": "127.0.0.1:0", "http_address": "127.0.0.1:0", "fsync": False},
        "cluster": {"members": {"1": "127.0.0.1:0"}},
        "raft": {"tick_ms": 10, "election_ticks": 4, "heartbeat_ticks": 1},
        "tls": table,  # mutual TLS for peers too: no insecure_peer_network needed
    })


class Served:
    def __init__(self, service, client_port, http_port, material):
        self.service, self.material = service, material
        self.addr = ("127.0.0.1", client_port)
        self.http_port = http_port

    def connections(self):
        return list(self.service.connections)


async def serve(tmp_path, nursery, client_auth="request") -> Served:
    material = TLSMaterial(tmp_path / "ca")
    service = CoordService(tls_config(tmp_path, material, client_auth))
    await nursery.start(service.run)
    client_port = await nursery.start(serve_clients, service)
    http_port = await nursery.start(serve_http, service)
    with trio.fail_after(10):
        while not service.node.is_leader:
            await trio.sleep(0.01)
    return Served(service, client_port, http_port, material)


@pytest.fixture
async def served(tmp_path, nursery):
    return await serve(tmp_path, nursery)


async def dropped(stream: trio.SocketStream, within: float) -> float:
    """Seconds until the server closes ``stream`` (fails if not within ``within``)."""
    start = trio.current_time()
    with trio.fail_after(within):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
    return trio.current_time() - start


async def test_tls_client_writes_and_reads(served):
    alice = served.material.client("alice")
    c = await TLSClient.connect(served.addr, served.material.client_context(alice))
    await c.write("create", path="/tls", data=b"over TLS")
    r = await c.call("get", path="/tls", lin=True)
    assert r["data"] == b"over TLS"
    [conn] = served.connections()
    info = conn.transport_info
    assert info.tls and info.address == "127.0.0.1" and info.port > 0
    assert info.cert_subject == TLSMaterial.subject("alice") == "CN=alice,OU=ops,O=acme"
    assert c.stream.version() in ("TLSv1.2", "TLSv1.3")
    await c.aclose()


async def test_client_without_certificate_under_request_has_no_subject(served):
    c = await TLSClient.connect(served.addr, served.material.client_context())
    assert (await c.call("status"))["server_id"] == 1
    [conn] = served.connections()
    assert conn.transport_info.tls and conn.transport_info.cert_subject is None
    await c.aclose()


async def test_plain_tcp_client_dropped_while_tls_client_keeps_working(served):
    good = await TLSClient.connect(served.addr, served.material.client_context())
    # A plain client speaking the protocol: its first bytes are no ClientHello.
    plain = await trio.open_tcp_stream(*served.addr)
    await FramedStream(plain).send({"id": 1, "op": "status"})
    # A plain client that says nothing (it waits for the server to speak first).
    silent = await trio.open_tcp_stream(*served.addr)
    assert await dropped(plain, within=HANDSHAKE_TIMEOUT + 2) < HANDSHAKE_TIMEOUT + 2
    took = await dropped(silent, within=HANDSHAKE_TIMEOUT + 3)
    assert took < HANDSHAKE_TIMEOUT + 3
    for i in range(20):  # the TLS client was never held up
        assert (await good.call("status"))["server_id"] == 1
    for s in (plain, silent):
        await s.aclose()
    await good.aclose()


async def test_stalled_handshakes_do_not_stall_other_clients(served):
    """Clients that begin a handshake and stop halfway are dropped after the
    timeout; meanwhile a TLS client connects and is served without delay."""
    stalled = []
    for _ in range(10):
        s = await trio.open_tcp_stream(*served.addr)
        await s.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        stalled.append(s)
    start = trio.current_time()
    c = await TLSClient.connect(served.addr, served.material.client_context(), timeout=HANDSHAKE_TIMEOUT)
    assert (await c.call("status"))["server_id"] == 1
    assert trio.current_time() - start < HANDSHAKE_TIMEOUT  # not queued behind the stalled ones
    async with trio.open_nursery() as n:
        for s in stalled:
            n.start_soon(dropped, s, HANDSHAKE_TIMEOUT + 3)
    for s in stalled:
        await s.aclose()
    assert (await c.call("status"))["server_id"] == 1
    await c.aclose()


async def test_certificate_from_another_ca_refused(served, tmp_path):
    rogue = TLSMaterial(tmp_path / "rogue")
    ctx = served.material.client_context()
    ctx.load_cert_chain(*rogue.client("mallory"))
    with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
        c = await TLSClient.connect(served.addr, ctx)
        await c.call("status")  # TLS 1.3: the client learns of the refusal on its first read
    assert served.connections() == []


async def test_require_refuses_a_client_without_certificate(tmp_path, nursery):
    served = await serve(tmp_path, nursery, client_auth="require")
    with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
        c = await TLSClient.connect(served.addr, served.material.client_context(), hello=False)
        await c.call("status")
    assert served.connections() == []
    c = await TLSClient.connect(served.addr, served.material.client_context(served.material.client("bob")))
    await c.write("create", path="/bob", data=b"")
    assert served.connections()[0].transport_info.cert_subject == TLSMaterial.subject("bob")
    await c.aclose()


async def test_client_auth_none_asks_for_no_certificate(tmp_path, nursery):
    served = await serve(tmp_path, nursery, client_auth="none")
    c = await TLSClient.connect(served.addr, served.material.client_context(served.material.client("carol")))
    assert (await c.call("status"))["server_id"] == 1
    assert served.connections()[0].transport_info.cert_subject is None  # not asked, so not proven
    await c.aclose()


async def test_reload_serves_new_certificate_to_new_connections(served):
    ctx = served.material.client_context()
    old = await TLSClient.connect(served.addr, ctx)
    old_serial = old.peer_serial()
    creds = served.service.server.credentials

    # Bad files: nothing changes.
    cert_path = served.service.cfg.tls.cert
    backup = cert_path + ".bak"
    shutil.copy(cert_path, backup)
    with open(cert_path, "w") as f:
        f.write("garbage")
    assert served.service.server.reload_credentials() is False
    assert served.service.server.credentials is creds
    shutil.copy(backup, cert_path)

    served.material.server(1)  # a new certificate and key for server 1, same CA, same paths
    assert served.service.server.reload_credentials() is True
    new = await TLSClient.connect(served.addr, ctx)
    assert new.peer_serial() != old_serial
    assert (await old.call("status"))["server_id"] == 1  # the old connection keeps going
    assert old.peer_serial() == old_serial
    for c in (old, new):
        await c.aclose()


async def https_get(port: int, path: str, ctx: ssl.SSLContext) -> bytes:
    with trio.fail_after(10):
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(raw, ctx, server_hostname="127.0.0.1", https_compatible=True)
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        buf = b""
        while chunk := await stream.receive_some(65536):
            buf += chunk
    return buf


async def test_https_port_uses_the_same_certificate(served):
    ctx = served.material.client_context()
    buf = await https_get(served.http_port, "/health", ctx)
    assert buf.startswith(b"HTTP/1.0 200") or buf.startswith(b"HTTP/1.1 200"), buf[:200]
    metrics = await https_get(served.http_port, "/metrics", ctx)
    assert b"\ncoord_peer_handshakes_refused_total 0.0\n" in metrics
    plain = await trio.open_tcp_stream("127.0.0.1", served.http_port)
    await plain.send_all(b"GET /health HTTP/1.0\r\n\r\n")
    with trio.fail_after(10):  # no plain HTTP on a TLS port
        data = b""
        try:
            while chunk := await plain.receive_some(65536):
                data += chunk
        except trio.BrokenResourceError:
            pass
    assert b"200" not in data
    await plain.aclose()


def test_key_readable_by_others_warns_without_showing_it(tmp_path, caplog):
    from coord.security.credentials import Credentials

    material = TLSMaterial(tmp_path / "ca")
    cfg = tls_config(tmp_path, material)
    assert os.stat(cfg.tls.key).st_mode & 0o777 == 0o600
    Credentials.load(cfg)
    assert "readable by group or others" not in caplog.text
    os.chmod(cfg.tls.key, 0o644)
    Credentials.load(cfg)
    assert f"tls.key: {cfg.tls.key} is readable by group or others (mode 0644)" in caplog.text
    key_text = open(cfg.tls.key).read()
    body = "".join(key_text.strip().splitlines()[1:-1])
    assert body[:20] not in caplog.text
    assert isinstance(Credentials.load(cfg).client_ssl, ssl.SSLContext)
