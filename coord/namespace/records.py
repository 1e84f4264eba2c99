"""One node as one ``bytes`` object: its record.

Why bytes: a node was a 12-slot list (168 bytes with its GC header) plus
two or three int objects of 32 bytes (zxids and times above 256 are objects
of their own), ~900 bytes a node in all with the path index and the child
sets.  A record packs the nine integers and, when small, the data into one
immutable object that the garbage collector does not track: 76 bytes of
fields, plus the data, plus bytes' 33 bytes of object header (a node with 10
bytes of data: 120 bytes).  Being immutable, a record is changed by building
a new one (a few hundred ns), which also makes undo a matter of putting the
old object back.

Layout (little-endian)::

    czxid mzxid pzxid ctime mtime version cversion owner aversion   9 x int64
    word                                                            uint32: ACL number << 1 | EXTERNAL
    data                                                            when EXTERNAL is clear

Data longer than ``INLINE_MAX`` is kept outside (``Tree.blobs``, by path) so
that bumping a parent's counters or reading a large node never copies its
data; ``EXTERNAL`` says so.  Records are also the snapshot's node format
("coord-namespace/3"), so this layout is versioned with it.
"""

from __future__ import annotations

import struct

from coordclient.protocol import MAX_TTL_MS

__all__ = [
    "AVERSION", "CTIME", "CVERSION", "CZXID", "EXTERNAL", "HDR", "INLINE_MAX", "MTIME", "MZXID", "OWNER", "PZXID",
    "VERSION", "WORD", "CONTAINER", "MAX_TTL_MS", "acl_number", "fields", "make", "owner", "owner_for", "pack",
    "repack", "ttl_of",
]

_REC = struct.Struct("<9qI")
HDR = _REC.size  # 76
CZXID, MZXID, PZXID, CTIME, MTIME, VERSION, CVERSION, OWNER, AVERSION, WORD = range(10)
EXTERNAL = 1
INLINE_MAX = 1024  # bytes of data kept inside the record; a parent's counter change copies at most this

_OWNER = struct.Struct("<q")
_OWNER_AT = 8 * OWNER
_WORD = struct.Struct("<I")
_WORD_AT = 8 * WORD

fields = _REC.unpack_from  # record -> (czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, aversion, word)
pack = _REC.pack  # the 76 bytes of fields alone, from the ten values

# One Struct per inline data length (at most INLINE_MAX + 1 of them), so that
# a record is built in one allocation: fields + data concatenated would
# allocate the fields first, a short-lived object between long-lived ones.
_WITH_DATA: dict[int, struct.Struct] = {0: _REC}


def _with_data(n: int) -> struct.Struct:
    s = _WITH_DATA.get(n)
    if s is None:
        s = _WITH_DATA[n] = struct.Struct(f"<9qI{n}s")
    return s


def make(data: bytes, czxid: int, mzxid: int, pzxid: int, ctime: int, mtime: int, version: int, cversion: int,
         owner: int, aversion: int, acl: int) -> tuple[bytes, bytes | None]:
    """(record, external data or None) of a node holding ``data``."""
    n = len(data)
    if not n:
        return pack(czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, aversion, acl << 1), None
    if n <= INLINE_MAX:
        return _with_data(n).pack(czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, aversion, acl << 1,
                                  data), None
    return pack(czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, aversion, acl << 1 | EXTERNAL), data


def repack(rec: bytes, czxid: int, mzxid: int, pzxid: int, ctime: int, mtime: int, version: int, cversion: int,
           owner: int, aversion: int, word: int) -> bytes:
    """``rec`` with new fields and the same inline data."""
    n = len(rec) - HDR
    if not n:
        return pack(czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, aversion, word)
    return _with_data(n).pack(czxid, mzxid, pzxid, ctime, mtime, version, cversion, owner, aversion, word, rec[HDR:])


def owner(rec: bytes) -> int:
    """The owner field, ZooKeeper's ``ephemeralOwner``: the session of an
    ephemeral node (> 0), 0 for a plain persistent node, and for the nodes
    that are reaped when empty (< 0): ``CONTAINER``, or a TTL node's
    ``owner_for(ttl_ms=...)``."""
    return _OWNER.unpack_from(rec, _OWNER_AT)[0]


# Containers and TTL nodes are told apart by the owner field, with the values
# ZooKeeper puts in ephemeralOwner (its EphemeralType): a container is
# 0x8000000000000000, a TTL node 0xFF00000000000000 | ttl (ms, 40 bits).  As
# signed int64 both are negative, and sessions (coord's are zxids) positive,
# so "ephemeral" stays ``owner > 0`` and a ZooKeeper client reads the same
# ephemeralOwner it would from ZooKeeper.
CONTAINER = -(1 << 63)
_TTL_BASE = -(1 << 56)


def owner_for(*, session: int = 0, container: bool = False, ttl_ms: int = 0) -> int:
    """The owner field of a new node (at most one of the three is set)."""
    if session:
        return session
    if container:
        return CONTAINER
    if ttl_ms:
        return _TTL_BASE + ttl_ms
    return 0


def ttl_of(owner_field: int) -> int:
    """A TTL node's time to live in ms; 0 for any other node."""
    ttl = owner_field - _TTL_BASE
    return ttl if 0 < ttl <= MAX_TTL_MS else 0


def acl_number(rec: bytes) -> int:
    return _WORD.unpack_from(rec, _WORD_AT)[0] >> 1
