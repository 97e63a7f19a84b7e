"""What ``kq top`` shows: topics, consumer groups and share groups with their rates, sampled again and again.

``Top`` takes a snapshot of a backend (kq.ops.observe) each time it is asked,
keeps the last few (rates over a sliding window, a lag's history for a
sparkline, the samples the status rule reads) and makes a ``Frame`` of
rows; ``arrange`` sorts and filters them as the viewer asked. Drawing them
is the command's job (kq/cli/top.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .observe import (
    DEFAULT_STALL_AFTER,
    GroupState,
    Sample,
    ShareState,
    Snapshot,
    commit_samples,
    group_status,
    snapshot,
    status,
)
from .rates import History, RateWindow, catch_up_seconds

SORTS = ("lag", "rate", "name")
RATE_SPAN = 10.0  # seconds a rate is measured over
RECHECK = 5.0  # seconds after which a group whose offsets have not moved is judged again


@dataclass
class TopicRow:
    topic: str
    partitions: int
    records: int  # end offsets minus start offsets: what the topic holds now
    end_offset: int  # the sum of its partitions' end offsets: every record ever written
    bytes: int | None  # on disk (None where the backend cannot tell)
    rate_in: float | None  # records/s appended, over the rate window (None until two samples)
    lag: int = 0  # the largest lag of a group on the topic (for sorting by lag)


@dataclass
class GroupRow:
    group: str
    topic: str
    members: int
    lag: int
    committed: int  # the sum of its committed offsets (a share group: settled up to)
    rate_out: float | None  # records/s committed (settled), over the rate window
    catch_up: float | None  # seconds to reach the end at the current rates (inf: never; None: not known yet)
    status: str  # kq.ops.observe's verdict: OK, falling behind, stalled, stopped
    # Share groups only: records leased to a worker now, waiting for a retry, dead-lettered.
    acquired: int | None = None
    retrying: int | None = None
    dead_lettered: int | None = None


@dataclass
class Frame:
    source: str  # "data directory DIR", "Kafka cluster HOST:PORT"
    taken_at: float  # wall-clock seconds
    topics: list[TopicRow]
    groups: list[GroupRow]
    shares: list[GroupRow]
    problems: list[str] = field(default_factory=list)  # what could not be read (the rest is shown)

    def as_json(self) -> dict:
        rows = asdict(self)
        for kind in ("groups", "shares"):
            for row in rows[kind]:
                if row["catch_up"] == float("inf"):
                    row["catch_up"] = None  # JSON has no infinity; "never" is told by the status and rates
                    row["catches_up"] = False
                else:
                    row["catches_up"] = row["catch_up"] is not None
        for row in rows["groups"]:
            for key in ("acquired", "retrying", "dead_lettered"):
                del row[key]
        rows["share_groups"] = rows.pop("shares")
        return rows


def _sort_key(sort: str):
    if sort == "lag":
        return lambda r: (-r.lag, _name(r))
    if sort == "rate":
        return lambda r: (-(_rate(r) or 0.0), _name(r))
    return _name


def _name(row) -> tuple:
    return (row.topic,) if isinstance(row, TopicRow) else (row.group, row.topic)


def _rate(row) -> float | None:
    return row.rate_in if isinstance(row, TopicRow) else row.rate_out


def arrange(frame: Frame, sort: str = "lag", text: str = "") -> Frame:
    """The frame's rows sorted (by lag or rate, largest first, or by name), and only those whose
    topic or group name holds ``text`` (any case); a topic stays when a group kept reads it."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    wanted = text.casefold()
    groups, shares, topics = frame.groups, frame.shares, frame.topics
    if wanted:
        groups = [g for g in groups if wanted in g.group.casefold() or wanted in g.topic.casefold()]
        shares = [g for g in shares if wanted in g.group.casefold() or wanted in g.topic.casefold()]
        read = {g.topic for g in groups} | {g.topic for g in shares}
        topics = [t for t in topics if wanted in t.topic.casefold() or t.topic in read]
    key = _sort_key(sort)
    return Frame(
        frame.source,
        frame.taken_at,
        sorted(topics, key=key),
        sorted(groups, key=key),
        sorted(shares, key=key),
        frame.problems,
    )


