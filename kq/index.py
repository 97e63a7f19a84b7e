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

import struct

ENTRY = struct.Struct(">qqq")  # base_offset, position, max timestamp before it
ENTRY_SIZE = ENTRY.size
INTERVAL_BYTES = 4096
NO_TIMESTAMP = -(2**63)


class Index:
    """An immutable snapshot of one index file's entries."""

    __slots__ = ("blob", "count")

    def __init__(self, blob: bytes):
        self.count = len(blob) // ENTRY_SIZE  # a torn last entry is ignored
        self.blob = blob

    @classmethod
    def load(cls, path: str) -> "Index":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except FileNotFoundError:
            return cls(b"")

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
