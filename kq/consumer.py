"""Reading a topic's partitions from chosen offsets, to a snapshot end or forever."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .engine.batch import Batch
from .engine.cursor import READ_COMMITTED, Cursor
from .engine.topic import Topic
from .errors import warn
from .offsetspec import BEGINNING, OffsetRange, OffsetSpec

# A follower polls every POLL_SECONDS while records flow (new ones show in
# about a millisecond), and after BUSY_SECONDS without one every
# IDLE_POLL_SECONDS: an idle follower wakes 25 times a second, and the first
# record after a quiet spell still shows within 40 ms.
POLL_SECONDS = 0.002
BUSY_SECONDS = 1.0
IDLE_POLL_SECONDS = 0.04
SETTLE_SECONDS = 1.0


class Slice(NamedTuple):
    """Records ``start:stop`` (indexes into the batch) of one batch of one partition."""

    partition: int
    batch: Batch
    start: int
    stop: int

    def offset_after(self, index: int | None = None) -> int:
        """The offset to resume at once records ``start:index`` were handled."""
        return self.batch.offset_at(self.stop if index is None else index)


class Consumer:
    """Reads a changing set of partitions of ``topic`` in rounds.

    Each partition reads from a start offset to a stop offset; without
    ``follow`` a partition with no stop stops at its end offset as it was
    when it was added, so a busy topic still ends. ``positions`` holds, per
    partition, the next offset after the last slice handed out, or after the
    batches the isolation left out (markers, aborted transactions) since;
    ``delivered`` the offset after the last slice handed out.

    ``isolation``: "read_committed" (the default, as ``kq consume``'s) reads
    only committed transactions, up to each partition's last stable offset;
    "read_uncommitted" reads every record (kq.engine.cursor).
    """

    def __init__(
        self, topic: Topic, follow: bool = False, poll_seconds: float = POLL_SECONDS, isolation: str = READ_COMMITTED
    ):
        self.topic = topic
        self.isolation = isolation
        self.delivered: dict[int, int] = {}
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.positions: dict[int, int] = {}
        self.stops: dict[int, int | None] = {}
        self._cursors: dict[int, Cursor] = {}
        self._finished: set[int] = set()
        self.timed_out = False
        self.who: str | None = None  # who reads, for warnings (a group consumer names its group)
        # Called about once a second while a follower waits and a partition is held at its last stable
        # offset (kq.backends.local: finish the transactions whose producer died, which hold it there).
        self.settle: Callable[[], object] | None = None
        self._settled_at = 0.0

    @classmethod
    def from_spec(
        cls,
        topic: Topic,
        partitions: list[int] | None = None,
        offsets: OffsetRange = OffsetRange(OffsetSpec(BEGINNING)),
        follow: bool = False,
        isolation: str = READ_COMMITTED,
    ) -> Consumer:
        consumer = cls(topic, follow, isolation=isolation)
        for n in range(topic.partition_count) if partitions is None else partitions:
            part = topic.partition(n)
            end = part.end_offset()
            start = offsets.start.resolve(part, end)
            stop = None if offsets.stop is None else offsets.stop.resolve(part, end)
            consumer.add(n, start, stop)
        return consumer

    @property
    def partitions(self) -> list[int]:
        return sorted(self._cursors)

    def add(self, number: int, start: int, stop: int | None = None) -> None:
        """Read partition ``number`` from ``start`` (or its start offset, if that is later)."""
        part = self.topic.partition(number)
        start = max(start, part.start_offset())
        if stop is None and not self.follow:
            stop = part.end_offset()
        self.positions[number] = start
        self.delivered[number] = start
        self.stops[number] = stop
        self._cursors[number] = part.cursor(start, isolation=self.isolation)
        self._finished.discard(number)
        self._check_finished(number)

    def remove(self, number: int) -> None:
        cursor = self._cursors.pop(number, None)
        if cursor is not None:
            cursor.close()
        self.positions.pop(number, None)
        self.delivered.pop(number, None)
        self.stops.pop(number, None)
        self._finished.discard(number)

    def close(self) -> None:
        for n in list(self._cursors):
            self.remove(n)

    # A plain reader commits nothing; these make it a Reader (kq.backends.base) like a group member.
    def mark(self, partition: int, offset: int) -> None:
        pass

    def commit(self) -> None:
        pass

    def stop_partition(self, partition: int) -> None:
        self.remove(partition)

    def finished(self) -> bool:
        """True when every partition has reached its stop (never while following without one)."""
        return len(self._finished) == len(self._cursors)

    def _check_finished(self, n: int) -> None:
        stop = self.stops[n]
        if stop is not None and self.positions[n] >= stop:
            self._finished.add(n)

    def poll(self) -> list[Slice]:
        """One round: what each unfinished partition has now (possibly nothing)."""
        out = []
        for n in self.partitions:
            if n in self._finished:
                continue
            cursor = self._cursors[n]
            batches = cursor.poll()
            if cursor.skipped:
                self._report_skips(n, cursor)
            stop = self.stops[n]
            for b in batches:
                if stop is not None and b.base_offset >= stop:
                    self.positions[n] = max(self.positions[n], stop)
                    break
                lo = b.index_of(self.positions[n])
                hi = b.count if stop is None or b.next_offset <= stop else b.index_of(stop)
                self.positions[n] = max(self.positions[n], b.offset_at(hi) if hi < b.count else b.next_offset)
                if lo < hi:
                    out.append(Slice(n, b, lo, hi))
                    self.delivered[n] = self.positions[n]
            # Past what the isolation left out after the last slice (a marker, an aborted batch).
            passed = cursor.offset if stop is None else min(cursor.offset, stop)
            if passed > self.positions[n]:
                self.positions[n] = passed
            self._check_finished(n)
            if not batches and not self.follow:
                self._finished.add(n)  # nothing more to read below the stop
        return out

    def _report_skips(self, n: int, cursor) -> None:
        """Warn of records retention (or trim) deleted before this reader got to them."""
        for first, after in cursor.skipped:
            if after > self.positions[n]:
                warn(
                    f"{self.describe(n)}: {after - first} message(s) at offsets {first}..{after - 1} were deleted "
                    f"by retention or trim before this reader got to them; reading on from offset {after}"
                )
        cursor.skipped.clear()

    def describe(self, n: int) -> str:
        """How warnings name partition ``n`` (a group consumer adds its group)."""
        return f"{self.topic.name}/{n}" if self.who is None else f"{self.who} on {self.topic.name}/{n}"

    def rounds(self, idle_timeout: float | None = None) -> Iterator[list[Slice]]:
        """Non-empty rounds of slices, until finished (forever when following).

        With ``idle_timeout`` it also ends after that many seconds without a
        new record, setting ``timed_out``.
        """
        idle = IdleClock(idle_timeout)
        while not self.finished():
            slices = self.poll()
            if slices:
                idle.reset()
                yield slices
            elif idle.expired():
                self.timed_out = True
                return
            elif self.follow:
                self.settle_if_held()
                idle.pause(self.poll_seconds)

    def settle_if_held(self) -> None:
        """While waiting: if some partition has records past its last stable offset, call ``settle`` (once a second)."""
        if self.settle is None or self.isolation != READ_COMMITTED:
            return
        now = time.monotonic()
        if now - self._settled_at < SETTLE_SECONDS:
            return
        self._settled_at = now
        for n in self.partitions:
            part = self.topic.partition(n)
            if part.open_transactions() and self.positions[n] < part.end_offset():
                self.settle()
                return


class IdleClock:
    """Tells when no record has arrived for ``seconds`` (never, if None)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()

    def expired(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.since >= self.seconds

    def pause(self, poll_seconds: float) -> None:
        """Sleep before the next poll: ``poll_seconds`` while records flow,
        longer once none came for a while, so an idle follower costs little."""
        quiet = time.monotonic() - self.since
        time.sleep(poll_seconds if quiet < BUSY_SECONDS else max(poll_seconds, IDLE_POLL_SECONDS))
