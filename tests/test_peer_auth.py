"""Peer authentication on real loopback sockets: the cluster secret's
challenge-response, mutual TLS binding server ids, the membership gate,
and credential rotation (``PeerTransport.set_security``)."""

import logging

import pytest
import trio
from coordclient.wire import FramedStream, encode_frame

from coord.raft.types import Message, MsgType
from coord.security.peerauth import PeerSecurity, dial_proof
from coord.security.tls import peer_client_context, peer_server_context
from coord.server.config import TLSConfig
from coord.transport.codec import message_to_wire
from coord.transport.handshake import HandshakeRefused, dial
from coord.transport.peer import PeerTransport
from tests.tlsutil import TLSMaterial

HOST = "127.0.0.1"
FAST = dict(backoff_min=0.01, backoff_max=0.1, connect_timeout=1.0, handshake_timeout=1.0)
SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32


class Node:
    def __init__(self, node_id, security, **kw):
        self.got: list = []
        self.t = PeerTransport(node_id, "test", (HOST, 0), {}, self.got.append, security=security, **{**FAST, **kw})
        self.addr = None

    async def start(self, nursery):
        port = await nursery.start(self.t.run)
        self.addr = (HOST, port)
        return self

    def seqs(self, frm):
        return [m.commit for m in self.got if m.frm == frm]


def hb(frm, to, seq, term=1):
    return Message(MsgType.HEARTBEAT, frm, to, term=term, commit=seq)


async def wait_until(pred, timeout=5.0):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


def secret(s=SECRET):
    return PeerSecurity(secret=s)


def tls_security(material: TLSMaterial, sid: int, secret_bytes=None) -> PeerSecurity:
    table = material.tls_table(sid)
    cfg = TLSConfig(table["cert"], table["key"], table["ca"])
    return PeerSecurity(secret=secret_bytes, server_ssl=peer_server_context(cfg), client_ssl=peer_client_context(cfg))


async def assert_refused_while_silent(a: Node, expect_in_log: str, caplog, at_least=2):
    await wait_until(lambda: a.t.refused >= at_least)
    assert a.got == []
    assert expect_in_log in caplog.text


# --- the cluster secret -----------------------------------------------------------

async def test_secret_peers_exchange_messages(nursery):
    a = await Node(1, secret()).start(nursery)
    b = await Node(2, secret()).start(nursery)
    a.t.update_peers({2: b.addr})
    b.t.update_peers({1: a.addr})
    for i in range(5):
        a.t.send(hb(1, 2, i))
        b.t.send(hb(2, 1, i))
    await wait_until(lambda: a.seqs(2) == list(range(5)) and b.seqs(1) == list(range(5)))
    assert a.t.refused == 0 and b.t.refused == 0
    assert a.t.peer_stats[2].connects == 1


async def test_wrong_secret_refused_both_ways(nursery, caplog):
    caplog.set_level(logging.INFO, logger="coord.transport")
    a = await Node(1, secret()).start(nursery)
    b = await Node(2, secret(OTHER_SECRET)).start(nursery)
    b.t.update_peers({1: a.addr})
    b.t.send(hb(2, 1, 0))
    await assert_refused_while_silent(a, "node 2 failed the challenge (wrong or no cluster secret)", caplog)
    assert b.t.peer_stats[1].connects == 0
    assert "does not accept our proof" in caplog.text  # the dialer's side of the story
    assert SECRET.decode() not in caplog.text and OTHER_SECRET.decode() not in caplog.text


