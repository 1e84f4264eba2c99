"""coordclient: the coord SDK and the wire format shared with the server.

``Client`` (async: asyncio or Trio) and ``SyncClient`` (blocking, any
thread) are the SDK, ``coordclient.recipes`` the coordination recipes, and
``coordctl`` (``coordclient.cli``) the command-line tool.

Kept import-light on purpose: the server imports ``coordclient.wire`` on its
hot path, so the SDK modules (and their dependencies) load only when one of
the names below is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ACL": "coordclient.acl",
    "Client": "coordclient.client",
    "ConnState": "coordclient.types",
    "RESYNC": "coordclient.types",
    "Stat": "coordclient.types",
    "WatchEvent": "coordclient.types",
    "WatchOverflowError": "coordclient.watches",
    "WatchStream": "coordclient.watches",
    "CoordError": "coordclient.errors",
    "NoSpaceError": "coordclient.errors",
    "make_acl": "coordclient.acl",
    "make_digest_acl": "coordclient.acl",
    "ops": "coordclient.messages",
    "parse_endpoints": "coordclient.endpoints",
    "SyncClient": "coordclient.sync",
    "SyncWatch": "coordclient.sync",
    "tls_context": "coordclient.streams",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from coordclient.acl import ACL, make_acl, make_digest_acl  # noqa: F401
    from coordclient.client import Client  # noqa: F401
    from coordclient.endpoints import parse_endpoints  # noqa: F401
    from coordclient.errors import CoordError, NoSpaceError  # noqa: F401
    from coordclient.messages import ops  # noqa: F401
    from coordclient.streams import tls_context  # noqa: F401
    from coordclient.sync import SyncClient, SyncWatch  # noqa: F401
    from coordclient.types import RESYNC, ConnState, Stat, WatchEvent  # noqa: F401
    from coordclient.watches import WatchOverflowError, WatchStream  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coordclient' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
