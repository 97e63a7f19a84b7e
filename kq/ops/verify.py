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

Locks: a partition is checked under its maintenance lock, so retention and
compaction cannot change files mid-check. A partition that looks damaged is
checked again holding its writer lock too, so that an append in progress is
never reported as a torn tail; repair holds both locks throughout.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from ..engine import batch as batchfmt
from ..engine.datadir import DataDir
from ..engine.fileio import atomic_write, file_kind, fsync_dir, open_regular, shown, try_lock, write_all
from ..engine.index import ENTRY_SIZE, INTERVAL_BYTES, Index, IndexBuilder, pack_entries
from ..engine.location import TOPIC_FILE
from ..engine.log_writer import WRITER_LOCK
from ..engine.maintain import COMPACT_SUFFIX
from ..engine.partition import MAINTENANCE_LOCK, START_NAME, Partition
from ..engine.segment import (
    DAMAGED,
    INDEX_SUFFIX,
    MAX_OFFSET,
    QUARANTINE,
    READ_CHUNK,
    BatchReader,
    SegmentScan,
    damaged_last_batch,
    find_valid_batch,
    list_segments,
    quarantine_name,
)
from ..engine.topic import Topic
from ..errors import CorruptFile, CorruptLog, DataDirError, KqError, NotRegularFile, TopicNotFound, UsageError
from ..groups.store import CLAIM_SUFFIX, MEMBER_SUFFIX, MEMBERS_DIR, OFFSET_SUFFIX, Groups, _read_member, partition_of

ERROR = "error"  # the partition cannot be read as written: exit 1 until repaired
WARNING = "warning"  # surprising but readable (a group behind the start offset, a crash's torn tail)
INFO = "info"  # files worth knowing about (leftovers, quarantined bytes)

# Quarantined bytes ("<segment>.log.quarantine-<byte position>", kq.segment)
# and offsets files ("<P>.offset.quarantine") are never read by kq, never deleted by it.


@dataclass
class Problem:
    topic: str
    partition: int | None  # None: a topic-wide file (topic.json)
    file: str
    position: int | None  # a byte position in ``file``, where that means something
    problem: str
    severity: str = ERROR
    action: str | None = None  # with repair: what was done, or why nothing was
    repaired: bool = False
    why_not: str | None = field(default=None, repr=False)  # why repair cannot fix it, if it cannot

    def line(self) -> str:
        where = "" if self.position is None else f" position {self.position}:"
        text = f"{self.file}:{where} {self.severity}: {self.problem}"
        return text if self.action is None else f"{text} -> {self.action}"

    def as_dict(self, with_action: bool = False) -> dict:
        out = {
            "topic": self.topic,
            "partition": self.partition,
            "file": self.file,
            "position": self.position,
            "problem": self.problem,
            "severity": self.severity,
        }
        if with_action:
            out["action"] = self.action
            out["repaired"] = self.repaired
        return out


@dataclass
class _Region:
    """Bytes of a segment that are not valid batches: [start, end)."""

    start: int
    end: int
    problem: Problem


@dataclass
class _Segment:
    base: int
    path: str
    index_path: str
    size: int = 0
    damaged: list[_Region] = field(default_factory=list)  # to quarantine
    torn_tail: _Region | None = None  # to truncate (last segment only)
    damaged_last: _Region | None = None  # a whole damaged last batch: quarantined as a writer would (last segment only)
    index: list[tuple[int, int, int]] = field(default_factory=list)  # what the index should hold
    index_problem: Problem | None = None


_AMBIGUOUS = "kq cannot tell which records are the right ones; inspect the segment"
_FOREIGN = "kq did not write it and does not remove what it did not write; move it away"


def _unreadable(exc: BaseException, path: str) -> tuple[str, str]:
    """(file, why) for an error that kept verify from reading something: the file it names, else ``path``."""
    if isinstance(exc, CorruptFile):
        return exc.path, exc.reason
    if isinstance(exc, OSError):
        return exc.filename or path, exc.strerror or str(exc)
    return path, str(exc)


