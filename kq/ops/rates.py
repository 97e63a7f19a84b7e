"""Rates from counters sampled over time: records/s in and out, time to catch up, a lag's history.

``kq top`` samples a directory or a cluster every second (kq.ops.observe) and
asks these what changed: a topic's records/s in is how fast the sum of its
partitions' end offsets grows, a group's records/s out how fast the sum of
its committed offsets does, each over a sliding window of the last few
seconds so that one slow sample does not make the figure jump. Nothing here
reads a file: the numbers come from the samples.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from typing import Any


class _Counter:
    __slots__ = ("first", "value", "progress", "changes")

    def __init__(self, at: float, value: int):
        self.first = at  # the sample it was first seen in
        self.value = value  # the last value given
        self.progress = 0  # the sum of its increases since
        self.changes: deque[tuple[float, int]] = deque([(at, 0)])  # (time, progress) where it grew


class RateWindow:
    """Counters by key, sampled now and then; each key's rate over the last ``span`` seconds.

    A counter that goes down (a topic deleted and created again, a group's
    offsets reset to earlier) is a fresh start, not a negative rate: only the
    increases between consecutive samples count.

    ``add`` gives every key's value at a sample. A caller that knows which
    counters did not change since the last sample (``kq top``: most of them)
    calls ``tick`` and ``update`` with only the others, and ``forget`` for
    the keys gone: a counter costs nothing while it stands still, and its
    rate is the one ``add`` with the same value again would give.
    """

    def __init__(self, span: float = 10.0):
        self.span = span
        # The samples' times: the last one at or before the window's start, and all after it.
        self._ticks: deque[float] = deque()
        self._counters: dict[Hashable, _Counter] = {}

    def add(self, at: float, counters: Mapping[Any, int]) -> None:
        """The counters' values at time ``at`` (seconds, monotonic); a key absent here is forgotten."""
        self.tick(at)
        self.forget([key for key in self._counters if key not in counters])
        self.update(at, counters)

    def tick(self, at: float) -> None:
        """A sample at ``at``: every key not given to ``update`` with it keeps its value."""
        ticks = self._ticks
        ticks.append(at)
        horizon = at - self.span
        while len(ticks) > 2 and ticks[1] <= horizon:
            ticks.popleft()

    def update(self, at: float, counters: Mapping[Any, int]) -> None:
        """Some counters' values at the sample ``at`` (after ``tick(at)``)."""
        known = self._counters
        horizon = at - self.span
        for key, value in counters.items():
            counter = known.get(key)
            if counter is None:
                known[key] = _Counter(at, value)
                continue
            if value > counter.value:
                counter.progress += value - counter.value
                changes = counter.changes
                changes.append((at, counter.progress))
                # Keep one change at or before the window's start: the progress there.
                while len(changes) > 1 and changes[1][0] <= horizon:
                    changes.popleft()
            counter.value = value

    def forget(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._counters.pop(key, None)

    def rate(self, key: Hashable) -> float | None:
        """Increase per second over the window; None until the key has two samples."""
        counter = self._counters.get(key)
        if counter is None:
            return None
        last = self._ticks[-1]
        if last <= counter.first:
            return None
        # From the last sample at or before the window's start (or the key's first, if later).
        since = self._ticks[0]
        if since > last - self.span or since < counter.first:
            since = counter.first
        progress = 0
        for at, value in counter.changes:
            if at > since:
                break
            progress = value
        return (counter.progress - progress) / (last - since)

    def settled_since(self) -> float | None:
        """A time such that every counter unchanged since it has rate 0 now (two samples or more):
        the last sample at or before the window's start; None while there is none."""
        if self._ticks and self._ticks[0] <= self._ticks[-1] - self.span:
            return self._ticks[0]
        return None


class History:
    """A value by key (a group's lag) over the last ``span`` seconds, kept as the largest value seen
    in each of ``slices`` equal slices of time, for a sparkline: a key costs ``slices`` numbers
    however often it is sampled, and a spike between two samples of the screen still shows.

    As with ``RateWindow``, ``add`` gives every key's value at a sample, or
    ``tick``, ``update`` (the values that changed) and ``forget`` do.
    """

    def __init__(self, span: float = 120.0, slices: int = 20):
        self.span, self.slices = span, slices
        self.width = span / slices
        # key -> deque of [slice number, largest value in it], oldest first
        self._series: dict[Hashable, deque[list[int]]] = {}
        self._last: dict[Hashable, int] = {}  # key -> the value last given
        self._ticked: deque[int] = deque()  # the slices that had a sample, the last ``slices`` of them
        self._slot_since = 0.0  # the first sample in the last of them

    def add(self, at: float, values: Mapping[Any, int]) -> None:
        """The values at time ``at``; a key absent here is forgotten."""
        self.tick(at)
        self.forget([key for key in self._series if key not in values])
        self.update(at, values)

    def tick(self, at: float) -> None:
        """A sample at ``at``: every key not given to ``update`` with it keeps its value."""
        slot = int(at // self.width)
        ticked = self._ticked
        if not ticked or ticked[-1] != slot:
            ticked.append(slot)
            self._slot_since = at
            while ticked[0] <= slot - self.slices:
                ticked.popleft()

    def update(self, at: float, values: Mapping[Any, int]) -> None:
        """Some keys' values at the sample ``at`` (after ``tick(at)``)."""
        slot = int(at // self.width)
        series, last = self._series, self._last
        for key, value in values.items():
            points = series.get(key)
            if points is None:
                series[key] = deque([[slot, value]])
            else:
                unchanged = last[key]
                # The slices sampled since its last point held its unchanged value (this one too,
                # if sampled before now).
                for earlier in self._ticked:
                    if points[-1][0] < earlier < slot or (earlier == slot > points[-1][0] and self._slot_since < at):
                        points.append([earlier, unchanged])
                if points[-1][0] == slot:
                    if value > points[-1][1]:
                        points[-1][1] = value
                else:
                    points.append([slot, value])
                while points[0][0] <= slot - self.slices:
                    points.popleft()
            last[key] = value

    def forget(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._series.pop(key, None)
            self._last.pop(key, None)

    def buckets(self, key: Hashable, now: float) -> list[int | None]:
        """The slices of the span up to ``now``, oldest first: the largest value seen in each (None
        where there was no sample)."""
        last = int(now // self.width)
        out: list[int | None] = [None] * self.slices
        points = self._series.get(key)
        if not points:
            return out
        value = self._last[key]
        for slot in self._ticked:  # sampled since its last point, the value unchanged
            if slot > points[-1][0]:
                index = self.slices - 1 - (last - slot)
                if 0 <= index < self.slices:
                    out[index] = value
        for slot, largest in points:
            index = self.slices - 1 - (last - slot)
            if 0 <= index < self.slices:
                out[index] = largest
        return out


def catch_up_seconds(lag: int, rate_in: float | None, rate_out: float | None) -> float | None:
    """How long a group takes to reach the end of its topic at the current rates: 0 when it has no
    lag, ``math.inf`` when it reads no faster than records arrive, None when a rate is not known yet."""
    if lag <= 0:
        return 0.0
    if rate_out is None:
        return None
    gaining = rate_out - (rate_in or 0.0)
    return lag / gaining if gaining > 0 else math.inf
