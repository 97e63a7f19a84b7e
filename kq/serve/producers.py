"""The idempotent producer: producer ids, epochs and sequence numbers.

A producer that retries a batch (its acknowledgement was lost) sends the
same sequence numbers again; the batch must be stored once and the retry
answered with the offset the first copy got. Like Kafka, kq serve remembers
the last ``KEPT_BATCHES`` batches of each producer on each partition.

This state lives in memory only: kq's log has no place for a producer's id
and sequence. After a restart of the server, a producer's next batch is
taken as it comes (Kafka would restore the state from its log), so a retry
that crosses a restart can be stored twice.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

from . import codes

KEPT_BATCHES = 5  # Kafka keeps the last 5 (max.in.flight.requests for idempotence)
MAX_PRODUCERS = 100_000  # the oldest are forgotten beyond this (Kafka expires idle ones)


class SequenceError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Duplicate(Exception):
    """A batch already stored: answer with where it went."""

    def __init__(self, base_offset: int):
        super().__init__(base_offset)
        self.base_offset = base_offset


class _Partition:
    __slots__ = ("epoch", "batches")

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.batches: deque = deque(maxlen=KEPT_BATCHES)  # (first seq, last seq, base offset)


class ProducerState:
    def __init__(self):
        # Ids unique across restarts of the server: milliseconds since the
        # epoch, shifted to leave room for 1024 new producers a millisecond.
        self._next_id = itertools.count(time.time_ns() // 1_000_000 << 10)
        self._epochs: dict[int, int] = {}
        self._state: dict[tuple[int, str, int], _Partition] = {}

    def init(self, producer_id: int = -1, epoch: int = -1) -> tuple[int, int]:
        """InitProducerId: a new id, or the next epoch of a known one."""
        if producer_id >= 0 and self._epochs.get(producer_id) == epoch:
            new_epoch = epoch + 1
            if new_epoch <= 32767:
                self._epochs[producer_id] = new_epoch
                return producer_id, new_epoch
        pid = next(self._next_id)
        self._epochs[pid] = 0
        if len(self._epochs) > MAX_PRODUCERS:
            oldest = next(iter(self._epochs))
            del self._epochs[oldest]
            for key in [k for k in self._state if k[0] == oldest]:
                del self._state[key]
        return pid, 0

    def fence(self, producer_id: int, epoch: int) -> None:
        """A transactional id's producer moved to ``epoch`` (InitProducerId): batches of older epochs are refused."""
        self._epochs[producer_id] = epoch

    def check(self, topic: str, partition: int, batch) -> None:
        """Raise Duplicate for a batch already stored, SequenceError for one out of order."""
        pid = batch.producer_id
        if pid < 0:
            return
        self._check_epoch(batch)
        state = self._state.get((pid, topic, partition))
        if state is None or state.epoch != batch.producer_epoch:
            return  # a new producer, or a new epoch: its sequence starts afresh
        first = batch.base_sequence
        last = first + batch.count - 1
        for seq_first, seq_last, base in state.batches:
            if seq_first == first and seq_last == last:
                raise Duplicate(base)
        _check_follows(pid, state.batches[-1][1] + 1 if state.batches else 0, first)

    def check_all(self, topic: str, partition: int, batches) -> list[int | None]:
        """Check a request's batches for one partition, each as if those before it were stored.

        For each batch: None if it is to be appended, or the base offset a
        duplicate was stored at. SequenceError if any batch is refused, so
        that a caller appends none of them then.
        """
        out: list[int | None] = []
        after: dict[int, tuple[int, int]] = {}  # producer id -> (epoch, last sequence) of this request's batches
        for batch in batches:
            pid = batch.producer_id
            seen = after.get(pid) if pid >= 0 else None
            if seen is None:
                try:
                    self.check(topic, partition, batch)
                except Duplicate as dup:
                    out.append(dup.base_offset)
                    continue
            else:
                self._check_epoch(batch)
                epoch, last = seen
                if batch.producer_epoch < epoch:
                    raise SequenceError(
                        codes.INVALID_PRODUCER_EPOCH,
                        f"producer {pid} epoch {batch.producer_epoch} is older than {epoch}",
                    )
                if batch.producer_epoch == epoch:
                    _check_follows(pid, last + 1, batch.base_sequence)
            if pid >= 0:
                after[pid] = (batch.producer_epoch, batch.base_sequence + batch.count - 1)
            out.append(None)
        return out

    def _check_epoch(self, batch) -> None:
        known_epoch = self._epochs.get(batch.producer_id)
        if known_epoch is not None and batch.producer_epoch < known_epoch:
            raise SequenceError(
                codes.INVALID_PRODUCER_EPOCH,
                f"producer {batch.producer_id} epoch {batch.producer_epoch} is older than {known_epoch}",
            )

    def appended(self, topic: str, partition: int, batch, base: int, last: int) -> None:
        pid = batch.producer_id
        if pid < 0:
            return
        key = (pid, topic, partition)
        state = self._state.get(key)
        if state is None or state.epoch != batch.producer_epoch:
            state = self._state[key] = _Partition(batch.producer_epoch)
            self._epochs.setdefault(pid, batch.producer_epoch)
        state.batches.append((batch.base_sequence, batch.base_sequence + batch.count - 1, base))


def _check_follows(pid: int, expected: int, first: int) -> None:
    """A batch must start where the producer's last one ended (a sequence wraps to 0 past 2**31 - 1)."""
    if first != expected and not (expected > 2**31 - 1 and first == 0):
        raise SequenceError(
            codes.OUT_OF_ORDER_SEQUENCE_NUMBER, f"producer {pid}: sequence {first} where {expected} was expected"
        )
