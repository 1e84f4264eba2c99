"""Peer authentication: what a server must prove before its Raft messages count.

``PeerSecurity`` is the credential set the peer transport authenticates
with; the transport takes a new one on SIGHUP (for new connections).  It
holds any of:

* mutual TLS (``server_ssl`` to accept, ``client_ssl`` to dial): the peer's
  certificate, signed by the cluster CA, binds its server id (see
  ``coord.security.tls``);
* a cluster secret: a challenge-response in the handshake.  The accepting
  side sends a fresh random nonce; the dialer answers with
  ``HMAC-SHA256(secret, "coord-peer-v1 dial" | nonce | from | to | cluster)``
  and a nonce of its own, which the acceptor answers the same way with the
  label "accept".  A captured handshake is useless on another connection
  (its nonce differs), the secret never crosses the wire, and the two
  directions' proofs cannot stand in for each other;
* neither, only when the configuration says ``insecure_peer_network``
  (``PeerSecurity.trusted_network``).

Both can be configured at once; then both are required.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import struct
from dataclasses import dataclass, field

from coord.server.config import ConfigError

__all__ = [
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "PeerSecurity",
    "accept_proof",
    "dial_proof",
    "generate_secret",
    "load_secret",
    "new_nonce",
    "proof_ok",
]

NONCE_BYTES = 32
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
_U64 = struct.Struct(">QQ")


@dataclass(slots=True, frozen=True)
class PeerSecurity:
    """How this server authenticates peers and itself to them (immutable:
    replaced whole on SIGHUP).  ``secret`` is never shown in a repr."""

    secret: bytes | None = field(default=None, repr=False)
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    trusted_network: bool = False

    def __post_init__(self) -> None:
        if (self.server_ssl is None) != (self.client_ssl is None):
            raise ValueError("peer TLS needs both an accepting and a dialing context")
        if self.secret is not None and len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a peer secret has at least {MIN_SECRET_BYTES} bytes")
        if self.secret is None and self.server_ssl is None and not self.trusted_network:
            raise ValueError("no peer credential: give a secret or TLS contexts, or trusted_network=True")

    @property
    def tls(self) -> bool:
        return self.server_ssl is not None

    @property
    def mode(self) -> str:
        """For log lines: "mutual TLS", "cluster secret", both, or "none (trusted network)"."""
        parts = (["mutual TLS"] if self.tls else []) + (["cluster secret"] if self.secret else [])
        return " + ".join(parts) or "none (trusted network)"


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def _proof(label: bytes, secret: bytes, nonce: bytes, cluster: str, frm: int, to: int) -> bytes:
    # Fixed-size fields first, the one variable field last: no two inputs encode alike.
    msg = label + nonce + _U64.pack(frm, to) + cluster.encode("utf-8", "surrogatepass")
    return hmac.new(secret, msg, hashlib.sha256).digest()


def dial_proof(secret: bytes, nonce: bytes, cluster: str, frm: int, to: int) -> bytes:
    """The dialer's answer to the acceptor's ``nonce`` (``frm`` dials ``to``)."""
    return _proof(b"coord-peer-v1 dial\0", secret, nonce, cluster, frm, to)


def accept_proof(secret: bytes, nonce: bytes, cluster: str, frm: int, to: int) -> bytes:
    """The acceptor's answer to the dialer's ``nonce`` (``frm`` is still the dialer)."""
    return _proof(b"coord-peer-v1 accept\0", secret, nonce, cluster, frm, to)


def proof_ok(expected: bytes, got: object) -> bool:
    return type(got) is bytes and hmac.compare_digest(expected, got)


def load_secret(path: str, field_name: str = "server.peer_secret_file") -> bytes:
    """The cluster secret in ``path``: its bytes, surrounding whitespace
    stripped (so a hex line written by ``coord certs secret`` or an editor
    works).  Errors name the field and the file, never the contents."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{field_name}: {path} does not exist (`coord certs secret --out {path}` makes one; "
                          f"every server of the cluster needs the same file)") from None
    except OSError as e:
        raise ConfigError(f"{field_name}: cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{field_name}: {path} is larger than {MAX_SECRET_BYTES} bytes; is it the right file?")
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{field_name}: {path} holds {len(secret)} bytes; a cluster secret needs at least "
                          f"{MIN_SECRET_BYTES} (`coord certs secret --out FILE` writes a good one)")
    return secret


def generate_secret() -> str:
    """A new cluster secret as a line of text (64 hex digits: 256 random bits)."""
    return secrets.token_hex(32) + "\n"


def write_secret(path: str, *, overwrite: bool = False) -> None:
    """Write a new cluster secret to ``path``, mode 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_secret())