def _not_regular(path: str) -> str | None:
    """What ``path`` is if it is there and not a regular file (a FIFO, ...), else None."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


class _PartitionCheck:
    """One pass over a partition's files: the problems and what repair needs to know."""

    def __init__(self, topic: Topic, part: Partition):
        self.topic = topic
        self.part = part
        self.compacted = topic.config.get("cleanup") == "compact"
        self.problems: list[Problem] = []
        self.segments: list[_Segment] = []
        self.bytes = 0
        self.next_offset: int | None = None  # after the last valid batch seen
        self.expected: int | None = None  # where the next batch starts if nothing is missing

    def report(
        self, path: str, position: int | None, problem: str, severity: str = ERROR, why_not: str | None = None
    ) -> Problem:
        p = Problem(self.topic.name, self.part.number, path, position, problem, severity, why_not=why_not)
        self.problems.append(p)
        return p

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def to_repair(self) -> bool:
        """Errors, or a torn tail (a warning, but bytes that --repair cuts)."""
        return bool(self.errors) or any(seg.torn_tail is not None for seg in self.segments)

    def run(self) -> _PartitionCheck:
        path = self.part.path
        out_of_range: list[str] = []
        try:
            bases = list_segments(path, out_of_range)
        except FileNotFoundError:
            self.report(
                path,
                None,
                "partition directory missing",
                why_not="the topic says it has this partition; restore the directory",
            )
            return self
        except OSError as exc:
            file, why = _unreadable(exc, path)
            self.report(file, None, f"partition directory unreadable: {why}", why_not="kq cannot check it")
            return self
        for file in out_of_range:
            self.report(
                file,
                None,
                f"a segment name past the largest offset ({MAX_OFFSET}): kq refuses the partition",
                why_not=_FOREIGN,
            )
        for i, base in enumerate(bases):
            self._check_segment(base, last=i == len(bases) - 1)
        if self.next_offset == MAX_OFFSET:
            self.report(
                self.segments[-1].path,
                None,
                f"the partition is full: its end offset is the largest "
                f"offset ({MAX_OFFSET}), so every append is refused",
                WARNING,
            )
        try:
            trimmed = self.part.trimmed_to()
        except (CorruptFile, OSError) as exc:
            file, why = _unreadable(exc, os.path.join(path, START_NAME))
            self.report(
                file,
                None,
                f"start offset file unreadable: {why}",
                why_not="the start offset it held is unknown; restore the file, or remove it to serve the "
                "partition from its first segment (records trimmed before would be served again)",
            )
        else:
            end = max(self.next_offset or 0, bases[-1] if bases else 0)
            if trimmed > end and len(self.segments) == len(bases):  # (with a segment unread, the end is unknown)
                # A trim never moves the start past the end: readers would skip records not yet written.
                self.report(
                    os.path.join(path, START_NAME),
                    None,
                    f"start offset {trimmed} is past the end offset {end}: records appended below "
                    f"{trimmed} would never be served",
                    why_not="restore the file, or remove it to serve the partition from its first segment",
                )
        segments = {seg.base for seg in self.segments}
        for name in sorted(os.listdir(path)):
            stem = name[: -len(INDEX_SUFFIX)]
            if name in (WRITER_LOCK, MAINTENANCE_LOCK) and (kind := _not_regular(os.path.join(path, name))):
                self.report(
                    os.path.join(path, name),
                    None,
                    f"lock file is a {kind}, not a regular file: writers cannot lock the partition",
                    why_not=_FOREIGN,
                )
            elif name.endswith(INDEX_SUFFIX) and stem.isascii() and stem.isdigit() and int(stem) not in segments:
                self.report(
                    os.path.join(path, name),
                    None,
                    "index of a segment that does not exist (left by an interrupted deletion)",
                    INFO,
                )
            elif name.endswith(COMPACT_SUFFIX):
                self.report(
                    os.path.join(path, name),
                    None,
                    "left by an interrupted compaction; never read, the next compaction removes it",
                    INFO,
                )
            elif QUARANTINE in name:
                size = os.lstat(os.path.join(path, name)).st_size
                self.report(
                    os.path.join(path, name),
                    None,
                    f"{size} byte(s) quarantined by an earlier repair: not served; inspect, then remove",
                    INFO,
                )
        return self

    # ------------------------------------------------------------------ segments

    def _check_segment(self, base: int, last: bool) -> None:
        seg = _Segment(base, self.part.log_path(base), self.part.index_path(base))
        try:
            fd = open_regular(seg.path)
        except FileNotFoundError:
            return
        except (NotRegularFile, OSError) as exc:
            file, why = _unreadable(exc, seg.path)
            self.report(
                file,
                None,
                f"segment unreadable: {why}",
                why_not=_FOREIGN if isinstance(exc, NotRegularFile) else "kq cannot read it",
            )
            self.expected = None  # its records are unknown
            return
        try:
            seg.size = os.fstat(fd).st_size
            self.bytes += seg.size
            if self.next_offset is not None and base < self.next_offset:
                self.report(
                    seg.path,
                    0,
                    f"segment base offset {base} is below the previous segment's "
                    f"next offset {self.next_offset}: offsets overlap",
                    why_not=_AMBIGUOUS,
                )
            if self.expected is None:  # the first segment, or damage hid where the last one ended
                self.expected = base
            self._check_batches(fd, seg, last)
        finally:
            os.close(fd)
        if not seg.damaged:
            self._check_index(seg)
        self.segments.append(seg)

    def _check_batches(self, fd: int, seg: _Segment, last: bool) -> None:
        """Walk every valid batch; damage ends a run, a valid batch after it starts the next.

        The reader's floor makes a batch whose offsets go backwards (or lie
        below its segment's base) damage like a bad checksum: readers report
        it and never serve it, and repair moves it aside.
        """
        index = IndexBuilder()
        position: int = 0
        floor: int | None = seg.base
        while True:
            reader = BatchReader(fd, seg.path, position, floor=floor)
            for pos, header, buf, rel in reader.headers():
                try:
                    b = batchfmt.decode(buf, rel, header, seg.path)
                except CorruptLog as exc:
                    # Its checksum holds but readers cannot serve it: damage like any other.
                    problem = self.report(
                        seg.path, pos, f"{exc.reason} (offsets {header.base_offset}..{header.last_offset})"
                    )
                    seg.damaged.append(_Region(pos, pos + header.size, problem))
                    self.expected = None
                    continue
                self._check_offsets(seg, pos, b)
                index.add(b.base_offset, pos, b.max_timestamp)
            seg.index = index.entries
            if reader.stop != DAMAGED:
                return
            start = reader.stop_position
            found = find_valid_batch(fd, start + 1, seg.size)
            end = seg.size if found is None else found
            if found is None and last and reader.whole_batch:
                scan = SegmentScan(
                    seg.base,
                    start,
                    reader.floor or seg.base,
                    index,
                    0,
                    DAMAGED,
                    reader.reason,
                    True,
                    None,
                    reader.floor,
                )
                damaged = damaged_last_batch(fd, scan, seg.size, self.compacted)
                if damaged is not None:
                    seg.damaged_last = _Region(
                        start,
                        end,
                        self.report(
                            seg.path,
                            start,
                            f"{reader.reason} in the last batch (offsets {damaged.base_offset}.."
                            f"{damaged.last_offset}): a whole batch, so damage (bit rot or a stray write), "
                            "not a torn write",
                        ),
                    )
                    return
            if found is None and last and not reader.whole_batch:
                # The state a crash mid-append leaves (that append was never acknowledged); readers stop
                # before it and the next writer cuts it (GUARANTEES.md): debris to name, not damage.
                problem = self.report(
                    seg.path,
                    start,
                    f"torn tail: {end - start} byte(s) after the last valid batch ({reader.reason}): "
                    "crash debris of an append never acknowledged, which the next writer cuts",
                    WARNING,
                )
                seg.torn_tail = _Region(start, end, problem)
                return
            if found is None and last:  # a whole batch no writer can go on after (its offsets are unknown)
                what = f"{reader.reason} at the end of the log: its last {end - start} byte(s) are a damaged batch"
            elif found is None:
                what = f"{reader.reason} in a closed segment: its last {end - start} byte(s) are damaged"
            else:
                what = f"{reader.reason}: {end - start} damaged byte(s) before the valid batch at byte {found}"
            seg.damaged.append(_Region(start, end, self.report(seg.path, start, what)))
            self.expected = None  # the records in the damage are unknown
            if found is None:
                return
            position, floor = found, reader.floor

    def _check_offsets(self, seg: _Segment, pos: int, b: batchfmt.RecordBatch) -> None:
        """Gaps in the offsets: normal after compaction, worth a warning anywhere else.

        (Offsets that go backwards, or lie below the segment's base, stop the
        reader: see _check_batches.)
        """
        first = b.base_offset
        if self.next_offset is not None and first < self.next_offset:
            # A batch of an earlier segment reaches into this one.
            self.report(
                seg.path,
                pos,
                f"offsets go backwards: the batch starts at offset {first}, "
                f"the one before ended at {self.next_offset - 1}",
                why_not=_AMBIGUOUS,
            )
        elif self.expected is not None and first > self.expected and not self.compacted:
            missing = (
                f"record {first - 1} is" if first - self.expected == 1 else f"records {self.expected}..{first - 1} are"
            )
            self.report(
                seg.path,
                pos,
                f"offsets skip from {self.expected} to {first}: {missing} missing "
                "(only compaction, or a repair that quarantined them, leaves gaps)",
                WARNING,
            )
        if b.offset_deltas is not None and b.last_offset_delta != b.count - 1 and not self.compacted:
            self.report(
                seg.path,
                pos,
                f"offsets inside the batch skip: {b.count} record(s) span offsets "
                f"{b.base_offset}..{b.last_offset} (only compaction leaves gaps)",
                WARNING,
            )
        self.next_offset = self.expected = b.next_offset

    def _check_index(self, seg: _Segment) -> None:
        """The index must be exactly the one kq writes: one entry every INTERVAL_BYTES."""
        try:
            # No more entries than the segment can have: the rest are surplus, read or not.
            have = Index.load(seg.index_path, seg.size + INTERVAL_BYTES)
        except (NotRegularFile, OSError) as exc:
            file, why = _unreadable(exc, seg.index_path)
            self.report(
                file,
                None,
                f"index unreadable: {why}",
                why_not=_FOREIGN + " (kq then writes a new index)"
                if isinstance(exc, NotRegularFile)
                else "kq cannot read it",
            )
            return
        entries = [have.entry(i) for i in range(len(have))]
        torn = len(have.blob) % ENTRY_SIZE
        if entries == seg.index and have.file_size == len(have.blob) and not torn:
            return
        if not have.blob and not os.path.lexists(seg.index_path):
            seg.index_problem = self.report(
                seg.index_path, None, f"index out of date: missing (the segment needs {len(seg.index)} entries)"
            )
            return
        i = next((i for i, (a, b) in enumerate(zip(entries, seg.index)) if a != b), min(len(entries), len(seg.index)))
        if torn and i == len(entries):  # a crash tore the last entry written
            what = f"a partial {torn}-byte entry at the end"
        elif i < len(entries) and i < len(seg.index):
            (o, p, t), (eo, ep, et) = entries[i], seg.index[i]
            what = (
                f"entry {i} says offset {o} at byte {p} after timestamps up to {t}; "
                f"the segment has offset {eo} at byte {ep} after timestamps up to {et}"
            )
        elif i < len(seg.index):
            what = f"{len(seg.index) - i} entries missing from entry {i} on (the segment needs {len(seg.index)})"
        else:
            extra = have.file_size - i * ENTRY_SIZE
            what = f"{extra // ENTRY_SIZE} entries past the last one the segment needs"
            if extra % ENTRY_SIZE:
                what += f" and a partial {extra % ENTRY_SIZE}-byte entry"
        seg.index_problem = self.report(seg.index_path, i * ENTRY_SIZE, f"index out of date: {what}")

    # ------------------------------------------------------------------ repair

    def repair(self) -> None:
        """Quarantine damage and truncate torn tails (the caller holds both locks)."""
        for seg in self.segments:
            if seg.damaged_last is not None:
                r = seg.damaged_last
                r.problem.action = self.part.recover() or "nothing to do: a writer dealt with it meanwhile"
                r.problem.repaired = True
            if seg.damaged:
                _quarantine_and_splice(seg)
            elif seg.torn_tail is not None:
                _truncate(seg.path, seg.torn_tail.start)
            if seg.torn_tail is not None:
                r = seg.torn_tail
                r.problem.action = (
                    f"truncated the segment to {r.start} bytes: dropped {r.end - r.start} byte(s) "
                    "of an incomplete write, as the next producer would"
                )
                r.problem.repaired = True

    def rebuild_indexes(self) -> None:
        """Write every index that is not what kq writes (after ``repair``, on a fresh check)."""
        for seg in self.segments:
            if seg.index_problem is not None and not seg.damaged:
                atomic_write(seg.index_path, pack_entries(seg.index))
                seg.index_problem.action = f"rebuilt the index ({len(seg.index)} entries)"
                seg.index_problem.repaired = True


