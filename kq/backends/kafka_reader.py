"""Records from a Kafka cluster: readers and group members (kq.consumer's and kq.groups' counterparts).

They behave as the data directory's:

- A reader without ``follow`` stops at each partition's end as it was when
  reading began: the high watermark of the partition's first fetch (the
  offset Kafka's ListOffsets "latest" names too), or a range's stop.
- A group member resumes at the group's committed offsets, commits only what
  was marked (written out), and leaves the group on close. A committed offset
  outside its partition moves where ``reset`` says, with the same warning as
  on a data directory. Where ``reset`` put a member without a committed
  offset is committed, so that "latest" means "from when the group started".

confluent-kafka's ``consume(n, timeout)`` waits the whole timeout unless n
messages come, so rounds take what is queued without waiting and block in
``poll`` only when nothing is.
"""

from __future__ import annotations

import time

from ..consumer import Slice
from ..engine.batch import Record
from ..errors import ClusterError
from ..errors import warn as kq_warn
from ..groups.consumer import resume_offset
from ..groups.store import CLAIM_PATIENCE_SECONDS, COMMIT_SECONDS
from ..offsetspec import BEGINNING, END, FROM_END, TIMESTAMP, OffsetRange, OffsetSpec

POLL_SECONDS = 0.1  # how long a reader blocks for the next message when none is queued
ROUND_MESSAGES = 10_000  # messages taken from librdkafka's queue per round
_NO_ERROR = {type(None)}
SNAPSHOT = "snapshot"  # a stop: the partition's end when reading began (its first fetch's high watermark)

CONSUMER_DEFAULTS = {
    # librdkafka backs off a whole second when its queue is full of records
    # not yet taken; a reader that writes them out quickly should not wait.
    "fetch.queue.backoff.ms": 1,
}
READ_TO_END_DEFAULTS = {
    # A reader learns it is at the end when a fetch comes back empty, after
    # waiting up to this long for records: a reader that exits there waits less.
    "fetch.wait.max.ms": 100,
}
CONSUMER_FIXED = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    # An offset outside a partition comes back as an event, decided here
    # (clamped, or reset with a warning) rather than silently by librdkafka.
    "auto.offset.reset": "error",
}


class MessageBatch:
    """Records of one partition from one round, shaped like kq.engine.batch.RecordBatch for the writers."""

    __slots__ = ("messages", "count", "base_offset", "next_offset", "last_offset_delta", "_values", "_offsets")

    def __init__(self, messages: list):
        self.messages = messages
        self.count = len(messages)
        self.base_offset = messages[0].offset()
        last = messages[-1].offset()
        self.next_offset = last + 1
        self.last_offset_delta = last - self.base_offset
        self._values: list | None = None
        # Offsets are dense unless the topic is compacted or transactional.
        self._offsets = None if last - self.base_offset + 1 == self.count else [m.offset() for m in messages]

    @property
    def values(self) -> list:
        if self._values is None:
            from confluent_kafka import Message

            self._values = list(map(Message.value, self.messages))
        return self._values

    def offsets(self):
        if self._offsets is None:
            return range(self.base_offset, self.next_offset)
        return self._offsets

    def offset_at(self, index: int) -> int:
        if index >= self.count:
            return self.next_offset
        return self.base_offset + index if self._offsets is None else self._offsets[index]

    def records(self, start: int = 0, stop: int | None = None):
        for m in self.messages[start : self.count if stop is None else stop]:
            headers = m.headers()
            yield Record(
                m.offset(),
                m.timestamp()[1],
                m.key(),
                m.value(),
                list(headers) if headers else [],
            )


