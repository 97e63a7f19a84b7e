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
from collections.abc import Hashable, Mapping


class RateWindow:
    """Counters by key, sampled now and then; each key's rate over the last ``span`` seconds.

    A counter that goes down (a topic deleted and created again, a group's
    offsets reset to earlier) is a fresh start, not a negative rate: only the
    increases between consecutive samples count.
    """

    def __init__(self, span: float = 10.0):
        self.span = span
        # key -> (last value seen, deque of (time, sum of increases up to then))
        self._counters: dict[Hashable, tuple[int, deque[tuple[float, int]]]] = {}

    def add(self, at: float, counters: Mapping[Hashable, int]) -> None:
        """The counters' values at time ``at`` (seconds, monotonic); a key absent here is forgotten."""
        old = self._counters
        fresh: dict[Hashable, tuple[int, deque[tuple[float, int]]]] = {}
        horizon = at - self.span
        for key, value in counters.items():
            previous = old.get(key)
            if previous is None:
                fresh[key] = (value, deque([(at, 0)]))
                continue
            last, points = previous
            progress = points[-1][1] + max(0, value - last)
            points.append((at, progress))
            # Keep one point at or before the horizon, so the window always spans ``span`` once it can.
            while len(points) > 2 and points[1][0] <= horizon:
                points.popleft()
            fresh[key] = (value, points)
        self._counters = fresh

    def rate(self, key: Hashable) -> float | None:
        """Increase per second over the window; None until the key has two samples."""
        entry = self._counters.get(key)
        if entry is None or len(entry[1]) < 2:
            return None
        (t0, p0), (t1, p1) = entry[1][0], entry[1][-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else None


class History:
    """A value by key (a group's lag) over the last ``span`` seconds, kept as the largest value seen
    in each of ``slices`` equal slices of time, for a sparkline: a key costs ``slices`` numbers
    however often it is sampled, and a spike between two samples of the screen still shows."""

    def __init__(self, span: float = 120.0, slices: int = 20):
        self.span, self.slices = span, slices
        self.width = span / slices
        # key -> deque of [slice number, largest value in it], oldest first
        self._series: dict[Hashable, deque[list[int]]] = {}

    def add(self, at: float, values: Mapping[Hashable, int]) -> None:
        """The values at time ``at``; a key absent here is forgotten."""
        old = self._series
        fresh: dict[Hashable, deque[list[int]]] = {}
        slot = int(at // self.width)
        for key, value in values.items():
            points = old.get(key)
            if points is None:
                points = deque([[slot, value]])
            elif points[-1][0] == slot:
                if value > points[-1][1]:
                    points[-1][1] = value
            else:
                points.append([slot, value])
                while points[0][0] <= slot - self.slices:
                    points.popleft()
            fresh[key] = points
        self._series = fresh

    def buckets(self, key: Hashable, now: float) -> list[int | None]:
        """The slices of the span up to ``now``, oldest first: the largest value seen in each (None
        where there was no sample)."""
        last = int(now // self.width)
        out: list[int | None] = [None] * self.slices
        for slot, value in self._series.get(key, ()):
            index = self.slices - 1 - (last - slot)
            if 0 <= index < self.slices:
                out[index] = value
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
