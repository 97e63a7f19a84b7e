"""Record batches: the unit kq writes, checksums and reads (docs/FORMAT.md).

A batch is a fixed 46-byte big-endian header followed by one msgpack array
that stores the records column by column, so that a batch of 10,000 values is
packed and unpacked by one msgpack call rather than 10,000 Python steps.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import itemgetter
from typing import NamedTuple, Protocol

import msgpack

from ..errors import CorruptLog, MessageTooLarge
from .compression import DecompressError, compress, decompress

# The last byte of the magic is the batch format version.
MAGIC = b"KQB\x01"
# magic, crc32, length, base_offset, last_offset_delta, record_count,
# base_timestamp, max_timestamp, attributes
HEADER = struct.Struct(">4sIIqIIqqH")
HEADER_SIZE = HEADER.size  # 46
PREFIX_SIZE = 12  # magic + crc + length: `length` counts the bytes after these
CRC_START = 8  # the checksum covers the length field, the header and the payload
MIN_LENGTH = HEADER_SIZE - PREFIX_SIZE + 1  # a payload is at least one byte
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = MAX_BATCH_BYTES - (HEADER_SIZE - PREFIX_SIZE)  # a payload, uncompressed, at most
# Offsets are signed 64-bit, as in Kafka. The largest is reserved for the end
# offset, the offset after a full partition's last record (it is packed as the
# next batch's base offset and committed), so a record's is at most MAX_OFFSET - 1.
MAX_OFFSET = 2**63 - 1
# The header's attributes: the low three bits name the Kafka compression codec
# the records arrived in through kq serve (0 none, 1 gzip, 2 snappy, 3 lz4,
# 4 zstd), so that it serves them so compressed again, as Kafka keeps a
# producer's codec. Bits 3-5 name the codec the stored payload is compressed
# with, numbered alike (format 3; kq.engine.compression). Bits 6-7 are issue
# 25's (transactions); the others are 0.
CODEC_MASK = 0x07
STORED_CODEC_SHIFT = 3
STORED_CODEC_MASK = 0x07 << STORED_CODEC_SHIFT
# Bit 6: a transactional batch (docs/FORMAT.md, "Transactions"): its payload has a
# sixth element, [producer_id, producer_epoch], and a read_committed reader shows its
# records only once its transaction committed. Bit 7: a control batch, one record
# that is a commit or abort marker of a producer's transaction (bit 6 is set too, as
# in Kafka). Bits 3-5 belong to the stored payload's codec (issue 23).
TRANSACTIONAL = 0x40
CONTROL = 0x80
# A control record's key is Kafka's: int16 version 0, int16 type (0 abort, 1 commit);
# its value Kafka's EndTransactionMarker: int16 version 0, int32 coordinator epoch 0.
ABORT_KEY = b"\x00\x00\x00\x00"
COMMIT_KEY = b"\x00\x00\x00\x01"
MARKER_VALUE = b"\x00\x00\x00\x00\x00\x00"
NO_PRODUCER = -1

# What ``check`` makes of the bytes at a position:
OK = 0  # a whole, valid batch
INCOMPLETE = 1  # too few bytes yet: a batch being written, or a torn write
INVALID = 2  # not a batch (bad magic, impossible length): torn garbage or damage
DAMAGED = 3  # a whole batch (every byte its length claims is there) that fails its checksum or holds impossible offsets


class BatchHeader(NamedTuple):
    """The fixed header of a batch, field by field (docs/FORMAT.md, "Batches")."""

    magic: bytes
    crc: int
    length: int  # bytes after magic, crc and length
    base_offset: int
    last_offset_delta: int
    record_count: int
    base_timestamp: int
    max_timestamp: int
    attributes: int

    @property
    def size(self) -> int:
        """The whole batch's size in bytes, header included."""
        return PREFIX_SIZE + self.length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1


class Record(NamedTuple):
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # a header's value may be null, as in Kafka


class Payload(NamedTuple):
    """A batch's records packed, before the batch is given its offset."""

    data: bytes  # the msgpack payload
    count: int  # type: ignore[assignment]  # (a field, where tuple has a method of that name)
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    # Some header value is null: the data directory must be format 2 (kq.engine.datadir.NULL_HEADER_FORMAT)
    # before the batch is written, so that an older kq refuses the directory instead of the batch.
    null_header_values: bool = False
    attributes: int = 0
    # The codec ``data`` is compressed with (kq.engine.compression; 0: none): the data
    # directory must be format 3 (kq.engine.datadir.COMPRESSED_FORMAT) before it is written.
    codec: int = 0
    producer_id: int = NO_PRODUCER  # a transactional batch's producer (attributes bit 6), else -1
    producer_epoch: int = NO_PRODUCER


