"""Topic administration: CreateTopics, DeleteTopics, DescribeConfigs, IncrementalAlterConfigs,
CreatePartitions, DeleteRecords.

kq's topic settings go by their Kafka names (kq.backends.kafka_settings
holds the table, which the Kafka-cluster backend shares).
"""

from __future__ import annotations

from collections import Counter

from kafka.protocol.admin import (
    CreatePartitionsResponse,
    CreateTopicsResponse,
    DeleteRecordsResponse,
    DeleteTopicsResponse,
    DescribeConfigsResponse,
    IncrementalAlterConfigsResponse,
)

from ..backends.kafka_settings import KQ_NAMES, kafka_configs, kq_config
from . import codes
from .storage import KqError, Storage, TopicExists, TopicNotFound, check_name

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
CONFIG_SOURCE_TOPIC = 1  # DYNAMIC_TOPIC_CONFIG: set on this topic
CONFIG_TYPES = {
    "segment.bytes": 3,
    "retention.ms": 5,
    "retention.bytes": 5,
    "cleanup.policy": 7,
    "delete.retention.ms": 5,
    "flush.messages": 5,
}  # INT=3, LONG=5, LIST=7
SET, DELETE = 0, 1  # IncrementalAlterConfigs operations (APPEND and SUBTRACT apply to lists kq does not have)


