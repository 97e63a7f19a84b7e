"""The backend over a Kafka cluster, through confluent-kafka (librdkafka).

Topics, configs, offsets and groups go through librdkafka's admin client;
records through its consumer (kq.backends.kafka_reader) and producer
(kq.backends.kafka_producer). The
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

import logging
import sys
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout

from ..engine.names import check_name
from ..errors import (
    EXIT_USAGE,
    ClusterError,
    GroupBusy,
    GroupNotFound,
    KqError,
    MissingDependency,
    PartitionNotFound,
    TopicExists,
    TopicNotFound,
)
from ..offsetspec import BEGINNING, OffsetRange, OffsetSpec
from .base import Backend, PartitionInfo, TopicInfo
from .kafka_settings import kafka_configs, kq_config, parse_brokers, redact

DEFAULT_TIMEOUT = 10.0  # seconds to wait for an answer, unless socket.timeout.ms says otherwise
# Kafka's own bookkeeping topics: not user topics, never listed.
INTERNAL_TOPICS = frozenset(("__consumer_offsets", "__transaction_state", "__share_group_state"))
MAX_PARTITIONS = 10_000  # as in a data directory (kq.location)


def confluent():
    """The confluent_kafka module, or MissingDependency saying what to install."""
    try:
        import confluent_kafka
    except ImportError:
        raise MissingDependency("a Kafka cluster", "confluent-kafka", "kafka") from None
    return confluent_kafka


class _RecentLog(logging.Handler):
    """librdkafka's log lines: the last few kept to explain an error, echoed only with ``-X debug=...``."""

    def __init__(self, settings: dict, echo: bool):
        super().__init__(logging.DEBUG)
        self.settings = settings
        self.echo = echo
        self.recent: deque[str] = deque(maxlen=3)

    def emit(self, record: logging.LogRecord) -> None:
        line = redact(record.getMessage(), self.settings)
        if record.levelno >= logging.WARNING:
            self.recent.append(line)
        if self.echo:
            print(f"kq: librdkafka: {line}", file=sys.stderr, flush=True)


