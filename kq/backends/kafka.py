"""The backend over a Kafka cluster, through confluent-kafka (librdkafka).

Topics, configs, offsets and groups go through librdkafka's admin client;
records through its consumer (kq.backends.kafka_reader) and producer
(kq.backends.kafka_producer). This module has the topics and records;
kq.backends.kafka_connection the clients and errors, kq.backends.kafka_groups
the groups. The
optional extra ``kafka`` installs confluent-kafka; nothing else in kq
imports it, and this module imports it only when a backend is made.

What differs from a data directory, by Kafka's nature:

- sizes of partitions are unknown (``size`` None), and the topic configs are
  the cluster's (kq's six settings under their Kafka names, where the
  cluster reports them);
- keyed records are placed by librdkafka's ``murmur2_random`` partitioner,
  Kafka's Java client's and kq's own placement (librdkafka's default is CRC32);
- group members are the cluster's consumers: they have a client id and a
  host but no pid, and "progress" is not reported;
- the client waits for the cluster at most ``socket.timeout.ms`` (a
  librdkafka setting; kq's default is 10 s) for each request.
"""

from __future__ import annotations

from ..engine.names import check_name
from ..errors import PartitionNotFound, UnsupportedByBackend
from ..offsetspec import BEGINNING, OffsetRange, OffsetSpec
from .base import PartitionInfo, TopicInfo
from .kafka_groups import KafkaGroups
from .kafka_settings import kafka_configs, kq_config

# Kafka's own bookkeeping topics: not user topics, never listed.
INTERNAL_TOPICS = frozenset(("__consumer_offsets", "__transaction_state", "__share_group_state"))
MAX_PARTITIONS = 10_000  # as in a data directory (kq.engine.location)


