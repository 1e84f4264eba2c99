"""PeerTransport over real loopback sockets (port 0 everywhere)."""

import logging
import struct

import trio

from coord.raft.types import Entry, Message, MsgType
from coord.security.peerauth import PeerSecurity
from coord.transport.codec import message_to_wire
from coord.transport.peer import PeerTransport
from coordclient.wire import FramedStream, encode_frame

HOST = "127.0.0.1"
FAST = dict(backoff_min=0.01, backoff_max=0.1, connect_timeout=1.0, handshake_timeout=1.0)
OPEN = PeerSecurity(trusted_network=True)  # these tests are about the transport, not authentication


class Node:
    """A transport that records what it receives and can be stopped alone."""

    def __init__(self, node_id, cluster="test", port=0, **kw):
        self.got: list[Message] = []
        self.t = PeerTransport(node_id, cluster, (HOST, port), {}, self.got.append,
                               **{**FAST, "security": OPEN, **kw})
        self.scope = trio.CancelScope()
        self.addr = None

    async def start(self, nursery):
        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            with self.scope:
                await self.t.run(task_status=task_status)

        self.scope = trio.CancelScope()
        port = await nursery.start(runner)
        self.addr = (HOST, port)
        return self

    def stop(self):
        self.scope.cancel()

    def seqs(self, frm):
        return [m.commit for m in self.got if m.frm == frm]


def hb(frm, to, seq, **kw):
    return Message(MsgType.HEARTBEAT, frm, to, term=1, commit=seq, **kw)


async def wait_until(pred, timeout=5.0):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def free_port():
    """A port nothing listens on (bound then released: loopback, so it stays free)."""
    sock = trio.socket.socket()
    await sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


async def raw_peer(node, frm, cluster="test"):
    """A hand-made peer connection to ``node`` (no credentials: ``node`` is open),
    handshake done; write message frames to it."""
    stream = await trio.open_tcp_stream(*node.addr)
    framed = FramedStream(stream)
    await framed.send({"cluster": cluster, "from": frm, "to": node.t.node_id})
    challenge = await framed.receive()
    assert set(challenge) == {"v", "nonce"}
    await framed.send({})  # no proof: there is no secret
    assert (await framed.receive())["ok"] is True
    return stream


async def closed_by_remote(stream, timeout=5.0):
    """True once the other side closes ``stream`` (reading returns EOF)."""
    with trio.fail_after(timeout):
        try:
            while await stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass
    return True


async def test_three_transports_exchange_messages():
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            nodes = {i: await Node(i).start(n) for i in (1, 2, 3)}
            addrs = {i: node.addr for i, node in nodes.items()}
            for node in nodes.values():
                node.t.update_peers(addrs)  # includes itself: ignored
            entries = [Entry(1, 1 + i, 0, b"x" * 100) for i in range(50)]
            for seq in range(200):
                for i in nodes:
                    for j in nodes:
                        if i != j:
                            nodes[i].t.send(hb(i, j, seq))
            nodes[1].t.send(Message(MsgType.APPEND, 1, 2, term=1, index=0, entries=entries, commit=999))
            await wait_until(
                lambda: all(len(node.got) >= 400 for i, node in nodes.items() if i != 2) and len(nodes[2].got) >= 401
                # a receiver can have a batch before its sender has counted it as sent
                and nodes[1].t.peer_stats[2].sent == 201 and nodes[1].t.peer_stats[3].sent == 200
            )
            for i, node in nodes.items():
                for j in nodes:
                    if i != j:
                        assert node.seqs(j)[:200] == list(range(200))  # one connection: in order
            appends = [m for m in nodes[2].got if m.type == MsgType.APPEND]
            assert len(appends) == 1 and appends[0].entries == entries
            snap = nodes[1].t.snapshot()
            assert snap["peers"][2]["sent"] == 201 and snap["peers"][3]["sent"] == 200
            assert snap["peers"][2]["received"] == 200 and snap["peers"][2]["dropped"] == 0
            assert snap["peers"][2]["connected"] and snap["peers"][2]["inbound"]
            n.cancel_scope.cancel()


