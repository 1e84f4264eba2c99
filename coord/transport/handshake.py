"""The peer handshake: who is on the other end of a peer connection, proven.

A peer connection carries messages one way, dialer -> acceptor, but its
handshake goes both ways, because a challenge has to come from the side
that checks it::

    dialer                                       acceptor
    TCP connect
    [TLS handshake, both sides presenting certificates from the cluster CA;
     the dialer checks that the acceptor's certificate binds server `to`,
     the acceptor notes the server id the dialer's certificate binds]
    {"cluster", "from", "to", "port",
     "nonce": 32 random bytes}  -->
                                 claims checked: cluster id, addressee, a
                                 valid sender id, the one its certificate binds
                            <-- {"v": 1, "nonce": 32 fresh random bytes}
    {"proof": HMAC over the acceptor's nonce} -->
                                 proof checked; then: is the sender a member?
                                 (nothing else is read before all this)
                            <-- {"ok": true, "proof": HMAC over the dialer's nonce}
                                 or {"ok": false, "why": ...} and close
    the dialer checks the acceptor's proof; then messages flow, dialer -> acceptor

The dialer's claim comes first so that whoever relays the connection (the
fault-injection proxies of the tests) can tell who is dialing, and so that
wrong-cluster and misaddressed connections are turned away before any
cryptography.  Proofs are there when the servers have a cluster secret
(``coord.security.peerauth``: HMAC-SHA256 over the nonce, the two ids and
the cluster id, with a different label in each direction); a captured
handshake is useless on another connection, whose nonce differs.  The
certificate checks are there when they have ``[tls]``.  Membership is
checked only after authentication, so only a server that proved itself
learns that it is not a member.

Handshake frames are at most ``HANDSHAKE_MAX_FRAME`` bytes, so an
unauthenticated connection costs a few KiB at most; the caller bounds the
time (``PeerTransport.handshake_timeout``).  Every failure is a
``HandshakeRefused`` whose ``reason`` is for the log (it names no secret)
and whose ``kind`` groups reasons for rate-limited logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import trio
from coordclient.wire import FrameError, FramedStream

from coord.security.peerauth import (
    NONCE_BYTES,
    PeerSecurity,
    accept_proof,
    dial_proof,
    new_nonce,
    proof_ok,
)
from coord.security.tls import server_ids
from coord.security.tlsstream import TLSSocketStream
from coord.security.tlsstream import handshake as tls_handshake

__all__ = ["HANDSHAKE_MAX_FRAME", "Accepted", "HandshakeRefused", "accept", "dial"]

HANDSHAKE_MAX_FRAME = 4096
VERSION = 1
_U63 = 1 << 63
_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class HandshakeRefused(Exception):
    def __init__(self, reason: str, kind: str = "refused"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(slots=True)
class Accepted:
    peer_id: int
    hello: dict
    stream: trio.abc.Stream  # the TLS stream, or the socket stream
    framed: FramedStream  # read messages from this one (its limit is raised to the caller's)


def _bound(framed: FramedStream, max_frame: int) -> None:
    """Raise the frame limit once the peer is authenticated (the decoder
    keeps its own copy; nothing is buffered past the handshake)."""
    framed.max_frame = max_frame
    framed._decoder.max_frame = max_frame


async def _tls(stream: trio.SocketStream, ctx: Any, server_side: bool) -> TLSSocketStream:
    try:
        tls = await tls_handshake(stream, ctx, server_side=server_side)
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        why = getattr(cause, "reason", None) or getattr(cause, "strerror", None) or type(cause).__name__
        raise HandshakeRefused(f"TLS handshake failed: {why}", "tls") from None
    return tls


def _bound_id(tls: TLSSocketStream) -> int:
    ids = server_ids(tls.getpeercert())
    if len(ids) != 1:
        raise HandshakeRefused(
            "its certificate names no server id (a client certificate?)" if not ids
            else f"its certificate names several server ids {ids}", "certificate")
    return ids[0]


async def _receive(framed: FramedStream, what: str) -> Any:
    try:
        return await framed.receive()
    except trio.EndOfChannel:
        raise HandshakeRefused(f"connection closed before its {what}", "closed") from None
    except FrameError as exc:
        raise HandshakeRefused(f"bad {what}: {exc}", "malformed") from None
    except _NET_ERRORS as exc:
        raise HandshakeRefused(f"connection failed before its {what}: {exc!r}", "closed") from None


async def _send(framed: FramedStream, obj: Any, what: str) -> None:
    try:
        await framed.send(obj)
    except _NET_ERRORS as exc:
        raise HandshakeRefused(f"cannot send the {what}: {exc!r}", "closed") from None


def check_hello(hello: Any, cluster_id: str, node_id: int) -> int:
    """The sender id of a well-formed handshake addressed to us; else HandshakeRefused."""
    if type(hello) is not dict:
        raise HandshakeRefused("handshake is not a map", "malformed")
    cluster = hello.get("cluster")
    if type(cluster) is not str or cluster != cluster_id:
        shown = repr(cluster[:100]) if type(cluster) is str else type(cluster).__name__
        raise HandshakeRefused(f"cluster id {shown} is not ours ({cluster_id!r})", "cluster")
    to = hello.get("to")
    if type(to) is not int or to != node_id:
        raise HandshakeRefused(
            f"handshake is addressed to node {to if type(to) is int else '?'}, this is node {node_id}", "addressee")
    frm = hello.get("from")
    if type(frm) is not int or not 0 < frm < _U63 or frm == node_id:
        raise HandshakeRefused("handshake has an invalid sender id", "malformed")
    return frm


async def _refuse(framed: FramedStream, exc: HandshakeRefused) -> None:
    """Tell the dialer why, briefly (a courtesy for an honest misconfigured
    peer: the kind only, never waiting on it), then let ``exc`` propagate."""
    with trio.move_on_after(0.5):
        try:
            await framed.send({"ok": False, "why": exc.kind})
        except _NET_ERRORS:
            pass


async def accept(stream: trio.SocketStream, *, security: PeerSecurity, cluster_id: str, node_id: int,
                 admits: Callable[[int], bool], max_frame: int) -> Accepted:
    """Run the acceptor's side; the caller bounds the time.  ``admits(id)``
    says whether server ``id`` may send to us (a current member)."""
    conn: trio.abc.Stream = stream
    if security.tls:
        conn = await _tls(stream, security.server_ssl, server_side=True)
    try:
        return await _accept_on(conn, security=security, cluster_id=cluster_id, node_id=node_id, admits=admits,
                                max_frame=max_frame)
    except BaseException:
        await _close_tls(conn, stream)
        raise


async def _close_tls(conn: trio.abc.Stream, stream: trio.SocketStream) -> None:
    """A TLS connection owns its socket (the socket stream gave it up): close it."""
    if conn is not stream:
        await trio.aclose_forcefully(conn)


async def _accept_on(conn: trio.abc.Stream, *, security: PeerSecurity, cluster_id: str, node_id: int,
                     admits: Callable[[int], bool], max_frame: int) -> Accepted:
    cert_id = _bound_id(conn) if security.tls else None  # type: ignore[arg-type]
    framed = FramedStream(conn, HANDSHAKE_MAX_FRAME)
    hello = await _receive(framed, "handshake")
    try:
        frm = check_hello(hello, cluster_id, node_id)
        if cert_id is not None and frm != cert_id:
            raise HandshakeRefused(
                f"claims to be node {frm} but its certificate is server {cert_id}'s", "impersonation")
        nonce = new_nonce()
        await _send(framed, {"v": VERSION, "nonce": nonce}, "challenge")
        answer = await _receive(framed, "answer to the challenge")
        secret = security.secret
        if secret is not None and not proof_ok(dial_proof(secret, nonce, cluster_id, frm, node_id),
                                               answer.get("proof") if type(answer) is dict else None):
            raise HandshakeRefused(f"node {frm} failed the challenge (wrong or no cluster secret)", "secret")
        if not admits(frm):
            raise HandshakeRefused(f"node {frm} is not a member of the configuration", "member")
    except HandshakeRefused as exc:
        if exc.kind != "closed":
            await _refuse(framed, exc)
        raise
    ack: dict[str, Any] = {"ok": True}
    their_nonce = hello.get("nonce")
    if security.secret is not None and type(their_nonce) is bytes and len(their_nonce) == NONCE_BYTES:
        ack["proof"] = accept_proof(security.secret, their_nonce, cluster_id, frm, node_id)
    await _send(framed, ack, "acceptance")
    _bound(framed, max_frame)
    return Accepted(frm, hello, conn, framed)


_WHY = {
    "secret": "it does not accept our proof (do the servers share the same cluster secret?)",
    "member": "we are not a member of its configuration (yet)",
    "impersonation": "our certificate binds another server id than ours",
    "cluster": "our cluster id is not its own",
    "addressee": "it is not the server we meant to reach",
}


def _refusal(obj: Any) -> HandshakeRefused:
    why = obj.get("why") if type(obj) is dict else None
    return HandshakeRefused(f"refused: {_WHY.get(why, 'see its log') if type(why) is str else 'see its log'}",
                            "refused")


async def dial(stream: trio.SocketStream, *, security: PeerSecurity, cluster_id: str, node_id: int, to: int,
               port: int) -> tuple[trio.abc.Stream, FramedStream]:
    """Run the dialer's side; the caller bounds the time.  Returns the stream
    to write messages to and a framed reader on it (the acceptor never
    writes after the handshake: anything read there means it is gone)."""
    conn: trio.abc.Stream = stream
    if security.tls:
        conn = await _tls(stream, security.client_ssl, server_side=False)
    try:
        if security.tls:
            bound = _bound_id(conn)  # type: ignore[arg-type]
            if bound != to:
                raise HandshakeRefused(f"the server there presents server {bound}'s certificate, not {to}'s",
                                       "impersonation")
        return await _dial_on(conn, security=security, cluster_id=cluster_id, node_id=node_id, to=to, port=port)
    except BaseException:
        await _close_tls(conn, stream)
        raise


async def _dial_on(conn: trio.abc.Stream, *, security: PeerSecurity, cluster_id: str, node_id: int, to: int,
                   port: int) -> tuple[trio.abc.Stream, FramedStream]:
    framed = FramedStream(conn, HANDSHAKE_MAX_FRAME)
    nonce = new_nonce()
    await _send(framed, {"cluster": cluster_id, "from": node_id, "to": to, "port": port, "nonce": nonce},
                "handshake")
    challenge = await _receive(framed, "challenge")
    if type(challenge) is dict and "ok" in challenge:
        raise _refusal(challenge)
    their_nonce = challenge.get("nonce") if type(challenge) is dict else None
    if type(their_nonce) is not bytes or len(their_nonce) != NONCE_BYTES:
        raise HandshakeRefused("bad challenge (is that a coord peer port, of this version?)", "malformed")
    answer: dict[str, Any] = {}
    if security.secret is not None:
        answer["proof"] = dial_proof(security.secret, their_nonce, cluster_id, node_id, to)
    await _send(framed, answer, "answer to the challenge")
    ack = await _receive(framed, "acceptance")
    if type(ack) is not dict or ack.get("ok") is not True:
        raise _refusal(ack)
    if security.secret is not None and not proof_ok(
            accept_proof(security.secret, nonce, cluster_id, node_id, to), ack.get("proof")):
        raise HandshakeRefused("the server there does not know the cluster secret", "secret")
    return conn, framed
