"""Raft messages (and the service's own messages) between servers over TCP.

Every server keeps one outbound connection per peer and accepts one inbound
connection from each; a connection carries messages in one direction only,
so the two halves of a pair never wait on each other.  Raft tolerates lost,
duplicated and reordered messages, which is what keeps this simple: sending
never blocks (a full queue drops a Raft message), a broken connection loses
at most the batch being written, and reconnection just resumes from the
queue.  Service messages (``envelope``: forwarded writes, session
keepalives, members' questions for the dashboard) share the links but are never dropped for a full queue: the
service bounds how many it has outstanding.

Every connection starts with an authenticated handshake
(``coord.transport.handshake``): mutual TLS with certificates binding
server ids, and/or an HMAC challenge-response over a cluster secret, as
``PeerSecurity`` says.  Until it is done the acceptor reads nothing but
the few-KiB handshake, and after it only from a sender that proved who it
is and that ``admits`` (a member of the configuration, or anyone while
this server is still joining and knows no configuration).  A refused
handshake is logged (rate-limited) with its reason.  ``set_security``
swaps the credentials for new connections (SIGHUP); connections up keep
theirs.

Outbound, per peer: connect (jittered exponential backoff between
attempts), run the handshake, then repeatedly take everything queued and
write it as one ``send_all``.  A task also reads from the connection, only
to notice at once when the peer closes it (instead of on the next write,
whose data would be lost).

Inbound: handshake (within ``handshake_timeout``; at most
``max_handshakes`` at a time), then decode frames and hand each message to
``on_message``.  A malformed frame or message closes that connection only;
other peers are unaffected.  A message whose sender is not the
authenticated peer is dropped and counted.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import trio
from coordclient.wire import FramedStream, encode_frame

from coord.raft.types import Message
from coord.security.peerauth import PeerSecurity
from coord.security.ratelog import RateLimitedLog
from coord.transport.codec import message_from_wire, message_to_wire
from coord.transport.envelope import ServiceMessage, UnknownServiceMessage, service_from_wire, service_to_wire
from coord.transport.handshake import HandshakeRefused, accept, dial

__all__ = ["PEER_MAX_FRAME", "PeerStats", "PeerTransport"]

log = logging.getLogger("coord.transport")

PEER_MAX_FRAME = 32 << 20
Addr = tuple[str, int]

_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(slots=True)
class PeerStats:
    """Counters for one peer (monotonic; read them for metrics)."""

    sent: int = 0  # messages written to the peer's socket
    dropped: int = 0  # outbound messages lost: queue full, unencodable, or in a failed write
    received: int = 0  # inbound messages handed to on_message
    rejected: int = 0  # inbound messages whose sender differs from the handshake's
    connects: int = 0  # outbound connections established (handshake accepted)


class _Outbound:
    """One peer's queue and sender-task state."""

    __slots__ = ("peer_id", "addr", "queue", "wakeup", "task_scope", "conn_scope", "stats", "connected")

    def __init__(self, peer_id: int, addr: Addr, stats: PeerStats):
        self.peer_id = peer_id
        self.addr = addr
        self.queue: deque[Message | ServiceMessage] = deque()
        self.wakeup = trio.Event()
        self.task_scope: trio.CancelScope | None = None  # the sender's; cancelled when the peer is removed
        self.conn_scope = trio.CancelScope()  # cancelled to reconnect (address change)
        self.stats = stats
        self.connected = False


