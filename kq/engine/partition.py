"""A partition: an ordered list of segments, one writer at a time, any number of readers.

Writers serialise on ``writer.lock`` (an flock the kernel drops if the
holder dies). Under the lock a writer first recovers the tail of the last
segment, then appends. Recovery truncates a torn tail (an append a crash cut
short, never acknowledged); a whole batch at the end that fails its checksum
is damage instead: its bytes are quarantined and its offsets never reused
(docs/GUARANTEES.md). Readers take no lock (kq.engine.cursor); they never see a
half-written batch because every batch is length-prefixed and checksummed.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import CorruptLog, KqError, NotAtBatchBoundary, TopicDeleted, warn
from . import batch as batchfmt
from . import segment
from .batch import MAX_OFFSET, BatchHeader
from .cursor import Cursor, RawBatch, runs
from .fileio import (
    FileLock,
    atomic_write,
    fsync_dir,
    integer_field,
    locked,
    make_dirs,
    open_regular,
    read_metadata,
    write_all,
)
from .index import ENTRY_SIZE, Index, IndexBuilder, entry_is_valid
from .segment import CLEAN, DAMAGED, BatchReader, classify_damage, find_valid_batch, index_name, list_segments, log_name

WRITER_LOCK = "writer.lock"
MAINTENANCE_LOCK = "maintain.lock"
START_NAME = "start.offset"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Tail:
    """What a writer knows about the end of the last segment."""

    base: int
    fd: int
    inode: int
    end: int  # byte position after the last valid batch
    next_offset: int
    index: IndexBuilder  # where the last entry is, and the max timestamp so far
    index_fd: int | None = None
    # The index file this tail appends to (None: none yet). If it is replaced
    # (kq verify --repair) or deleted, the tail is stale: appending to the old
    # file would leave the index on disk without its newest entries.
    index_inode: int | None = None


class Partition:
    def __init__(
        self,
        topic: str,
        number: int,
        path: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync: bool = False,
        config: dict | None = None,
        on_roll=None,
    ):
        self.topic = topic
        self.number = number
        self.path = path
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.config = config or {}  # the topic's: retention settings are read from it
        self.on_roll = on_roll  # called with the partition, outside the writer lock, after a segment closes
        # Read-only copies can be checked (kq verify) without a writable lock
        # file; a writer there fails on the segment it cannot open instead.
        self._writer = FileLock(os.path.join(path, WRITER_LOCK), read_only_ok=True)
        self._recovered: str | None = None  # what the last recovery did that a user must hear
        self._tail: _Tail | None = None
        self._null_headers_allowed = False  # the data directory's format takes null header values

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.number})"

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup") == "compact"

    # ------------------------------------------------------------------ files

    def segments(self) -> list[int]:
        """Base offsets of the segments, ascending."""
        try:
            return list_segments(self.path)
        except FileNotFoundError:
            raise self._gone() from None

    def _gone(self) -> Exception:
        """The error for a partition directory that is not there: its topic was deleted, or it is missing."""
        if not os.path.isdir(os.path.dirname(self.path)):
            return TopicDeleted(self.topic)
        return FileNotFoundError(2, "partition directory missing", self.path)

    def log_path(self, base: int) -> str:
        return os.path.join(self.path, log_name(base))

    def index_path(self, base: int) -> str:
        return os.path.join(self.path, index_name(base))

    def remove_segment(self, base: int) -> None:
        """Delete a segment and its index (the index first: an index never outlives its log)."""
        for path in (self.index_path(base), self.log_path(base)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self.sync:
            fsync_dir(self.path)

    def writer_lock(self) -> FileLock:
        """The writer lock, for ``with`` (reentrant): appends, recovery and truncation hold it."""
        return self._writer

    def recover(self) -> str | None:
        """Bring the log's tail to where an append can follow it, as the next writer would.

        Truncates a torn tail; quarantines a damaged last batch. Returns what
        was done that a user must hear of (a torn tail's truncation is routine
        and not reported), or None.
        """
        with self._writing():
            self._forget_tail()
            self._recover_tail()
            done, self._recovered = self._recovered, None
            return done

    @contextmanager
    def _writing(self):
        """Hold the writer lock; a partition directory deleted under us is the topic's deletion."""
        try:
            self._writer.acquire()
        except FileNotFoundError:
            raise self._gone() from None
        try:
            yield
        finally:
            self._writer.release()

    def maintenance_lock(self, blocking: bool = True, read_only_ok: bool = False):
        """Context manager over ``maintain.lock`` (retention, trim, compaction, verify); yields False if busy."""
        return locked(os.path.join(self.path, MAINTENANCE_LOCK), blocking, read_only_ok)

    def _open_log(self, base: int, flags: int = os.O_RDONLY) -> int:
        try:
            return open_regular(self.log_path(base), flags)
        except FileNotFoundError:
            if not os.path.isdir(self.path):
                raise self._gone() from None
            raise

    # ------------------------------------------------------------------ reading

    def start_offset(self) -> int:
        """The first offset still kept (Kafka's log start offset).

        The first segment's base, or further on if `topic trim` moved it
        inside that segment (recorded in ``start.offset``).
        """
        bases = self.segments()
        first = bases[0] if bases else 0
        return max(first, self.trimmed_to())

    def trimmed_to(self) -> int:
        path = os.path.join(self.path, START_NAME)
        try:
            return integer_field(read_metadata(path), "start_offset", path, 0, MAX_OFFSET)
        except FileNotFoundError:
            return 0

    def set_start_offset(self, offset: int) -> None:
        """Record that records before ``offset`` are gone (atomically)."""
        body = json.dumps({"format": 1, "start_offset": offset}).encode() + b"\n"
        atomic_write(os.path.join(self.path, START_NAME), body)

    def end_offset(self) -> int:
        """The offset the next appended record will get (Kafka's log end offset)."""
        bases = self.segments()
        if not bases:
            return 0
        base = bases[-1]
        try:
            fd = self._open_log(base)
        except FileNotFoundError:  # replaced or removed under us: look again
            return self.end_offset()
        try:
            size = os.fstat(fd).st_size
            found = segment.scan(fd, self.log_path(base), base, Index.load(self.index_path(base)))
            while found.stop == DAMAGED:
                # Valid batches after damage still count: the end is theirs,
                # and a reader will report the damage. So do the offsets of a
                # whole damaged batch at the end: a writer skips them.
                position = find_valid_batch(fd, found.end + 1, size)
                if position is None and found.whole_batch:
                    damaged = segment.damaged_last_batch(fd, found, size, self.compacted)
                    if damaged is not None:
                        return damaged.next_offset
                    # Offsets nobody can trust: say so (raises) rather than end before them.
                    classify_damage(fd, self.log_path(base), found.end, False, found.reason, True, found.floor)
                    return self.end_offset()  # it was being rewritten: look again
                if position is None:
                    return found.next_offset
                segment.resume(found, fd, self.log_path(base), position, None)
            return found.next_offset
        finally:
            os.close(fd)

    def size(self) -> int:
        total = 0
        for base in self.segments():
            try:
                total += os.stat(self.log_path(base)).st_size
            except FileNotFoundError:
                pass
        return total

    def cursor(self, offset: int, buffers: int = 1) -> Cursor:
        return Cursor(self, offset, buffers)

    def read(self, offset: int = 0, stop: int | None = None):
        """Yield the records from ``offset`` up to (not including) ``stop`` or the end."""
        stop = self.end_offset() if stop is None else stop
        cur = self.cursor(offset)
        try:
            while True:
                batches = cur.poll()
                if not batches:
                    return
                for b in batches:
                    if b.base_offset >= stop:
                        return
                    yield from b.records(b.index_of(offset), b.index_of(stop))
        finally:
            cur.close()

    def raw_batches(self, offset: int = 0):
        """Every valid batch from ``offset`` on, undecoded (raises CorruptLog on damage)."""
        cursor = self.cursor(offset)
        try:
            while True:
                batches = cursor.poll_raw()
                if not batches:
                    return
                yield from batches
        finally:
            cursor.close()

    def offset_for_timestamp(self, timestamp: int) -> int:
        """Offset of the first record (in offset order) with a timestamp >= ``timestamp``.

        Returns the end offset when there is none. Costs a binary search in each
        segment's index plus a scan of at most one index interval per segment.
        """
        for base in self.segments():
            path = self.log_path(base)
            try:
                fd = self._open_log(base)
            except FileNotFoundError:
                continue
            try:
                index = Index.load(self.index_path(base))
                entry = index.floor_timestamp(timestamp)
                position = 0
                if entry is not None and entry_is_valid(fd, entry):
                    position = entry[1]
                reader = BatchReader(fd, path, position)
                for _, header, buf, rel in reader.headers():
                    if header.max_timestamp >= timestamp:
                        b = batchfmt.decode(buf, rel, header, path)
                        for off, ts in zip(b.offsets(), b.timestamps()):
                            if ts >= timestamp:
                                return off
            finally:
                os.close(fd)
        return self.end_offset()

    def last_batch(self) -> RawBatch | None:
        """The last valid batch of the log, or None if it is empty."""
        for base in reversed(self.segments()):
            fd = self._open_log(base)
            try:
                found = segment.scan(fd, self.log_path(base), base, Index.load(self.index_path(base)))
                if found.last is not None:
                    position, header = found.last
                    return RawBatch(header, os.pread(fd, header.size, position), 0, position)
            finally:
                os.close(fd)
        return None

    def damaged_tail(self) -> tuple[str, int] | None:
        """(file, position) of bytes after the last valid batch, if any."""
        bases = self.segments()
        if not bases:
            return None
        path = self.log_path(bases[-1])
        fd = self._open_log(bases[-1])
        try:
            found = segment.scan(fd, path, bases[-1], Index.load(self.index_path(bases[-1])))
            return (path, found.end) if found.stop == DAMAGED else None
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing

    def append(
        self, values, keys=None, headers=None, timestamp: int | None = None, timestamps=None, attributes: int = 0
    ) -> tuple[int, int]:
        """Append one batch of records; return (first offset, last offset).

        The batch is in the page cache (visible to readers, safe from a crash of
        this process) when this returns, and on disk if the partition syncs.
        """
        if timestamp is None and timestamps is None:
            timestamp = now_ms()
        return self.append_payload(
            batchfmt.pack(values, keys, headers, timestamp=timestamp or 0, timestamps=timestamps, attributes=attributes)
        )

    def append_payload(self, payload: batchfmt.Payload) -> tuple[int, int]:
        """Append records packed by ``batch.pack``; return (first offset, last offset)."""
        if payload.null_header_values and not self._null_headers_allowed:
            self._allow_null_headers()
        rolled = False
        with self._writing():
            tail = self._recover_tail()
            self._report_recovery()
            self._check_room(tail.next_offset, tail.next_offset + payload.last_offset_delta + 1)
            if tail.end >= self.segment_bytes:
                tail, rolled = self._roll(tail), True
            first = tail.next_offset
            head = batchfmt.frame(first, payload)
            self._write(tail, head, payload.data)
            tail.index.add(first, tail.end, payload.max_timestamp)
            self._write_index(tail)
            tail.end += len(head) + len(payload.data)
            tail.next_offset = first + payload.last_offset_delta + 1
        if rolled and self.on_roll is not None:
            self.on_roll(self)
        return first, first + payload.last_offset_delta

    def _allow_null_headers(self) -> None:
        # (imported here: kq.engine.datadir imports this module)
        from .datadir import NULL_HEADER_FORMAT, require_format

        root = os.path.dirname(os.path.dirname(os.path.dirname(self.path)))  # DATA/topics/NAME/P
        require_format(root, NULL_HEADER_FORMAT)
        self._null_headers_allowed = True

    def append_raw(self, batches: list[RawBatch]) -> int:
        """Append batches exactly as another log stored them (replication).

        The first batch must start at this partition's end offset, so offsets
        stay identical to the source's. Returns the new end offset.
        """
        if not batches:
            return self.end_offset()
        rolled = False
        with self._writing():
            tail = self._recover_tail()
            self._report_recovery()
            if batches[0].base_offset != tail.next_offset:
                raise KqError(
                    f"{self}: batch at offset {batches[0].base_offset} does not follow the end "
                    f"offset {tail.next_offset}"
                )
            self._check_room(tail.next_offset, batches[-1].next_offset)
            if tail.end >= self.segment_bytes:
                tail, rolled = self._roll(tail), True
            self._write(tail, *runs(batches))
            for b in batches:
                tail.index.add(b.base_offset, tail.end, b.max_timestamp)
                tail.end += b.size
            self._write_index(tail)
            tail.next_offset = batches[-1].next_offset
        if rolled and self.on_roll is not None:
            self.on_roll(self)
        return tail.next_offset

    def _check_room(self, end: int, new_end: int) -> None:
        """Refuse an append that would take the end offset past MAX_OFFSET (it would not pack)."""
        if new_end > MAX_OFFSET:
            raise KqError(
                f"partition {self.topic}/{self.number} is full: {new_end - end} more offset(s) after its end "
                f"offset {end} would pass the largest end offset {MAX_OFFSET}"
            )

    def _report_recovery(self) -> None:
        if self._recovered is not None:
            done, self._recovered = self._recovered, None
            warn(done)

    def _write(self, tail: _Tail, *chunks) -> None:
        try:
            write_all(tail.fd, *chunks)
            if self.sync:
                os.fdatasync(tail.fd)
        except BaseException as exc:
            # Leave no torn batch behind for the next writer to find, and
            # forget what we knew: the file may not be what we think.
            self._forget_tail()
            _truncate_quietly(self.log_path(tail.base), tail.end)
            _name_the_file(exc, self.log_path(tail.base))
            raise

    def _write_index(self, tail: _Tail) -> None:
        """Append the entries the builder made since the last write, in one write."""
        if not tail.index.entries:
            return
        if tail.index_fd is None:
            tail.index_fd = open_regular(self.index_path(tail.base), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            tail.index_inode = os.fstat(tail.index_fd).st_ino
        write_all(tail.index_fd, tail.index.take())

    def truncate_to(self, offset: int) -> None:
        """Remove every record at or after ``offset``, which must start a batch (or be the end).

        Used to cut a diverged replica back to its common prefix with the source,
        the way a Kafka follower truncates to its leader's log.
        """
        # Segments go: maintenance (retention, verify) must not look meanwhile.
        # (Always the maintenance lock before the writer lock, as kq verify takes them.)
        with self.maintenance_lock(), self._writing():
            self._forget_tail()
            bases = self.segments()
            keep = [b for b in bases if b < offset]
            for base in bases:
                if base >= offset:
                    self.remove_segment(base)
            if not keep:
                os.close(self._create_segment(offset))
                return
            base = keep[-1]
            path = self.log_path(base)
            fd = self._open_log(base, os.O_RDWR)
            try:
                cut = None
                for pos, header, _, _ in BatchReader(fd, path, 0).headers():
                    if header.base_offset >= offset:
                        cut = pos
                        break
                if cut is None:
                    end = self.end_offset()
                    if end != offset:
                        raise NotAtBatchBoundary(self.topic, self.number, offset, end)
                    return
                os.ftruncate(fd, cut)
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            _truncate_index(self.index_path(base), cut)

    def restart_at(self, offset: int) -> None:
        """Delete every record and continue the log at ``offset`` (a replica the source's retention overtook).

        Like a Kafka follower whose fetch offset fell below its leader's log
        start: the records between the old end and ``offset`` no longer exist
        anywhere, so the log starts over there.
        """
        with self.maintenance_lock(), self._writing():
            self._forget_tail()
            bases = self.segments()
            os.close(self._create_segment(offset, exist_ok=True))
            for base in bases:
                if base != offset:
                    self.remove_segment(base)
            self.set_start_offset(offset)

    def close(self) -> None:
        self._forget_tail()
        self._writer.close()

    def _forget_tail(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            os.close(tail.fd)
            if tail.index_fd is not None:
                os.close(tail.index_fd)

    def _recover_tail(self) -> _Tail:
        """Under the lock: find (and if needed repair) the end of the log."""
        bases = self.segments()
        if not bases:
            self._create_segment(0)
            bases = [0]
        base = bases[-1]
        path = self.log_path(base)
        tail = self._tail
        if tail is not None and tail.base == base:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if (
                st is not None
                and st.st_ino == tail.inode
                and st.st_size == tail.end
                and _inode(self.index_path(base)) == tail.index_inode
            ):
                return tail  # nobody wrote since our last append
        self._forget_tail()
        fd = self._open_log(base, os.O_RDWR | os.O_APPEND)
        try:
            tail = self._scan_tail(fd, base, path)
        except BaseException:
            os.close(fd)
            raise
        self._tail = tail
        return tail

    def _scan_tail(self, fd: int, base: int, path: str) -> _Tail:
        index_path = self.index_path(base)
        index = Index.load(index_path)
        found = segment.scan(fd, path, base, index)
        size = os.fstat(fd).st_size
        if found.stop != CLEAN or size != found.end:
            damaged = segment.damaged_last_batch(fd, found, size, self.compacted) if found.whole_batch else None
            if damaged is not None and find_valid_batch(fd, found.end + 1, size) is None:
                return self._quarantine_last_batch(fd, path, found, damaged, size)
            if found.whole_batch:
                raise CorruptLog(
                    path, found.end, f"{found.reason}; nothing is appended after a batch that cannot be trusted"
                )
            # Raises CorruptLog if valid batches follow: never cut those off.
            classify_damage(fd, path, found.end, False, found.reason or "unexpected bytes")
            os.ftruncate(fd, found.end)
            if self.sync:
                os.fsync(fd)
        # The index keeps its valid entries up to where the scan started and
        # gains the ones the scan made after it (lost in a crash, or deleted),
        # so it stays exactly what kq writes for this segment.
        kept = found.index_kept
        if kept and index.entry(kept - 1)[1] >= found.end:  # it pointed at the torn batch just cut off
            kept -= 1
            found.index.last_indexed = index.entry(kept - 1)[1] if kept else 0
        index_fd = None
        if kept * ENTRY_SIZE != index.file_size or found.index.entries:
            index_fd = open_regular(index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.ftruncate(index_fd, kept * ENTRY_SIZE)
            write_all(index_fd, found.index.take())
        index_inode = os.fstat(index_fd).st_ino if index_fd is not None else _inode(index_path)
        return _Tail(base, fd, os.fstat(fd).st_ino, found.end, found.next_offset, found.index, index_fd, index_inode)

    def _quarantine_last_batch(
        self, fd: int, path: str, found: segment.SegmentScan, damaged: BatchHeader, size: int
    ) -> _Tail:
        """Move a damaged last batch aside and go on in a new segment after its offsets.

        The new segment's name records where the log goes on, so the damaged
        batch's offsets (which readers may have seen and committed past) are
        never given to other records, even if this process dies next.
        """
        target = segment.quarantine(fd, path, found.end, size)
        new_fd = self._create_segment(damaged.next_offset, exist_ok=True)
        fsync_dir(self.path)
        os.ftruncate(fd, found.end)
        os.fsync(fd)
        _truncate_index(self.index_path(found.base), found.end)
        os.close(fd)
        self._recovered = (
            f"{path}: the batch at byte {found.end} (offsets {damaged.base_offset}..{damaged.last_offset}) "
            f"fails its checksum: moved its {size - found.end} byte(s) to {target}; the log goes on at offset "
            f"{damaged.next_offset} in a new segment, and those offsets are not reused"
        )
        return _Tail(
            damaged.next_offset,
            new_fd,
            os.fstat(new_fd).st_ino,
            0,
            damaged.next_offset,
            IndexBuilder(),
            None,
            _inode(self.index_path(damaged.next_offset)),
        )

    def _create_segment(self, base: int, exist_ok: bool = False) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | (0 if exist_ok else os.O_EXCL)
        try:
            fd = open_regular(self.log_path(base), flags)
        except FileNotFoundError:
            raise self._gone() from None
        if self.sync:
            fsync_dir(self.path)
        return fd

    def _roll(self, tail: _Tail) -> _Tail:
        base = tail.next_offset
        fd = self._create_segment(base)
        self._forget_tail()
        self._tail = _Tail(base, fd, os.fstat(fd).st_ino, 0, base, IndexBuilder())
        return self._tail


def init_partition(path: str, sync: bool = False) -> None:
    """Create an empty partition directory with its first (empty) segment."""
    make_dirs(path)
    os.close(open_regular(os.path.join(path, log_name(0)), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    if sync:
        fsync_dir(path)


def _name_the_file(exc: BaseException, path: str) -> None:
    """Let a write error (disk full, EIO) say which file it hit: os.write's does not."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = path


def _truncate_quietly(path: str, size: int) -> None:
    """Best-effort truncation after a failed write (the error that caused it wins)."""
    try:
        fd = open_regular(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    except (OSError, KqError):
        pass


def _truncate_index(index_path: str, cut: int) -> None:
    """Drop the index entries that point at or past byte ``cut`` of their segment."""
    index = Index.load(index_path)
    keep = index.entries_before(cut)
    if keep * ENTRY_SIZE != index.file_size:
        _truncate_quietly(index_path, keep * ENTRY_SIZE)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None
