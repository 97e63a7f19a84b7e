"""The bridge: copy topics between a data directory and a Kafka cluster, exactly once.

``kq replicate TOPIC --to kafka://HOST:PORT`` copies a directory's topics to
a cluster; ``--from kafka://HOST:PORT --to DIR`` copies a cluster's into a
directory. Unlike a replica (kq.replicate), the copy gets the offsets its
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
(docs/FORMAT.md), and one copier at a time holds ``DATA/bridges/PEER/lock``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import zip_longest

from ..backends.base import Backend, Producer, Reader
from ..engine.fileio import FileLock, atomic_write, integer_field, make_dirs, read_metadata, shown
from ..errors import ClusterError, CorruptFile, GroupBusy, KqError, ReplicaBusy, TopicNotFound
from ..errors import warn as kq_warn
from ..offsetspec import ABSOLUTE, OffsetRange, OffsetSpec

BRIDGES_DIR = "bridges"
LOCK_NAME = "lock"
STATE_FORMAT = 1
# A checkpoint (wait for every acknowledgement, then record the position)
# at least this often, and after this many records.
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_RECORDS = 50_000
# Runs of source offsets that became consecutive target offsets: a topic with
# no gaps in its offsets has one run; a compacted one many. Past this many,
# the oldest are forgotten and a group offset before the first kept run
# translates to that run's start (the group reads some records again).
MAX_RUNS = 1000
MAX_SENDING_RUNS = CHECKPOINT_RECORDS  # a run per record at worst, between two checkpoints
FOLLOW_IDLE_SECONDS = 0.1
MAX_OFFSET = 2**63 - 1


def kafka_url(text: str) -> str | None:
    """The brokers of ``kafka://HOST:PORT[,HOST:PORT...]``, or None if ``text`` is not such a URL."""
    if not text.startswith("kafka://"):
        return None
    from ..backends.kafka_settings import parse_brokers

    return parse_brokers(text)


def peer_name(direction: str, brokers: str) -> str:
    """The directory name of a bridge's records: ``to-kafka-HOST_PORT`` or ``from-kafka-HOST_PORT``."""
    return f"{direction}-kafka-" + re.sub(r"[^A-Za-z0-9.-]", "_", ",".join(sorted(brokers.split(","))))[:200]


# ---------------------------------------------------------------------- the record of a copy


@dataclass
class PartitionState:
    """Where one partition's copy stands: the next source offset to copy, the target offset it
    will get, and the runs [source offset, target offset, count] of records copied so far."""

    source_next: int
    target_next: int
    runs: list = field(default_factory=list)
    # Runs [source offset, count] sent after the recorded position, on record *before* they are
    # sent: what a killed run landed is their beginning, even once the source has deleted or
    # compacted those records away.
    sending: list = field(default_factory=list)
    # [source offset, digest] of the last record copied: a source that holds another record
    # there now was deleted and created again (a cluster may have no topic ids to say so).
    last: list | None = None

    def add(self, source_first: int, count: int) -> None:
        """``count`` records with consecutive source offsets from ``source_first`` were copied
        (as the next ``count`` target offsets)."""
        if not count:
            return
        if self.runs:
            s, t, n = self.runs[-1]
            if s + n == source_first and t + n == self.target_next:
                self.runs[-1][2] = n + count
                self._moved(source_first, count)
                return
        self.runs.append([source_first, self.target_next, count])
        if len(self.runs) > MAX_RUNS:
            del self.runs[0]
        self._moved(source_first, count)

    def _moved(self, source_first: int, count: int) -> None:
        self.source_next = source_first + count
        self.target_next += count

    def translate(self, offset: int) -> int:
        """The target offset from which a reader at source ``offset`` reads on: the target offset
        of the first copied record at or after ``offset`` (the target's next one if none is)."""
        if offset >= self.source_next:
            return self.target_next
        i = bisect.bisect_right([r[0] for r in self.runs], offset) - 1
        if i < 0:
            return self.runs[0][1] if self.runs else self.target_next
        s, t, n = self.runs[i]
        if offset < s + n:
            return t + (offset - s)
        return self.runs[i + 1][1] if i + 1 < len(self.runs) else self.target_next

    def source_of(self, target_offset: int) -> int | None:
        """The source offset of the record copied to ``target_offset`` (None if it is not on record)."""
        for s, t, n in self.runs:
            if t <= target_offset < t + n:
                return s + (target_offset - t)
        return None


