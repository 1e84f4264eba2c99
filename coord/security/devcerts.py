"""Throwaway credentials for ``coord dev --secure``: a CA, a certificate per
server, a client certificate and a superuser password, in the data dir.

Everything is made once and reused when ``coord dev --data-dir`` starts the
same ensemble again.  Nothing here is fit for production (the CA key sits
next to the servers); ``coord certs`` is the tool for real deployments.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass

from coord.security.certs import Issued, init_ca, issue_client, issue_server

__all__ = ["DEV_CLIENT", "DEV_SUPERUSER", "DevMaterial", "dev_material", "superuser_identity"]

DEV_CLIENT = "coord-dev"  # CN of the client certificate (its x509 identity: "CN=coord-dev")
DEV_SUPERUSER = "super"


@dataclass(slots=True, frozen=True)
class DevMaterial:
    ca: str  # CA certificate (COORD_CACERT)
    servers: dict[int, Issued]
    client: Issued  # COORD_CERT / COORD_KEY
    superuser: str = ""  # "user:password" (COORD_USER); never logged

    def __repr__(self) -> str:  # the password stays out of reprs and tracebacks
        return f"DevMaterial(ca={self.ca!r}, servers={sorted(self.servers)}, client={self.client.subject!r})"


def superuser_identity(credential: str) -> str:
    """The ``digest`` identity of ``user:password`` as ZooKeeper writes it,
    ``digest:user:base64(sha1("user:password"))``: what ``[auth] superusers``
    lists (the server stores this, never the password)."""
    user = credential.split(":", 1)[0]
    digest = base64.b64encode(hashlib.sha1(credential.encode()).digest()).decode()
    return f"digest:{user}:{digest}"


def _superuser(path: str) -> str:
    try:
        with open(path) as f:
            value = f.read().strip()
        if value.startswith(DEV_SUPERUSER + ":"):
            return value
    except FileNotFoundError:
        pass
    value = f"{DEV_SUPERUSER}:{secrets.token_urlsafe(18)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def dev_material(root: str, servers: int) -> DevMaterial:
    """Make (or find) the credentials of a ``servers``-strong dev ensemble under ``root``."""
    d = os.path.join(root, "certs")
    if not os.path.exists(os.path.join(d, "ca.crt")):
        init_ca(d, name="coord dev CA (throwaway)", days=30)
    issued = {}
    for sid in range(1, servers + 1):
        crt, key = os.path.join(d, f"server-{sid}.crt"), os.path.join(d, f"server-{sid}.key")
        if os.path.exists(crt) and os.path.exists(key):
            issued[sid] = Issued(crt, key, f"CN=coord-server-{sid}")
        else:
            issued[sid] = issue_server(d, sid, ["127.0.0.1", "localhost"], days=30, force=True)
    crt, key = os.path.join(d, f"client-{DEV_CLIENT}.crt"), os.path.join(d, f"client-{DEV_CLIENT}.key")
    if os.path.exists(crt) and os.path.exists(key):
        client = Issued(crt, key, f"CN={DEV_CLIENT}")
    else:
        client = issue_client(d, DEV_CLIENT, days=30, force=True)
    return DevMaterial(os.path.join(d, "ca.crt"), issued, client, _superuser(os.path.join(root, "superuser")))