class KafkaBackend(Backend):
    """Topics, records and groups of the Kafka cluster at ``brokers`` (HOST:PORT[,HOST:PORT...]).

    ``settings`` are librdkafka settings (``security.protocol``, ``sasl.*``,
    ``ssl.*``, ``client.id``, ...) for every client kq makes.
    """

    def __init__(self, brokers: str, settings: dict | None = None):
        brokers = parse_brokers(brokers)
        self.ck = confluent()
        self.brokers = brokers
        self.settings = dict(settings or {})
        self.description = f"Kafka cluster {brokers}"
        timeout_ms = self.settings.get("socket.timeout.ms")
        try:
            self.timeout = float(timeout_ms) / 1000 if timeout_ms is not None else DEFAULT_TIMEOUT
        except ValueError:
            error = ClusterError(brokers, "bad client setting: socket.timeout.ms must be a number of milliseconds")
            error.exit_code = EXIT_USAGE
            raise error from None
        self.log = logging.getLogger(f"kq.kafka.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self._log = _RecentLog(self.settings, echo="debug" in self.settings)
        self.log.addHandler(self._log)
        self._admin = None
        self._clients: list = []

    def __repr__(self) -> str:
        return f"KafkaBackend({self.brokers!r})"

    # ------------------------------------------------------------------ clients

    def client_config(self, defaults: dict | None = None, **fixed) -> dict:
        """Settings for one librdkafka client: ``defaults``, then the user's, then ``fixed``."""
        return {
            **(defaults or {}),
            "bootstrap.servers": self.brokers,
            **self.settings,
            **fixed,
            "logger": self.log,
        }

    def make(self, kind: str, config: dict):
        """A confluent-kafka client (``Producer``, ``Consumer``); a bad setting is a usage error."""
        try:
            client = getattr(self.ck, kind)(config)
        except (self.ck.KafkaException, ValueError, TypeError) as exc:
            raise self.bad_settings(exc) from None
        return client

    def bad_settings(self, exc: BaseException) -> ClusterError:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], self.ck.KafkaError) else None
        reason = (err.str() if err is not None else str(exc)).strip()  # librdkafka ends some with a newline
        error = ClusterError(self.brokers, f"bad client setting: {redact(reason, self.settings)}")
        error.exit_code = EXIT_USAGE
        return error

    @property
    def admin(self):
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            try:
                self._admin = AdminClient(self.client_config())
            except (self.ck.KafkaException, ValueError, TypeError) as exc:
                raise self.bad_settings(exc) from None
        return self._admin

    def close(self) -> None:
        self._admin = None
        self.log.removeHandler(self._log)

    def error(self, exc: BaseException, what: str, topic: str | None = None, group: str | None = None) -> KqError:
        """The kq error for a failed request (``what``: what kq asked, for the message)."""
        KafkaError = self.ck.KafkaError
        if isinstance(exc, FutureTimeout):
            return ClusterError(self.brokers, f"no answer to {what} within {self.timeout:g} s{self._last_log()}")
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None:
            return ClusterError(self.brokers, f"{what} failed: {redact(str(exc), self.settings)}")
        code = err.code()
        reason = redact(err.str(), self.settings)
        if code == KafkaError.UNKNOWN_TOPIC_OR_PART and topic is not None:
            return TopicNotFound(topic)
        if code == KafkaError.TOPIC_ALREADY_EXISTS and topic is not None:
            return TopicExists(topic)
        if code == KafkaError.GROUP_ID_NOT_FOUND and group is not None:
            return GroupNotFound(group)
        # A commit from outside a group with members is refused as UNKNOWN_MEMBER_ID, members
        # that the cluster may not list included (`kq consume -g` processes behind kq serve).
        if code in (KafkaError.NON_EMPTY_GROUP, KafkaError.UNKNOWN_MEMBER_ID) and group is not None:
            return GroupBusy(group, topic, len(self._members(group)) or 1)
        if code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE):
            refusal = self._refusal()
            if refusal is not None:
                return ClusterError(self.brokers, f"refused this client ({what}): {refusal}")
            return ClusterError(self.brokers, f"cannot be reached ({what}: {reason}){self._last_log()}")
        error = ClusterError(self.brokers, f"{what}: {reason}")
        if code in (
            KafkaError.INVALID_CONFIG,
            KafkaError.INVALID_PARTITIONS,
            KafkaError.INVALID_REPLICATION_FACTOR,
            KafkaError.POLICY_VIOLATION,
            KafkaError.TOPIC_EXCEPTION,
            KafkaError._UNSUPPORTED_FEATURE,
            KafkaError.UNSUPPORTED_VERSION,
            KafkaError._INVALID_ARG,
        ):
            error.exit_code = EXIT_USAGE
        return error

    def error_reason(self, err) -> str:
        """A librdkafka error's text, secrets blanked out."""
        return redact(err.str(), self.settings)

    def _refusal(self) -> str | None:
        """librdkafka's line saying the broker refused this client (an authorization or login
        failure, e.g. another user's kq serve), which otherwise ends as a mere timeout."""
        if self._admin is not None:
            self._admin.poll(0)  # librdkafka hands its log lines over in poll()
        import re

        for line in reversed(self._log.recent):
            found = re.search(
                r"(Broker: [^:(]*authorization failed|SASL authentication error: [^(]*"
                r"|broker might require SASL authentication)",
                line,
                re.I,
            )
            if found:
                return found.group(1).strip()
        return None

    def _last_log(self) -> str:
        return f"; librdkafka said: {self._log.recent[-1]}" if self._log.recent else ""

    def wait(self, future, what: str, topic: str | None = None, group: str | None = None):
        """The result of an admin request's future, or the kq error for its failure."""
        try:
            return future.result(self.timeout + 1)
        except (self.ck.KafkaException, FutureTimeout) as exc:
            raise self.error(exc, what, topic, group) from None

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
            offset = before.resolve(_ClusterPartition(self, topic, p, ends[p]), ends[p])
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

    def producer(self, topic: str, partition: int | None = None, sync: bool = False, idempotent: bool = False):
        from .kafka_producer import KafkaProducer

        count = self.partition_count(topic)
        if partition is not None:
            self.check_partition(topic, partition, count)
        # ``sync``: a cluster acknowledges a record once its replicas have it (acks=all).
        return KafkaProducer(self, topic, partition, idempotent)

    def reader(
        self,
        topic: str,
        partitions: list[int] | None = None,
        offsets: OffsetRange = OffsetRange(OffsetSpec(BEGINNING)),
        follow: bool = False,
    ):
        from .kafka_reader import KafkaReader

        count = self.partition_count(topic)
        numbers = self.check_partitions(topic, partitions) if partitions else list(range(count))
        return KafkaReader.from_spec(self, topic, numbers, offsets, follow)

    def reader_from(self, topic: str, starts: dict[int, int], follow: bool = False):
        from .kafka_reader import SNAPSHOT, KafkaReader

        count = self.partition_count(topic)
        for p in starts:
            self.check_partition(topic, p, count)
        reader = KafkaReader(self, topic, follow)
        reader.assign({p: (start, None if follow else SNAPSHOT) for p, start in sorted(starts.items())})
        return reader

    # ------------------------------------------------------------------ groups

    def group_reader(self, topic: str, group: str, follow: bool = False, reset: str = "earliest"):
        from .kafka_reader import KafkaGroupReader

        check_name(group, "group")
        self.partition_count(topic)
        return KafkaGroupReader(self, topic, group, follow, reset)

    def group_peek(self, topic: str, group: str, follow: bool = False, reset: str = "earliest"):
        from .kafka_reader import KafkaReader

        check_name(group, "group")
        count = self.partition_count(topic)
        return KafkaReader.for_group(self, topic, list(range(count)), group, reset, follow)

    def group_names(self) -> list[str]:
        result = self.wait(self.admin.list_consumer_groups(request_timeout=self.timeout), "listing groups")
        if result.errors:
            # A broker that did not answer may coordinate groups: a partial list would pass for the whole.
            exc = result.errors[0]
            raise self.error(exc if isinstance(exc, BaseException) else self.ck.KafkaException(exc), "listing groups")
        return sorted(g.group_id for g in result.valid)

    def group_exists(self, group: str) -> bool:
        return group in self.group_names()

    def _describe_group(self, group: str):
        futures = self.admin.describe_consumer_groups([group], request_timeout=self.timeout)
        return self.wait(futures[group], f"describing group '{group}'", group=group)

    def _members(self, group: str) -> list:
        return list(self._describe_group(group).members or [])

    def _committed(self, group: str, topic: str | None, partitions=None) -> dict[tuple[str, int], int]:
        request = self.ck.ConsumerGroupTopicPartitions(
            group, None if topic is None else [self.ck.TopicPartition(topic, p) for p in partitions]
        )
        futures = self.admin.list_consumer_group_offsets([request], request_timeout=self.timeout)
        result = self.wait(futures[group], f"fetching the offsets of group '{group}'", topic, group)
        return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or () if tp.offset >= 0}

    def group_topics(self, group: str) -> list[str]:
        topics = {t for t, _ in self._committed(group, None)}
        for m in self._members(group):
            topics.update(tp.topic for tp in m.assignment.topic_partitions or ())
        return sorted(topics)

    def groups_of_topic(self, topic: str) -> list[str]:
        count = self.partition_count(topic)
        out = []
        for group in self.group_names():
            if self._committed(group, topic, range(count)) or any(
                tp.topic == topic for m in self._members(group) for tp in m.assignment.topic_partitions or ()
            ):
                out.append(group)
        return out

    def committed(self, group: str, topic: str) -> dict[int, int]:
        count = self.partition_count(topic)
        return {p: offset for (_, p), offset in self._committed(group, topic, range(count)).items()}

    def committed_with_metadata(self, group: str, topic: str) -> dict[int, tuple[int, str]]:
        # Through a consumer of the group, which joins nothing: confluent-kafka 2.16's admin
        # client reads a commit's metadata as a C string from a copy without the terminating
        # NUL (past its end: garbage, or a UnicodeDecodeError); its consumer's copy has one.
        partitions = range(self.partition_count(topic))
        config = self.client_config()
        config.update({"group.id": group, "enable.auto.commit": False})
        consumer = self.make("Consumer", config)
        try:
            found = consumer.committed([self.ck.TopicPartition(topic, p) for p in partitions], timeout=self.timeout)
        except self.ck.KafkaException as exc:
            raise self.error(exc, f"fetching the offsets of group '{group}'", topic, group) from None
        finally:
            consumer.close()
        return {tp.partition: (tp.offset, tp.metadata or "") for tp in found if tp.offset >= 0}

    def members(self, group: str) -> list[dict]:
        if not self.group_exists(group):
            check_name(group, "group")
            raise GroupNotFound(group)
        out = []
        for m in self._members(group):
            by_topic: dict[str | None, list[int]] = {}
            for tp in m.assignment.topic_partitions or ():
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            for topic, partitions in sorted(by_topic.items()) or [(None, [])]:
                out.append(
                    {
                        "member": m.member_id,
                        "host": m.host,
                        "pid": None,
                        "client_id": m.client_id,
                        "joined_at": None,  # the cluster does not say
                        "topic": topic,
                        "partitions": sorted(partitions),
                        "progress_at": None,
                    }
                )
        return out

    def owners(self, group: str, topic: str) -> dict[int, str]:
        return {
            tp.partition: m.member_id
            for m in self._members(group)
            for tp in m.assignment.topic_partitions or ()
            if tp.topic == topic
        }

    def delete_group(self, group: str) -> None:
        check_name(group, "group")
        if not self.group_exists(group):
            raise GroupNotFound(group)
        self.check_no_live_members(group, "")
        futures = self.admin.delete_consumer_groups([group], request_timeout=self.timeout)
        self.wait(futures[group], f"deleting group '{group}'", group=group)

    def check_no_live_members(self, group: str, topic: str) -> None:
        from confluent_kafka import ConsumerGroupState

        described = self._describe_group(group)
        members = list(described.members or [])
        # The cluster refuses offset changes while a group has any member,
        # which its state says even where a member list is not given.
        live = len(members) or described.state not in (
            ConsumerGroupState.EMPTY,
            ConsumerGroupState.DEAD,
            ConsumerGroupState.UNKNOWN,
        )
        if live:
            on_topic = any(tp.topic == topic for m in members for tp in m.assignment.topic_partitions or ())
            raise GroupBusy(group, topic if on_topic else None, len(members) or 1)

    def commit_offsets(
        self, group: str, topic: str, offsets: dict[int, int], metadata: dict[int, str] | None = None
    ) -> None:
        # confluent-kafka takes metadata as a C string, which it sends with its terminating NUL:
        # a string that ends in NUL (what it committed before) goes out as it came.
        strings = {p: m.split("\0", 1)[0] for p, m in (metadata or {}).items()}
        request = self.ck.ConsumerGroupTopicPartitions(
            group,
            [
                self.ck.TopicPartition(topic, p, o, metadata=strings[p])
                if strings.get(p)
                else self.ck.TopicPartition(topic, p, o)
                for p, o in sorted(offsets.items())
            ],
        )
        futures = self.admin.alter_consumer_group_offsets([request], request_timeout=self.timeout)
        result = self.wait(futures[group], f"committing offsets of group '{group}'", topic, group)
        for tp in result.topic_partitions or ():
            if tp.error is not None:
                raise self.error(
                    self.ck.KafkaException(tp.error), f"committing offsets of group '{group}'", topic, group
                )


class _ClusterPartition:
    """A partition as OffsetSpec.resolve asks about it (start, end, offsets by time)."""

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
