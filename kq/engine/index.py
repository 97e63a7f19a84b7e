"""The sparse index beside each segment (docs/FORMAT.md, "Index files").

One 24-byte entry every ``INTERVAL_BYTES`` of log: the batch's base offset,
its byte position in the segment and the largest timestamp of all batches
*before* it in the segment. Offsets and that running maximum never decrease,
so both offset and timestamp lookups are binary searches.

The index is derived data: a missing or short index only makes a lookup
start earlier in the segment; readers verify the batch an entry points at,
and writers truncate entries past a recovered tail. A damaged running
maximum can make a timestamp lookup start late (it has no checksum):
``kq verify`` finds it and ``--repair`` rebuilds the index.
"""

from __future__ import annotations

import os
import struct

from .batch import HEADER_SIZE, MAGIC
from .fileio import open_regular

ENTRY = struct.Struct(">qqq")  # base_offset, position, max timestamp before it
ENTRY_SIZE = ENTRY.size
INTERVAL_BYTES = 4096
NO_TIMESTAMP = -(2**63)
# The most of an index file read at once when the caller does not say how
# large its segment is: the index of a 10 GiB segment. An index has no
# checksum and any size; the entries left unread only make lookups scan more.
MAX_INDEX_BYTES = 64 * 1024 * 1024


class Index:
    """An immutable snapshot of (the start of) one index file's entries.

    ``file_size`` is the file's size, which may be more than was read.
    """

    __slots__ = ("blob", "count", "file_size")

    def __init__(self, blob: bytes, file_size: int | None = None):
        self.count = len(blob) // ENTRY_SIZE  # a torn last entry is ignored
        self.blob = blob
        self.file_size = len(blob) if file_size is None else file_size

    @classmethod
    def load(cls, path: str, log_size: int | None = None) -> Index:
        """The entries of the index at ``path`` (none if it is missing).

        With ``log_size`` (its segment's size) only as many entries as such
        a segment can have are read; without it, at most MAX_INDEX_BYTES.
        A FIFO, directory or link in its place is NotRegularFile.
        """
        limit = MAX_INDEX_BYTES if log_size is None else min(log_size // INTERVAL_BYTES * ENTRY_SIZE, MAX_INDEX_BYTES)
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return cls(b"")
        try:
            size = os.fstat(fd).st_size
            return cls(os.pread(fd, min(size, limit), 0), size)
        finally:
            os.close(fd)

    def entry(self, i: int) -> tuple[int, int, int]:
        return ENTRY.unpack_from(self.blob, i * ENTRY_SIZE)

    def __len__(self) -> int:
        return self.count

    def _last_where(self, field: int, below) -> int:
        """Index of the last entry whose ``field`` satisfies ``below``, or -1."""
        lo, hi = 0, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            if below(self.entry(mid)[field]):
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def floor_offset(self, offset: int) -> tuple[int, int, int] | None:
        """The last entry whose base offset is <= ``offset``."""
        i = self._last_where(0, lambda o: o <= offset)
        return self.entry(i) if i >= 0 else None

    def floor_timestamp(self, timestamp: int) -> tuple[int, int, int] | None:
        """The last entry before which every batch is older than ``timestamp``."""
        i = self._last_where(2, lambda t: t < timestamp)
        return self.entry(i) if i >= 0 else None

    def entries_before(self, position: int) -> int:
        """How many entries point below ``position`` (what survives a truncation)."""
        return self._last_where(1, lambda p: p < position) + 1


class IndexBuilder:
    """The one rule for index entries, as docs/FORMAT.md states it.

    Batches are fed in log order; a batch that starts at least
    ``INTERVAL_BYTES`` after the last entry (or the segment's start, which is
    implicitly indexed) gets an entry carrying the largest timestamp of the
    batches before it. Every writer of an index (append, recovery,
    compaction, ``kq verify``) goes through this class.
    """

    __slots__ = ("last_indexed", "max_timestamp", "entries")

    def __init__(self, last_indexed: int = 0, max_timestamp: int = NO_TIMESTAMP):
        self.last_indexed = last_indexed
        self.max_timestamp = max_timestamp  # over the batches fed so far
        self.entries: list[tuple[int, int, int]] = []  # made since the last ``take``

    def add(self, base_offset: int, position: int, batch_max_timestamp: int) -> None:
        """Feed the batch at ``position``; it gets an entry if the rule says so."""
        if position - self.last_indexed >= INTERVAL_BYTES:
            self.entries.append((base_offset, position, self.max_timestamp))
            self.last_indexed = position
        if batch_max_timestamp > self.max_timestamp:
            self.max_timestamp = batch_max_timestamp

    def take(self) -> bytes:
        """The entries made since the last call, packed as the index file holds them."""
        packed = pack_entries(self.entries)
        self.entries = []
        return packed


def pack_entries(entries) -> bytes:
    return b"".join(ENTRY.pack(*e) for e in entries)


def entry_is_valid(fd: int, entry: tuple[int, int, int]) -> bool:
    """Does an index entry point at the start of a batch with its base offset?

    Indexes carry no checksum, so every entry is checked against the log
    before a reader or writer trusts it.
    """
    # A garbled position: pread fails with EINVAL (rather than reading nothing)
    # below 0 or where position + length passes the largest file offset.
    if not 0 <= entry[1] <= 2**63 - 1 - HEADER_SIZE:
        return False
    head = os.pread(fd, HEADER_SIZE, entry[1])
    return (
        len(head) == HEADER_SIZE and head[:4] == MAGIC and int.from_bytes(head[12:20], "big", signed=True) == entry[0]
    )


def last_valid_entry(fd: int, index: Index) -> int:
    """Number of the last index entry that points at its batch, or -1."""
    i = len(index) - 1
    while i >= 0 and not entry_is_valid(fd, index.entry(i)):
        i -= 1
    return i
