"""The backend interface: a place that has topics, partitions, groups and offsets.

Every ``kq`` command talks to one of these and nothing else, so that the same
command body serves a data directory (``kq.backends.local``) and a Kafka
cluster (``kq.backends.kafka``). The shape follows a Kafka client's:

- topics have partitions and a config (kq's setting names: ``segment_bytes``,
  ``retention_ms``, ``retention_bytes``, ``cleanup``, ...);
- records are produced as (key, value, headers, partition, timestamp) and read
  from offsets, in rounds of ``Slice``\\ s of batches (kq.consumer);
- offsets are found by time (ListOffsets); groups commit, fetch, list,
  describe and delete offsets.

Readers and producers are the objects described by ``Reader`` and
``Producer`` below; the local ones are kq.consumer.Consumer,
kq.groups.consumer.GroupConsumer and kq.producer.Producer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import TopicNotFound, UnsupportedByBackend
from ..offsetspec import BEGINNING, OffsetRange, OffsetSpec


@dataclass
class PartitionInfo:
    partition: int
    start_offset: int
    end_offset: int
    size: int | None = None  # bytes stored; None where the backend cannot tell
    uncompressed_size: int | None = None  # what ``size`` would be without compression at rest; None: unknown

    @property
    def messages(self) -> int:
        return self.end_offset - self.start_offset


@dataclass
class TopicInfo:
    name: str
    partitions: list[PartitionInfo]
    config: dict = field(default_factory=dict)
    id: str | None = None  # where the backend tells it cheaply (a data directory's topic.json)


@dataclass
class GroupTopicOffsets:
    """A consumer group on one topic, as ``Backend.group_overview`` reports it."""

    topic: str
    committed: dict[int, int]  # by partition (absent: none)
    committed_at: dict[int, int]  # when each was committed (ms since the epoch), where the place records it
    members: list[str]  # ids of the live members reading the topic


class Reader(Protocol):
    """Rounds of records from some partitions of one topic (a plain reader or a group member)."""

    timed_out: bool  # rounds() ended because ``idle_timeout`` passed without a record

    def rounds(self, idle_timeout: float | None = None) -> Iterator[list]:
        """Non-empty lists of kq.consumer.Slice, until the end (forever when following)."""

    def mark(self, partition: int, offset: int) -> None:
        """Records before ``offset`` were written out: a group member may commit them."""

    def commit(self) -> None:
        """Commit what was marked now (a group member; nothing otherwise)."""

    def stop_partition(self, partition: int) -> None:
        """Read no more of ``partition`` in this run (its marks stay as they are)."""

    def close(self) -> None:
        """Commit what was marked, leave the group, release everything."""


class Producer(Protocol):
    @property
    def sent(self) -> int:
        """Records handed to the producer."""

    @property
    def written(self) -> int:
        """Records acknowledged (appended, or acknowledged by the broker)."""

    def send_values(self, values: list, key: bytes | None = None, headers=None, size: int | None = None) -> None: ...
    def send_keyed(self, keys: list, values: list, headers=None, size: int | None = None) -> None: ...
    def send_records(self, records) -> None:
        """(key, value, headers, partition, timestamp) tuples; None partition: the partitioner's choice."""

    def send_columns(self, keys, values: list, headers, partitions, timestamps) -> None:
        """The same as columns; each but ``values`` may be None (no record has one)."""

    def flush(self) -> None:
        """Return once every record sent is acknowledged; raise the error that stopped one."""

    def close(self) -> None: ...


class Transaction(Protocol):
    """A transactional producer: records to any topics and a group's offsets, visible all at once
    at ``commit`` to read_committed readers, or never (``abort``, or the process's death)."""

    def producer(self, topic: str, partition: int | None = None) -> Producer: ...

    def send_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit ``group``'s offsets on ``topic`` (partition -> next offset) with the transaction."""

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def close(self) -> None:
        """Let go of the transactional id (a transaction still open is aborted)."""


def lag(committed: int | None, start: int, end: int) -> int:
    """How many records a group has yet to read in a partition: from its committed
    offset (or the start, if it has none or it lies below the start) to the end."""
    return end - (start if committed is None else max(committed, start))