class TxnMarker(NamedTuple):
    """What a control batch says: producer ``producer_id``'s transaction on this partition,
    whose records are at offsets >= ``first_offset`` (and below the marker), committed or aborted."""

    producer_id: int
    producer_epoch: int
    commit: bool
    first_offset: int


def pack(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[Sequence[tuple[str, bytes | None]] | None] | None = None,
    timestamp: int = 0,
    timestamps: Sequence[int] | None = None,
    offset_deltas: Sequence[int] | None = None,
    attributes: int = 0,
    compression: int = 0,
    producer: tuple[int, int] | None = None,
    marker_first_offset: int | None = None,
) -> Payload:
    """Pack records into a payload. ``timestamps`` (per record) overrides ``timestamp``.

    ``offset_deltas`` is only for batches rewritten by compaction, whose
    offsets have gaps; without it the offsets are base_offset, base_offset+1, ...
    ``compression`` is the codec the payload is compressed with, whole (0: none).
    Packing needs no offset, so a writer does it before taking its lock.
    ``producer`` = (producer id, epoch) makes a transactional batch (attributes
    bit 6); with ``marker_first_offset`` too it is a control batch (``control_payload``).
    """
    count = len(values)
    if count == 0:
        raise ValueError("a batch holds at least one record")
    if timestamps is not None:
        base_ts = min(timestamps)
        max_ts = max(timestamps)
        ts_deltas = None if base_ts == max_ts else [t - base_ts for t in timestamps]
    else:
        base_ts = max_ts = timestamp
        ts_deltas = None
    if keys is not None and not any(k is not None for k in keys):
        keys = None
    if headers is not None and not any(headers):
        headers = None
    null_header_values = headers is not None and _has_null_value(headers)
    last_delta = count - 1 if offset_deltas is None else offset_deltas[-1]
    columns: list = [values, keys, headers, ts_deltas, offset_deltas]
    pid = epoch = NO_PRODUCER
    if producer is not None:
        pid, epoch = producer
        if not (0 <= pid < 2**63 and 0 <= epoch < 2**15):
            raise ValueError(f"producer id {pid} / epoch {epoch} out of range")
        attributes |= TRANSACTIONAL
        if marker_first_offset is None:
            columns.append([pid, epoch])
        else:
            attributes |= CONTROL
            columns.append([pid, epoch, marker_first_offset])
    data = msgpack.packb(columns, use_bin_type=True)
    length = HEADER_SIZE - PREFIX_SIZE + len(data)
    if length > MAX_BATCH_BYTES:
        raise MessageTooLarge(
            f"a batch of {count} record(s) encodes to {length} bytes, more than the maximum of {MAX_BATCH_BYTES}"
        )
    if compression:
        # The limit above is on the uncompressed payload, so a reader's inflate is bounded by it.
        data = compress(compression, data)
        attributes = (attributes & ~STORED_CODEC_MASK) | (compression << STORED_CODEC_SHIFT)
    return Payload(data, count, last_delta, base_ts, max_ts, null_header_values, attributes, compression, pid, epoch)


def control_payload(producer_id: int, producer_epoch: int, commit: bool, first_offset: int, timestamp: int) -> Payload:
    """A control batch: the commit or abort marker of a producer's transaction on one partition.

    ``first_offset`` is where the transaction's records may start in the
    partition (the end offset when it joined the transaction): with the
    marker's own offset it bounds them, so the aborted-transaction index can
    be rebuilt from the markers alone.
    """
    return pack(
        [MARKER_VALUE],
        keys=[COMMIT_KEY if commit else ABORT_KEY],
        timestamp=timestamp,
        producer=(producer_id, producer_epoch),
        marker_first_offset=first_offset,
    )


def marker_of(batch: RecordBatch) -> TxnMarker | None:
    """The marker a decoded control batch holds (None for any other batch)."""
    if not batch.attributes & CONTROL or batch.marker_first_offset is None:
        return None
    key = batch.keys[0] if batch.keys else None
    return TxnMarker(batch.producer_id, batch.producer_epoch, key == COMMIT_KEY, batch.marker_first_offset)


