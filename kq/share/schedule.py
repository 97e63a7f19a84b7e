"""A share partition's scheduled records (``P.GEN.schedule``): runs of delayed records waiting for their time.

A worker that reads records whose ``kq.deliver-at`` time has not come takes
them out of the state's ranges and schedules them here, as runs
(first, last, time, attempt); once a run's time has come, a worker moves it
back into the state's ranges as available, and each record's own time is
read again. The runs are kept out of ``P.share`` because a job queue may
hold a great many of them (every delayed record between undelayed ones is
a run): the state file is replaced whole at every acquisition, and this
file only grows by what changed.

The file is append-only within a generation: an 8-byte magic, then 32-byte
entries, each a run scheduled or (time 0) the run starting at ``first``
moved back. A change appends its entries at the end the state counts
(``schedule.bytes``) and fsyncs them before the state that counts them is
replaced, so a crash leaves at most entries past that end, which no reader
looks at and the next change writes over. When moved runs make up most of
the file, a change writes a new generation (a random id: a name is never
used twice) holding only the runs that wait, and deletes the old one once
the state names the new. docs/FORMAT.md ("Share groups") has the layout.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Iterator

from ..engine.fileio import fsync_dir, open_regular, shown, write_all
from ..engine.segment import MAX_OFFSET
from ..errors import CorruptFile

SCHEDULE_SUFFIX = ".schedule"
MAGIC = b"KQSCHED\x01"  # the name, then the format version (1)
ENTRY = struct.Struct(">QQQI4x")  # first, last, at (epoch ms; 0: moved back), attempt
# More runs than this wait in one partition: a worker takes no new records there until some fall due
# (each run costs memory in every worker that looks: about 200 bytes).
MAX_RUNS = 1_000_000
# A new generation is written when the file holds this many entries more than four times the runs that wait.
COMPACT_SLACK = 4096
MAX_GENERATION = 2**48 - 1


def schedule_path(directory: str, partition: int, generation: int) -> str:
    return os.path.join(directory, f"{partition}.{generation:012x}{SCHEDULE_SUFFIX}")


def schedule_partition(name: str) -> int | None:
    """The partition a schedule file's name is of, or None if it names none."""
    if not name.endswith(SCHEDULE_SUFFIX):
        return None
    number, _, generation = name[: -len(SCHEDULE_SUFFIX)].partition(".")
    if not (number.isdigit() and len(generation) == 12 and all(c in "0123456789abcdef" for c in generation)):
        return None
    return int(number)


