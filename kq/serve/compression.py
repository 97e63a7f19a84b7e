"""Record batch compression, both ways: the codecs of a v2 batch's records.

Inflating a produced batch is bounded: each codec's library inflates a piece
at a time and is never asked for more than ``MAX_DECOMPRESSED_BYTES``, so a
small bomb costs the limit, not its claim. Deflating for Fetch uses the
library's encoders (``kafka.codec``), as its own batches do.
"""

from __future__ import annotations

import struct

from kafka import codec

CODEC_MASK = 0x07
NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
# A decompressed batch may not grow past this (a small zstd bomb would
# otherwise cost gigabytes); kq's own batches are at most 64 MiB.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024


class InvalidBatch(ValueError):
    """Bytes that are not a well-formed v2 record batch (Kafka's CORRUPT_MESSAGE)."""


class UnsupportedBatch(ValueError):
    """A well-formed batch kq does not take (old magic, transactions, control batches)."""


def decompress(kind: int, data: memoryview) -> bytes:
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


def _too_large(limit: int) -> InvalidBatch:
    return InvalidBatch(f"a batch decompresses to more than {limit} bytes")


def _gunzip(data, limit: int) -> bytes:
    import zlib

    def member():  # one gzip member
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return inflater, lambda rest, room: inflater.decompress(rest, room)

    return _inflate_members(data, limit, member, "gzip")


def _unlz4(data, limit: int) -> bytes:
    import lz4.frame

    def member():  # one lz4 frame
        inflater = lz4.frame.LZ4FrameDecompressor()
        return inflater, lambda rest, room: inflater.decompress(rest, max_length=room)

    return _inflate_members(data, limit, member, "lz4")


def _inflate_members(data, limit: int, member, name: str) -> bytes:
    """Members (gzip) or frames (lz4) one after another, each inflated no further than ``limit`` allows.

    ``member()`` gives a fresh decompressor and its call ``(bytes, most) -> bytes``;
    the decompressor says whether its member ended (``eof``) and what follows it (``unused_data``).
    """
    out = bytearray()
    rest = bytes(data)
    while rest:
        inflater, inflate = member()
        out += inflate(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise InvalidBatch(f"the {name} records end early")
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