class Admin:
    def __init__(self, storage: Storage, broker):
        self.storage = storage
        self.broker = broker

    async def create_topics(self, body, version: int):
        R = CreateTopicsResponse
        out = []
        repeated = {name for name, n in Counter(t.name for t in body.topics).items() if n > 1}
        answered = set()
        for t in body.topics:
            if t.name in answered:
                continue  # one answer per name, as Kafka gives (a client cannot read two)
            answered.add(t.name)
            if t.name in repeated:
                code, message, partitions, configs = (
                    codes.INVALID_REQUEST,
                    "the request names this topic more than once",
                    -1,
                    {},
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
                            name=k, value=v, read_only=False, config_source=CONFIG_SOURCE_TOPIC, is_sensitive=False
                        )
                        for k, v in configs.items()
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
            return codes.INVALID_TOPIC_EXCEPTION, str(exc), -1, {}
        partitions = self.broker.default_partitions if t.num_partitions == -1 else t.num_partitions
        if partitions < 1:
            return codes.INVALID_PARTITIONS, "a topic needs at least one partition", -1, {}
        if t.replication_factor not in (-1, 1):
            return (
                codes.INVALID_REPLICATION_FACTOR,
                "kq keeps one copy of each partition (replication factor 1)",
                -1,
                {},
            )
        if t.assignments:
            return codes.INVALID_REQUEST, "kq does not take replica assignments", -1, {}
        try:
            config = kq_config([(c.name, c.value) for c in t.configs or ()])
        except ValueError as exc:
            return codes.INVALID_CONFIG, str(exc), -1, {}
        if validate_only:
            if t.name in self.storage.topic_names():
                return codes.TOPIC_ALREADY_EXISTS, f"topic '{t.name}' already exists", -1, {}
            return codes.NONE, None, partitions, {}
        try:
            self.storage.ensure()
            topic = self.storage.create_topic(t.name, partitions, config)
        except TopicExists as exc:
            return codes.TOPIC_ALREADY_EXISTS, str(exc), -1, {}
        except KqError as exc:
            return codes.INVALID_CONFIG, str(exc), -1, {}
        return codes.NONE, None, topic.partition_count, kafka_configs(topic.config)

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

    async def describe_configs(self, body, version: int):
        R = DescribeConfigsResponse
        Result = R.DescribeConfigsResult
        Config = Result.DescribeConfigsResourceResult
        out = []
        for res in body.resources:
            if res.resource_type == BROKER_RESOURCE:
                out.append(
                    Result(
                        error_code=0,
                        error_message=None,
                        resource_type=res.resource_type,
                        resource_name=res.resource_name,
                        configs=[],
                    )
                )
                continue
            if res.resource_type != TOPIC_RESOURCE:
                out.append(
                    Result(
                        error_code=codes.INVALID_REQUEST,
                        error_message="kq describes topics only",
                        resource_type=res.resource_type,
                        resource_name=res.resource_name,
                        configs=[],
                    )
                )
                continue
            try:
                check_name(res.resource_name)
                configs = kafka_configs(self.storage.topic_config(res.resource_name))
            except TopicNotFound as exc:
                out.append(
                    Result(
                        error_code=codes.UNKNOWN_TOPIC_OR_PARTITION,
                        error_message=str(exc),
                        resource_type=res.resource_type,
                        resource_name=res.resource_name,
                        configs=[],
                    )
                )
                continue
            except KqError as exc:
                out.append(
                    Result(
                        error_code=codes.INVALID_TOPIC_EXCEPTION,
                        error_message=str(exc),
                        resource_type=res.resource_type,
                        resource_name=res.resource_name,
                        configs=[],
                    )
                )
                continue
            wanted = res.configuration_keys
            out.append(
                Result(
                    error_code=0,
                    error_message=None,
                    resource_type=res.resource_type,
                    resource_name=res.resource_name,
                    configs=[
                        Config(
                            name=k,
                            value=v,
                            read_only=False,
                            config_source=CONFIG_SOURCE_TOPIC,
                            is_default=False,
                            is_sensitive=False,
                            synonyms=[],
                            config_type=CONFIG_TYPES[k],
                            documentation=None,
                        )
                        for k, v in configs.items()
                        if wanted is None or k in wanted
                    ],
                )
            )
        return R(version=version, throttle_time_ms=0, results=out)

    async def incremental_alter_configs(self, body, version: int):
        from ..topic import DEFAULT_CONFIG

        R = IncrementalAlterConfigsResponse
        out = []
        for res in body.resources:
            code, message = codes.NONE, None
            try:
                if res.resource_type != TOPIC_RESOURCE:
                    raise ValueError("kq alters topic configs only")
                check_name(res.resource_name)
                pairs, reverted = [], {}
                for c in res.configs or ():
                    if c.config_operation == SET:
                        pairs.append((c.name, c.value))
                    elif c.config_operation == DELETE and c.name in KQ_NAMES:
                        reverted[KQ_NAMES[c.name]] = DEFAULT_CONFIG[KQ_NAMES[c.name]]
                    else:
                        raise ValueError(f"kq cannot apply operation {c.config_operation} to {c.name!r}")
                changes = {**reverted, **kq_config(pairs)}
                if body.validate_only:
                    self.storage.topic(res.resource_name)
                else:
                    self.storage.alter_topic(res.resource_name, changes)
            except ValueError as exc:
                code, message = codes.INVALID_CONFIG, str(exc)
            except TopicNotFound as exc:
                code, message = codes.UNKNOWN_TOPIC_OR_PARTITION, str(exc)
            except KqError as exc:
                code, message = codes.INVALID_CONFIG, str(exc)
            out.append(
                R.AlterConfigsResourceResponse(
                    error_code=code,
                    error_message=message,
                    resource_type=res.resource_type,
                    resource_name=res.resource_name,
                )
            )
        return R(version=version, throttle_time_ms=0, responses=out)

    async def create_partitions(self, body, version: int):
        R = CreatePartitionsResponse
        out = []
        for t in body.topics:
            code, message = codes.NONE, None
            try:
                check_name(t.name)
                if t.assignments:
                    raise ValueError("kq does not take replica assignments")
                now = self.storage.topic(t.name).partition_count
                if t.count <= now:
                    code = codes.INVALID_PARTITIONS
                    message = f"topic '{t.name}' has {now} partitions; a topic grows, never shrinks"
                elif not body.validate_only:
                    self.storage.add_partitions(t.name, t.count)
            except ValueError as exc:
                code, message = codes.INVALID_REQUEST, str(exc)
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
        for t in body.topics:
            partitions = []
            for p in t.partitions:
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
