"""Who an HTTP request comes from, in the terms of the ACL model (``namespace.acl``).

A request to the HTTP port has identities as a client connection does:

``ip``      the client's address, from the ASGI scope (behind a reverse
            proxy this is the proxy's address).
``digest``  from HTTP Basic authentication: ``Authorization: Basic
            base64(user:password)`` proves ``user:password`` and stands for
            ``digest_id("user:password")``, the identity ``add_auth("digest",
            ...)`` gives a session.  The password is used for that one hash
            and dropped: never logged, stored or echoed.
``x509``    not on the HTTP port: Hypercorn 0.18 does not hand the client's
            certificate to the application (the ASGI scope has no TLS
            extension and the connection's stream stays inside Hypercorn),
            so there is nothing verified to read it from.

A superuser is one whose identities include one of ``[auth] superusers``
(``ServerConfig.identify``, the same rule as the client port).

Basic credentials travel in clear text unless the port is HTTPS: set
``[tls]`` before relying on them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from coord.namespace.acl import Auth, digest_id
from coordclient.errors import AuthFailedError

__all__ = ["BadCredentials", "Requester", "basic_credential", "requester"]

MAX_AUTHORIZATION = 4096  # characters of an Authorization header


class BadCredentials(Exception):
    """The Authorization header is malformed; the message says how (never
    what it contained)."""


@dataclass(slots=True, frozen=True)
class Requester:
    """Who one HTTP request is: its ``Auth`` for ACL and admin checks, and
    what log lines may say about it."""

    auth: Auth
    address: str  # the client's IP address ("" if unknown)
    peer: str  # "address:port" for log lines
    user: str | None  # the Basic user name, if any (never the password)

    @property
    def signed_in(self) -> bool:
        return self.user is not None


def basic_credential(header: str | None) -> str | None:
    """``user:password`` from an ``Authorization: Basic`` header value; None
    when there is no header; ``BadCredentials`` when it is not a well-formed
    Basic credential (only Basic is understood)."""
    if header is None:
        return None
    if len(header) > MAX_AUTHORIZATION:
        raise BadCredentials(f"the Authorization header is longer than {MAX_AUTHORIZATION} characters")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise BadCredentials("only HTTP Basic authorization is understood here (Authorization: Basic ...)")
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadCredentials("the Basic credential is not base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCredentials("the Basic credential is not UTF-8") from None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise BadCredentials("the Basic credential must be user:password, both non-empty")
    return text


def requester(scope: dict[str, Any], headers: dict[str, str], cfg: Any) -> Requester:
    """The ``Requester`` of an ASGI request; ``BadCredentials`` for a
    malformed Authorization header.  ``cfg`` is the ``ServerConfig``."""
    client = scope.get("client")
    address, port = "", 0
    if isinstance(client, (tuple, list)) and len(client) == 2:
        address, port = str(client[0]), client[1] if type(client[1]) is int else 0
    ids: set[tuple[str, str]] = {("ip", address)} if address else set()
    user = None
    credential = basic_credential(headers.get("authorization"))
    if credential is not None:
        try:
            ids.add(("digest", digest_id(credential)))
        except AuthFailedError:  # basic_credential checked the form already; kept for safety
            raise BadCredentials("the Basic credential must be user:password, both non-empty") from None
        user = credential.partition(":")[0]
    peer = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    return Requester(cfg.identify(frozenset(ids)), address, peer, user)
