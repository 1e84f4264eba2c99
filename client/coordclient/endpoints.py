"""Parsing the endpoint lists users write ("h1:2181,h2:2181", "[::1]:2181").

Shared by the client, ``AdminClient`` and ``coordctl``, so every tool
accepts the same spellings.
"""

from __future__ import annotations

from typing import Iterable, Union

__all__ = ["Endpoints", "parse_endpoints"]

Endpoints = Union[str, Iterable[Union[str, tuple[str, int]]]]


def parse_endpoints(endpoints: Endpoints) -> list[tuple[str, int]]:
    """Parse "h1:p1,h2:p2" (or a list of "h:p" / (h, p)); "[::1]:2181" for IPv6."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, tuple):
            host, port = item
        else:
            item = item.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host:
                raise ValueError(f"endpoint {item!r} is not host:port")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"endpoint {item!r}: port is not a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"endpoint {item!r}: port out of range")
        out.append((str(host), port))
    if not out:
        raise ValueError("no endpoints given")
    return out
