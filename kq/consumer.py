"""Reading a topic's partitions from chosen offsets, to a snapshot end or forever."""

from __future__ import annotations

import time
from typing import Iterator, NamedTuple

from .batch import RecordBatch
from .offsetspec import BEGINNING, OffsetRange, OffsetSpec
from .topic import Topic

POLL_SECONDS = 0.005


class Slice(NamedTuple):
    """Records ``start:stop`` (indexes into the batch) of one batch of one partition."""

    partition: int
    batch: RecordBatch
    start: int
    stop: int


class Consumer:
    """Iterate the records of ``partitions`` (default: all) of ``topic``.

    Without ``follow`` it ends at the end offsets as they were when it was
    created, so a busy topic still ends. With ``follow`` it waits for new
    records until the caller stops iterating. ``positions`` holds, per
    partition, the next offset after the last slice handed out.
    """

    def __init__(
        self,
        topic: Topic,
        partitions: list[int] | None = None,
        offsets: OffsetRange | dict[int, int] = OffsetRange(OffsetSpec(BEGINNING)),
        follow: bool = False,
        poll_seconds: float = POLL_SECONDS,
    ):
        self.topic = topic
        numbers = list(range(topic.partition_count)) if partitions is None else partitions
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.positions: dict[int, int] = {}
        self.stops: dict[int, int | None] = {}
        self._cursors = {}
        for n in numbers:
            part = topic.partition(n)
            end = part.end_offset()
            if isinstance(offsets, dict):
                start, stop = offsets[n], None
            else:
                start = offsets.start.resolve(part, end)
                stop = None if offsets.stop is None else offsets.stop.resolve(part, end)
            if stop is None and not follow:
                stop = end
            self.positions[n] = start
            self.stops[n] = stop
            self._cursors[n] = part.cursor(start)

    def close(self) -> None:
        for cur in self._cursors.values():
            cur.close()

    def __iter__(self) -> Iterator[Slice]:
        active = [n for n in self._cursors if not self._done(n)]
        while active:
            delivered = False
            for n in list(active):
                cursor = self._cursors[n]
                batches = cursor.poll()
                stop = self.stops[n]
                for b in batches:
                    if stop is not None and b.base_offset >= stop:
                        break
                    lo = b.index_of(self.positions[n])
                    hi = b.count if stop is None or b.next_offset <= stop else b.index_of(stop)
                    self.positions[n] = max(self.positions[n], b.next_offset if hi == b.count else stop)
                    if lo < hi:
                        delivered = True
                        yield Slice(n, b, lo, hi)
                if self._done(n) or (not batches and not self.follow):
                    active.remove(n)
            if not delivered and active and self.follow:
                time.sleep(self.poll_seconds)

    def _done(self, n: int) -> bool:
        stop = self.stops[n]
        return stop is not None and self.positions[n] >= stop