class Backend(ABC):
    """Topics, records, groups and offsets of one place (see the module docstring)."""

    #: How errors and tables name the place: "data directory DIR", "Kafka cluster HOST:PORT".
    description: str = ""

    def close(self) -> None:  # noqa: B027 (a backend holding nothing open need not override it)
        """Release what the backend holds open."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ topics

    @abstractmethod
    def topic_names(self) -> list[str]:
        """Topic names, sorted."""

    @abstractmethod
    def partition_count(self, topic: str) -> int:
        """Raises TopicNotFound."""

    @abstractmethod
    def describe_topic(self, topic: str) -> TopicInfo:
        """Partitions with start and end offsets (and sizes where known), and the config."""

    def describe_topics(self, topics: list[str]) -> tuple[list[TopicInfo], list[str]]:
        """``describe_topic`` of each as it is now (nothing remembered from an earlier call), and a
        line for each that could not be described (deleted meanwhile, unreadable). A backend that
        must ask for a topic's config on its own (a cluster) may leave configs empty."""
        from ..errors import KqError

        found, problems = [], []
        for topic in topics:
            try:
                found.append(self.describe_topic(topic))
            except KqError as exc:
                problems.append(f"topic '{topic}': {exc}")
        return found, problems

    @abstractmethod
    def create_topic(self, topic: str, partitions: int = 1, config: dict | None = None) -> TopicInfo:
        """Raises TopicExists."""

    @abstractmethod
    def alter_topic(self, topic: str, changes: dict) -> dict:
        """Apply config ``changes``; returns the whole config after them."""

    @abstractmethod
    def add_partitions(self, topic: str, count: int) -> None:
        """Grow ``topic`` to ``count`` partitions (never shrinks)."""

    @abstractmethod
    def delete_topic(self, topic: str) -> None:
        """Raises TopicNotFound."""

    @abstractmethod
    def trim(self, topic: str, before: OffsetSpec, partitions: list[int] | None = None) -> list[dict]:
        """Delete records before ``before`` (kafka-delete-records); a row per partition:
        partition, start_offset, and where the backend can tell segments_deleted and bytes_reclaimed."""

    @abstractmethod
    def topic_id(self, topic: str) -> str | None:
        """An id that changes when a topic of this name is deleted and created again (None where
        the place has none): a copier that recorded it knows a re-created topic from its own."""

    def check_partitions(self, topic: str, partitions: list[int]) -> list[int]:
        """``partitions`` sorted, once each; raises PartitionNotFound for one the topic lacks."""
        from ..errors import PartitionNotFound

        count = self.partition_count(topic)
        for p in partitions:
            if not 0 <= p < count:
                raise PartitionNotFound(topic, p, count)
        return sorted(set(partitions))

    def topic_exists(self, topic: str) -> bool:
        try:
            self.partition_count(topic)
        except TopicNotFound:
            return False
        return True

    # ------------------------------------------------------------------ records

    @abstractmethod
    def offset_for_timestamp(self, topic: str, partition: int, timestamp: int) -> int:
        """The first offset whose record's timestamp is >= ``timestamp`` (the end offset if none)."""

    @abstractmethod
    def producer(
        self,
        topic: str,
        partition: int | None = None,
        sync: bool = False,
        idempotent: bool = False,
        dedup_window_ms: int | None = None,
        dedup_header: str | None = None,
    ) -> Producer:
        """A producer for an existing topic; ``partition`` pins every record there.

        ``idempotent``: no record is written twice by a retry and each
        partition's records land in the order sent, so that what landed is
        always a prefix of what was sent (a data directory's appends always
        are; a cluster's producer gets a producer id for it).
        ``dedup_window_ms``: drop records whose id (the key, or the value of
        header ``dedup_header``) was produced to the topic within this long;
        by default the topic's own setting (a data directory's topics only).
        """

    def transaction(
        self, transactional_id: str, timeout_ms: int | None = None, sync: bool = False, ephemeral: bool = False
    ) -> Transaction:
        """A transactional producer for ``transactional_id`` (initialised: earlier holders are fenced,
        what they left open finished); ``timeout_ms``: an open transaction older than this is aborted.
        ``ephemeral``: an id made for this run only, forgotten when it is closed."""
        raise UnsupportedByBackend("a transaction", self.description)

    @abstractmethod
    def reader(
        self,
        topic: str,
        partitions: list[int] | None = None,
        offsets: OffsetRange = OffsetRange(OffsetSpec(BEGINNING)),
        follow: bool = False,
        isolation: str = "read_committed",
    ) -> Reader:
        """Read ``partitions`` (all by default) from ``offsets.start`` to ``offsets.stop`` or, without
        ``follow``, the end as it is now. ``isolation``: "read_committed" (only committed transactions,
        up to the last stable offset) or "read_uncommitted" (every record), as Kafka's isolation.level."""

    @abstractmethod
    def reader_from(
        self, topic: str, starts: dict[int, int], follow: bool = False, isolation: str = "read_committed"
    ) -> Reader:
        """Read each partition of ``starts`` from its own offset (a start below the partition's
        start offset reads from there) to the end as it is now, or, with ``follow``, on."""

    # ------------------------------------------------------------------ groups

    @abstractmethod
    def group_reader(
        self, topic: str, group: str, follow: bool = False, reset: str = "earliest", isolation: str = "read_committed"
    ) -> Reader:
        """Read as a member of ``group``: resume at its committed offsets, share partitions with
        its other members, commit what is marked."""

    def transactional_group_reader(
        self, topic: str, group: str, transaction, follow: bool = False, reset: str = "earliest"
    ):
        """A member of ``group`` that commits nothing itself: its offsets go with ``transaction``
        (``transaction.send_offsets``), read_committed (kq.ops.exactly_once)."""
        raise UnsupportedByBackend("a transaction", self.description)

    @abstractmethod
    def group_peek(
        self, topic: str, group: str, follow: bool = False, reset: str = "earliest", isolation: str = "read_committed"
    ) -> Reader:
        """Read every partition from where ``group`` would resume, without joining or committing."""

    @abstractmethod
    def group_names(self) -> list[str]:
        """Group names, sorted."""

    @abstractmethod
    def group_topics(self, group: str) -> list[str]:
        """The topics ``group`` has committed offsets or members for."""

    @abstractmethod
    def groups_of_topic(self, topic: str) -> list[str]:
        """The groups that have committed offsets or members for ``topic``."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offsets on the topic, by partition (absent: none)."""

    @abstractmethod
    def committed_with_metadata(self, group: str, topic: str) -> dict[int, tuple[int, str]]:
        """``committed``, each with its commit's metadata string ("" if none)."""

    @abstractmethod
    def members(self, group: str) -> list[dict]:
        """Live members: member, host, pid, client_id, joined_at (ms), topic, partitions (owned),
        progress_at (ms); every key in every backend, None where it does not know."""

    def group_overview(self, group: str, topic_ids: dict[str, str | None] | None = None) -> list[GroupTopicOffsets]:
        """Every topic of ``group``: committed offsets, when each was committed where the place
        records it, and the live members. ``topic_ids`` (topic -> id, from ``describe_topics``)
        leaves out offsets committed for an earlier topic of the same name, where the place knows."""
        members = self.members(group)
        out = []
        for topic in self.group_topics(group):
            ids = sorted({m["member"] for m in members if m["topic"] == topic})
            out.append(GroupTopicOffsets(topic, self.committed(group, topic), {}, ids))
        return out

    @abstractmethod
    def owners(self, group: str, topic: str) -> dict[int, str]:
        """Partition -> the id of the live member that holds it."""

    @abstractmethod
    def delete_group(self, group: str) -> None:
        """Raises GroupNotFound, or GroupBusy while members are live."""

    @abstractmethod
    def check_no_live_members(self, group: str, topic: str) -> None:
        """Raise GroupBusy if a live member of ``group`` reads ``topic``."""

    @abstractmethod
    def commit_offsets(
        self, group: str, topic: str, offsets: dict[int, int], metadata: dict[int, str] | None = None
    ) -> None:
        """Set the group's committed offsets (by partition), with each one's metadata string if
        given (else none); the caller checked the group has no live members."""

    def offset_rows(self, topic: str, groups: list[str] | None) -> list[dict]:
        """Per partition: start and end offset, and for each group its committed offset and lag."""
        info = self.describe_topic(topic)
        if not groups:
            return [
                {"topic": topic, "partition": p.partition, "start_offset": p.start_offset, "end_offset": p.end_offset}
                for p in info.partitions
            ]
        rows = []
        for group in groups:
            committed = self.committed_with_metadata(group, topic)
            for p in info.partitions:
                c, metadata = committed.get(p.partition, (None, None))
                rows.append(
                    {
                        "topic": topic,
                        "partition": p.partition,
                        "start_offset": p.start_offset,
                        "end_offset": p.end_offset,
                        "group": group,
                        "committed": c,
                        "lag": lag(c, p.start_offset, p.end_offset),
                        "metadata": metadata,
                    }
                )
        return rows

    def plan_reset(self, group: str, topic: str, spec: OffsetSpec, partitions: list[int] | None = None) -> list[dict]:
        """What ``offsets reset`` would do: per partition the offsets before and after, and
        whether the wanted offset was clamped to the partition's range."""
        info = self.describe_topic(topic)
        committed = self.committed(group, topic)
        wanted_partitions = None if partitions is None else set(partitions)
        rows = []
        for p in info.partitions:
            if wanted_partitions is not None and p.partition not in wanted_partitions:
                continue
            before = committed.get(p.partition)
            wanted = self._resolve(spec, topic, p, before)
            after = min(max(wanted, p.start_offset), p.end_offset)
            rows.append(
                {
                    "topic": topic,
                    "partition": p.partition,
                    "group": group,
                    "start_offset": p.start_offset,
                    "end_offset": p.end_offset,
                    "before": before,
                    "after": after,
                    "clamped": after != wanted,
                }
            )
        return rows

    def apply_reset(self, group: str, topic: str, rows: list[dict]) -> None:
        self.check_no_live_members(group, topic)
        self.commit_offsets(group, topic, {r["partition"]: r["after"] for r in rows})

    def _resolve(self, spec: OffsetSpec, topic: str, p: PartitionInfo, committed: int | None) -> int:
        return spec.resolve(_PartitionView(self, topic, p), p.end_offset, committed)

    # ------------------------------------------------------------------ share groups
    # Job queues (kq.share): records of the same partitions shared among any
    # number of workers, each acquired under a lease and settled on its own.
    # A data directory has them; a backend without them has none to list and
    # refuses the rest.

    def share_reader(
        self,
        topic: str,
        share: str,
        changes: dict | None = None,
        lease_ms: int = 30_000,
        reset: str = "earliest",
        detach: bool = False,
    ):
        """A worker of share group ``share`` on ``topic`` (kq.share.ShareConsumer's methods: acquire,
        ack, nack, release, extend, rounds, close); ``changes`` set the group's stored settings.
        ``detach``: its leases are for a script to settle, and outlive the worker."""
        raise UnsupportedByBackend("a share group", self.description)

    def share_settle(self, topic: str, share: str, leases: list[str], how: str, failure=None):
        """Settle records by lease id: ``ack``, ``nack`` (retry or dead-letter at the last attempt) or
        ``dead`` (dead-letter now); returns a kq.share.Outcome listing the leases not held."""
        raise UnsupportedByBackend("a share group", self.description)

    def share_names(self) -> list[str]:
        """Share group names, sorted."""
        return []

    def shares_of_topic(self, topic: str) -> list[str]:
        """The share groups that have state or workers on ``topic``."""
        return []

    def describe_share(self, share: str) -> dict:
        """share_group; partitions (per topic and partition: acquired, available, retrying,
        dead_lettered, acknowledged, lag); workers (their leases)."""
        raise UnsupportedByBackend("a share group", self.description)

    def delete_share(self, share: str) -> None:
        """Raises ShareNotFound, or GroupBusy while workers are live."""
        raise UnsupportedByBackend("a share group", self.description)

    def share_offset_rows(self, topic: str, shares: list[str]) -> list[dict]:
        """Like offset_rows, for share groups: committed is the offset before which every record is settled."""
        raise UnsupportedByBackend("a share group", self.description)

    # ------------------------------------------------------------------ local only

    def data_dir(self, command: str):
        """The kq.DataDir under this backend, for commands that only a data directory has
        (maintain, verify, replicate, bench); raises UnsupportedByBackend elsewhere."""
        raise UnsupportedByBackend(command, self.description)


class _PartitionView:
    """A partition as OffsetSpec.resolve asks about it, answered from a backend."""

    def __init__(self, backend: Backend, topic: str, info: PartitionInfo):
        self.backend, self.topic, self.info = backend, topic, info

    def start_offset(self) -> int:
        return self.info.start_offset

    def end_offset(self) -> int:
        return self.info.end_offset

    def offset_for_timestamp(self, timestamp: int) -> int:
        return self.backend.offset_for_timestamp(self.topic, self.info.partition, timestamp)
