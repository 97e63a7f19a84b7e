"""Checking and repairing a data directory's files (``kq verify``).

Every segment is read batch by batch (magic, length, checksum, payload,
offsets), every index is compared with the index kq writes for that segment,
and the small files beside them (``topic.json``, ``start.offset``, the groups'
committed offsets) are parsed. Each problem names its file and byte position.

Nothing changes unless ``repair`` is asked for, and repair never deletes data
silently: damaged bytes with valid batches after them are moved to a
quarantine file beside the segment, a torn tail (an append a crash cut short,
never acknowledged) is truncated as the next writer would, indexes are
rebuilt (they are derived data), and an unreadable offsets file is moved
aside. Every action is reported.

Modules: kq.ops.verify_partition reads the log (segments, batches, indexes), kq.ops.verify_files the
small files beside it (start offsets, lock files, groups' offsets, share states),
kq.ops.verify_repair acts on what they found; kq.ops.verify_problem is what each reports.

Locks: a partition is checked under its maintenance lock, so retention and
compaction cannot change files mid-check. A partition that looks damaged is
checked again holding its writer lock too, so that an append in progress is
never reported as a torn tail; repair holds both locks throughout.
"""

from __future__ import annotations

import errno
import os
import stat

from ..engine.datadir import DataDir
from ..engine.fileio import file_kind
from ..engine.location import TOPIC_FILE
from ..engine.partition import Partition
from ..engine.topic import Topic
from ..errors import KqError, TopicNotFound, UsageError
from .verify_files import GroupFilesCheck
from .verify_partition import PartitionCheck
from .verify_problem import ERROR, FOREIGN, INFO, WARNING, Problem, not_repaired, unreadable
from .verify_repair import rebuild_indexes, repair_segments

__all__ = ["ERROR", "INFO", "WARNING", "Problem", "Verifier"]


