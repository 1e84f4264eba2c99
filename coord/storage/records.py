"""On-disk record framing and the payloads of WAL records.

Pure functions, no I/O: the WAL, the hard-state and snapshot files and the
in-memory simulator all frame data the same way, so a byte string that
passes here means the same thing everywhere.

A record is::

    length (4 bytes, big-endian) | crc32(body) (4 bytes, big-endian) | body

where the body is CBOR.  The length lets a reader skip to the next record;
the CRC tells a torn or rotted record from a good one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import cbor2

from coord.raft.types import Entry, EntryKind
from coord.storage.errors import CorruptRecordError

__all__ = [
    "HEADER_SIZE",
    "TORN",
    "encode_record",
    "decode_records",
    "scan_records",
    "read_record",
    "entry_payload",
    "commit_payload",
    "parse_wal_payload",
    "SegmentHeader",
    "segment_header_payload",
    "parse_segment_header",
]

HEADER_SIZE = 8
TORN = "torn"
_HEADER = struct.Struct(">II")
_KINDS = {int(k): k for k in EntryKind}
_U63 = 1 << 63


def encode_record(payload: Any) -> bytes:
    """Frame ``payload`` (anything cbor2 can encode) as one record."""
    body = cbor2.dumps(payload)
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _parse(buf: bytes, off: int) -> tuple[Any, int, str | None]:
    """Parse the record at ``off``: (payload, end, problem).

    ``problem`` is None, "short" (the record runs past the buffer), "crc"
    (checksum mismatch, or an empty body, which encode_record never makes:
    an all-zero header has a matching CRC of b"") or "cbor" (good checksum,
    undecodable body).
    """
    n = len(buf)
    if n - off < HEADER_SIZE:
        return None, n, "short"
    length, crc = _HEADER.unpack_from(buf, off)
    end = off + HEADER_SIZE + length
    if end > n:
        return None, n, "short"
    body = buf[off + HEADER_SIZE : end]
    if length == 0 or zlib.crc32(body) != crc:
        return None, end, "crc"
    try:
        return cbor2.loads(body), end, None
    except Exception:  # cbor2 raises several unrelated types on garbage
        return None, end, "cbor"


_REASONS = {
    "short": "record extends past the end of the data",
    "crc": "CRC mismatch",
    "cbor": "CRC is good but the CBOR body does not decode",
}


def read_record(buf: bytes, offset: int = 0, source: str = "<buffer>") -> tuple[Any, int]:
    """Strictly read the one record at ``offset``: (payload, end offset).

    For files written atomically (hard state, snapshot headers), where any
    defect, truncation included, is corruption.
    """
    payload, end, problem = _parse(buf, offset)
    if problem:
        raise CorruptRecordError(source, offset, _REASONS[problem])
    return payload, end


def scan_records(buf: bytes, source: str = "<buffer>", start: int = 0) -> tuple[list[tuple[int, Any]], int, str | None]:
    """Read a sequence of records: ([(offset, payload)...], good end, status).

    ``status`` is None when the buffer ends after a good record, or when only
    zero bytes follow it (the unused part of a preallocated segment: a
    record is never empty, so an all-zero header marks the end).  It is TORN
    when the tail is an interrupted write: a record running past the end,
    or a bad CRC on a record followed by nothing or only zero bytes (a crash
    before all of a batch reached the disk).  Only the tail can be torn,
    because nothing is acknowledged before it is fsync'd; a bad record with
    data after it is corruption and raises CorruptRecordError rather than
    being cut away together with what follows.
    """
    items: list[tuple[int, Any]] = []
    off, n = start, len(buf)
    while off < n:
        payload, end, problem = _parse(buf, off)
        if problem is None:
            items.append((off, payload))
            off = end
            continue
        if buf.count(0, off) == n - off:
            return items, off, None  # zero padding: the end of the records
        if problem == "short" or (problem == "crc" and buf.count(0, end) == n - end):
            return items, off, TORN
        raise CorruptRecordError(source, off, _REASONS[problem] + f" ({n - end} bytes follow)")
    return items, off, None


def decode_records(buf: bytes) -> tuple[list[Any], int, str | None]:
    """(payloads, end offset of the last good record, None or TORN); see scan_records."""
    items, end, status = scan_records(buf)
    return [p for _, p in items], end, status


# --- WAL payloads -------------------------------------------------------------

def entry_payload(e: Entry) -> list:
    """A log entry as a WAL record payload."""
    return ["e", e.index, e.term, int(e.kind), e.data]


def commit_payload(commit: int) -> list:
    """A commit-index record: logged in the WAL because it then rides along
    in the batch's single fsync instead of costing a hard-state rewrite."""
    return ["c", commit]


def _uint(v: Any) -> bool:
    return type(v) is int and 0 <= v < _U63


def parse_wal_payload(p: Any) -> Entry | int:
    """An Entry for an entry record, an int for a commit record.

    Raises ValueError for anything else: a record with a good CRC but an
    unexpected shape is a bug or foreign data, never something to skip.
    """
    if type(p) is list and p:
        if p[0] == "e" and len(p) == 5:
            _, index, term, kind, data = p
            if _uint(index) and index >= 1 and _uint(term) and type(kind) is int and kind in _KINDS and type(data) is bytes:
                return Entry(term=term, index=index, kind=_KINDS[kind], data=data)
        elif p[0] == "c" and len(p) == 2 and _uint(p[1]):
            return p[1]
    raise ValueError(f"not a WAL payload: {_describe(p)}")


def _describe(p: Any) -> str:
    if type(p) is list:
        return f"list of {len(p)} starting with {p[:1]!r}"[:120]
    return type(p).__name__


# --- segment headers ------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class SegmentHeader:
    """The first record of every preallocated WAL segment.

    ``alloc`` is the size the file was given (and fsync'd at) when it was
    created, before any entry went into it.  The file never shrinks after
    that, so a segment shorter than ``alloc`` has lost data this server had
    written and acknowledged: a cut, never a crash.
    """

    first: int
    alloc: int


SEGMENT_FORMAT = 1


def segment_header_payload(first: int, alloc: int) -> list:
    return ["s", SEGMENT_FORMAT, first, alloc]


def parse_segment_header(p: Any) -> SegmentHeader:
    """Raises ValueError unless ``p`` is a segment header record."""
    if (type(p) is list and len(p) == 4 and p[0] == "s" and p[1] == SEGMENT_FORMAT
            and _uint(p[2]) and p[2] >= 1 and _uint(p[3])):
        return SegmentHeader(first=p[2], alloc=p[3])
    raise ValueError(f"not a segment header: {_describe(p)}")
