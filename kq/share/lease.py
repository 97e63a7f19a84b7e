"""The lease engine of one partition of a share group: acquire records under a lease, settle them, under the partition's lock."""

from __future__ import annotations

import os
import uuid
from collections import deque
from contextlib import contextmanager
from operator import attrgetter
from typing import TYPE_CHECKING

from ..delivery_time import DELIVER_AT_BYTES, deliver_at
from ..engine.batch import RecordBatch
from ..engine.cursor import READ_COMMITTED
from ..engine.fileio import FileLock, atomic_write, make_dirs, read_small
from .dead_letter import dead_letter, finish_dead_lettering
from .deliveries import LEASE_EXPIRED, Delivery, Failure, Outcome
from .schedule import Schedule
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
    wall_ms,
)

if TYPE_CHECKING:
    from .consumer import ShareConsumer


# Reading a partition again from an offset this far ahead of where a reader
# stands costs less through the index than by skipping batches.
RESEEK_OFFSETS = 10_000
# The most offsets one acquisition looks at under the lock (records whose delivery time has not
# come are passed over): past it, it returns what it found and another acquisition goes on.
MAX_SCAN_OFFSETS = 100_000


def _waiting(batch: RecordBatch, lo: int, hi: int, wall: int) -> list | int | None:
    """Which of records ``lo:hi`` of ``batch`` wait for a delivery time later than ``wall``: None if
    none does, the time if all do with the same headers (a produce's --delay), else each record's
    time if it waits (None if not)."""
    headers = batch.headers
    if headers is None:
        return None
    pick = headers[lo:hi]
    first = pick[0]
    if pick.count(first) == len(pick):  # compared in C: one produce's headers, most often
        at = deliver_at(first) if first else None
        return at if at is not None and at > wall else None
    times = [deliver_at(h) if h else None for h in pick]
    if not any(t is not None and t > wall for t in times):
        return None
    return [t if t is not None and t > wall else None for t in times]


def _schedule(state: PartitionState, schedule: Schedule, taken: list[Range], later: list[list[int]]) -> None:
    """Move the runs ``later`` ([first, last, time], in order, each inside one range of ``taken``)
    to ``schedule``, their delivery attempt not counted: each taken range is replaced by what is
    left of it in one sweep (carving run by run would cost a pass over the state per run)."""
    runs = iter(later)
    run = next(runs, None)
    for t in sorted(taken, key=attrgetter("first")):
        pieces: list[Range] = []
        at = t.first
        cut = False
        while run is not None and run[0] <= t.last:
            first, last, when = run
            if first > at:
                pieces.append(t.copy(at, first - 1))
            schedule.add(first, last, when, t.attempt - 1)
            cut = True
            at = last + 1
            run = next(runs, None)
        if not cut:
            continue
        if at <= t.last:
            pieces.append(t.copy(at, t.last))
        # Taken ranges are found from the end, where new ones were appended.
        i = next(i for i in range(len(state.ranges) - 1, -1, -1) if state.ranges[i] is t)
        state.ranges[i : i + 1] = pieces


def _bring_back(state: PartitionState, schedule: Schedule, wall: int, want: int) -> None:
    """Move runs of ``schedule`` whose time has come by ``wall`` back among the state's ranges, as
    available records: about ``want`` records' worth, as many runs as the state has room for (taking
    them may cut one in two: ``_take`` keeps to the room left)."""
    room = MAX_RANGES - len(state.ranges) - 1
    back: list[Range] = []
    got = 0
    while got < want and len(back) < room:
        runs = schedule.take_due(wall, 1)
        if not runs:
            break
        first, last, attempt = runs[0]
        back.append(Range(first, last, AVAILABLE, attempt))
        got += last - first + 1
    if back:
        state.ranges = sorted(state.ranges + back, key=attrgetter("first"))


