"""A server's transport credentials, loaded from its configuration as one value.

``Credentials.load`` reads every file the configuration names (``[tls]``
certificate, key and CA; the peer secret) and builds the SSL contexts; any
problem is a ``ConfigError`` naming the field, so a server refuses to start
on a bad file rather than failing its first handshake.  On SIGHUP the server
loads a new ``Credentials`` and swaps it in whole: new connections use the
new files, connections already up keep going, and if the new files are bad
the old credentials stay (and the error is logged).

Key files and the secret readable by group or others get a warning each
time they are loaded.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from coord.security.peerauth import PeerSecurity, load_secret
from coord.security.tls import (
    check_private_file,
    client_port_context,
    peer_client_context,
    peer_server_context,
)
from coord.server.config import ServerConfig

__all__ = ["Credentials"]

log = logging.getLogger("coord.security")

HTTP_ALPN = ["h2", "http/1.1"]


@dataclass(slots=True, frozen=True)
class Credentials:
    client_ssl: ssl.SSLContext | None  # the client port's server context (None: plain TCP)
    http_ssl: ssl.SSLContext | None  # the HTTP port's (None: plain HTTP)
    peer: PeerSecurity
    handshake_timeout: float  # seconds a TLS client gets to finish its handshake
    client_auth: str  # "none" | "request" | "require" ("none" without TLS)

    @classmethod
    def load(cls, cfg: ServerConfig) -> "Credentials":
        tls = cfg.tls
        secret = None
        if cfg.peer_secret_file is not None:
            secret = load_secret(cfg.peer_secret_file)
        client_ssl = http_ssl = server_ssl = dial_ssl = None
        if tls is not None:
            client_ssl = client_port_context(tls)
            http_ssl = client_port_context(tls, alpn=HTTP_ALPN) if cfg.http_address is not None else None
            server_ssl = peer_server_context(tls)
            dial_ssl = peer_client_context(tls)
        for path, name in ((tls.key if tls else None, "tls.key"), (cfg.peer_secret_file, "server.peer_secret_file")):
            warning = check_private_file(path, name) if path else None
            if warning:
                log.warning("server %d: %s", cfg.server_id, warning)
        peer = PeerSecurity(secret=secret, server_ssl=server_ssl, client_ssl=dial_ssl,
                            trusted_network=cfg.insecure_peer_network)
        return cls(client_ssl, http_ssl, peer,
                   handshake_timeout=(tls.handshake_timeout_ms if tls else 5000) / 1000,
                   client_auth=tls.client_auth if tls else "none")

    def describe(self) -> str:
        """One line for the start-up log (no secrets)."""
        client = f"TLS (client certificates: {self.client_auth})" if self.client_ssl else "plain TCP"
        return f"client port: {client}; peers: {self.peer.mode}"
