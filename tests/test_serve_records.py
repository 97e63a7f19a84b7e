"""kq serve's fast record-batch paths against kafka-python's own codec (kafka.record)."""

from __future__ import annotations

import pytest

pytest.importorskip("kafka.record")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder  # noqa: E402

from kq.engine import batch as kqbatch  # noqa: E402
from kq.serve import compression, fetch_records, records  # noqa: E402

CODECS = [compression.NONE, compression.GZIP, compression.SNAPPY, compression.LZ4, compression.ZSTD]

record_st = st.fixed_dictionaries(
    {
        "key": st.none() | st.binary(max_size=300),
        "value": st.none() | st.binary(max_size=20_000),
        "headers": st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=200)), max_size=4),
        "ts_delta": st.integers(min_value=-(2**40), max_value=2**40),
    }
)


def _decode_with_both_walkers(raw):
    """decode_produced through aiokafka's C walker (when installed) and through kq's own: one answer."""
    outcomes = []
    for walker in dict.fromkeys([records._CBatch, None]):
        saved, records._CBatch = records._CBatch, walker
        try:
            outcomes.append(records.decode_produced(raw))
        except records.InvalidBatch:
            outcomes.append(None)
        finally:
            records._CBatch = saved
    assert all(o == outcomes[0] for o in outcomes), outcomes
    if outcomes[0] is None:
        raise records.InvalidBatch("both walkers refuse it")
    return outcomes[0]


def _library_batch(recs, codec=compression.NONE, base_ts=1_700_000_000_000, producer=(-1, -1, -1)) -> bytes:
    b = DefaultRecordBatchBuilder(2, codec, False, producer[0], producer[1], producer[2], 2**30)
    for i, r in enumerate(recs):
        b.append(i, base_ts + r["ts_delta"], r["key"], r["value"], r["headers"])
    return bytes(b.build())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_st, min_size=1, max_size=40), st.sampled_from(CODECS))
def test_decoding_a_produced_batch_gives_what_kafka_record_reads(recs, codec):
    data = _library_batch(recs, codec)
    [raw] = records.split_batches(data)
    got = _decode_with_both_walkers(raw)
    ref = list(DefaultRecordBatch(data))
    assert got.values == [r.value for r in ref]
    assert (got.keys or [None] * len(ref)) == [r.key for r in ref]
    assert (got.headers or [None] * len(ref)) == [r.headers or None for r in ref]
    assert got.timestamps == [r.timestamp for r in ref]
    assert got.count == len(ref)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_st, min_size=1, max_size=40), st.integers(min_value=0, max_value=2**40))
def test_a_kq_batch_sent_to_a_consumer_reads_back_identically_with_kafka_record(recs, base_offset):
    base_ts = 1_700_000_000_000
    stamps = [base_ts + r["ts_delta"] for r in recs]
    kq_bytes = kqbatch.encode(
        base_offset,
        [r["value"] for r in recs],
        keys=[r["key"] for r in recs],
        headers=[r["headers"] for r in recs],
        timestamps=stamps,
    )
    status, header = kqbatch.check(kq_bytes, 0, len(kq_bytes))
    kq = kqbatch.decode(kq_bytes, 0, header)
    out: list = []
    fetch_records.kafka_batches(kq, base_offset, 10**9, out)
    data = b"".join(out)
    got = []
    pos = 0
    while pos < len(data):
        size = 12 + int.from_bytes(data[pos + 8 : pos + 12], "big")
        batch = DefaultRecordBatch(data[pos : pos + size])
        assert batch.validate_crc()
        got += list(batch)
        pos += size
    assert [r.offset for r in got] == list(range(base_offset, base_offset + len(recs)))
    assert [r.value for r in got] == [r["value"] for r in recs]
    assert [r.key for r in got] == [r["key"] for r in recs]
    assert [r.headers for r in got] == [list(r["headers"]) for r in recs]
    assert [r.timestamp for r in got] == stamps


def test_a_fetch_starting_inside_a_kq_batch_begins_at_its_offset_and_stops_near_its_limit():
    values = [b"v%05d" % i * 20 for i in range(5000)]
    kq_bytes = kqbatch.encode(100, values)
    _, header = kqbatch.check(kq_bytes, 0, len(kq_bytes))
    kq = kqbatch.decode(kq_bytes, 0, header)
    out: list = []
    sent = fetch_records.kafka_batches(kq, 1100, 50_000, out)
    got = [r for piece in out for r in DefaultRecordBatch(piece)]
    assert got[0].offset == 1100 and got[0].value == values[1000]
    assert 40_000 < sent < 60_000
    assert [r.offset for r in got] == list(range(1100, 1100 + len(got)))


@pytest.mark.parametrize("codec", CODECS)
def test_producer_fields_and_codecs_are_read(codec):
    recs = [{"key": b"k", "value": b"v" * 100, "headers": [], "ts_delta": i} for i in range(100)]
    got = records.decode_produced(memoryview(_library_batch(recs, codec, producer=(77, 3, 1000))))
    assert (got.producer_id, got.producer_epoch, got.base_sequence, got.count) == (77, 3, 1000, 100)


def test_a_null_header_value_is_kept_null_and_counted():
    b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 2**20)
    b.append(0, 1, None, b"v", [("h", None), ("e", b"")])
    got = records.decode_produced(memoryview(bytes(b.build())))
    assert got.headers == [[("h", None), ("e", b"")]] and got.null_header_values == 1


def test_damaged_batches_are_rejected_not_stored():
    good = bytearray(_library_batch([{"key": None, "value": b"x" * 50, "headers": [], "ts_delta": 0}]))
    flipped = bytearray(good)
    flipped[-3] ^= 0xFF
    with pytest.raises(records.InvalidBatch, match="CRC32C"):
        records.decode_produced(memoryview(flipped))
    old_magic = bytearray(good)
    old_magic[16] = 1
    with pytest.raises(records.UnsupportedBatch):
        records.decode_produced(memoryview(old_magic))
    with pytest.raises(records.InvalidBatch):
        records.split_batches(good[:-5])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=61, max_size=400))
def test_any_bytes_with_a_valid_crc_decode_or_raise_invalid_batch(body):
    """The record walk meets only well-framed bytes after the CRC check: fuzz it directly."""
    data = bytearray(body)
    data[16] = 2  # magic
    data[21] = data[22] = 0  # attributes: no codec, no transaction
    count = max(1, int.from_bytes(data[57:61], "big", signed=True) % 50)
    data[57:61] = count.to_bytes(4, "big")
    data[8:12] = (len(data) - 12).to_bytes(4, "big")
    from crc32c import crc32c

    data[17:21] = crc32c(bytes(data[21:])).to_bytes(4, "big")
    try:
        got = _decode_with_both_walkers(memoryview(bytes(data)))
    except records.InvalidBatch:
        return
    assert got.count == count == len(got.values)