def _has_null_value(headers) -> bool:
    # (a plain loop: about twice as fast as any() over a generator here)
    for pairs in headers:
        if pairs:
            for pair in pairs:
                if pair[1] is None:
                    return True
    return False


def frame(base_offset: int, payload: Payload) -> bytes:
    """The 46-byte header that makes ``payload`` the batch at ``base_offset``.

    The batch is the header followed by ``payload.data``; writing the two
    without joining them saves a copy of the payload.
    """
    fields = struct.pack(
        ">IqIIqqH",
        HEADER_SIZE - PREFIX_SIZE + len(payload.data),
        base_offset,
        payload.last_offset_delta,
        payload.count,
        payload.base_timestamp,
        payload.max_timestamp,
        payload.attributes,
    )
    return MAGIC + struct.pack(">I", zlib.crc32(payload.data, zlib.crc32(fields))) + fields


def encode(base_offset: int, values: Sequence[bytes | None], **columns) -> bytes:
    """One whole batch as bytes (``columns`` as for ``pack``)."""
    payload = pack(values, **columns)
    return frame(base_offset, payload) + payload.data


def checksum_matches(buf, pos: int, size: int, crc: int) -> bool:
    """Whether the batch of ``size`` bytes at ``buf[pos]`` has the checksum ``crc``."""
    return zlib.crc32(memoryview(buf)[pos + CRC_START : pos + size]) == crc


def check(buf, pos: int, end: int, checksum: bool = True) -> tuple[int, BatchHeader | str | None]:
    """Classify the bytes of ``buf[pos:end]`` as the start of a batch.

    Returns (OK, header), (INCOMPLETE, None) when more bytes are needed,
    (INVALID, reason) for bytes that are no batch, or (DAMAGED, reason) for a
    whole batch that fails its checksum or names impossible offsets.
    ``buf`` may be bytes, bytearray or memoryview. With ``checksum=False``
    only the framing is checked: the caller must check the checksum itself
    (``checksum_matches``) before trusting the batch.
    """
    if end - pos < PREFIX_SIZE:
        return INCOMPLETE, None
    if buf[pos : pos + 4] != MAGIC:
        return INVALID, "bad magic"
    magic, crc, length = struct.unpack_from(">4sII", buf, pos)
    if length < MIN_LENGTH or length > MAX_BATCH_BYTES:
        # A torn write leaves its length field whole or absent, never wrong:
        # with its header all there, this is a damaged batch, not torn bytes.
        return (DAMAGED if end - pos >= HEADER_SIZE else INVALID), f"implausible batch length {length}"
    total = PREFIX_SIZE + length
    if pos + total > end:
        return INCOMPLETE, None
    if checksum and not checksum_matches(buf, pos, total, crc):
        return DAMAGED, "checksum mismatch"
    header = BatchHeader._make(HEADER.unpack_from(buf, pos))
    if header.base_offset < 0 or header.base_offset + header.last_offset_delta >= MAX_OFFSET:
        return DAMAGED, f"impossible offsets {header.base_offset}..{header.base_offset + header.last_offset_delta}"
    return OK, header


def batch_size(header: BatchHeader) -> int:
    return PREFIX_SIZE + header.length


def header_at(buf, pos: int) -> BatchHeader:
    """The header fields at ``pos`` as they stand, checksum unchecked (to describe damage)."""
    return BatchHeader._make(HEADER.unpack_from(buf, pos))


def _reject_ext(code, data):
    raise ValueError(f"unknown msgpack extension type {code}")


class Batch(Protocol):
    """Records as readers hand them out and writers (kq.formats, kq.runner) take them: a
    RecordBatch, or another place's records in its shape (kq.backends.kafka_reader)."""

    count: int
    base_offset: int

    @property
    def next_offset(self) -> int: ...

    @property
    def values(self) -> Sequence[bytes | None]: ...

    def offsets(self) -> Sequence[int]: ...

    def offset_at(self, index: int) -> int: ...

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[Record]: ...


