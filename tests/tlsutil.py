"""Certificates for tests, and a minimal TLS client of the client protocol.

The CA and client certificates come from ``trustme``.  Server certificates
need the ``coord:server:<id>`` URI SAN, which trustme cannot write, so they
are issued by ``coord.security.certs`` with the trustme CA's key -- the
path an operator's ``coord certs issue`` takes.

``TLSClient`` speaks the client protocol over ``trio.SSLStream`` +
``FramedStream`` (the SDK's ``tls=`` comes later).
"""

from __future__ import annotations

import itertools
import os
import ssl
from typing import Any

import trio
import trustme
from coordclient.wire import FramedStream

from coord.security.certs import Issued, issue_server


def trustme_contexts(*server_hosts: str, client_cn: str) -> tuple[trustme.CA, ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA, a server context for ``server_hosts`` that asks for (but
    does not require) a client certificate, and a client context trusting
    the CA and presenting a certificate with common name ``client_cn``."""
    ca = trustme.CA()
    server = ca.issue_cert(*server_hosts)
    client = ca.issue_cert("client.invalid", common_name=client_cn)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(sctx)
    ca.configure_trust(sctx)
    sctx.verify_mode = ssl.CERT_OPTIONAL
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    client.configure_cert(cctx)
    return ca, sctx, cctx


class TLSMaterial:
    """One CA in ``directory`` (``ca.crt``, ``ca.key``) and what it issues."""

    def __init__(self, directory: str | os.PathLike):
        self.ca = trustme.CA()
        self.dir = os.fspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.ca_path = os.path.join(self.dir, "ca.crt")
        self.ca.cert_pem.write_to_path(self.ca_path)
        key = os.path.join(self.dir, "ca.key")
        self.ca.private_key_pem.write_to_path(key)
        os.chmod(key, 0o600)

    def server(self, sid: int, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Issued:
        return issue_server(self.dir, sid, list(hosts), force=True)

    def client(self, name: str) -> tuple[str, str]:
        """(cert, key) paths of a client certificate whose subject is ``CN=<name>``."""
        leaf = self.ca.issue_cert(f"{name}.clients.invalid", common_name=name, organization_name="acme",
                                  organization_unit_name="ops")
        cert, key = os.path.join(self.dir, f"client-{name}.crt"), os.path.join(self.dir, f"client-{name}.key")
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        os.chmod(key, 0o600)
        return cert, key

    @staticmethod
    def subject(name: str) -> str:
        """The RFC 4514 subject of ``client(name)``'s certificate (most specific first)."""
        return f"CN={name},OU=ops,O=acme"

    def tls_table(self, sid: int, client_auth: str = "request", handshake_timeout_ms: int = 5000) -> dict[str, Any]:
        """Server ``sid``'s ``[tls]`` table (its certificate is issued on first use)."""
        cert = os.path.join(self.dir, f"server-{sid}.crt")
        if not os.path.exists(cert):
            self.server(sid)
        return {"cert": cert, "key": os.path.join(self.dir, f"server-{sid}.key"), "ca": self.ca_path,
                "client_auth": client_auth, "handshake_timeout_ms": handshake_timeout_ms}

    def client_context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        """What a client uses: trusts this CA, presents ``cert`` (cert, key) if given."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx


class TLSClient:
    """One TLS connection speaking the client protocol, one request at a time."""

    def __init__(self, stream: trio.SSLStream):
        self.stream = stream
        self.framed = FramedStream(stream)
        self._ids = itertools.count(1)
        self._seqs = itertools.count(1)  # a session's write sequence numbers
        self.sid = 0

    @classmethod
    async def connect(cls, addr: tuple[str, int], ctx: ssl.SSLContext, *, hello: bool = True,
                      timeout: float = 10.0) -> "TLSClient":
        with trio.fail_after(timeout):
            raw = await trio.open_tcp_stream(*addr)
            tls = trio.SSLStream(raw, ctx, server_hostname=addr[0])
            await tls.do_handshake()
            client = cls(tls)
            if hello:
                r = await client.call("hello", timeout_ms=10_000)
                client.sid = r["sid"]
            return client

    async def request(self, op: str, timeout: float = 10.0, **args: Any) -> dict:
        """The whole response map (``ok`` may be false)."""
        rid = next(self._ids)
        with trio.fail_after(timeout):
            await self.framed.send({"id": rid, "op": op, **args})
            while True:
                msg = await self.framed.receive()
                if isinstance(msg, dict) and msg.get("id") == rid and "ok" in msg:
                    return msg

    async def call(self, op: str, **args: Any) -> Any:
        resp = await self.request(op, **args)
        assert resp["ok"], resp
        return resp["r"]

    async def write(self, op: str, **args: Any) -> Any:
        """A write (create, set, delete, multi) with the session's next sequence number."""
        return await self.call(op, seq=next(self._seqs), **args)

    def peer_serial(self) -> int:
        """The serial number of the certificate the server presented."""
        from cryptography import x509

        return x509.load_der_x509_certificate(self.stream.getpeercert(binary_form=True)).serial_number

    async def aclose(self) -> None:
        with trio.move_on_after(2):
            await self.stream.aclose()
