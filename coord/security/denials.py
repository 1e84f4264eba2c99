"""Requests refused for missing permission: counted and logged one way on every port.

A refusal (a node's ACL, an admin rule) is counted in
``coord_requests_denied_total`` and logged -- how an operator notices a
misconfigured client, or someone probing -- whether it came in on the
client port, the ZooKeeper port or the HTTP port.  Whoever can send
requests can make as many refusals as they like, so the lines are
rate-limited (one limit shared by every port).  A line names the
identities a request had, a digest by its user name only: never a password,
never even the digest.
"""

from __future__ import annotations

import logging
from typing import Any

from coord.namespace.acl import Auth
from coord.security.ratelog import RateLimit

__all__ = ["DENIED_LOG", "note_denied", "shown_ids"]

DENIED_LOG = RateLimit(20, 10.0)


def shown_ids(auth: Auth) -> list[str]:
    """``auth``'s identities as a log line shows them (digest: the user name)."""
    return sorted(f"{s}:{i.split(':')[0] if s == 'digest' else i}" for s, i in auth.ids) or ["anyone"]


def note_denied(obs: Any, logger: logging.Logger, what: Any, path: Any, auth: Auth, peer: str, who: str) -> None:
    """Count one refusal in ``obs`` (``ServiceStats``) and log it unless over the limit.
    ``who`` says more about the requester (a session, an HTTP user)."""
    obs.denied += 1
    if DENIED_LOG.allow():
        logger.warning("denied %s on %s for %s from %s (%s)", what, path, shown_ids(auth), peer, who)
