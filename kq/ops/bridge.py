"""The bridge: copy topics between a data directory and a Kafka cluster, exactly once.

``kq replicate TOPIC --to kafka://HOST:PORT`` copies a directory's topics to
a cluster; ``--from kafka://HOST:PORT --to DIR`` copies a cluster's into a
directory. Unlike a replica (kq.ops.replicate), the copy gets the offsets its
place gives it: a record keeps its partition, key, value, headers and
timestamp, not its offset. So the bridge records, per partition, which
source offsets became which target offsets, and translates the groups'
committed offsets through that record (``--groups``, as MirrorMaker 2's
checkpoints do).

Exactly once under ``kill -9`` (docs/GUARANTEES.md, "The bridge"):

- records are sent with an idempotent producer, so each partition's
  records land in the order sent, without duplicates or gaps: whatever
  landed of a run is a prefix of what was sent;
- the position (the next source offset, the target offset it will get)
  is recorded in the data directory after the records before it are
  acknowledged, and the initial position before anything is sent;
- a run first compares each target partition's end offset with the
  recorded position: records that landed after it (a run killed between
  the acknowledgement and the record) are the next ones of the source, in
  order; the bridge checks that they are (content digests) and records
  them, then copies on from after them.

The record lives in ``DATA/bridges/PEER/TOPIC.json`` of the directory side
(docs/FORMAT.md; kq.ops.bridge_state), and one copier at a time holds ``DATA/bridges/PEER/lock``.
kq.ops.bridge_copier copies one topic; kq.ops.bridge_compare compares records.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import zip_longest

from ..backends.base import Backend
from ..engine.fileio import FileLock, make_dirs
from ..errors import ClusterError, GroupBusy, KqError, ReplicaBusy, TopicNotFound
from ..errors import warn as kq_warn
from .bridge_compare import partition_records, same_record
from .bridge_copier import CHECKPOINT_SECONDS, FOLLOW_IDLE_SECONDS, CopyReport, TopicCopier
from .bridge_state import BridgeState, PartitionState

BRIDGES_DIR = "bridges"
LOCK_NAME = "lock"


def kafka_url(text: str) -> str | None:
    """The brokers of ``kafka://HOST:PORT[,HOST:PORT...]``, or None if ``text`` is not such a URL."""
    if not text.startswith("kafka://"):
        return None
    from ..backends.kafka_settings import parse_brokers

    return parse_brokers(text)


def peer_name(direction: str, brokers: str) -> str:
    """The directory name of a bridge's records: ``to-kafka-HOST_PORT`` or ``from-kafka-HOST_PORT``."""
    return f"{direction}-kafka-" + re.sub(r"[^A-Za-z0-9.-]", "_", ",".join(sorted(brokers.split(","))))[:200]


# ---------------------------------------------------------------------- reports


@dataclass
class VerifyReport:
    topic: str
    partition: int
    source_records: int | None  # records on record of the copy, still in the source
    target_records: int | None
    status: str  # identical | lagging | mismatch | missing
    detail: str = ""
    groups: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "lagging")


def report_dict(report) -> dict:
    d = asdict(report)
    if isinstance(report, VerifyReport):
        d["ok"] = report.ok
    return d


# ---------------------------------------------------------------------- the bridge


