"""Record batch compression, both ways: the codecs of a v2 batch's records.

Inflating a produced batch is bounded, by the engine's one inflate
(kq.engine.compression), which kq's own compressed batches use too. Deflating for Fetch uses the
library's encoders (``kafka.codec``), as its own batches do.
"""

from __future__ import annotations

from kafka import codec

from ..engine.compression import (
    CODEC_NAMES,
    GZIP,
    LZ4,
    MAX_DECOMPRESSED_BYTES,
    NONE,
    SNAPPY,
    ZSTD,
    DecompressError,
)
from ..engine.compression import decompress as engine_decompress

CODEC_MASK = 0x07
__all__ = ["CODEC_MASK", "CODEC_NAMES", "GZIP", "LZ4", "MAX_DECOMPRESSED_BYTES", "NONE", "SNAPPY", "ZSTD"]


class InvalidBatch(ValueError):
    """Bytes that are not a well-formed v2 record batch (Kafka's CORRUPT_MESSAGE)."""


class UnsupportedBatch(ValueError):
    """A well-formed batch kq does not take (old magic, transactions, control batches)."""


def decompress(kind: int, data: memoryview) -> bytes:
    """The records of a compressed batch, refused once they pass ``MAX_DECOMPRESSED_BYTES``.

    The engine's bounded inflate (kq.engine.compression), the one kq's own
    compressed batches are read through: a small bomb costs the limit, not its claim.
    """
    if kind not in CODEC_NAMES or kind == NONE:
        raise UnsupportedBatch(f"unknown compression codec {kind}")
    try:
        return engine_decompress(kind, data, MAX_DECOMPRESSED_BYTES)
    except DecompressError as exc:
        raise InvalidBatch(str(exc).replace(" bytes do not", " records do not")) from None


def compress(kind: int, data: bytes) -> bytes:
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