def _joined(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans, overlapping ones joined."""
    out: list[list[int]] = []
    for first, last in spans:
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return [(a, b) for a, b in out]


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

    def read(self, first: int, last: int, values: bool = True) -> list[tuple[RecordBatch, int, int]]:
        """(batch, lo, hi) slices holding the records with offsets first..last, in order.

        ``values=False``: batches with delayed records may come without their values
        (``RecordBatch.load_values``): whether a record is due is read from its headers alone.
        """
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
                got = self.cursor.poll(defer_values_if=DELIVER_AT_BYTES)
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
                if values:
                    b.load_values()
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
        self.schedule = Schedule(directory, number)
        self.swept = False  # the schedule's leftover files removed, once a worker (the first time it holds the lock)
        self.seen: bytes | None = None  # the file's bytes when this process last looked
        # The state this process last saved, as it saved it: the next change reuses it, unparsed,
        # if the file still holds those bytes (nobody changed it since; the common case of one worker).
        self._saved: PartitionState | None = None

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
        saved, self._saved = self._saved, None
        try:
            raw = read_small(self.path, MAX_STATE_BYTES)
            state = saved if saved is not None and raw == self.seen else parse_state(raw, self.path)
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
        self.schedule.sync(state.schedule)
        if not self.swept:
            self.schedule.sweep()
            self.swept = True
        warning = state.normalize(log_start, boot_id(), self.schedule)
        state.bound_leases(clock_ms(), c.holder_live)
        if warning:
            c.warn(f"share group '{c.share}' on {c.topic.name}/{self.number}: {warning}")
        if state.topic_id is None:
            state.topic_id = topic_id
        return state

    def save(self, state: PartitionState) -> None:
        """Write ``state`` (and its schedule's change before it), if it changed."""
        try:
            make_dirs(os.path.dirname(self.path))
            self.schedule.commit(state)
            state.merge()
            state.advance()
            raw = state.to_bytes()
            if state.fresh or raw != self.seen:
                atomic_write(self.path, raw)
                self.seen = raw
                state.fresh = False
            self._saved = state
        except BaseException:
            # The schedule file may now hold entries this state does not count, where another
            # worker will write its own: read it afresh next time.
            self.schedule.forget()
            raise
        self.schedule.collect()

    @contextmanager
    def _changing(self):
        """Hold the lock for a change of the state; if it fails, the state saved last may have been
        changed since in memory: it is not reused."""
        with self.lock:
            try:
                yield
            except BaseException:
                self._saved = None
                raise

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
        now, wall = clock_ms(), wall_ms()
        end = self.partition.last_stable_offset()  # records of open transactions wait; aborted ones read as gaps
        if not acks:
            quick = self.peek()
            if want <= 0 or (
                quick is not None and not quick.has_work(end, now, c.holder_live, wall) and quick.boot == boot_id()
            ):
                return [], False
        token = uuid.uuid4().hex[:12]
        deliveries: list[Delivery] = []
        phantoms: list[tuple[int, int]] = []
        looked = False
        with self._changing():
            state = self.load()
            finish_dead_lettering(self, state)
            for ack_token, spans in acks:
                self._apply(state, ack_token, spans, "ack", outcome if outcome is not None else Outcome())
            doomed: list[Range] = []
            scanned = 0
            _bring_back(state, self.schedule, wall, want)
            # Records are read under the lock, before the state is saved: one whose delivery time
            # has not come is scheduled instead of handed out, and the scan goes on past it, so
            # that the records behind it are not held up (and no second state change is needed).
            while want > len(deliveries) and scanned < MAX_SCAN_OFFSETS:
                # A new record may turn out to be delayed: none is taken past the schedule's room
                # (records due again are, so that a full schedule still drains).
                taken = self._take(
                    state, want - len(deliveries), token, now, lease_ms, doomed, end, self.schedule.room()
                )
                if not taken:
                    break
                looked = True
                spans = sorted((r.first, r.last, r.attempt) for r in taken)
                scanned += sum(last - first + 1 for first, last, _ in spans)
                later = self._read(spans, token, wall, deliveries, phantoms)
                if later:
                    _schedule(state, self.schedule, taken, later)
            if doomed:
                for r in doomed:
                    if r.state == ACQUIRED or r.error is None:
                        r.error = LEASE_EXPIRED.as_json()
                dead_letter(self, state, doomed)
            self.save(state)
        if phantoms:
            # Offsets without a record (a compacted topic's gaps, or records
            # retention deleted since): nothing to deliver, settled at once.
            self.settle(token, phantoms, "skip")
        return deliveries, looked and not deliveries

    def _take(
        self,
        state: PartitionState,
        want: int,
        token: str,
        now: int,
        lease_ms: int,
        doomed: list[Range],
        end: int,
        new_room: int,
    ) -> list[Range]:
        """Put up to ``want`` offsets under lease ``token``: those due again first, then new ones
        below ``end`` (the last stable offset: an open transaction's records wait); records out of
        attempts join ``doomed``.

        Offsets taken may split into as many ranges as there are offsets (delayed records among
        them are scheduled, each run a range of its own), so no more are taken than the state
        has room for below MAX_RANGES: a state that full acquires nothing until some settle.
        """
        c = self.consumer
        taken: list[Range] = []
        got = 0
        room = MAX_RANGES - len(state.ranges)
        for r in state.due(now):
            if got >= want:
                break
            if r.attempt >= c.settings.max_attempts:
                if all(r is not d for d in doomed):
                    doomed.append(r)  # its last delivery's lease ran out: nobody acknowledged it
                continue
            n = min(r.count, want - got, room - 1)  # carving may leave a piece of r after it: one more
            if n <= 0:
                break
            pieces = state.carve(r.first, r.first + n - 1)
            assert pieces is not None  # r is one whole range of the state
            room -= n + 1
            part = pieces[0]
            part.state, part.attempt, part.lease, part.owner = ACQUIRED, part.attempt + 1, token, c.owner
            part.detached = c.detach
            part.until = now + lease_ms
            taken.append(part)
            got += part.count
        n = min(end - state.next, want - got, room, new_room)
        if n > 0:
            last = state.next + n - 1
            new = Range(state.next, last, ACQUIRED, 1, token, now + lease_ms, c.owner, detached=c.detach)
            state.ranges.append(new)
            state.next = last + 1
            taken.append(new)
        return taken

    def _read(self, spans, token: str, wall: int, deliveries: list[Delivery], phantoms: list) -> list[list[int]]:
        """Read the records of ``spans`` ((first, last, attempt), in order): those due join
        ``deliveries``, offsets without a record ``phantoms``; returns the runs of records whose
        delivery time is later than ``wall``, as [first, last, earliest time] lists."""
        later: list[list[int]] = []
        for first, last, attempt in spans:
            expect = first
            own = len(later)  # runs from here on are this span's: a run never joins two spans
            for b, lo, hi in self.records.read(first, last, values=False):
                offsets = b.offsets()
                waiting = _waiting(b, lo, hi, wall)
                if waiting is None or (isinstance(waiting, list) and None in waiting):
                    b.load_values()  # some record of the slice is handed out
                if b.offset_deltas is None and not isinstance(waiting, list):  # dense: a gap can only come before it
                    if offsets[lo] > expect:
                        phantoms.append((expect, offsets[lo] - 1))
                    expect = offsets[hi - 1] + 1
                    if waiting is None:
                        deliveries += [Delivery(self.number, offsets[i], attempt, token, b, i) for i in range(lo, hi)]
                    elif len(later) > own and later[-1][1] + 1 == offsets[lo]:
                        later[-1][1], later[-1][2] = offsets[hi - 1], min(later[-1][2], waiting)
                    else:
                        later.append([offsets[lo], offsets[hi - 1], waiting])
                    continue
                if isinstance(waiting, int):
                    waiting = [waiting] * (hi - lo)
                for i in range(lo, hi):
                    offset = offsets[i]
                    if offset > expect:
                        phantoms.append((expect, offset - 1))
                    expect = offset + 1
                    at = None if waiting is None else waiting[i - lo]
                    if at is None:
                        deliveries.append(Delivery(self.number, offset, attempt, token, b, i))
                    elif len(later) > own and later[-1][1] + 1 == offset:
                        run = later[-1]
                        run[1], run[2] = offset, min(run[2], at)
                    else:
                        later.append([offset, offset, at])
            if expect <= last:
                phantoms.append((expect, last))
        return later

    def settle(
        self, token: str, spans: list[tuple[int, int]], how: str, failure: Failure | None = None, lease_ms: int = 0
    ) -> Outcome:
        """Settle offsets ``spans`` acquired under ``token``: ``ack``, ``nack`` (retry or, at the last
        attempt, dead-letter), ``dead`` (dead-letter now), ``release`` (again at once, the attempt
        not counted), ``extend`` (the lease by ``lease_ms``), ``skip`` (no record there)."""
        out = Outcome()
        with self._changing():
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
        spans = sorted(spans)
        if any(a[1] >= b[0] for a, b in zip(spans, spans[1:])):
            spans = _joined(spans)
        # Most often the spans are the very ranges the lease holds (an acquisition acknowledged whole).
        whole = {(r.first, r.last): r for r in state.ranges if r.lease == token and r.state == ACQUIRED}
        found = [r for r in map(whole.get, spans) if r is not None]
        held: list[Range]
        missing: list[tuple[int, int]]
        if len(found) == len(spans):
            held, missing = found, []
        else:
            held, missing = state.carve_all(spans, token)
        out.not_held += [(self.number, first, last, token) for first, last in missing]
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
