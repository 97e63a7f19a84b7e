"""The lease engine of one partition of a share group: acquire records under a lease, settle them, under the partition's lock."""

from __future__ import annotations

import os
import uuid
from collections import deque
from typing import TYPE_CHECKING

from ..engine.batch import RecordBatch
from ..engine.cursor import READ_COMMITTED
from ..engine.fileio import FileLock, atomic_write, make_dirs, read_small
from .dead_letter import dead_letter, finish_dead_lettering
from .deliveries import LEASE_EXPIRED, Delivery, Failure, Outcome
from .state import (
    ACQUIRED,
    AVAILABLE,
    LOCK_SUFFIX,
    MAX_RANGES,
    MAX_STATE_BYTES,
    STATE_SUFFIX,
    PartitionState,
    Range,
    boot_id,
    clock_ms,
    parse_state,
)

if TYPE_CHECKING:
    from .consumer import ShareConsumer


# Reading a partition again from an offset this far ahead of where a reader
# stands costs less through the index than by skipping batches.
RESEEK_OFFSETS = 10_000


class _Records:
    """Reads offset ranges of one partition, mostly forward, keeping the batches it read past."""

    def __init__(self, partition):
        self.partition = partition
        self.cursor = None
        self.pending: deque = deque()

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None
        self.pending.clear()

    def _position(self) -> int:
        return self.pending[0].base_offset if self.pending else self.cursor.offset

    def read(self, first: int, last: int) -> list[tuple[RecordBatch, int, int]]:
        """(batch, lo, hi) slices holding the records with offsets first..last, in order."""
        if (
            self.cursor is None
            or first < self._position()
            or (not self.pending and first > self.cursor.offset + RESEEK_OFFSETS)
        ):
            self.close()
            self.cursor = self.partition.cursor(first, isolation=READ_COMMITTED)
        out = []
        while True:
            if not self.pending:
                got = self.cursor.poll()
                if not got:
                    break
                self.pending.extend(got)
            b = self.pending[0]
            if b.next_offset <= first:
                self.pending.popleft()
                continue
            if b.base_offset > last:
                break
            lo, hi = b.index_of(first), b.index_of(last + 1)
            if lo < hi:
                out.append((b, lo, hi))
            if b.next_offset > last + 1:
                break
            self.pending.popleft()
        return out


