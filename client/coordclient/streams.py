"""The byte streams a connection runs on, whatever the event loop.

The SDK talks to an AnyIO ``ByteStream`` (``send``/``receive``/``aclose``),
which ``anyio.connect_tcp`` gives on asyncio and on Trio alike.  Code
written for the Trio-only SDK passed ``connect_stream`` functions that
return a ``trio.abc.Stream`` (``send_all``/``receive_some``); ``as_byte_stream``
adapts those, so both kinds keep working.
"""

from __future__ import annotations

import ssl
from typing import Any, Awaitable, Callable, Union

import anyio
import anyio.abc

from coordclient.tlssocket import connect_tls

__all__ = ["ConnectStream", "as_byte_stream", "connect_tcp", "tls_connector", "tls_context"]

# connect_stream(host, port) -> an AnyIO ByteStream (or a trio.abc.Stream).
ConnectStream = Callable[[str, int], Awaitable[Any]]

# Seconds a TLS handshake may take (the Client's connect timeout bounds it too).
HANDSHAKE_TIMEOUT = 10.0


async def connect_tcp(host: str, port: int) -> anyio.abc.ByteStream:
    """The default transport: TCP (happy eyeballs, TCP_NODELAY) on the running loop."""
    return await anyio.connect_tcp(host, port)


def tls_connector(context: ssl.SSLContext, *, handshake_timeout: float | None = HANDSHAKE_TIMEOUT) -> ConnectStream:
    """Connect with TLS (``Client(tls=...)``): the server's certificate is
    checked against ``context``'s CAs and the endpoint's host name (or IP
    address), and ``context``'s own certificate, if it has one, is the
    client's x509 identity.

    TLS runs on the socket itself (``coordclient.tlssocket``: OpenSSL fed
    straight from the non-blocking socket, the loop only waits), not through
    AnyIO's TLS layer over a socket stream.  A refused handshake raises the ``ssl`` error
    (``SSLCertVerificationError`` for a wrong CA or host name), one that
    does not finish within ``handshake_timeout`` seconds ``TimeoutError``."""

    async def connect(host: str, port: int) -> anyio.abc.ByteStream:
        return await connect_tls(host, port, context, server_hostname=host, handshake_timeout=handshake_timeout)

    return connect


def tls_context(cacert: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client TLS context from files: the CA that signed the servers'
    certificates (None: the system's), and an optional client certificate."""
    ctx = ssl.create_default_context(cafile=cacert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    elif key:
        raise ValueError("a client key without its certificate")
    return ctx


def as_byte_stream(stream: Any) -> anyio.abc.ByteStream:
    """``stream`` as an AnyIO ByteStream (Trio streams are wrapped)."""
    if isinstance(stream, anyio.abc.ByteStream):
        return stream
    if hasattr(stream, "send_all") and hasattr(stream, "receive_some"):
        return _TrioStream(stream)
    raise TypeError(f"connect_stream returned {type(stream).__name__}, not a byte stream")


class _TrioStream(anyio.abc.ByteStream):
    """A ``trio.abc.Stream`` seen as an AnyIO ByteStream (Trio backend only,
    since the stream itself is Trio's)."""

    def __init__(self, inner: Any):
        import trio

        self._inner = inner
        self._errors: tuple[type[BaseException], ...] = (trio.BrokenResourceError, trio.ClosedResourceError)
        self._trio = trio

    async def send(self, item: bytes) -> None:
        try:
            await self._inner.send_all(item)
        except self._trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except self._trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._inner.receive_some(max_bytes)
        except self._trio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        except self._trio.BrokenResourceError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send_eof(self) -> None:
        send_eof: Union[Callable[[], Awaitable[None]], None] = getattr(self._inner, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()
