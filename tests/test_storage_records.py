"""Record framing: torn tails are reported, corruption in the middle raises."""

import struct
import zlib

import cbor2
import pytest

from coord.raft.types import Entry, EntryKind
from coord.storage.errors import CorruptRecordError
from coord.storage.records import (
    TORN,
    commit_payload,
    decode_records,
    encode_record,
    entry_payload,
    parse_wal_payload,
    read_record,
    scan_records,
)

PAYLOADS = [["e", 1, 1, 0, b"hello"], ["c", 1], {"k": [1, 2, 3]}, b"\x00" * 40]


def test_round_trip_and_layout():
    rec = encode_record(["c", 7])
    body = cbor2.dumps(["c", 7])
    assert rec == struct.pack(">II", len(body), zlib.crc32(body)) + body
    buf = b"".join(encode_record(p) for p in PAYLOADS)
    assert decode_records(buf) == (PAYLOADS, len(buf), None)
    assert decode_records(b"") == ([], 0, None)


def test_every_prefix_is_clean_or_torn_at_a_record_boundary():
    recs = [encode_record(p) for p in PAYLOADS]
    bounds = [0]
    for r in recs:
        bounds.append(bounds[-1] + len(r))
    buf = b"".join(recs)
    for cut in range(len(buf) + 1):
        payloads, end, status = decode_records(buf[:cut])
        k = max(i for i, b in enumerate(bounds) if b <= cut)
        assert (payloads, end) == (PAYLOADS[:k], bounds[k])
        # A prefix that is all zeros (the high bytes of a length) reads as padding.
        clean = buf[bounds[k]:cut].count(0) == cut - bounds[k]
        assert status == (None if clean else TORN)


def test_zero_fill_after_good_records_is_a_clean_end():
    """The unused part of a preallocated segment."""
    good = encode_record(["c", 1])
    assert decode_records(good + b"\x00" * 100) == ([["c", 1]], len(good), None)
    assert decode_records(good + b"\x00" * 3) == ([["c", 1]], len(good), None)


def test_bad_crc_on_last_record_is_torn():
    a, b = encode_record(["c", 1]), bytearray(encode_record(["c", 2]))
    b[-1] ^= 0xFF
    assert decode_records(a + bytes(b)) == ([["c", 1]], len(a), TORN)


def test_bad_crc_followed_only_by_zero_fill_is_torn():
    a, b = encode_record(["c", 1]), bytearray(encode_record(["c", 2]))
    b[9] ^= 0xFF
    assert decode_records(a + bytes(b) + b"\x00" * 512) == ([["c", 1]], len(a), TORN)


def test_bad_crc_in_the_middle_raises_with_offset():
    a, b, c = (encode_record(["c", i]) for i in range(3))
    bad = bytearray(a + b + c)
    bad[len(a) + 9] ^= 0x01  # inside b's body
    with pytest.raises(CorruptRecordError) as ei:
        decode_records(bytes(bad))
    assert ei.value.offset == len(a)
    assert f"offset {len(a)}" in str(ei.value)


def test_undecodable_body_with_good_crc_raises_even_at_the_end():
    body = b"\xff\xff"
    junk = struct.pack(">II", len(body), zlib.crc32(body)) + body
    with pytest.raises(CorruptRecordError):
        decode_records(junk)
    with pytest.raises(CorruptRecordError):
        decode_records(junk + encode_record(1))


def test_zero_header_followed_by_data_is_corruption():
    with pytest.raises(CorruptRecordError):
        decode_records(encode_record(1) + b"\x00" * 8 + encode_record(2))


def test_scan_gives_offsets_and_read_record_is_strict():
    a, b = encode_record("a"), encode_record("b")
    items, end, status = scan_records(a + b)
    assert items == [(0, "a"), (len(a), "b")] and end == len(a + b) and status is None
    assert read_record(a + b, len(a)) == ("b", len(a + b))
    with pytest.raises(CorruptRecordError):
        read_record(a[:-1])


def test_wal_payloads():
    e = Entry(term=3, index=9, kind=EntryKind.CONFIG, data=b"\x01")
    got = parse_wal_payload(cbor2.loads(cbor2.dumps(entry_payload(e))))
    assert got == e and got.kind is EntryKind.CONFIG
    assert parse_wal_payload(commit_payload(12)) == 12
    for bad in [["e", 0, 1, 0, b""], ["e", 1, 1, True, b""], ["e", 1, 1, 99, b""], ["e", 1, 1, 0, "s"],
                ["c", -1], ["x", 1], [], {"e": 1}, None]:
        with pytest.raises(ValueError):
            parse_wal_payload(bad)