async def test_wrong_cluster_refused(caplog):
    caplog.set_level(logging.WARNING, logger="coord.transport")
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1, cluster="alpha").start(n)
            b = await Node(2, cluster="beta").start(n)
            b.t.update_peers({1: a.addr})
            b.t.send(hb(2, 1, 0))
            # Refused, reconnected, refused again: the refusal has happened at least once.
            await wait_until(lambda: a.t.refused >= 2)
            assert b.t.peer_stats[1].connects == 0  # a refused handshake is not a connection
            b.t.send(hb(2, 1, 1))
            await trio.sleep(0.2)
            assert a.got == []
            assert "cluster id 'beta' is not ours ('alpha')" in caplog.text
            n.cancel_scope.cancel()


async def test_unknown_node_refused_unless_accepted(caplog):
    caplog.set_level(logging.WARNING, logger="coord.transport")
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1, accept_unknown=False).start(n)
            b = await Node(2).start(n)
            b.t.update_peers({1: a.addr})
            b.t.send(hb(2, 1, 0))
            await wait_until(lambda: a.t.refused >= 2)
            assert a.got == []
            assert "node 2 is not a member of the configuration" in caplog.text
            # Once a knows b, b's next connection is accepted.
            a.t.update_peers({2: b.addr})
            await wait_until(lambda: a.t.snapshot()["peers"].get(2, {}).get("inbound"))
            b.t.send(hb(2, 1, 1))
            # Nothing is written before the handshake is accepted: the refused one's message was kept.
            await wait_until(lambda: a.seqs(2) == [0, 1])
            n.cancel_scope.cancel()


async def test_bad_handshakes_refused(caplog):
    caplog.set_level(logging.WARNING, logger="coord.transport")
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1, handshake_timeout=0.2).start(n)
            cases = [
                encode_frame({"cluster": "test", "from": 2, "to": 7}),  # not addressed to us
                encode_frame({"cluster": "test", "from": 1, "to": 1}),  # claims our own id
                encode_frame({"cluster": "test", "from": True, "to": 1}),
                encode_frame(["not", "a", "map"]),
                struct.pack(">I", 1 << 30),  # oversize frame
                b"",  # silence: handshake timeout
            ]
            for data in cases:
                stream = await trio.open_tcp_stream(*a.addr)
                await stream.send_all(data)
                assert await closed_by_remote(stream)
                await stream.aclose()
            assert caplog.text.count("refused connection") == len(cases)
            assert a.got == []
            n.cancel_scope.cancel()


async def test_malformed_frame_closes_only_that_connection(caplog):
    caplog.set_level(logging.WARNING, logger="coord.transport")
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1).start(n)
            b = await Node(2).start(n)
            b.t.update_peers({1: a.addr})
            b.t.send(hb(2, 1, 0))
            await wait_until(lambda: a.seqs(2) == [0])

            bad_frames = [
                struct.pack(">I", 2) + b"\xff\xff",  # not CBOR
                encode_frame([5, 9, 1, -1]),  # CBOR, but not a valid message
            ]
            for bad in bad_frames:
                raw = await raw_peer(a, 9)
                await raw.send_all(encode_frame(message_to_wire(hb(9, 1, 42))) + bad)
                assert await closed_by_remote(raw)
                await raw.aclose()
            assert caplog.text.count("malformed input") == len(bad_frames)
            assert a.seqs(9) == [42, 42]  # what came before the bad frame was delivered

            # A message claiming another sender is dropped; the connection stays.
            raw = await raw_peer(a, 9)
            await raw.send_all(encode_frame(message_to_wire(hb(3, 1, 7))) + encode_frame(message_to_wire(hb(9, 1, 8))))
            await wait_until(lambda: a.seqs(9) == [42, 42, 8])
            assert a.seqs(3) == [] and a.t.peer_stats[9].rejected == 1

            b.t.send(hb(2, 1, 1))
            await wait_until(lambda: a.seqs(2) == [0, 1])
            assert b.t.peer_stats[1].connects == 1  # the good peer was never disturbed
            await raw.aclose()
            n.cancel_scope.cancel()


async def test_duplicate_inbound_replaces_old():
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1).start(n)
            first = await raw_peer(a, 5)
            await first.send_all(encode_frame(message_to_wire(hb(5, 1, 1))))
            await wait_until(lambda: a.seqs(5) == [1])
            second = await raw_peer(a, 5)
            assert await closed_by_remote(first)
            await second.send_all(encode_frame(message_to_wire(hb(5, 1, 2))))
            await wait_until(lambda: a.seqs(5) == [1, 2])
            for s in (first, second):
                await s.aclose()
            n.cancel_scope.cancel()


