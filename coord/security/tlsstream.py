"""TLS for the server's sockets: the SDK's TLS socket stream, driven by Trio.

``trio.SSLStream`` runs OpenSSL over memory buffers layered on a Trio
socket stream and moves every record through Python (its retry loop, a
lock, the stream underneath): a write through a TLS ensemble took ~70% more
server CPU than a plain one, while the cryptography itself is a few
percent.  The servers then let OpenSSL read and write the non-blocking
socket itself (``ssl.SSLSocket``), which without read-ahead costs two
system calls per TLS record and returns one record per receive.  Now the
stream is ``coordclient.tlssocket``'s (one definition for the client and the
server, as for the wire format): OpenSSL over memory buffers fed straight
from the socket, one ``recv`` for everything that has arrived, one ``send``
per write, Trio asked only to wait (its own primitives, called directly:
sharing costs the server nothing).

This module keeps the server's names: ``handshake`` turns an accepted or
dialled ``trio.SocketStream`` into a ``TLSSocketStream`` (the socket stream
gives up its file descriptor) and raises ``trio.BrokenResourceError`` with
the ``ssl`` error as its cause; ``getpeercert`` and ``context`` are the
``ssl`` ones, so certificate checks read the same way as before.
"""

from __future__ import annotations

from coordclient.tlssocket import TrioTLSSocketStream as TLSSocketStream
from coordclient.tlssocket import trio_handshake as handshake

__all__ = ["TLSSocketStream", "handshake"]
