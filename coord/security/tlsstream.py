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

The stream itself is the SDK's (``coordclient.tlssocket``: one definition
for the client and the server, as for the wire format); under Trio it calls
Trio's primitives directly, so sharing it costs the server nothing.  This
module keeps the server's names: ``handshake`` turns an accepted or dialled
``trio.SocketStream`` into a ``TLSSocketStream`` (the socket stream gives
up its file descriptor); ``getpeercert`` and ``context`` are the ``ssl``
ones, so certificate checks read the same way as before.
"""

from __future__ import annotations

from coordclient.tlssocket import TrioTLSSocketStream as TLSSocketStream
from coordclient.tlssocket import trio_handshake as handshake

__all__ = ["TLSSocketStream", "handshake"]