def _quarantine_and_splice(seg: _Segment) -> None:
    """Move each damaged region to its own file, then rewrite the segment without them.

    The quarantine files are on disk (fsynced) before the segment loses the
    bytes, so a crash in between leaves them twice, never nowhere; a rerun
    finds the same damage and reuses the same file names.
    """
    fd = open_regular(seg.path)
    try:
        for r in seg.damaged:
            moved = _read(fd, r.start, r.end)
            target = quarantine_name(f"{seg.path}{QUARANTINE}-{r.start}", moved)
            atomic_write(target, moved)
            after = "the batches after them stay in the segment" if r.end < seg.size else "they ended the segment"
            r.problem.action = f"moved bytes {r.start}..{r.end - 1} ({r.end - r.start} bytes) to {target}; {after}"
            r.problem.repaired = True
        cut = sorted(seg.damaged, key=lambda r: r.start) + ([seg.torn_tail] if seg.torn_tail else [])
        keep, at = [], 0
        for r in cut:
            keep.append((at, r.start))
            at = r.end
        keep.append((at, seg.size))
        tmp = f"{seg.path}.tmp-{os.getpid()}"
        out = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for lo, hi in keep:
                for chunk_start in range(lo, hi, READ_CHUNK):
                    write_all(out, _read(fd, chunk_start, min(chunk_start + READ_CHUNK, hi)))
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, seg.path)
        fsync_dir(os.path.dirname(seg.path))
    finally:
        os.close(fd)


