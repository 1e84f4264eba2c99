"""TLS on the TCP socket itself, for the SDK and the server, on asyncio or Trio.

``anyio.connect_tcp(..., ssl_context=...)`` and ``trio.SSLStream`` layer TLS
over another stream object: every read and write goes through that stream's
Python (a retry loop, a lock, AnyIO's or Trio's socket stream underneath,
asyncio's transport on asyncio).  coord only speaks TLS over TCP, so here
OpenSSL (``ssl.SSLObject`` over two ``MemoryBIO``s) is fed straight from the
non-blocking socket: a receive is one ``recv`` system call for everything
that has arrived, then record after record decrypted in C, returned in one
piece; a send encrypts and makes one ``send`` of all the records.  The
event loop is asked only to wait (``wait_readable``/``wait_writable``) when
the socket has nothing to read or no room to write.

(``ssl.SSLSocket``, the server's previous way, makes OpenSSL read the
socket itself, but without read-ahead it reads each record with two system
calls, header then body, and a receive returns one record: under load a
burst of small messages cost two syscalls and one trip through the
caller's loop each.  Measured on a 120-byte ping-pong, both ways cost the
same, ~37 µs of CPU per round trip, against 92 µs with ``trio.SSLStream``,
~50 µs with AnyIO's TLS on Trio and ~130 µs on asyncio.)

One definition serves both sides (the rule for the wire format too):

* ``TLSSocketStream``: an AnyIO ``ByteStream`` (asyncio or Trio), what the
  SDK's ``Client(tls=...)`` connects with (``connect_tls``);
* ``TLSSocketStream`` is ``AdminClient``'s too;
* ``TrioTLSSocketStream``: the same as a ``trio.abc.Stream``, for the
  server (``coord.security.tlsstream`` re-exports it with ``trio_handshake``);
* ``handshake_socket``: the handshake both use.

Under Trio the primitives are Trio's own, called directly (no AnyIO dispatch
per wait), so the server pays nothing for the sharing; under asyncio they
are AnyIO's.

Rules, as for any stream: one task may receive while another sends, never
two senders or two receivers at once.  TLS has no half-close: ``send_eof``
raises ``NotImplementedError``.  A ragged end (the peer's socket closed
without close_notify) reads as the end, like a clean one: the framing above
tells a truncated frame.  A send cancelled while waiting for room leaves
records half sent, so the stream is broken for sending after it (receiving
still works), as with ``trio.SSLStream``.
"""

from __future__ import annotations

import math
import os
import socket
import ssl
from typing import Any, Awaitable, Callable, NamedTuple, TypeVar

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
_T = TypeVar("_T", bound="_TLSSocket")
# What a wait raises when another task closes the socket (Trio's primitives or AnyIO's).
_WAIT_CLOSED = (trio.ClosedResourceError, anyio.ClosedResourceError)

# What OpenSSL may be asked to read per receive when the caller names no size.
DEFAULT_RECEIVE = 65536
# Bytes asked of the socket per read: every record that has arrived, in one system call.
RECV_CHUNK = 256 << 10


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
                           server_hostname: str | None = None, waits: Waits | None = None,
                           cls: type[_T] | None = None) -> _T:
    """Run the TLS handshake on the connected socket ``raw`` (which this takes over).

    Returns a ``cls`` stream (default ``TLSSocketStream``); raises the ``ssl``
    (or ``OSError``) error as OpenSSL gave it (``.reason``:
    ``CERTIFICATE_VERIFY_FAILED``...), and the socket is closed then, as it
    is when the handshake is cancelled.  Bound it in time from outside."""
    w = waits or loop_waits()
    try:
        raw.setblocking(False)
        stream = (cls or TLSSocketStream)(raw, ctx, server_side=server_side, server_hostname=server_hostname,
                                          waits=w)
    except BaseException:
        raw.close()
        raise
    ok = False
    try:
        obj = stream._obj
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await stream._flush(w)  # our flight out before we wait for the peer's
                await stream._fill(w)
            except ssl.SSLError:
                try:
                    stream._flush_nowait()  # the alert, so that the peer learns why (best effort)
                except stream._Broken:
                    pass
                raise
        await stream._flush(w)  # the last flight (the client's Finished, the server's tickets)
        ok = True
    except stream._Broken as exc:  # the socket failed: say so as the OSError it was
        cause = exc.__cause__
        raise (cause if isinstance(cause, OSError) else ConnectionError(str(exc))) from None
    finally:
        if not ok:
            w.notify_closing(raw)
            raw.close()
    return stream


