"""Kafka record batches (magic v2) to kq's columns: the hot path into kq serve.

kafka-python's ``kafka.record`` decodes v2 batches one record object at a
time: about 214k records/s for 100 B values, below what ``kq serve`` must
carry. The layout of a batch and its compression codecs (``kafka.codec``)
come from the library, its CRC32C from the C package ``crc32c`` (which
``kafka.record`` itself prefers); what is kq's own here is only the walk over
the records, done over whole batches. Decoding goes through aiokafka's record
reader when it is its C (Cython) build (about 0.2 µs a record, checked record
by record against its length); without it, kq's own walk reads the varints
inline (one and two bytes cover every length below 8 KiB) and slices keys and
values straight into column lists, which is what ``kq.Partition.append``
takes. Compressed records are inflated by ``compression``, a piece at a
time and never past its ``MAX_DECOMPRESSED_BYTES``.

The other way, kq's batches to Kafka batches for Fetch, is ``fetch_records``.
``tests/test_serve_records.py`` checks both against ``kafka.record`` for
every codec, and with hypothesis for arbitrary records.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from crc32c import crc32c

from .compression import CODEC_MASK, NONE, InvalidBatch, UnsupportedBatch, decompress

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes,
# lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch,
# baseSequence, recordCount (Kafka's DefaultRecordBatch).
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LENGTH_END = 12  # batchLength counts the bytes after baseOffset and itself
CRC_POSITION = 17
CRC_START = 21  # the checksum covers attributes .. end
MAGIC_POSITION = 16

TIMESTAMP_TYPE_BIT = 0x08  # LogAppendTime; kq keeps the producer's time
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20

NO_PRODUCER_ID = -1
# The smallest record: a length and six one-byte fields (attributes, timestamp
# delta, offset delta, null key, empty value, no headers).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a record timestamp delta is a signed 64-bit varint
MIN_RECORD_BYTES = 7


class ProducedBatch(NamedTuple):
    """One v2 batch from a Produce request, decoded into kq's columns."""

    values: list
    keys: list | None  # None: no record has a key
    headers: list | None  # per record a list of (str, bytes or None), or None: no record has one
    timestamps: list
    producer_id: int
    producer_epoch: int
    base_sequence: int
    count: int  # type: ignore[assignment]  # (a field, where tuple has a method of that name)
    null_header_values: int  # header values that were null (kept as None)
    codec: int = NONE  # the compression codec the records came in (Kafka keeps a producer's codec)
    transactional: bool = False  # part of a transaction (KIP-98): visible to read_committed readers once committed


def _varint(buf, pos: int) -> tuple[int, int]:
    """A zigzag varint of up to 10 bytes at ``pos``: (value, position after)."""
    shift = result = 0
    while True:
        if shift > 63:
            raise InvalidBatch("a varint is longer than 10 bytes")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def split_batches(data) -> list[memoryview]:
    """The batches in a Produce request's records field (usually one)."""
    view = memoryview(data)
    out = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise InvalidBatch("records end inside a batch header")
        length = int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True)
        size = LENGTH_END + length
        if length < HEADER_SIZE - LENGTH_END or pos + size > end:
            raise InvalidBatch(f"batch length {length} does not fit the records sent")
        out.append(view[pos : pos + size])
        pos += size
    return out


def decode_produced(batch: memoryview) -> ProducedBatch:
    """Check a v2 batch's magic and CRC32C and decode its records into columns."""
    if len(batch) < HEADER_SIZE:
        raise InvalidBatch("batch shorter than its header")
    if batch[MAGIC_POSITION] != 2:
        raise UnsupportedBatch(f"record batch magic {batch[MAGIC_POSITION]} (kq serve takes v2 batches)")
    (_, _, _, _, crc, attributes, _, base_ts, _, producer_id, producer_epoch, base_sequence, count) = (
        HEADER.unpack_from(batch)
    )
    if crc32c(batch[CRC_START:]) != crc:
        raise InvalidBatch("record batch CRC32C mismatch")
    if attributes & CONTROL_BIT:
        raise UnsupportedBatch("control batches are written by the transaction coordinator, not produced")
    if attributes & TRANSACTIONAL_BIT and producer_id < 0:
        raise InvalidBatch("a transactional batch without a producer id")
    if count <= 0:
        raise InvalidBatch(f"record batch with {count} records")
    kind = attributes & CODEC_MASK
    body = batch[HEADER_SIZE:] if kind == NONE else decompress(kind, batch[HEADER_SIZE:])
    # The count sizes the column lists: a header claiming more records than its
    # bytes can hold would otherwise cost gigabytes for a request of a few bytes.
    if count > len(body) // MIN_RECORD_BYTES:
        raise InvalidBatch(f"a batch of {len(body)} bytes cannot hold the {count} records its header claims")
    try:
        columns = _decode_in_c(batch, body, attributes, base_ts) if _CBatch is not None else None
        if columns is None:
            columns = _decode_plain(body, count, base_ts) or _decode_records(body, count, base_ts)
    except IndexError:
        raise InvalidBatch("a record runs past the end of its batch") from None
    except UnicodeDecodeError:
        raise InvalidBatch("a header key is not UTF-8") from None
    values, keys, headers, timestamps, nulls = columns
    return ProducedBatch(
        values,
        keys,
        headers,
        timestamps,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
        nulls,
        kind,
        bool(attributes & TRANSACTIONAL_BIT),
    )


