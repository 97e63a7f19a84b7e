"""A Kafka cluster's consumer groups, through confluent-kafka's admin client: listing and
describing them, their committed offsets (read, and committed only with no live member),
their members, and readers that join or peek at a group.
"""

from __future__ import annotations

from ..engine.names import check_name
from ..errors import GroupBusy, GroupNotFound
from .base import GroupTopicOffsets
from .kafka_connection import KafkaConnection


class KafkaGroups(KafkaConnection):
    """The groups of one cluster (kq.backends.kafka.KafkaBackend's groups)."""

    def group_reader(
        self, topic: str, group: str, follow: bool = False, reset: str = "earliest", isolation: str = "read_committed"
    ):
        from .kafka_group_reader import KafkaGroupReader

        check_name(group, "group")
        self.partition_count(topic)
        return KafkaGroupReader(self, topic, group, follow, reset, isolation=isolation)

    def transactional_group_reader(
        self, topic: str, group: str, transaction, follow: bool = False, reset: str = "earliest"
    ):
        from .kafka_group_reader import KafkaGroupReader

        check_name(group, "group")
        self.partition_count(topic)
        reader = KafkaGroupReader(self, topic, group, follow, reset, commits=False)
        transaction.reader = reader
        return reader

    def group_peek(
        self, topic: str, group: str, follow: bool = False, reset: str = "earliest", isolation: str = "read_committed"
    ):
        from .kafka_reader import KafkaReader

        check_name(group, "group")
        count = self.partition_count(topic)
        return KafkaReader.for_group(self, topic, list(range(count)), group, reset, follow, isolation=isolation)

    def group_names(self) -> list[str]:
        result = self.wait(self.admin.list_consumer_groups(request_timeout=self.timeout), "listing groups")
        if result.errors:
            # A broker that did not answer may coordinate groups: a partial list would pass for the whole.
            exc = result.errors[0]
            raise self.error(exc if isinstance(exc, BaseException) else self.ck.KafkaException(exc), "listing groups")
        return sorted(g.group_id for g in result.valid)

    def group_exists(self, group: str) -> bool:
        return group in self.group_names()

    def _committed(self, group: str, topic: str | None, partitions=None) -> dict[tuple[str, int], int]:
        request = self.ck.ConsumerGroupTopicPartitions(
            group, None if topic is None else [self.ck.TopicPartition(topic, p) for p in partitions]
        )
        futures = self.admin.list_consumer_group_offsets([request], request_timeout=self.timeout)
        result = self.wait(futures[group], f"fetching the offsets of group '{group}'", topic, group)
        return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or () if tp.offset >= 0}

    def group_overview(self, group: str, topic_ids: dict[str, str | None] | None = None) -> list[GroupTopicOffsets]:
        # Two requests for the whole group (its offsets on every topic, its members), not two per topic.
        # The cluster does not report when an offset was committed.
        committed: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in self._committed(group, None).items():
            committed.setdefault(topic, {})[partition] = offset
        members: dict[str, set[str]] = {}
        for m in self._members(group):
            for tp in m.assignment.topic_partitions or ():
                members.setdefault(tp.topic, set()).add(m.member_id)
        return [
            GroupTopicOffsets(topic, committed.get(topic, {}), {}, sorted(members.get(topic, ())))
            for topic in sorted(set(committed) | set(members))
        ]

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
