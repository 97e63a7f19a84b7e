"""A member of a consumer group on a Kafka cluster (kq.groups.consumer.GroupConsumer's counterpart): it
resumes at the group's committed offsets, commits only what was marked, follows the coordinator's
assignments (eager or cooperative), and leaves the group on close.
"""

from __future__ import annotations

import time

from ..errors import ClusterError
from ..errors import warn as kq_warn
from ..groups.store import CLAIM_PATIENCE_SECONDS, COMMIT_SECONDS
from .kafka_reader import SNAPSHOT, KafkaReader


class KafkaGroupReader(KafkaReader):
    """A member of a consumer group on the cluster, reading ``topic`` (kq.groups.consumer.GroupConsumer's counterpart)."""

    def __init__(
        self,
        backend,
        topic: str,
        group: str,
        follow: bool,
        reset: str,
        isolation: str = "read_committed",
        commits: bool = True,
    ):
        super().__init__(backend, topic, follow, group, isolation=isolation)
        self.commits = commits  # False: a transaction commits the offsets (kq.backends.kafka_transaction)
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
        if not self.commits:
            self.marks.clear()
            return
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
