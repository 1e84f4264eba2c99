"""Server-to-server transport: Raft messages over framed CBOR on TCP."""

from coord.transport.codec import message_from_wire, message_to_wire
from coord.transport.peer import PEER_MAX_FRAME, PeerStats, PeerTransport

__all__ = ["PEER_MAX_FRAME", "PeerStats", "PeerTransport", "message_from_wire", "message_to_wire"]