async def test_no_credential_refused_before_any_message_is_read(nursery, caplog):
    """What an attacker without the secret can do: claim to be a member, skip
    the challenge and send Raft messages at once.  Nothing is delivered."""
    caplog.set_level(logging.WARNING, logger="coord.transport")
    a = await Node(1, secret()).start(nursery)
    a.t.update_peers({2: (HOST, 1)})
    for answer in (None, {"proof": b"\0" * 32}, {"proof": "not bytes"}):
        stream = await trio.open_tcp_stream(*a.addr)
        frames = encode_frame({"cluster": "test", "from": 2, "to": 1, "port": 1})
        if answer is not None:
            frames += encode_frame(answer)
        frames += encode_frame(message_to_wire(hb(2, 1, 99, term=50)))
        await stream.send_all(frames)
        with trio.fail_after(5):  # refused and closed (a refusal frame may come first)
            framed = FramedStream(stream)
            seen = []
            try:
                while True:
                    seen.append(await framed.receive())
            except (trio.EndOfChannel, trio.BrokenResourceError):
                pass
        assert seen[0].keys() == {"v", "nonce"} and seen[-1] == {"ok": False, "why": "secret"}
        await stream.aclose()
    assert a.got == [] and a.t.refused == 3
    assert caplog.text.count("failed the challenge") == 3


async def test_replayed_handshake_refused(nursery, caplog):
    """Record a genuine connection's bytes through a relay, then replay them
    on a new connection: the acceptor's fresh nonce makes the old proof void."""
    caplog.set_level(logging.WARNING, logger="coord.transport")
    a = await Node(1, secret()).start(nursery)
    recorded = bytearray()

    async def relay(down):
        async with down:
            up = await trio.open_tcp_stream(*a.addr)
            async with up, trio.open_nursery() as n:
                async def pipe(src, dst, record):
                    try:
                        while data := await src.receive_some(65536):
                            if record:
                                recorded.extend(data)
                            await dst.send_all(data)
                    except trio.BrokenResourceError:
                        pass
                    n.cancel_scope.cancel()
                n.start_soon(pipe, down, up, True)
                n.start_soon(pipe, up, down, False)

    listeners = await nursery.start(trio.serve_tcp, relay, 0)
    relay_port = listeners[0].socket.getsockname()[1]
    b = await Node(2, secret()).start(nursery)
    a.t.update_peers({2: b.addr})
    b.t.update_peers({1: (HOST, relay_port)})
    b.t.send(hb(2, 1, 1))
    await wait_until(lambda: a.seqs(2) == [1])
    assert a.t.refused == 0

    replay = await trio.open_tcp_stream(*a.addr)
    await replay.send_all(bytes(recorded))  # hello, the old proof, the heartbeat
    await wait_until(lambda: a.t.refused == 1)
    await trio.sleep(0.2)
    assert a.seqs(2) == [1]  # the replayed heartbeat was not delivered
    assert "node 2 failed the challenge" in caplog.text
    await replay.aclose()


async def test_non_member_refused_even_with_the_secret(nursery, caplog):
    caplog.set_level(logging.INFO, logger="coord.transport")
    a = await Node(1, secret(), accept_unknown=False).start(nursery)
    member = await Node(2, secret()).start(nursery)
    outsider = await Node(9, secret()).start(nursery)
    a.t.update_peers({2: member.addr})
    member.t.update_peers({1: a.addr})
    outsider.t.update_peers({1: a.addr})
    outsider.t.send(hb(9, 1, 0))
    member.t.send(hb(2, 1, 0))
    await wait_until(lambda: a.seqs(2) == [0] and a.t.refused >= 2)
    assert a.seqs(9) == []
    assert "node 9 is not a member of the configuration" in caplog.text
    assert "we are not a member of its configuration" in caplog.text  # the outsider is told why

    # Removed from the configuration: its connection is closed and it is refused from then on.
    a.t.update_peers({})
    await wait_until(lambda: not a.t.snapshot()["peers"][2]["inbound"])
    refused = a.t.refused
    member.t.send(hb(2, 1, 1))
    await wait_until(lambda: a.t.refused > refused)
    assert a.seqs(2) == [0]


async def test_joining_server_admits_any_authenticated_peer(nursery):
    joiner = await Node(4, secret(), accept_unknown=True).start(nursery)
    leader = await Node(1, secret()).start(nursery)
    intruder = await Node(1, secret(OTHER_SECRET)).start(nursery)
    leader.t.update_peers({4: joiner.addr})
    intruder.t.update_peers({4: joiner.addr})
    leader.t.send(hb(1, 4, 7))
    intruder.t.send(hb(1, 4, 666))
    await wait_until(lambda: joiner.seqs(1) == [7] and joiner.t.refused >= 1)
    assert 666 not in joiner.seqs(1)