def _read(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        raise DataDirError(f"segment shrank while being repaired (read {len(data)} of {end - start} bytes at {start})")
    return data


def _truncate(path: str, size: int) -> None:
    fd = open_regular(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- data directory


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
                file, why = _unreadable(exc, os.path.join(self.data.topics_path, name, TOPIC_FILE))
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
                for p in self._group_offsets(topic, ranges):
                    yield self._count(p)
                for p in self._share_states(topic, ranges):
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

    def _partition(self, topic: Topic, number: int) -> tuple[list[Problem], tuple[int, int] | None]:
        """Problems of one partition, and its (start, end) offsets when they can be read."""
        self.partitions += 1
        try:
            part = topic.partition(number)
            try:
                mode = os.stat(part.path).st_mode
            except FileNotFoundError:
                return [
                    self._not_repaired(
                        Problem(
                            topic.name,
                            number,
                            part.path,
                            None,
                            "partition directory missing",
                            why_not="the topic says it has this partition; restore the directory",
                        )
                    )
                ], None
            if not stat.S_ISDIR(mode):
                return [
                    self._not_repaired(
                        Problem(
                            topic.name,
                            number,
                            part.path,
                            None,
                            f"partition directory is a {file_kind(mode)}, not a directory",
                            why_not=_FOREIGN,
                        )
                    )
                ], None
            return self._check_partition(topic, part)
        except (KqError, OSError) as exc:
            if self.repair and isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # --repair needs write access: without it, it fails as a whole, naming the file
            # A lock file that is a FIFO, a directory kq may not enter, a link
            # out of the data directory: the partition is not checked, and says so.
            file, why = _unreadable(exc, os.path.join(topic.path, str(number)))
            return [self._not_repaired(Problem(topic.name, number, file, None, f"partition not checked: {why}"))], None

    def _check_partition(self, topic: Topic, part: Partition) -> tuple[list[Problem], tuple[int, int] | None]:
        # Checking alone works on a read-only copy (a backup mount): locks
        # that cannot be created there are not taken, as no writer can run.
        read_only_ok = not self.repair
        with part.maintenance_lock(read_only_ok=read_only_ok):
            check = _PartitionCheck(topic, part).run()
            if check.to_repair:
                # No append in progress from here on: look again.
                with part.writer_lock():
                    check = _PartitionCheck(topic, part).run()
                    if self.repair and check.to_repair:
                        check = self._repair(topic, part, check)
                    ends = _offset_range(part)
            else:
                ends = _offset_range(part)
        self.segments += len(check.segments)
        self.bytes += check.bytes
        return check.problems, ends

    def _repair(self, topic: Topic, part: Partition, found: _PartitionCheck) -> _PartitionCheck:
        found.repair()
        # Cutting bytes moved the batches after them: indexes are rebuilt from a fresh look.
        again = _PartitionCheck(topic, part).run()
        again.rebuild_indexes()
        before = {seg.base: seg for seg in found.segments}
        for seg in again.segments:
            old = before.get(seg.base)
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

    def _group_offsets(self, topic: Topic, ranges: dict[int, tuple[int, int] | None]):
        """Each group's files for this topic: committed offsets readable and inside the
        partition, claim and member files that a member can open."""
        groups = Groups(self.data)
        for group in groups.groups_of_topic(topic.name):
            directory = os.path.join(groups.path, group, topic.name)
            names, problem = self._group_directory(topic, directory, f"group '{group}'")
            if problem is not None:
                yield problem
            if names is None:
                continue
            yield from self._group_members(topic, group, directory)
            for name in names:
                path = os.path.join(directory, name)
                number = partition_of(name, CLAIM_SUFFIX)
                if number is not None:
                    yield from self._lock_file(topic, number, path, f"claim file of group '{group}'")
                number = partition_of(name, OFFSET_SUFFIX)
                if number is None:
                    continue
                try:
                    found = Groups.read_offset_file(path)
                except (CorruptFile, OSError) as exc:
                    _, why = _unreadable(exc, path)
                    p = Problem(topic.name, number, path, None, f"offsets file of group '{group}' unreadable: {why}")
                    if self.repair and isinstance(exc, CorruptFile):
                        _quarantine_offsets(p, group, directory)
                    yield self._not_repaired(p)
                    continue
                if found is None:
                    continue
                offset, committed_for = found.offset, found.topic_id
                if topic.id is not None and committed_for not in (None, topic.id):
                    yield Problem(
                        topic.name,
                        number,
                        path,
                        None,
                        f"group '{group}' committed this offset for an earlier topic named '{topic.name}' "
                        "(deleted and re-created): it is ignored",
                        WARNING,
                    )
                    continue
                if number >= topic.partition_count:
                    yield Problem(
                        topic.name,
                        number,
                        path,
                        None,
                        f"group '{group}' has an offset for partition {number}, which does not exist",
                        WARNING,
                    )
                    continue
                yield from _offset_in_range(topic, number, path, group, offset, ranges.get(number))

    def _lock_file(self, topic: Topic, number: int, path: str, what: str):
        """A lock file (a group's claim, a share group's lock) must be a regular file: kq cannot lock anything else."""
        kind = _not_regular(path)
        if kind:
            yield self._not_repaired(
                Problem(topic.name, number, path, None, f"{what} is a {kind}, not a regular file", why_not=_FOREIGN)
            )

    def _group_members(self, topic: Topic, group: str, directory: str):
        """Member files a live member holds must be what a member writes (others are tidied by members)."""
        members = os.path.join(directory, MEMBERS_DIR)
        try:
            names = sorted(n for n in os.listdir(members) if n.endswith(MEMBER_SUFFIX))
        except FileNotFoundError:
            return
        except OSError as exc:
            yield self._not_repaired(
                Problem(topic.name, None, members, None, f"members of group '{group}' unreadable: {exc.strerror}")
            )
            return
        for name in names:
            path = os.path.join(members, name)
            try:
                probe = try_lock(path)
                if probe is not None:  # its member is gone; the next member removes it
                    probe.close()
                    continue
                _read_member(path, name[: -len(MEMBER_SUFFIX)])
            except FileNotFoundError:
                continue
            except (CorruptFile, OSError) as exc:
                _, why = _unreadable(exc, path)
                yield self._not_repaired(
                    Problem(
                        topic.name,
                        None,
                        path,
                        None,
                        f"member file of group '{group}' unreadable: {why}",
                        why_not=_FOREIGN,
                    )
                )

    def _share_states(self, topic: Topic, ranges: dict[int, tuple[int, int] | None]):
        """Each share group's files for this topic (kq.share): settings and partition states that
        parse and fit the partition, lock files that are regular files, live workers' member files."""
        from ..share.settings import SETTINGS_FILE, dead_letter_topic
        from ..share.shares import Shares
        from ..share.state import LOCK_SUFFIX, STATE_SUFFIX

        shares = Shares(self.data)
        for share in shares.shares_of_topic(topic.name):
            directory = os.path.join(shares.path, share, topic.name)
            names, problem = self._group_directory(topic, directory, f"share group '{share}'")
            if problem is not None:
                yield problem
            if names is None:
                continue
            yield from self._group_members(topic, share, directory)
            dead_letter: str | None = dead_letter_topic(topic.name)
            if SETTINGS_FILE in names:
                path = os.path.join(directory, SETTINGS_FILE)
                try:
                    settings = shares.read_settings(share, topic.name)
                    if settings is not None:
                        dead_letter = settings.dead_letter
                except (CorruptFile, OSError) as exc:
                    dead_letter = None
                    yield self._not_repaired(
                        Problem(
                            topic.name,
                            None,
                            path,
                            None,
                            f"settings of share group '{share}' unreadable: {_unreadable(exc, path)[1]}",
                            why_not="restore it, or remove it (the group takes the default settings again)",
                        )
                    )
            for name in names:
                path = os.path.join(directory, name)
                number = partition_of(name, LOCK_SUFFIX)
                if number is not None:
                    yield from self._lock_file(topic, number, path, f"lock file of share group '{share}'")
                    continue
                number = partition_of(name, STATE_SUFFIX)
                if number is None:
                    continue
                try:
                    state = shares.read_state(share, topic.name, number)
                except (CorruptFile, OSError, KqError) as exc:
                    _, why = _unreadable(exc, path)
                    p = Problem(topic.name, number, path, None, f"state of share group '{share}' unreadable: {why}")
                    if self.repair and isinstance(exc, CorruptFile):
                        _quarantine_share_state(p, share, directory)
                    yield self._not_repaired(p)
                    continue
                if state is None:
                    continue
                yield from _share_state_in_range(topic, number, path, share, state, ranges.get(number))
                for p in _share_state_unsound(topic, number, path, share, state, dead_letter):
                    yield self._not_repaired(p)

    def _group_directory(self, topic: Topic, directory: str, group: str) -> tuple[list[str] | None, Problem | None]:
        """The names in a (share) group's directory for ``topic``: None if there is none, or a
        problem if it cannot be listed."""
        try:
            return sorted(os.listdir(directory)), None
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            why = f"directory of {group} unreadable: {exc.strerror}"
            return None, self._not_repaired(Problem(topic.name, None, directory, None, why))

    def _not_repaired(self, p: Problem) -> Problem:
        if self.repair and p.action is None:
            p.action = f"not repaired: {p.why_not}" if p.why_not else "not repaired"
        return p


def _quarantine_offsets(p: Problem, group: str, directory: str) -> None:
    # Holding the partition's claim, no member can own it and commit a good
    # offset that would then be moved aside in its place.
    _move_aside(
        p,
        os.path.join(directory, f"{p.partition}{CLAIM_SUFFIX}"),
        lambda: Groups.read_offset_file(p.file),
        f"a live member of group '{group}' owns partition {p.partition}; run again when it stops",
        f"group '{group}' will restart partition {p.partition} from its reset policy (earliest by default)",
    )


def _quarantine_share_state(p: Problem, share: str, directory: str) -> None:
    # Under the partition's share lock: no worker reads or replaces the file meanwhile.
    from ..engine.fileio import read_small
    from ..share.state import LOCK_SUFFIX, MAX_STATE_BYTES, parse_state

    _move_aside(
        p,
        os.path.join(directory, f"{p.partition}{LOCK_SUFFIX}"),
        lambda: parse_state(read_small(p.file, MAX_STATE_BYTES), p.file),
        f"a worker of share group '{share}' is using it; run again",
        f"share group '{share}' will start partition {p.partition} afresh from its reset policy "
        "(earliest by default), delivering again what it had settled",
    )


def _move_aside(p: Problem, lock_path: str, read, busy: str, after: str) -> None:
    """Move an unreadable small file to a quarantine file beside it, holding the lock of whoever
    writes it; ``read`` raises CorruptFile while the file is still unreadable (a writer may have
    replaced it meanwhile)."""
    try:
        lock = try_lock(lock_path, create=True)
    except (KqError, OSError) as exc:
        p.action = f"not repaired: {_unreadable(exc, p.file)[1]}"
        return
    if lock is None:
        p.action = f"not repaired: {busy}"
        return
    try:
        try:
            read()
            p.action, p.repaired = "nothing to do: it was replaced or removed meanwhile", True
            return
        except CorruptFile:
            pass
        target = quarantine_name(p.file + QUARANTINE)
        os.rename(p.file, target)
        fsync_dir(os.path.dirname(p.file))
    finally:
        lock.close()
    p.action = f"moved it to {target}; {after}"
    p.repaired = True


def _share_state_in_range(topic: Topic, number: int, path: str, share: str, state, ends):
    if topic.id is not None and state.topic_id not in (None, topic.id):
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' kept this state for an earlier topic named '{topic.name}' "
            "(deleted and re-created): it is ignored",
            WARNING,
        )
        return
    if number >= topic.partition_count:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' has a state for partition {number}, which does not exist",
            WARNING,
        )
        return
    if ends is None:
        return
    start, end = ends
    if state.next > end:
        end = topic.partition(number).end_offset()  # a producer may have appended since
    if state.next > end:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' has acquired up to offset {state.next}, past the end offset {end}",
            WARNING,
        )
    if state.start < start and state.lag(end) > 0:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' has records below the start offset {start} that it never settled: "
            "retention or trim deleted them, and they will be skipped",
            WARNING,
        )


