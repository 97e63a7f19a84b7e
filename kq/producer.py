"""Sending records to a topic: choosing partitions and cutting batches."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from .engine.batch import MAX_BATCH_BYTES, pack
from .engine.partition import now_ms
from .engine.partitioner import partition_for_key
from .engine.topic import Topic

if TYPE_CHECKING:
    from .engine.dedup import DedupWindow

# Leave room under the batch limit for msgpack's per-value framing and the header.
SPLIT_BYTES = MAX_BATCH_BYTES // 2
KEY_CACHE_SIZE = 100_000  # distinct keys remembered with their partition
# Unkeyed records stick to one partition for a run of this many bytes or
# records, whichever comes first, then move to the next (Kafka's sticky
# partitioner switches after batch.size, 16 KiB): a pipe's input spreads
# evenly over the partitions however it is read.
STICKY_BYTES = 16 * 1024
STICKY_RECORDS = 1000


def _size(values) -> int:
    try:
        return sum(map(len, values))
    except TypeError:  # tombstones (None) among the values
        return sum(len(v) for v in values if v is not None)


def _pieces(n: int, values, size: int | None = None) -> list[tuple[int, int]]:
    """Index ranges that cut ``values`` into batches under SPLIT_BYTES.

    ``size``, if given, is at least the values' total length (measuring a
    million small values costs more than encoding them).
    """
    if n <= 1 or (size if size is not None else _size(values)) <= SPLIT_BYTES:
        return [(0, n)]
    out, start, acc = [], 0, 0
    for i, v in enumerate(values):
        size = len(v) if v is not None else 0
        if acc and acc + size > SPLIT_BYTES:
            out.append((start, i))
            start, acc = i, 0
        acc += size
    out.append((start, n))
    return out


def _picker(indexes: list[int]):
    """A function that takes the items at ``indexes`` of a column (None stays None)."""
    return lambda column: None if column is None else [column[i] for i in indexes]


class Producer:
    """Appends records to ``topic``; ``partition`` pins every record to one partition.

    Keyed records go to Kafka's murmur2 partition of their key; unkeyed
    records go round robin in runs of about STICKY_BYTES (like Kafka's
    sticky partitioner). The records of one send that share a partition go
    into one batch, so spreading costs a batch per partition, not per run.
    """

    def __init__(
        self,
        topic: Topic,
        partition: int | None = None,
        background: bool = False,
        dedup: DedupWindow | None = None,
        transaction=None,
    ):
        self.topic = topic
        # Drops records whose id was produced within its window; appends are then made
        # in this thread, under its lock (kq.engine.dedup), so never in the background.
        self.dedup = dedup
        self.on_duplicates = None  # called with the ids of each send's records dropped as duplicates
        self._ranges: list[tuple[int, int, int]] | None = None  # (partition, first, last) appended this round
        # A transaction's producer (kq.backends.local.LocalTransaction): each partition joins the
        # transaction before its first record, and every batch carries its producer id and epoch.
        self.transaction = transaction
        self.partition = None if partition is None else topic.partition(partition).number
        self.sent = 0  # records handed to the writer
        self._appended = 0  # records appended, by this thread or a finished background writer
        # murmur2 in Python costs microseconds a key, and keys repeat.
        self._key_partitions: dict[bytes, int] = {}
        self._keyed_count = topic.partition_count  # the partition count the cache was made for
        self._sticky = 0  # the partition of the current run of unkeyed records
        self._run_records = self._run_bytes = 0  # what is left of that run
        self._writer = _BackgroundWriter() if background and dedup is None else None

    @property
    def dropped(self) -> int:
        """Records dropped as duplicates (their id was produced within the deduplication window)."""
        return 0 if self.dedup is None else self.dedup.dropped

    @property
    def written(self) -> int:
        """Records appended so far (after a failed append: those before it)."""
        return self._appended + (0 if self._writer is None else self._writer.written)

    def flush(self) -> None:
        """Wait until every record sent is appended; raise the error that stopped a write."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush, then stop the background writer (if any)."""
        if self.dedup is not None:
            self.dedup.close()
        if self._writer is not None:
            try:
                self._writer.flush()
            finally:
                self._writer.stop()
                self._appended += self._writer.written
                self._writer = None

    def _unkeyed_runs(self, n: int, size: int) -> list[tuple[int, int, int]]:
        """(partition, start, stop) runs for ``n`` unkeyed records of ``size`` bytes in all."""
        average = max(size / n, 1.0)
        runs, start = [], 0
        while start < n:
            if self._run_records <= 0 or self._run_bytes <= 0:
                self._sticky = self.topic.next_partition()
                self._run_records, self._run_bytes = STICKY_RECORDS, STICKY_BYTES
            take = min(n - start, self._run_records, max(1, int(self._run_bytes / average)))
            runs.append((self._sticky, start, start + take))
            self._run_records -= take
            self._run_bytes -= int(take * average)
            start += take
        return runs

    def _next_unkeyed(self, value: bytes | None) -> int:
        """The partition of one unkeyed record, continuing the current run."""
        if self._run_records <= 0 or self._run_bytes <= 0:
            self._sticky = self.topic.next_partition()
            self._run_records, self._run_bytes = STICKY_RECORDS, STICKY_BYTES
        self._run_records -= 1
        self._run_bytes -= max(len(value), 1) if value is not None else 1
        return self._sticky

    def _partitions_of(self, keys, values) -> list[int]:
        """The partition of each key (Kafka's murmur2); unkeyed records continue the sticky run."""
        cache = self._key_partitions
        if len(cache) > KEY_CACHE_SIZE or self._keyed_count != self.topic.partition_count:
            cache.clear()  # full, or the topic grew: keys map anew
            self._keyed_count = self.topic.partition_count
        out: list = list(map(cache.get, keys))
        if None in out:  # new keys, or records without a key
            count = self.topic.partition_count
            for i, number in enumerate(out):
                if number is None:
                    key = keys[i]
                    out[i] = (
                        self._next_unkeyed(values[i])
                        if key is None
                        else cache.setdefault(key, partition_for_key(key, count))
                    )
        return out

    def _append_shares(self, numbers: list[int], values: list, keys, headers, timestamps, size: int | None) -> None:
        """Append each record to its partition in ``numbers``, one share per partition, in order."""
        members: dict[int, list[int]] = defaultdict(list)
        for i, number in enumerate(numbers):
            members[number].append(i)
        for number, indexes in members.items():
            pick = _picker(indexes)
            self._append(
                number, pick(values), pick(keys), pick(headers), pick(timestamps), size
            )  # size bounds each share

    def send_keyed(self, keys: list, values: list, headers=None, size: int | None = None) -> None:
        """Send values each with its own key (None: no key), sharing one header list.

        ``size``: an upper bound of the values' total length, if known.
        """
        if not values:
            return
        if self.dedup is not None:
            self._send_deduplicated(keys, values, None if not headers else [headers] * len(values), None, None)
            return
        if self.partition is not None or self.topic.partition_count == 1:
            number = self.partition if self.partition is not None else 0
            self._append(number, values, keys, None if not headers else [headers] * len(values), None, size)
            return
        self._append_shares(
            self._partitions_of(keys, values),
            values,
            keys,
            None if not headers else [headers] * len(values),
            None,
            size,
        )

    def send_values(self, values: list, key: bytes | None = None, headers=None, size: int | None = None) -> None:
        """Send values that share one key (or none) and one header list.

        ``size``: an upper bound of the values' total length, if known.
        """
        if not values:
            return
        n = len(values)
        keys = None if key is None else [key] * n
        headers = None if not headers else [headers] * n
        if self.dedup is not None:
            self._send_deduplicated(keys, values, headers, None, None)
            return
        if self.partition is not None or self.topic.partition_count == 1:
            self._append(self.partition or 0, values, keys, headers, None, size)
        elif key is not None:
            self._append(self._partitions_of([key], [None])[0], values, keys, headers, None, size)
        else:
            runs = self._unkeyed_runs(n, size if size is not None else _size(values))
            shares: dict[int, list] = defaultdict(list)
            for number, lo, hi in runs:
                shares[number] += values[lo:hi] if (lo, hi) != (0, n) else values
            for number, share in shares.items():
                self._append(number, share, None, None if headers is None else headers[: len(share)], None, size)

    def _append(self, number: int, values: list, keys, headers, timestamps, size: int | None) -> None:
        """Append records to partition ``number``, in as many batches as their size needs."""
        part = self.topic.partition(number)
        n = len(values)
        for lo, hi in _pieces(n, values, size):
            whole = (lo, hi) == (0, n)
            piece = (
                values if whole else values[lo:hi],
                keys if whole or keys is None else keys[lo:hi],
                headers if whole or headers is None else headers[lo:hi],
            )
            piece_stamps = timestamps if whole or timestamps is None else timestamps[lo:hi]
            producer = None
            if self.transaction is not None:
                producer = self.transaction.join(part)
            payload = pack(
                *piece,
                timestamp=now_ms() if piece_stamps is None else 0,
                timestamps=piece_stamps,
                compression=part.codec,
                producer=producer,
            )
            if self._ranges is not None:  # deduplicating: the window notes where records went
                self._ranges.append((number, *part.append_payload(payload)))
                self._appended += payload.count
            elif self._writer is None:
                part.append_payload(payload)
                self._appended += payload.count
            else:
                self._writer.append(part, payload)
        self.sent += n

    def send_records(self, records) -> None:
        """Send (key, value, headers, partition, timestamp) tuples, grouped per partition."""
        if not records:
            return
        keys, values, headers, partitions, given = (list(column) for column in zip(*records))
        self.send_columns(keys, values, headers, partitions, given)

    def send_columns(self, keys, values: list, headers, partitions, timestamps) -> None:
        """Send records given as columns, grouped per partition.

        ``keys``, ``headers`` (lists of (name, value) pairs), ``partitions``
        and ``timestamps`` may each be None: no record has one. A None
        partition is the partitioner's choice, a None timestamp now.
        """
        n = len(values)
        if not n:
            return
        if self.dedup is not None and self._ranges is None:
            self._send_deduplicated(keys, values, headers, partitions, timestamps)
            return
        if timestamps is not None and None in timestamps:
            now = now_ms()
            timestamps = [now if t is None else t for t in timestamps]
        named: dict = {}  # the partitions records name, in order, each once
        if partitions is not None and self.partition is None:
            named = dict.fromkeys(partitions)
            if None not in named and len(named) == 1:  # a copy of one partition: one share, nothing to choose
                (number,) = named
                self.topic.partition(number)  # raises PartitionNotFound if the topic lacks it
                self._append(number, values, keys, headers, timestamps, None)
                return
            named.pop(None, None)
            for number in named:
                self.topic.partition(number)
        if self.partition is not None or self.topic.partition_count == 1:
            numbers = [self.partition or 0] * n
        else:
            numbers = self._partitions_of(keys if keys is not None else [None] * n, values)
        if named:
            assert partitions is not None
            numbers = [n if p is None else p for n, p in zip(numbers, partitions)]
        if len(set(numbers)) == 1:
            self._append(numbers[0], values, keys, headers, timestamps, None)
        else:
            self._append_shares(numbers, values, keys, headers, timestamps, None)

    def _send_deduplicated(self, keys, values: list, headers, partitions, timestamps) -> None:
        """Send the records whose id was not produced within the window, holding the window's lock.

        The lock is held from reading the index to writing the ids appended,
        so concurrent producers never both admit one id (kq.engine.dedup).
        """
        from .engine.dedup import record_ids

        dedup = self.dedup
        assert dedup is not None
        n = len(values)
        with dedup.holding():
            ids = record_ids(keys, headers, dedup.header, n)
            duplicates = dedup.admit(ids)
            if len(duplicates) == n:
                values = []
            elif duplicates:
                dropped = set(duplicates)
                pick = _picker([i for i in range(n) if i not in dropped])
                keys, values, headers = pick(keys), pick(values), pick(headers)
                partitions, timestamps = pick(partitions), pick(timestamps)
            self._ranges = []
            try:
                if values:
                    self.send_columns(keys, values, headers, partitions, timestamps)
                for number, first, last in self._ranges:
                    dedup.appended(number, first, last)
            finally:
                self._ranges = None
            dedup.commit()
        if duplicates and self.on_duplicates is not None:
            self.on_duplicates([ids[i] for i in duplicates])


class _BackgroundWriter:
    """Appends packed batches in a thread, so that a producer reads and packs the next one meanwhile.

    Checksumming and writing release the GIL: with this, a producer from a
    pipe uses both cores. At most a few batches wait (bounded memory); the
    first error stops the writer and is raised to the producer's next call.
    """

    def __init__(self, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # to raise in the producer, once
        self._failed = False  # after a failed append, no later batch may be written
        self.written = 0  # records appended
        self._thread = threading.Thread(target=self._run, name="kq-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if not self._failed:
                    part, payload = item
                    part.append_payload(payload)
                    self.written += payload.count
            except BaseException as exc:  # raised again in the producer's thread
                self._error, self._failed = exc, True
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def append(self, part, payload) -> None:
        self._raise()
        self._queue.put((part, payload))

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()
