"""Reading a partition forward, across its segments, without a lock.

A ``Cursor`` hands out each batch once, decoded (``poll``) or as stored
(``poll_raw``, for replication). It waits quietly at a torn tail (a batch
still being written, or one a crash cut short) and raises ``CorruptLog`` for
damage: a whole batch that fails its checksum, offsets that go backwards,
bytes that are no batch followed by valid ones, or damage in a closed segment.

Its isolation (docs/FORMAT.md, "Transactions") decides what ``poll`` hands
out: ``ALL`` every batch as stored; ``READ_UNCOMMITTED`` no control batches
(commit and abort markers); ``READ_COMMITTED`` no control batches, nothing at
or past the partition's last stable offset (the cursor waits there), and no
batch of an aborted transaction. The cursor's ``offset`` moves past the
batches it leaves out, so a reader's position does too.
"""

from __future__ import annotations

import os
from functools import partial

from . import batch as batchfmt
from .batch import BatchHeader
from .fileio import open_regular
from .index import Index, entry_is_valid
from .segment import CLEAN, DAMAGED, BatchReader, classify_damage
from .txn_log import is_aborted

ALL = "all"
READ_UNCOMMITTED = "read_uncommitted"
READ_COMMITTED = "read_committed"
ISOLATIONS = (ALL, READ_UNCOMMITTED, READ_COMMITTED)


class RawBatch:
    """A batch as stored: a view of its bytes plus the header fields replication needs."""

    __slots__ = ("position", "base_offset", "next_offset", "max_timestamp", "crc", "buf", "start", "size", "attributes")

    def __init__(self, header: BatchHeader, buf, start: int, position: int = 0):
        self.position = position
        self.crc = header.crc
        self.base_offset = header.base_offset
        self.next_offset = header.next_offset
        self.max_timestamp = header.max_timestamp
        self.buf = buf  # batches read together share one buffer (see runs)
        self.start = start
        self.size = header.size
        self.attributes = header.attributes  # bit 6 transactional, bit 7 control (kq.engine.batch)

    @property
    def data(self) -> memoryview:
        return memoryview(self.buf)[self.start : self.start + self.size]

    def checksum_ok(self) -> bool:
        return batchfmt.checksum_matches(self.buf, self.start, self.size, self.crc)

    @property
    def identity(self) -> tuple[int, int, int]:
        """What two copies of one batch share: base offset, size and checksum."""
        return self.base_offset, self.size, self.crc


def _raw_batch(buf, rel: int, header: BatchHeader, path: str) -> RawBatch:
    return RawBatch(header, buf, rel)


def runs(batches: list[RawBatch]) -> list[memoryview]:
    """The batches' bytes as few views as possible: adjacent bytes of one buffer join."""
    joined: list[list] = []
    for b in batches:
        if joined and joined[-1][0] is b.buf and joined[-1][2] == b.start:
            joined[-1][2] = b.start + b.size
        else:
            joined.append([b.buf, b.start, b.start + b.size])
    return [memoryview(buf)[lo:hi] for buf, lo, hi in joined]


