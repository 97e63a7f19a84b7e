"""Consuming a topic as a member of a group (``GroupConsumer``), and where a group resumes in a partition."""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..consumer import POLL_SECONDS, Consumer, IdleClock, Slice
from ..delivery_time import deliver_at, now_ms
from ..engine.cursor import READ_COMMITTED
from ..engine.datadir import DataDir
from ..engine.names import check_name
from ..engine.topic import Topic
from ..errors import UsageError
from ..errors import warn as kq_warn
from .member import Member
from .store import CLAIM_PATIENCE_SECONDS, COMMIT_SECONDS, REBALANCE_SECONDS, Groups


def holds_delayed(slices: list[Slice]) -> bool:
    """Whether any of the records is delayed (kq.delivery_time) to a time still to come."""
    now = now_ms()
    for s in slices:
        headers = getattr(s.batch, "headers", None)  # a RecordBatch's column
        if headers is not None and any(
            (at := deliver_at(h)) is not None and at > now for h in headers[s.start : s.stop] if h
        ):
            return True
    return False


def initial_offset(partition, reset: str) -> int:
    return partition.start_offset() if reset == "earliest" else partition.end_offset()


class GroupConsumer:
    """Consume a topic as a member of a group, committing what the caller marks.

    The caller writes each round of slices out, then calls ``mark`` with the
    offset after what it wrote; marks are committed when the next round is
    asked for, before a partition is handed to another member, and on
    ``close``. So a commit never covers a record that was not written out.
    """

    def __init__(
        self,
        data: DataDir,
        topic: Topic,
        group: str,
        follow: bool = False,
        reset: str = "earliest",
        poll_seconds: float = POLL_SECONDS,
        warn=None,
        isolation: str = READ_COMMITTED,
        commits: bool = True,
        before_resume=None,
    ):
        if reset not in ("earliest", "latest"):
            raise UsageError(f"reset must be 'earliest' or 'latest', not {reset!r}")
        self.groups = Groups(data)
        self.topic = topic
        self.group = check_name(group, "group")
        self.follow = follow
        self.reset = reset
        self.poll_seconds = poll_seconds
        self.member = Member(self.groups, group, topic.name)
        self.consumer = Consumer(topic, follow=follow, poll_seconds=poll_seconds, isolation=isolation)
        self.consumer.who = f"group '{self.group}'"
        self.timed_out = False
        self.warn = warn or kq_warn
        # ``commits=False``: the caller commits the group's offsets itself (in a transaction,
        # kq.ops.exactly_once); ``before_resume()`` runs before a claimed partition's offset is read.
        self.commits = commits
        self.before_resume = before_resume
        self._marks: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._wanted: set[int] = set()
        self._last_commit = 0.0
        self._warned_delayed = False

    def mark(self, partition: int, offset: int) -> None:
        if partition in self.member.owned:
            self._marks[partition] = offset

    def stop_partition(self, partition: int) -> None:
        """Read no more of ``partition`` in this run; it stays this member's (claimed) until it leaves."""
        self.consumer.remove(partition)

    def commit(self, partitions=None) -> None:
        self._last_commit = time.monotonic()
        if not self.commits:
            self._marks.clear()
            return
        for p in list(self._marks) if partitions is None else partitions:
            offset = self._marks.get(p)
            if offset is not None and offset != self._committed.get(p):
                self.groups.commit(self.group, self.topic, p, offset)
                self._committed[p] = offset
            # Forgotten only once committed: a SIGTERM inside the write above
            # leaves the mark for close() to commit.
            if self._marks.get(p) == offset:
                self._marks.pop(p, None)

    def passed(self, partition: int, offset: int) -> int:
        """Where a caller that handled everything up to ``offset`` may commit: past the markers and aborted
        records the reader left out after it, when ``offset`` is the end of what it was handed."""
        if self.consumer.delivered.get(partition) == offset:
            return max(offset, self.consumer.positions.get(partition, offset))
        return offset

    def _mark_passed(self) -> None:
        """Caught up: where everything handed out was written (marked), move the mark past the batches
        the reader left out after it (transaction markers, aborted records), as a Kafka consumer's position moves."""
        for p, position in self.consumer.positions.items():
            delivered = self.consumer.delivered.get(p)
            if (
                p in self.member.owned
                and position != delivered
                and self._marks.get(p, self._committed.get(p)) == delivered
            ):
                self._marks[p] = position

    def _rebalance(self) -> None:
        self._wanted = self.member.assignment(self.topic.partition_count)
        for p in sorted(self.member.owned - self._wanted):
            self.commit([p])
            self.consumer.remove(p)
            self.member.release(p)
        claimed = [p for p in sorted(self._wanted - self.member.owned) if self.member.claim(p)]
        if claimed and self.before_resume is not None:
            self.before_resume()  # after the claims: whoever held them before is gone or done
        for p in claimed:
            committed = self.groups.committed(self.group, self.topic).get(p)
            start, warning = resume_offset(self.topic.partition(p), committed, self.reset, self.group)
            if warning:
                self.warn(warning)
            self._committed[p] = committed  # type: ignore[assignment]
            self.consumer.add(p, start)
            if start != committed:
                # Remember where --reset put the group, as Kafka does,
                # so that `latest` means "from when the group started".
                self._marks[p] = start

    def rounds(self, idle_timeout: float | None = None) -> Iterator[list[Slice]]:
        """Rounds of slices from the partitions this member owns (see Consumer.rounds)."""
        self.member.join()
        next_rebalance = 0.0
        patience = time.monotonic() + CLAIM_PATIENCE_SECONDS
        idle = IdleClock(idle_timeout)
        while True:
            now = time.monotonic()
            self.member.touch()
            if now - self._last_commit >= COMMIT_SECONDS:
                self.commit()
            if now >= next_rebalance:
                self._rebalance()
                next_rebalance = now + REBALANCE_SECONDS
            slices = self.consumer.poll()
            if slices:
                idle.reset()
                if not self._warned_delayed and holds_delayed(slices):
                    self._warned_delayed = True
                    self.warn(
                        f"group '{self.group}' on {self.topic.name}: read records delayed for share groups "
                        "(a kq.deliver-at header) before their time; a consumer group keeps the log's order "
                        "and ignores delivery times"
                    )
                yield slices
                continue
            self._mark_passed()
            self.commit()  # caught up: what was written is committed before any wait
            if self.follow:
                self.consumer.settle_if_held()
            if idle.expired():
                self.timed_out = True
                return
            if not self.follow and self.consumer.finished():
                if self._wanted <= self.member.owned or now > patience:
                    return
            idle.pause(self.poll_seconds)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self.consumer.close()
            self.member.leave()