def _load_c_walker():
    """aiokafka's record walker, when it is its C (Cython) build: about twice as fast as ``_decode_plain``."""
    try:
        from aiokafka.record.default_records import DefaultRecordBatch
    except ImportError:
        return None
    return DefaultRecordBatch if "_crecords" in DefaultRecordBatch.__module__ else None


_CBatch = _load_c_walker()


def _decode_in_c(batch: memoryview, body, attributes: int, base_ts: int):
    """``_decode_records`` through aiokafka's C walker, which checks each record against its length.

    It is given the records uncompressed (``body``), under a header that says
    so and asks for the producer's timestamps (kq keeps them, whatever the
    timestamp type).
    """
    plain = attributes & ~(CODEC_MASK | TIMESTAMP_TYPE_BIT)
    if plain == attributes:
        buf = bytes(batch)
    else:
        head = bytearray(batch[:HEADER_SIZE])
        struct.pack_into(">i", head, 8, HEADER_SIZE - LENGTH_END + len(body))
        struct.pack_into(">h", head, CRC_START, plain)
        buf = bytes(head) + bytes(body)
    values: list = []
    keys: list = []
    timestamps: list = []
    headers: list = []
    add_value, add_key, add_timestamp, add_headers = values.append, keys.append, timestamps.append, headers.append
    try:
        # One pass, each record object freed as soon as it is read: a list of
        # them would keep the garbage collector busy.
        for r in _CBatch(buf):
            add_value(r.value)
            add_key(r.key)
            add_timestamp(r.timestamp)
            add_headers(r.headers)
    except UnicodeDecodeError:
        raise
    except Exception as exc:  # aiokafka's CorruptRecordException, and whatever else bad bytes raise
        raise InvalidBatch(f"the records do not decode: {exc}") from None
    nulls = 0
    any_headers = any(headers)
    if any_headers:
        for i, pairs in enumerate(headers):
            if not pairs:
                headers[i] = None
            else:
                nulls += sum(v is None for _, v in pairs)  # a null value stays None, as Kafka keeps it
    # The C walker adds a record's delta to the base timestamp in 64 bits, so a
    # sum past them wraps around (and differs from its delta by 2**64): None
    # leaves such a batch to kq's own walk, which keeps the sum for the broker to refuse.
    if timestamps and (min(timestamps) - base_ts < INT64_MIN or max(timestamps) - base_ts > INT64_MAX):
        return None
    any_key = keys.count(None) != len(keys)
    return values, keys if any_key else None, headers if any_headers else None, timestamps, nulls


