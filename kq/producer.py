"""Sending records to a topic: choosing partitions and cutting batches."""

from __future__ import annotations

from collections import defaultdict

from .batch import MAX_BATCH_BYTES
from .topic import Topic

# Leave room under the batch limit for msgpack's per-value framing and the header.
SPLIT_BYTES = MAX_BATCH_BYTES // 2


def _size(values) -> int:
    try:
        return sum(map(len, values))
    except TypeError:  # tombstones (None) among the values
        return sum(len(v) for v in values if v is not None)


def _pieces(n: int, values) -> list[tuple[int, int]]:
    """Index ranges that cut ``values`` into batches under SPLIT_BYTES."""
    if n <= 1 or _size(values) <= SPLIT_BYTES:
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


class Producer:
    """Appends records to ``topic``; ``partition`` pins every record to one partition.

    Keyed records go to Kafka's murmur2 partition of their key; unkeyed
    records go round robin, one batch at a time (like Kafka's sticky
    partitioner), so a batch is never split for partitioning's sake.
    """

    def __init__(self, topic: Topic, partition: int | None = None):
        self.topic = topic
        self.partition = None if partition is None else topic.partition(partition).number
        self.sent = 0

    def _choose(self, key: bytes | None) -> int:
        if self.partition is not None:
            return self.partition
        if key is not None:
            return self.topic.partition_for_key(key)
        return self.topic.next_partition()

    def send_values(self, values: list, key: bytes | None = None, headers=None) -> None:
        """Send values that share one key (or none) and one header list."""
        if not values:
            return
        number = self._choose(key)
        part = self.topic.partition(number)
        n = len(values)
        for lo, hi in _pieces(n, values):
            piece = values if (lo, hi) == (0, n) else values[lo:hi]
            part.append(
                piece,
                keys=None if key is None else [key] * len(piece),
                headers=None if not headers else [headers] * len(piece),
            )
        self.sent += n

    def send_records(self, records) -> None:
        """Send (key, value, headers, partition, timestamp) tuples, grouped per partition."""
        groups: dict[int, list] = defaultdict(list)
        unkeyed = None
        for rec in records:
            key, _, _, partition, _ = rec
            if partition is not None:
                number = self.topic.partition(partition).number
            elif key is None and self.partition is None:
                if unkeyed is None:
                    unkeyed = self.topic.next_partition()
                number = unkeyed
            else:
                number = self._choose(key)
            groups[number].append(rec)
        for number, recs in groups.items():
            keys = [r[0] for r in recs]
            values = [r[1] for r in recs]
            headers = [r[2] for r in recs]
            stamps = [r[4] for r in recs]
            if all(t is None for t in stamps):
                stamps = None
            else:
                from .partition import now_ms

                now = now_ms()
                stamps = [now if t is None else t for t in stamps]
            part = self.topic.partition(number)
            n = len(values)
            for lo, hi in _pieces(n, values):
                part.append(
                    values[lo:hi], keys=keys[lo:hi], headers=headers[lo:hi],
                    timestamps=None if stamps is None else stamps[lo:hi],
                )
            self.sent += n
