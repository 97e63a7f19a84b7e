"""A partition: an ordered list of segments, one writer at a time, any number of readers.

This module: the partition's files and the reading (end offset, lookup by
timestamp, the last batch). Writers serialise on ``writer.lock``; appending,
rolling a segment and recovering a torn or damaged tail are its writer's
(kq.engine.log_writer, as Kafka keeps LocalLog's writes apart from its
segments). Readers take no lock (kq.engine.cursor); they never see a
half-written batch because every batch is length-prefixed and checksummed.
"""

from __future__ import annotations

import json
import os
import time

from ..errors import CorruptLog, TopicDeleted
from . import batch as batchfmt
from . import segment
from .batch import MAX_OFFSET
from .compression import CODEC_IDS, GZIP, decompressed_size
from .cursor import Cursor, RawBatch
from .fileio import (
    FileLock,
    atomic_write,
    fsync_dir,
    integer_field,
    locked,
    make_dirs,
    open_regular,
    read_metadata,
)
from .index import Index, entry_is_valid
from .log_writer import LogWriter
from .segment import DAMAGED, BatchReader, classify_damage, find_valid_batch, index_name, list_segments, log_name
from .txn_log import AbortedTxn, aborted_between, load_txn_index, read_open, txn_index_name

MAINTENANCE_LOCK = "maintain.lock"
START_NAME = "start.offset"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# Longer than any file-time tick (coarse kernel clocks tick every 1-10 ms).
KNOWN_END_QUIET_NS = 50_000_000


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
        self._log_writer = LogWriter(self)  # append, roll, recovery (kq.engine.log_writer)
        # The end offset last found, and the last segment it was found in as it was then (base, inode,
        # size, mtime): while it is the same, so is the end, and the last batch is not scanned (and
        # checksummed) again. A segment grows, or is rewritten as a new file, or is cut in place
        # (``truncate_to``), which changes its mtime unless the cut and a refill to the same size
        # fall within one tick of a coarse clock: an end is only remembered once the segment has
        # not changed for KNOWN_END_QUIET_NS, so that a change after it has a later mtime.
        self._known_end: tuple[tuple[int, int, int, int], int] | None = None

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.number})"

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup") == "compact"

    @property
    def codec(self) -> int:
        """The codec new batches are stored compressed with (the topic's ``compression``; 0: none).

        ``producer`` (kq serve keeps a Kafka producer's codec) is none for kq's own writers.
        """
        return CODEC_IDS.get(self.config.get("compression", "none"), 0)

    def allow_compression(self) -> None:
        """Raise the data directory to the format compressed batches need, before writing one."""
        self._log_writer.allow_compression()

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

    def txn_index_path(self, base: int) -> str:
        return os.path.join(self.path, txn_index_name(base))

    def remove_segment(self, base: int) -> None:
        """Delete a segment and its indexes (the indexes first: an index never outlives its log)."""
        for path in (self.index_path(base), self.txn_index_path(base), self.log_path(base)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self.sync:
            fsync_dir(self.path)

    def writer_lock(self) -> FileLock:
        """The writer lock, for ``with`` (reentrant): appends, recovery and truncation hold it."""
        return self._log_writer.lock

    def recover(self) -> str | None:
        """Bring the log's tail to where an append can follow it, as the next writer would.

        Truncates a torn tail; quarantines a damaged last batch. Returns what
        was done that a user must hear of (a torn tail's truncation is routine
        and not reported), or None.
        """
        return self._log_writer.recover()

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

    def start_offset(self, bases: list[int] | None = None) -> int:
        """The first offset still kept (Kafka's log start offset).

        The first segment's base, or further on if `topic trim` moved it
        inside that segment (recorded in ``start.offset``). ``bases``: the
        segments as just listed, by a caller that asks for more than this
        (``extent``).
        """
        bases = self.segments() if bases is None else bases
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

    def end_offset(self, bases: list[int] | None = None) -> int:
        """The offset the next appended record will get (Kafka's log end offset)."""
        bases = self.segments() if bases is None else bases
        if not bases:
            return 0
        base = bases[-1]
        try:
            fd = self._open_log(base)
        except FileNotFoundError:  # replaced or removed under us: look again
            return self.end_offset()
        try:
            st = os.fstat(fd)
            size = st.st_size
            seen = (base, st.st_ino, size, st.st_mtime_ns)
            known = self._known_end
            if known is not None and known[0] == seen:
                return known[1]
            found = segment.scan(fd, self.log_path(base), base, Index.load(self.index_path(base)))
            if (
                found.stop == segment.CLEAN
                and found.end == size
                and time.time_ns() - st.st_mtime_ns > KNOWN_END_QUIET_NS
            ):
                self._known_end = (seen, found.next_offset)
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

    def last_stable_offset(self) -> int:
        """Kafka's last stable offset: the first offset of a transaction still open here, else the end offset.

        read_committed readers read below it only; everything below it is
        decided (committed, aborted, or not transactional).
        """
        end = self.end_offset()  # before txn.open: a transaction that joins later starts at or after this
        open_now = read_open(self.path)
        return min([end, *(t.first_offset for t in open_now.values())])

    def open_transactions(self) -> dict:
        """The transactions open on this partition: producer id -> OpenTxn (epoch, transactional id, first offset)."""
        return read_open(self.path)

    def aborted_transactions(self, start: int, stop: int | None = None) -> list[AbortedTxn]:
        """The aborted transactions that may hold records in [start, stop), from the segments' ``.txnindex``
        files (producer id, first offset, abort marker's offset), oldest marker first."""
        bases = self.segments()
        out: list[AbortedTxn] = []
        for i, base in enumerate(bases):
            # An abort's marker is after all its records: segments ending at or before ``start`` hold none we need.
            if i + 1 < len(bases) and bases[i + 1] <= start:
                continue
            out += aborted_between(load_txn_index(self.txn_index_path(base)), start, stop)
        return out

    def begin_transaction(self, producer_id: int, epoch: int, transactional_id: str) -> int:
        """See ``LogWriter.begin_transaction``: join an open transaction; returns its first offset here."""
        return self._log_writer.begin_transaction(producer_id, epoch, transactional_id)

    def end_transaction(self, producer_id: int, epoch: int, commit: bool) -> int | None:
        """See ``LogWriter.end_transaction``: the commit or abort marker (idempotent); its offset, or None."""
        return self._log_writer.end_transaction(producer_id, epoch, commit, now_ms())

    def extent(self) -> tuple[int, int, int]:
        """start_offset, end_offset and size, from one listing of the segments (kq metrics asks thousands)."""
        bases = self.segments()
        return self.start_offset(bases), self.end_offset(bases), self.size(bases)

    def size(self, bases: list[int] | None = None) -> int:
        total = 0
        for base in self.segments() if bases is None else bases:
            try:
                total += os.stat(self.log_path(base)).st_size
            except FileNotFoundError:
                pass
        return total

    def uncompressed_size(self) -> int:
        """What ``size()`` would be with every batch's payload stored uncompressed.

        Reads each batch's header and the few bytes where its codec records the
        inflated size (a gzip batch whole), never the whole log; stops at the
        first bytes that are no batch (damage is kq verify's to report).
        """
        total = 0
        for base in self.segments():
            try:
                fd = self._open_log(base)
            except FileNotFoundError:
                continue
            try:
                end = os.fstat(fd).st_size
                pos = 0
                while pos + batchfmt.HEADER_SIZE <= end:
                    head = os.pread(fd, batchfmt.HEADER_SIZE + 32, pos)
                    if head[:4] != batchfmt.MAGIC:
                        break
                    header = batchfmt.header_at(head, 0)
                    if not batchfmt.MIN_LENGTH <= header.length <= batchfmt.MAX_BATCH_BYTES or pos + header.size > end:
                        break
                    kind = batchfmt.stored_codec(header.attributes)
                    if not kind:
                        total += header.size
                    else:
                        total += batchfmt.HEADER_SIZE + self._inflated_size(fd, pos, header, head)
                    pos += header.size
            finally:
                os.close(fd)
        return total

    @staticmethod
    def _inflated_size(fd: int, pos: int, header: batchfmt.BatchHeader, head: bytes) -> int:
        kind = batchfmt.stored_codec(header.attributes)
        size = None if kind == GZIP else decompressed_size(kind, head[batchfmt.HEADER_SIZE :])
        if size is None:  # gzip's size is at its end; a frame that does not say: inflate it
            data = os.pread(fd, header.size - batchfmt.HEADER_SIZE, pos + batchfmt.HEADER_SIZE)
            size = decompressed_size(kind, data) if kind == GZIP else None
            if size is None:
                try:
                    size = len(batchfmt.inflate(data, header.attributes))
                except CorruptLog:
                    size = len(data)
        return min(size, batchfmt.MAX_PAYLOAD_BYTES)  # (a damaged frame may claim anything)

    def cursor(self, offset: int, buffers: int = 1, isolation: str = "all") -> Cursor:
        """A reader from ``offset``; ``isolation``: "all" (every batch as stored, control batches too),
        "read_uncommitted" (no control batches) or "read_committed" (see kq.engine.cursor)."""
        return Cursor(self, offset, buffers, isolation)

    def read(self, offset: int = 0, stop: int | None = None, isolation: str = "read_uncommitted"):
        """Yield the records from ``offset`` up to (not including) ``stop`` or the end (never markers)."""
        stop = self.end_offset() if stop is None else stop
        cur = self.cursor(offset, isolation=isolation)
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
            batchfmt.pack(
                values,
                keys,
                headers,
                timestamp=timestamp or 0,
                timestamps=timestamps,
                attributes=attributes,
                compression=self.codec,
            )
        )

    def append_payload(self, payload: batchfmt.Payload) -> tuple[int, int]:
        """Append records packed by ``batch.pack``; return (first offset, last offset)."""
        return self._log_writer.append_payload(payload)

    def append_raw(self, batches: list[RawBatch]) -> int:
        """Append batches exactly as another log stored them (replication).

        The first batch must start at this partition's end offset, so offsets
        stay identical to the source's. Returns the new end offset.
        """
        return self._log_writer.append_raw(batches)

    def truncate_to(self, offset: int) -> None:
        """Remove every record at or after ``offset``, which must start a batch (or be the end).

        Used to cut a diverged replica back to its common prefix with the source,
        the way a Kafka follower truncates to its leader's log.
        """
        self._known_end = None
        self._log_writer.truncate_to(offset)

    def restart_at(self, offset: int) -> None:
        """Delete every record and continue the log at ``offset`` (a replica the source's retention overtook).

        Like a Kafka follower whose fetch offset fell below its leader's log
        start: the records between the old end and ``offset`` no longer exist
        anywhere, so the log starts over there.
        """
        self._known_end = None
        self._log_writer.restart_at(offset)

    def close(self) -> None:
        self._log_writer.close()


def init_partition(path: str, sync: bool = False) -> None:
    """Create an empty partition directory with its first (empty) segment."""
    make_dirs(path)
    os.close(open_regular(os.path.join(path, log_name(0)), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    if sync:
        fsync_dir(path)