class _TLSSocket:
    """What both stream flavours share: the socket, OpenSSL, and the loops.

    OpenSSL works on two memory buffers (``ssl.SSLObject``), and this class
    moves bytes between them and the non-blocking socket itself, so that a
    read takes everything that has arrived in one system call and then
    decrypts record after record in C (``ssl.SSLSocket`` would make two
    system calls per record: header, then body), and a write is one
    ``send`` of all the records it made.  The loop is asked to wait only
    when the socket has nothing (readable) or is full (writable).

    ``_Broken``, ``_Closed`` and ``_EOF`` are the exception classes of the
    flavour; its send and receive methods are ``_send`` and ``_recv``
    themselves (no extra call per operation)."""

    _Broken: type[Exception]
    _Closed: type[Exception]
    _EOF: type[Exception] | None = None  # raised by a receive at the end (else b"" is returned)

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None, waits: Waits | None = None):
        """Not usable before its handshake: make one with ``handshake_socket``."""
        self._sock = sock
        self._in, self._outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._outbio, server_side=server_side, server_hostname=server_hostname)
        self._waits = waits or loop_waits()
        self._closed = False
        self._send_broken = False
        self._out = bytearray()  # records taken from OpenSSL and not sent yet (the socket was full)

    # -- what callers ask of a TLS connection ---------------------------------
    @property
    def context(self) -> ssl.SSLContext:
        return self._obj.context

    @property
    def socket(self) -> socket.socket:
        """The TCP socket underneath (for its addresses and options; never read or write it)."""
        return self._sock

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._obj.getpeercert(binary_form)

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def version(self) -> str | None:
        return self._obj.version()

    # -- moving bytes between OpenSSL and the socket ------------------------------
    def _fail(self, exc: BaseException) -> Exception:
        if self._closed:  # closed under us by another task
            return self._Closed("this TLS connection was closed")
        return self._Broken(f"TLS connection failed: {exc}")

    def _flush_nowait(self) -> bool:
        """Send what OpenSSL has written, as far as the socket takes it now;
        True when nothing is left."""
        out = self._out
        data = self._outbio.read()
        if not out:
            if not data:
                return True
            try:
                n = self._sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                raise self._fail(exc) from exc
            if n == len(data):
                return True
            out += memoryview(data)[n:]
            return False
        out += data
        while out:
            try:
                n = self._sock.send(out)
            except BlockingIOError:
                return False
            except OSError as exc:
                raise self._fail(exc) from exc
            del out[:n]
        return True

    async def _flush(self, waits: Waits) -> None:
        while not self._flush_nowait():
            try:
                await waits.writable(self._sock)
            except _WAIT_CLOSED:
                raise self._Closed("this TLS connection was closed") from None

    async def _fill(self, waits: Waits) -> None:
        """Everything the socket has now into OpenSSL (waiting for something)."""
        while True:
            if self._closed:
                raise self._Closed("this TLS connection was closed")
            try:
                chunk = self._sock.recv(RECV_CHUNK)
            except BlockingIOError:
                try:
                    await waits.readable(self._sock)
                except _WAIT_CLOSED:
                    raise self._Closed("this TLS connection was closed") from None
                continue
            except OSError as exc:
                raise self._fail(exc) from exc
            if chunk:
                self._in.write(chunk)
            else:
                self._in.write_eof()  # OpenSSL then says SSLZeroReturn (after close_notify) or SSLEOF
            return

    # -- the stream -----------------------------------------------------------------
    async def _recv(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes``; at the end b"" or, if the flavour says so, ``_EOF``.

        Decrypted data OpenSSL holds (``pending()``) and whole records already
        read from the socket are returned before the socket is read again,
        and all of them, up to ``max_bytes``, in one receive.  A ragged end
        (no close_notify) reads as the end too: the framing above tells a
        truncated frame from a clean end.  A schedule point either way: the
        wait, or (when the data was there at once) a cancel-shielded
        checkpoint, as Trio's sockets do."""
        waits = self._waits
        await waits.checkpoint_if_cancelled()
        n = max_bytes or DEFAULT_RECEIVE
        obj = self._obj
        sock = self._sock
        inbio = self._in
        waited = False
        while True:
            if self._closed:
                raise self._Closed("this TLS connection was closed")
            # Nothing in either buffer: OpenSSL could only say SSLWantRead (an
            # exception costs microseconds), so go to the socket at once.
            if inbio.pending or obj.pending() or inbio.eof:
                try:
                    data = obj.read(n)
                    break
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or a ragged end
                    data = b""
                    break
                except ssl.SSLError as exc:
                    raise self._fail(exc) from exc
            if self._out or self._outbio.pending:  # a post-handshake message of ours (rare)
                self._flush_nowait()
            try:  # everything that has arrived, in one system call
                chunk = sock.recv(RECV_CHUNK)
            except BlockingIOError:
                try:
                    await waits.readable(sock)
                except _WAIT_CLOSED:
                    raise self._Closed("this TLS connection was closed") from None
                waited = True
                continue
            except OSError as exc:
                raise self._fail(exc) from exc
            if chunk:
                inbio.write(chunk)
            else:
                inbio.write_eof()
        if data and len(data) < n and inbio.pending:  # more records came in that read
            parts = [data]
            got = len(data)
            while got < n and inbio.pending:
                try:
                    more = obj.read(n - got)
                except ssl.SSLError:  # a partial record, the end, an error: the next receive says
                    break
                if not more:
                    break
                parts.append(more)
                got += len(more)
            if len(parts) > 1:
                data = b"".join(parts)
        if not waited:
            await waits.cancel_shielded_checkpoint()
        if not data and self._EOF is not None:
            raise self._EOF
        return data

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        waits = self._waits
        await waits.checkpoint_if_cancelled()
        if self._closed:
            raise self._Closed("this TLS connection was closed")
        if self._send_broken:
            raise self._Broken("an earlier send on this TLS connection did not finish (cancelled or failed)")
        if data:
            try:
                self._obj.write(data)
            except ssl.SSLError as exc:
                raise self._fail(exc) from exc
        if self._flush_nowait():
            await waits.cancel_shielded_checkpoint()
            return
        self._send_broken = True  # until the rest is out: a cancelled send leaves a record half sent
        await self._flush(waits)
        self._send_broken = False

    def _close_now(self) -> None:
        if not self._closed:
            sock = self._sock
            try:
                self._waits.notify_closing(sock)
            except (ValueError, OSError):  # never registered with this loop, or closed already
                pass
            try:  # close_notify if it fits in the socket buffer now; never wait for the peer's
                self._obj.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            try:
                self._flush_nowait()
            except Exception:
                pass
            self._closed = True
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
        with anyio.move_on_after(math.inf if handshake_timeout is None else handshake_timeout):
            return await handshake_socket(raw, ctx, server_side=server_side, server_hostname=server_hostname,
                                          cls=cls)
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
        sock, obj = self._sock, self._obj
        SA, TA = anyio.abc.SocketAttribute, anyio.streams.tls.TLSAttribute
        return {
            SA.family: lambda: sock.family,
            SA.local_address: sock.getsockname,
            SA.remote_address: sock.getpeername,
            SA.raw_socket: lambda: sock,
            TA.alpn_protocol: obj.selected_alpn_protocol,
            TA.cipher: obj.cipher,
            TA.peer_certificate: lambda: obj.getpeercert(False),
            TA.peer_certificate_binary: lambda: obj.getpeercert(True),
            TA.server_side: lambda: obj.server_side,
            TA.shared_ciphers: lambda: obj.shared_ciphers() if obj.server_side else None,
            TA.ssl_object: lambda: obj,
            TA.standard_compatible: lambda: False,  # a ragged end reads as EndOfStream
            TA.tls_version: obj.version,
        }


class TrioTLSSocketStream(_TLSSocket, trio.abc.Stream):
    """A TLS connection as a ``trio.abc.Stream`` (the server's).

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
        return await handshake_socket(raw, ctx, server_side=server_side, server_hostname=server_hostname,
                                      waits=TRIO_WAITS, cls=TrioTLSSocketStream)
    except _BROKEN as exc:
        raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc


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
