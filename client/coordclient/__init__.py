"""coordclient: the coord SDK and the wire format shared with the server.

``Client`` (async, Trio) and ``SyncClient`` (blocking, any thread) are the
SDK; ``coordctl`` (``coordclient.cli``) is the command-line tool.

Kept import-light on purpose: the server imports ``coordclient.wire`` on its
hot path, so the SDK modules (and their dependencies) load only when one of
the names below is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "coordclient.client",
    "ConnState": "coordclient.client",
    "RESYNC": "coordclient.client",
    "Stat": "coordclient.client",
    "WatchEvent": "coordclient.client",
    "WatchOverflowError": "coordclient.client",
    "WatchStream": "coordclient.client",
    "ops": "coordclient.client",
    "parse_endpoints": "coordclient.client",
    "SyncClient": "coordclient.sync",
    "SyncWatch": "coordclient.sync",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from coordclient.client import (  # noqa: F401
        RESYNC,
        Client,
        ConnState,
        Stat,
        WatchEvent,
        WatchOverflowError,
        WatchStream,
        ops,
        parse_endpoints,
    )
    from coordclient.sync import SyncClient, SyncWatch  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coordclient' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