class BridgeState:
    """The record of one topic's copy, kept on the data directory's side."""

    def __init__(self, path: str, topic: str):
        self.path = path
        self.topic = topic
        self.source_id: str | None = None
        self.target_id: str | None = None
        self.partitions: dict[int, PartitionState] = {}

    @classmethod
    def load(cls, path: str, topic: str) -> BridgeState:
        state = cls(path, topic)
        try:
            meta = read_metadata(path)
        except FileNotFoundError:
            return state
        if meta.get("format") != STATE_FORMAT or meta.get("topic") != topic:
            raise CorruptFile(path, f"not a kq bridge record of topic '{topic}' (format {shown(meta.get('format'))})")
        for key in ("source_id", "target_id"):
            value = meta.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > 64):
                raise CorruptFile(path, f"{key} is {shown(value)}")
            setattr(state, key, value)
        partitions = meta.get("partitions")
        if not isinstance(partitions, dict):
            raise CorruptFile(path, "partitions is not an object")
        for name, entry in partitions.items():
            if not (name.isascii() and name.isdigit()) or not isinstance(entry, dict):
                raise CorruptFile(path, f"partition {shown(name)} is not a partition's record")
            runs = entry.get("runs")
            if not isinstance(runs, list) or len(runs) > MAX_RUNS or not all(_is_run(r) for r in runs):
                raise CorruptFile(path, f"partition {name}: runs are not [source, target, count] offsets")
            sending = entry.get("sending", [])
            if (
                not isinstance(sending, list)
                or len(sending) > MAX_SENDING_RUNS
                or not all(isinstance(r, list) and len(r) == 2 and _is_run([0, *r]) for r in sending)
            ):
                raise CorruptFile(path, f"partition {name}: sending is not [source, count] runs")
            last = entry.get("last")
            if last is not None and not (
                isinstance(last, list)
                and len(last) == 2
                and type(last[0]) is int
                and 0 <= last[0] <= MAX_OFFSET
                and isinstance(last[1], str)
                and len(last[1]) == 64
            ):
                raise CorruptFile(path, f"partition {name}: last is not [source offset, digest]")
            state.partitions[int(name)] = PartitionState(
                integer_field(entry, "source_next", path, 0, MAX_OFFSET),
                integer_field(entry, "target_next", path, 0, MAX_OFFSET),
                [list(r) for r in runs],
                [list(r) for r in sending],
                None if last is None else list(last),
            )
        return state

    def save(self) -> None:
        meta = {
            "format": STATE_FORMAT,
            "topic": self.topic,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "partitions": {str(p): asdict(s) for p, s in sorted(self.partitions.items())},
        }
        make_dirs(os.path.dirname(self.path))
        atomic_write(self.path, json.dumps(meta, separators=(",", ":")).encode() + b"\n")


def _is_run(run) -> bool:
    return (
        isinstance(run, list)
        and len(run) == 3
        and all(type(x) is int and 0 <= x <= MAX_OFFSET for x in run)
        and run[2] > 0
    )


# ---------------------------------------------------------------------- digests


def record_digest(r) -> str:
    """The hex SHA-256 of a record's timestamp, key, value and headers, fed unambiguously
    (docs/FORMAT.md, "Bridge records": ``last``)."""
    h = hashlib.sha256()

    def chunk(data: bytes | None) -> None:
        if data is None:
            h.update(b"\xff")
        else:
            h.update(struct.pack(">I", len(data)))
            h.update(data)

    h.update(struct.pack(">q", r.timestamp))
    chunk(r.key)
    chunk(r.value)
    h.update(struct.pack(">I", len(r.headers)))
    for name, value in r.headers:
        chunk(name.encode("utf-8"))
        chunk(value)
    return h.hexdigest()


def same_record(source, target) -> bool:
    """Whether ``target`` is the copy of ``source``. librdkafka cannot send a timestamp of 0 (it
    reads 0 as "now"), so a source record stamped 0 matches its copy whatever the copy's stamp."""

    def content(r) -> tuple:
        return r.key, r.value, [(name, value) for name, value in r.headers]

    return (source.timestamp == target.timestamp or source.timestamp == 0) and content(source) == content(target)