async def test_handshake_frames_are_small_before_authentication(nursery):
    a = await Node(1, secret()).start(nursery)
    stream = await trio.open_tcp_stream(*a.addr)
    await stream.send_all((1 << 20).to_bytes(4, "big") + b"x" * 1000)  # announces a 1 MiB handshake
    with trio.fail_after(5):
        while await stream.receive_some(1000):
            pass
    assert a.t.refused == 1 and a.got == []


async def test_pending_handshakes_are_bounded(nursery):
    a = await Node(1, secret(), max_handshakes=3, handshake_timeout=5.0).start(nursery)
    stalled = [await trio.open_tcp_stream(*a.addr) for _ in range(3)]
    await wait_until(lambda: a.t._handshaking == 3)
    extra = await trio.open_tcp_stream(*a.addr)
    with trio.fail_after(2):  # closed at once, not after the handshake timeout
        assert await extra.receive_some(10) == b""
    assert a.t.refused == 1
    for s in stalled + [extra]:
        await s.aclose()


async def test_new_secret_applies_to_new_connections(nursery):
    a = await Node(1, secret()).start(nursery)
    b = await Node(2, secret()).start(nursery)
    b.t.update_peers({1: a.addr})
    b.t.send(hb(2, 1, 0))
    await wait_until(lambda: a.seqs(2) == [0])
    a.t.set_security(secret(OTHER_SECRET))  # as SIGHUP does
    b.t.send(hb(2, 1, 1))  # the established connection keeps going
    await wait_until(lambda: a.seqs(2) == [0, 1])
    # a's connection to b (made when b first dialed in) is an old one: replace it.
    a.t.update_peers({})
    a.t.update_peers({2: b.addr})  # a new connection from a uses the new secret: b (old secret) refuses it
    a.t.send(hb(1, 2, 0))
    await wait_until(lambda: b.t.refused >= 1)
    assert b.got == []
    b.t.set_security(secret(OTHER_SECRET))  # b rotated too: a's next attempt gets through
    await wait_until(lambda: b.seqs(1) == [0])


# --- mutual TLS ------------------------------------------------------------------------

@pytest.fixture
def material(tmp_path):
    return TLSMaterial(tmp_path / "ca")


async def test_mtls_peers_exchange_messages(nursery, material):
    a = await Node(1, tls_security(material, 1)).start(nursery)
    b = await Node(2, tls_security(material, 2)).start(nursery)
    a.t.update_peers({2: b.addr})
    b.t.update_peers({1: a.addr})
    a.t.send(hb(1, 2, 5))
    b.t.send(hb(2, 1, 6))
    await wait_until(lambda: a.seqs(2) == [6] and b.seqs(1) == [5])
    assert a.t.refused == 0 and b.t.refused == 0


async def test_mtls_and_secret_together(nursery, material):
    a = await Node(1, tls_security(material, 1, SECRET)).start(nursery)
    good = await Node(2, tls_security(material, 2, SECRET)).start(nursery)
    a.t.update_peers({2: good.addr})
    good.t.update_peers({1: a.addr})
    good.t.send(hb(2, 1, 1))
    await wait_until(lambda: a.seqs(2) == [1])
    # A valid certificate is not enough when a secret is configured too.
    no_secret = await Node(2, tls_security(material, 2)).start(nursery)
    no_secret.t.update_peers({1: a.addr})
    no_secret.t.send(hb(2, 1, 99))
    await wait_until(lambda: a.t.refused >= 1)
    assert 99 not in a.seqs(2)


async def test_peer_with_certificate_from_another_ca_refused(nursery, material, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="coord.transport")
    a = await Node(1, tls_security(material, 1)).start(nursery)
    rogue = await Node(2, tls_security(TLSMaterial(tmp_path / "rogue"), 2)).start(nursery)
    a.t.update_peers({2: (HOST, 1)})
    rogue.t.update_peers({1: a.addr})
    rogue.t.send(hb(2, 1, 0))
    await assert_refused_while_silent(a, "TLS handshake failed", caplog)
    assert rogue.t.peer_stats[1].connects == 0


