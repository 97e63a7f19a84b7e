"""Topic and broker configs: DescribeConfigs, AlterConfigs, IncrementalAlterConfigs.

kq's topic settings go by their Kafka names (kq.backends.kafka_settings
holds the table, which the Kafka-cluster backend shares); the other Kafka
topic configs are kept with the topic as given (topic_configs). The broker's
configs are read-only: kq serve takes them when it starts (cluster_info).
"""

from __future__ import annotations

from kafka.protocol.admin import (
    AlterConfigsResponse,
    DescribeConfigsResponse,
    IncrementalAlterConfigsResponse,
)

from ..backends.kafka_settings import KQ_NAMES
from ..engine.topic import DEFAULT_CONFIG, check_config
from . import codes, topic_configs
from .cluster_info import broker_configs
from .storage import KqError, Storage, TopicNotFound, check_name

TOPIC_RESOURCE = 2
BROKER_RESOURCE = 4
CONFIG_SOURCE_TOPIC = 1  # DYNAMIC_TOPIC_CONFIG: set on this topic
CONFIG_SOURCE_DEFAULT = 5  # DEFAULT_CONFIG: nobody set it
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3  # IncrementalAlterConfigs operations
NODE_ID = 0


def config_source(described) -> int:
    """Kafka's config source of a described topic config: set on the topic, or its default."""
    return CONFIG_SOURCE_DEFAULT if described.is_default else CONFIG_SOURCE_TOPIC


class ConfigAdmin:
    def __init__(self, storage: Storage, broker):
        self.storage = storage
        self.broker = broker

    async def describe_configs(self, body, version: int):
        R = DescribeConfigsResponse
        Result = R.DescribeConfigsResult
        Config = Result.DescribeConfigsResourceResult
        out = []
        for res in body.resources or ():
            code, message, configs = codes.NONE, None, []
            wanted = res.configuration_keys
            try:
                if res.resource_type == BROKER_RESOURCE:
                    if res.resource_name not in ("", str(NODE_ID)):
                        raise ValueError(f"this is broker {NODE_ID}, not {res.resource_name!r}")
                    # "": the cluster-wide dynamic defaults, of which kq serve has none
                    entries = broker_configs(self.broker) if res.resource_name else []
                    configs = [
                        Config(
                            name=c.name,
                            value=c.value,
                            read_only=True,
                            config_source=c.source,
                            is_default=c.source == CONFIG_SOURCE_DEFAULT,
                            is_sensitive=False,
                            synonyms=[],
                            config_type=c.type,
                            documentation=None,
                        )
                        for c in entries
                        if wanted is None or c.name in wanted
                    ]
                elif res.resource_type == TOPIC_RESOURCE:
                    check_name(res.resource_name)
                    topic = self.storage.topic(res.resource_name)
                    configs = [
                        Config(
                            name=c.name,
                            value=c.value,
                            read_only=False,
                            config_source=config_source(c),
                            is_default=c.is_default,
                            is_sensitive=False,
                            synonyms=[],
                            config_type=c.type,
                            documentation=None,
                        )
                        for c in topic_configs.describe(topic.config, topic.kafka_config)
                        if wanted is None or c.name in wanted
                    ]
                else:
                    raise ValueError("kq describes topics and its broker only")
            except ValueError as exc:
                code, message = codes.INVALID_REQUEST, str(exc)
            except TopicNotFound as exc:
                code, message = codes.UNKNOWN_TOPIC_OR_PARTITION, str(exc)
            except KqError as exc:
                code, message = codes.INVALID_TOPIC_EXCEPTION, str(exc)
            out.append(
                Result(
                    error_code=code,
                    error_message=message,
                    resource_type=res.resource_type,
                    resource_name=res.resource_name,
                    configs=configs,
                )
            )
        return R(version=version, throttle_time_ms=0, results=out)

    def _alter(self, res, validate_only: bool, changed) -> tuple[int, str | None]:
        """Apply ``changed(config, kept)`` -> (kq settings, kept configs) to one resource: (error code, message)."""
        try:
            if res.resource_type == BROKER_RESOURCE:
                if res.resource_name not in ("", str(NODE_ID)):
                    return codes.INVALID_REQUEST, f"this is broker {NODE_ID}, not {res.resource_name!r}"
                if res.configs:
                    names = ", ".join(sorted({c.name for c in res.configs}))
                    return (
                        codes.INVALID_REQUEST,
                        f"cannot update these configs dynamically: {names} (kq serve takes them when it starts)",
                    )
                return codes.NONE, None
            if res.resource_type != TOPIC_RESOURCE:
                return codes.INVALID_REQUEST, "kq alters topic and broker configs only"
            check_name(res.resource_name)
            topic = self.storage.topic(res.resource_name)
            config, kept = changed(dict(topic.config), dict(topic.kafka_config))
            config = check_config(config)
            if not validate_only:
                self.storage.alter_topic(res.resource_name, config, kept)
        except ValueError as exc:
            return codes.INVALID_CONFIG, str(exc)
        except TopicNotFound as exc:
            return codes.UNKNOWN_TOPIC_OR_PARTITION, str(exc)
        except KqError as exc:
            return codes.INVALID_CONFIG, str(exc)
        return codes.NONE, None

    def _alter_all(self, body, version: int, R, change):
        """Each resource of an (Incremental)AlterConfigs request altered by ``change(res, config, kept)``."""
        out = []
        for res in body.resources or ():
            code, message = self._alter(
                res, body.validate_only, lambda config, kept, res=res: change(res, config, kept)
            )
            out.append(
                R.AlterConfigsResourceResponse(
                    error_code=code,
                    error_message=message,
                    resource_type=res.resource_type,
                    resource_name=res.resource_name,
                )
            )
        return R(version=version, throttle_time_ms=0, responses=out)

    async def alter_configs(self, body, version: int):
        """AlterConfigs: a resource's configs become exactly those given (the others revert to defaults)."""

        def replaced(res, config, kept):
            given, kept = topic_configs.split((c.name, c.value) for c in res.configs or ())
            return {**DEFAULT_CONFIG, **given}, kept

        return self._alter_all(body, version, AlterConfigsResponse, replaced)

    async def incremental_alter_configs(self, body, version: int):
        """IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT each named config."""

        def changed(res, config, kept):
            for c in res.configs or ():
                if c.config_operation == DELETE:
                    topic_configs.check_name(c.name)
                    if c.name in KQ_NAMES:
                        config[KQ_NAMES[c.name]] = DEFAULT_CONFIG[KQ_NAMES[c.name]]
                    kept.pop(c.name, None)
                    continue
                if c.config_operation in (APPEND, SUBTRACT):
                    if c.name not in topic_configs.LIST_CONFIGS:
                        topic_configs.check_name(c.name)
                        raise ValueError(f"{c.name} is not a list: it takes SET and DELETE only")
                    now = topic_configs.current_value(config, kept, c.name)
                    items = [i.strip() for i in now.split(",") if i.strip()]
                    given = [i.strip() for i in (c.value or "").split(",") if i.strip()]
                    if c.config_operation == APPEND:
                        items += [i for i in given if i not in items]
                    else:
                        items = [i for i in items if i not in given]
                    value: str | None = ",".join(items)
                elif c.config_operation == SET:
                    value = c.value
                else:
                    raise ValueError(f"unknown operation {c.config_operation} on {c.name}")
                settings, extra = topic_configs.split([(c.name, value)])
                config.update(settings)
                kept.update(extra)
            return config, kept

        return self._alter_all(body, version, IncrementalAlterConfigsResponse, changed)
