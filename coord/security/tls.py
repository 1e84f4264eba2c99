"""TLS for coord's ports: ``[tls]`` files to ``ssl.SSLContext``s, and what a
TLS connection proves about the other end.

One certificate and key per server serve three purposes: the client port
and the HTTP port present them, and the peer port presents them in both
directions (mutual TLS).  One CA (``tls.ca``) signs every server's and every
client's certificate.

Who a peer is: a server's certificate binds its **server id** with a URI
subject alternative name ``coord:server:<id>`` (``coord certs issue
--server-id`` writes it).  A peer is accepted as server N only if its
certificate, verified against the cluster CA, names exactly one server id
and that id is N.  Addresses are not checked (no hostname verification
between servers): servers move, sit behind proxies and NAT, and a
membership change names them by id.  A client certificate names no server
id, so it can never act as a peer even though the same CA signed it.

Who a client is: ``TransportInfo`` -- the client's address, and with
``client_auth = "request"`` or ``"require"`` the subject of its verified
certificate in RFC 4514 form (``CN=svc,O=acme``), which authentication
(ZooKeeper's ``x509`` scheme) can use as an identity.

Load errors raise ``ConfigError`` naming the field (``tls.key: ...``);
messages never contain key material (only paths and OpenSSL's reason).
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import dataclass
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coord.server.config import ConfigError, TLSConfig
from coord.security.tlsstream import TLSSocketStream

__all__ = [
    "SERVER_ID_URI",
    "TransportInfo",
    "check_private_file",
    "client_port_context",
    "connection_info",
    "peer_client_context",
    "peer_server_context",
    "reload_in_place",
    "server_ids",
]

log = logging.getLogger("coord.security")

SERVER_ID_URI = "coord:server:"  # + decimal server id, in a URI subjectAltName
_VERIFY = {"none": ssl.CERT_NONE, "request": ssl.CERT_OPTIONAL, "require": ssl.CERT_REQUIRED}
_MAX_PEM = 1 << 20  # certificate and key files are small; refuse to read a huge one


@dataclass(slots=True, frozen=True)
class TransportInfo:
    """What the transport knows about a client connection, for authentication.

    ``address``/``port``: the client's IP address (as the socket reports it,
    e.g. ``"127.0.0.1"`` or ``"::1"``; ``""`` if unknown) and port.
    ``tls``: the connection is TLS.  ``cert_subject``: the subject of the
    client certificate, verified against the cluster CA, in RFC 4514 form;
    None without TLS, with ``client_auth = "none"``, or when the client sent
    no certificate.
    """

    address: str = ""
    port: int = 0
    tls: bool = False
    cert_subject: str | None = None

    @property
    def peer(self) -> str:
        """``host:port`` for log lines."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address or '?'}:{self.port}"


# --- files ---------------------------------------------------------------------------

def _read(path: str, field: str) -> bytes:
    try:
        size = os.stat(path).st_size
        if size > _MAX_PEM:
            raise ConfigError(f"{field}: {path} is {size} bytes; a PEM file here is at most {_MAX_PEM}")
        with open(path, "rb") as f:
            return f.read(_MAX_PEM)
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {path}: {e.strerror}") from None


def _check_certs(path: str, field: str) -> list[x509.Certificate]:
    data = _read(path, field)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{field}: {path} holds no PEM certificate")
    return certs


def _check_key(path: str, field: str) -> None:
    data = _read(path, field)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"{field}: {path} is encrypted; coord needs an unencrypted key (mode 0600)") from None
    except Exception:  # garbage, unsupported algorithm: say which file, never what is in it
        raise ConfigError(f"{field}: {path} holds no usable PEM private key") from None


def check_private_file(path: str, field: str) -> str | None:
    """A warning if ``path`` (a key or a secret) can be read by group or
    others; None if its mode is fine (or it cannot be stat'ed: loading says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{field}: {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"anyone who can read it can impersonate this server: chmod 600 it")
    return None


def _load_chain(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    _check_certs(tls.cert, "tls.cert")
    _check_key(tls.key, "tls.key")
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e).lower():
            raise ConfigError(f"tls.key: {tls.key} is not the key of the certificate in tls.cert ({tls.cert})") \
                from None
        raise ConfigError(f"tls.cert: cannot use {tls.cert} with tls.key: {e.reason or e}") from None


def _load_ca(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    _check_certs(tls.ca, "tls.ca")
    try:
        ctx.load_verify_locations(cafile=tls.ca)
    except ssl.SSLError as e:
        raise ConfigError(f"tls.ca: cannot use {tls.ca}: {e.reason or e}") from None


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


# --- contexts --------------------------------------------------------------------------

def client_port_context(tls: TLSConfig, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Server side of the client port (and of the HTTP port, with ``alpn``):
    TLS 1.2+, our certificate, client certificates as ``client_auth`` says."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, tls)
    _load_ca(ctx, tls)
    ctx.verify_mode = _VERIFY[tls.client_auth]
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def peer_server_context(tls: TLSConfig) -> ssl.SSLContext:
    """Accepting side of the peer port: a certificate from the cluster CA is required."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, tls)
    _load_ca(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.num_tickets = 0  # no session resumption between servers: every connection shows its certificate
    return ctx


def peer_client_context(tls: TLSConfig) -> ssl.SSLContext:
    """Dialing side of the peer port: verify the server's chain against the
    cluster CA (its id is checked by the transport, not its hostname) and
    present our own certificate."""
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    _load_chain(ctx, tls)
    _load_ca(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reload_in_place(ctx: ssl.SSLContext, tls: TLSConfig) -> None:
    """Load ``tls``'s certificate and key (and CA: added, never removed) into
    an existing context, for a server that holds on to its context (the
    HTTP port's): new connections get the new certificate."""
    _load_chain(ctx, tls)
    _load_ca(ctx, tls)


# --- what a connection proves --------------------------------------------------------

def server_ids(cert: dict[str, Any] | None) -> list[int]:
    """The server ids a verified peer certificate (``getpeercert()``'s dict)
    binds: its ``coord:server:<id>`` URI subject alternative names."""
    out = []
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and isinstance(value, str) and value.startswith(SERVER_ID_URI):
            digits = value[len(SERVER_ID_URI):]
            if digits.isdigit() and len(digits) <= 19:
                out.append(int(digits))
    return out


def verified_subject(ssl_stream: TLSSocketStream | trio.SSLStream) -> str | None:
    """RFC 4514 subject of the peer's certificate if it sent one and it was
    verified (an unverified one fails the handshake; with CERT_NONE none is asked for)."""
    if ssl_stream.context.verify_mode == ssl.CERT_NONE:
        return None
    if not ssl_stream.getpeercert():  # {} or None: no certificate
        return None
    der = ssl_stream.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None


def connection_info(stream: trio.abc.Stream) -> TransportInfo:
    """``TransportInfo`` for a plain socket stream or a TLS one (after its
    handshake: ``TLSSocketStream``, or an ``SSLStream`` over a socket stream)."""
    tls = isinstance(stream, (TLSSocketStream, trio.SSLStream))
    sock: Any = stream if isinstance(stream, TLSSocketStream) else getattr(
        stream.transport_stream if isinstance(stream, trio.SSLStream) else stream, "socket", None)
    address, port = "", 0
    if sock is not None:
        try:
            name = sock.getpeername()
            address, port = str(name[0]), int(name[1])
        except (OSError, IndexError, TypeError, ValueError):
            pass
    return TransportInfo(address, port, tls, verified_subject(stream) if tls else None)