class RecordBatch:
    """A decoded batch, kept in columns; ``records()`` yields ``Record``s."""

    __slots__ = (
        "position",
        "size",
        "base_offset",
        "last_offset_delta",
        "count",
        "base_timestamp",
        "max_timestamp",
        "values",
        "keys",
        "headers",
        "timestamp_deltas",
        "offset_deltas",
        "attributes",
        "payload_size",
        "producer_id",
        "producer_epoch",
        "marker_first_offset",
        "deferred",
    )
    position: int
    size: int
    base_offset: int
    last_offset_delta: int
    count: int
    base_timestamp: int
    max_timestamp: int
    values: list  # (None while ``deferred``, in the batches of a decode with ``defer_values_if``)
    keys: list | None
    headers: list | None
    timestamp_deltas: list | None
    offset_deltas: list | None
    attributes: int
    payload_size: int  # bytes of the msgpack payload, inflated: what decoding it took in
    producer_id: int  # a transactional batch's producer (attributes bit 6), else -1
    producer_epoch: int
    marker_first_offset: int | None  # a control batch's: see ``control_payload``
    # Values not decoded yet (decode's ``defer_values_if``; ``values`` is None until ``load_values``):
    # the payload (inflated, or copied out of the reader's buffer), where its values column starts
    # and ends, and the file to name if they do not decode.
    deferred: tuple[bytes, int, int, str] | None

    @property
    def transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def control(self) -> bool:
        return bool(self.attributes & CONTROL)

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    def offsets(self) -> Sequence[int]:
        if self.offset_deltas is None:
            return range(self.base_offset, self.base_offset + self.count)
        base = self.base_offset
        return [base + d for d in self.offset_deltas]

    def timestamps(self) -> Sequence[int]:
        if self.timestamp_deltas is None:
            return [self.base_timestamp] * self.count
        base = self.base_timestamp
        return [base + d for d in self.timestamp_deltas]

    def offset_at(self, index: int) -> int:
        """Offset of record ``index``; ``next_offset`` for index == count."""
        if index >= self.count:
            return self.next_offset
        if self.offset_deltas is None:
            return self.base_offset + index
        return self.base_offset + self.offset_deltas[index]

    def index_of(self, offset: int) -> int:
        """Index of the first record whose offset is >= ``offset``."""
        if self.offset_deltas is None:
            return min(max(offset - self.base_offset, 0), self.count)
        import bisect

        return bisect.bisect_left(self.offset_deltas, offset - self.base_offset)

    def load_values(self) -> None:
        """Decode the values a ``defer_values_if`` decode left undecoded (checked as decode checks them)."""
        if self.deferred is None:
            return
        data, start, stop, path = self.deferred
        values = _unpack(memoryview(data)[start:stop], path, self.position)
        if type(values) is not list or len(values) != self.count:
            raise CorruptLog(path, self.position, "batch columns do not match its header")
        if not _values_well_typed(values):
            raise CorruptLog(path, self.position, "batch columns hold values of the wrong type")
        self.values, self.deferred = values, None

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[Record]:
        stop = self.count if stop is None else stop
        self.load_values()
        offsets = self.offsets()
        stamps = self.timestamps()
        keys = self.keys
        headers = self.headers
        for i in range(start, stop):
            yield Record(
                offsets[i],
                stamps[i],
                None if keys is None else keys[i],
                self.values[i],
                [] if headers is None or headers[i] is None else [tuple(h) for h in headers[i]],
            )


_BIN_OR_NIL = frozenset((bytes, type(None)))
_INT = frozenset((int,))


def _values_well_typed(values: list) -> bool:
    return set(map(type, values)) <= _BIN_OR_NIL


_LIST_OR_NIL = frozenset((list, type(None)))
_LIST = frozenset((list,))
_STR = frozenset((str,))
_TWO = frozenset((2,))
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def _headers_well_typed(headers: list) -> bool:
    """Is each record's headers None or a list of [str, bytes-or-None] pairs? Checked a column at a
    time by builtins, in C: records with headers of their own each (a delivery time) are many."""
    if not set(map(type, headers)) <= _LIST_OR_NIL:
        return False
    pairs = list(chain.from_iterable(filter(None, headers)))
    return (
        not pairs
        or set(map(type, pairs)) <= _LIST
        and set(map(len, pairs)) <= _TWO
        and set(map(type, map(_FIRST, pairs))) <= _STR
        and set(map(type, map(_SECOND, pairs))) <= _BIN_OR_NIL
    )


