"""A partition's writer: append, roll, and recovery of the log's tail, under ``writer.lock``.

Writers serialise on ``writer.lock`` (an flock the kernel drops if the
holder dies). Under the lock a writer first recovers the tail of the last
segment, then appends. Recovery truncates a torn tail (an append a crash cut
short, never acknowledged); a whole batch at the end that fails its checksum
is damage instead: its bytes are quarantined and its offsets never reused
(docs/GUARANTEES.md). Truncation and restart (a replica cut back to its
source) take the maintenance lock before the writer lock, as kq verify does.

Each partition (kq.engine.partition, which owns the files and the reading)
has one LogWriter, which keeps what it knows of the tail between appends.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CorruptLog, KqError, NotAtBatchBoundary, ProducerFenced, warn
from . import batch as batchfmt
from . import segment
from .batch import MAX_OFFSET, BatchHeader
from .cursor import RawBatch, runs
from .fileio import (
    FileLock,
    fsync_dir,
    open_regular,
    write_all,
)
from .index import ENTRY_SIZE, Index, IndexBuilder
from .segment import CLEAN, BatchReader, classify_damage, find_valid_batch
from .txn_log import AbortedTxn, OpenTxn, append_txn_index, read_open, trim_txn_index, write_open

WRITER_LOCK = "writer.lock"

if TYPE_CHECKING:
    from .partition import Partition


@dataclass
class Tail:
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


class LogWriter:
    """The writer side of one partition: what a writer holding ``writer.lock`` does."""

    def __init__(self, partition: Partition):
        self.partition = partition
        # Read-only copies can be checked (kq verify) without a writable lock
        # file; a writer there fails on the segment it cannot open instead.
        self.lock = FileLock(os.path.join(partition.path, WRITER_LOCK), read_only_ok=True)
        self._recovered: str | None = None  # what the last recovery did that a user must hear
        self._tail: Tail | None = None
        self._null_headers_allowed = False  # the data directory's format takes null header values
        self._compression_allowed = False  # the data directory's format takes compressed payloads
        self._transactions_allowed = False  # the data directory's format takes transactional batches

    def recover(self) -> str | None:
        """Bring the log's tail to where an append can follow it, as the next writer would.

        Truncates a torn tail; quarantines a damaged last batch. Returns what
        was done that a user must hear of (a torn tail's truncation is routine
        and not reported), or None.
        """
        with self.writing():
            self._forget_tail()
            self._recover_tail()
            done, self._recovered = self._recovered, None
            return done

    @contextmanager
    def writing(self):
        """Hold the writer lock; a partition directory deleted under us is the topic's deletion."""
        try:
            self.lock.acquire()
        except FileNotFoundError:
            raise self.partition._gone() from None
        try:
            yield
        finally:
            self.lock.release()

    def append_payload(self, payload: batchfmt.Payload) -> tuple[int, int]:
        """Append records packed by ``batch.pack``; return (first offset, last offset).

        A transactional payload (``pack(producer=...)``) is refused with
        ProducerFenced unless its producer joined the partition's transaction
        at that epoch (``begin_transaction``) and it is still open.
        """
        if payload.null_header_values and not self._null_headers_allowed:
            self._allow_null_headers()
        if payload.codec and not self._compression_allowed:
            self.allow_compression()
        rolled = False
        with self.writing():
            tail = self._recover_tail()
            self._report_recovery()
            if payload.producer_id != batchfmt.NO_PRODUCER:
                self._check_open(payload.producer_id, payload.producer_epoch)
            first, rolled = self._append_locked(tail, payload)
        if rolled and self.partition.on_roll is not None:
            self.partition.on_roll(self.partition)
        return first, first + payload.last_offset_delta

    def _append_locked(self, tail: Tail, payload: batchfmt.Payload) -> tuple[int, bool]:
        """Under the lock: append one batch at the end (rolling first if the segment is full)."""
        rolled = False
        self._check_room(tail.next_offset, tail.next_offset + payload.last_offset_delta + 1)
        if tail.end >= self.partition.segment_bytes:
            tail, rolled = self._roll(tail), True
        first = tail.next_offset
        head = batchfmt.frame(first, payload)
        self._write(tail, head, payload.data)
        tail.index.add(first, tail.end, payload.max_timestamp)
        self._write_index(tail)
        tail.end += len(head) + len(payload.data)
        tail.next_offset = first + payload.last_offset_delta + 1
        return first, rolled

    def _check_open(self, producer_id: int, epoch: int) -> None:
        entry = read_open(self.partition.path).get(producer_id)
        if entry is None or entry.epoch != epoch:
            raise ProducerFenced(
                f"{self.partition.topic}/{self.partition.number}: producer {producer_id} (epoch {epoch}) has no open "
                "transaction on this partition: it was ended, aborted (timed out, or its owner was found gone), "
                "or a newer producer took over its transactional id"
            )

    def begin_transaction(self, producer_id: int, epoch: int, transactional_id: str) -> int:
        """Make producer ``producer_id`` (at ``epoch``) part of an open transaction on this partition.

        Returns the transaction's first offset here (the end offset now, or
        where it joined before at the same epoch). Until ``end_transaction``,
        read_committed readers stop there (the last stable offset). Raises
        ProducerFenced if a higher epoch of the producer holds the partition.
        The data directory is raised to format 4 first.
        """
        if not self._transactions_allowed:
            from .datadir import TRANSACTION_FORMAT, require_format

            require_format(self._data_dir(), TRANSACTION_FORMAT)
            self._transactions_allowed = True
        with self.writing():
            tail = self._recover_tail()
            self._report_recovery()
            entries = read_open(self.partition.path)
            entry = entries.get(producer_id)
            if entry is not None:
                if entry.epoch == epoch:
                    return entry.first_offset
                raise ProducerFenced(
                    f"{self.partition.topic}/{self.partition.number}: producer {producer_id} still has a transaction "
                    f"open here at epoch {entry.epoch}; end it first (epoch {epoch} asked)"
                )
            entries[producer_id] = OpenTxn(epoch, transactional_id, tail.next_offset)
            write_open(self.partition.path, entries, self.partition.sync)
            return tail.next_offset

    def end_transaction(self, producer_id: int, epoch: int, commit: bool, timestamp: int) -> int | None:
        """Write the commit or abort marker of producer ``producer_id``'s open transaction here.

        Idempotent: a producer with no open transaction on the partition (it
        was ended already, or never wrote here) gets no marker, and None is
        returned; otherwise the marker's offset. ``epoch`` must be at least the
        one the transaction was opened with (a newer epoch aborts a zombie's).
        An abort is recorded in the segment's ``.txnindex`` before its marker.
        """
        rolled = False
        with self.writing():
            tail = self._recover_tail()
            self._report_recovery()
            entries = read_open(self.partition.path)
            entry = entries.get(producer_id)
            if entry is None:
                return None
            if epoch < entry.epoch:
                raise ProducerFenced(
                    f"{self.partition.topic}/{self.partition.number}: producer {producer_id} epoch {epoch} is older "
                    f"than the transaction open here (epoch {entry.epoch})"
                )
            payload = batchfmt.control_payload(producer_id, epoch, commit, entry.first_offset, timestamp)
            self._check_room(tail.next_offset, tail.next_offset + 1)
            if tail.end >= self.partition.segment_bytes:
                tail, rolled = self._roll(tail), True
            if not commit:
                append_txn_index(
                    self.partition.txn_index_path(tail.base),
                    AbortedTxn(producer_id, entry.first_offset, tail.next_offset),
                    self.partition.sync,
                )
            marker, _ = self._append_locked(tail, payload)
            del entries[producer_id]
            write_open(self.partition.path, entries, self.partition.sync)
        if rolled and self.partition.on_roll is not None:
            self.partition.on_roll(self.partition)
        return marker

    def _allow_null_headers(self) -> None:
        # (imported here: kq.engine.datadir imports this module)
        from .datadir import NULL_HEADER_FORMAT, require_format

        require_format(self._data_dir(), NULL_HEADER_FORMAT)
        self._null_headers_allowed = True

    def allow_compression(self) -> None:
        from .datadir import COMPRESSED_FORMAT, require_format

        require_format(self._data_dir(), COMPRESSED_FORMAT)
        self._compression_allowed = True

    def _data_dir(self) -> str:
        return os.path.dirname(os.path.dirname(os.path.dirname(self.partition.path)))  # DATA/topics/NAME/P

    def append_raw(self, batches: list[RawBatch]) -> int:
        """Append batches exactly as another log stored them (replication).

        The first batch must start at this partition's end offset, so offsets
        stay identical to the source's. Returns the new end offset.
        """
        if not batches:
            return self.partition.end_offset()
        rolled = False
        with self.writing():
            tail = self._recover_tail()
            self._report_recovery()
            if batches[0].base_offset != tail.next_offset:
                raise KqError(
                    f"{self.partition}: batch at offset {batches[0].base_offset} does not follow the end "
                    f"offset {tail.next_offset}"
                )
            self._check_room(tail.next_offset, batches[-1].next_offset)
            if tail.end >= self.partition.segment_bytes:
                tail, rolled = self._roll(tail), True
            if any(b.attributes & batchfmt.TRANSACTIONAL for b in batches):
                self._append_raw_transactional(tail, batches)
            else:
                self._append_raw_locked(tail, batches)
        if rolled and self.partition.on_roll is not None:
            self.partition.on_roll(self.partition)
        return tail.next_offset

    def _append_raw_locked(self, tail: Tail, batches: list[RawBatch]) -> None:
        self._write(tail, *runs(batches))
        for b in batches:
            tail.index.add(b.base_offset, tail.end, b.max_timestamp)
            tail.end += b.size
        self._write_index(tail)
        tail.next_offset = batches[-1].next_offset

    def _append_raw_transactional(self, tail: Tail, batches: list[RawBatch]) -> None:
        """Copied batches with transactions among them: this partition's ``txn.open`` and
        ``.txnindex`` follow, so a replica's read_committed readers see what the source's do.

        In runs that end at a marker: the producers of a run's data join first
        (their first batch is their first offset), an abort's index entry goes
        in before its marker, and the marker's producer leaves after it.
        """
        if not self._transactions_allowed:
            from .datadir import TRANSACTION_FORMAT, require_format

            require_format(self._data_dir(), TRANSACTION_FORMAT)
            self._transactions_allowed = True
        path = self.partition.path
        start = 0
        for i, b in enumerate(batches):
            if not (b.attributes & batchfmt.CONTROL or i == len(batches) - 1):
                continue
            run = batches[start : i + 1]
            start = i + 1
            entries = read_open(path)
            joined = False
            for r in run:
                if r.attributes & batchfmt.TRANSACTIONAL and not r.attributes & batchfmt.CONTROL:
                    decoded = _decode_raw(r)
                    if decoded.producer_id not in entries:
                        entries[decoded.producer_id] = OpenTxn(decoded.producer_epoch, "", r.base_offset)
                        joined = True
            if joined:
                write_open(path, entries, self.partition.sync)
            marker = batchfmt.marker_of(_decode_raw(b)) if b.attributes & batchfmt.CONTROL else None
            if marker is not None and not marker.commit:
                append_txn_index(
                    self.partition.txn_index_path(tail.base),
                    AbortedTxn(marker.producer_id, marker.first_offset, b.base_offset),
                    self.partition.sync,
                )
            self._append_raw_locked(tail, run)
            if marker is not None and entries.pop(marker.producer_id, None) is not None:
                write_open(path, entries, self.partition.sync)

    def _check_room(self, end: int, new_end: int) -> None:
        """Refuse an append that would take the end offset past MAX_OFFSET (it would not pack)."""
        if new_end > MAX_OFFSET:
            raise KqError(
                f"partition {self.partition.topic}/{self.partition.number} is full: {new_end - end} more offset(s) after its end "
                f"offset {end} would pass the largest end offset {MAX_OFFSET}"
            )

    def _report_recovery(self) -> None:
        if self._recovered is not None:
            done, self._recovered = self._recovered, None
            warn(done)

    def _write(self, tail: Tail, *chunks) -> None:
        try:
            write_all(tail.fd, *chunks)
            if self.partition.sync:
                os.fdatasync(tail.fd)
        except BaseException as exc:
            # Leave no torn batch behind for the next writer to find, and
            # forget what we knew: the file may not be what we think.
            self._forget_tail()
            _truncate_quietly(self.partition.log_path(tail.base), tail.end)
            _name_the_file(exc, self.partition.log_path(tail.base))
            raise

    def _write_index(self, tail: Tail) -> None:
        """Append the entries the builder made since the last write, in one write."""
        if not tail.index.entries:
            return
        if tail.index_fd is None:
            tail.index_fd = open_regular(self.partition.index_path(tail.base), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            tail.index_inode = os.fstat(tail.index_fd).st_ino
        write_all(tail.index_fd, tail.index.take())

    def truncate_to(self, offset: int) -> None:
        """Remove every record at or after ``offset``, which must start a batch (or be the end).

        Used to cut a diverged replica back to its common prefix with the source,
        the way a Kafka follower truncates to its leader's log.
        """
        # Segments go: maintenance (retention, verify) must not look meanwhile.
        # (Always the maintenance lock before the writer lock, as kq verify takes them.)
        with self.partition.maintenance_lock(), self.writing():
            self._forget_tail()
            bases = self.partition.segments()
            keep = [b for b in bases if b < offset]
            for base in bases:
                if base >= offset:
                    self.partition.remove_segment(base)
            if not keep:
                os.close(self._create_segment(offset))
                return
            base = keep[-1]
            path = self.partition.log_path(base)
            fd = self.partition._open_log(base, os.O_RDWR)
            try:
                cut = None
                for pos, header, _, _ in BatchReader(fd, path, 0).headers():
                    if header.base_offset >= offset:
                        cut = pos
                        break
                if cut is None:
                    end = self.partition.end_offset()
                    if end != offset:
                        raise NotAtBatchBoundary(self.partition.topic, self.partition.number, offset, end)
                    return
                os.ftruncate(fd, cut)
                if self.partition.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            _truncate_index(self.partition.index_path(base), cut)
            trim_txn_index(self.partition.txn_index_path(base), offset)

    def restart_at(self, offset: int) -> None:
        """Delete every record and continue the log at ``offset`` (a replica the source's retention overtook).

        Like a Kafka follower whose fetch offset fell below its leader's log
        start: the records between the old end and ``offset`` no longer exist
        anywhere, so the log starts over there.
        """
        with self.partition.maintenance_lock(), self.writing():
            self._forget_tail()
            bases = self.partition.segments()
            os.close(self._create_segment(offset, exist_ok=True))
            for base in bases:
                if base != offset:
                    self.partition.remove_segment(base)
            self.partition.set_start_offset(offset)

    def close(self) -> None:
        self._forget_tail()
        self.lock.close()

    def _forget_tail(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            os.close(tail.fd)
            if tail.index_fd is not None:
                os.close(tail.index_fd)

    def _recover_tail(self) -> Tail:
        """Under the lock: find (and if needed repair) the end of the log."""
        bases = self.partition.segments()
        if not bases:
            self._create_segment(0)
            bases = [0]
        base = bases[-1]
        path = self.partition.log_path(base)
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
                and _inode(self.partition.index_path(base)) == tail.index_inode
            ):
                return tail  # nobody wrote since our last append
        self._forget_tail()
        fd = self.partition._open_log(base, os.O_RDWR | os.O_APPEND)
        try:
            tail, recovered = scan_tail(self.partition, fd, base, path)
        except BaseException:
            os.close(fd)
            raise
        if recovered is not None:
            self._recovered = recovered
        self._tail = tail
        return tail

    def _create_segment(self, base: int, exist_ok: bool = False) -> int:
        return create_segment(self.partition, base, exist_ok)

    def _roll(self, tail: Tail) -> Tail:
        base = tail.next_offset
        fd = self._create_segment(base)
        self._forget_tail()
        self._tail = Tail(base, fd, os.fstat(fd).st_ino, 0, base, IndexBuilder())
        return self._tail


def _decode_raw(raw: RawBatch) -> batchfmt.RecordBatch:
    status, header = batchfmt.check(raw.buf, raw.start, raw.start + raw.size, checksum=False)
    if status != batchfmt.OK or not isinstance(header, BatchHeader):
        raise KqError(f"batch at offset {raw.base_offset} to copy does not parse")
    return batchfmt.decode(raw.buf, raw.start, header)


def scan_tail(partition: Partition, fd: int, base: int, path: str) -> tuple[Tail, str | None]:
    """The end of the log in its last segment ``base`` (open as ``fd``), found under the writer lock and
    repaired if need be: the tail, and what was done that a user must hear of (or None)."""
    index_path = partition.index_path(base)
    index = Index.load(index_path)
    found = segment.scan(fd, path, base, index)
    size = os.fstat(fd).st_size
    if found.stop != CLEAN or size != found.end:
        damaged = segment.damaged_last_batch(fd, found, size, partition.compacted) if found.whole_batch else None
        if damaged is not None and find_valid_batch(fd, found.end + 1, size) is None:
            return quarantine_last_batch(partition, fd, path, found, damaged, size)
        if found.whole_batch:
            raise CorruptLog(
                path, found.end, f"{found.reason}; nothing is appended after a batch that cannot be trusted"
            )
        # Raises CorruptLog if valid batches follow: never cut those off.
        classify_damage(fd, path, found.end, False, found.reason or "unexpected bytes")
        os.ftruncate(fd, found.end)
        if partition.sync:
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
    # An abort's index entry goes in before its marker: one whose marker a crash kept out goes.
    trim_txn_index(partition.txn_index_path(base), found.next_offset)
    return Tail(base, fd, os.fstat(fd).st_ino, found.end, found.next_offset, found.index, index_fd, index_inode), None


def quarantine_last_batch(
    partition: Partition, fd: int, path: str, found: segment.SegmentScan, damaged: BatchHeader, size: int
) -> tuple[Tail, str]:
    """Move a damaged last batch aside and go on in a new segment after its offsets.

    The new segment's name records where the log goes on, so the damaged
    batch's offsets (which readers may have seen and committed past) are
    never given to other records, even if this process dies next.
    """
    target = segment.quarantine(fd, path, found.end, size)
    new_fd = create_segment(partition, damaged.next_offset, exist_ok=True)
    fsync_dir(partition.path)
    os.ftruncate(fd, found.end)
    os.fsync(fd)
    _truncate_index(partition.index_path(found.base), found.end)
    os.close(fd)
    recovered = (
        f"{path}: the batch at byte {found.end} (offsets {damaged.base_offset}..{damaged.last_offset}) "
        f"fails its checksum: moved its {size - found.end} byte(s) to {target}; the log goes on at offset "
        f"{damaged.next_offset} in a new segment, and those offsets are not reused"
    )
    tail = Tail(
        damaged.next_offset,
        new_fd,
        os.fstat(new_fd).st_ino,
        0,
        damaged.next_offset,
        IndexBuilder(),
        None,
        _inode(partition.index_path(damaged.next_offset)),
    )
    return tail, recovered


def create_segment(partition: Partition, base: int, exist_ok: bool = False) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | (0 if exist_ok else os.O_EXCL)
    try:
        fd = open_regular(partition.log_path(base), flags)
    except FileNotFoundError:
        raise partition._gone() from None
    if partition.sync:
        fsync_dir(partition.path)
    return fd


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
