"""Kafka record batches (magic v2) to and from kq's columns: the hot paths of kq serve.

kafka-python's ``kafka.record`` decodes and builds v2 batches one record
object at a time: about 214k records/s decoded and 350k/s encoded for 100 B
values, below what ``kq serve`` must carry. The layout of a batch and its
compression codecs (``kafka.codec``) come from the library, its CRC32C from
the C package ``crc32c`` (which ``kafka.record`` itself prefers); what is
kq's own here is only the walk over the records, done over whole batches:

- decoding goes through aiokafka's record reader when it is its C (Cython)
  build (about 0.2 µs a record, checked record by record against its
  length); without it, kq's own walk reads the varints inline (one and two
  bytes cover every length below 8 KiB) and slices keys and values straight
  into column lists, which is what ``kq.Partition.append`` takes;
- encoding looks varints up in a precomputed table and joins each record's
  pieces once.

``tests/test_serve_records.py`` checks both against ``kafka.record`` for
every codec, and with hypothesis for arbitrary records.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from crc32c import crc32c
from kafka import codec

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes,
# lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch,
# baseSequence, recordCount (Kafka's DefaultRecordBatch).
HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LENGTH_END = 12  # batchLength counts the bytes after baseOffset and itself
CRC_POSITION = 17
CRC_START = 21  # the checksum covers attributes .. end
MAGIC_POSITION = 16

CODEC_MASK = 0x07
NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
TIMESTAMP_TYPE_BIT = 0x08  # LogAppendTime; kq keeps the producer's time
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20

NO_PRODUCER_ID = -1
# A decompressed batch may not grow past this (a small zstd bomb would
# otherwise cost gigabytes); kq's own batches are at most 64 MiB.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
# The smallest record: a length and six one-byte fields (attributes, timestamp
# delta, offset delta, null key, empty value, no headers).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a record timestamp delta is a signed 64-bit varint
MIN_RECORD_BYTES = 7


class InvalidBatch(ValueError):
    """Bytes that are not a well-formed v2 record batch (Kafka's CORRUPT_MESSAGE)."""


class UnsupportedBatch(ValueError):
    """A well-formed batch kq does not take (old magic, transactions, control batches)."""


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


def _decompress(kind: int, data: memoryview) -> bytes:
    """The records of a compressed batch, refused once they pass ``MAX_DECOMPRESSED_BYTES``.

    Each codec's library inflates a piece at a time and is never asked for
    more than the limit, so a small bomb costs the limit, not its claim.
    """
    limit = MAX_DECOMPRESSED_BYTES
    try:
        if kind == GZIP:
            out = _gunzip(data, limit)
        elif kind == SNAPPY:
            out = _unsnappy(data, limit)
        elif kind == LZ4:
            out = _unlz4(data, limit)
        elif kind == ZSTD:
            out = _unzstd(data, limit)
        else:
            raise UnsupportedBatch(f"unknown compression codec {kind}")
    except (InvalidBatch, UnsupportedBatch):
        raise
    except Exception as exc:  # each library has its own error for damaged input
        raise InvalidBatch(f"the {CODEC_NAMES.get(kind, kind)} records do not decompress: {exc}") from None
    if len(out) > limit:
        raise InvalidBatch(f"a batch decompresses to more than {limit} bytes")
    return out


def _compress(kind: int, data: bytes) -> bytes:
    """Records compressed as a producer compressed them (the library's encoders, as its own batches use)."""
    if kind == GZIP:
        return codec.gzip_encode(data)
    if kind == SNAPPY:
        return codec.snappy_encode(data)
    if kind == LZ4:
        return codec.lz4_encode(data)
    if kind == ZSTD:
        return codec.zstd_encode(data)
    return data  # a codec no producer sent (the bits are kq serve's own): as stored


def _too_large(limit: int) -> InvalidBatch:
    return InvalidBatch(f"a batch decompresses to more than {limit} bytes")


def _gunzip(data, limit: int) -> bytes:
    import zlib

    out = bytearray()
    rest = bytes(data)
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one gzip member
        chunk = inflater.decompress(rest, limit + 1 - len(out))
        out += chunk
        if len(out) > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise InvalidBatch("the gzip records end early")
        rest = inflater.unused_data
    return bytes(out)


def _unlz4(data, limit: int) -> bytes:
    import lz4.frame

    out = bytearray()
    rest = bytes(data)
    while rest:
        inflater = lz4.frame.LZ4FrameDecompressor()
        out += inflater.decompress(rest, max_length=limit + 1 - len(out))
        if len(out) > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise InvalidBatch("the lz4 records end early")
        rest = inflater.unused_data
    return bytes(out)


def _unzstd(data, limit: int) -> bytes:
    import io

    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        out = reader.read(limit + 1)
    if len(out) > limit:
        raise _too_large(limit)
    return out


def _snappy_size(block) -> int:
    """The uncompressed size a raw snappy block declares in its preamble (an unsigned varint)."""
    size = shift = 0
    for i in range(min(len(block), 5)):
        b = block[i]
        size |= (b & 0x7F) << shift
        if b < 0x80:
            return size
        shift += 7
    raise InvalidBatch("a snappy block has no length")


def _unsnappy(data, limit: int) -> bytes:
    """Kafka's snappy: xerial-framed blocks (as the JVM client writes) or one raw block.

    A raw block's preamble says how large it inflates to; each is checked
    against what is left of the limit before the library inflates it.
    """
    import snappy

    raw = bytes(data)
    if not codec._detect_xerial_stream(raw):
        blocks = [raw]
    else:
        blocks = []
        pos = 16
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidBatch("a snappy block length runs past the batch")
            (size,) = struct.unpack_from(">i", raw, pos)
            if size < 0 or pos + 4 + size > len(raw):
                raise InvalidBatch(f"a snappy block of {size} bytes does not fit the batch")
            blocks.append(raw[pos + 4 : pos + 4 + size])
            pos += 4 + size
    out = bytearray()
    for block in blocks:
        if len(out) + _snappy_size(block) > limit:
            raise _too_large(limit)
        out += snappy.decompress(block)
    return bytes(out)


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
    if attributes & (TRANSACTIONAL_BIT | CONTROL_BIT):
        raise UnsupportedBatch("transactional and control batches are not supported")
    if count <= 0:
        raise InvalidBatch(f"record batch with {count} records")
    kind = attributes & CODEC_MASK
    body = batch[HEADER_SIZE:] if kind == NONE else _decompress(kind, batch[HEADER_SIZE:])
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
        values, keys, headers, timestamps, producer_id, producer_epoch, base_sequence, count, nulls, kind
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


# ---------------------------------------------------------------- encoding


def _zigzag(value: int) -> bytes:
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_TABLE_SIZE = 1 << 14
# VARINT[n] is the zigzag varint of n for 0 <= n < _TABLE_SIZE.
VARINT = [_zigzag(n) for n in range(_TABLE_SIZE)]
NULL = _zigzag(-1)


def varint(n: int, table=VARINT, size=_TABLE_SIZE) -> bytes:
    return table[n] if 0 <= n < size else _zigzag(n)


def encode_records(values, keys, headers, timestamps, base_ts: int, offset_deltas=None) -> bytes:
    """The records part of a v2 batch (uncompressed), from kq's columns.

    ``timestamps`` None means every record has ``base_ts``; ``offset_deltas``
    None means the offsets follow each other from the batch's base.
    """
    if keys is None and headers is None and offset_deltas is None and len(values) < _TABLE_SIZE:
        try:
            plain = max(map(len, values)) < _TABLE_SIZE - 32
        except TypeError:  # a null value
            plain = False
        if plain:
            return _encode_plain(values, timestamps, base_ts)
    table = VARINT
    size = _TABLE_SIZE
    zigzag = _zigzag
    parts: list = []
    append = parts.append
    zero = table[0]
    for i, value in enumerate(values):
        if value is None:
            vpart = NULL
        else:
            n = len(value)
            vpart = (table[n] if n < size else zigzag(n)) + value
        key = None if keys is None else keys[i]
        if key is None:
            kpart = NULL
        else:
            n = len(key)
            kpart = (table[n] if n < size else zigzag(n)) + key
        if timestamps is None:
            tpart = zero
        else:
            d = timestamps[i] - base_ts
            tpart = table[d] if 0 <= d < size else zigzag(d)
        d = i if offset_deltas is None else offset_deltas[i]
        opart = table[d] if d < size else zigzag(d)
        pairs = None if headers is None else headers[i]
        hpart = zero if not pairs else _encode_headers(pairs)
        body = b"".join((zero, tpart, opart, kpart, vpart, hpart))
        n = len(body)
        append(table[n] if n < size else zigzag(n))
        append(body)
    return b"".join(parts)


def _encode_plain(values, timestamps, base_ts: int) -> bytes:
    """``encode_records`` for the common case: values only (no keys, headers or nulls), few and short.

    Each record's pieces go into one list joined once, and its length is
    summed from theirs instead of joining the record first.
    """
    table = VARINT
    parts: list = []
    extend = parts.extend
    if timestamps is None:
        for i, value in enumerate(values):
            n = len(value)
            o = table[i]
            v = table[n]
            # attributes, timestamp delta 0, offset delta, null key, value, no headers
            extend((table[4 + len(o) + len(v) + n], b"\x00\x00", o, b"\x01", v, value, b"\x00"))
        return b"".join(parts)
    size = _TABLE_SIZE
    zigzag = _zigzag
    for i, value in enumerate(values):
        n = len(value)
        d = timestamps[i] - base_ts
        t = table[d] if 0 <= d < size else zigzag(d)
        o = table[i]
        v = table[n]
        length = 3 + len(t) + len(o) + len(v) + n
        extend((table[length] if length < size else zigzag(length), b"\x00", t, o, b"\x01", v, value, b"\x00"))
    return b"".join(parts)


def _encode_headers(pairs) -> bytes:
    out = [varint(len(pairs))]
    for name, value in pairs:
        raw = name.encode("utf-8")
        out.append(varint(len(raw)))
        out.append(raw)
        if value is None:
            out.append(NULL)
        else:
            out.append(varint(len(value)))
            out.append(value)
    return b"".join(out)


def build_batch(
    base_offset: int,
    records: bytes,
    count: int,
    last_offset_delta: int,
    base_ts: int,
    max_ts: int,
    attributes: int = 0,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """A whole v2 batch around already-encoded (and maybe compressed) records."""
    head = bytearray(
        HEADER.pack(
            base_offset,
            HEADER_SIZE - LENGTH_END + len(records),
            0,
            2,
            0,
            attributes,
            last_offset_delta,
            base_ts,
            max_ts,
            producer_id,
            producer_epoch,
            base_sequence,
            count,
        )
    )
    # CRC32C over attributes..end without joining the records a second time.
    crc = crc32c(records, crc32c(memoryview(head)[CRC_START:]))
    struct.pack_into(">I", head, CRC_POSITION, crc)
    return bytes(head) + records


def rebase(batch: bytes | bytearray | memoryview, base_offset: int) -> bytearray:
    """A copy of a v2 batch with a new base offset (outside the CRC, so it stays valid)."""
    out = bytearray(batch)
    struct.pack_into(">q", out, 0, base_offset)
    struct.pack_into(">i", out, 12, 0)  # partition leader epoch: kq has one leader
    return out


# ---------------------------------------------------------------- fetch

# A kq batch can hold far more than a consumer asks for at once (`kq produce`
# writes batches of up to 32 MiB): it is sent as Kafka batches of about
# this many bytes, so a fetch stops near its limits and starts at its offset.
PIECE_BYTES = 1024 * 1024


def _value_sizes(values, keys) -> list[int]:
    try:
        sizes = list(map(len, values))
    except TypeError:
        sizes = [0 if v is None else len(v) for v in values]
    if keys is not None:
        sizes = [s + (0 if k is None else len(k)) for s, k in zip(sizes, keys)]
    return sizes


def kafka_batches(batch, offset: int, max_bytes: int, out: list) -> int:
    """Append Kafka v2 batches for the records of kq ``batch`` at or after ``offset``.

    Stops after about ``max_bytes`` (but sends at least one record); returns
    the bytes appended. ``batch`` is a ``kq.engine.batch.RecordBatch``.
    """
    count = batch.count
    lo = batch.index_of(offset)
    if lo >= count:
        return 0
    offsets = batch.offsets()
    deltas_ts = batch.timestamp_deltas
    headers = batch.headers
    keys = batch.keys
    values = batch.values
    whole = lo == 0 and batch.size <= min(max_bytes, PIECE_BYTES)
    sizes: list[int] = [] if whole else _value_sizes(values, keys)
    sent = 0
    while lo < count and sent < max_bytes:
        if whole:
            hi = count
        else:
            budget = min(max_bytes - sent, PIECE_BYTES)
            acc, hi = 0, lo
            while hi < count and (hi == lo or acc + sizes[hi] + 24 <= budget):
                acc += sizes[hi] + 24
                hi += 1
        base = offsets[lo]
        span = range(lo, hi)
        if deltas_ts is None:
            ts = None
            base_ts = max_ts = batch.base_timestamp
        else:
            ts = [batch.base_timestamp + deltas_ts[i] for i in span]
            base_ts, max_ts = min(ts), max(ts)
        gaps = batch.offset_deltas is not None
        records = encode_records(
            values if whole else values[lo:hi],
            None if keys is None else (keys if whole else keys[lo:hi]),
            None if headers is None else (headers if whole else headers[lo:hi]),
            ts,
            base_ts,
            [offsets[i] - base for i in span] if gaps else None,
        )
        kind = batch.attributes & CODEC_MASK
        if kind != NONE:
            records = _compress(kind, records)
        data = build_batch(base, records, hi - lo, offsets[hi - 1] - base, base_ts, max_ts, attributes=kind)
        out.append(data)
        sent += len(data)
        lo = hi
    return sent