def _well_typed(values, keys, headers, ts_deltas, offset_deltas, base_ts: int, max_ts: int) -> bool:
    """Do the columns hold what FORMAT.md says, element by element?

    ``values`` None: not decoded (``RecordBatch.load_values`` checks them).
    A payload can pass its checksum and still be wrong (a crafted file, a
    writer's bug): an int where a value's bytes belong would otherwise reach
    readers as a crash far from here, not as a corrupt-log error. Offsets must
    rise (readers bisect them) and the header's max_timestamp must be the
    records' largest (timestamp seeks skip batches by it).
    """
    if values is not None and not _values_well_typed(values):
        return False
    if keys is not None and not set(map(type, keys)) <= _BIN_OR_NIL:
        return False
    if headers is not None and not _headers_well_typed(
        headers[:1] if headers.count(headers[0]) == len(headers) else headers
    ):
        # (one produce gives every record the same headers: compared in C, the first is checked for all)
        return False
    if ts_deltas is None:
        if base_ts != max_ts:  # every record has base_timestamp, which is then the largest
            return False
    elif (
        not set(map(type, ts_deltas)) <= _INT
        or base_ts + max(ts_deltas) != max_ts
        or base_ts + min(ts_deltas) < -(2**63)
    ):
        return False
    if offset_deltas is not None and (
        not set(map(type, offset_deltas)) <= _INT
        or offset_deltas[0] < 0
        or any(a >= b for a, b in zip(offset_deltas, offset_deltas[1:]))
    ):
        return False
    return True


def stored_codec(attributes: int) -> int:
    """The codec a batch's payload is stored compressed with (0: none)."""
    return (attributes & STORED_CODEC_MASK) >> STORED_CODEC_SHIFT


def inflate(data, attributes: int, path: str = "<buffer>", pos: int = 0) -> bytes:
    """The msgpack payload of a compressed batch: the one place kq's stored batches are inflated.

    Bounded by the batch limit; bytes that do not inflate are damage (CorruptLog), as a
    bad checksum is; a codec whose library is missing is CodecUnavailable, which is not.
    """
    try:
        return decompress(stored_codec(attributes), data, MAX_PAYLOAD_BYTES)
    except DecompressError as exc:
        raise CorruptLog(path, pos, f"batch payload does not decompress ({exc})") from None


_UNPACK_OPTIONS = {"raw": False, "strict_map_key": True, "ext_hook": _reject_ext}
# msgpack's errors for bytes that are no msgpack, or not of the shape asked for
_UNPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, msgpack.OutOfData)


def _unpack(data, path: str, pos: int):
    """One msgpack object that is all of ``data``, or CorruptLog."""
    try:
        return msgpack.unpackb(data, **_UNPACK_OPTIONS)
    except _UNPACK_ERRORS as exc:
        raise CorruptLog(path, pos, f"batch payload does not decode ({exc})") from None


def _column_spans(data) -> list[tuple[int, int]]:
    """Where each of the payload's columns (five, or six) starts and ends, found by skipping them (msgpack checks
    their framing, but builds no object); ValueError if the payload is no array of them."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1), **_UNPACK_OPTIONS)
    unpacker.feed(data)
    columns = unpacker.read_array_header()
    if columns not in (5, 6):
        raise ValueError("not an array of five columns (six in a transactional batch)")
    spans = []
    for _ in range(columns):
        start = unpacker.tell()
        unpacker.skip()
        spans.append((start, unpacker.tell()))
    if unpacker.tell() != len(data):
        raise ValueError("bytes after the columns")
    return spans


def _array_length(column) -> int | None:
    """The length of the msgpack array ``column`` (the bytes of one whole object); None if it is no array."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(column), 1), **_UNPACK_OPTIONS)
    unpacker.feed(column[:5])  # an array's header is at most five bytes
    try:
        return unpacker.read_array_header()
    except (ValueError, msgpack.OutOfData):
        return None


def _unpack_column(column, count: int):
    """A decoded column; an array of ``count`` byte-identical items (one produce's headers, most
    often) is decoded once and repeated, its bytes compared in C."""
    if count > 1 and _array_length(column) == count:
        unpacker = msgpack.Unpacker(max_buffer_size=len(column), **_UNPACK_OPTIONS)
        unpacker.feed(column)
        if unpacker.read_array_header() == count:
            start = unpacker.tell()
            unpacker.skip()
            item = bytes(column[start : unpacker.tell()])
            size = len(item)
            if (
                start + size * count == len(column)
                and column[start + size : start + 2 * size] == item  # (most columns fail here, at once)
                and column[start:] == item * count
            ):
                return [msgpack.unpackb(item, **_UNPACK_OPTIONS)] * count
    return msgpack.unpackb(column, **_UNPACK_OPTIONS)