class SharePartition:
    """One partition of a share group on a topic: its lock, its state file, its records."""

    def __init__(self, consumer: ShareConsumer, number: int):
        self.consumer = consumer
        self.number = number
        self.partition = consumer.topic.partition(number)
        directory = consumer.dir
        self.path = os.path.join(directory, f"{number}{STATE_SUFFIX}")
        self.lock = FileLock(os.path.join(directory, f"{number}{LOCK_SUFFIX}"))
        self.records = _Records(self.partition)
        self.seen: bytes | None = None  # the file's bytes when this process last looked

    def close(self) -> None:
        self.records.close()
        self.lock.close()

    def peek(self) -> PartitionState | None:
        """The state without the lock (for a quick look: is there work?)."""
        try:
            raw = read_small(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        return parse_state(raw, self.path)

    def load(self) -> PartitionState:
        """The state, under the lock (the caller holds it), fitted to the log and this boot."""
        c = self.consumer
        try:
            raw = read_small(self.path, MAX_STATE_BYTES)
            state = parse_state(raw, self.path)
            self.seen = raw
        except FileNotFoundError:
            state, self.seen = None, None
        topic_id = c.topic.id
        if state is not None and topic_id is not None and state.topic_id not in (None, topic_id):
            c.warn(
                f"share group '{c.share}' on {c.topic.name}/{self.number}: its state was of an earlier topic of that name; starting afresh"
            )
            state = None
        log_start = self.partition.start_offset()
        if state is None:
            first = log_start if c.reset == "earliest" else self.partition.end_offset()
            state = PartitionState(start=first, next=first, boot=boot_id(), topic_id=topic_id)
        warning = state.normalize(log_start, boot_id())
        state.bound_leases(clock_ms(), c.holder_live)
        if warning:
            c.warn(f"share group '{c.share}' on {c.topic.name}/{self.number}: {warning}")
        if state.topic_id is None:
            state.topic_id = topic_id
        return state

    def save(self, state: PartitionState) -> None:
        state.merge()
        state.advance()
        raw = state.to_bytes()
        if state.fresh or raw != self.seen:
            make_dirs(os.path.dirname(self.path))
            atomic_write(self.path, raw)
            self.seen = raw
            state.fresh = False

    # ------------------------------------------------------------ operations (each under the lock)

    def acquire(self, want: int, lease_ms: int, acks=(), outcome: Outcome | None = None) -> list[Delivery]:
        """Up to ``want`` records under a new lease, after acknowledging ``acks`` ((token, spans)
        pairs, as ``settle`` takes them) in the same change of the state (``outcome`` counts them)."""
        deliveries, only_gaps = self._acquire(want, lease_ms, acks, outcome)
        while only_gaps:  # offsets without records (a compacted topic): look further on
            deliveries, only_gaps = self._acquire(want, lease_ms)
        return deliveries

    def _acquire(
        self, want: int, lease_ms: int, acks=(), outcome: Outcome | None = None
    ) -> tuple[list[Delivery], bool]:
        c = self.consumer
        now = clock_ms()
        end = self.partition.last_stable_offset()  # records of open transactions wait; aborted ones read as gaps
        if not acks:
            quick = self.peek()
            if want <= 0 or (
                quick is not None and not quick.has_work(end, now, c.holder_live) and quick.boot == boot_id()
            ):
                return [], False
        token = uuid.uuid4().hex[:12]
        taken: list[Range] = []
        with self.lock:
            state = self.load()
            finish_dead_lettering(self, state)
            for ack_token, spans in acks:
                self._apply(state, ack_token, spans, "ack", outcome if outcome is not None else Outcome())
            doomed = []
            got = 0
            for r in state.due(now) if want > 0 else ():
                if got >= want:
                    break
                if r.attempt >= c.settings.max_attempts:
                    doomed.append(r)  # its last delivery's lease ran out: nobody acknowledged it
                    continue
                pieces = state.carve(r.first, min(r.last, r.first + want - got - 1))
                assert pieces is not None  # r is one whole range of the state
                part = pieces[0]
                part.state, part.attempt, part.lease, part.owner = ACQUIRED, part.attempt + 1, token, c.owner
                part.detached = c.detach
                part.until = now + lease_ms
                taken.append(part)
                got += part.count
            if 0 < want and got < want and state.next < end and len(state.ranges) < MAX_RANGES:
                last = min(end, state.next + want - got) - 1
                new = Range(state.next, last, ACQUIRED, 1, token, now + lease_ms, c.owner, detached=c.detach)
                state.ranges.append(new)
                state.next = last + 1
                taken.append(new)
            if doomed:
                for r in doomed:
                    if r.state == ACQUIRED or r.error is None:
                        r.error = LEASE_EXPIRED.as_json()
                dead_letter(self, state, doomed)
            spans = sorted((r.first, r.last, r.attempt) for r in taken)  # as taken, before save() joins ranges
            self.save(state)
        deliveries, phantoms = [], []
        for first, last, attempt in spans:
            expect = first
            for b, lo, hi in self.records.read(first, last):
                offsets = b.offsets()
                if b.offset_deltas is None:  # dense: a gap can only come before it
                    if offsets[lo] > expect:
                        phantoms.append((expect, offsets[lo] - 1))
                    deliveries += [Delivery(self.number, offsets[i], attempt, token, b, i) for i in range(lo, hi)]
                    expect = offsets[hi - 1] + 1
                    continue
                for i in range(lo, hi):
                    if offsets[i] > expect:
                        phantoms.append((expect, offsets[i] - 1))
                    deliveries.append(Delivery(self.number, offsets[i], attempt, token, b, i))
                    expect = offsets[i] + 1
            if expect <= last:
                phantoms.append((expect, last))
        if phantoms:
            # Offsets without a record (a compacted topic's gaps, or records
            # retention deleted since): nothing to deliver, settled at once.
            self.settle(token, phantoms, "skip")
        return deliveries, bool(taken) and not deliveries

    def settle(
        self, token: str, spans: list[tuple[int, int]], how: str, failure: Failure | None = None, lease_ms: int = 0
    ) -> Outcome:
        """Settle offsets ``spans`` acquired under ``token``: ``ack``, ``nack`` (retry or, at the last
        attempt, dead-letter), ``dead`` (dead-letter now), ``release`` (again at once, the attempt
        not counted), ``extend`` (the lease by ``lease_ms``), ``skip`` (no record there)."""
        out = Outcome()
        with self.lock:
            state = self.load()
            finish_dead_lettering(self, state)
            if self._apply(state, token, spans, how, out, failure, lease_ms):
                self.save(state)
        return out

    def _apply(
        self,
        state: PartitionState,
        token: str,
        spans,
        how: str,
        out: Outcome,
        failure: Failure | None = None,
        lease_ms: int = 0,
    ) -> bool:
        """Settle ``spans`` of lease ``token`` in ``state`` (see ``settle``); True if it changed."""
        c = self.consumer
        now = clock_ms()
        held: list[Range] = []
        for first, last in spans:
            pieces = state.carve(first, last, token)
            if pieces is None:
                out.not_held.append((self.number, first, last, token))
            else:
                held += pieces
        if not held:
            return False
        if how in ("ack", "skip"):
            n = sum(r.count for r in held)
            if how == "ack":
                state.acked += n
                out.acked += n
            state.remove(held)
        elif how == "extend":
            for r in held:
                r.until = max(r.until, now + lease_ms)
            out.extended += sum(r.count for r in held)
        elif how == "release":
            for r in held:
                r.state, r.attempt, r.lease, r.owner, r.until = AVAILABLE, r.attempt - 1, None, None, now
                r.detached = False
            out.released += sum(r.count for r in held)
        else:
            doomed = []
            for r in held:
                r.error = (failure or Failure("rejected")).as_json()
                if how == "dead" or r.attempt >= c.settings.max_attempts:
                    doomed.append(r)
                else:
                    r.state, r.lease, r.owner, r.detached = AVAILABLE, None, None, False
                    r.until = now + c.settings.backoff(r.attempt)
                    out.released += r.count
            if doomed:
                out.dead += dead_letter(self, state, doomed)
        return True