def group_start_offsets(
    data: DataDir, topic: Topic, group: str, reset: str = "earliest", warn=kq_warn
) -> dict[int, int]:
    """Where the group would resume on each partition (for reading without joining)."""
    committed = Groups(data).committed(group, topic)
    starts = {}
    for p in range(topic.partition_count):
        starts[p], warning = resume_offset(topic.partition(p), committed.get(p), reset, group)
        if warning:
            warn(warning)
    return starts


def resume_offset(partition, committed: int | None, reset: str, group: str) -> tuple[int, str | None]:
    """Where a group resumes in a partition, and what to warn about.

    Its committed offset, unless it has none or the offset lies outside the
    partition (retention deleted what it had not read; the topic was deleted
    and re-created): then where ``reset`` says, as Kafka's auto.offset.reset
    does, with a warning naming the group, partition and offsets. Never a
    silent skip.
    """
    if committed is None:
        return initial_offset(partition, reset), None
    first, end = partition.start_offset(), partition.end_offset()
    if first <= committed <= end:
        return committed, None
    start = initial_offset(partition, reset)
    where = f"group '{group}' resumes {partition.topic}/{partition.number} at offset {start} (reset: {reset})"
    if committed < first:
        return start, (
            f"{where}: {first - committed} message(s) after its committed offset {committed} "
            "were deleted by retention or trim"
        )
    return start, (
        f"{where}: its committed offset {committed} lies past the partition's end offset {end} "
        "(was the topic deleted and re-created?)"
    )
