"""TLS on the socket itself: OpenSSL reads and writes a non-blocking
``ssl.SSLSocket``, and the event loop is asked only to wait.

``anyio.connect_tcp(..., ssl_context=...)`` and ``trio.SSLStream`` run
OpenSSL over memory buffers (``ssl.MemoryBIO``) and move every TLS record
through Python: a retry loop, a lock, a second stream underneath.  That
works over any byte stream, but coord only ever speaks TLS over a TCP
socket, and there the extra Python per read and per write was most of what
TLS cost (measured on the server: 35 µs of CPU per 120-byte round trip
here, 92 µs with ``trio.SSLStream``, 45 µs with a plain Trio socket
stream).  Here a read or a write is one C call in the common case; only
when OpenSSL says ``SSLWantRead``/``SSLWantWrite`` does the stream wait for
the socket (``wait_readable``/``wait_writable`` of the running loop).

One definition serves both sides:

* ``TLSSocketStream``: an AnyIO ``ByteStream`` (asyncio or Trio), what the
  SDK's ``Client(tls=...)`` connects with (``connect_tls``);
* ``TrioTLSSocketStream``: the same as a ``trio.abc.Stream``, for the
  Trio-only ``AdminClient`` and for the server (``coord.security.tlsstream``
  re-exports it);
* ``handshake_socket``: the handshake loop both use, and ``trio_handshake``
  (a ``trio.SocketStream`` in, a ``TrioTLSSocketStream`` out).

On Trio the loop's primitives are Trio's own, called directly (no AnyIO
dispatch per wait), so the server pays nothing for the sharing.

Rules, as for any stream: one task may receive while another sends, never
two senders or two receivers at once.  TLS has no half-close: ``send_eof``
raises.  A send that is cancelled after OpenSSL has taken part of the data
leaves the TLS stream unusable for sending (OpenSSL must be handed the rest
of that same buffer), so the stream is then broken, like ``trio.SSLStream``.
"""

from __future__ import annotations

import math
import os
import socket
import ssl
from typing import Any, Awaitable, Callable, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.streams.tls
import trio

try:
    import sniffio  # Trio's dependency (AnyIO no longer needs it): under Trio it is there
except ImportError:  # pragma: no cover
    sniffio = None  # type: ignore[assignment]

__all__ = ["TLSSocketStream", "TrioTLSSocketStream", "connect_tls", "handshake_socket", "loop_waits",
           "take_socket", "trio_handshake", "Waits"]

_BROKEN = (ssl.SSLError, OSError)
# What a wait raises when another task closes the socket (Trio's primitives or AnyIO's).
_WAIT_CLOSED = (trio.ClosedResourceError, anyio.ClosedResourceError)

# What OpenSSL may be asked to read per receive when the caller names no size.
DEFAULT_RECEIVE = 65536


class Waits(NamedTuple):
    """The running loop's primitives (see ``loop_waits``)."""

    readable: Callable[[Any], Awaitable[None]]
    writable: Callable[[Any], Awaitable[None]]
    notify_closing: Callable[[Any], None]
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    cancel_shielded_checkpoint: Callable[[], Awaitable[None]]


_low = trio.lowlevel
TRIO_WAITS = Waits(_low.wait_readable, _low.wait_writable, _low.notify_closing, _low.checkpoint_if_cancelled,
                   _low.cancel_shielded_checkpoint)
ANYIO_WAITS = Waits(anyio.wait_readable, anyio.wait_writable, anyio.notify_closing,
                    anyio.lowlevel.checkpoint_if_cancelled, anyio.lowlevel.cancel_shielded_checkpoint)


def loop_waits() -> Waits:
    """The running loop's wait primitives: Trio's own under Trio (no AnyIO
    dispatch per call), AnyIO's otherwise (asyncio)."""
    if sniffio is not None:
        try:
            if sniffio.current_async_library() == "trio":
                return TRIO_WAITS
        except sniffio.AsyncLibraryNotFoundError:
            pass
    return ANYIO_WAITS


async def handshake_socket(raw: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                           server_hostname: str | None = None, waits: Waits | None = None) -> ssl.SSLSocket:
    """Run the TLS handshake on the connected socket ``raw`` (which this takes over).

    Returns the non-blocking ``ssl.SSLSocket``; raises the ``ssl`` (or
    ``OSError``) error as OpenSSL gave it (``.reason``:
    ``CERTIFICATE_VERIFY_FAILED``...), and the socket is closed then, as it
    is when the handshake is cancelled.  Bound it in time from outside."""
    w = waits or loop_waits()
    raw.setblocking(False)
    try:
        sock = ctx.wrap_socket(raw, server_side=server_side, server_hostname=server_hostname,
                               do_handshake_on_connect=False)
    except BaseException:
        raw.close()
        raise
    ok = False
    try:
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await w.readable(sock)
            except ssl.SSLWantWriteError:
                await w.writable(sock)
        ok = True
    finally:
        if not ok:
            w.notify_closing(sock)
            sock.close()
    return sock


