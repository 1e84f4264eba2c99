"""A TLS ensemble end to end: three real server processes whose peers use
mutual TLS only (no cluster secret, no "trusted network"), clients over
TLS, peers that present the wrong certificate refused, and certificate
rotation with SIGHUP."""

import signal

import pytest
import trio

from coord.security.peerauth import PeerSecurity
from coord.security.tls import peer_client_context, peer_server_context
from coord.server.config import TLSConfig
from coord.transport.handshake import HandshakeRefused, dial
from tests.cluster import HOST, Cluster, dump_logs_on_failure
from tests.tlsutil import TLSClient, TLSMaterial


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    material = TLSMaterial(base / "pki")
    client_cert = material.client("harness")
    c = Cluster(3, base / "ensemble", peer_secret=False, client_ssl=material.client_context(client_cert),
                tls=lambda sid: material.tls_table(sid, client_auth="require", handshake_timeout_ms=1000))
    c.material = material
    c.client_cert = client_cert
    c.start()
    yield c
    c.close()


@pytest.fixture
def cluster(tls_cluster, request):
    yield tls_cluster
    dump_logs_on_failure(request, tls_cluster)


def peer_security(material: TLSMaterial, sid: int) -> PeerSecurity:
    t = material.tls_table(sid)
    cfg = TLSConfig(t["cert"], t["key"], t["ca"])
    return PeerSecurity(server_ssl=peer_server_context(cfg), client_ssl=peer_client_context(cfg))


async def test_tls_ensemble_writes_and_reads(cluster):
    leader = await cluster.wait_leader()  # elected over mutual TLS
    follower = next(s for s in (1, 2, 3) if s != leader)
    ctx = cluster.material.client_context(cluster.client_cert)
    w = await TLSClient.connect(cluster.client_addr(follower), ctx)  # the write is forwarded to the leader
    for i in range(20):
        await w.write("create", path=f"/tls-{i}", data=str(i).encode())
    r = await TLSClient.connect(cluster.client_addr(leader), ctx)
    children = (await r.call("children", path="/", lin=True))["children"]
    assert {c for c in children if c.startswith("tls-")} == {f"tls-{i}" for i in range(20)}
    for i in (0, 19):
        assert (await r.call("get", path=f"/tls-{i}", lin=True))["data"] == str(i).encode()
    for c in (w, r):
        await c.aclose()
    assert "peers: mutual TLS" in cluster.logs(leader, tail=1 << 20)


async def test_client_without_certificate_refused_under_require(cluster):
    await cluster.wait_leader()
    with pytest.raises((trio.BrokenResourceError, trio.EndOfChannel)):
        c = await TLSClient.connect(cluster.client_addr(1), cluster.material.client_context())
        await c.call("status")


async def test_peer_with_certificate_from_another_ca_refused(cluster, tmp_path):
    leader = await cluster.wait_leader()
    rogue = peer_security(TLSMaterial(tmp_path / "rogue"), 2)  # "server 2", by another CA
    stream = await trio.open_tcp_stream(HOST, cluster.peer_ports[leader])
    with pytest.raises(HandshakeRefused, match="TLS handshake failed"), trio.fail_after(10):
        await dial(stream, security=rogue, cluster_id=cluster.cluster_id, node_id=2, to=leader, port=1)
    await stream.aclose()
    with trio.fail_after(10):
        while "TLS handshake failed" not in cluster.logs(leader, tail=1 << 20):
            await trio.sleep(0.05)


async def test_peer_claiming_another_servers_id_refused(cluster):
    leader = await cluster.wait_leader()
    victim = next(s for s in (1, 2, 3) if s != leader)
    other = next(s for s in (1, 2, 3) if s not in (leader, victim))
    # A genuine member's certificate, used to speak as the leader.
    stream = await trio.open_tcp_stream(HOST, cluster.peer_ports[victim])
    with pytest.raises(HandshakeRefused, match="certificate binds another server id"), trio.fail_after(10):
        await dial(stream, security=peer_security(cluster.material, other), cluster_id=cluster.cluster_id,
                   node_id=leader, to=victim, port=1)
    await stream.aclose()
    with trio.fail_after(10):  # the refusal is sent before it is logged
        while f"claims to be node {leader} but its certificate is server {other}'s" not in cluster.logs(victim, 1 << 20):
            await trio.sleep(0.05)


async def test_sighup_serves_rotated_certificate_to_new_connections(cluster):
    await cluster.wait_leader()
    ctx = cluster.material.client_context(cluster.client_cert)
    old = await TLSClient.connect(cluster.client_addr(1), ctx)
    old_serial = old.peer_serial()
    cluster.material.server(1)  # new certificate and key at the same paths
    cluster.procs[1].send_signal(signal.SIGHUP)
    with trio.fail_after(10):
        while True:
            new = await TLSClient.connect(cluster.client_addr(1), ctx, hello=False)
            rotated = new.peer_serial() != old_serial
            await new.aclose()
            if rotated:
                break
            await trio.sleep(0.1)
    assert (await old.call("status"))["server_id"] == 1  # the connection made before keeps going
    await old.write("create", path="/after-rotation", data=b"")
    assert "credentials reloaded" in cluster.logs(1, tail=1 << 20)
    # Peers dial server 1 anew with its new certificate: the ensemble still agrees.
    cluster.kill(2)
    cluster.start_server(2)
    await cluster.wait_leader()
    st = await cluster.statuses()
    await cluster.wait_applied_all(max(s["applied"] for s in st.values()))
    await old.aclose()
