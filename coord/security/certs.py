"""A small certificate authority for coord (``coord certs``, ``coord dev --secure``).

Enough PKI to run a real deployment without an OpenSSL manual, and nothing
more: one CA per cluster, a certificate per server, a certificate per
client.  Keys are ECDSA P-256 (small, fast, supported everywhere TLS 1.2
is) and are written with mode 0600; certificates 0644.

* ``init_ca``: ``ca.crt`` / ``ca.key``.  Keep ``ca.key`` off the servers.
* ``issue_server``: ``server-<id>.crt`` / ``.key``: subject
  ``CN=coord-server-<id>``; subject alternative names: every ``--host``
  (as an IP address or DNS name, what clients check) and the URI
  ``coord:server:<id>``, the binding peers check (``coord.security.tls``);
  usable both to serve (client port, HTTP port, accepting peers) and to dial
  peers (extended key usage serverAuth + clientAuth).
* ``issue_client``: ``client-<name>.crt`` / ``.key``: subject ``CN=<name>``;
  clientAuth only.  Its subject in RFC 4514 form (``CN=<name>``) is the
  client's ``x509`` identity.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coord.security.tls import SERVER_ID_URI

__all__ = ["CertError", "Issued", "init_ca", "issue_client", "issue_server"]

CA_CERT, CA_KEY = "ca.crt", "ca.key"
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class CertError(Exception):
    """A ``coord certs`` request that cannot be carried out (the message says why)."""


@dataclass(slots=True, frozen=True)
class Issued:
    cert: str  # path of the certificate (PEM)
    key: str  # path of its private key (PEM, mode 0600)
    subject: str  # RFC 4514


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CertError(f"{path} exists; pass --force to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask, and ignored for an existing file


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _save(directory: str, base: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
          force: bool) -> Issued:
    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, base + ".crt"), os.path.join(directory, base + ".key")
    for p in (cert_path, key_path):
        if os.path.exists(p) and not force:
            raise CertError(f"{p} exists; pass --force to replace it")
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return Issued(cert_path, key_path, cert.subject.rfc4514_string())


def init_ca(directory: str, *, name: str = "coord cluster CA", days: int = 3650, force: bool = False) -> Issued:
    """A new CA in ``directory`` (``ca.crt``, ``ca.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(directory, "ca", cert, key, force)


def _load_ca(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY)
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError as e:
        raise CertError(f"no CA in {directory} ({e.filename} is missing): run `coord certs init --dir "
                        f"{directory}` first") from None
    except (OSError, ValueError, TypeError) as e:
        raise CertError(f"cannot load the CA in {directory}: {type(e).__name__}") from None
    return cert, key


def _leaf(directory: str, subject: x509.Name, sans: list[x509.GeneralName], usages: list, days: int,
          base: str, force: bool) -> Issued:
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _save(directory, base, builder.sign(ca_key, hashes.SHA256()), key, force)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
        raise CertError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def issue_server(directory: str, server_id: int, hosts: list[str], *, days: int = 825,
                 force: bool = False) -> Issued:
    """A certificate for server ``server_id``, reachable by clients at ``hosts``."""
    if not 0 < server_id < 1 << 63:
        raise CertError(f"--server-id must be a server id (>= 1), got {server_id}")
    if not hosts:
        raise CertError("name at least one --host the server's clients connect to (an IP address or DNS name)")
    sans = [_host_name(h) for h in hosts] + [x509.UniformResourceIdentifier(f"{SERVER_ID_URI}{server_id}")]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"coord-server-{server_id}")])
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _leaf(directory, subject, sans, usages, days, f"server-{server_id}", force)


def issue_client(directory: str, name: str, *, days: int = 825, force: bool = False) -> Issued:
    """A client certificate whose subject is ``CN=<name>``."""
    if not _NAME_OK.match(name):
        raise CertError(f"--client {name!r}: use 1-64 letters, digits and . _ @ - (starting with a letter or digit)")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return _leaf(directory, subject, [], [ExtendedKeyUsageOID.CLIENT_AUTH], days, f"client-{name}", force)