def _share_state_unsound(topic: Topic, number: int, path: str, share: str, state, dead_letter: str | None):
    """What a worker would not follow in a share state (every file is untrusted input): records
    dead-lettered to another topic than the group's dead-letter topic, a lease longer than any kq
    grants, a lease held by something that is not a worker."""
    from ..share.consumer import WORKER_ID
    from ..share.state import ACQUIRED, DEAD_LETTERING, MAX_LEASE_MS, boot_id, clock_ms

    if (topic.id is not None and state.topic_id not in (None, topic.id)) or number >= topic.partition_count:
        return  # a state nobody reads (_share_state_in_range warns of it)
    why_not = "a worker of the group sets it right when it next takes records of the partition"
    now = clock_ms()
    for r in state.ranges:
        where = f"share group '{share}' "
        if r.state == DEAD_LETTERING and dead_letter is not None and r.dlq is not None and r.dlq[0] != dead_letter:
            what = "the topic itself" if r.dlq[0] == topic.name else f"'{r.dlq[0]}'"
            yield Problem(
                topic.name,
                number,
                path,
                None,
                f"{where}dead-letters offsets {r.first}..{r.last} to {what}, not to its dead-letter topic "
                f"'{dead_letter}'",
                why_not=why_not,
            )
        if r.state != ACQUIRED or state.boot != boot_id() or r.until <= now:
            continue  # no lease holds (a lease of another boot is void)
        if r.until > now + MAX_LEASE_MS:
            yield Problem(
                topic.name,
                number,
                path,
                None,
                f"{where}holds offsets {r.first}..{r.last} under a lease that ends in {(r.until - now) / 3_600_000:.0f} h, "
                f"longer than any lease kq grants (24 h)",
                why_not=why_not,
            )
        if not r.detached and (r.owner is None or not WORKER_ID.fullmatch(r.owner)):
            yield Problem(
                topic.name,
                number,
                path,
                None,
                f"{where}holds offsets {r.first}..{r.last} under a lease of {shown(r.owner)}, which is not a worker",
                why_not=why_not,
            )


def _offset_in_range(topic: Topic, number: int, path: str, group: str, offset: int, ends):
    if ends is None:
        return
    start, end = ends
    if offset > end:
        end = topic.partition(number).end_offset()  # a producer may have appended since
    if offset < start:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"group '{group}' committed offset {offset}, below the start offset {start}: it will resume "
            f"at {start}, having missed {start - offset} record(s) retention or trim deleted",
            WARNING,
        )
    elif offset > end:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"group '{group}' committed offset {offset}, past the end offset {end}",
            WARNING,
        )


def _offset_range(part: Partition) -> tuple[int, int] | None:
    try:
        return part.start_offset(), part.end_offset()
    except (KqError, OSError):
        return None