class Bridge:
    """Copies topics from ``source`` to ``target`` (one of them a data directory, whose ``records``
    directory, DATA/bridges/PEER, keeps the record of the copy)."""

    def __init__(self, source: Backend, target: Backend, records: str, groups: bool = False):
        self.source = source
        self.target = target
        self.records_path = records
        self.groups = groups
        self.progress: Callable[[CopyReport], None] | None = None  # told of each partition's progress
        self._lock: FileLock | None = None

    def __enter__(self) -> Bridge:
        make_dirs(self.records_path)
        lock = FileLock(os.path.join(self.records_path, LOCK_NAME))
        if not lock.acquire(blocking=False):
            lock.close()
            raise ReplicaBusy(self.records_path)
        self._lock = lock
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def state_path(self, topic: str) -> str:
        return os.path.join(self.records_path, f"{topic}.json")

    def topic_names(self, topics: list[str] | None) -> list[str]:
        names = self.source.topic_names() if topics is None else topics
        for name in names:
            self.source.partition_count(name)  # TopicNotFound before anything is copied
        return names

    # ------------------------------------------------------------------ copying

    def copy(self, topics: list[str] | None = None, on_error=None) -> list[CopyReport]:
        """Copy what is new in each topic; with ``on_error(topic, error)`` a failing topic is
        reported there and the others are still copied."""
        reports = []
        for name in self.topic_names(topics):
            try:
                copier = TopicCopier(self, name)
                try:
                    copier.pump(follow=False)
                    copier.checkpoint(force=True)
                finally:
                    copier.close()
                reports += copier.reports()
            except KqError as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
        return reports

    def follow(self, topics: list[str] | None = None, on_copy=None, on_error=None) -> None:
        """Copy until interrupted, each topic's new records within about a second."""
        copiers: dict[str, TopicCopier] = {}
        failing: dict[str, str] = {}
        try:
            while True:
                for name in self.topic_names(topics):
                    try:
                        copier = copiers.get(name)
                        if copier is None:
                            copier = copiers[name] = TopicCopier(self, name, follow=True)
                        copier.pump(follow=True)
                        if copier.checkpoint_due() or time.monotonic() - copier.last_checkpoint >= CHECKPOINT_SECONDS:
                            copier.checkpoint(force=True)  # at least once a second: groups move on the source too
                            for r in copier.reports(reset=True):
                                if r.records or r.recovered or r.skipped_to is not None:
                                    if on_copy is not None:
                                        on_copy(r)
                        if name in failing:
                            del failing[name]
                            if on_error is not None:
                                on_error(name, None)
                    except KqError as exc:
                        broken = copiers.pop(name, None)
                        if broken is not None:
                            broken.close(quietly=True)
                        if failing.get(name) != str(exc) and on_error is not None:
                            on_error(name, exc)
                        failing[name] = str(exc)
                        time.sleep(FOLLOW_IDLE_SECONDS)
        finally:
            for copier in copiers.values():
                try:
                    copier.checkpoint(force=True)
                except KqError:
                    pass
                finally:
                    copier.close(quietly=True)

    # ------------------------------------------------------------------ groups

    def copy_groups(self, topic: str, state: BridgeState) -> None:
        """Translate the source groups' committed offsets and commit them on the target: only
        forward, and only for a group with no live members there (as MirrorMaker 2 does)."""
        for group in self.source.groups_of_topic(topic):
            committed = self.source.committed(group, topic)
            wanted = {p: state.partitions[p].translate(o) for p, o in committed.items() if p in state.partitions}
            have = self.target.committed(group, topic) if group in self.target.group_names() else {}
            moves = {p: o for p, o in wanted.items() if have.get(p) is None or have[p] < o}
            if not moves:
                continue
            try:
                self.target.check_no_live_members(group, topic)
            except GroupBusy:
                kq_warn(
                    f"group '{group}' has live members on {self.target.description}: "
                    f"its offsets on '{topic}' were not carried over this time"
                )
                continue
            # The metadata of the commits that move (read only then: in cluster mode it takes a
            # consumer), where the offset is still the one translated.
            metadata = {
                p: m
                for p, (o, m) in self.source.committed_with_metadata(group, topic).items()
                if p in moves and o == committed[p]
            }
            self.target.commit_offsets(group, topic, moves, metadata)

    # ------------------------------------------------------------------ verifying

    def verify(self, topics: list[str] | None = None) -> list[VerifyReport]:
        reports = []
        for name in self.topic_names(topics):
            state = BridgeState.load(self.state_path(name), name)
            source_info = self.source.describe_topic(name)
            target_info = None
            count = len(source_info.partitions)
            try:
                target_count = self.target.partition_count(name)
            except TopicNotFound:
                target_count = 0
            for p in range(count, target_count):
                reports.append(VerifyReport(name, p, None, None, "mismatch", "the target has it, the source does not"))
            for p in range(count):
                ps = state.partitions.get(p)
                if p >= target_count or ps is None:
                    reports.append(VerifyReport(name, p, None, None, "missing", "not copied"))
                    continue
                if target_info is None:
                    target_info = self.target.describe_topic(name)
                reports.append(
                    self._verify_partition(
                        name, p, ps, source_info.partitions[p].start_offset, target_info.partitions[p]
                    )
                )
            if self.groups and target_count:
                self._verify_groups(name, state, {r.partition: r for r in reports if r.topic == name})
        return reports

    def _verify_partition(self, topic: str, p: int, ps: PartitionState, source_start: int, target) -> VerifyReport:
        """Compare the records on record that both sides still hold, by count and content digest."""
        report = VerifyReport(topic, p, 0, 0, "identical")
        if not ps.runs:
            report.target_records = max(target.end_offset - ps.target_next, 0)
            if report.target_records:
                report.status, report.detail = "mismatch", "the target holds records the copy did not write"
            return report
        # From the first record on record that both still hold (retention may have deleted some on either side).
        first_source = max(ps.runs[0][0], source_start)
        first_target = ps.translate(first_source)
        if first_target < target.start_offset:
            first_target = target.start_offset
            first_source = ps.source_of(first_target)
            if first_source is None:  # the target's retention deleted every copied record
                first_source, first_target = ps.source_next, ps.target_next
        # Side by side, record by record: lagging is fine if what the target holds is the source's beginning.
        n_source = n_target = 0
        differ = None  # the first (source, target) offsets whose records differ
        try:
            pairs = zip_longest(
                partition_records(self.source, topic, p, first_source),
                partition_records(self.target, topic, p, first_target),
            )
            for source, target in pairs:
                n_source += source is not None
                n_target += target is not None
                if differ is None and source is not None and target is not None and not same_record(source, target):
                    differ = (source.offset, target.offset)
        except KqError as exc:
            report.status, report.detail = "mismatch", str(exc)
            return report
        report.source_records, report.target_records = n_source, n_target
        if n_target > n_source:
            report.status, report.detail = "mismatch", "the target holds more records than the source"
        elif differ is not None:
            report.status = "mismatch"
            report.detail = f"records differ from source offset {differ[0]} and target offset {differ[1]} on"
        elif n_target < n_source:
            report.status, report.detail = "lagging", f"{n_source - n_target} record(s) behind"
        return report

    def _verify_groups(self, topic: str, state: BridgeState, reports: dict[int, VerifyReport]) -> None:
        target_groups = set(self.target.group_names())
        for group in self.source.groups_of_topic(topic):
            theirs = self.source.committed(group, topic)
            ours = self.target.committed(group, topic) if group in target_groups else {}
            for p, offset in sorted(theirs.items()):
                if p not in reports or p not in state.partitions:
                    continue
                wanted = state.partitions[p].translate(offset)
                have = ours.get(p)
                status = "same" if have == wanted else ("behind" if have is None or have < wanted else "ahead")
                reports[p].groups.append(
                    {"group": group, "source": offset, "target": have, "translated": wanted, "status": status}
                )


__all__ = [
    "Bridge",
    "BridgeState",
    "ClusterError",
    "CopyReport",
    "PartitionState",
    "VerifyReport",
    "kafka_url",
    "peer_name",
    "report_dict",
]
