"""Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords.

A topic's configs given at its creation go by their Kafka names
(topic_configs); describing and altering them later is ``config_admin``.
"""

from __future__ import annotations

from collections import Counter

from kafka.protocol.admin import (
    CreatePartitionsResponse,
    CreateTopicsResponse,
    DeleteRecordsResponse,
    DeleteTopicsResponse,
)

from ..engine.topic import check_config
from . import codes, topic_configs
from .config_admin import config_source
from .storage import KqError, Storage, TopicExists, TopicNotFound, check_name

NODE_ID = 0


class ReplicaAssignmentError(ValueError):
    """Replicas on a broker other than this one (kq serve is broker 0 of a one-broker cluster)."""


def check_assignment(brokers, what: str) -> None:
    if list(brokers or ()) != [NODE_ID]:
        raise ReplicaAssignmentError(
            f"{what} names brokers {list(brokers or ())}; kq serve is the one broker, {NODE_ID}, with one replica"
        )


class Admin:
    def __init__(self, storage: Storage, broker):
        self.storage = storage
        self.broker = broker

    async def create_topics(self, body, version: int):
        R = CreateTopicsResponse
        out = []
        repeated = {name for name, n in Counter(t.name for t in body.topics or ()).items() if n > 1}
        answered = set()
        for t in body.topics or ():
            if t.name in answered:
                continue  # one answer per name, as Kafka gives (a client cannot read two)
            answered.add(t.name)
            if t.name in repeated:
                code, message, partitions, configs = (
                    codes.INVALID_REQUEST,
                    "the request names this topic more than once",
                    -1,
                    [],
                )
            else:
                code, message, partitions, configs = self._create(t, body.validate_only if version >= 1 else False)
            out.append(
                R.CreatableTopicResult(
                    name=t.name,
                    error_code=code,
                    error_message=message,
                    topic_config_error_code=0,
                    num_partitions=partitions if code == 0 else -1,
                    replication_factor=1 if code == 0 else -1,
                    configs=[
                        R.CreatableTopicResult.CreatableTopicConfigs(
                            name=c.name,
                            value=c.value,
                            read_only=False,
                            config_source=config_source(c),
                            is_sensitive=False,
                        )
                        for c in configs
                    ]
                    if code == 0
                    else None,
                )
            )
        return R(version=version, throttle_time_ms=0, topics=out)

    def _create(self, t, validate_only: bool):
        try:
            check_name(t.name)
        except KqError as exc:
            return codes.INVALID_TOPIC_EXCEPTION, str(exc), -1, []
        partitions = self.broker.default_partitions if t.num_partitions == -1 else t.num_partitions
        if t.assignments:
            if t.num_partitions != -1 or t.replication_factor != -1:
                return (
                    codes.INVALID_REQUEST,
                    "give either a partition count and replication factor or replica assignments, not both",
                    -1,
                    [],
                )
            indexes = sorted(a.partition_index for a in t.assignments)
            if indexes != list(range(len(indexes))):
                return codes.INVALID_REPLICA_ASSIGNMENT, "partitions must be numbered 0, 1, 2, ...", -1, []
            try:
                for a in t.assignments:
                    check_assignment(a.broker_ids, f"partition {a.partition_index}")
            except ReplicaAssignmentError as exc:
                return codes.INVALID_REPLICA_ASSIGNMENT, str(exc), -1, []
            partitions = len(indexes)
        if partitions < 1:
            return codes.INVALID_PARTITIONS, "a topic needs at least one partition", -1, []
        if t.replication_factor not in (-1, 1):
            return (
                codes.INVALID_REPLICATION_FACTOR,
                "kq keeps one copy of each partition (replication factor 1)",
                -1,
                [],
            )
        try:
            config, kept = topic_configs.split((c.name, c.value) for c in t.configs or ())
            config = check_config(config)
        except (ValueError, KqError) as exc:
            return codes.INVALID_CONFIG, str(exc), -1, []
        if validate_only:
            if t.name in self.storage.topic_names():
                return codes.TOPIC_ALREADY_EXISTS, f"topic '{t.name}' already exists", -1, []
            return codes.NONE, None, partitions, topic_configs.describe(config, kept)
        try:
            self.storage.ensure()
            topic = self.storage.create_topic(t.name, partitions, config, kept)
        except TopicExists as exc:
            return codes.TOPIC_ALREADY_EXISTS, str(exc), -1, []
        except KqError as exc:
            return codes.INVALID_CONFIG, str(exc), -1, []
        return codes.NONE, None, topic.partition_count, topic_configs.describe(topic.config, topic.kafka_config)

    async def delete_topics(self, body, version: int):
        R = DeleteTopicsResponse
        names = list(body.topic_names or ()) if version < 6 else [t.name for t in body.topics or ()]
        out = []
        for name in names:
            if name is None:
                out.append(
                    R.DeletableTopicResult(
                        name=None, error_code=codes.UNKNOWN_TOPIC_OR_PARTITION, error_message="kq topics have no ids"
                    )
                )
                continue
            code, message = codes.NONE, None
            try:
                check_name(name)
                self.storage.delete_topic(name)
            except TopicNotFound as exc:
                code, message = codes.UNKNOWN_TOPIC_OR_PARTITION, str(exc)
            except KqError as exc:
                code, message = codes.INVALID_TOPIC_EXCEPTION, str(exc)
            out.append(R.DeletableTopicResult(name=name, error_code=code, error_message=message))
        return R(version=version, throttle_time_ms=0, responses=out)

    async def create_partitions(self, body, version: int):
        R = CreatePartitionsResponse
        out = []
        for t in body.topics or ():
            code, message = codes.NONE, None
            try:
                check_name(t.name)
                now = self.storage.topic(t.name).partition_count
                if t.count <= now:
                    code = codes.INVALID_PARTITIONS
                    message = f"topic '{t.name}' has {now} partitions; a topic grows, never shrinks"
                else:
                    if t.assignments is not None:
                        if len(t.assignments) != t.count - now:
                            raise ReplicaAssignmentError(
                                f"{len(t.assignments)} assignment(s) given for {t.count - now} new partition(s)"
                            )
                        for number, a in enumerate(t.assignments, now):
                            check_assignment(a.broker_ids, f"partition {number}")
                    if not body.validate_only:
                        self.storage.add_partitions(t.name, t.count)
            except ReplicaAssignmentError as exc:
                code, message = codes.INVALID_REPLICA_ASSIGNMENT, str(exc)
            except TopicNotFound as exc:
                code, message = codes.UNKNOWN_TOPIC_OR_PARTITION, str(exc)
            except KqError as exc:
                code, message = codes.INVALID_PARTITIONS, str(exc)
            out.append(R.CreatePartitionsTopicResult(name=t.name, error_code=code, error_message=message))
        return R(version=version, throttle_time_ms=0, results=out)

    async def delete_records(self, body, version: int):
        R = DeleteRecordsResponse
        Topic = R.DeleteRecordsTopicResult
        out = []
        for t in body.topics or ():
            partitions = []
            for p in t.partitions or ():
                code, low = codes.NONE, -1
                try:
                    check_name(t.name)
                    topic = self.storage.topic(t.name)
                    if not 0 <= p.partition_index < topic.partition_count:
                        raise TopicNotFound(t.name)
                    end = topic.partition(p.partition_index).end_offset()
                    before = end if p.offset == -1 else p.offset
                    if not 0 <= before <= end:
                        code = codes.OFFSET_OUT_OF_RANGE
                    else:
                        low = self.storage.trim(t.name, p.partition_index, before)
                except TopicNotFound:
                    code = codes.UNKNOWN_TOPIC_OR_PARTITION
                except KqError:
                    code = codes.KAFKA_STORAGE_ERROR
                partitions.append(
                    Topic.DeleteRecordsPartitionResult(
                        partition_index=p.partition_index, low_watermark=low, error_code=code
                    )
                )
            out.append(Topic(name=t.name, partitions=partitions))
        return R(version=version, throttle_time_ms=0, topics=out)
