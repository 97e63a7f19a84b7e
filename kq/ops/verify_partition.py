"""``kq verify``: one partition's log, segment by segment: every batch (magic, length, checksum,
payload, offsets), the gaps between offsets, and each index against the index kq writes.

A PartitionCheck only looks; it records what repair needs to know (kq.ops.verify_repair acts on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..engine import batch as batchfmt
from ..engine.fileio import open_regular
from ..engine.index import ENTRY_SIZE, INTERVAL_BYTES, Index, IndexBuilder
from ..engine.partition import Partition
from ..engine.segment import (
    DAMAGED,
    MAX_OFFSET,
    BatchReader,
    SegmentScan,
    damaged_last_batch,
    find_valid_batch,
    list_segments,
)
from ..engine.topic import Topic
from ..errors import CorruptLog, NotRegularFile
from .verify_files import check_partition_files
from .verify_problem import ERROR, FOREIGN, WARNING, Problem, unreadable

_AMBIGUOUS = "kq cannot tell which records are the right ones; inspect the segment"


@dataclass
class Region:
    """Bytes of a segment that are not valid batches: [start, end)."""

    start: int
    end: int
    problem: Problem


@dataclass
class CheckedSegment:
    base: int
    path: str
    index_path: str
    size: int = 0
    damaged: list[Region] = field(default_factory=list)  # to quarantine
    torn_tail: Region | None = None  # to truncate (last segment only)
    damaged_last: Region | None = None  # a whole damaged last batch: quarantined as a writer would (last segment only)
    index: list[tuple[int, int, int]] = field(default_factory=list)  # what the index should hold
    index_problem: Problem | None = None
    txn_index_path: str = ""
    txn_index: list[tuple[int, int, int]] = field(default_factory=list)  # the abort markers' entries (.txnindex)
    txn_index_problem: Problem | None = None


class PartitionCheck:
    """One pass over a partition's files: the problems and what repair needs to know."""

    def __init__(self, topic: Topic, part: Partition):
        self.topic = topic
        self.part = part
        self.compacted = topic.config.get("cleanup") == "compact"
        self.problems: list[Problem] = []
        self.segments: list[CheckedSegment] = []
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

    def run(self) -> PartitionCheck:
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
            file, why = unreadable(exc, path)
            self.report(file, None, f"partition directory unreadable: {why}", why_not="kq cannot check it")
            return self
        for file in out_of_range:
            self.report(
                file,
                None,
                f"a segment name past the largest offset ({MAX_OFFSET}): kq refuses the partition",
                why_not=FOREIGN,
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
        check_partition_files(self, bases)
        return self

    # ------------------------------------------------------------------ segments

    def _check_segment(self, base: int, last: bool) -> None:
        seg = CheckedSegment(base, self.part.log_path(base), self.part.index_path(base))
        seg.txn_index_path = self.part.txn_index_path(base)
        try:
            fd = open_regular(seg.path)
        except FileNotFoundError:
            return
        except (NotRegularFile, OSError) as exc:
            file, why = unreadable(exc, seg.path)
            self.report(
                file,
                None,
                f"segment unreadable: {why}",
                why_not=FOREIGN if isinstance(exc, NotRegularFile) else "kq cannot read it",
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
            self._check_txn_index(seg)
        self.segments.append(seg)

    def _check_batches(self, fd: int, seg: CheckedSegment, last: bool) -> None:
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
                    seg.damaged.append(Region(pos, pos + header.size, problem))
                    self.expected = None
                    continue
                self._check_offsets(seg, pos, b)
                index.add(b.base_offset, pos, b.max_timestamp)
                marker = batchfmt.marker_of(b)
                if marker is not None and not marker.commit:
                    seg.txn_index.append((marker.producer_id, marker.first_offset, b.base_offset))
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
                    seg.damaged_last = Region(
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
                seg.torn_tail = Region(start, end, problem)
                return
            if found is None and last:  # a whole batch no writer can go on after (its offsets are unknown)
                what = f"{reader.reason} at the end of the log: its last {end - start} byte(s) are a damaged batch"
            elif found is None:
                what = f"{reader.reason} in a closed segment: its last {end - start} byte(s) are damaged"
            else:
                what = f"{reader.reason}: {end - start} damaged byte(s) before the valid batch at byte {found}"
            seg.damaged.append(Region(start, end, self.report(seg.path, start, what)))
            self.expected = None  # the records in the damage are unknown
            if found is None:
                return
            position, floor = found, reader.floor

    def _check_offsets(self, seg: CheckedSegment, pos: int, b: batchfmt.RecordBatch) -> None:
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

    def _check_txn_index(self, seg: CheckedSegment) -> None:
        """The segment's .txnindex must list its abort markers, in order (docs/FORMAT.md, "Transactions")."""
        from ..engine.txn_log import TXN_ENTRY_SIZE, load_txn_index

        try:
            have = [tuple(e) for e in load_txn_index(seg.txn_index_path)]
            size = os.path.getsize(seg.txn_index_path) if os.path.lexists(seg.txn_index_path) else 0
        except (OSError, NotRegularFile) as exc:
            file, why = unreadable(exc, seg.txn_index_path)
            self.report(file, None, f"transaction index unreadable: {why}", why_not=FOREIGN)
            return
        if have == seg.txn_index and size == len(have) * TXN_ENTRY_SIZE:
            return
        seg.txn_index_problem = self.report(
            seg.txn_index_path,
            None,
            f"transaction index out of date: {len(have)} entries where the segment's abort markers make "
            f"{len(seg.txn_index)} (read_committed readers would "
            f"{'show aborted records' if len(have) < len(seg.txn_index) else 'hide committed ones'})",
        )

    def _check_index(self, seg: CheckedSegment) -> None:
        """The index must be exactly the one kq writes: one entry every INTERVAL_BYTES."""
        try:
            # No more entries than the segment can have: the rest are surplus, read or not.
            have = Index.load(seg.index_path, seg.size + INTERVAL_BYTES)
        except (NotRegularFile, OSError) as exc:
            file, why = unreadable(exc, seg.index_path)
            self.report(
                file,
                None,
                f"index unreadable: {why}",
                why_not=FOREIGN + " (kq then writes a new index)"
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
