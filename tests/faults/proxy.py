"""Loopback TCP proxies that let a test cut, blackhole and delay links.

Every byte between two coord servers, and between clients and servers,
passes through a proxy running in the test process:

* one *peer proxy* in front of each server's peer port.  A server's
  outbound peer connection starts with a handshake frame ``{"cluster",
  "from", "to", "port"}`` (see ``coord/transport/peer.py``), so the proxy
  learns which server is sending and the connection belongs to the link
  ``(from, to)``.  Peer connections carry data one way only (each server
  dials its own connection to every peer), so cutting ``(a, b)`` alone is a
  one-way partition.
* one *client proxy* in front of each server's client port.  All clients
  are the pseudo-node ``CLIENT``: ``(CLIENT, s)`` carries requests to server
  ``s`` and ``(s, CLIENT)`` its responses and events.

A cut link *blackholes* bytes (like dropped packets: nobody is told), and
the connections that lost data are reset when the link heals, because a
stream that lost bytes in the middle is garbage -- exactly what a TCP
connection that timed out during a real partition looks like.  New
connections on a cut link are accepted and blackholed too (the handshake
has to be read before the link is known).  A delay holds every chunk for
that long, keeping order.
"""

from __future__ import annotations

import logging
import struct
from typing import Hashable, Iterable

import cbor2
import trio

log = logging.getLogger("tests.faults.proxy")

CLIENT = "c"
HOST = "127.0.0.1"
Link = tuple[Hashable, Hashable]

_CHUNK = 65536
_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
_MAX_HANDSHAKE = 64 << 10


class Net:
    """The fault state of every link, shared by all proxies of a cluster."""

    def __init__(self) -> None:
        self.blocked: set[Link] = set()
        self.delays: dict[Link, float] = {}
        self._pipes: set[_Pipe] = set()

    # -- queries (called per chunk: keep them cheap) ----------------------
    def is_blocked(self, link: Link) -> bool:
        return link in self.blocked

    def delay(self, link: Link) -> float:
        return self.delays.get(link, 0.0)

    # -- changes ----------------------------------------------------------
    def block(self, links: Iterable[Link]) -> None:
        self.blocked.update(links)

    def unblock(self, links: Iterable[Link]) -> None:
        self.blocked.difference_update(links)
        self._reset_healed()

    def set_delay(self, links: Iterable[Link], seconds: float) -> None:
        for link in links:
            if seconds > 0:
                self.delays[link] = seconds
            else:
                self.delays.pop(link, None)

    def heal(self) -> None:
        """Every link up, no delays; connections that lost data are reset."""
        self.blocked.clear()
        self.delays.clear()
        self._reset_healed()

    def reset_all(self) -> None:
        """Close every proxied connection (both ends see a reset)."""
        for pipe in list(self._pipes):
            pipe.close()

    def _reset_healed(self) -> None:
        for pipe in list(self._pipes):
            if pipe.tainted and not any(link in self.blocked for link in pipe.links()):
                pipe.close()

    # -- topology helpers -------------------------------------------------
    @staticmethod
    def between(group_a: Iterable[Hashable], group_b: Iterable[Hashable]) -> set[Link]:
        """Both directions of every link from a member of one group to one of the other."""
        a, b = list(group_a), list(group_b)
        return {(x, y) for x in a for y in b if x != y} | {(y, x) for x in a for y in b if x != y}


