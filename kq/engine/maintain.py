"""Housekeeping: retention (delete old segments), trim (delete records before a point)
and compaction (keep the latest record per key).

All of it runs under a partition's ``maintain.lock``, never under the writer
lock for long: it only touches *closed* segments (every segment but the last),
which writers never change. Readers keep reading files they have open, as
deletion and replacement leave open files intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import CorruptLog
from . import batch as batchfmt
from . import segment
from .fileio import fsync_dir, open_regular, write_all
from .index import Index, IndexBuilder
from .partition import Partition, now_ms
from .segment import DAMAGED, BatchReader

COMPACT_SUFFIX = ".compact"


@dataclass
class Report:
    topic: str
    partition: int
    start_offset: int = 0
    segments_deleted: int = 0
    bytes_reclaimed: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    markers_removed: int = 0  # commit markers compaction dropped (transactions)

    def add(self, other: Report) -> None:
        self.segments_deleted += other.segments_deleted
        self.bytes_reclaimed += other.bytes_reclaimed
        self.records_removed += other.records_removed
        self.tombstones_removed += other.tombstones_removed
        self.markers_removed += other.markers_removed


def segment_max_timestamp(partition: Partition, base: int) -> int:
    """The largest record timestamp in a segment (from its index and a short scan)."""
    path = partition.log_path(base)
    fd = open_regular(path)
    try:
        return segment.scan(fd, path, base, Index.load(partition.index_path(base))).index.max_timestamp
    finally:
        os.close(fd)


def _delete_segment(partition: Partition, base: int, report: Report) -> None:
    path = partition.log_path(base)
    try:
        report.bytes_reclaimed += os.path.getsize(path)
    except FileNotFoundError:
        return
    partition.remove_segment(base)
    report.segments_deleted += 1


def apply_retention(partition: Partition, now: int | None = None, blocking: bool = True) -> Report:
    """Delete the oldest closed segments that the time or size limit requires.

    Time: a closed segment goes when its newest record is older than the
    retention. Size: the oldest closed segment goes while the partition stays at
    or above the size limit without it (as Kafka does). Deletion stops at the
    first segment that may stay, so the log is always a contiguous range.
    """
    report = Report(partition.topic, partition.number)
    retention_ms = partition.config.get("retention_ms")
    retention_bytes = partition.config.get("retention_bytes")
    if retention_ms is None and retention_bytes is None:
        report.start_offset = partition.start_offset()
        return report
    with partition.maintenance_lock(blocking) as locked:
        if not locked:
            return report
        now = now_ms() if now is None else now
        bases = partition.segments()
        sizes = {b: _size(partition, b) for b in bases}
        total = sum(sizes.values())
        for base in bases[:-1]:  # never the active segment
            expired = retention_ms is not None and segment_max_timestamp(partition, base) < now - retention_ms
            oversize = retention_bytes is not None and total - sizes[base] >= retention_bytes
            if not (expired or oversize):
                break
            _delete_segment(partition, base, report)
            total -= sizes[base]
    report.start_offset = partition.start_offset()
    return report


def _size(partition: Partition, base: int) -> int:
    try:
        return os.path.getsize(partition.log_path(base))
    except FileNotFoundError:
        return 0


def trim(partition: Partition, before: int) -> Report:
    """Delete every record before offset ``before`` (like kafka-delete-records).

    The start offset moves to ``before`` (never back, never past the end),
    and closed segments that lie wholly below it are deleted.
    """
    report = Report(partition.topic, partition.number)
    with partition.maintenance_lock():
        end = partition.end_offset()
        before = min(before, end)
        if before > partition.start_offset():
            partition.set_start_offset(before)
        bases = partition.segments()
        for base, next_base in zip(bases, bases[1:]):
            if next_base <= before:
                _delete_segment(partition, base, report)
    report.start_offset = partition.start_offset()
    return report


def _segment_batches(partition: Partition, base: int):
    """(raw bytes, decoded batch) for every batch of a closed segment; damage is an error."""
    path = partition.log_path(base)
    fd = open_regular(path)
    try:
        reader = BatchReader(fd, path, 0)
        for _, header, buf, rel in reader.headers():
            raw = bytes(buf[rel : rel + batchfmt.batch_size(header)])
            yield raw, batchfmt.decode(buf, rel, header, path)
        if reader.stop == DAMAGED:
            raise CorruptLog(path, reader.stop_position, f"{reader.reason}; not compacting a damaged segment")
    finally:
        os.close(fd)


def compact(partition: Partition, now: int | None = None, progress=None) -> Report:
    """Rewrite closed segments keeping only the latest record per key.

    Surviving records keep their offsets (so offsets get gaps). A tombstone
    (null value) that is the latest for its key stays until it is older than
    the topic's tombstone retention. New segment files are written beside the
    old ones, then swapped in from the oldest to the newest: a crash at any
    point leaves some older segments compacted and the newer ones as they
    were, which never loses a key's latest value (the records that justified
    each removal are in the later, untouched segments).
    """
    report = Report(partition.topic, partition.number)
    now = now_ms() if now is None else now
    horizon = now - partition.config.get("tombstone_retention_ms", 0)
    with partition.maintenance_lock():
        for name in os.listdir(partition.path):
            if name.endswith(COMPACT_SUFFIX):  # left by a crash: never swapped in
                os.unlink(os.path.join(partition.path, name))
        bases = partition.segments()
        closed = bases[:-1]
        if not closed:
            report.start_offset = partition.start_offset()
            return report
        # Transactions (docs/FORMAT.md): only decided records, below the last stable offset, count
        # for a key or go; an aborted transaction's records go whatever their keys; commit
        # markers there go (readers need none below the LSO); abort markers stay, as their
        # .txnindex entries do (the index is rebuilt from them).
        txns = _Transactions(partition)
        latest: dict = {}
        for b in _all_batches(partition):
            if b.keys is not None and txns.counts(b):
                latest.update(zip(b.keys, b.offsets()))
        latest.pop(None, None)
        rewritten = []
        for done, base in enumerate(closed):
            result = _rewrite_segment(partition, base, latest, horizon, report, txns)
            if result is not None:
                rewritten.append(base)
            if progress is not None:
                progress(partition, done + 1, len(closed))
        for base in rewritten:  # oldest first: see the docstring
            _swap_in(partition, base)
        if rewritten:
            fsync_dir(partition.path)
    report.start_offset = partition.start_offset()
    return report


def _all_batches(partition: Partition):
    cursor = partition.cursor(partition.segments()[0] if partition.segments() else 0)
    try:
        while True:
            batches = cursor.poll()
            if not batches:
                return
            yield from batches
    finally:
        cursor.close()


class _Transactions:
    """What compaction needs to know of a partition's transactions, read once under the maintenance lock."""

    def __init__(self, partition: Partition):
        from .txn_log import read_open

        self.transactional = bool(read_open(partition.path)) or any(
            os.path.exists(partition.txn_index_path(b)) for b in partition.segments()
        )
        self.stable = partition.last_stable_offset()
        self.aborted = partition.aborted_transactions(0) if self.transactional else []

    def undecided(self, b) -> bool:
        return b.base_offset >= self.stable

    def aborted_batch(self, b) -> bool:
        from .txn_log import is_aborted

        return bool(b.attributes & batchfmt.TRANSACTIONAL) and is_aborted(self.aborted, b.producer_id, b.base_offset)

    def counts(self, b) -> bool:
        """Whether a batch's keys may make older records of theirs go (a decided, committed data batch)."""
        return not (b.attributes & batchfmt.CONTROL or self.undecided(b) or self.aborted_batch(b))


