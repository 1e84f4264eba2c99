"""systemd's readiness protocol, spoken directly (no extra dependency).

With ``Type=notify`` systemd waits for ``READY=1`` on the datagram socket
named by ``$NOTIFY_SOCKET`` before it considers the service started, so units
ordered after coord start only once the server has loaded its state and
serves clients.  Outside systemd the variable is unset and this does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to systemd.
    Returns False when not running under systemd or the send failed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(path)
            s.sendall(state.encode())
        return True
    except OSError:
        return False
