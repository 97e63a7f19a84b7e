"""What ``kq top`` shows: topics, consumer groups and share groups with their rates, sampled again and again.

``Top`` takes a snapshot of a backend (kq.ops.observe) each time it is asked,
keeps the last few (rates over a sliding window, a lag's history for a
sparkline, the samples the status rule reads) and makes a ``Frame`` of
rows; ``arrange`` sorts and filters them as the viewer asked. Drawing them
is the command's job (kq/cli/top.py).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .observe import (
    DEFAULT_STALL_AFTER,
    OK,
    STALLED,
    STOPPED,
    GroupState,
    Memory,
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

    def forget(self, keys) -> None:
        for key in keys:
            self._series.pop(key, None)


@dataclass
class _Pair:
    """A consumer group on one topic, as the last frame showed it."""

    partitions: tuple  # its GroupPartitionStates then (the snapshot's own objects, compared by identity)
    members: int
    row: GroupRow
    keys: list[tuple]  # its partitions' keys in Samples
    judged_until: float  # when its status must be judged again, its offsets unchanged
    changed_at: float  # the frame (monotonic seconds) its offsets last changed in


@dataclass
class _Group:
    state: GroupState
    pairs: dict[str, _Pair]  # by topic
    unsettled: list[_Pair]  # whose rate or time to catch up may still change with time alone
    judged_until: float  # the earliest of its pairs'
    deepest: dict[str, int]  # topic -> lag


class Top:
    """Snapshots of a backend, one per ``sample()``, made into frames with rates, histories and status.

    Looking every second at a directory of 1,000 topics and 10 groups, most
    of it has not changed since the second before: the snapshot hands back
    the very states it gave then (kq.ops.observe.Memory), and a group on a
    topic whose states are the same objects keeps its row. Its counters
    stand still in the rate windows (nothing to add), its status is judged
    again only when time alone could change it (``_valid_until``), and its
    rate and time to catch up only until they have settled at 0.
    """

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
        self.memory = Memory()
        self._now = 0.0
        self._groups: dict[str, _Group] = {}
        self._share_keys: set[tuple] = set()  # share groups' keys in Samples
        self._shares_counted: set[tuple] = set()  # and in the rate window and lag history

    def sample(self) -> Frame:
        """Take a snapshot now, and the frame it makes with the ones before it."""
        return self.frame(snapshot(self.backend, memory=self.memory), time.monotonic())

    def frame(self, snap: Snapshot, now: float) -> Frame:
        """The frame of ``snap``, taken at ``now`` (monotonic seconds), after the snapshots before it."""
        self._now = now
        self.topics_in.add(now, {name: t.current for name, t in snap.topics.items()})
        rates_in = {name: self.topics_in.rate(name) for name in snap.topics}
        self.groups_out.tick(now)
        self.lags.tick(now)
        settled_since = self.groups_out.settled_since()
        known, self._groups = self._groups, {}
        groups: list[GroupRow] = []
        deepest: dict[str, int] = {}
        for g in snap.groups.values():
            found = self._group(g, known.pop(g.name, None), snap.taken_at, now)
            self._groups[g.name] = found
            if found.unsettled:
                for pair in found.unsettled:
                    r = pair.row
                    r.rate_out = self.groups_out.rate((r.group, r.topic, False))
                    r.catch_up = catch_up_seconds(r.lag, rates_in.get(r.topic), r.rate_out)
                if settled_since is not None:
                    found.unsettled = [p for p in found.unsettled if p.changed_at > settled_since]
            groups.extend(pair.row for pair in found.pairs.values())
            for topic, lag in found.deepest.items():
                if lag > deepest.get(topic, 0):
                    deepest[topic] = lag
        for gone in known.values():
            self._forget(gone.pairs.values())
        share_keys: set[tuple] = set()
        shares = [row for s in snap.shares.values() for row in self._share_rows(s, snap.taken_at, share_keys)]
        self.samples.forget(self._share_keys - share_keys)
        self._share_keys = share_keys
        counters = {(r.group, r.topic, True): r.committed for r in shares}
        lags = {(r.group, r.topic, True): r.lag for r in shares}
        gone_shares = [key for key in self._shares_counted if key not in counters]
        self.groups_out.forget(gone_shares)
        self.lags.forget(gone_shares)
        self._shares_counted = set(counters)
        self.groups_out.update(now, counters)
        self.lags.update(now, lags)
        for r in shares:
            r.rate_out = self.groups_out.rate((r.group, r.topic, True))
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

    def _group(self, group: GroupState, known: _Group | None, taken_at: float, now: float) -> _Group:
        """The group's rows: those of the last frame where its states on a topic are the same objects."""
        if known is not None and known.state is group:
            if known.judged_until <= taken_at:
                for pair in known.pairs.values():
                    if pair.judged_until <= taken_at:
                        pair.row.status, pair.judged_until = self._judge(group, pair.row.topic, pair, taken_at)
                known.judged_until = min(p.judged_until for p in known.pairs.values())
            return known
        by_topic: dict[str, list] = {}
        for p in group.partitions:
            by_topic.setdefault(p.topic, []).append(p)
        was: dict[str, _Pair] = {} if known is None else known.pairs
        pairs: dict[str, _Pair] = {}
        unsettled: list[_Pair] = []
        changed_counts: dict[tuple, int] = {}
        changed_lags: dict[tuple, int] = {}
        members = len(group.members)
        for topic, partitions in by_topic.items():
            kept = was.pop(topic) if topic in was else None
            if (
                kept is not None
                and kept.members == members
                and len(kept.partitions) == len(partitions)
                and all(a is b for a, b in zip(kept.partitions, partitions))
            ):
                if kept.judged_until <= taken_at:
                    kept.row.status, kept.judged_until = self._judge(group, topic, kept, taken_at)
                pairs[topic] = kept
                continue
            committed = sum(p.committed for p in partitions if p.committed is not None)
            lag = sum(p.lag for p in partitions)
            row = GroupRow(group.name, topic, members, lag, committed, None, None, OK)
            keys = [(group.name, topic, p.partition) for p in partitions]
            if kept is not None:
                self.samples.forget(set(kept.keys) - set(keys))
            fresh = _Pair(tuple(partitions), members, row, keys, 0.0, now)
            row.status, fresh.judged_until = self._judge(group, topic, fresh, taken_at)
            pairs[topic] = fresh
            unsettled.append(fresh)
            changed_counts[(group.name, topic, False)] = committed
            changed_lags[(group.name, topic, False)] = lag
        self._forget(was.values())
        if known is not None:  # kept rows whose rates had not settled yet
            unsettled += [p for p in known.unsettled if pairs.get(p.row.topic) is p]
        self.groups_out.update(now, changed_counts)
        self.lags.update(now, changed_lags)
        return _Group(
            group,
            pairs,
            unsettled,
            min((p.judged_until for p in pairs.values()), default=math.inf),
            {topic: pair.row.lag for topic, pair in pairs.items()},
        )

    def _forget(self, pairs) -> None:
        """Forget the samples, counters and lag history of groups on topics no longer there."""
        for pair in pairs:
            self.samples.forget(pair.keys)
            key = (pair.row.group, pair.row.topic, False)
            self.groups_out.forget([key])
            self.lags.forget([key])

    def _judge(self, group: GroupState, topic: str, pair: _Pair, now: float) -> tuple[str, float]:
        """The group's status on ``topic`` (kq.ops.observe.group_status over its samples), and until
        when it stands while its offsets do not change (``_valid_until``)."""
        history: dict[tuple[str, int], Sequence[Sample]] = {}
        for key, p in zip(pair.keys, pair.partitions):
            seed = commit_samples(p, now)
            history[(topic, p.partition)] = self.samples.add(key, seed[-1], seed)
        state = GroupState(group.name, group.members, pair.partitions)
        found, _ = group_status(state, now, self.stall_after, history)
        return found, min(
            (self._valid_until(series, now, len(group.members)) for series in history.values()), default=math.inf
        )

    def _valid_until(self, series: Sequence[Sample], now: float, members: int) -> float:
        """Until when a partition's status stands while its samples only repeat the last one.

        No lag, stalled or stopped: for good (a repeated sample only lengthens
        the run the stall is measured over). Otherwise time alone changes it
        at two moments only: when the run of the last committed offset is
        ``stall_after`` long (the stall rule), and when the oldest sample but
        one slides out of the window (what ``falling behind`` looks at).
        """
        found = status(series, self.stall_after, members)
        if series[-1].lag <= 0 or found in (STALLED, STOPPED):
            return math.inf
        since = len(series) - 1
        while since > 0 and series[since - 1].committed == series[-1].committed:
            since -= 1
        stall_at = series[since].at + self.stall_after
        until = stall_at if stall_at > now else math.inf  # passed, and not stalled: the lag fell since
        if len(series) > 2:
            until = min(until, series[1].at + self.samples.span)
        return until

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
