"""Compression codecs of batch payloads, both ways, with a bounded inflate.

The numbering is Kafka's (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd), used in
the attributes of kq's batches (docs/FORMAT.md) and of Kafka's. Each codec's
library is imported only when a batch needs it, so that start-up pays for
none; gzip is zlib, the others are the ``compression`` extra (zstandard, lz4,
python-snappy), and a missing one is a ``CodecUnavailable`` naming it.

Inflating is bounded: each library inflates a piece at a time and is never
asked for more than ``MAX_DECOMPRESSED_BYTES``, so a small bomb costs the
limit, not its claim. kq serve inflates produced batches here too.
"""

from __future__ import annotations

import struct
import threading

from ..errors import CodecUnavailable

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
CODEC_IDS = {name: kind for kind, name in CODEC_NAMES.items()}
# A decompressed batch may not grow past this: kq's batches are at most 64 MiB
# (kq.engine.batch.MAX_BATCH_BYTES) before compression, and a small zstd bomb
# would otherwise cost gigabytes.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
ZSTD_LEVEL = 3  # zstd's own default, and Kafka's (compression.zstd.level)
GZIP_LEVEL = 6  # zlib's default, and Kafka's (compression.gzip.level -1)
_PACKAGES = {ZSTD: ("zstandard", "zstandard"), LZ4: ("lz4.frame", "lz4"), SNAPPY: ("snappy", "python-snappy")}
# Kafka's JVM client frames snappy the way xerial's snappy-java does: this header, then sized blocks.
XERIAL_HEADER = b"\x82SNAPPY\x00"


class DecompressError(ValueError):
    """Compressed bytes that do not inflate (damaged), or inflate past the limit."""


def _library(kind: int):
    """The codec's module, imported now (CodecUnavailable if it is not installed)."""
    module, package = _PACKAGES[kind]
    try:
        import importlib

        return importlib.import_module(module)
    except ImportError:
        raise CodecUnavailable(CODEC_NAMES[kind], package) from None


def check_available(kind: int) -> None:
    """Raise CodecUnavailable now if ``kind`` could not be used (a topic set to it, say)."""
    if kind in _PACKAGES:
        _library(kind)


_local = threading.local()  # compressor objects are not thread-safe; one per thread


def compress(kind: int, data) -> bytes:
    """``data`` compressed whole with codec ``kind`` (kq's batch payloads)."""
    if kind == NONE:
        return bytes(data)
    if kind == ZSTD:
        compressor = getattr(_local, "zstd", None)
        if compressor is None:
            compressor = _local.zstd = _library(ZSTD).ZstdCompressor(level=ZSTD_LEVEL)
        return compressor.compress(data)
    if kind == LZ4:
        return _library(LZ4).compress(data)
    if kind == GZIP:
        import zlib

        deflater = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return deflater.compress(data) + deflater.flush()
    if kind == SNAPPY:
        return _library(SNAPPY).compress(bytes(data))
    raise ValueError(f"unknown compression codec {kind}")


def decompress(kind: int, data, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """What ``data`` inflates to, refused (DecompressError) once it passes ``limit`` bytes.

    CodecUnavailable if the codec's library is missing (that is not damage).
    """
    if kind not in CODEC_NAMES or kind == NONE:
        raise DecompressError(f"unknown compression codec {kind}")
    try:
        if kind == GZIP:
            out = _gunzip(data, limit)
        elif kind == SNAPPY:
            out = _unsnappy(data, limit)
        elif kind == LZ4:
            out = _unlz4(data, limit)
        else:
            out = _unzstd(data, limit)
    except (DecompressError, CodecUnavailable):
        raise
    except Exception as exc:  # each library has its own error for damaged input
        raise DecompressError(f"the {CODEC_NAMES[kind]} bytes do not decompress: {exc}") from None
    if len(out) > limit:
        raise _too_large(limit)
    return out


def decompressed_size(kind: int, data) -> int | None:
    """The size ``data`` says it inflates to, read from its frame without inflating (None: not said)."""
    try:
        if kind == ZSTD:
            size = _library(ZSTD).frame_content_size(bytes(data[:18]))
            return size if size >= 0 else None
        if kind == LZ4:
            size = _library(LZ4).get_frame_info(bytes(data[:19]))["content_size"]
            return size or None
        if kind == GZIP:  # ISIZE: the length mod 2**32 (a batch is far smaller), of a single member
            return struct.unpack_from("<I", data, len(data) - 4)[0] if len(data) >= 18 else None
        if kind == SNAPPY and not bytes(data[:8]) == XERIAL_HEADER:
            return _snappy_size(data)
    except (CodecUnavailable, DecompressError):
        raise
    except Exception:
        return None
    return None


def _too_large(limit: int) -> DecompressError:
    return DecompressError(f"a batch decompresses to more than {limit} bytes")


def _gunzip(data, limit: int) -> bytes:
    import zlib

    def member():  # one gzip member
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return inflater, lambda rest, room: inflater.decompress(rest, room)

    return _inflate_members(data, limit, member, "gzip")


def _unlz4(data, limit: int) -> bytes:
    frame = _library(LZ4)

    def member():  # one lz4 frame
        inflater = frame.LZ4FrameDecompressor()
        return inflater, lambda rest, room: inflater.decompress(rest, max_length=room)

    return _inflate_members(data, limit, member, "lz4")


def _inflate_members(data, limit: int, member, name: str) -> bytes:
    """Members (gzip) or frames (lz4) one after another, each inflated no further than ``limit`` allows.

    ``member()`` gives a fresh decompressor and its call ``(bytes, most) -> bytes``;
    the decompressor says whether its member ended (``eof``) and what follows it (``unused_data``).
    """
    out = bytearray()
    rest = bytes(data)
    if not rest:
        raise DecompressError(f"no {name} bytes")
    while rest:
        inflater, inflate = member()
        out += inflate(rest, limit + 1 - len(out))
        if len(out) > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise DecompressError(f"the {name} bytes end early")
        rest = inflater.unused_data
    return bytes(out)


def _unzstd(data, limit: int) -> bytes:
    import io

    zstandard = _library(ZSTD)
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        out = reader.read(limit + 1)
    if len(out) > limit:
        raise _too_large(limit)
    if not out and len(data):
        # (a stream reader reads nothing from a frame cut short rather than fail)
        zstandard.ZstdDecompressor().decompressobj().decompress(bytes(data))
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
    raise DecompressError("a snappy block has no length")


def _unsnappy(data, limit: int) -> bytes:
    """Snappy as kq stores it (one raw block) or as Kafka's JVM client sends it (xerial-framed blocks).

    A raw block's preamble says how large it inflates to; each is checked
    against what is left of the limit before the library inflates it.
    """
    snappy = _library(SNAPPY)
    raw = bytes(data)
    if not (len(raw) > 16 and raw[:8] == XERIAL_HEADER):
        blocks = [raw]
    else:
        blocks = []
        pos = 16
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise DecompressError("a snappy block length runs past the batch")
            (size,) = struct.unpack_from(">i", raw, pos)
            if size < 0 or pos + 4 + size > len(raw):
                raise DecompressError(f"a snappy block of {size} bytes does not fit the batch")
            blocks.append(raw[pos + 4 : pos + 4 + size])
            pos += 4 + size
    out = bytearray()
    for block in blocks:
        if len(out) + _snappy_size(block) > limit:
            raise _too_large(limit)
        out += snappy.decompress(block)
    return bytes(out)