async def test_peer_claiming_another_servers_id_refused(nursery, material, caplog):
    """Server 3's genuine certificate does not let it speak as server 2 (say, the leader)."""
    caplog.set_level(logging.WARNING, logger="coord.transport")
    a = await Node(1, tls_security(material, 1)).start(nursery)
    liar = await Node(2, tls_security(material, 3)).start(nursery)  # node id 2, server 3's certificate
    a.t.update_peers({2: (HOST, 1), 3: (HOST, 1)})
    liar.t.update_peers({1: a.addr})
    liar.t.send(hb(2, 1, 0))
    await assert_refused_while_silent(a, "claims to be node 2 but its certificate is server 3's", caplog)


async def test_client_certificate_cannot_act_as_a_peer(nursery, material, caplog):
    caplog.set_level(logging.WARNING, logger="coord.transport")
    a = await Node(1, tls_security(material, 1)).start(nursery)
    cert, key = material.client("alice")  # same CA, but no server id in it
    cfg = TLSConfig(cert, key, material.ca_path)
    alice = PeerSecurity(server_ssl=peer_server_context(cfg), client_ssl=peer_client_context(cfg))
    raw = await trio.open_tcp_stream(*a.addr)
    with pytest.raises(HandshakeRefused), trio.fail_after(5):
        await dial(raw, security=alice, cluster_id="test", node_id=2, to=1, port=1)
    await wait_until(lambda: a.t.refused == 1)
    assert "names no server id" in caplog.text and a.got == []


async def test_dialer_checks_the_id_of_the_server_it_reaches(nursery, material):
    """A server answering at peer 1's address with server 3's certificate is not peer 1."""
    impostor = await Node(3, tls_security(material, 3)).start(nursery)
    b = await Node(2, tls_security(material, 2)).start(nursery)
    b.t.update_peers({1: impostor.addr})
    raw = await trio.open_tcp_stream(*impostor.addr)
    with pytest.raises(HandshakeRefused, match="presents server 3's certificate, not 1's"), trio.fail_after(5):
        await dial(raw, security=b.t.security, cluster_id="test", node_id=2, to=1, port=1)
    b.t.send(hb(2, 1, 0))
    await trio.sleep(0.3)
    assert impostor.got == [] and b.t.peer_stats[1].connects == 0 and len(b.t._out[1].queue) == 1


def test_proofs_bind_every_field():
    base = dial_proof(SECRET, b"n" * 32, "c", 1, 2)
    assert len(base) == 32
    assert base != dial_proof(OTHER_SECRET, b"n" * 32, "c", 1, 2)
    assert base != dial_proof(SECRET, b"m" * 32, "c", 1, 2)
    assert base != dial_proof(SECRET, b"n" * 32, "d", 1, 2)
    assert base != dial_proof(SECRET, b"n" * 32, "c", 2, 1)
    from coord.security.peerauth import accept_proof
    assert base != accept_proof(SECRET, b"n" * 32, "c", 1, 2)  # the directions cannot stand in for each other
    assert "secret" not in repr(PeerSecurity(secret=SECRET)).replace("trusted_network", "")
    with pytest.raises(ValueError):
        PeerSecurity()  # no credential and no explicit trust: refused


def test_refusal_logging_is_rate_limited(caplog):
    from coord.security.ratelog import RateLimitedLog

    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("coord.test.ratelog"), burst=2, period=10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="coord.test.ratelog")
    logged = [rl.warning("secret", "refused %d", i) for i in range(5)]
    assert logged == [True, True, False, False, False]
    assert rl.warning("member", "other kind") is True  # each kind has its own budget
    now[0] = 10.0
    assert rl.warning("secret", "refused %d", 5) is True
    assert caplog.messages == ["refused 0", "refused 1", "other kind", "refused 5 (3 similar lines suppressed)"]
    assert rl.suppressed_total == 3
