"""A partition: an ordered list of segments, one writer at a time, any number of readers.

Writers serialise on ``writer.lock`` (an flock through portalocker that the
kernel drops if the holder dies). Under the lock a writer first recovers the
tail of the last segment (truncating a torn batch left by a crash), then
appends. Readers take no lock; they never see a half-written batch because
every batch is length-prefixed and checksummed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import portalocker

from . import batch as batchfmt
from .errors import CorruptFile, KqError
from .fileio import FILE_MODE, atomic_write, fsync_dir, make_dirs, write_all
from .index import ENTRY, INTERVAL_BYTES, NO_TIMESTAMP, Index
from .segment import (
    CLEAN,
    DAMAGED,
    BatchReader,
    classify_damage,
    find_valid_batch,
    index_name,
    list_segments,
    log_name,
)

LOCK_NAME = "writer.lock"
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
    max_timestamp: int  # over the batches of this segment
    last_indexed: int  # position of the last index entry (0: the implicit first)
    index_fd: int | None = None
    # The index file this tail appends to (None: none yet). If it is replaced
    # (kq verify --repair) or deleted, the tail is stale: appending to the old
    # file would leave the index on disk without its newest entries.
    index_inode: int | None = None


class Partition:
    def __init__(self, topic: str, number: int, path: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 sync: bool = False, config: dict | None = None):
        self.topic = topic
        self.number = number
        self.path = path
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.config = config or {}  # the topic's: retention settings are read from it
        self._lock_file = None
        self._tail: _Tail | None = None

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.number})"

    # ------------------------------------------------------------------ reading

    def segments(self) -> list[int]:
        return list_segments(self.path)

    def _log_path(self, base: int) -> str:
        return os.path.join(self.path, log_name(base))

    def _index_path(self, base: int) -> str:
        return os.path.join(self.path, index_name(base))

    def start_offset(self) -> int:
        """The first offset still kept (Kafka's log start offset).

        The first segment's base, or further on if `topic trim` moved it
        inside that segment (recorded in ``start.offset``).
        """
        bases = self.segments()
        first = bases[0] if bases else 0
        return max(first, self.trimmed_to())

    def trimmed_to(self) -> int:
        try:
            with open(os.path.join(self.path, START_NAME), "rb") as f:
                return int(json.loads(f.read())["start_offset"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            raise CorruptFile(os.path.join(self.path, START_NAME), "not a start-offset file") from None

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
        path = self._log_path(base)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:  # replaced under us: look again
            return self.end_offset()
        try:
            position, next_offset, _ = _scan_start(fd, base, Index.load(self._index_path(base)))
            while True:
                reader = BatchReader(fd, path, position)
                for _, header, _, _ in reader.headers():
                    next_offset = header[3] + header[4] + 1
                if reader.stop != DAMAGED:
                    return next_offset
                # A torn tail ends the log. Valid batches after damage still
                # count: the end is theirs, and a reader will report the damage.
                position = find_valid_batch(fd, reader.stop_position + 1, os.fstat(fd).st_size)
                if position is None:
                    return next_offset
        finally:
            os.close(fd)

    def size(self) -> int:
        total = 0
        for base in self.segments():
            try:
                total += os.stat(self._log_path(base)).st_size
            except FileNotFoundError:
                pass
        return total

    def cursor(self, offset: int) -> "Cursor":
        return Cursor(self, offset)

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

    def offset_for_timestamp(self, timestamp: int) -> int:
        """Offset of the first record (in offset order) with a timestamp >= ``timestamp``.

        Returns the end offset when there is none. Costs a binary search in each
        segment's index plus a scan of at most one index interval per segment.
        """
        for base in self.segments():
            path = self._log_path(base)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                index = Index.load(self._index_path(base))
                entry = index.floor_timestamp(timestamp)
                position = 0
                if entry is not None and _entry_is_valid(fd, entry):
                    position = entry[1]
                reader = BatchReader(fd, path, position)
                for pos, header, buf, rel in reader.headers():
                    if header[7] >= timestamp:  # max_timestamp
                        b = batchfmt.decode(buf, rel, header, path)
                        for off, ts in zip(b.offsets(), b.timestamps()):
                            if ts >= timestamp:
                                return off
            finally:
                os.close(fd)
        return self.end_offset()

    # ------------------------------------------------------------------ writing

    def _lock(self):
        if self._lock_file is None:
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            self._lock_file = os.fdopen(fd, "r+")
        portalocker.lock(self._lock_file, portalocker.LockFlags.EXCLUSIVE)

    def _unlock(self):
        portalocker.unlock(self._lock_file)

    def append(
        self,
        values,
        keys=None,
        headers=None,
        timestamp: int | None = None,
        timestamps=None,
    ) -> tuple[int, int]:
        """Append one batch of records; return (first offset, last offset).

        The batch is in the page cache (visible to readers, safe from a crash of
        this process) when this returns, and on disk if the partition syncs.
        """
        if timestamp is None and timestamps is None:
            timestamp = now_ms()
        return self.append_payload(batchfmt.pack(values, keys, headers, timestamp=timestamp or 0, timestamps=timestamps))

    def append_payload(self, payload: batchfmt.Payload) -> tuple[int, int]:
        """Append records packed by ``batch.pack``; return (first offset, last offset)."""
        self._lock()
        try:
            tail = self._recover_tail()
            if tail.end >= self.segment_bytes:
                tail = self._roll(tail)
            head = batchfmt.frame(tail.next_offset, payload)
            position = tail.end
            try:
                write_all(tail.fd, head, payload.data)
                if self.sync:
                    os.fdatasync(tail.fd)
            except BaseException as exc:
                # Leave no torn batch behind for the next writer to find, and
                # forget what we knew: the file may not be what we think.
                self._forget_tail()
                _truncate_quietly(self._log_path(tail.base), position)
                _name_the_file(exc, self._log_path(tail.base))
                raise
            first = tail.next_offset
            if position - tail.last_indexed >= INTERVAL_BYTES:
                self._append_index(tail, [(first, position, tail.max_timestamp)])
            tail.end = position + len(head) + len(payload.data)
            tail.next_offset = first + payload.count
            tail.max_timestamp = max(tail.max_timestamp, payload.max_timestamp)
            return first, first + payload.count - 1
        finally:
            self._unlock()

    def append_raw(self, batches: list[RawBatch]) -> int:
        """Append batches exactly as another log stored them (replication).

        The first batch must start at this partition's end offset, so offsets
        stay identical to the source's. Returns the new end offset.
        """
        if not batches:
            return self.end_offset()
        self._lock()
        try:
            tail = self._recover_tail()
            if batches[0].base_offset != tail.next_offset:
                raise KqError(
                    f"{self}: batch at offset {batches[0].base_offset} does not follow the end "
                    f"offset {tail.next_offset}"
                )
            if tail.end >= self.segment_bytes:
                tail = self._roll(tail)
            position = tail.end
            try:
                write_all(tail.fd, *_runs(batches))
                if self.sync:
                    os.fdatasync(tail.fd)
            except BaseException as exc:
                self._forget_tail()
                _truncate_quietly(self._log_path(tail.base), position)
                _name_the_file(exc, self._log_path(tail.base))
                raise
            entries = []
            last_indexed = tail.last_indexed
            for b in batches:
                if position - last_indexed >= INTERVAL_BYTES:
                    entries.append((b.base_offset, position, tail.max_timestamp))
                    last_indexed = position
                tail.max_timestamp = max(tail.max_timestamp, b.max_timestamp)
                position += b.size
            if entries:
                self._append_index(tail, entries)
            tail.end = position
            tail.next_offset = batches[-1].next_offset
            return tail.next_offset
        finally:
            self._unlock()

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

    def last_batch(self) -> RawBatch | None:
        """The last valid batch of the log, or None if it is empty."""
        for base in reversed(self.segments()):
            path = self._log_path(base)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                position, _, _ = _scan_start(fd, base, Index.load(self._index_path(base)))
                last = None
                for pos, header, buf, rel in BatchReader(fd, path, position).headers():
                    last = (pos, header, buf, rel)
                if last is not None:
                    pos, header, buf, rel = last
                    return RawBatch(header, buf, rel, pos)
            finally:
                os.close(fd)
        return None

    def damaged_tail(self) -> tuple[str, int] | None:
        """(file, position) of bytes after the last valid batch, if any (a torn tail)."""
        bases = self.segments()
        if not bases:
            return None
        path = self._log_path(bases[-1])
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            position, _, _ = _scan_start(fd, bases[-1], Index.load(self._index_path(bases[-1])))
            reader = BatchReader(fd, path, position)
            for _ in reader.headers():
                pass
            return (path, reader.stop_position) if reader.stop == DAMAGED else None
        finally:
            os.close(fd)

    def truncate_to(self, offset: int) -> None:
        """Remove every record at or after ``offset``, which must start a batch (or be the end).

        Used to cut a diverged replica back to its common prefix with the source,
        the way a Kafka follower truncates to its leader's log.
        """
        self._lock()
        try:
            self._forget_tail()
            bases = self.segments()
            keep = [b for b in bases if b < offset]
            for base in bases:
                if base >= offset:
                    self._remove_segment(base)
            if not keep:
                os.close(self._create_segment(offset))
                return
            base = keep[-1]
            path = self._log_path(base)
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            try:
                cut = None
                for pos, header, _, _ in BatchReader(fd, path, 0).headers():
                    if header[3] >= offset:
                        cut = pos
                        break
                if cut is None:
                    end = self.end_offset()
                    if end != offset:
                        raise KqError(f"{self}: offset {offset} is not at a batch boundary (end is {end})")
                    return
                os.ftruncate(fd, cut)
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            index = Index.load(self._index_path(base))
            keep_entries = index.entries_before(cut)
            if keep_entries != len(index):
                _truncate_quietly(self._index_path(base), keep_entries * 24)
        finally:
            self._unlock()

    def _remove_segment(self, base: int) -> None:
        for path in (self._log_path(base), self._index_path(base)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self.sync:
            fsync_dir(self.path)

    def _append_index(self, tail: _Tail, entries: list[tuple[int, int, int]]) -> None:
        """Append (offset, position, max timestamp before it) entries in one write."""
        if tail.index_fd is None:
            tail.index_fd = os.open(
                self._index_path(tail.base), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE
            )
            tail.index_inode = os.fstat(tail.index_fd).st_ino
        write_all(tail.index_fd, b"".join(ENTRY.pack(*e) for e in entries))
        tail.last_indexed = entries[-1][1]

    def _forget_tail(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            os.close(tail.fd)
            if tail.index_fd is not None:
                os.close(tail.index_fd)

    def close(self) -> None:
        self._forget_tail()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _recover_tail(self) -> _Tail:
        """Under the lock: find (and if needed repair) the end of the log."""
        bases = self.segments()
        if not bases:
            self._create_segment(0)
            bases = [0]
        base = bases[-1]
        path = self._log_path(base)
        tail = self._tail
        if tail is not None and tail.base == base:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None
            if (st is not None and st.st_ino == tail.inode and st.st_size == tail.end
                    and _inode(self._index_path(base)) == tail.index_inode):
                return tail  # nobody wrote since our last append
        self._forget_tail()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        try:
            tail = self._scan_tail(fd, base, path)
        except BaseException:
            os.close(fd)
            raise
        self._tail = tail
        return tail

    def _scan_tail(self, fd: int, base: int, path: str) -> _Tail:
        index_path = self._index_path(base)
        index = Index.load(index_path)
        start = _last_valid_entry(fd, index)
        position, next_offset, max_ts = 0, base, NO_TIMESTAMP
        if start >= 0:
            next_offset, position, max_ts = index.entry(start)
        # The entries the index lacks after the one the scan starts from (it
        # was deleted, or lost its end in a crash) are the ones append would
        # have written: add them, so the index stays what kq writes for this
        # segment instead of growing a hole.
        missing = []
        last_indexed = position
        reader = BatchReader(fd, path, position)
        for pos, header, _, _ in reader.headers():
            if pos - last_indexed >= INTERVAL_BYTES:
                missing.append((header[3], pos, max_ts))
                last_indexed = pos
            next_offset = header[3] + header[4] + 1
            max_ts = max(max_ts, header[7])
        end = reader.stop_position
        size = os.fstat(fd).st_size
        if reader.stop != CLEAN or size != end:
            # Raises CorruptLog if valid batches follow: never cut those off.
            classify_damage(fd, path, end, False, reader.reason or "unexpected bytes")
            os.ftruncate(fd, end)
            if self.sync:
                os.fsync(fd)
        # Keep the entries up to the valid one the scan started from, whole,
        # unless that one pointed at the torn batch just cut off.
        kept = start + 1
        if kept and position >= end:
            kept -= 1
            last_indexed = index.entry(kept - 1)[1] if kept else 0
        index_fd = None
        if kept != len(index) or len(index.blob) % ENTRY.size or missing:
            index_fd = os.open(index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
            os.ftruncate(index_fd, kept * ENTRY.size)
            write_all(index_fd, b"".join(ENTRY.pack(*e) for e in missing))
        index_inode = os.fstat(index_fd).st_ino if index_fd is not None else _inode(index_path)
        return _Tail(base, fd, os.fstat(fd).st_ino, end, next_offset, max_ts, last_indexed, index_fd, index_inode)

    def _create_segment(self, base: int) -> int:
        fd = os.open(self._log_path(base), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        if self.sync:
            fsync_dir(self.path)
        return fd

    def _roll(self, tail: _Tail) -> _Tail:
        base = tail.next_offset
        fd = self._create_segment(base)
        self._forget_tail()
        self._tail = _Tail(base, fd, os.fstat(fd).st_ino, 0, base, NO_TIMESTAMP, 0)
        if self.config.get("retention_ms") is not None or self.config.get("retention_bytes") is not None:
            # Retention is cheap to apply as a segment closes; skipped if
            # `kq maintain` is busy with this partition.
            from .maintain import apply_retention

            apply_retention(self, blocking=False)
        return self._tail


class RawBatch:
    """A batch as stored: a view of its bytes plus the header fields replication needs."""

    __slots__ = ("position", "base_offset", "next_offset", "max_timestamp", "crc", "buf", "start", "size")

    def __init__(self, header: tuple, buf, start: int, position: int = 0):
        self.position = position
        self.crc = header[1]
        self.base_offset = header[3]
        self.next_offset = header[3] + header[4] + 1
        self.max_timestamp = header[7]
        self.buf = buf  # batches read together share one buffer (see _runs)
        self.start = start
        self.size = batchfmt.batch_size(header)

    @property
    def data(self) -> memoryview:
        return memoryview(self.buf)[self.start : self.start + self.size]

    def checksum_ok(self) -> bool:
        return batchfmt.checksum_matches(self.buf, self.start, self.size, self.crc)

    @property
    def identity(self) -> tuple[int, int, int]:
        """What two copies of one batch share: base offset, size and checksum."""
        return self.base_offset, self.size, self.crc


def _raw_batch(buf, rel: int, header: tuple, path: str) -> RawBatch:
    return RawBatch(header, buf, rel)


def _runs(batches: list[RawBatch]) -> list[memoryview]:
    """The batches' bytes as few views as possible: adjacent bytes of one buffer join."""
    runs: list[list] = []
    for b in batches:
        if runs and runs[-1][0] is b.buf and runs[-1][2] == b.start:
            runs[-1][2] = b.start + b.size
        else:
            runs.append([b.buf, b.start, b.start + b.size])
    return [memoryview(buf)[lo:hi] for buf, lo, hi in runs]


def init_partition(path: str, sync: bool = False) -> None:
    """Create an empty partition directory with its first (empty) segment."""
    make_dirs(path)
    os.close(os.open(os.path.join(path, log_name(0)), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    if sync:
        fsync_dir(path)


def _name_the_file(exc: BaseException, path: str) -> None:
    """Let a write error (disk full, EIO) say which file it hit: os.write's does not."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = path


def _truncate_quietly(path: str, size: int) -> None:
    """Best-effort truncation after a failed write (the error that caused it wins)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
    except OSError:
        pass


def _entry_is_valid(fd: int, entry: tuple[int, int, int]) -> bool:
    """Does an index entry point at the start of a batch with its base offset?"""
    # A garbled position: pread fails with EINVAL (rather than reading nothing)
    # below 0 or where position + length passes the largest file offset.
    if not 0 <= entry[1] <= 2**63 - 1 - batchfmt.HEADER_SIZE:
        return False
    head = os.pread(fd, batchfmt.HEADER_SIZE, entry[1])
    return (
        len(head) == batchfmt.HEADER_SIZE
        and head[:4] == batchfmt.MAGIC
        and int.from_bytes(head[12:20], "big", signed=True) == entry[0]
    )


def _last_valid_entry(fd: int, index: Index) -> int:
    """Number of the last index entry that points at its batch, or -1."""
    i = len(index) - 1
    while i >= 0 and not _entry_is_valid(fd, index.entry(i)):
        i -= 1
    return i


def _scan_start(fd: int, base: int, index: Index) -> tuple[int, int, int]:
    """Where to start scanning for the end of a segment: the last valid index entry.

    Returns (position, offset at that position, max timestamp before it).
    """
    i = _last_valid_entry(fd, index)
    if i < 0:
        return 0, base, NO_TIMESTAMP
    offset, position, max_ts = index.entry(i)
    return position, offset, max_ts


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class Cursor:
    """Reads a partition forward from an offset, across segments, without a lock.

    ``poll()`` returns the batches available now (possibly none) and never
    returns a batch twice; ``offset`` is the next offset to deliver.
    """

    def __init__(self, partition: Partition, offset: int, buffers: int = 1):
        self.partition = partition
        self.offset = offset
        self._fd: int | None = None
        self._base = -1
        self._path = ""
        self._position = 0
        # Polls read into these in turn: ``poll_raw`` batches stay valid
        # until ``buffers`` more polls (two let a thread read one poll ahead).
        # Grown by the reader to what a read needs (a small log, a small buffer).
        self._buffers = [bytearray() for _ in range(buffers)]
        self._seek(offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self, base: int) -> bool:
        """Open the first segment at or after ``base`` (retention may have just deleted it)."""
        self.close()
        for candidate in [b for b in self.partition.segments() if b >= base]:
            path = self.partition._log_path(candidate)
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            self._base, self._path, self._position = candidate, path, 0
            return True
        return False

    def _seek(self, offset: int) -> None:
        bases = self.partition.segments()
        if not bases:
            return
        base = bases[0]
        for b in bases:
            if b <= offset:
                base = b
        if not self._open(base):
            return
        entry = Index.load(self.partition._index_path(self._base)).floor_offset(offset)
        if entry is not None and _entry_is_valid(self._fd, entry):
            self._position = entry[1]

    def poll(self, max_bytes: int = 2 * 1024 * 1024) -> list:
        """Decoded batches that end after ``offset``, up to about ``max_bytes``.

        Small rounds are faster than large ones: the values of a round are
        freed before the next, so their memory is reused instead of faulted in.
        """
        return self._poll(max_bytes, batchfmt.decode)

    def poll_raw(self, max_bytes: int = 8 * 1024 * 1024, checksums: bool = True) -> list["RawBatch"]:
        """Like ``poll`` but the batches' bytes as stored, undecoded (for replication).

        The batches are views of the cursor's read buffers: valid until as
        many more polls as the cursor has buffers. With ``checksums=False``
        only their framing is checked: call ``checksum_ok`` before trusting one.
        """
        return self._poll(max_bytes, _raw_batch, checksums)

    def _poll(self, max_bytes: int, make, checksums: bool = True) -> list:
        if self._fd is None:
            self._seek(self.offset)
            if self._fd is None:
                return []
        out = []
        while True:
            reader = BatchReader(self._fd, self._path, self._position, limit=max_bytes, buffer=self._buffers[0],
                                 checksums=checksums)
            for pos, header, buf, rel in reader.headers():
                next_offset = header[3] + header[4] + 1
                if next_offset > self.offset:
                    b = make(buf, rel, header, self._path)
                    b.position = pos
                    out.append(b)
                    self.offset = next_offset
            self._buffers[0] = reader.buffer
            self._position = reader.stop_position
            if out:
                self._buffers.append(self._buffers.pop(0))
                return out
            if reader.stop not in (CLEAN, DAMAGED):
                continue  # the limit was reached skipping batches before ``offset``
            # List later segments before looking again: a writer finishes a
            # batch before it rolls, so if a later segment exists, any batch
            # that was still being written here is complete now.
            later = [b for b in self.partition.segments() if b > self._base]
            again = BatchReader(self._fd, self._path, self._position, limit=1)
            if any(True for _ in again.headers()):
                continue
            if again.stop == DAMAGED:
                classify_damage(self._fd, self._path, self._position, bool(later), again.reason)
                return out  # a torn tail, or a batch still being written: wait here
            if not later or not self._open(later[0]):
                return out