def _abort_marker(b) -> bool:
    marker = batchfmt.marker_of(b)
    return marker is not None and not marker.commit


def _rewrite_segment(partition: Partition, base: int, latest: dict, horizon: int, report: Report, txns: _Transactions):
    """Write ``<segment>.compact`` (and its index) if anything can go; None if nothing can."""
    out_batches = []
    removed = tombstones = markers = 0
    for raw, b in _segment_batches(partition, base):
        if txns.undecided(b) or _abort_marker(b):
            out_batches.append((raw, b.base_offset, b.max_timestamp))
            continue
        if b.attributes & batchfmt.CONTROL:  # a commit marker below the LSO
            markers += 1
            continue
        if txns.aborted_batch(b):
            removed += b.count
            continue
        offsets = b.offsets()
        stamps = b.timestamps()
        keys = b.keys if b.keys is not None else [None] * b.count
        keep = []
        for i in range(b.count):
            key = keys[i]
            if key is not None and latest.get(key) != offsets[i]:
                removed += 1
            elif key is not None and b.values[i] is None and stamps[i] < horizon:
                tombstones += 1
            else:
                keep.append(i)
        if len(keep) == b.count:
            out_batches.append((raw, b.base_offset, b.max_timestamp))
        elif keep:
            first = offsets[keep[0]]
            data = batchfmt.encode(
                first,
                [b.values[i] for i in keep],
                keys=[keys[i] for i in keep],
                headers=None if b.headers is None else [b.headers[i] for i in keep],
                timestamps=[stamps[i] for i in keep],
                offset_deltas=[offsets[i] - first for i in keep],
                compression=partition.codec,  # a batch rewritten takes the topic's codec of today
                producer=(b.producer_id, b.producer_epoch) if b.attributes & batchfmt.TRANSACTIONAL else None,
            )
            out_batches.append((data, first, max(stamps[i] for i in keep)))
    if not removed and not tombstones and not markers:
        return None
    if partition.codec:
        partition.allow_compression()
    report.markers_removed += markers
    report.records_removed += removed
    report.tombstones_removed += tombstones
    log_tmp = partition.log_path(base) + COMPACT_SUFFIX
    index_tmp = partition.index_path(base) + COMPACT_SUFFIX
    index = IndexBuilder()
    position = 0
    for data, offset, batch_max in out_batches:
        index.add(offset, position, batch_max)
        position += len(data)
    for path, payload in ((log_tmp, b"".join(d for d, _, _ in out_batches)), (index_tmp, index.take())):
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
    report.bytes_reclaimed += max(_size(partition, base) - position, 0)
    return base


def _swap_in(partition: Partition, base: int) -> None:
    log, index = partition.log_path(base), partition.index_path(base)
    # Drop the old index first: for a moment the new log has no index
    # (lookups scan), never an index that describes the old file.
    try:
        os.unlink(index)
    except FileNotFoundError:
        pass
    os.replace(log + COMPACT_SUFFIX, log)
    os.replace(index + COMPACT_SUFFIX, index)


def maintain_topic(topic, now: int | None = None, progress=None) -> list[Report]:
    """Retention, then compaction for compacted topics, on every partition."""
    reports = []
    for part in topic.partitions():
        report = apply_retention(part, now)
        if topic.config.get("cleanup") == "compact":
            report.add(compact(part, now, progress))
            report.start_offset = part.start_offset()
        reports.append(report)
    return reports
