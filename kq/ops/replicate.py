"""Replication: keep a second data directory a batch-for-batch copy of chosen topics.

The replica holds the source's batches byte for byte, so offsets, timestamps,
keys and headers are identical and consumers (and their groups' committed
offsets) can move to it. Copying appends whole batches under the replica
partition's writer lock, so a kill -9 at any point leaves at worst a torn
tail that readers never see and the next run truncates.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

from ..engine.cursor import Cursor
from ..engine.datadir import DataDir, read_format, require_format
from ..engine.fileio import FileLock
from ..engine.maintain import trim
from ..engine.partition import Partition
from ..engine.topic import Topic
from ..errors import Diverged, KqError, ReplicaBusy, TopicNotFound
from ..groups.store import Groups

LOCK_NAME = "replicate.lock"
COPY_BYTES = 8 * 1024 * 1024
CHECKED_BY_WRITER = 4  # the writing thread checks every 4th batch's checksum, the reading thread the rest
FOLLOW_SECONDS = 0.2


@dataclass
class CopyReport:
    topic: str
    partition: int
    from_offset: int
    to_offset: int
    records: int = 0
    bytes: int = 0
    truncated_at: int | None = None
    restarted_at: int | None = None  # the source's retention had deleted what the replica lacked


@dataclass
class VerifyReport:
    topic: str
    partition: int
    source_end: int
    replica_end: int | None
    status: str  # identical | lagging | mismatch | missing
    detail: str = ""
    groups: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The replica holds exactly the source's batches (it may lag); group offsets do not count."""
        return self.status in ("identical", "lagging")


def first_mismatch(source: Partition, replica: Partition) -> int | None:
    """The first offset where the replica's batches differ from the source's, if any.

    Batches are compared by base offset, size and checksum, where both logs
    still hold them: what the source's retention deleted is not compared. A
    replica that is a prefix of the source does not differ; one that goes on
    past the source's end differs at the source's end.
    """
    last = replica.last_batch()
    if last is None:
        return None
    common = _batch_start(source, source.start_offset())
    if last.next_offset <= common:
        return None  # the source deleted everything the replica holds (see _copy_partition)
    # The common case: the replica's last batch is the source's, so the
    # replica is a prefix (``--verify`` checks every batch).
    for b in source.raw_batches(last.base_offset):
        if b.identity == last.identity:
            return None
        break
    return _first_difference(source, replica, max(common, replica.start_offset()))


def _first_difference(source: Partition, replica: Partition, start: int) -> int | None:
    """The base offset of the first replica batch from ``start`` on that the source lacks."""
    src = source.raw_batches(start)
    for rep in replica.raw_batches(start):
        if rep.base_offset < start:
            continue  # a batch the source's retention has deleted
        s = next(src, None)
        while s is not None and s.base_offset < rep.base_offset and s.next_offset <= start:
            s = next(src, None)
        if s is None or s.identity != rep.identity:
            return rep.base_offset
    return None


def _batch_start(part: Partition, offset: int) -> int:
    """The base offset of the batch that holds ``offset`` (``offset`` itself at the end)."""
    cursor = part.cursor(offset)
    try:
        batches = cursor.poll_raw(1)
        return batches[0].base_offset if batches else offset
    finally:
        cursor.close()


def _read_ahead(cursor: Cursor, max_bytes: int):
    """The cursor's polls of raw batches, each read by a thread while the caller writes the one before.

    Reading (pread), checking (crc32) and writing release the GIL, so a copy
    uses both cores: the thread reads and checks the checksums of most
    batches, the caller's thread checks every CHECKED_BY_WRITER-th batch
    besides writing. The cursor alternates two buffers, and the thread starts
    a poll only once the caller is done with the poll that last used that
    buffer. At a batch whose checksum fails, reading goes on from it the
    ordinary way, which stops quietly at a torn tail and raises CorruptLog
    for damage. Ends at the first empty poll.
    """
    polls: queue.Queue = queue.Queue(maxsize=1)
    free = threading.Semaphore(2)  # buffers the caller is not using
    stopping = threading.Event()

    def read() -> None:
        try:
            while True:
                free.acquire()
                if stopping.is_set():
                    return
                batches = cursor.poll_raw(max_bytes, checksums=False)
                theirs = (i for i in range(len(batches)) if i % CHECKED_BY_WRITER)
                polls.put((batches, _first_bad(batches, theirs)))
                if not batches:
                    return
        except BaseException as exc:  # handed to the caller, raised there
            polls.put(exc)

    thread = threading.Thread(target=read, name="kq-read-ahead", daemon=True)
    thread.start()
    resume_at = None
    try:
        while True:
            item = polls.get()
            if isinstance(item, BaseException):
                raise item
            batches, bad = item
            if not batches:
                return
            mine = _first_bad(batches, range(0, len(batches), CHECKED_BY_WRITER))
            if bad is None or (mine is not None and mine < bad):
                bad = mine
            if bad is None:
                yield batches
                free.release()
                continue
            if bad:
                yield batches[:bad]
            resume_at = batches[bad].base_offset
            break
    finally:
        stopping.set()
        free.release()
        while thread.is_alive():  # unblock a thread waiting to hand over a poll
            try:
                polls.get(timeout=0.01)
            except queue.Empty:
                pass
    careful = Cursor(cursor.partition, resume_at)
    try:
        while batches := careful.poll_raw(max_bytes):
            yield batches
    finally:
        careful.close()