class _TLSSocket:
    """What both stream flavours share: the socket and the read/write loop.

    ``_Broken``, ``_Closed`` and ``_EOF`` are the exception classes of the
    flavour; its send and receive methods are ``_send`` and ``_recv``
    themselves (no extra call per operation)."""

    _Broken: type[Exception]
    _Closed: type[Exception]
    _EOF: type[Exception] | None = None  # raised by a receive at the end (else b"" is returned)

    def __init__(self, sock: ssl.SSLSocket, waits: Waits | None = None):
        self._sock = sock
        self._waits = waits or loop_waits()
        self._closed = False
        self._send_broken = False

    # -- what callers ask of a TLS connection ---------------------------------
    @property
    def context(self) -> ssl.SSLContext:
        return self._sock.context

    @property
    def socket(self) -> ssl.SSLSocket:
        return self._sock

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._sock.getpeercert(binary_form)

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def version(self) -> str | None:
        return self._sock.version()

    # -- the loop -----------------------------------------------------------------
    async def _io(self, op: Any, arg: Any) -> Any:
        """``op(arg)`` on the socket, waiting whichever way OpenSSL asks.

        Returns b"" when the peer ended TLS (close_notify) or the socket
        (a ragged end, which the framing above tells from a clean one)."""
        sock = self._sock
        waits = self._waits
        while True:
            if self._closed:
                raise self._Closed("this TLS connection was closed")
            try:
                return op(arg)
            except ssl.SSLWantReadError:
                wait = waits.readable
            except ssl.SSLWantWriteError:
                wait = waits.writable
            except ssl.SSLZeroReturnError:  # the peer's close_notify: a clean end
                return b""
            except _BROKEN as exc:
                if self._closed:  # closed under us by another task
                    raise self._Closed("this TLS connection was closed") from None
                raise self._Broken(f"TLS connection failed: {exc}") from exc
            try:
                await wait(sock)
            except _WAIT_CLOSED:  # aclose() by another task while this one waited
                raise self._Closed("this TLS connection was closed") from None

    async def _recv(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes``; at the end b"" or, if the flavour says so, ``_EOF``."""
        waits = self._waits
        await waits.checkpoint_if_cancelled()
        data = await self._io(self._sock.recv, max_bytes or DEFAULT_RECEIVE)
        if not data and self._EOF is not None:
            raise self._EOF
        await waits.cancel_shielded_checkpoint()
        return data

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        waits = self._waits
        await waits.checkpoint_if_cancelled()
        if self._send_broken and not self._closed:
            raise self._Broken("an earlier send on this TLS connection did not finish (cancelled or failed)")
        view = memoryview(data)
        self._send_broken = True  # until the whole of data is out
        while view:
            sent = await self._io(self._sock.send, view)
            if type(sent) is not int:  # the peer ended TLS (close_notify) while we write
                raise self._Broken("the peer closed the TLS connection")
            view = view[sent:]
        self._send_broken = False
        await waits.cancel_shielded_checkpoint()

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = True
            sock = self._sock
            try:
                self._waits.notify_closing(sock)
            except (ValueError, OSError):  # never registered with this loop, or closed already
                pass
            try:  # close_notify if it fits in the socket buffer now; never wait for the peer's
                sock.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            sock.close()


class TLSSocketStream(_TLSSocket, anyio.abc.ByteStream):
    """A TLS connection as an AnyIO ``ByteStream`` (make one with ``connect_tls``
    or ``wrap``).  ``receive`` raises ``EndOfStream`` at the end, ``send_eof``
    ``NotImplementedError``; the usual TLS attributes are ``extra``s."""

    _Broken = anyio.BrokenResourceError
    _Closed = anyio.ClosedResourceError
    _EOF = anyio.EndOfStream

    @classmethod
    async def wrap(cls, raw: socket.socket, ctx: ssl.SSLContext, *, server_side: bool = False,
                   server_hostname: str | None = None, handshake_timeout: float | None = None) -> "TLSSocketStream":
        """Handshake on the connected socket ``raw`` (taken over, closed on failure)
        within ``handshake_timeout`` seconds (``TimeoutError`` after)."""
        waits = loop_waits()
        with anyio.move_on_after(math.inf if handshake_timeout is None else handshake_timeout) as scope:
            return cls(await handshake_socket(raw, ctx, server_side=server_side, server_hostname=server_hostname,
                                              waits=waits), waits)
        raise TimeoutError(f"TLS handshake not done within {handshake_timeout} s")  # (its socket is closed)

    receive = _TLSSocket._recv  # (max_bytes=65536) -> bytes; EndOfStream at the end
    send = _TLSSocket._send

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close: close the stream instead")

    async def aclose(self) -> None:
        self._close_now()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> dict[Any, Callable[[], Any]]:
        sock = self._sock
        SA, TA = anyio.abc.SocketAttribute, anyio.streams.tls.TLSAttribute
        return {
            SA.family: lambda: sock.family,
            SA.local_address: sock.getsockname,
            SA.remote_address: sock.getpeername,
            SA.raw_socket: lambda: sock,
            TA.alpn_protocol: sock.selected_alpn_protocol,
            TA.cipher: sock.cipher,
            TA.peer_certificate: lambda: sock.getpeercert(False),
            TA.peer_certificate_binary: lambda: sock.getpeercert(True),
            TA.server_side: lambda: sock.server_side,
            TA.shared_ciphers: lambda: sock.shared_ciphers() if sock.server_side else None,
            TA.ssl_object: lambda: sock,
            TA.standard_compatible: lambda: False,  # a ragged end reads as EndOfStream
            TA.tls_version: sock.version,
        }


class TrioTLSSocketStream(_TLSSocket, trio.abc.Stream):
    """A TLS connection as a ``trio.abc.Stream`` (the server's, ``AdminClient``'s).

    ``receive_some`` returns b"" at the end; failures are
    ``trio.BrokenResourceError`` with the ``ssl``/``OS`` error as ``__cause__``."""

    _Broken = trio.BrokenResourceError
    _Closed = trio.ClosedResourceError

    receive_some = _TLSSocket._recv  # (max_bytes=None) -> bytes; b"" at the end
    send_all = _TLSSocket._send

    async def wait_send_all_might_not_block(self) -> None:
        await self._waits.writable(self._sock)

    async def aclose(self) -> None:
        self._close_now()
        await trio.lowlevel.checkpoint()


async def trio_handshake(stream: trio.SocketStream, ctx: ssl.SSLContext, *, server_side: bool,
                         server_hostname: str | None = None) -> TrioTLSSocketStream:
    """TLS on a Trio socket stream (accepted or dialled), which gives up its socket.

    Raises ``trio.BrokenResourceError`` (its ``__cause__`` the ``ssl`` or
    ``OS`` error, whose ``reason`` says why) if it fails; the socket is
    closed then.  Bound it in time from outside (``trio.move_on_after``)."""
    raw = socket.socket(fileno=stream.socket.detach())
    try:
        sock = await handshake_socket(raw, ctx, server_side=server_side, server_hostname=server_hostname,
                                      waits=TRIO_WAITS)
    except _BROKEN as exc:
        raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
    return TrioTLSSocketStream(sock, TRIO_WAITS)


async def connect_tls(host: str, port: int, ctx: ssl.SSLContext, *, server_hostname: str | None = None,
                      handshake_timeout: float | None = None) -> TLSSocketStream:
    """TCP (``anyio.connect_tcp``: happy eyeballs, TCP_NODELAY) then TLS on the socket.

    The server's certificate is checked against ``ctx`` and ``server_hostname``
    (default ``host``).  A refused handshake raises the ``ssl`` error (an
    ``OSError``: ``SSLCertVerificationError`` for a wrong CA or host name);
    ``TimeoutError`` after ``handshake_timeout`` seconds."""
    return await TLSSocketStream.wrap(await _connected_socket(host, port), ctx,
                                      server_hostname=host if server_hostname is None else server_hostname,
                                      handshake_timeout=handshake_timeout)


async def _connected_socket(host: str, port: int) -> socket.socket:
    return await take_socket(await anyio.connect_tcp(host, port))


async def take_socket(stream: anyio.abc.SocketStream) -> socket.socket:
    """The connected socket of an AnyIO socket stream, as a socket of our own.

    AnyIO's stream keeps its socket registered with the loop (asyncio's
    transport reads it), so it gives a duplicate of the descriptor and is
    closed: the connection lives on in the duplicate, which nothing else
    watches.  Take it before anything was read (a TLS server speaks only
    after the ClientHello; a client speaks first)."""
    try:
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock = socket.socket(raw.family, raw.type, raw.proto, fileno=os.dup(raw.fileno()))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
    return sock