class Samples:
    """Each partition's consumer samples (kq.ops.observe.Sample) over the last ``span`` seconds, for
    the status rule. A run of equal samples keeps only its first and its last: the rule reads where
    an offset stopped moving and whether lag grew, and an idle partition then costs two samples."""

    def __init__(self, span: float):
        self.span = span
        self._series: dict[tuple, deque[Sample]] = {}

    def add(self, key: tuple, sample: Sample, seed: list[Sample]) -> list[Sample]:
        """Add ``sample`` to ``key``'s series (begun with ``seed`` the first time); the series now."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = deque(seed[:-1])
        if (
            len(series) >= 2 and series[-1][1:] == sample[1:] and series[-2][1:] == sample[1:]
            # keep a run's first sample, which may be older than the window: it says since when
        ):
            series[-1] = sample
        else:
            series.append(sample)
        horizon = sample.at - self.span
        while len(series) > 2 and series[1].at <= horizon:
            series.popleft()
        return list(series)

    def keep_only(self, keys: set) -> None:
        for key in [k for k in self._series if k not in keys]:
            del self._series[key]


class Top:
    """Snapshots of a backend, one per ``sample()``, made into frames with rates, histories and status."""

    def __init__(
        self,
        backend,
        history_span: float = 120.0,
        rate_span: float = RATE_SPAN,
        stall_after: float = DEFAULT_STALL_AFTER,
        spark_width: int = 20,
    ):
        self.backend = backend
        self.stall_after = stall_after
        self.spark_width = spark_width
        self.topics_in = RateWindow(rate_span)
        self.groups_out = RateWindow(rate_span)
        self.lags = History(history_span, spark_width)
        # The status rule needs the samples since an offset stopped moving: at least stall_after back.
        self.samples = Samples(max(history_span, stall_after) + rate_span)
        self._now = 0.0
        # (group, topic) -> (its partitions' offsets and member count, when judged, the status then)
        self._judged: dict[tuple[str, str], tuple] = {}
        self._judged_now: dict[tuple[str, str], tuple] = {}

    def sample(self) -> Frame:
        """Take a snapshot now, and the frame it makes with the ones before it."""
        return self.frame(snapshot(self.backend), time.monotonic())

    def frame(self, snap: Snapshot, now: float) -> Frame:
        """The frame of ``snap``, taken at ``now`` (monotonic seconds), after the snapshots before it."""
        self._now = now
        self.topics_in.add(now, {name: t.current for name, t in snap.topics.items()})
        rates_in = {name: self.topics_in.rate(name) for name in snap.topics}
        seen: set[tuple] = set()  # the partitions sampled now: the others' samples are dropped
        self._judged_now = {}
        groups = [row for g in snap.groups.values() for row in self._group_rows(g, snap.taken_at, seen)]
        shares = [row for s in snap.shares.values() for row in self._share_rows(s, snap.taken_at, seen)]
        self.samples.keep_only(seen)
        self._judged = self._judged_now
        rows = groups + shares
        self.groups_out.add(now, {(r.group, r.topic, r.acquired is not None): r.committed for r in rows})
        self.lags.add(now, {(r.group, r.topic, r.acquired is not None): r.lag for r in rows})
        deepest: dict[str, int] = {}
        for r in rows:
            key = (r.group, r.topic, r.acquired is not None)
            r.rate_out = self.groups_out.rate(key)
            r.catch_up = catch_up_seconds(r.lag, rates_in.get(r.topic), r.rate_out)
            deepest[r.topic] = max(deepest.get(r.topic, 0), r.lag)
        topics = [
            TopicRow(
                name,
                t.partition_count,
                sum(p.current - p.oldest for p in t.partitions),
                t.current,
                t.size,
                rates_in[name],
                deepest.get(name, 0),
            )
            for name, t in snap.topics.items()
        ]
        return Frame(self.backend.description, snap.taken_at, topics, groups, shares, list(snap.problems))

    def lag_history(self, row: GroupRow) -> list[int | None]:
        """The row's lag over the history span, in ``spark_width`` slices, oldest first (for a
        sparkline; asked only for the rows on screen)."""
        return self.lags.buckets((row.group, row.topic, row.acquired is not None), self._now)

    def _group_rows(self, group: GroupState, now: float, keys: set[tuple]) -> list[GroupRow]:
        by_topic: dict[str, list] = {}
        for p in group.partitions:
            by_topic.setdefault(p.topic, []).append(p)
        rows = []
        for topic, partitions in by_topic.items():
            found = self._status(group, topic, partitions, now, keys)
            committed = sum(p.committed for p in partitions if p.committed is not None)
            lag = sum(p.lag for p in partitions)
            rows.append(GroupRow(group.name, topic, len(group.members), lag, committed, None, None, found))
        return rows

    def _status(self, group: GroupState, topic: str, partitions: list, now: float, keys: set[tuple]) -> str:
        """The group's status on ``topic`` (kq.ops.observe.group_status over its samples). Judged
        again only when an offset moved, or RECHECK seconds after it was last: its samples would
        only repeat (a run of equal samples keeps its first and last), and stalls take minutes."""
        sample_keys = [(group.name, topic, p.partition) for p in partitions]
        keys.update(sample_keys)
        signature = (len(group.members), [(p.committed, p.oldest, p.current) for p in partitions])
        judged = self._judged.get((group.name, topic))
        if judged is not None and judged[0] == signature and now - judged[1] < RECHECK:
            self._judged_now[(group.name, topic)] = judged
            return judged[2]
        history: dict[tuple[str, int], Sequence[Sample]] = {}
        for key, p in zip(sample_keys, partitions):
            seed = commit_samples(p, now)
            history[(topic, p.partition)] = self.samples.add(key, seed[-1], seed)
        state = GroupState(group.name, group.members, tuple(partitions))
        found, _ = group_status(state, now, self.stall_after, history)
        self._judged_now[(group.name, topic)] = (signature, now, found)
        return found

    def _share_rows(self, share: ShareState, now: float, keys: set[tuple]) -> list[GroupRow]:
        rows = []
        for topic in sorted({p.topic for p in share.partitions}):
            partitions = [p for p in share.partitions if p.topic == topic]
            settled = sum(p.acknowledged + p.dead_lettered for p in partitions)
            lag = sum(p.lag for p in partitions)
            key = ("share", share.name, topic)
            keys.add(key)
            # A share group has no committed offset: the records it settled stand for one.
            here = Sample(now, settled, settled + lag)
            found = status(self.samples.add(key, here, [here]), self.stall_after, share.members)
            rows.append(
                GroupRow(
                    share.name,
                    topic,
                    share.members,
                    lag,
                    settled,
                    None,
                    None,
                    found,
                    acquired=sum(p.acquired for p in partitions),
                    retrying=sum(p.retrying for p in partitions),
                    dead_lettered=sum(p.dead_lettered for p in partitions),
                )
            )
        return rows