def decode(
    buf, pos: int, header: BatchHeader, path: str = "<buffer>", defer_values_if: bytes | None = None
) -> RecordBatch:
    """Decode a batch that ``check`` accepted at ``pos``.

    ``defer_values_if``: if the (inflated) payload holds these bytes, its values
    column is only checked for its length, not decoded: a reader that wants the
    other columns first (a share group reads each record's delivery time) calls
    ``load_values`` for the values. Every other check is the same.
    """
    _, _, length, base, last_delta, count, base_ts, max_ts, attributes = header
    start = pos + HEADER_SIZE
    stop = pos + PREFIX_SIZE + length
    data: bytes | memoryview = memoryview(buf)[start:stop]
    if attributes & STORED_CODEC_MASK:
        data = inflate(data, attributes, path, pos)
    deferred = None
    try:
        spans = _column_spans(data) if defer_values_if is not None else []
        if spans and bytes(memoryview(data)[slice(*spans[2])]).find(defer_values_if or b"") >= 0:  # in the headers
            if isinstance(data, memoryview):
                data = bytes(data)  # the reader's buffer is reused: the values decode later from a copy
            view = memoryview(data)
            values_length = _array_length(view[slice(*spans[0])])
            values = None
            keys, headers, ts_deltas, offset_deltas = (_unpack_column(view[lo:hi], count) for lo, hi in spans[1:5])
            producer = None
            if len(spans) == 6:
                producer = msgpack.unpackb(view[slice(*spans[5])], **_UNPACK_OPTIONS)
                if producer is None:  # (a sixth column must be the producer, as below)
                    raise ValueError("too many values to unpack (expected 5)")
            deferred = (data, *spans[0], path)
        else:
            columns = msgpack.unpackb(data, **_UNPACK_OPTIONS)
            if type(columns) is not list:
                raise ValueError("not an array")
            producer = columns[5] if len(columns) == 6 else None
            values, keys, headers, ts_deltas, offset_deltas = columns[:5] if producer is not None else columns
            values_length = len(values) if type(values) is list else None
    except _UNPACK_ERRORS as exc:
        raise CorruptLog(path, pos, f"batch payload does not decode ({exc})") from None
    if (
        values_length is None
        or count == 0
        or values_length != count
        or not all(
            c is None or (type(c) is list and len(c) == count) for c in (keys, headers, ts_deltas, offset_deltas)
        )
        or (offset_deltas is not None and offset_deltas[-1] != last_delta)
        or (offset_deltas is None and last_delta != count - 1)
    ):
        raise CorruptLog(path, pos, "batch columns do not match its header")
    if not _well_typed(values, keys, headers, ts_deltas, offset_deltas, base_ts, max_ts):
        raise CorruptLog(path, pos, "batch columns hold values of the wrong type")
    pid = epoch = NO_PRODUCER
    first = None
    if attributes & TRANSACTIONAL or producer is not None:
        control = bool(attributes & CONTROL)
        if (
            not attributes & TRANSACTIONAL
            or type(producer) is not list
            or len(producer) != (3 if control else 2)
            or not all(type(x) is int for x in producer)
            or not 0 <= producer[0] < 2**63
            or not 0 <= producer[1] < 2**15
            or (control and (count != 1 or not 0 <= producer[2] <= base))
        ):
            raise CorruptLog(path, pos, "transactional batch without a valid producer id and epoch")
        pid, epoch = producer[0], producer[1]
        first = producer[2] if control else None
    elif attributes & CONTROL:
        raise CorruptLog(path, pos, "control batch that is not transactional")
    batch = RecordBatch()
    batch.position = pos
    batch.size = PREFIX_SIZE + length
    batch.base_offset = base
    batch.last_offset_delta = last_delta
    batch.count = count
    batch.base_timestamp = base_ts
    batch.max_timestamp = max_ts
    batch.values = values  # type: ignore[assignment]  # (None while deferred: read after load_values)
    batch.keys = keys
    batch.headers = headers
    batch.timestamp_deltas = ts_deltas
    batch.offset_deltas = offset_deltas
    batch.attributes = attributes
    batch.payload_size = len(data)
    batch.producer_id = pid
    batch.producer_epoch = epoch
    batch.marker_first_offset = first
    batch.deferred = deferred
    return batch