class Schedule:
    """The runs one partition's state counts as scheduled, read from its file and kept in step with it.

    ``sync`` brings it to what a state names (reading only the entries added since it last
    looked, when it can); ``add`` and ``take_due`` change it; ``commit`` writes the change
    and fills the state's summary (``PartitionState.schedule``), before the state is saved.
    """

    def __init__(self, directory: str, partition: int):
        self.directory = directory
        self.partition = partition
        self._drop: list[int] = []  # generations to delete once the state no longer names them
        self._reset(0)

    def _reset(self, generation: int) -> None:
        self.runs: dict[int, tuple[int, int, int]] = {}  # first -> (last, at, attempt)
        self.records = 0
        self.generation = generation  # 0: no file
        self.bytes = 0  # the end the state counts, read this far
        self.entries = 0  # entries in the file, moved ones included
        self._by_time: list[tuple[int, int]] = []  # (at, first), stale pairs skipped when met
        self._by_offset: list[int] = []
        self._pending = bytearray()
        self._replace = False  # the change is written as a new generation

    @property
    def path(self) -> str:
        return schedule_path(self.directory, self.partition, self.generation)

    # ------------------------------------------------------------ reading

    def sync(self, summary: dict | None) -> None:
        """Be what ``summary`` (a state's ``schedule``, None if it has none) names: read the
        entries added since this object last looked, or the whole file."""
        if summary is None:
            if self.generation or self.runs:
                self._reset(0)
            return
        generation, end = summary["generation"], summary["bytes"]
        if generation != self.generation or end < self.bytes or self._pending:
            self._reset(generation)
        if end > self.bytes:
            self._read(self.bytes, end)
        if self.records != summary["records"]:
            raise CorruptFile(
                self.path, f"it holds {self.records} scheduled records, its share state counts {summary['records']}"
            )

    def _read(self, start: int, end: int) -> None:
        path = self.path
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            raise CorruptFile(path, "missing, though the share state names it") from None
        try:
            size = os.fstat(fd).st_size
            if size < end:  # (before reading: the state's count is untrusted, the allocation its size)
                raise CorruptFile(path, f"{size} bytes long, though the share state counts {end}")
            raw = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        if len(raw) < end - start:
            raise CorruptFile(path, f"{start + len(raw)} bytes long, though the share state counts {end}")
        if start == 0:
            if raw[: len(MAGIC)] != MAGIC:
                raise CorruptFile(path, f"begins {shown(raw[: len(MAGIC)])}, not a kq schedule's {MAGIC!r}")
            raw = raw[len(MAGIC) :]
        if len(raw) % ENTRY.size:
            raise CorruptFile(path, f"the share state counts {end} bytes, not a whole number of entries")
        runs, by_time, by_offset = self.runs, self._by_time, self._by_offset
        # A whole file's heaps are built at once; a few entries added since are pushed.
        push = list.append if start == 0 else heapq.heappush
        for first, last, at, attempt in ENTRY.iter_unpack(raw):
            if at == 0:
                gone = runs.pop(first, None)
                if gone is None:
                    raise CorruptFile(path, f"moves back a run at offset {first} that it does not hold")
                self.records -= gone[0] - first + 1
            else:
                if not first <= last <= MAX_OFFSET or at > MAX_OFFSET or first in runs:
                    raise CorruptFile(path, f"a run {first}..{last} at {at}: not a run it can hold")
                runs[first] = (last, at, attempt)
                self.records += last - first + 1
                push(by_time, (at, first))
                push(by_offset, first)
        if start == 0:
            heapq.heapify(by_time)
            heapq.heapify(by_offset)
        self.entries += len(raw) // ENTRY.size
        self.bytes = end

    def check(self, start: int, next_offset: int, ranges) -> None:
        """CorruptFile unless every run lies in [start, next), apart from each other and from ``ranges``."""
        spans = sorted([(f, v[0]) for f, v in self.runs.items()] + [(r.first, r.last) for r in ranges])
        floor = start
        for first, last in spans:
            if first < floor or last >= next_offset:
                raise CorruptFile(
                    self.path, f"a run {first}..{last} overlaps another, or lies outside {start}..{next_offset - 1}"
                )
            floor = last + 1

    # ------------------------------------------------------------ looking

    def first_offset(self) -> int | None:
        heap, runs = self._by_offset, self.runs
        while heap and heap[0] not in runs:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def next_due(self) -> int | None:
        heap, runs = self._by_time, self.runs
        while heap and (heap[0][1] not in runs or runs[heap[0][1]][1] != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def waiting(self, wall: int) -> tuple[int, int | None]:
        """Records whose run's time is later than ``wall``, and the earliest such time."""
        times = [(at, last - first + 1) for first, (last, at, _) in self.runs.items() if at > wall]
        return sum(n for _, n in times), min((at for at, _ in times), default=None)

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        """(first, last, at, attempt) of each run, in offset order."""
        for first in sorted(self.runs):
            last, at, attempt = self.runs[first]
            yield first, last, at, attempt

    # ------------------------------------------------------------ changing

    def room(self) -> int:
        return MAX_RUNS - len(self.runs)

    def add(self, first: int, last: int, at: int, attempt: int) -> None:
        self.runs[first] = (last, at, attempt)
        self.records += last - first + 1
        heapq.heappush(self._by_time, (at, first))
        heapq.heappush(self._by_offset, first)
        self._pending += ENTRY.pack(first, last, at, attempt)

    def _remove(self, first: int) -> tuple[int, int, int]:
        last, at, attempt = self.runs.pop(first)
        self.records -= last - first + 1
        self._pending += ENTRY.pack(first, last, 0, 0)
        return last, at, attempt

    def take_due(self, wall: int, limit: int) -> list[tuple[int, int, int]]:
        """Up to ``limit`` runs whose time has come by ``wall``, removed: (first, last, attempt) each."""
        out: list[tuple[int, int, int]] = []
        while len(out) < limit:
            at = self.next_due()
            if at is None or at > wall:
                break
            first = heapq.heappop(self._by_time)[1]
            last, _, attempt = self._remove(first)
            out.append((first, last, attempt))
        return out

    def trim_below(self, offset: int) -> int:
        """Forget what lies below ``offset`` (deleted by retention); returns how many records that was."""
        lost = 0
        while (first := self.first_offset()) is not None and first < offset:
            last, at, attempt = self._remove(first)
            lost += min(last, offset - 1) - first + 1
            if last >= offset:
                self.add(offset, last, at, attempt)
        return lost

    def trim_from(self, end: int) -> None:
        """Forget what lies at or past ``end`` (a replica that holds the log only up to there)."""
        for first in [f for f, (last, _, _) in self.runs.items() if last >= end]:
            last, at, attempt = self._remove(first)
            if first < end:
                self.add(first, end - 1, at, attempt)

    # ------------------------------------------------------------ writing

    def commit(self, state) -> None:
        """Write this change (fsynced) and set ``state.schedule`` to name it; the caller saves the state next,
        then calls ``collect``."""
        if self._pending or self._replace:
            written = self.entries + len(self._pending) // ENTRY.size
            if not self.runs:
                if self.generation:
                    self._drop.append(self.generation)
                self._reset(0)
            elif self.generation == 0 or self._replace or written > 4 * len(self.runs) + COMPACT_SLACK:
                self._write_generation()
            else:
                self._append()
        if not self.generation:
            state.schedule = None
            return
        state.schedule = {
            "generation": self.generation,
            "bytes": self.bytes,
            "records": self.records,
            "first": self.first_offset(),
            "next_due": self.next_due(),
        }

    def _append(self) -> None:
        path = self.path
        fd = open_regular(path, os.O_WRONLY)
        try:
            os.lseek(fd, self.bytes, os.SEEK_SET)
            write_all(fd, self._pending)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.bytes += len(self._pending)
        self.entries += len(self._pending) // ENTRY.size
        self._pending.clear()

    def _write_generation(self) -> None:
        if self.generation:
            self._drop.append(self.generation)
        self.generation = int.from_bytes(os.urandom(6), "big") or 1
        body = b"".join(ENTRY.pack(first, last, at, attempt) for first, last, at, attempt in self)
        path = self.path
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            write_all(fd, MAGIC, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.directory)
        self.bytes = len(MAGIC) + len(body)
        self.entries = len(body) // ENTRY.size
        self._pending.clear()
        self._replace = False
        self._by_time = [(at, first) for first, (_, at, _) in self.runs.items()]
        self._by_offset = list(self.runs)
        heapq.heapify(self._by_time)
        heapq.heapify(self._by_offset)

    def copy_to(self, directory: str) -> Schedule:
        """The same runs for the same partition in another directory (a replica's), written as a new
        generation there at its ``commit``."""
        copy = Schedule(directory, self.partition)
        copy.runs = dict(self.runs)
        copy.records = self.records
        copy._replace = True
        return copy

    def drop(self, generation: int) -> None:
        """Delete generation ``generation`` too at the next ``collect``."""
        self._drop.append(generation)

    def collect(self) -> None:
        """Delete the generations the saved state no longer names."""
        for generation in self._drop:
            try:
                os.unlink(schedule_path(self.directory, self.partition, generation))
            except FileNotFoundError:
                pass
        self._drop.clear()

    def sweep(self) -> None:
        """Delete this partition's schedule files of other generations than the one loaded: leftovers of
        a crash between writing a generation and saving the state, or of a state moved aside. Only
        under the lock (no worker is between the two then); a reader without it reads the state again."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        keep = os.path.basename(self.path) if self.generation else None
        for name in names:
            if name != keep and schedule_partition(name) == self.partition:
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def forget(self) -> None:
        """The state was not saved: what this object holds may differ from the files; read them afresh next time
        (and delete no generation: the state on disk may still name it)."""
        self._drop.clear()
        self._reset(-1)