def _first_bad(batches: list, indexes) -> int | None:
    """The first of ``indexes`` whose batch fails its checksum, if any."""
    return next((i for i in indexes if not batches[i].checksum_ok()), None)


class Replicator:
    """Copies topics from ``source`` to ``replica`` (two data directories)."""

    def __init__(self, source: DataDir, replica: DataDir, truncate: bool = False, progress=None):
        if os.path.realpath(source.path) == os.path.realpath(replica.path):
            raise KqError("the replica must be another data directory than the source")
        self.source = source
        self.replica = replica
        self.truncate = truncate
        self.progress = progress  # callable(report, bytes_total) or None
        self._lock: FileLock | None = None

    # ------------------------------------------------------------------ locking

    def __enter__(self) -> Replicator:
        self.replica.ensure()
        lock = FileLock(os.path.join(self.replica.path, LOCK_NAME))
        if not lock.acquire(blocking=False):
            lock.close()
            raise ReplicaBusy(self.replica.path)
        self._lock = lock
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ copying

    def topic_names(self, topics: list[str] | None) -> list[str]:
        """The topics to copy: all of the source's, or those named (a name the source lacks fails at once)."""
        if topics is None:
            return self.source.topic_names()  # one that cannot be read fails on its own (see replicate)
        for name in topics:
            self.source.topic(name).close()
        return topics

    def replicate(self, topics: list[str] | None = None, on_error=None) -> list[CopyReport]:
        """Copy what is new in each topic. With ``on_error(topic, error)``, a topic that
        fails (diverged, damaged) is reported to it and the others are still copied."""
        reports = []
        for name in self.topic_names(topics):
            try:
                reports += self._replicate_topic(name)
            except KqError as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
        return reports

    def _replicate_topic(self, name: str) -> list[CopyReport]:
        reports = []
        src = self.source.topic(name)
        # Batches are copied as they are: the replica needs the source's format
        # (null header values) before it holds them. Read anew: the source may have moved on.
        source_format = read_format(self.source.path)
        if source_format is not None:
            require_format(self.replica.path, source_format)
        try:
            rep = self._create_like(src)
        except BaseException:
            src.close()
            raise
        try:
            for p in range(src.partition_count):
                reports.append(self._copy_partition(src.partition(p), rep.partition(p)))
            self._copy_groups(src, rep)
            self._copy_shares(src, rep)
        finally:
            src.close()
            rep.close()
        return reports

    def _create_like(self, src: Topic) -> Topic:
        try:
            rep = self.replica.topic(src.name)
        except TopicNotFound:
            try:
                rep = self.replica.create_topic(src.name, src.partition_count, dict(src.config), topic_id=src.id)
            except KqError:
                rep = self.replica.topic(src.name)
        if src.id is not None and rep.id is not None and src.id != rep.id:
            # Checked before any partition is copied: the replica never mixes two topics' records.
            raise KqError(
                f"topic '{src.name}' was deleted and created again in the source since it was replicated; "
                f"to replicate it anew, delete it in the replica ({self.replica.path}) first"
            )
        if rep.partition_count != src.partition_count:
            raise KqError(
                f"topic '{src.name}' has {src.partition_count} partitions in the source "
                f"but {rep.partition_count} in the replica"
            )
        return rep

    def _copy_partition(self, src: Partition, rep: Partition) -> CopyReport:
        start = rep.end_offset()
        report = CopyReport(src.topic, src.number, start, start)
        mismatch = first_mismatch(src, rep)
        if mismatch is not None:
            if not self.truncate:
                raise Diverged(self.replica.path, src.topic, src.number, mismatch)
            rep.truncate_to(mismatch)
            report.truncated_at = report.from_offset = report.to_offset = start = mismatch
        source_start = src.start_offset()
        boundary = _batch_start(src, source_start)
        if start < boundary:
            # The source no longer has what the replica lacks (retention, trim):
            # like a Kafka follower behind its leader's log start, the replica
            # starts over at the batch holding the source's start offset.
            had_records = start > rep.start_offset()
            rep.restart_at(boundary)
            report.from_offset = report.to_offset = start = boundary
            if had_records:  # (a new replica simply starts where the source does)
                report.restarted_at = boundary
        end = src.end_offset()
        total = max(src.size() - rep.size(), 0)
        cursor = Cursor(src, start, buffers=2)
        polls = _read_ahead(cursor, COPY_BYTES)
        try:
            for batches in polls:
                if report.to_offset >= end:
                    break
                if batches[0].base_offset != report.to_offset:
                    raise KqError(
                        f"{src}: the source has no batch starting at offset {report.to_offset}; "
                        "the replica cannot continue from there"
                    )
                rep.append_raw(batches)
                report.to_offset = batches[-1].next_offset
                report.records += report.to_offset - batches[0].base_offset
                report.bytes += sum(b.size for b in batches)
                if self.progress is not None:
                    self.progress(report, total)
        finally:
            polls.close()
            cursor.close()
        if rep.start_offset() < source_start:
            trim(rep, source_start)  # records the source deleted are deleted here too
        return report

    def _copy_groups(self, src: Topic, rep: Topic) -> None:
        """Carry committed offsets over, never past what the replica holds."""
        source_groups, replica_groups = Groups(self.source), Groups(self.replica)
        ends = [rep.partition(p).end_offset() for p in range(rep.partition_count)]
        for group in source_groups.groups_of_topic(src.name):
            have = replica_groups.committed_offsets(group, rep)
            for p, theirs in source_groups.committed_offsets(group, src).items():
                if p >= len(ends):
                    continue
                wanted = (min(theirs.offset, ends[p]), theirs.metadata)
                ours = have.get(p)
                if ours is None or (ours.offset, ours.metadata) != wanted:
                    replica_groups.commit(group, rep, p, *wanted)

    def _copy_shares(self, src: Topic, rep: Topic) -> None:
        """Carry share groups' settings and states over, cut back to what the replica holds."""
        from ..share.shares import copy_share_state

        copy_share_state(self.source, self.replica, src, rep)

    def follow(self, topics: list[str] | None, interval: float = FOLLOW_SECONDS, on_copy=None, on_error=None) -> None:
        """Replicate until interrupted; new batches reach the replica within ``interval``.

        A topic that fails is reported to ``on_error(topic, error)`` once (and
        again if its error changes), retried every round, and never stops the
        others; ``on_error(topic, None)`` says it copies again.
        """
        failing: dict[str, str] = {}

        def failed(topic: str, exc: KqError) -> None:
            if failing.get(topic) != str(exc) and on_error is not None:
                on_error(topic, exc)
            failing[topic] = str(exc)

        while True:
            before = set(failing)
            reports = self.replicate(topics, on_error=failed)
            for topic in before & {r.topic for r in reports}:
                failing.pop(topic, None)
                if on_error is not None:
                    on_error(topic, None)
            if on_copy is not None:
                for r in reports:
                    if r.records or r.truncated_at is not None or r.restarted_at is not None:
                        on_copy(r)
            time.sleep(interval)

    # ------------------------------------------------------------------ verifying

    def verify(self, topics: list[str] | None = None) -> list[VerifyReport]:
        reports = []
        source_groups, replica_groups = Groups(self.source), Groups(self.replica)
        for name in self.topic_names(topics):
            src = self.source.topic(name)
            try:
                rep = self.replica.topic(name)
            except TopicNotFound:
                rep = None
            for p in range(src.partition_count):
                part = src.partition(p)
                if rep is None or p >= rep.partition_count:
                    reports.append(VerifyReport(name, p, part.end_offset(), None, "missing", "not in the replica"))
                    continue
                reports.append(_verify_partition(part, rep.partition(p)))
            if rep is not None:
                mine = {r.partition: r for r in reports if r.topic == name}
                groups = sorted(set(source_groups.groups_of_topic(name)) | set(replica_groups.groups_of_topic(name)))
                for group in groups:
                    theirs = source_groups.committed(group, src)
                    ours = replica_groups.committed(group, rep)
                    for p in sorted(set(theirs) | set(ours)):
                        if p not in mine:
                            continue
                        source, replica = theirs.get(p), ours.get(p)
                        mine[p].groups.append(
                            {
                                "group": group,
                                "source": source,
                                "replica": replica,
                                "status": _group_status(source, replica),
                            }
                        )
        return reports