async def test_peer_down_then_up_gets_messages_after_reconnect():
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1).start(n)
            b = await Node(2).start(n)
            a.t.update_peers({2: b.addr})
            a.t.send(hb(1, 2, 0))
            await wait_until(lambda: b.seqs(1) == [0])

            b.stop()  # b goes down; a notices the closed connection
            await wait_until(lambda: not a.t.snapshot()["peers"][2]["connected"])
            for seq in range(1, 6):
                a.t.send(hb(1, 2, seq))
            await trio.sleep(0.3)  # several failed connection attempts

            b2 = await Node(2, port=b.addr[1]).start(n)  # back up, same address
            await wait_until(lambda: b2.seqs(1) == [1, 2, 3, 4, 5])
            assert a.t.peer_stats[2].connects == 2
            n.cancel_scope.cancel()


async def test_queue_bound_drops_excess_while_peer_is_down():
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            port = await free_port()
            a = await Node(1, queue_limit=10).start(n)
            a.t.update_peers({2: (HOST, port)})
            for seq in range(25):
                a.t.send(hb(1, 2, seq))
            a.t.send(hb(1, 99, 0))  # not a peer
            await trio.sleep(0.2)
            snap = a.t.snapshot()
            assert snap["peers"][2]["dropped"] == 15 and snap["peers"][2]["queued"] == 10
            assert snap["dropped_unknown"] == 1

            b = await Node(2, port=port).start(n)
            await wait_until(lambda: len(b.got) == 10)
            assert b.seqs(1) == list(range(10))  # the oldest were kept
            await wait_until(lambda: a.t.peer_stats[2].sent == 10)
            n.cancel_scope.cancel()


async def test_update_peers_at_run_time():
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1).start(n)
            b = await Node(2).start(n)
            a.t.update_peers({2: b.addr})
            a.t.send(hb(1, 2, 0))
            await wait_until(lambda: b.seqs(1) == [0])

            c = await Node(3).start(n)  # joins later
            a.t.update_peers({2: b.addr, 3: c.addr})
            a.t.send(hb(1, 3, 1))
            await wait_until(lambda: c.seqs(1) == [1])

            # b moves to a new address: a reconnects there.
            b2 = await Node(2).start(n)
            a.t.update_peers({2: b2.addr, 3: c.addr})
            a.t.send(hb(1, 2, 2))
            await wait_until(lambda: b2.seqs(1) == [2])
            assert b.seqs(1) == [0]

            # c is removed: messages to it are dropped as unknown.
            a.t.update_peers({2: b2.addr})
            a.t.send(hb(1, 3, 3))
            assert a.t.dropped_unknown == 1 and set(a.t.peers) == {2}
            await trio.sleep(0.1)
            assert c.seqs(1) == [1]
            n.cancel_scope.cancel()


async def test_joining_node_answers_a_peer_it_did_not_know():
    """A joining server knows no peers; the leader's handshake carries the port
    it listens on, so the joiner can reply before its log names anyone."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            leader = await Node(1).start(nursery)
            joiner = await Node(4).start(nursery)
            leader.t.update_peers({4: joiner.addr})
            leader.t.send(hb(1, 4, 7))
            await wait_until(lambda: joiner.seqs(1) == [7])
            assert 1 in joiner.t.peers and joiner.t.peers[1][1] == leader.addr[1]
            joiner.t.send(hb(4, 1, 8))
            await wait_until(lambda: leader.seqs(4) == [8])
            nursery.cancel_scope.cancel()


async def test_unknown_service_message_is_skipped_and_the_link_kept(caplog):
    """A rolling upgrade: a newer member sends a kind of service message this
    version does not know.  It is skipped (logged once), not treated as
    malformed input, so the link and what follows it survive."""
    caplog.set_level(logging.WARNING, logger="coord.transport")
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            a = await Node(1).start(n)
            raw = await raw_peer(a, 9)
            newer = encode_frame(["zz", 9, 1, {"future": 1}])
            await raw.send_all(newer + newer + encode_frame(message_to_wire(hb(9, 1, 5))))
            await wait_until(lambda: a.seqs(9) == [5])
            assert caplog.text.count("unknown kind 'zz'") == 1 and "malformed" not in caplog.text
            assert a.t.peer_stats[9].rejected == 2
            # a known kind with the wrong shape is still malformed: the link closes
            await raw.send_all(encode_frame(["sa", 9, 1]))
            assert await closed_by_remote(raw)
            await raw.aclose()
            n.cancel_scope.cancel()
