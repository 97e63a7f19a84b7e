"""kq's record batches as Kafka record batches (magic v2), for Fetch: the hot path out of kq serve.

kafka-python's ``kafka.record`` builds v2 batches one record object at a
time (about 350k records/s for 100 B values), below what ``kq serve`` must
carry. The batch layout comes from ``records`` (the decoding side), the
codecs from ``compression`` and the CRC32C from the C package ``crc32c``;
what is kq's own is the encoding: varints looked up in a precomputed table
and each record's pieces joined once. A batch goes out compressed with the
codec its producer used.

``tests/test_serve_records.py`` checks it against ``kafka.record`` for every
codec, and with hypothesis for arbitrary records.
"""

from __future__ import annotations

import struct

from crc32c import crc32c

from .compression import CODEC_MASK, NONE, compress
from .records import (
    CONTROL_BIT,
    CRC_POSITION,
    CRC_START,
    HEADER,
    HEADER_SIZE,
    LENGTH_END,
    NO_PRODUCER_ID,
    TRANSACTIONAL_BIT,
)
from .storage import CONTROL_BATCH as KQ_CONTROL
from .storage import TRANSACTIONAL_BATCH as KQ_TRANSACTIONAL


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


def _transaction_fields(batch) -> tuple[int, int, int]:
    """(Kafka attribute bits, producer id, epoch) of a kq batch: transactional and control batches keep theirs.

    A read_committed client drops an aborted transaction's records by their
    producer id, and steps over the control batch (its marker) that ends it.
    """
    if not batch.attributes & KQ_TRANSACTIONAL:
        return 0, NO_PRODUCER_ID, -1
    bits = TRANSACTIONAL_BIT | (CONTROL_BIT if batch.attributes & KQ_CONTROL else 0)
    return bits, batch.producer_id, batch.producer_epoch


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
    kind = batch.attributes & CODEC_MASK
    txn_bits, producer_id, producer_epoch = _transaction_fields(batch)
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
        if kind != NONE:
            records = compress(kind, records)
        data = build_batch(
            base,
            records,
            hi - lo,
            offsets[hi - 1] - base,
            base_ts,
            max_ts,
            attributes=kind | txn_bits,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
        )
        out.append(data)
        sent += len(data)
        lo = hi
    return sent
