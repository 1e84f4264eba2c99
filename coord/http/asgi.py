"""The little of ASGI the HTTP port needs: requests, responses, a router.

No web framework: the port serves a dozen read-only GET endpoints, and a
framework would be more code to trust than the routes themselves.  Every
query parameter goes through ``Query`` so bad input gets a 400 naming the
parameter, and every handler answers; nothing here ever changes server
state (only GET and HEAD are routed at all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from coord.http.identity import Requester

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

MAX_QUERY = 4096  # bytes of query string accepted


class BadRequest(Exception):
    """The request is malformed; the message says which parameter and why."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json",
                    [(b"cache-control", b"no-store")])


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


class Query:
    """Typed access to a query string; BadRequest on a bad value."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) > MAX_QUERY:
            raise BadRequest(f"query string longer than {MAX_QUERY} bytes")
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest("query string is not UTF-8") from None
        self.values = dict(pairs)

    def str(self, name: str, default: str | None = None) -> str:
        v = self.values.get(name)
        if v is None:
            if default is None:
                raise BadRequest(f"missing parameter {name!r}")
            return default
        return v

    def int(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.values.get(name)
        if v is None or v == "":
            return default
        try:
            n = int(v)
        except ValueError:
            raise BadRequest(f"parameter {name!r} must be an integer, got {v[:40]!r}") from None
        if not lo <= n <= hi:
            raise BadRequest(f"parameter {name!r} must be between {lo} and {hi}, got {n}")
        return n

    def float(self, name: str, default: float) -> float:
        v = self.values.get(name)
        if v is None or v == "":
            return default
        try:
            x = float(v)
        except ValueError:
            raise BadRequest(f"parameter {name!r} must be a number, got {v[:40]!r}") from None
        if x != x or x in (float("inf"), float("-inf")):
            raise BadRequest(f"parameter {name!r} must be a finite number")
        return x

    def bool(self, name: str, default: bool) -> bool:
        v = self.values.get(name)
        if v is None or v == "":
            return default
        if v in ("1", "true", "yes"):
            return True
        if v in ("0", "false", "no"):
            return False
        raise BadRequest(f"parameter {name!r} must be 0 or 1, got {v[:40]!r}")


@dataclass(slots=True)
class Request:
    scope: Scope
    receive: Receive
    send: Send
    path: str
    query: Query
    headers: dict[str, str]
    who: Requester | None = None  # who sent it, once a handler asked (coord.http.identity)


async def send_response(send: Send, resp: Response, head_only: bool = False) -> None:
    headers = [(b"content-type", resp.content_type.encode()), (b"content-length", str(len(resp.body)).encode()),
               (b"x-content-type-options", b"nosniff"), *resp.headers]
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else resp.body})


def headers_of(scope: Scope) -> dict[str, str]:
    out = {}
    for k, v in scope.get("headers", ()):
        out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out