class KafkaBackend(KafkaGroups):
    """Topics, records and groups of the Kafka cluster at ``brokers`` (HOST:PORT[,HOST:PORT...]).

    ``settings`` are librdkafka settings (``security.protocol``, ``sasl.*``,
    ``ssl.*``, ``client.id``, ...) for every client kq makes.
    """

    def __repr__(self) -> str:
        return f"KafkaBackend({self.brokers!r})"

    # ------------------------------------------------------------------ topics

    def _metadata(self, topic: str | None = None):
        try:
            return self.admin.list_topics(topic, timeout=self.timeout)
        except self.ck.KafkaException as exc:
            raise self.error(exc, "listing topics", topic) from None

    def topic_names(self) -> list[str]:
        return sorted(t for t in self._metadata().topics if t not in INTERNAL_TOPICS)

    def partition_count(self, topic: str) -> int:
        return len(self._describe(topic).partitions)

    def _describe(self, topic: str):
        check_name(topic)
        futures = self.admin.describe_topics(
            self.ck.TopicCollection([topic]), request_timeout=self.timeout
        )  # never creates the topic, as a metadata request may
        return self.wait(futures[topic], f"describing topic '{topic}'", topic)

    def topic_id(self, topic: str) -> str | None:
        """The cluster's id of ``topic`` (None where the cluster has no topic ids)."""
        found = str(self._describe(topic).topic_id or "")
        return None if not found.strip("A=") else found  # all zeros: not served

    def check_partition(self, topic: str, partition: int, count: int | None = None) -> int:
        count = self.partition_count(topic) if count is None else count
        if not 0 <= partition < count:
            raise PartitionNotFound(topic, partition, count)
        return partition

    def list_offsets(self, topic: str, partitions, spec) -> dict[int, int]:
        """Per partition, the offset ListOffsets answers for ``spec`` (earliest, latest, a time)."""
        tps = {self.ck.TopicPartition(topic, p): spec for p in partitions}
        if not tps:
            return {}
        futures = self.admin.list_offsets(tps, request_timeout=self.timeout)
        return {tp.partition: self.wait(f, f"listing offsets of '{topic}'", topic).offset for tp, f in futures.items()}

    def start_offsets(self, topic: str, partitions) -> dict[int, int]:
        from confluent_kafka.admin import OffsetSpec as Spec

        return self.list_offsets(topic, partitions, Spec.earliest())

    def end_offsets(self, topic: str, partitions) -> dict[int, int]:
        from confluent_kafka.admin import OffsetSpec as Spec

        return self.list_offsets(topic, partitions, Spec.latest())

    def topic_config(self, topic: str) -> dict:
        from confluent_kafka.admin import ConfigResource, ResourceType

        resource = ConfigResource(ResourceType.TOPIC, topic)
        futures = self.admin.describe_configs([resource], request_timeout=self.timeout)
        entries = self.wait(futures[resource], f"describing the config of '{topic}'", topic)
        return kq_config(((name, e.value) for name, e in entries.items()), strict=False)

    def describe_topic(self, topic: str) -> TopicInfo:
        count = self.partition_count(topic)
        starts = self.start_offsets(topic, range(count))
        ends = self.end_offsets(topic, range(count))
        return TopicInfo(
            topic,
            [PartitionInfo(p, starts[p], ends[p], None) for p in range(count)],
            self.topic_config(topic),
        )

    def describe_topics(self, topics: list[str]) -> tuple[list[TopicInfo], list[str]]:
        """Three requests for all of them (metadata, earliest and latest offsets), not four per topic:
        kq metrics and kq top ask for every topic. Their configs are left out (one request each)."""
        from confluent_kafka.admin import OffsetSpec as Spec

        metadata = self._metadata().topics
        found, problems, counts = [], [], {}
        for topic in topics:
            info = metadata.get(topic)
            if info is None or info.error is not None:
                problems.append(f"topic '{topic}': {'not found' if info is None else info.error}")
            else:
                counts[topic] = len(info.partitions)
        offsets = {}
        for name, spec in (("earliest", Spec.earliest()), ("latest", Spec.latest())):
            tps = {self.ck.TopicPartition(t, p): spec for t, n in counts.items() for p in range(n)}
            if not tps:
                break
            futures = self.admin.list_offsets(tps, request_timeout=self.timeout)
            offsets[name] = {
                (tp.topic, tp.partition): self.wait(f, "listing offsets", tp.topic).offset for tp, f in futures.items()
            }
        for topic, count in counts.items():
            found.append(
                TopicInfo(
                    topic,
                    [
                        PartitionInfo(p, offsets["earliest"][topic, p], offsets["latest"][topic, p], None)
                        for p in range(count)
                    ],
                )
            )
        return found, problems

    def create_topic(self, topic: str, partitions: int = 1, config: dict | None = None) -> TopicInfo:
        from ..engine.topic import check_config
        from ..errors import UsageError

        check_name(topic)
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise UsageError(f"partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}")
        config = dict(config or {})
        check_config(config)  # the same checks, and messages, as on a data directory
        from confluent_kafka.admin import NewTopic

        new = NewTopic(topic, partitions, replication_factor=-1, config=kafka_configs(config))
        futures = self.admin.create_topics([new], request_timeout=self.timeout, operation_timeout=self.timeout)
        self.wait(futures[topic], f"creating topic '{topic}'", topic)
        return TopicInfo(topic, [PartitionInfo(p, 0, 0, None) for p in range(partitions)], config)

    def alter_topic(self, topic: str, changes: dict) -> dict:
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

        from ..engine.topic import check_config

        self.partition_count(topic)  # TopicNotFound before anything else
        check_config(changes)
        entries = [
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in kafka_configs(changes).items()
        ]
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        futures = self.admin.incremental_alter_configs([resource], request_timeout=self.timeout)
        self.wait(futures[resource], f"altering the config of '{topic}'", topic)
        # What the cluster reports now, with the changes as asked where it does not report them.
        return {**changes, **self.topic_config(topic)}

    def add_partitions(self, topic: str, count: int) -> None:
        from confluent_kafka.admin import NewPartitions

        futures = self.admin.create_partitions(
            [NewPartitions(topic, count)], request_timeout=self.timeout, operation_timeout=self.timeout
        )
        self.wait(futures[topic], f"adding partitions to '{topic}'", topic)

    def delete_topic(self, topic: str) -> None:
        self.partition_count(topic)  # TopicNotFound, by name, before deleting
        futures = self.admin.delete_topics([topic], request_timeout=self.timeout, operation_timeout=self.timeout)
        self.wait(futures[topic], f"deleting topic '{topic}'", topic)

    def trim(self, topic: str, before: OffsetSpec, partitions: list[int] | None = None) -> list[dict]:
        count = self.partition_count(topic)
        numbers = self.check_partitions(topic, partitions) if partitions else list(range(count))
        ends = self.end_offsets(topic, numbers)
        wanted = []
        for p in numbers:
            offset = before.resolve(ClusterPartition(self, topic, p, ends[p]), ends[p])
            wanted.append(self.ck.TopicPartition(topic, p, min(offset, ends[p])))  # never past the end, as kq trims
        futures = self.admin.delete_records(wanted, request_timeout=self.timeout, operation_timeout=self.timeout)
        rows = []
        for tp, future in sorted(futures.items(), key=lambda item: item[0].partition):
            deleted = self.wait(future, f"deleting records of '{topic}'", topic)
            # A cluster does not say what it freed: the directory's keys, unknown (null).
            rows.append(
                {
                    "partition": tp.partition,
                    "start_offset": deleted.low_watermark,
                    "segments_deleted": None,
                    "bytes_reclaimed": None,
                }
            )
        return rows

    # ------------------------------------------------------------------ records

    def offset_for_timestamp(self, topic: str, partition: int, timestamp: int) -> int:
        from confluent_kafka.admin import OffsetSpec as Spec

        found = self.list_offsets(topic, [partition], Spec.for_timestamp(timestamp))[partition]
        return found if found >= 0 else self.end_offsets(topic, [partition])[partition]

    def producer(
        self,
        topic: str,
        partition: int | None = None,
        sync: bool = False,
        idempotent: bool = False,
        dedup_window_ms: int | None = None,
        dedup_header: str | None = None,
    ):
        from .kafka_producer import KafkaProducer

        if dedup_window_ms is not None or dedup_header is not None:
            raise UnsupportedByBackend("a deduplication window (--dedup-window)", self.description)

        count = self.partition_count(topic)
        if partition is not None:
            self.check_partition(topic, partition, count)
        # ``sync``: a cluster acknowledges a record once its replicas have it (acks=all).
        return KafkaProducer(self, topic, partition, idempotent)

    def transaction(
        self, transactional_id: str, timeout_ms: int | None = None, sync: bool = False, ephemeral: bool = False
    ):
        from .kafka_transaction import KafkaTransaction

        return KafkaTransaction(self, transactional_id, timeout_ms)

    def reader(
        self,
        topic: str,
        partitions: list[int] | None = None,
        offsets: OffsetRange = OffsetRange(OffsetSpec(BEGINNING)),
        follow: bool = False,
        isolation: str = "read_committed",
    ):
        from .kafka_reader import KafkaReader

        count = self.partition_count(topic)
        numbers = self.check_partitions(topic, partitions) if partitions else list(range(count))
        return KafkaReader.from_spec(self, topic, numbers, offsets, follow, isolation=isolation)

    def reader_from(self, topic: str, starts: dict[int, int], follow: bool = False, isolation: str = "read_committed"):
        from .kafka_reader import SNAPSHOT, KafkaReader

        count = self.partition_count(topic)
        for p in starts:
            self.check_partition(topic, p, count)
        reader = KafkaReader(self, topic, follow, isolation=isolation)
        reader.assign({p: (start, None if follow else SNAPSHOT) for p, start in sorted(starts.items())})
        return reader


class ClusterPartition:
    """A cluster partition as kq's offset rules ask about it (start, end, offsets by time): OffsetSpec.resolve,
    kq.groups.consumer.resume_offset."""

    def __init__(self, backend: KafkaBackend, topic: str, partition: int, end: int | None = None):
        self.backend, self.topic, self.number, self._end = backend, topic, partition, end

    def start_offset(self) -> int:
        return self.backend.start_offsets(self.topic, [self.number])[self.number]

    def end_offset(self) -> int:
        if self._end is None:
            self._end = self.backend.end_offsets(self.topic, [self.number])[self.number]
        return self._end

    def offset_for_timestamp(self, timestamp: int) -> int:
        return self.backend.offset_for_timestamp(self.topic, self.number, timestamp)