class _Pipe:
    """One proxied connection: two directions, each its own link."""

    def __init__(self, net: Net, up: Link, down: Link):
        self.net = net
        self.up, self.down = up, down  # (source -> server), (server -> source)
        self.tainted = False  # some bytes were dropped: the stream is broken for good
        self.scope = trio.CancelScope()

    def links(self) -> tuple[Link, Link]:
        return self.up, self.down

    def close(self) -> None:
        self.scope.cancel()

    async def run(self, downstream: trio.SocketStream, upstream: trio.SocketStream | None, first: bytes) -> None:
        """Shuttle bytes until either side ends; ``upstream`` None: the server
        is unreachable, so the connection is only blackholed (or refused)."""
        self.net._pipes.add(self)
        if upstream is None:
            self.tainted = True  # a blackholed connection is reset when its link heals
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._direction, downstream, upstream, self.up, first, nursery)
                    if upstream is not None:
                        nursery.start_soon(self._direction, upstream, downstream, self.down, b"", nursery)
        finally:
            self.net._pipes.discard(self)

    async def _direction(self, src: trio.SocketStream, dst: trio.SocketStream | None, link: Link,
                         first: bytes, nursery: trio.Nursery) -> None:
        net = self.net
        send, recv = trio.open_memory_channel[tuple[float, bytes]](256)

        async def writer() -> None:
            try:
                async for at, data in recv:
                    if at > trio.current_time():
                        await trio.sleep_until(at)
                    await dst.send_all(data)
            except _NET_ERRORS:
                pass
            nursery.cancel_scope.cancel()

        if dst is not None:
            nursery.start_soon(writer)
        data = first
        try:
            while True:
                if data:
                    if dst is None or net.is_blocked(link):
                        self.tainted = True
                    else:
                        await send.send((trio.current_time() + net.delay(link), data))
                data = await src.receive_some(_CHUNK)
                if not data:
                    break
        except _NET_ERRORS:
            pass
        if dst is None:
            return
        # EOF or error on this side: let queued (delayed) bytes go, then end the pipe.
        await send.aclose()


class _Listener:
    """Accept loop of one proxy; subclasses decide each connection's links."""

    def __init__(self, net: Net, listen_port: int, target_port: int, server_id: int):
        self.net = net
        self.listen_port = listen_port
        self.target_port = target_port
        self.server_id = server_id

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host=HOST)
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                up, down, first = await self._identify(stream)
            except (ValueError, *_NET_ERRORS, trio.TooSlowError):
                return
            pipe = _Pipe(self.net, up, down)
            upstream = None
            if not self.net.is_blocked(up):
                try:
                    with trio.fail_after(2):
                        upstream = await trio.open_tcp_stream(HOST, self.target_port)
                except (OSError, trio.TooSlowError):
                    return  # the server is down: the client sees the connection refused/reset
            try:
                await pipe.run(stream, upstream, first)
            finally:
                if upstream is not None:
                    with trio.CancelScope(shield=True):
                        await upstream.aclose()

    async def _identify(self, stream: trio.SocketStream) -> tuple[Link, Link, bytes]:
        raise NotImplementedError


class ClientProxy(_Listener):
    """In front of one server's client port: links (CLIENT, s) and (s, CLIENT)."""

    async def _identify(self, stream: trio.SocketStream) -> tuple[Link, Link, bytes]:
        return (CLIENT, self.server_id), (self.server_id, CLIENT), b""


class PeerProxy(_Listener):
    """In front of one server's peer port: the sender is named by the handshake."""

    async def _identify(self, stream: trio.SocketStream) -> tuple[Link, Link, bytes]:
        buf = b""
        with trio.fail_after(5):
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                if len(buf) >= 4 and struct.unpack(">I", buf[:4])[0] > _MAX_HANDSHAKE:
                    raise ValueError("handshake frame too large")
                chunk = await stream.receive_some(_CHUNK)
                if not chunk:
                    raise ValueError("closed before the handshake")
                buf += chunk
        size = struct.unpack(">I", buf[:4])[0]
        hello = cbor2.loads(buf[4:4 + size])
        sender = hello.get("from") if isinstance(hello, dict) else None
        if type(sender) is not int:
            raise ValueError("handshake without a sender id")
        return (sender, self.server_id), (self.server_id, sender), buf


class Proxies:
    """All proxies of one cluster, run as tasks of the caller's Trio run."""

    def __init__(self, net: Net):
        self.net = net
        self.listeners: list[_Listener] = []

    def add_peer(self, sid: int, listen_port: int, target_port: int) -> None:
        self.listeners.append(PeerProxy(self.net, listen_port, target_port, sid))

    def add_client(self, sid: int, listen_port: int, target_port: int) -> None:
        self.listeners.append(ClientProxy(self.net, listen_port, target_port, sid))

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for lst in self.listeners:
                await nursery.start(lst.run)
            task_status.started()