class KafkaReader:
    """Rounds of records from partitions of one topic (kq.backends.base.Reader).

    ``positions`` holds each partition's next offset, ``stops`` where it
    ends: an offset, SNAPSHOT (until the first fetch tells the end), or None
    (following).
    """

    def __init__(self, backend, topic: str, follow: bool, group: str | None = None):
        self.backend = backend
        self.topic = topic
        self.follow = follow
        self.ck = backend.ck
        defaults = CONSUMER_DEFAULTS if follow else {**CONSUMER_DEFAULTS, **READ_TO_END_DEFAULTS}
        config = backend.client_config(defaults, **CONSUMER_FIXED, **{"group.id": group or "kq-reader"})
        self.consumer = backend.make("Consumer", config)
        self.positions: dict[int, int | None] = {}
        self.stops: dict[int, int | str | None] = {}
        self.starts: dict[int, int] = {}  # records below these were not asked for
        self.finished: set[int] = set()
        self.timed_out = False
        self.who: str | None = None
        self.group: str | None = None  # the group whose offsets this reads from (never commits to)
        self.reset = "earliest"
        self.incremental = False  # assign() adds to the assignment rather than replacing it
        self._closed = False
        self._last_error: tuple | None = None

    # ------------------------------------------------------------------ set-up

    @classmethod
    def from_spec(cls, backend, topic: str, partitions: list[int], offsets: OffsetRange, follow: bool) -> KafkaReader:
        reader = cls(backend, topic, follow)
        starts = reader.resolve(offsets.start, partitions)
        stops: dict[int, int | str | None]
        if offsets.stop is None:
            stops = dict.fromkeys(partitions, None if follow else SNAPSHOT)
        else:
            stops = dict(reader.resolve(offsets.stop, partitions, stop=True))
        reader.assign({p: (starts[p], stops[p]) for p in partitions})
        return reader

    @classmethod
    def for_group(cls, backend, topic: str, partitions: list[int], group: str, reset: str, follow: bool) -> KafkaReader:
        """Read from where ``group`` would resume, without joining it or committing."""
        reader = cls(backend, topic, follow, group)
        reader.group, reader.reset = group, reset
        reader.who = f"group '{group}'"
        starts = reader.committed(partitions)
        starts.update(reader.reset_offsets([p for p in partitions if p not in starts]))
        stop = None if follow else SNAPSHOT
        reader.assign({p: (starts[p], stop) for p in partitions})
        return reader

    def resolve(self, spec: OffsetSpec, partitions: list[int], stop: bool = False) -> dict[int, int | str]:
        """Each partition's offset for ``spec``, or SNAPSHOT for a stop at the end as reading begins.

        Offsets are looked up here rather than left to librdkafka as logical
        ones (beginning, end): its own lookup delays the first fetch by half a second.
        """
        if spec.kind == END and stop:
            return dict.fromkeys(partitions, SNAPSHOT)
        if spec.kind == BEGINNING:
            return self.backend.start_offsets(self.topic, partitions)
        if spec.kind == END:
            return self.backend.end_offsets(self.topic, partitions)
        if spec.kind == FROM_END:
            starts = self.backend.start_offsets(self.topic, partitions)
            ends = self.backend.end_offsets(self.topic, partitions)
            return {p: max(starts[p], ends[p] - spec.value) for p in partitions}
        if spec.kind == TIMESTAMP:
            from confluent_kafka.admin import OffsetSpec as Spec

            found = self.backend.list_offsets(self.topic, partitions, Spec.for_timestamp(spec.value))
            missing = [p for p in partitions if found[p] < 0]  # no record that late: the end
            ends = self.backend.end_offsets(self.topic, missing) if missing and not stop else {}
            return {p: found[p] if found[p] >= 0 else ends.get(p, SNAPSHOT) for p in partitions}
        return dict.fromkeys(partitions, spec.value)

    def reset_offsets(self, partitions: list[int]) -> dict[int, int]:
        """Where ``reset`` (earliest, latest) starts partitions the group has no offset for."""
        if not partitions:
            return {}
        if self.reset == "earliest":
            return self.backend.start_offsets(self.topic, partitions)
        return self.backend.end_offsets(self.topic, partitions)

    def assign(self, plan: dict[int, tuple]) -> None:
        """Read each partition from its start to its stop: {partition: (start, stop)}."""
        tps = []
        for p, (start, stop) in plan.items():
            known = start if start >= 0 else None
            self.positions[p] = known
            if known is not None:
                self.starts[p] = known
            self.stops[p] = stop
            tps.append(self.ck.TopicPartition(self.topic, p, start))
        if self.incremental:
            self.consumer.incremental_assign(tps)
        else:
            self.consumer.assign(tps)
        for p in plan:
            self._check_finished(p)

    def committed(self, partitions) -> dict[int, int]:
        tps = [self.ck.TopicPartition(self.topic, p) for p in partitions]
        try:
            found = self.consumer.committed(tps, timeout=self.backend.timeout)
        except self.ck.KafkaException as exc:
            raise self.backend.error(exc, f"fetching the offsets of group '{self.group}'", self.topic) from None
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    # ------------------------------------------------------------------ Reader

    @property
    def partitions(self) -> list[int]:
        return sorted(self.stops)

    def mark(self, partition: int, offset: int) -> None:
        pass

    def commit(self) -> None:
        pass

    def stop_partition(self, partition: int) -> None:
        self._finish(partition)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.consumer.close()

    def done(self) -> bool:
        return len(self.finished) == len(self.stops)

    def rounds(self, idle_timeout: float | None = None):
        from ..consumer import IdleClock

        idle = IdleClock(idle_timeout)
        while not self.done():
            slices = self.poll()
            if slices:
                idle.reset()
                yield slices
            elif idle.expired():
                self.timed_out = True
                return
            else:
                self._check_stalled(idle)

    # ------------------------------------------------------------------ polling

    def poll(self) -> list[Slice]:
        """One round: what librdkafka has queued now, or within POLL_SECONDS (possibly nothing)."""
        messages = self.consumer.consume(ROUND_MESSAGES, 0)
        if not messages:
            first = self.consumer.poll(POLL_SECONDS)
            if first is None:
                self._check_all_finished()
                return []
            messages = [first, *self.consumer.consume(ROUND_MESSAGES - 1, 0)]
        # Per message, only C calls (map over Message's methods): a round is up to 10,000 records.
        errors = list(map(self.ck.Message.error, messages))
        events = []
        # (By type: a KafkaError compared with None raises inside confluent-kafka.)
        if set(map(type, errors)) != _NO_ERROR:  # end-of-partition events, errors: handled after the records
            events = [m for m, e in zip(messages, errors) if e is not None]
            messages = [m for m, e in zip(messages, errors) if e is None]
        by_partition: dict[int, list] = {}
        if messages:
            partitions = list(map(self.ck.Message.partition, messages))
            if partitions.count(partitions[0]) == len(partitions):
                by_partition[partitions[0]] = messages
            else:
                for m, p in zip(messages, partitions):
                    by_partition.setdefault(p, []).append(m)
        for p in [p for p in by_partition if p in self.finished or p not in self.stops]:
            del by_partition[p]
        out = []
        for p, found in by_partition.items():
            found = self._within(p, found)
            if found:
                out.append(Slice(p, MessageBatch(found), 0, len(found)))
                self.positions[p] = found[-1].offset() + 1
        for m in events:
            self._event(m)
        self._check_all_finished()
        return out

    def _within(self, p: int, found: list) -> list:
        """The records of ``found`` between the partition's start and stop."""
        start = self.starts.get(p)
        if start is not None and found[0].offset() < start:
            found = [m for m in found if m.offset() >= start]
        stop = self.stops[p]
        if isinstance(stop, int) and found and found[-1].offset() >= stop:
            found = [m for m in found if m.offset() < stop]
            self.positions[p] = stop
            self._finish(p)
        return found

    def _reset_at(self, p: int, offset: int) -> None:
        """A group's offset was outside the partition and moved to ``offset`` (a member commits it)."""

    def _event(self, m) -> None:
        err = m.error()
        code = err.code()
        KafkaError = self.ck.KafkaError
        p = m.partition()
        if code == KafkaError._PARTITION_EOF:
            if p in self.stops and p not in self.finished:
                self.positions[p] = m.offset()
                if not self.follow:
                    self._finish(p)  # nothing more below the stop, as the end stood at the first fetch
            return
        if code == KafkaError._AUTO_OFFSET_RESET:
            if p in self.stops and p not in self.finished:
                self._out_of_range(p, m.offset())
            return
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART:
            from ..errors import TopicNotFound

            raise TopicNotFound(self.topic)
        if err.fatal() or code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED):
            raise self.backend.error(self.ck.KafkaException(err), f"reading '{self.topic}'", self.topic)
        # Anything else (a broker restarting, a connection lost) librdkafka recovers from by itself.
        self._last_error = (time.monotonic(), err)

    def _out_of_range(self, p: int, asked: int) -> None:
        """``asked`` is outside the partition: clamp to its start, or (past its end) stop or wait there.

        Where a group's offset is outside, the group resumes where ``reset``
        says, with the data directory's warning.
        """
        if self.group is not None:
            start, warning = resume_offset(_PartitionView(self.backend, self.topic, p), asked, self.reset, self.group)
            if warning:
                kq_warn(warning)
            self._seek(p, start)
            self._reset_at(p, start)
            return
        start = self.backend.start_offsets(self.topic, [p])[p]
        end = self.backend.end_offsets(self.topic, [p])[p]
        if asked < start:
            self._seek(p, start)
        elif self.follow:
            self.starts[p] = asked  # records from the end up to ``asked`` are not wanted
            self._seek(p, end)
        else:
            self.positions[p] = asked
            self._finish(p)

    def _seek(self, p: int, offset: int) -> None:
        self.positions[p] = offset
        try:
            self.consumer.seek(self.ck.TopicPartition(self.topic, p, offset))
        except self.ck.KafkaException:
            # Not fetching (the error state an offset out of range leaves): assigning anew starts it there.
            if self.incremental:
                self.consumer.incremental_unassign([self.ck.TopicPartition(self.topic, p)])
                self.consumer.incremental_assign([self.ck.TopicPartition(self.topic, p, offset)])
                return
            self.consumer.assign(
                [
                    self.ck.TopicPartition(self.topic, q, position)
                    for q, position in sorted(self.positions.items())
                    if q not in self.finished and position is not None
                ]
            )

    def _finish(self, p: int) -> None:
        if p in self.stops and p not in self.finished:
            self.finished.add(p)
            try:
                self.consumer.pause([self.ck.TopicPartition(self.topic, p)])
            except self.ck.KafkaException:
                pass  # no longer assigned: nothing to pause

    def _check_finished(self, p: int) -> None:
        if p in self.finished:
            return
        stop, position = self.stops.get(p), self.positions.get(p)
        if stop == SNAPSHOT:
            # The first fetch's high watermark: the end as it stood when reading began.
            _, high = self.consumer.get_watermark_offsets(self.ck.TopicPartition(self.topic, p), cached=True)
            if high < 0:
                return
            stop = self.stops[p] = high
        if isinstance(stop, int) and position is not None and position >= stop:
            self._finish(p)

    def _check_all_finished(self) -> None:
        if not self.follow or any(s is not None for s in self.stops.values()):
            for p in list(self.stops):
                self._check_finished(p)

    def _check_stalled(self, idle) -> None:
        """A reader that should end but hears nothing, while librdkafka reports errors, gives up."""
        if self.follow or self._last_error is None:
            return
        since, err = self._last_error
        if time.monotonic() - idle.since > self.backend.timeout and since > idle.since:
            raise self.backend.error(self.ck.KafkaException(err), f"reading '{self.topic}'", self.topic)


