"""kq.engine.batch and kq.engine.index in-process: the bytes FORMAT.md describes, exactly."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest

from kq.engine import batch as batchfmt
from kq.engine.index import ENTRY, INTERVAL_BYTES, NO_TIMESTAMP, IndexBuilder, pack_entries


def test_header_fields_sit_where_format_md_says():
    data = batchfmt.encode(7, [b"a", b"bc"], timestamps=[100, 90])
    assert data[:4] == b"KQB\x01"
    crc, length = struct.unpack_from(">II", data, 4)
    assert length == len(data) - 12 and crc == zlib.crc32(data[8:])
    base, delta, count, base_ts, max_ts, attributes = struct.unpack_from(">qIIqqH", data, 12)
    assert (base, delta, count, base_ts, max_ts, attributes) == (7, 1, 2, 90, 100, 0)
    status, header = batchfmt.check(data, 0, len(data))
    assert status == batchfmt.OK
    assert (header.base_offset, header.last_offset, header.next_offset, header.size) == (7, 8, 9, len(data))


@pytest.mark.parametrize(
    "columns",
    [
        dict(values=[b"x"]),
        dict(values=[b"", None, b"\xff"], keys=[b"k", None, b""]),
        dict(values=[b"v"] * 3, headers=[[("a", b"1"), ("a", b"2")], None, []]),
        dict(values=[b"v"] * 2, headers=[[("n", None), ("e", b"")], None]),
        dict(values=[b"1", b"2"], timestamps=[5, -5]),
        dict(values=[b"1", b"2"], timestamps=[1, 2], offset_deltas=[0, 9]),
    ],
    ids=["one", "keys-and-tombstones", "repeated-headers", "null-header-value", "timestamps", "compacted-gaps"],
)
def test_encode_then_decode_gives_the_same_records(columns):
    values = columns.pop("values")
    data = batchfmt.encode(100, values, **columns)
    status, header = batchfmt.check(data, 0, len(data))
    assert status == batchfmt.OK
    b = batchfmt.decode(data, 0, header)
    records = list(b.records())
    assert [r.value for r in records] == values
    assert [r.key for r in records] == (columns.get("keys") or [None] * len(values))
    deltas = columns.get("offset_deltas") or list(range(len(values)))
    assert [r.offset for r in records] == [100 + d for d in deltas]
    if "timestamps" in columns:
        assert [r.timestamp for r in records] == columns["timestamps"]
    headers = columns.get("headers") or [[]] * len(values)
    assert [r.headers for r in records] == [list(h or []) for h in headers]


@pytest.mark.parametrize(
    "mutate, status",
    [
        (lambda d: d[:20], batchfmt.INCOMPLETE),  # a torn write
        (lambda d: b"XXXX" + d[4:], batchfmt.INVALID),  # not a batch
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), batchfmt.DAMAGED),  # whole, bad checksum
        (lambda d: d[:8] + struct.pack(">I", 3) + d[12:], batchfmt.DAMAGED),  # a length no batch has
    ],
    ids=["torn", "garbage", "bit-rot", "impossible-length"],
)
def test_check_tells_torn_from_damaged(mutate, status):
    data = mutate(batchfmt.encode(0, [b"hello", b"world"]))
    assert batchfmt.check(data, 0, len(data))[0] == status


def test_impossible_offsets_are_damage_even_with_a_valid_checksum():
    data = batchfmt.encode(-5, [b"x"])
    assert batchfmt.check(data, 0, len(data)) == (batchfmt.DAMAGED, "impossible offsets -5..-5")


def test_the_index_rule_of_format_md_to_the_byte():
    """FORMAT.md, "Index files": an entry for the first batch at least 4096 bytes after the
    previous entry (position 0 counts as one), carrying the largest max_timestamp before it.
    kq verify shares this builder, so this test is what pins the rule."""
    builder = IndexBuilder()
    # (base offset, position, that batch's max timestamp)
    batches = [
        (0, 0, 50),
        (10, 1000, 70),
        (20, 4095, 60),
        (30, 4096, 40),
        (40, 5000, 90),
        (50, 8191, 10),
        (60, 8192, 95),
    ]
    for offset, position, max_ts in batches:
        builder.add(offset, position, max_ts)
    assert builder.take() == pack_entries([(30, 4096, 70), (60, 8192, 90)])
    assert builder.max_timestamp == 95
    assert builder.take() == b""  # taken once
    assert ENTRY.size == 24 and INTERVAL_BYTES == 4096 and NO_TIMESTAMP == -(2**63)
    # 24-byte big-endian entries: base_offset, position, running max.
    assert pack_entries([(30, 4096, 70)]) == struct.pack(">qqq", 30, 4096, 70)


def test_an_index_builder_resumed_from_an_entry_goes_on_as_one_from_the_start():
    whole = IndexBuilder()
    for offset, position in [(0, 0), (1, 4096), (2, 8000), (3, 8192)]:
        whole.add(offset, position, offset)
    resumed = IndexBuilder(last_indexed=4096, max_timestamp=0)  # as a scan from the entry (1, 4096, 0)
    for offset, position in [(1, 4096), (2, 8000), (3, 8192)]:
        resumed.add(offset, position, offset)
    assert whole.take()[24:] == resumed.take()


def test_a_null_header_value_is_nil_in_the_headers_column_and_flags_the_payload():
    """FORMAT.md, "Payload": a null header value is msgpack nil (format 2); the payload says it holds one."""
    import msgpack

    payload = batchfmt.pack([b"v"], headers=[[("n", None), ("e", b"")]], timestamp=1)
    assert payload.null_header_values
    assert msgpack.unpackb(payload.data)[2] == [[["n", None], ["e", b""]]]
    assert not batchfmt.pack([b"v"], headers=[[("e", b"")]], timestamp=1).null_header_values


def test_dedup_index_bytes_sit_where_format_md_says(tmp_path):
    """FORMAT.md, "Deduplication index": the header, an id entry and a mark, byte for byte."""
    from xxhash import xxh3_64_digest

    from kq.engine.datadir import DataDir
    from kq.engine.dedup import DedupWindow, index_name

    data = DataDir(str(tmp_path / "data"))
    data.ensure()
    data.create_topic("t", 1)
    topic = data.topic("t")
    window = DedupWindow(topic, 3_600_000)
    with window.holding():
        assert window.admit([b"a", None, b"a"]) == [2]
        window.appended(0, *topic.partition(0).append([b"1", b"2"], keys=[b"a", None]))
        window.commit()
        now = window._now
    window.close()
    raw = (tmp_path / "data" / "topics" / "t" / "dedup.index").read_bytes()
    assert raw[:32] == b"KQDI" + struct.pack(">HHQQQ", 1, 0, 3_600_000, 0, 0)
    mark = lambda p, o: struct.pack(">IIQ", zlib.crc32(struct.pack(">IQ", p, o)) & 0x7FFFFFFF, p, 2**63 | o)  # noqa: E731
    entries = [raw[i : i + 16] for i in range(32, len(raw), 16)]
    # The round's catch-up marked the empty partition 0 covered up to 0; then the id, then the new mark.
    assert entries == [mark(0, 0), xxh3_64_digest(b"a") + struct.pack(">Q", now), mark(0, 2)]
    assert index_name(None) == "dedup.index"
    assert index_name("Nats-Msg-Id") == f"dedup.h-{xxh3_64_digest(b'Nats-Msg-Id').hex()}.index"
    assert xxh3_64_digest(b"a").hex() == "e6c632b61e964e1f"  # XXH3-64, seed 0: what another reader must compute


@pytest.mark.parametrize(
    "codec, magic, inflate",
    [
        (4, b"\x28\xb5\x2f\xfd", lambda d: __import__("zstandard").ZstdDecompressor().decompress(d)),
        (3, b"\x04\x22\x4d\x18", lambda d: __import__("lz4.frame").frame.decompress(d)),
        (1, b"\x1f\x8b", lambda d: __import__("gzip").decompress(d)),
        (2, None, lambda d: __import__("snappy").decompress(d)),
    ],
    ids=["zstd", "lz4", "gzip", "snappy"],
)
def test_a_compressed_payload_is_the_msgpack_payload_through_its_codec_with_the_codec_in_bits_3_to_5(
    codec, magic, inflate
):
    """FORMAT.md, "Record batch": attributes bits 3-5 name the codec; the payload is the
    msgpack payload compressed whole (a zstd frame, an LZ4 frame, a gzip member, a raw snappy block);
    the CRC covers the bytes as stored."""
    import msgpack

    plain = batchfmt.encode(7, [b"a", b"bc"], timestamps=[100, 90])
    data = batchfmt.encode(7, [b"a", b"bc"], timestamps=[100, 90], compression=codec)
    (attributes,) = struct.unpack_from(">H", data, 44)
    assert attributes == codec << 3
    crc, length = struct.unpack_from(">II", data, 4)
    assert length == len(data) - 12 and crc == zlib.crc32(data[8:])
    assert data[12:44] == plain[12:44]  # the other header fields are as uncompressed
    payload = data[46:]
    if magic is not None:
        assert payload.startswith(magic)
    assert inflate(payload) == plain[46:] == msgpack.packb([[b"a", b"bc"], None, None, [10, 0], None])


# ---------------------------------------------------------------- decoding a batch's headers first (share groups)

DELAY = [("kq.deliver-at", b"1865000000000")]


def _deferred(data: bytes):
    status, header = batchfmt.check(data, 0, len(data))
    assert status == batchfmt.OK
    return batchfmt.decode(bytearray(data), 0, header, "seg.log", defer_values_if=b"kq.deliver-at")


@pytest.mark.parametrize("codec", [0, 1, 4], ids=["none", "gzip", "zstd"])
@pytest.mark.parametrize(
    "headers",
    [[DELAY] * 4, [DELAY, None, [("a", b"1"), *DELAY], []]],
    ids=["one-produce", "mixed"],
)
def test_a_batch_with_delayed_records_decodes_its_headers_first_and_its_values_when_asked(codec, headers):
    values = [b"a", None, b"", b"\xff" * 300]
    data = batchfmt.encode(9, values, keys=[b"k", None, b"k", b"l"], headers=headers, compression=codec)
    b = _deferred(data)
    assert b.values is None and b.deferred is not None  # not decoded yet
    assert b.headers == [None if h is None else [list(p) for p in h] for h in headers]
    assert (b.keys, list(b.offsets())) == ([b"k", None, b"k", b"l"], [9, 10, 11, 12])
    b.load_values()
    assert b.values == values and b.deferred is None
    full = batchfmt.decode(data, 0, batchfmt.check(data, 0, len(data))[1])
    assert list(b.records()) == list(full.records())


def test_a_batch_without_delayed_records_decodes_whole_as_before():
    data = batchfmt.encode(0, [b"a", b"b"], headers=[[("other", b"1")]] * 2)
    b = _deferred(data)
    assert b.values == [b"a", b"b"] and b.deferred is None


def _framed(columns, count: int) -> bytes:
    """A batch of ``count`` records whose payload is ``columns`` as msgpack, checksum right."""
    import msgpack

    data = msgpack.packb(columns, use_bin_type=True)
    payload = batchfmt.Payload(data, count, count - 1, 0, 0)
    return batchfmt.frame(0, payload) + data


@pytest.mark.parametrize(
    "columns, count",
    [
        ([[b"a"], None, [DELAY], None], 1),  # four columns
        ([[b"a"], None, [DELAY], None, None, None], 1),  # six
        ([[b"a", b"b"], None, [DELAY], None, None], 1),  # more values than records
        ([[b"a"], None, [DELAY, DELAY], None, None], 1),  # more headers than records
        ([b"a", None, [DELAY], None, None], 1),  # values no array
        ([[b"a"], None, [[["kq.deliver-at", 5]]], None, None], 1),  # a header value no bytes
        ([[b"a"], None, [DELAY], [1], None], 1),  # a timestamp delta against the header's max
        ([[b"a"], None, [DELAY], None, None, "kq.deliver-at"], 1),  # extra data after the columns
    ],
    ids=[
        "four-columns",
        "six-columns",
        "values-count",
        "headers-count",
        "values-not-array",
        "header-type",
        "timestamps",
        "extra",
    ],
)
def test_a_malformed_payload_is_corrupt_when_only_its_headers_are_decoded(columns, count):
    from kq.errors import CorruptLog

    with pytest.raises(CorruptLog):
        _deferred(_framed(columns, count))


def test_truncated_or_foreign_msgpack_is_corrupt_when_only_its_headers_are_decoded():
    import msgpack

    from kq.errors import CorruptLog

    good = msgpack.packb([[b"a"], None, [DELAY], None, None], use_bin_type=True)
    for data in (good[:-3], good[:-1] + b"\xc1", good.replace(b"\xc0\x91\x91", b"\xd4\x05\x91\x91")):
        payload = batchfmt.Payload(data, 1, 0, 0, 0)
        with pytest.raises(CorruptLog):
            _deferred(batchfmt.frame(0, payload) + data)


@pytest.mark.parametrize(
    "values, reason",
    [([b"a", 7], "wrong type"), ([b"a", msgpack.ExtType(5, b"x")], "does not decode")],
    ids=["int", "extension"],
)
def test_values_that_are_no_values_are_corrupt_when_they_are_loaded(values, reason):
    """(Their framing is checked with the headers; what they hold when they are decoded.)"""
    from kq.errors import CorruptLog

    b = _deferred(_framed([values, None, [DELAY, DELAY], None, None], 2))
    assert b.headers is not None
    with pytest.raises(CorruptLog, match=reason):
        b.load_values()


def test_a_compressed_batch_that_does_not_inflate_is_corrupt_when_only_its_headers_are_wanted():
    from kq.errors import CorruptLog

    data = bytearray(batchfmt.encode(0, [b"a"], headers=[DELAY], compression=1))
    data[-8:-4] = bytes(4)  # the gzip member's own CRC-32 of what it inflates to
    data[4:8] = struct.pack(">I", zlib.crc32(data[8:]))
    with pytest.raises(CorruptLog):
        _deferred(bytes(data))


def test_a_transactional_batch_with_delayed_records_keeps_its_producer_when_its_headers_are_decoded_first():
    from kq.errors import CorruptLog

    data = batchfmt.encode(3, [b"a", b"b"], headers=[DELAY] * 2, producer=(5, 1))
    b = _deferred(data)
    assert (b.producer_id, b.producer_epoch, b.transactional, b.values) == (5, 1, True, None)
    b.load_values()
    assert b.values == [b"a", b"b"]
    with pytest.raises(CorruptLog):  # a sixth column that is no producer
        _deferred(_framed([[b"a"], None, [DELAY], None, None, None], 1))