def _decode_plain(buf, count: int, base_ts: int):
    """``_decode_records`` for what producers mostly send, or None for anything else.

    Records without key or headers whose lengths and timestamp delta fit in
    one or two bytes (records under 8 KiB) are read with fewer steps each; any other
    record, or a malformed one, leaves them to ``_decode_records``.
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    values = [None] * count
    timestamps = None
    end = len(buf)
    pos = 0
    try:
        for i in range(count):
            z = buf[pos]
            if z < 0x80:
                pos += 1
            else:
                c = buf[pos + 1]
                if c >= 0x80:
                    return None
                z = (z & 0x7F) | (c << 7)
                pos += 2
            stop = pos + (z >> 1)
            if z & 1 or stop > end:
                return None
            # attributes at pos, then the timestamp delta
            t = buf[pos + 1]
            if t:
                if t >= 0x80:
                    return None
                if timestamps is None:
                    timestamps = [base_ts] * count
                timestamps[i] = base_ts + ((t >> 1) ^ -(t & 1))
            # the offset delta (skipped: kq numbers the records itself)
            if buf[pos + 2] < 0x80:
                pos += 3
            elif buf[pos + 3] < 0x80:
                pos += 4
            else:
                pos += 4
                while buf[pos] >= 0x80:
                    pos += 1
                pos += 1
            if buf[pos] != 1:  # a key
                return None
            v = buf[pos + 1]
            if v < 0x80:
                pos += 2
            else:
                c = buf[pos + 2]
                if c >= 0x80:
                    return None
                v = (v & 0x7F) | (c << 7)
                pos += 3
            # an even zigzag is a length >= 0; the record ends with an empty header count
            if v & 1 or pos + (v >> 1) + 1 != stop or buf[stop - 1]:
                return None
            values[i] = buf[pos : stop - 1]
            pos = stop
    except IndexError:
        return None
    if pos != end:
        return None
    return values, None, None, [base_ts] * count if timestamps is None else timestamps, 0


def _decode_records(buf, count: int, base_ts: int):
    """Walk ``count`` records: (values, keys, headers, timestamps, null header values).

    Varints of one or two bytes (values below 8192 after zigzag) are read
    inline; anything longer goes through ``_varint``.
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    values = [None] * count
    keys = [None] * count
    headers = None
    timestamps = [base_ts] * count
    any_key = False
    nulls = 0
    end = len(buf)
    pos = 0
    for i in range(count):
        # length
        b = buf[pos]
        if b < 0x80:
            length = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                z = (b & 0x7F) | (c << 7)
                length = (z >> 1) ^ -(z & 1)
                pos += 2
            else:
                length, pos = _varint(buf, pos)
        start = pos
        stop = pos + length
        if length <= 0 or stop > end:
            raise InvalidBatch(f"record {i} has length {length}")
        pos += 1  # attributes (unused in v2)
        # timestamp delta
        b = buf[pos]
        if b < 0x80:
            if b:
                timestamps[i] = base_ts + ((b >> 1) ^ -(b & 1))
            pos += 1
        else:
            delta, pos = _varint(buf, pos)
            timestamps[i] = base_ts + delta
        # offset delta: kq gives offsets in order, whatever the producer wrote,
        # so its bytes are only skipped (the record length check catches a bad one)
        while buf[pos] >= 0x80:
            pos += 1
        pos += 1
        # key
        b = buf[pos]
        if b == 1:  # -1: null
            pos += 1
        else:
            if b < 0x80:
                n = b >> 1
                pos += 1
                if b & 1:
                    raise InvalidBatch(f"record {i} has a negative key length")
            else:
                n, pos = _varint(buf, pos)
                if n < -1:
                    raise InvalidBatch(f"record {i} has a negative key length")
            if n >= 0:
                keys[i] = buf[pos : pos + n]
                any_key = True
                pos += n
        # value
        b = buf[pos]
        if b < 0x80:
            n = (b >> 1) ^ -(b & 1)
            pos += 1
        else:
            c = buf[pos + 1]
            if c < 0x80:
                z = (b & 0x7F) | (c << 7)
                n = (z >> 1) ^ -(z & 1)
                pos += 2
            else:
                n, pos = _varint(buf, pos)
        if n >= 0:
            values[i] = buf[pos : pos + n]
            pos += n
        elif n != -1:
            raise InvalidBatch(f"record {i} has a negative value length")
        # headers
        b = buf[pos]
        if b == 0:
            pos += 1
        else:
            pairs, pos, null = _decode_headers(buf, pos, i)
            nulls += null
            if headers is None:
                headers = [None] * count
            headers[i] = pairs
        if pos != stop:
            raise InvalidBatch(f"record {i} is {pos - start} bytes, not the {length} its length says")
    if pos != end:
        raise InvalidBatch(f"{end - pos} bytes after the last record")
    return values, keys if any_key else None, headers, timestamps, nulls


def _decode_headers(buf, pos: int, i: int):
    n, pos = _varint(buf, pos)
    if n < 0:
        raise InvalidBatch(f"record {i} has {n} headers")
    pairs = []
    nulls = 0
    for _ in range(n):
        klen, pos = _varint(buf, pos)
        if klen < 0:
            raise InvalidBatch(f"record {i} has a header with a null key")
        name = buf[pos : pos + klen].decode("utf-8")
        pos += klen
        vlen, pos = _varint(buf, pos)
        if vlen >= 0:
            pairs.append((name, buf[pos : pos + vlen]))
            pos += vlen
        else:
            pairs.append((name, None))
            nulls += 1
    return pairs, pos, nulls
