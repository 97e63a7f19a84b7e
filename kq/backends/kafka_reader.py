"""Records from a Kafka cluster: readers and group members (kq.consumer's and kq.groups.store's counterparts;
the group member, kq.backends.kafka_group_reader, is this reader under a group's assignments).

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
from ..errors import warn as kq_warn
from ..groups.consumer import resume_offset
from ..offsetspec import BEGINNING, END, FROM_END, TIMESTAMP, OffsetRange, OffsetSpec
from .kafka import ClusterPartition
from .kafka_batch import MessageBatch

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


class KafkaReader:
    """Rounds of records from partitions of one topic (kq.backends.base.Reader).

    ``positions`` holds each partition's next offset, ``stops`` where it
    ends: an offset, SNAPSHOT (until the first fetch tells the end), or None
    (following).
    """

    def __init__(self, backend, topic: str, follow: bool, group: str | None = None, isolation: str = "read_committed"):
        self.backend = backend
        self.topic = topic
        self.follow = follow
        self.ck = backend.ck
        defaults = CONSUMER_DEFAULTS if follow else {**CONSUMER_DEFAULTS, **READ_TO_END_DEFAULTS}
        config = backend.client_config(
            {**defaults, "isolation.level": isolation}, **CONSUMER_FIXED, **{"group.id": group or "kq-reader"}
        )
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
    def from_spec(
        cls,
        backend,
        topic: str,
        partitions: list[int],
        offsets: OffsetRange,
        follow: bool,
        isolation: str = "read_committed",
    ) -> KafkaReader:
        reader = cls(backend, topic, follow, isolation=isolation)
        starts = resolve(backend, topic, offsets.start, partitions)
        stops: dict[int, int | str | None]
        if offsets.stop is None:
            stops = dict.fromkeys(partitions, None if follow else SNAPSHOT)
        else:
            stops = dict(resolve(backend, topic, offsets.stop, partitions, stop=True))
        reader.assign({p: (starts[p], stops[p]) for p in partitions})
        return reader

    @classmethod
    def for_group(
        cls,
        backend,
        topic: str,
        partitions: list[int],
        group: str,
        reset: str,
        follow: bool,
        isolation: str = "read_committed",
    ) -> KafkaReader:
        """Read from where ``group`` would resume, without joining it or committing."""
        reader = cls(backend, topic, follow, group, isolation=isolation)
        reader.group, reader.reset = group, reset
        reader.who = f"group '{group}'"
        starts = reader.committed(partitions)
        starts.update(reader.reset_offsets([p for p in partitions if p not in starts]))
        stop = None if follow else SNAPSHOT
        reader.assign({p: (starts[p], stop) for p in partitions})
        return reader

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
            start, warning = resume_offset(ClusterPartition(self.backend, self.topic, p), asked, self.reset, self.group)
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


def resolve(backend, topic: str, spec: OffsetSpec, partitions: list[int], stop: bool = False) -> dict[int, int | str]:
    """Each partition's offset for ``spec``, or SNAPSHOT for a stop at the end as reading begins.

    Offsets are looked up here rather than left to librdkafka as logical
    ones (beginning, end): its own lookup delays the first fetch by half a second.
    """
    if spec.kind == END and stop:
        return dict.fromkeys(partitions, SNAPSHOT)
    if spec.kind == BEGINNING:
        return backend.start_offsets(topic, partitions)
    if spec.kind == END:
        return backend.end_offsets(topic, partitions)
    if spec.kind == FROM_END:
        starts = backend.start_offsets(topic, partitions)
        ends = backend.end_offsets(topic, partitions)
        return {p: max(starts[p], ends[p] - spec.value) for p in partitions}
    if spec.kind == TIMESTAMP:
        from confluent_kafka.admin import OffsetSpec as Spec

        found = backend.list_offsets(topic, partitions, Spec.for_timestamp(spec.value))
        missing = [p for p in partitions if found[p] < 0]  # no record that late: the end
        ends = backend.end_offsets(topic, missing) if missing and not stop else {}
        return {p: found[p] if found[p] >= 0 else ends.get(p, SNAPSHOT) for p in partitions}
    return dict.fromkeys(partitions, spec.value)