def _refused(exc: OSError) -> bool:
    """Whether a failed connect was refused (nothing listens: the process is
    gone), as opposed to timing out or being unroutable.  Trio reports
    per-address failures as the cause of one OSError."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    errors = getattr(exc.__cause__, "exceptions", None)
    return bool(errors) and all(isinstance(e, ConnectionRefusedError) for e in errors)


def _addr(a: Any) -> Addr:
    host, port = a
    return (str(host), int(port))


class PeerTransport:
    """Carries ``Message``s (and service messages) between the servers of one cluster.

    ``peers`` maps the other servers' ids to their (host, port); an entry
    for ``node_id`` itself is ignored, so a full membership map can be
    passed.  ``on_message`` is called synchronously from the receiving task
    for every valid message; it must not block, and an exception from it is
    a bug that propagates out of ``run()``.  ``send`` and ``update_peers``
    must be called from the Trio thread.
    """

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        listen: Addr,
        peers: Mapping[int, Addr],
        on_message: Callable[[Message | ServiceMessage], None],
        *,
        security: PeerSecurity,
        max_frame: int = PEER_MAX_FRAME,
        queue_limit: int = 4096,
        connect_timeout: float = 2.0,
        handshake_timeout: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        batch_bytes: int = 4 << 20,
        accept_unknown: bool = True,
        on_unreachable: Callable[[int], None] | None = None,
        max_handshakes: int = 64,
    ):
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen = listen
        self.on_message = on_message
        self.max_frame = max_frame
        self.queue_limit = queue_limit
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.batch_bytes = batch_bytes
        self.accept_unknown = accept_unknown
        self.security = security
        self.max_handshakes = max_handshakes  # inbound handshakes in progress; more are closed at once
        self.refused = 0  # inbound connections refused (bad handshake, authentication, not a member)
        self._handshaking = 0
        self._refusals = RateLimitedLog(log)
        self.on_unreachable = on_unreachable  # called with a peer id whose port refused us (process gone)
        self.port: int | None = None  # bound port, once run() has started
        self.peer_stats: dict[int, PeerStats] = {}
        self.dropped_unknown = 0  # messages to ids that are not peers
        self._out: dict[int, _Outbound] = {}
        self._unknown_tags_seen: set[str] = set()  # logged once each (bounded: 16-char tags from members only)
        self._inbound: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self.update_peers(peers)

    # ------------------------------------------------------------------ API

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and keep the outbound connections up until cancelled.

        Reports the bound port through ``task_status.started`` (so ``listen``
        may use port 0).  With an empty host every interface is used; with
        port 0 each listener may then get its own port and the first one is
        reported, so tests pass an explicit host.
        """
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        self.port = listeners[0].socket.getsockname()[1]
        log.info("node %d listening for peers on %s", self.node_id, [lst.socket.getsockname() for lst in listeners])
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(trio.serve_listeners, self._serve, listeners)
                for out in self._out.values():
                    nursery.start_soon(self._sender, out)
                task_status.started(self.port)
        finally:
            self._nursery = None

    def send(self, msg: Message | ServiceMessage) -> None:
        """Queue ``msg`` for ``msg.to``; never blocks.  Dropped (and counted)
        when ``msg.to`` is not a peer, or when that peer's queue is full and
        it is a Raft message."""
        out = self._out.get(msg.to)
        if out is None:
            self.dropped_unknown += 1
            return
        q = out.queue
        if len(q) >= self.queue_limit and type(msg) is Message:
            out.stats.dropped += 1
            return
        q.append(msg)
        out.wakeup.set()

    def update_peers(self, peers: Mapping[int, Any]) -> None:
        """Make ``peers`` the peer set: start senders for new ids, stop those
        of removed ids (their queues are discarded), reconnect where an
        address changed."""
        wanted = {int(pid): _addr(a) for pid, a in peers.items() if int(pid) != self.node_id}
        for pid in [pid for pid in self._out if pid not in wanted]:
            scope = self._out.pop(pid).task_scope
            if scope is not None:
                scope.cancel()
            if not self.accept_unknown and pid in self._inbound:
                self._inbound[pid].cancel()
            log.info("node %d: peer %d removed", self.node_id, pid)
        if not self.accept_unknown:
            for pid in [pid for pid in self._inbound if pid not in wanted]:
                self._inbound[pid].cancel()  # admitted while joining, not a member now
        for pid, addr in wanted.items():
            out = self._out.get(pid)
            if out is None:
                out = self._out[pid] = _Outbound(pid, addr, self._stats_for(pid))
                if self._nursery is not None:
                    self._nursery.start_soon(self._sender, out)
            elif out.addr != addr:
                log.info("node %d: peer %d moved from %s to %s", self.node_id, pid, out.addr, addr)
                out.addr = addr
                out.conn_scope.cancel()

    def set_security(self, security: PeerSecurity) -> None:
        """Use ``security`` for connections from now on (established ones keep theirs)."""
        self.security = security

    def admits(self, peer_id: int) -> bool:
        """Whether an authenticated ``peer_id`` may send to us."""
        return peer_id in self._out or self.accept_unknown

    @property
    def peers(self) -> dict[int, Addr]:
        return {pid: out.addr for pid, out in self._out.items()}

    def is_connected(self, peer_id: int) -> bool:
        """Whether the outbound link to ``peer_id`` is up now (a question
        sent while it is down would wait in the queue for nothing)."""
        out = self._out.get(peer_id)
        return bool(out and out.connected)

    def snapshot(self) -> dict[str, Any]:
        """All counters as plain data, for metrics and status pages."""
        peers = {}
        for pid, st in self.peer_stats.items():
            out = self._out.get(pid)
            peers[pid] = {
                **asdict(st),
                "queued": len(out.queue) if out else 0,
                "connected": bool(out and out.connected),
                "inbound": pid in self._inbound,
            }
        return {"peers": peers, "dropped_unknown": self.dropped_unknown, "refused": self.refused}

    # ------------------------------------------------------------- outbound

    def _stats_for(self, pid: int) -> PeerStats:
        st = self.peer_stats.get(pid)
        if st is None:
            st = self.peer_stats[pid] = PeerStats()
        return st

    async def _sender(self, out: _Outbound) -> None:
        if self._out.get(out.peer_id) is not out:
            return  # removed (or replaced) before this task got to run
        backoff = self.backoff_min
        quiet = False  # this streak of failures has been logged already
        with trio.CancelScope() as out.task_scope:
            while True:
                with trio.CancelScope() as out.conn_scope:
                    started = trio.current_time()
                    reason = await self._connection(out)
                    if trio.current_time() - started >= self.backoff_max:
                        # A connection that worked for a while: the next
                        # failure is news, and retrying fast is right.
                        backoff, quiet = self.backoff_min, False
                    log.log(
                        logging.DEBUG if quiet else logging.INFO,
                        "node %d -> peer %d at %s:%s: %s; retrying",
                        self.node_id,
                        out.peer_id,
                        *out.addr,
                        reason,
                    )
                    quiet = True
                    await trio.sleep(backoff * (0.5 + self._rng.random()))
                    backoff = min(backoff * 2, self.backoff_max)
                if out.conn_scope.cancelled_caught:  # the address changed: reconnect now
                    backoff, quiet = self.backoff_min, False

    async def _connection(self, out: _Outbound) -> str:
        """Run one outbound connection until it fails; return why it ended."""
        host, port = out.addr
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            return "connect timed out"
        except OSError as exc:
            if self.on_unreachable is not None and _refused(exc):
                self.on_unreachable(out.peer_id)
            return f"connect failed: {exc}"
        reason = "connection closed"
        async with stream:
            try:
                with trio.fail_after(self.handshake_timeout):
                    conn, framed = await dial(stream, security=self.security, cluster_id=self.cluster_id,
                                              node_id=self.node_id, to=out.peer_id,
                                              port=self.port or self.listen[1])
            except trio.TooSlowError:
                return "handshake timed out"
            except HandshakeRefused as exc:
                return f"handshake failed: {exc.reason}"
            out.connected = True
            out.stats.connects += 1
            log.debug("node %d -> peer %d at %s:%s: connected", self.node_id, out.peer_id, host, port)
            try:
                async with trio.open_nursery() as nursery:

                    async def watch_close() -> None:
                        # The peer never writes after the handshake: any
                        # read result means it is gone (or misbehaving).
                        nonlocal reason
                        try:
                            await framed.receive()
                            reason = "peer sent unexpected data"
                        except trio.EndOfChannel:
                            reason = "peer closed the connection"
                        except (ValueError, *_NET_ERRORS) as exc:
                            reason = f"read failed: {exc!r}"
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watch_close)
                    reason = await self._pump(out, conn)
                    nursery.cancel_scope.cancel()
            finally:
                out.connected = False
                if conn is not stream:  # a TLS connection owns the socket now
                    await trio.aclose_forcefully(conn)
        return reason

    async def _pump(self, out: _Outbound, stream: trio.abc.Stream) -> str:
        """Write queued messages in batches until a write fails."""
        q = out.queue
        stats = out.stats
        while True:
            while not q:
                out.wakeup = trio.Event()
                await out.wakeup.wait()
            chunks: list[bytes] = []
            size = 0
            while q and size < self.batch_bytes:
                msg = q.popleft()
                try:
                    wire = message_to_wire(msg) if type(msg) is Message else service_to_wire(msg)
                    frame = encode_frame(wire, self.max_frame)
                except Exception:  # a bad message from our own core: log it, keep the link
                    stats.dropped += 1
                    log.exception("node %d: dropping unencodable message to peer %d", self.node_id, out.peer_id)
                    continue
                chunks.append(frame)
                size += len(frame)
            if not chunks:
                continue
            try:
                await stream.send_all(b"".join(chunks))
            except _NET_ERRORS as exc:
                stats.dropped += len(chunks)
                return f"write failed: {exc!r}"
            stats.sent += len(chunks)

    # -------------------------------------------------------------- inbound

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            remote_host, remote_port = stream.socket.getpeername()[:2]
            remote = f"{remote_host}:{remote_port}"
        except OSError:
            remote_host, remote = None, "?"
        async with stream:
            if self._handshaking >= self.max_handshakes:
                self.refused += 1
                self._refusals.warning("busy", "node %d: refused connection from %s: %d handshakes already "
                                       "in progress", self.node_id, remote, self._handshaking)
                return
            self._handshaking += 1
            try:
                with trio.move_on_after(self.handshake_timeout) as timeout:
                    try:
                        acc = await accept(stream, security=self.security, cluster_id=self.cluster_id,
                                           node_id=self.node_id, admits=self.admits, max_frame=self.max_frame)
                    except HandshakeRefused as exc:
                        self.refused += 1
                        self._refusals.warning(exc.kind, "node %d: refused connection from %s: %s",
                                               self.node_id, remote, exc.reason)
                        return
            finally:
                self._handshaking -= 1
            if timeout.cancelled_caught:
                self.refused += 1
                self._refusals.warning("timeout", "node %d: refused connection from %s: no handshake within %ss",
                                       self.node_id, remote, self.handshake_timeout)
                return
            peer_id = acc.peer_id
            self._learn_return_path(peer_id, acc.hello, remote_host)
            old = self._inbound.get(peer_id)
            if old is not None:
                log.info("node %d: new connection from peer %d replaces the old one", self.node_id, peer_id)
                old.cancel()
            scope = self._inbound[peer_id] = trio.CancelScope()
            try:
                with scope:
                    await self._receive_loop(peer_id, acc.framed, remote)
            finally:
                if self._inbound.get(peer_id) is scope:
                    del self._inbound[peer_id]
                if acc.stream is not stream:  # a TLS connection owns the socket now
                    await trio.aclose_forcefully(acc.stream)

    def _learn_return_path(self, peer_id: int, hello: dict, host: str | None) -> None:
        """A server that joins a cluster is contacted by the leader before its
        log tells it where anybody is.  The handshake names the port the
        sender listens on, so the joiner can answer (at the address the
        connection came from).  Membership updates later replace this."""
        port = hello.get("port")
        if peer_id in self._out or host is None or type(port) is not int or not 0 < port < 65536:
            return
        log.info("node %d: learned return address of peer %d: %s:%d", self.node_id, peer_id, host, port)
        out = self._out[peer_id] = _Outbound(peer_id, (host, port), self._stats_for(peer_id))
        if self._nursery is not None:
            self._nursery.start_soon(self._sender, out)

    async def _receive_loop(self, peer_id: int, framed: FramedStream, remote: str) -> None:
        stats = self._stats_for(peer_id)
        deliver = self.on_message
        while True:
            try:
                obj = await framed.receive()
                msg = service_from_wire(obj) if type(obj) is list and obj and type(obj[0]) is str \
                    else message_from_wire(obj)
            except trio.EndOfChannel:
                log.debug("node %d: peer %d (%s) closed its connection", self.node_id, peer_id, remote)
                return
            except UnknownServiceMessage as exc:  # a newer member's message: skip it, keep the link
                stats.rejected += 1
                if exc.tag not in self._unknown_tags_seen and len(self._unknown_tags_seen) < 64:
                    self._unknown_tags_seen.add(exc.tag)
                    log.warning("node %d: peer %d sent a %s; skipped (a newer version?)", self.node_id, peer_id, exc)
                continue
            except ValueError as exc:  # FrameError is a ValueError too
                log.warning(
                    "node %d: closing connection from peer %d (%s): malformed input: %s",
                    self.node_id,
                    peer_id,
                    remote,
                    exc,
                )
                return
            except _NET_ERRORS as exc:
                log.info("node %d: connection from peer %d (%s) failed: %r", self.node_id, peer_id, remote, exc)
                return
            if msg.frm != peer_id:
                stats.rejected += 1
                continue
            stats.received += 1
            deliver(msg)