def _records(backend: Backend, topic: str, partition: int, start: int, count: int | None = None, stop=None):
    """The records of one partition from ``start`` (``count`` of them, or up to ``stop``, or to the end)."""
    if count == 0:
        return
    stop_spec = None if stop is None else OffsetSpec(ABSOLUTE, stop)
    reader = backend.reader(topic, [partition], OffsetRange(OffsetSpec(ABSOLUTE, start), stop_spec))
    try:
        for slices in reader.rounds():
            for sl in slices:
                for r in sl.batch.records(sl.start, sl.stop):
                    yield r
                    if count is not None:
                        count -= 1
                        if count == 0:
                            return
    finally:
        reader.close()


# ---------------------------------------------------------------------- reports


@dataclass
class CopyReport:
    topic: str
    partition: int
    from_offset: int  # source offsets copied: from_offset .. to_offset - 1
    to_offset: int
    target_from: int  # the target offsets they got
    target_to: int
    records: int = 0
    bytes: int = 0
    recovered: int = 0  # records a killed run had landed, found and put on record
    skipped_to: int | None = None  # the source's retention had deleted what was not yet copied


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
                _records(self.source, topic, p, first_source), _records(self.target, topic, p, first_target)
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


class TopicCopier:
    """One topic's copy: a reader on the source, an idempotent producer to the target, the record."""

    def __init__(self, bridge: Bridge, topic: str, follow: bool = False):
        self.bridge = bridge
        self.topic = topic
        self.source, self.target = bridge.source, bridge.target
        self.state = BridgeState.load(bridge.state_path(topic), topic)
        self._reports: dict[int, CopyReport] = {}
        self._pending: dict[int, list] = {}  # partition -> runs [source first, count] sent since the checkpoint
        self._pending_records = 0
        self._last: dict = {}  # partition -> the last record sent since the checkpoint
        self.last_checkpoint = time.monotonic()
        self._reader: Reader | None = None
        self._producer: Producer | None = None
        self._rounds: Iterator | None = None
        info = self.source.describe_topic(topic)
        self._ensure_target(info)
        self._recover(info)
        starts = {p: ps.source_next for p, ps in sorted(self.state.partitions.items())}
        self._reader = self.source.reader_from(topic, starts, follow=follow)

    # ------------------------------------------------------------------ set-up

    def _ensure_target(self, info) -> None:
        count = len(info.partitions)
        source_id = self.source.topic_id(self.topic)
        if self.state.source_id is not None and source_id is not None and source_id != self.state.source_id:
            raise KqError(
                f"topic '{self.topic}' was deleted and created again in {self.source.description} since it was "
                f"copied; to copy it from scratch, delete {self.state.path} (and the copy)"
            )
        try:
            have = self.target.partition_count(self.topic)
        except TopicNotFound:
            if self.state.partitions:
                raise KqError(
                    f"topic '{self.topic}' no longer exists in {self.target.description}, where it was copied; "
                    f"to copy it from scratch, delete {self.state.path}"
                ) from None
            self.target.create_topic(self.topic, count, info.config)
            have = count
        if have < count:
            self.target.add_partitions(self.topic, count)
        elif have > count:
            raise KqError(
                f"topic '{self.topic}' has {count} partitions in {self.source.description} "
                f"but {have} in {self.target.description}"
            )
        target_id = self.target.topic_id(self.topic)
        if self.state.target_id is not None and target_id is not None and target_id != self.state.target_id:
            raise KqError(
                f"topic '{self.topic}' was deleted and created again in {self.target.description} since it was "
                f"copied there; to copy it from scratch, delete {self.state.path}"
            )
        self.state.source_id = self.state.source_id or source_id
        self.state.target_id = self.state.target_id or target_id

    def _recover(self, info) -> None:
        """Put on record what a killed run landed, and start new partitions where the target ends."""
        target = self.target.describe_topic(self.topic)
        ends = self._target_ends(target)
        fresh = False
        for p, sp in enumerate(info.partitions):
            end = ends[p]
            ps = self.state.partitions.get(p)
            if ps is None:
                if end > target.partitions[p].start_offset:
                    raise KqError(
                        f"{self.topic}/{p} in {self.target.description} holds records kq replicate did not copy "
                        "there; the bridge copies into an empty topic or one it filled itself"
                    )
                self.state.partitions[p] = PartitionState(sp.start_offset, end)
                fresh = True
                continue
            self._check_source(p, ps, sp)
            if end < ps.target_next:
                raise KqError(
                    f"{self.topic}/{p} ends at offset {end} in {self.target.description}, but the copy put records "
                    f"up to offset {ps.target_next - 1} there (was the topic deleted and created again?); "
                    f"to copy it from scratch, delete {self.state.path}"
                )
            if end > ps.target_next:
                self._adopt(p, ps, end)
            if ps.sending:
                ps.sending = []  # what landed of it is on record now; the rest is sent again
                fresh = True
            if sp.start_offset > ps.source_next:
                # The source's retention deleted what was not yet copied: go on from its start.
                report = self.report(p)
                report.skipped_to = report.from_offset = report.to_offset = sp.start_offset
                ps.source_next = sp.start_offset
                fresh = True
        if fresh or any(r.recovered for r in self._reports.values()):
            self.state.save()  # on record before anything is sent

    def _target_ends(self, target) -> dict[int, int]:
        """Each target partition's end offset, read from its records where the copy has a record
        of it, rather than taken from the end it lists: a broker may list one short (Tansu 0.6
        answers ListOffsets "latest" with its last batch's base offset + 1), and a short end
        would make the bridge send again records a killed run landed, or refuse the copy it made.

        One reader, from the recorded position (or the listed end, if that is lower: to tell a
        short list from a topic that lost records) to the end a fetch reports.
        """
        ends = {p: tp.end_offset for p, tp in enumerate(target.partitions)}
        starts = {
            p: max(min(ps.target_next, ends[p]), target.partitions[p].start_offset)
            for p, ps in self.state.partitions.items()
            if p in ends
        }
        if not starts:
            return ends
        reader = self.target.reader_from(self.topic, starts)
        try:
            for slices in reader.rounds():
                for sl in slices:
                    if sl.stop > sl.start:
                        ends[sl.partition] = max(ends[sl.partition], sl.batch.offset_at(sl.stop - 1) + 1)
        finally:
            reader.close()
        return ends

    def _check_source(self, p: int, ps: PartitionState, sp) -> None:
        """Refuse a source partition that is not the one copied: it ends before what was copied
        from it, or holds another record where the last copied one was."""
        if sp.end_offset < ps.source_next:
            raise KqError(
                f"{self.topic}/{p} ends at offset {sp.end_offset} in {self.source.description}, but records up to "
                f"offset {ps.source_next - 1} were copied from it (was the topic deleted and created again?); "
                f"to copy it from scratch, delete {self.state.path} (and the copy)"
            )
        if ps.last is None or ps.last[0] < sp.start_offset:
            return
        offset, digest = ps.last
        for r in _records(self.source, self.topic, p, offset, count=1):
            if r.offset == offset and record_digest(r) != digest:
                raise KqError(
                    f"{self.topic}/{p} in {self.source.description} holds another record at offset {offset} than "
                    f"the one copied from there (was the topic deleted and created again?); to copy it from "
                    f"scratch, delete {self.state.path} (and the copy)"
                )

    def _adopt(self, p: int, ps: PartitionState, end: int) -> None:
        """Records a killed run landed after the recorded position: check they are the beginning of
        what it was sending, then record them.

        Each is compared with its source record where the source still holds it (retention,
        trim or compaction may have removed it since; ``sending`` still says which it was).
        """
        landed = end - ps.target_next
        offsets = [o for first, count in ps.sending for o in range(first, first + count)][:landed]
        if len(offsets) == landed:
            sources = {r.offset: r for r in _records(self.source, self.topic, p, offsets[0], stop=offsets[-1] + 1)}
        else:  # a record written by a kq that kept no sending runs: the source's next records
            found = list(_records(self.source, self.topic, p, ps.source_next, count=landed))
            offsets, sources = [r.offset for r in found], {r.offset: r for r in found}
        targets = list(_records(self.target, self.topic, p, ps.target_next, stop=end))
        if (
            len(offsets) != landed
            or len(targets) != landed
            or any(o in sources and not same_record(sources[o], t) for o, t in zip(offsets, targets))
        ):
            raise KqError(
                f"{self.topic}/{p} in {self.target.description} holds records from offset {ps.target_next} on that "
                f"are not the next ones of the source (did something else write there?); to copy it from scratch, "
                f"delete the topic there and {self.state.path}"
            )
        for first, count in _runs_of(offsets):
            ps.add(first, count)
        if offsets and offsets[-1] in sources:
            ps.last = [offsets[-1], record_digest(sources[offsets[-1]])]
        self.report(p).recovered = landed

    def report(self, p: int) -> CopyReport:
        r = self._reports.get(p)
        if r is None:
            ps = self.state.partitions[p]
            r = self._reports[p] = CopyReport(
                self.topic, p, ps.source_next, ps.source_next, ps.target_next, ps.target_next
            )
        return r

    def reports(self, reset: bool = False) -> list[CopyReport]:
        for p in self.state.partitions:
            self.report(p)
        out = [self._reports[p] for p in sorted(self._reports)]
        if reset:
            self._reports = {}
        return out

    # ------------------------------------------------------------------ copying

    def pump(self, follow: bool) -> None:
        """Send what the source has: all of it (to the end as it was), or, following, what comes
        before a short quiet spell or a checkpoint."""
        assert self._reader is not None, "pump() after close()"
        if self._producer is None:
            self._producer = self.target.producer(self.topic, idempotent=True)
        if self._rounds is None:
            self._rounds = self._reader.rounds(FOLLOW_IDLE_SECONDS if follow else None)
        for slices in self._rounds:
            self._send(slices)
            if self.checkpoint_due():
                if follow:
                    return
                self.checkpoint()
        self._rounds = None  # ended: the end (or, following, a quiet spell)

    def _send(self, slices) -> None:
        records = []
        for sl in slices:
            b, lo, hi = sl.batch, sl.start, sl.stop
            rows = list(b.records(lo, hi))
            records += [(r.key, r.value, r.headers, sl.partition, r.timestamp) for r in rows]
            runs = self._pending.setdefault(sl.partition, [])
            first, last = b.offset_at(lo), b.offset_at(hi - 1)
            if last - first == hi - lo - 1:
                _extend(runs, first, hi - lo)
            else:
                for s, n in _runs_of([r.offset for r in rows]):
                    _extend(runs, s, n)
            self._last[sl.partition] = rows[-1]
            report = self.report(sl.partition)
            report.records += hi - lo
            report.bytes += sum(len(r.value or b"") + len(r.key or b"") for r in rows)
            if self.bridge.progress is not None:
                self.bridge.progress(report)
        # On record before they go: a run killed once some have landed knows which they were.
        for p, runs in self._pending.items():
            self.state.partitions[p].sending = [list(r) for r in runs]
        self.state.save()
        assert self._producer is not None
        self._producer.send_records(records)
        self._pending_records += len(records)

    def checkpoint_due(self) -> bool:
        return self._pending_records >= CHECKPOINT_RECORDS or (
            self._pending_records > 0 and time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS
        )

    def checkpoint(self, force: bool = False) -> None:
        """Wait for every acknowledgement, then put the position on record and carry the groups'
        offsets over (``force``: even if nothing was sent since the last checkpoint)."""
        if self._producer is not None:
            self._producer.flush()
        for p, runs in self._pending.items():
            ps = self.state.partitions[p]
            for first, count in runs:
                ps.add(first, count)
            ps.sending = []
            if p in self._last:
                ps.last = [self._last[p].offset, record_digest(self._last[p])]
            report = self.report(p)
            report.to_offset, report.target_to = ps.source_next, ps.target_next
        changed = bool(self._pending)
        self._pending, self._pending_records, self._last = {}, 0, {}
        self.last_checkpoint = time.monotonic()
        if changed:
            self.state.save()
        if self.bridge.groups and (changed or force):
            self.bridge.copy_groups(self.topic, self.state)

    def close(self, quietly: bool = False) -> None:
        try:
            if self._reader is not None:
                self._reader.close()
        finally:
            self._reader = None
            if self._producer is not None:
                try:
                    self._producer.close()
                except KqError:
                    if not quietly:
                        raise
                finally:
                    self._producer = None


def _extend(runs: list, first: int, count: int) -> None:
    if runs and runs[-1][0] + runs[-1][1] == first:
        runs[-1][1] += count
    else:
        runs.append([first, count])


def _runs_of(offsets: list[int]) -> list[tuple[int, int]]:
    """Rising offsets as (first, count) runs of consecutive ones."""
    runs: list = []
    for o in offsets:
        _extend(runs, o, 1)
    return [tuple(r) for r in runs]


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