def _group_status(source: int | None, replica: int | None) -> str:
    if source == replica:
        return "same"
    if source is None:
        return "replica only"
    return "behind" if replica is None or replica < source else "ahead"


def _verify_partition(src: Partition, rep: Partition) -> VerifyReport:
    source_end = src.end_offset()
    report = VerifyReport(src.topic, src.number, source_end, None, "identical")
    try:
        report.replica_end = rep.end_offset()
        boundary = _batch_start(src, src.start_offset())
        if report.replica_end < boundary:
            report.status = "lagging"
            report.detail = (
                f"behind the source's retention: the source deleted offsets {report.replica_end}.."
                f"{boundary - 1} before they were copied; the next copy goes on from {boundary}"
            )
            return report
        # Every batch both still hold; raw_batches recomputes every checksum.
        differs = _first_difference(src, rep, max(boundary, rep.start_offset()))
        if differs is not None:
            report.status = "mismatch"
            report.detail = f"batches differ from offset {differs}"
            return report
        damage = rep.damaged_tail()
        if damage is not None:
            report.status = "mismatch"
            report.detail = f"unreadable bytes at the end of {damage[0]} from byte {damage[1]}"
            return report
    except KqError as exc:
        report.status = "mismatch"
        report.detail = str(exc)
        return report
    if report.replica_end < source_end:
        report.status = "lagging"
        report.detail = f"{source_end - report.replica_end} record(s) behind"
    return report


def report_dict(report) -> dict:
    d = asdict(report)
    if isinstance(report, VerifyReport):
        d["ok"] = report.ok
    return d