class KafkaGroupReader(KafkaReader):
    """A member of a consumer group on the cluster, reading ``topic`` (kq.groups.consumer.GroupConsumer's counterpart)."""

    def __init__(self, backend, topic: str, group: str, follow: bool, reset: str):
        super().__init__(backend, topic, follow, group)
        self.group, self.reset = group, reset
        self.who = f"group '{group}'"
        self.assigned: set[int] | None = None  # None until the coordinator first assigns partitions
        self.marks: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._last_commit = 0.0
        # Under the cooperative protocol a member's assignment grows and shrinks; under the eager one it is replaced.
        self.incremental = "cooperative" in backend.settings.get("partition.assignment.strategy", "")
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    # librdkafka calls these from inside poll/consume.
    def _on_assign(self, consumer, tps) -> None:
        partitions = [tp.partition for tp in tps]
        committed = self.committed(partitions) if tps else {}
        self._forget(partitions)
        reset = self.reset_offsets([p for p in partitions if p not in committed])
        stop = None if self.follow else SNAPSHOT
        self._committed.update(committed)
        self.marks.update(reset)  # where --reset put the group is committed, as on a data directory
        self.assign({p: (committed[p] if p in committed else reset[p], stop) for p in partitions})
        self.assigned = (self.assigned or set()) | set(partitions)

    def _on_revoke(self, consumer, tps) -> None:
        gone = [tp.partition for tp in tps]
        self.commit(gone)
        self._forget(gone)
        if self.assigned is not None:
            self.assigned -= set(gone)

    def _on_lost(self, consumer, tps) -> None:
        gone = [tp.partition for tp in tps]
        self._forget(gone)
        if self.assigned is not None:
            self.assigned -= set(gone)

    def _forget(self, partitions) -> None:
        for p in partitions:
            self.positions.pop(p, None)
            self.stops.pop(p, None)
            self.starts.pop(p, None)
            self.finished.discard(p)
            self.marks.pop(p, None)

    def _reset_at(self, p: int, offset: int) -> None:
        self.marks[p] = offset

    def mark(self, partition: int, offset: int) -> None:
        if partition in self.stops:
            self.marks[partition] = offset

    def commit(self, partitions=None) -> None:
        """Commit the marks that moved (of ``partitions``, or all)."""
        self._last_commit = time.monotonic()
        wanted = [
            (p, o)
            for p, o in self.marks.items()
            if (partitions is None or p in partitions) and self._committed.get(p) != o
        ]
        if not wanted:
            return
        tps = [self.ck.TopicPartition(self.topic, p, o) for p, o in sorted(wanted)]
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
        except self.ck.KafkaException as exc:
            err = exc.args[0]
            KafkaError = self.ck.KafkaError
            if err.code() in (
                KafkaError.REBALANCE_IN_PROGRESS,
                KafkaError.ILLEGAL_GENERATION,
                KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError._NO_OFFSET,
            ):
                # The partitions moved to another member: it reads them again from the last commit.
                kq_warn(
                    f"group '{self.group}' could not commit offsets of '{self.topic}' ({err.str()}); "
                    "their records will be delivered again"
                )
                return
            raise self.backend.error(
                exc, f"committing offsets of group '{self.group}'", self.topic, self.group
            ) from None
        self._committed.update(wanted)

    def done(self) -> bool:
        return False  # rounds() decides, with the assignment in view

    def rounds(self, idle_timeout: float | None = None):
        from ..consumer import IdleClock

        idle = IdleClock(idle_timeout)
        started = time.monotonic()
        join_deadline = started + self.backend.timeout + _session_seconds(self.backend.settings)
        joined = False
        patience = None
        while True:
            now = time.monotonic()
            if now - self._last_commit >= COMMIT_SECONDS:
                self.commit()
            slices = self.poll()
            if slices:
                idle.reset()
                yield slices
                continue
            self.commit()  # caught up: what was written is committed before any wait
            if self.assigned is None:
                if time.monotonic() > join_deadline:
                    raise ClusterError(
                        self.backend.brokers,
                        f"group '{self.group}' was given no partitions of '{self.topic}' by the group coordinator "
                        f"within {join_deadline - started:.0f} s",
                    )
                self._check_stalled(idle)
                continue
            if not joined:
                # --timeout counts from the assignment: joining a group takes a cluster seconds
                # (Kafka's group.initial.rebalance.delay.ms is 3 s), which a directory never makes anyone wait.
                joined = True
                idle.reset()
            if idle.expired():
                self.timed_out = True
                return
            if not self.follow and self.assigned <= self.finished:
                if self.assigned:
                    return
                # Every partition is another member's: wait a little for one to be handed over.
                patience = patience or time.monotonic() + CLAIM_PATIENCE_SECONDS
                if time.monotonic() > patience:
                    return

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.commit()
        finally:
            super().close()  # leaves the group


def _session_seconds(settings: dict) -> float:
    try:
        return float(settings.get("session.timeout.ms", 45000)) / 1000
    except ValueError:
        return 45.0


class _PartitionView:
    """A cluster partition as kq.groups.consumer.resume_offset asks about it."""

    def __init__(self, backend, topic: str, number: int):
        self.backend, self.topic, self.number = backend, topic, number

    def start_offset(self) -> int:
        return self.backend.start_offsets(self.topic, [self.number])[self.number]

    def end_offset(self) -> int:
        return self.backend.end_offsets(self.topic, [self.number])[self.number]
