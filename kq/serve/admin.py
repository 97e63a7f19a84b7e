"""Topic administration: CreateTopics, DeleteTopics, DescribeConfigs.

kq's topic settings under their Kafka names (the only configs a kq topic has):

    segment.bytes        segment_bytes
    retention.ms         retention_ms (-1: keep forever)
    retention.bytes      retention_bytes (-1: no limit)
    cleanup.policy       cleanup (delete | compact)
    delete.retention.ms  tombstone_retention_ms
    flush.messages       sync (1: fdatasync every batch; otherwise the maximum, as Kafka's default)
"""

from __future__ import annotations

from kafka.protocol.admin import CreateTopicsResponse, DeleteTopicsResponse, DescribeConfigsResponse

from . import codes
from .storage import KqError, Storage, TopicExists, TopicNotFound, check_name

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
NO_LIMIT = 9223372036854775807  # Kafka's Long.MAX_VALUE, its "never" for flush.messages
CONFIG_SOURCE_TOPIC = 1  # DYNAMIC_TOPIC_CONFIG: set on this topic
CONFIG_TYPES = {
    "segment.bytes": 3,
    "retention.ms": 5,
    "retention.bytes": 5,
    "cleanup.policy": 7,
    "delete.retention.ms": 5,
    "flush.messages": 5,
}  # INT=3, LONG=5, LIST=7


def kafka_configs(config: dict) -> dict[str, str]:
    """A kq topic config as Kafka topic configs."""

    def limit(value):
        return "-1" if value is None else str(value)

    return {
        "segment.bytes": str(config["segment_bytes"]),
        "retention.ms": limit(config["retention_ms"]),
        "retention.bytes": limit(config["retention_bytes"]),
        "cleanup.policy": config["cleanup"],
        "delete.retention.ms": str(config["tombstone_retention_ms"]),
        "flush.messages": "1" if config["sync"] else str(NO_LIMIT),
    }


def kq_config(configs: list[tuple[str, str | None]]) -> dict:
    """Kafka topic configs (from CreateTopics) as kq settings; ValueError names a bad one."""
    out: dict = {}
    for name, value in configs:
        if value is None:
            continue
        try:
            if name == "segment.bytes":
                out["segment_bytes"] = int(value)
            elif name in ("retention.ms", "retention.bytes"):
                number = int(value)
                out[name.replace(".", "_")] = None if number < 0 else number
            elif name == "cleanup.policy":
                if value not in ("delete", "compact"):
                    raise ValueError
                out["cleanup"] = value
            elif name == "delete.retention.ms":
                out["tombstone_retention_ms"] = int(value)
            elif name == "flush.messages":
                out["sync"] = int(value) == 1
            else:
                raise ValueError(f"kq topics have no setting {name!r}")
        except ValueError as exc:
            raise ValueError(str(exc) or f"invalid value {value!r} for {name}") from None
    return out


class Admin:
    def __init__(self, storage: Storage, broker):
        self.storage = storage
        self.broker = broker

    async def create_topics(self, body, version: int):
        R = CreateTopicsResponse
        out = []
        for t in body.topics:
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
