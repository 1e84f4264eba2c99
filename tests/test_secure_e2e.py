"""A secured ensemble as a user meets it: TLS everywhere, [auth] configured,
and every client surface (the SDK on Trio and blocking, coordctl, the admin
API, kazoo on the ZooKeeper port) authenticating and being refused.

Three real server processes; peers over mutual TLS only; clients present
certificates (their x509 identity) and digest credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest
import trio

from coord.namespace.acl import digest_id
from coordclient import Client, SyncClient
from coordclient.acl import ACL, make_digest_acl
from coordclient.admin import AdminClient
from coordclient.errors import NoAuthError
from tests.cluster import Cluster, child_env, dump_logs_on_failure
from tests.tlsutil import TLSMaterial

SUPER, OPS = "super:s3cret-super", "ops:s3cret-ops"


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    material = TLSMaterial(base / "pki")
    extra = "\n".join(["[auth]", f'superusers = ["digest:{digest_id(SUPER)}"]',
                       f'admins = ["x509:{TLSMaterial.subject("ops")}"]'])
    c = Cluster(3, base / "ensemble", peer_secret=False, zookeeper=True, extra_config=extra,
                client_ssl=material.client_context(material.client("harness")),
                tls=lambda sid: material.tls_table(sid, client_auth="request"))
    c.material = material
    c.alice = material.client("alice")
    c.bob = material.client("bob")
    c.ops = material.client("ops")
    c.start()
    trio.run(c.wait_leader)
    yield c
    c.close()


@pytest.fixture
def cluster(secure, request):
    yield secure
    dump_logs_on_failure(request, secure)


async def test_sdk_over_tls_with_x509_and_digest_identities_and_acls(cluster):
    m = cluster.material
    alice_acl = [ACL(31, "x509", TLSMaterial.subject("alice"))]
    async with Client(cluster.endpoints, tls=m.client_context(cluster.alice)) as alice:
        ids = await alice.whoami()
        assert ("x509", TLSMaterial.subject("alice")) in ids
        await alice.create("/alice", b"hers", acl=alice_acl)
        got, stat = await alice.get_acl("/alice")
        assert got == alice_acl and stat.aversion == 0
    async with Client(cluster.endpoints, tls=m.client_context(cluster.bob)) as bob:
        with pytest.raises(NoAuthError):
            await bob.get("/alice")
        await bob.add_auth("digest", "bob:pw")  # a digest as well, kept by the session
        await bob.create("/bob", b"", acl=[make_digest_acl("bob", "pw", all=True)])
        assert (await bob.get("/bob"))[0] == b""
    async with Client(cluster.endpoints, tls=m.client_context(), auth=[("digest", SUPER)]) as su:
        assert (await su.get("/alice"))[0] == b"hers"  # the superuser bypasses ACLs
        stat = await su.set_acl("/alice", [ACL(1, "world", "anyone")], version=0)
        assert stat.aversion == 1


def test_blocking_client_over_tls(cluster):
    m = cluster.material
    with SyncClient(cluster.endpoints, tls=m.client_context(cluster.alice)) as c:
        c.create("/sync-tls", b"x", acl=["world:anyone:r", f"x509:{TLSMaterial.subject('alice')}:cdrwa"])
        assert c.get_acl("/sync-tls")[0][0] == ACL(1, "world", "anyone")
        assert ("x509", TLSMaterial.subject("alice")) in c.whoami()


@pytest.mark.anyio  # AdminClient on asyncio and on Trio, TLS included
async def test_admin_needs_an_admin_identity(cluster):
    m = cluster.material
    async with AdminClient(cluster.endpoints, tls=m.client_context(cluster.bob)) as admin:
        with pytest.raises(NoAuthError):
            await admin.transfer_leadership()
    async with AdminClient(cluster.endpoints, tls=m.client_context(cluster.ops)) as admin:
        st = await admin.leader_status()  # an admin by certificate
        assert st["role"] == "leader"
        await admin.transfer_leadership()
    await anyio.to_thread.run_sync(lambda: trio.run(cluster.wait_leader))  # (the harness is Trio code)


def coordctl(cluster, *args: str, cert=None, user: str | None = None) -> subprocess.CompletedProcess:
    env = {**child_env(), "COORD_ENDPOINTS": cluster.endpoints, "COORD_CACERT": cluster.material.ca_path}
    if cert is not None:
        env["COORD_CERT"], env["COORD_KEY"] = cert
    if user is not None:
        env["COORD_USER"] = user
    return subprocess.run([sys.executable, "-m", "coordclient.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_coordctl_with_certificates_users_and_acls(cluster):
    alice = TLSMaterial.subject("alice")
    r = coordctl(cluster, "create", "/ctl", "v", "--acl", f"x509:{alice}:cdrwa", cert=cluster.alice)
    assert r.returncode == 0, r.stderr
    r = coordctl(cluster, "acl", "get", "/ctl", "-o", "json", cert=cluster.alice)
    assert json.loads(r.stdout) == {"path": "/ctl", "acl": [f"x509:{alice}:cdrwa"], "aversion": 0}
    r = coordctl(cluster, "get", "/ctl", cert=cluster.bob)
    assert r.returncode == 1 and "NoAuth" in r.stderr
    r = coordctl(cluster, "acl", "set", "/ctl", "world:anyone:r", "--version", "0", user=SUPER)
    assert r.returncode == 0 and "aversion = 1" in r.stdout, r.stderr
    assert coordctl(cluster, "get", "/ctl", cert=cluster.bob).stdout.strip() == "v"
    r = coordctl(cluster, "whoami", user=SUPER)
    assert f"digest:{digest_id(SUPER)}" in r.stdout
    r = coordctl(cluster, "leader", "transfer", cert=cluster.bob)
    assert r.returncode != 0 and "NoAuth" in r.stderr
    r = coordctl(cluster, "status", "-o", "json", cert=cluster.ops)  # output options after the command
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 3
    assert "s3cret-super" not in r.stdout + r.stderr


def test_kazoo_over_tls_on_the_zookeeper_port(cluster):
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoAuthError as KazooNoAuth

    m = cluster.material
    cert, key = cluster.alice
    zk = KazooClient(hosts=cluster.zk_hosts, use_ssl=True, ca=m.ca_path, certfile=cert, keyfile=key,
                     verify_certs=True, timeout=10)
    zk.start(timeout=15)
    try:
        zk.create("/kz-tls", b"over tls", acl=[make_kazoo_acl(TLSMaterial.subject("alice"))])
        assert zk.get("/kz-tls")[0] == b"over tls"
    finally:
        zk.stop()
        zk.close()
    other = KazooClient(hosts=cluster.zk_hosts, use_ssl=True, ca=m.ca_path, certfile=cluster.bob[0],
                        keyfile=cluster.bob[1], verify_certs=True, timeout=10)
    other.start(timeout=15)
    try:
        with pytest.raises(KazooNoAuth):
            other.get("/kz-tls")
    finally:
        other.stop()
        other.close()


def make_kazoo_acl(subject: str):
    from kazoo.security import ACL as KACL, Id

    return KACL(31, Id("x509", subject))


def test_no_secret_in_any_log(cluster):
    for sid in (1, 2, 3):
        log = cluster.logs(sid, tail=1 << 22)
        assert "s3cret" not in log and "PRIVATE KEY" not in log
    assert os.path.exists(cluster.material.ca_path)
