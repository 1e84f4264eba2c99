"""A minimal HTTP/1.0 client for tests of the HTTP port (status, headers,
body), and a reader of server-sent events; HTTPS with ``ssl_context``, HTTP
Basic credentials with ``basic("user:password")``."""

from __future__ import annotations

import base64
import json
import ssl
from typing import Any

import trio


def basic(credential: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic for ``user:password``."""
    return {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()}


async def _open(host: str, port: int, ssl_context: ssl.SSLContext | None) -> trio.abc.Stream:
    stream = await trio.open_tcp_stream(host, port)
    if ssl_context is None:
        return stream
    tls = trio.SSLStream(stream, ssl_context, server_hostname=host, https_compatible=True)
    await tls.do_handshake()
    return tls


async def http(port: int, path: str, method: str = "GET", host: str = "127.0.0.1", headers: dict | None = None,
               timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    with trio.fail_after(timeout):
        stream = await _open(host, port, ssl_context)
        async with stream:
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            await stream.send_all(f"{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\n{extra}\r\n".encode())
            buf = bytearray()
            while chunk := await stream.receive_some(65536):
                buf += chunk
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


async def get_json(port: int, path: str, expect: int | None = 200, headers: dict | None = None,
                   ssl_context: ssl.SSLContext | None = None) -> Any:
    status, _, body = await http(port, path, headers=headers, ssl_context=ssl_context)
    if expect is not None:
        assert status == expect, (path, status, body[:500])
    return json.loads(body)


class EventStream:
    """An open /api/events stream (HTTP/1.0, so the body is not chunked):
    ``next_event()`` returns (event, data, id)."""

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buf = b""

    @classmethod
    async def open(cls, port: int, path: str, headers: dict | None = None,
                   ssl_context: ssl.SSLContext | None = None) -> "EventStream":
        stream = await _open("127.0.0.1", port, ssl_context)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n{extra}\r\n".encode())
        self = cls(stream)
        while b"\r\n\r\n" not in self.buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b"\r\n")[0].split()[1])
        return self

    async def next_event(self) -> tuple[str, Any, str | None]:
        while True:
            if b"\n\n" in self.buf:
                block, _, self.buf = self.buf.partition(b"\n\n")
                fields: dict[str, str] = {}
                for line in block.decode().split("\n"):
                    if line and not line.startswith(":"):
                        k, _, v = line.partition(": ")
                        fields[k] = v
                if "event" in fields:
                    return fields["event"], json.loads(fields.get("data", "null")), fields.get("id")
                continue
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("stream ended")
            self.buf += chunk

    async def aclose(self) -> None:
        await self.stream.aclose()