class Verifier:
    """Checks (and with ``repair``, fixes) the files of some or all topics.

    ``run`` yields each problem once its partition is done; afterwards
    ``clean`` says whether no error is left.
    """

    def __init__(self, data: DataDir, repair: bool = False):
        self.data = data
        self.repair = repair
        self.topics = self.partitions = self.segments = self.bytes = 0
        self.counts = {ERROR: 0, WARNING: 0, INFO: 0}
        self.repaired = 0
        self.unrepaired = 0
        self.group_files = GroupFilesCheck(data, repair)

    @property
    def clean(self) -> bool:
        return self.unrepaired == 0

    def run(self, topics: list[str] | None = None):
        self.data.exists()  # a broken data directory is an error, not a problem to list
        names = self.data.topic_names() if topics is None else topics
        opened: dict[str, Topic | Problem] = {}
        for name in names:
            try:
                opened[name] = self.data.topic(name)  # unknown names fail before any work
            except (TopicNotFound, UsageError):  # the caller's mistake, not the data's
                raise
            except (KqError, OSError) as exc:
                # Never skipped: what verify cannot read, it cannot call sound.
                file, why = unreadable(exc, os.path.join(self.data.topics_path, name, TOPIC_FILE))
                opened[name] = Problem(name, None, file, None, f"topic unreadable: {why}")
        for topic in opened.values():
            self.topics += 1
            if isinstance(topic, Problem):
                if self.repair:
                    topic.action = "not repaired: restore it (it holds the partition count and settings)"
                yield self._count(topic)
                continue
            try:
                ranges = {}
                for number in range(topic.partition_count):
                    problems, ranges[number] = self._partition(topic, number)
                    for p in problems:
                        yield self._count(p)
                for p in self.group_files.group_offsets(topic, ranges):
                    yield self._count(p)
                for p in self.group_files.share_states(topic, ranges):
                    yield self._count(p)
            finally:
                topic.close()

    def _count(self, p: Problem) -> Problem:
        self.counts[p.severity] += 1
        if p.severity == ERROR:
            if p.repaired:
                self.repaired += 1
            else:
                self.unrepaired += 1
        return p

    def _not_repaired(self, p: Problem) -> Problem:
        return not_repaired(p, self.repair)

    def _partition(self, topic: Topic, number: int) -> tuple[list[Problem], tuple[int, int] | None]:
        """Problems of one partition, and its (start, end) offsets when they can be read."""
        self.partitions += 1
        try:
            part = topic.partition(number)
            try:
                mode = os.stat(part.path).st_mode
            except FileNotFoundError:
                what, why_not = (
                    "partition directory missing",
                    "the topic says it has this partition; restore the directory",
                )
            else:
                if stat.S_ISDIR(mode):
                    return self._check_partition(topic, part)
                what, why_not = f"partition directory is a {file_kind(mode)}, not a directory", FOREIGN
            return [self._not_repaired(Problem(topic.name, number, part.path, None, what, why_not=why_not))], None
        except (KqError, OSError) as exc:
            if self.repair and isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # --repair needs write access: without it, it fails as a whole, naming the file
            # A lock file that is a FIFO, a directory kq may not enter, a link
            # out of the data directory: the partition is not checked, and says so.
            file, why = unreadable(exc, os.path.join(topic.path, str(number)))
            return [self._not_repaired(Problem(topic.name, number, file, None, f"partition not checked: {why}"))], None

    def _check_partition(self, topic: Topic, part: Partition) -> tuple[list[Problem], tuple[int, int] | None]:
        # Checking alone works on a read-only copy (a backup mount): locks
        # that cannot be created there are not taken, as no writer can run.
        read_only_ok = not self.repair
        with part.maintenance_lock(read_only_ok=read_only_ok):
            check = PartitionCheck(topic, part).run()
            if check.to_repair:
                # No append in progress from here on: look again.
                with part.writer_lock():
                    check = PartitionCheck(topic, part).run()
                    if self.repair and check.to_repair:
                        check = self._repair(topic, part, check)
                    ends = _offset_range(part)
            else:
                ends = _offset_range(part)
        self.segments += len(check.segments)
        self.bytes += check.bytes
        return check.problems, ends

    def _repair(self, topic: Topic, part: Partition, found: PartitionCheck) -> PartitionCheck:
        repair_segments(found)
        # Cutting bytes moved the batches after them: indexes are rebuilt from a fresh look.
        again = PartitionCheck(topic, part).run()
        rebuild_indexes(again)
        before = {seg.base: seg for seg in found.segments}
        for seg in again.segments:
            old = before.get(seg.base)
            if seg.txn_index_problem is not None and old is not None and old.txn_index_problem is not None:
                old.txn_index_problem.action = seg.txn_index_problem.action
                old.txn_index_problem.repaired = seg.txn_index_problem.repaired
            if seg.index_problem is None or old is None:
                continue
            if old.index_problem is not None:
                old.index_problem.action, old.index_problem.repaired = seg.index_problem.action, True
            elif old.damaged or old.torn_tail:  # the index of a segment whose bytes were cut
                cut = old.torn_tail or old.damaged[-1]
                cut.problem.action = f"{cut.problem.action or ''}; {seg.index_problem.action}"
            else:
                found.problems.append(seg.index_problem)
        for p in found.errors:
            if not p.repaired:
                p.action = f"not repaired: {p.why_not}" if p.why_not else "not repaired"
        # What the fresh look still finds, other than the indexes it rebuilt,
        # is left: say so, unless it is already listed as not repaired.
        listed = {(p.file, p.problem) for p in found.problems}
        for p in again.errors:
            if not p.repaired and (p.file, p.problem) not in listed:
                p.problem = f"after repair: {p.problem}"
                p.action = "not repaired"
                found.problems.append(p)
        return found


def _offset_range(part: Partition) -> tuple[int, int] | None:
    try:
        return part.start_offset(), part.end_offset()
    except (KqError, OSError):
        return None