class Cursor:
    """Reads a partition forward from an offset, across segments, without a lock.

    ``poll()`` returns the batches available now (possibly none) and never
    returns a batch twice; ``offset`` is the next offset to deliver.
    ``skipped`` collects (first, after) offset ranges that retention or trim
    deleted while this cursor was on its way to them.
    """

    def __init__(self, partition, offset: int, buffers: int = 1, isolation: str = ALL):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, not {isolation!r}")
        self.partition = partition
        self.isolation = isolation
        self.offset = offset
        self.skipped: list[tuple[int, int]] = []
        self._fd: int | None = None
        self._base = -1
        self._path = ""
        self._position = 0
        self._floor: int | None = None  # the lowest base offset the next batch may have
        # Polls read into these in turn: ``poll_raw`` batches stay valid
        # until ``buffers`` more polls (two let a thread read one poll ahead).
        # Grown by the reader to what a read needs (a small log, a small buffer).
        self._buffers = [bytearray() for _ in range(buffers)]
        self._seek(offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self, base: int) -> bool:
        """Open the first segment at or after ``base`` (retention may have just deleted it)."""
        self.close()
        for candidate in [b for b in self.partition.segments() if b >= base]:
            path = self.partition.log_path(candidate)
            try:
                self._fd = open_regular(path)
            except FileNotFoundError:
                continue
            self._base, self._path, self._position, self._floor = candidate, path, 0, candidate
            return True
        return False

    def _seek(self, offset: int) -> None:
        bases = self.partition.segments()
        if not bases:
            return
        base = bases[0]
        for b in bases:
            if b <= offset:
                base = b
        if not self._open(base):
            return
        entry = Index.load(self.partition.index_path(self._base)).floor_offset(offset)
        if entry is not None and self._fd is not None and entry_is_valid(self._fd, entry):
            self._position, self._floor = entry[1], entry[0]

    def _note_skip(self) -> None:
        """After moving to a later segment: were records deleted before the cursor got to them?"""
        if self._base > self.offset and self.partition.start_offset() > self.offset:
            # What lies between where it was and the segment it opened is gone.
            # (Not up to the start offset now: retention may have deleted the
            # opened segment too since, and the cursor still reads it.)
            self.skipped.append((self.offset, self._base))

    def poll(self, max_bytes: int = 2 * 1024 * 1024, defer_values_if: bytes | None = None) -> list:
        """Decoded batches that end after ``offset``, up to about ``max_bytes``.

        Small rounds are faster than large ones: the values of a round are
        freed before the next, so their memory is reused instead of faulted in.
        ``defer_values_if``: as ``kq.engine.batch.decode`` takes it.
        """
        decode = (
            batchfmt.decode if defer_values_if is None else partial(batchfmt.decode, defer_values_if=defer_values_if)
        )
        if self.isolation == ALL:
            return self._poll(max_bytes, decode)
        committed = self.isolation == READ_COMMITTED
        while True:
            limit = self.partition.last_stable_offset() if committed else None
            batches = self._poll(max_bytes, decode, limit=limit)
            if not batches:
                return batches
            out = [b for b in batches if not b.attributes & batchfmt.CONTROL]
            if committed and any(b.attributes & batchfmt.TRANSACTIONAL for b in out):
                # Every transaction with records below the LSO was decided, and an
                # abort's index entry is written before its marker: the list is complete.
                aborted = self.partition.aborted_transactions(out[0].base_offset, limit)
                if aborted:
                    out = [
                        b
                        for b in out
                        if not (
                            b.attributes & batchfmt.TRANSACTIONAL and is_aborted(aborted, b.producer_id, b.base_offset)
                        )
                    ]
            if out:
                return out
            # Only markers and aborted batches: look further rather than look finished.

    def poll_raw(self, max_bytes: int = 8 * 1024 * 1024, checksums: bool = True) -> list[RawBatch]:
        """Like ``poll`` but the batches' bytes as stored, undecoded (for replication).

        The batches are views of the cursor's read buffers: valid until as
        many more polls as the cursor has buffers. With ``checksums=False``
        only their framing is checked: call ``checksum_ok`` before trusting one.
        """
        return self._poll(max_bytes, _raw_batch, checksums)

    def _poll(self, max_bytes: int, make, checksums: bool = True, limit: int | None = None) -> list:
        """Batches from ``offset`` on; with ``limit``, none whose base offset is at or past it (the cursor waits)."""
        if self._fd is None:
            self._seek(self.offset)
            if self._fd is None:
                return []
        out = []
        while True:
            reader = BatchReader(
                self._fd,
                self._path,
                self._position,
                limit=max_bytes,
                buffer=self._buffers[0],
                checksums=checksums,
                floor=self._floor,
            )
            inflated = 0  # bytes compressed batches decoded to: a round is bounded by them too
            resume = None
            held = False
            for pos, header, buf, rel in reader.headers():
                if limit is not None and header.base_offset >= limit:
                    # Stay before this batch: the next poll reads it again.
                    self._position, self._floor, held = pos, header.base_offset, True
                    break
                next_offset = header.base_offset + header.last_offset_delta + 1
                if next_offset > self.offset:
                    b = make(buf, rel, header, self._path)
                    b.position = pos
                    out.append(b)
                    self.offset = next_offset
                    if header.attributes & batchfmt.STORED_CODEC_MASK:
                        inflated += getattr(b, "payload_size", header.size)
                        if inflated >= max_bytes:
                            resume = pos + header.size
                            break
            self._buffers[0] = reader.buffer or self._buffers[0]
            if not held:
                self._position = reader.stop_position if resume is None else resume
                self._floor = reader.floor
            if out or held:
                if not out:
                    return out
                self._buffers.append(self._buffers.pop(0))
                return out
            if reader.stop not in (CLEAN, DAMAGED):
                continue  # the limit was reached skipping batches before ``offset``
            # List later segments before looking again: a writer finishes a
            # batch before it rolls, so if a later segment exists, any batch
            # that was still being written here is complete now.
            later = [b for b in self.partition.segments() if b > self._base]
            again = BatchReader(self._fd, self._path, self._position, limit=1, floor=self._floor)
            if any(True for _ in again.headers()):
                continue
            if again.stop == DAMAGED:
                classify_damage(
                    self._fd, self._path, self._position, bool(later), again.reason, again.whole_batch, self._floor
                )
                return out  # a torn tail, or a batch still being written: wait here
            if not later or not self._open(later[0]):
                return out
            self._note_skip()
