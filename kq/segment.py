"""Segment files: naming, listing, and reading batches from a byte position.

A segment is ``<base offset, 20 digits>.log`` holding batches back to back,
with ``<base offset>.index`` beside it. Reading takes no lock: a reader stops
at the first batch that is incomplete or fails its checksum and reports why,
and the caller decides (with ``classify_damage``) whether that is a torn tail
to wait at or corruption to report.
"""

from __future__ import annotations

import os

from . import batch as batchfmt
from .errors import CorruptLog

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
DIGITS = 20
READ_CHUNK = 4 * 1024 * 1024

# Why a reader stopped before the end of the bytes it could see.
CLEAN = "clean"  # every byte up to the end of the file was a valid batch
DAMAGED = "damaged"  # an incomplete or invalid batch starts at stop_position
LIMIT = "limit"  # the reader's byte limit was reached


def log_name(base_offset: int) -> str:
    return f"{base_offset:0{DIGITS}d}{LOG_SUFFIX}"


def index_name(base_offset: int) -> str:
    return f"{base_offset:0{DIGITS}d}{INDEX_SUFFIX}"


def list_segments(partition_dir: str) -> list[int]:
    """Base offsets of the segments in a partition directory, ascending."""
    bases = []
    for name in os.listdir(partition_dir):
        if len(name) == DIGITS + len(LOG_SUFFIX) and name.endswith(LOG_SUFFIX) and name[:DIGITS].isdigit():
            bases.append(int(name[:DIGITS]))
    bases.sort()
    return bases


class BatchReader:
    """Iterates the valid batches of one open segment file from ``position``.

    After iteration, ``stop`` is CLEAN or DAMAGED and ``stop_position`` is
    the byte position after the last valid batch (where the damage starts).
    """

    def __init__(self, fd: int, path: str, position: int, limit: int | None = None, buffer: bytearray | None = None,
                 checksums: bool = True):
        self.fd = fd
        self.path = path
        self.stop = CLEAN
        self.stop_position = position
        self.reason = ""
        self._limit = limit  # stop (cleanly) after this many bytes of batches
        # A caller's buffer, read into instead of allocating fresh memory per
        # read (fresh pages cost a fault each: a third of a consume's time).
        # It is filled at most once after the first batch is yielded, so the
        # batches yielded stay valid until the caller's next use of it.
        self.buffer = buffer
        self.checksums = checksums  # False: framing only, the caller checks (see batch.check)

    def headers(self):
        """Yield (position, header, buf, buf_position) for each valid batch."""
        fd = self.fd
        pos = self.stop_position
        buf = b""
        buf_pos = pos  # file position of buf[0]
        read_so_far = 0
        check = batchfmt.check
        while True:
            rel = pos - buf_pos
            status, info = check(buf, rel, len(buf), self.checksums)
            if status == batchfmt.OK:
                size = batchfmt.PREFIX_SIZE + info[2]
                yield pos, info, buf, rel
                pos += size
                self.stop_position = pos
                read_so_far += size
                if self._limit is not None and read_so_far >= self._limit:
                    self.stop = LIMIT
                    return
                continue
            if status == batchfmt.INVALID:
                self.stop, self.reason = DAMAGED, info
                return
            # INCOMPLETE: read more, at least the whole batch if its length is known.
            need = READ_CHUNK
            have = len(buf) - rel
            if have >= batchfmt.PREFIX_SIZE:
                need = max(need, batchfmt.PREFIX_SIZE + int.from_bytes(buf[rel + 8 : rel + 12], "big") - have)
            if self.buffer is not None and read_so_far:
                self.stop = LIMIT  # refilling would overwrite the batches yielded
                return
            # Never allocate for bytes the file does not hold: a damaged length
            # field may claim up to MAX_BATCH_BYTES in a file of a few bytes.
            need = max(min(need, os.fstat(fd).st_size - pos - have), 0)
            # Re-read from the batch start rather than concatenating: one copy, not two.
            more = self._read(need + have, pos)
            if len(more) <= have:
                if have:
                    self.stop, self.reason = DAMAGED, "incomplete batch at end of file"
                return
            buf = more
            buf_pos = pos

    def _read(self, size: int, position: int):
        if self.buffer is None:
            return os.pread(self.fd, size, position)
        if len(self.buffer) < size:
            self.buffer = bytearray(size)
        view = memoryview(self.buffer)[: max(size, len(self.buffer))]  # fill it: fewer reads
        return view[: os.preadv(self.fd, [view], position)]


def classify_damage(fd: int, path: str, position: int, later_segment_exists: bool, reason: str) -> None:
    """Raise CorruptLog unless the damage at ``position`` is a torn tail.

    A torn tail is damage that nothing valid follows, in the last segment.
    Damage followed by a valid batch, or in a closed segment, is corruption:
    treating it as a tail would throw away acknowledged data.
    """
    if later_segment_exists:
        raise CorruptLog(path, position, reason + " in a closed segment")
    found = find_valid_batch(fd, position + 1, os.fstat(fd).st_size)
    if found is not None and not _valid_batch_at(fd, position):
        # (A valid batch at ``position`` now means it was being written when
        # the caller looked, and the writer has finished it and started the
        # next since: not damage, and the caller reads it at its next poll.)
        raise CorruptLog(path, position, f"{reason}, followed by a valid batch at byte {found}")


def _valid_batch_at(fd: int, position: int, size: int | None = None) -> bool:
    """Whether a whole, checksum-valid batch starts at ``position`` (reading no further than ``size``)."""
    header = os.pread(fd, batchfmt.PREFIX_SIZE, position)
    if len(header) < batchfmt.PREFIX_SIZE:
        return False
    length = int.from_bytes(header[8:12], "big")
    if not batchfmt.MIN_LENGTH <= length <= batchfmt.MAX_BATCH_BYTES:
        return False
    size = os.fstat(fd).st_size if size is None else size
    whole = os.pread(fd, min(batchfmt.PREFIX_SIZE + length, size - position), position)
    return batchfmt.check(whole, 0, len(whole))[0] == batchfmt.OK


def find_valid_batch(fd: int, start: int, size: int) -> int | None:
    """Position of the first checksum-valid batch in the file between ``start`` and ``size``."""
    pos = start
    while pos < size:
        window = os.pread(fd, min(READ_CHUNK, size - pos), pos)
        hit = window.find(batchfmt.MAGIC)
        while hit >= 0:
            candidate = pos + hit
            if _valid_batch_at(fd, candidate, size):
                return candidate
            hit = window.find(batchfmt.MAGIC, hit + 1)
        # Overlap windows by the magic's length so a split magic is still seen.
        pos += max(len(window) - len(batchfmt.MAGIC) + 1, 1)
    return None
