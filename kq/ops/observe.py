"""One look at what a place holds, and whether its consumers keep up (kq metrics, kq top, --check).

The interface, for the commands built on it:

``snapshot(backend, topics=None, memory=None) -> Snapshot``
    Everything below, read once from a ``kq.backends.base.Backend``: a data
    directory (``LocalBackend``: only small files are read — topic.json, the
    index and tail of each partition's last segment, segment sizes from
    ``stat``, offset and member files — never a log from its start) or a
    cluster (``kq -b``: its admin API; sizes and commit times are unknown
    there, so they are None). ``topics`` limits topics, groups and share
    groups to those topics. Nothing is written or locked but the lock
    probes that tell a live member from a dead one. ``memory``: a ``Memory``
    kept between calls (``kq top``, ``kq metrics --listen``): the states of
    topics and group directories the backend reports unchanged are the very
    objects of the last snapshot (``is`` tells a caller what it may keep).

``Snapshot``
    ``taken_at`` (seconds since the epoch), ``topics`` / ``groups`` /
    ``shares`` (dicts by name, sorted) and ``problems`` (a line for each
    topic or group that could not be read; the rest is still reported).

    - ``TopicState``: ``name``, ``partitions`` (``PartitionState``: ``topic``,
      ``partition``, ``oldest`` and ``current`` offsets — Kafka's log start
      and log end offsets, ``size`` in bytes or None), and ``partition_count``,
      ``size``, ``current`` (sum of end offsets) for the whole topic.
    - ``GroupState``: ``name``, ``members`` (ids of live members),
      ``partitions`` (``GroupPartitionState``: ``group``, ``topic``,
      ``partition``, ``committed`` (None: no commit), ``oldest``, ``current``,
      ``lag``, ``committed_at`` in ms or None) — every partition of every
      topic the group has offsets or members on, and ``lag``,
      ``last_commit_at`` for the whole group.
    - ``ShareState``: ``name``, ``members`` (live workers), ``partitions``
      (``SharePartitionState``: ``acquired``, ``retrying``, ``dead_lettered``,
      ``available``, ``acknowledged``, ``lag``), and their sums.

``status(samples, stall_after, members=None) -> str``
    A partition's consumer in Burrow's sense, from ``Sample(at, committed,
    end)``\\ s in time order (the last is now): ``OK``, ``BEHIND`` (falling
    behind), ``STALLED`` or ``STOPPED``. ``kq top`` passes the samples it
    took over its window; a one-snapshot check passes two built by
    ``commit_samples`` (the last commit, and now). The rules are in
    ``status``'s docstring. ``group_status`` is the worst over a group's
    partitions, with the partition that decided it.

``check(snapshot, max_lag=None, max_age=...) -> list[str]``
    One line per consumer group that is stalled, stopped or over a limit
    (``kq group describe --check``, ``kq lag``); empty when all is well.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..backends.base import Backend, GroupTopicOffsets, TopicInfo
from ..errors import KqError

OK = "OK"
BEHIND = "falling behind"
STALLED = "stalled"
STOPPED = "stopped"
_SEVERITY = {OK: 0, BEHIND: 1, STALLED: 2, STOPPED: 3}

# How long a committed offset may stay put while there is lag before its
# consumer counts as stalled (or stopped, without members): Burrow's default
# window is ten commits a minute apart; five minutes notices sooner.
DEFAULT_STALL_AFTER = 300.0


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    oldest: int  # the first offset still kept (log start offset)
    current: int  # the offset the next record gets (log end offset)
    size: int | None  # bytes on disk; None where the place does not tell


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: tuple[PartitionState, ...]

    @property
    def partition_count(self) -> int:
        return len(self.partitions)

    @property
    def current(self) -> int:
        return sum(p.current for p in self.partitions)

    @property
    def size(self) -> int | None:
        sizes = [p.size for p in self.partitions]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@dataclass(frozen=True)
class GroupPartitionState:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing here
    oldest: int
    current: int
    lag: int  # from the committed offset (or the oldest, without one or below it) to the end
    committed_at: int | None  # ms since the epoch; None where the place does not record it


@dataclass(frozen=True)
class GroupState:
    name: str
    members: tuple[str, ...]  # live members' ids
    partitions: tuple[GroupPartitionState, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def topics(self) -> list[str]:
        return sorted({p.topic for p in self.partitions})

    @property
    def last_commit_at(self) -> int | None:
        times = [p.committed_at for p in self.partitions if p.committed_at is not None]
        return max(times) if times else None


@dataclass(frozen=True)
class SharePartitionState:
    share: str
    topic: str
    partition: int
    acquired: int  # under a live lease now
    retrying: int  # failed, waiting for their next attempt
    dead_lettered: int  # failed for good (copied to the dead-letter topic, if it has one)
    available: int  # waiting for a worker
    acknowledged: int
    lag: int  # not yet settled


@dataclass(frozen=True)
class ShareState:
    name: str
    members: int  # live workers
    partitions: tuple[SharePartitionState, ...]

    def total(self, count: str) -> int:
        """The sum over partitions of ``acquired``, ``retrying``, ``dead_lettered``, ..."""
        return sum(getattr(p, count) for p in self.partitions)


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # seconds since the epoch
    topics: dict[str, TopicState] = field(default_factory=dict)
    groups: dict[str, GroupState] = field(default_factory=dict)
    shares: dict[str, ShareState] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


class Memory:
    """What ``snapshot`` built last time, for the next one to reuse (``kq top`` looks every second).

    A backend that answers with the very same ``TopicInfo`` or
    ``GroupTopicOffsets`` object as last time (a data directory's whose files
    have not changed: kq.backends.local_describe, Groups.overview) gets the
    very same states back: a directory of 1,000 topics and 10 groups costs
    the stamps that say nothing changed, not 10,000 new objects a second.
    Objects are compared by identity only, so a backend that makes new ones
    each time (a cluster) simply gets nothing reused.
    """

    def __init__(self) -> None:
        self.topics: dict[str, tuple[TopicInfo, TopicState]] = {}
        # group -> topic -> (what the backend said, the topic then, the rows made of them)
        self.pairs: dict[str, dict[str, tuple[GroupTopicOffsets, TopicInfo, tuple[GroupPartitionState, ...]]]] = {}
        self.groups: dict[str, tuple[list, GroupState]] = {}  # group -> (its pairs' rows, its state)


def snapshot(backend: Backend, topics: Iterable[str] | None = None, memory: Memory | None = None) -> Snapshot:
    """What ``backend`` holds now (see the module docstring); ``memory``: kept between calls to
    reuse the states of what did not change (``Memory``)."""
    taken_at = time.time()
    memory = memory or Memory()
    names = backend.topic_names()
    if topics is not None:
        wanted = set(topics)
        names = [n for n in names if n in wanted]
    infos, problems = backend.describe_topics(names)
    by_name: dict[str, TopicInfo] = {info.name: info for info in infos}
    known_topics = memory.topics
    memory.topics = {}
    topic_states = {}
    for info in infos:
        known = known_topics.get(info.name)
        if known is None or known[0] is not info:
            state = TopicState(
                info.name,
                tuple(
                    PartitionState(info.name, p.partition, p.start_offset, p.end_offset, p.size)
                    for p in info.partitions
                ),
            )
            known = (info, state)
        memory.topics[info.name] = known
        topic_states[info.name] = known[1]
    ids = {info.name: info.id for info in infos}
    groups = {}
    known_pairs, known_groups = memory.pairs, memory.groups
    memory.pairs, memory.groups = {}, {}
    for group in backend.group_names():
        try:
            overview = backend.group_overview(group, ids)
        except (KqError, OSError) as exc:
            problems.append(f"group '{group}': {exc}")
            continue
        was = known_pairs.get(group, {})
        pairs = memory.pairs[group] = {}
        parts, members = [], set()
        for found in overview:
            on = by_name.get(found.topic)
            if on is None:  # a topic since deleted, or one not asked for
                continue
            members.update(found.members)
            pair = was.get(found.topic)
            if pair is None or pair[0] is not found or pair[1] is not on:
                pair = (found, on, _group_rows(group, found, on))
            pairs[found.topic] = pair
            parts.append(pair[2])
        if not parts and not (topics is None and members):
            continue
        known_group = known_groups.get(group)
        member_ids = tuple(sorted(members))
        if (
            known_group is not None
            and known_group[1].members == member_ids
            and len(known_group[0]) == len(parts)
            and all(a is b for a, b in zip(known_group[0], parts))
        ):
            group_state = known_group[1]
        else:
            group_state = GroupState(group, member_ids, tuple(row for part in parts for row in part))
        memory.groups[group] = (parts, group_state)
        groups[group] = group_state
    shares = {}
    for share in backend.share_names():
        try:
            described = backend.describe_share(share)
        except (KqError, OSError) as exc:
            problems.append(f"share group '{share}': {exc}")
            continue
        share_rows = tuple(
            SharePartitionState(
                share,
                r["topic"],
                r["partition"],
                r["acquired"],
                r["retrying"],
                r["dead_lettered"],
                r["available"],
                r["acknowledged"],
                r["lag"],
            )
            for r in described["partitions"]
            if r["topic"] in by_name
        )
        if share_rows:
            live = sum(1 for w in described["workers"] if w.get("live"))
            shares[share] = ShareState(share, live, share_rows)
    return Snapshot(taken_at, topic_states, groups, shares, tuple(problems))


def _group_rows(group: str, found: GroupTopicOffsets, info: TopicInfo) -> tuple[GroupPartitionState, ...]:
    rows = []
    for p in info.partitions:
        committed = found.committed.get(p.partition)
        rows.append(
            GroupPartitionState(
                group,
                found.topic,
                p.partition,
                committed,
                p.start_offset,
                p.end_offset,
                p.end_offset - (p.start_offset if committed is None else max(committed, p.start_offset)),
                found.committed_at.get(p.partition),
            )
        )
    return tuple(rows)


# ---------------------------------------------------------------------- status


class Sample(NamedTuple):
    at: float  # seconds since the epoch
    committed: int  # the group's position: its committed offset (the oldest offset without one)
    end: int  # the partition's end offset then

    @property
    def lag(self) -> int:
        return max(self.end - self.committed, 0)


def status(samples: Sequence[Sample], stall_after: float = DEFAULT_STALL_AFTER, members: int | None = None) -> str:
    """A partition's consumer in Burrow's sense, from samples in time order (the last is now).

    - ``OK`` when the last lag is 0, or none of the rules below holds.
    - ``STALLED``: the committed offset has not moved for ``stall_after``
      seconds or more (since the first sample of the trailing run with the
      last sample's offset) while the lag is above 0 and no smaller than
      when it stopped moving: a consumer is there but makes no progress.
    - ``STOPPED``: the same with ``members == 0``: nobody is consuming.
    - ``BEHIND`` (falling behind): the offset moved over the samples, but
      the lag grew and never shrank between two of them.

    Samples are the window: ``kq top`` passes its last minutes. A check
    with one snapshot passes ``commit_samples(...)``: the last commit (lag
    unknown then, taken as 0, its lower bound) and now.
    """
    if not samples or samples[-1].lag <= 0:
        return OK
    last = samples[-1]
    since = len(samples) - 1
    while since > 0 and samples[since - 1].committed == last.committed:
        since -= 1
    if last.at - samples[since].at >= stall_after and last.lag >= samples[since].lag:
        return STOPPED if members == 0 else STALLED
    lags = [s.lag for s in samples]
    moved = samples[0].committed != last.committed
    if moved and lags[-1] > lags[0] and all(b >= a for a, b in zip(lags, lags[1:])):
        return BEHIND
    return OK


def commit_samples(p: GroupPartitionState, now: float) -> list[Sample]:
    """The samples one snapshot gives of a partition: its last commit (where its time is known) and now."""
    position = p.oldest if p.committed is None else max(p.committed, p.oldest)
    samples = [] if p.committed_at is None else [Sample(p.committed_at / 1000, position, position)]
    return samples + [Sample(now, position, p.current)]


def group_status(
    group: GroupState,
    now: float,
    stall_after: float = DEFAULT_STALL_AFTER,
    history: dict[tuple[str, int], Sequence[Sample]] | None = None,
) -> tuple[str, GroupPartitionState | None]:
    """The worst ``status`` over the group's partitions, and the partition it came from (None if OK).

    ``history`` gives each (topic, partition) its samples (``kq top``); a
    partition without any is judged on ``commit_samples``.
    """
    worst, where = OK, None
    for p in group.partitions:
        samples = (history or {}).get((p.topic, p.partition)) or commit_samples(p, now)
        found = status(samples, stall_after, len(group.members))
        if _SEVERITY[found] > _SEVERITY[worst]:
            worst, where = found, p
    return worst, where


def check(snapshot: Snapshot, max_lag: int | None = None, max_age: float = DEFAULT_STALL_AFTER) -> list[str]:
    """A line per consumer group that is stalled, stopped, or has more than ``max_lag`` records to
    read in all; nothing when every group is well. ``max_age``: seconds a committed offset
    may stay put while there is lag (known only where commit times are recorded)."""
    lines = []
    for group in snapshot.groups.values():
        found, where = group_status(group, snapshot.taken_at, max_age)
        reasons = []
        if where is not None and found in (STALLED, STOPPED):
            unmoved = (
                "" if where.committed_at is None else f" for {_duration(snapshot.taken_at - where.committed_at / 1000)}"
            )
            reasons.append(
                f"{found}: committed offset {where.committed} of {where.topic}/{where.partition} unchanged{unmoved}"
                f" with lag {where.lag}" + (" and no members" if found == STOPPED else "")
            )
        if max_lag is not None and group.lag > max_lag:
            reasons.append(f"lag {group.lag} over {max_lag}")
        if reasons:
            lines.append(f"group '{group.name}': " + "; ".join(reasons))
    return lines


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
