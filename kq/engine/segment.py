"""Segment files: naming, listing, and reading batches from a byte position.

A segment is ``<base offset, 20 digits>.log`` holding batches back to back,
with ``<base offset>.index`` beside it. Reading takes no lock: a reader stops
at the first batch that is incomplete, fails its checksum or breaks the
order of offsets, and reports why; the caller decides (with
``classify_damage``) whether that is a torn tail to wait at or damage to
report.

The rule that tells them apart (docs/GUARANTEES.md): a torn write leaves a
batch shorter than its length field says, or bytes that are no batch at
all; a batch whose every byte is present but that fails its checksum, or
whose offsets go backwards, is damage, never a torn tail.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import CorruptFile, CorruptLog
from . import batch as batchfmt
from .batch import MAX_OFFSET, BatchHeader
from .fileio import atomic_write, open_regular
from .index import NO_TIMESTAMP, Index, IndexBuilder, last_valid_entry

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
DIGITS = 20
READ_CHUNK = 4 * 1024 * 1024

# Why a reader stopped before the end of the bytes it could see.
CLEAN = "clean"  # every byte up to the end of the file was a valid batch
DAMAGED = "damaged"  # an incomplete or invalid batch starts at stop_position
LIMIT = "limit"  # the reader's byte limit was reached

# Damaged bytes moved aside by a writer or by `kq verify --repair`:
# "<segment>.log.quarantine-<byte position>", never read by kq, never deleted by it.
QUARANTINE = ".quarantine"


def log_name(base_offset: int) -> str:
    return f"{base_offset:0{DIGITS}d}{LOG_SUFFIX}"


def index_name(base_offset: int) -> str:
    return f"{base_offset:0{DIGITS}d}{INDEX_SUFFIX}"


def list_segments(partition_dir: str, out_of_range: list[str] | None = None) -> list[int]:
    """Base offsets of the segments in a partition directory, ascending.

    A name is a number kq did not necessarily write: one past the largest
    offset is an error naming the file (20 digits reach 10^20 - 1, a signed
    64-bit offset only 2^63 - 1), or with ``out_of_range`` (for ``kq verify``)
    its path is added there and the rest are listed. Only ASCII digits count
    (``str.isdigit`` also accepts other scripts' digits, which ``int`` reads).
    """
    bases = []
    for name in os.listdir(partition_dir):
        if len(name) == DIGITS + len(LOG_SUFFIX) and name.endswith(LOG_SUFFIX):
            digits = name[:DIGITS]
            if digits.isascii() and digits.isdigit():
                base = int(digits)
                if base > MAX_OFFSET:
                    path = os.path.join(partition_dir, name)
                    if out_of_range is None:
                        raise CorruptFile(path, f"a segment name past the largest offset ({MAX_OFFSET})")
                    out_of_range.append(path)
                    continue
                bases.append(base)
    bases.sort()
    return bases


class BatchReader:
    """Iterates the valid batches of one open segment file from ``position``.

    After iteration, ``stop`` is CLEAN, DAMAGED or LIMIT and ``stop_position``
    is the byte position after the last valid batch (where the damage
    starts). ``whole_batch`` says the damage is a complete batch (never a
    torn tail). With ``floor`` (the lowest base offset the next batch may
    have), a batch whose offsets go backwards is damage too; ``floor`` then
    follows the batches read.
    """

    def __init__(
        self,
        fd: int,
        path: str,
        position: int,
        limit: int | None = None,
        buffer: bytearray | None = None,
        checksums: bool = True,
        floor: int | None = None,
    ):
        self.fd = fd
        self.path = path
        self.stop = CLEAN
        self.stop_position = position
        self.reason = ""
        self.whole_batch = False
        self.floor = floor
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
                if self.floor is not None:
                    if info.base_offset < self.floor:
                        self.stop, self.whole_batch, self.reason = DAMAGED, True, _backwards(info, self.floor)
                        return
                    self.floor = info.base_offset + info.last_offset_delta + 1
                size = batchfmt.PREFIX_SIZE + info.length
                yield pos, info, buf, rel
                pos += size
                self.stop_position = pos
                read_so_far += size
                if self._limit is not None and read_so_far >= self._limit:
                    self.stop = LIMIT
                    return
                continue
            if status != batchfmt.INCOMPLETE:
                self.stop, self.reason, self.whole_batch = DAMAGED, info, status == batchfmt.DAMAGED
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


def _backwards(header: BatchHeader, floor: int) -> str:
    return (
        f"offsets go backwards: the batch holds offsets {header.base_offset}..{header.last_offset}, "
        f"but the log before it reaches offset {floor - 1}"
    )


def classify_damage(
    fd: int,
    path: str,
    position: int,
    later_segment_exists: bool,
    reason: str,
    whole_batch: bool = False,
    floor: int | None = None,
) -> None:
    """Raise CorruptLog unless the damage at ``position`` is a torn tail (or no damage after all).

    A torn tail is an incomplete batch, or bytes that are no batch, that
    nothing valid follows, in the last segment. A whole batch that fails its
    checksum or breaks the offset order, damage followed by a valid batch,
    and damage in a closed segment are corruption: treating them as a tail
    would throw away acknowledged data (and let its offsets be reused).
    """
    if later_segment_exists:
        raise CorruptLog(path, position, reason + " in a closed segment")
    if whole_batch:
        # Looked at again: a batch a recovering writer rewrote while we read
        # it is whole now, and the caller reads it at its next poll.
        again = BatchReader(fd, path, position, limit=1, floor=floor)
        if any(True for _ in again.headers()):
            return
        whole_batch, reason = again.whole_batch, again.reason or reason
    found = find_valid_batch(fd, position + 1, os.fstat(fd).st_size)
    if found is not None and not _valid_batch_at(fd, position):
        # (A valid batch at ``position`` now means it was being written when
        # the caller looked, and the writer has finished it and started the
        # next since: not damage, and the caller reads it at its next poll.)
        raise CorruptLog(path, position, f"{reason}, followed by a valid batch at byte {found}")
    if whole_batch:
        raise CorruptLog(
            path,
            position,
            f"{reason} in a whole batch at the end of the log (not a torn write: bit rot or a stray write)",
        )


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


@dataclass
class SegmentScan:
    """What a walk over a segment's batches found (see ``scan``)."""

    base: int
    end: int  # byte position after the last valid batch
    next_offset: int  # after the last valid batch (the segment's base if it has none)
    index: IndexBuilder  # its ``entries``: what the index lacks after the entry the scan started from
    index_kept: int  # how many entries of the index file were valid up to where the scan started
    stop: str = CLEAN
    reason: str = ""
    whole_batch: bool = False
    last: tuple[int, BatchHeader] | None = None  # (position, header) of the last valid batch
    floor: int | None = None  # the lowest base offset the batch at ``end`` may have


def scan(fd: int, path: str, base: int, index: Index | None = None) -> SegmentScan:
    """The one walk to a segment's end: from its last valid index entry to the first damage or the end.

    Writers recover their tail with it, readers find the end offset with it,
    and the index entries it makes are exactly those ``IndexBuilder`` makes.
    """
    start = -1 if index is None else last_valid_entry(fd, index)
    if index is not None and start >= 0:
        offset, position, max_ts = index.entry(start)
    else:
        offset, position, max_ts = base, 0, NO_TIMESTAMP
    result = SegmentScan(base, position, offset, IndexBuilder(position, max_ts), start + 1)
    resume(result, fd, path, position, offset)
    return result


def resume(result: SegmentScan, fd: int, path: str, position: int, floor: int | None) -> None:
    """Walk on from ``position`` (a batch start) where a scan stopped, updating ``result``."""
    reader = BatchReader(fd, path, position, floor=floor)
    builder = result.index
    last = None
    for pos, header, _, _ in reader.headers():
        builder.add(header.base_offset, pos, header.max_timestamp)
        last = pos, header
    if last is not None:
        result.last = last
        result.next_offset = last[1].next_offset
    result.end = reader.stop_position
    result.stop, result.reason, result.whole_batch = reader.stop, reader.reason, reader.whole_batch
    result.floor = reader.floor


def damaged_last_batch(fd: int, found: SegmentScan, size: int, compacted: bool = False) -> BatchHeader | None:
    """The header of the whole batch that fails its checksum where ``found`` stopped, if it is one
    and its header is plausible: it starts where the log left off and counts its records as a
    batch of this topic does (dense offsets unless ``compacted``). None otherwise.

    Its offsets are then known, and a writer goes on after them (docs/GUARANTEES.md).
    """
    if not found.whole_batch or found.floor is None:
        return None
    data = os.pread(fd, min(size - found.end, batchfmt.MAX_BATCH_BYTES + batchfmt.PREFIX_SIZE), found.end)
    status, _ = batchfmt.check(data, 0, len(data))
    if status != batchfmt.DAMAGED or len(data) < batchfmt.HEADER_SIZE:
        return None  # its checksum holds: the offsets themselves are wrong
    header = batchfmt.header_at(data, 0)
    plausible = (
        header.base_offset == found.floor
        and 1 <= header.record_count <= header.length
        and header.last_offset_delta >= header.record_count - 1
        and (compacted or header.last_offset_delta == header.record_count - 1)
        and header.next_offset <= batchfmt.MAX_OFFSET
    )
    return header if plausible else None


def quarantine(fd: int, path: str, start: int, end: int) -> str:
    """Copy bytes ``start:end`` of a segment to a quarantine file beside it; return its name.

    The copy is on disk (fsynced) before the caller cuts the bytes from the
    segment, so a crash in between leaves them twice, never nowhere; a rerun
    finds the same bytes and reuses the same file.
    """
    data = os.pread(fd, end - start, start)
    target = quarantine_name(f"{path}{QUARANTINE}-{start}", data)
    atomic_write(target, data)
    return target


def quarantine_name(path: str, content: bytes | None = None) -> str:
    """``path``, or ``path-2``, ``-3``...: never overwrite another quarantine's bytes."""
    candidate, n = path, 1
    while os.path.lexists(candidate):
        st = os.lstat(candidate)
        if content is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(content):
            fd = open_regular(candidate)
            try:
                if os.pread(fd, len(content), 0) == content:
                    return candidate  # a rerun after a crash: the same bytes
            finally:
                os.close(fd)
        n += 1
        candidate = f"{path}-{n}"
    return candidate
