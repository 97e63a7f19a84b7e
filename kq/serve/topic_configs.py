"""Kafka's topic configs as kq serve takes them: which exist, their types, defaults and valid values.

A config kq has a setting for (``segment.bytes``, ``retention.ms``,
``compression.type``, ...; the table in kq.backends.kafka_settings) changes
that setting. Every other valid Kafka topic config (``min.insync.replicas``, ...) is
kept with the topic as given (``kafka_config`` in topic.json) and reported by
DescribeConfigs, so that tools which set them work; kq itself does not act on
them. Only names Kafka does not know, and values Kafka would refuse, are
refused, as Kafka does (INVALID_CONFIG).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..backends.kafka_settings import KQ_NAMES, kafka_configs, kq_config
from ..engine.topic import DEFAULT_CONFIG, LARGEST

# DescribeConfigs' config types
BOOLEAN, STRING, INT, LONG, DOUBLE, LIST = 1, 2, 3, 5, 6, 7
INT_MAX = 2**31 - 1


class Spec(NamedTuple):
    type: int
    default: str
    valid: Callable[[str], bool]


def _integer(low: int, high: int) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            return low <= int(text.strip()) <= high
        except ValueError:
            return False

    return check


def _ratio(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False


def _boolean(text: str) -> bool:
    return text.strip().lower() in ("true", "false")


def _one_of(*choices: str) -> Callable[[str], bool]:
    return lambda text: text.strip() in choices


def _list_of(*choices: str) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        items = [item.strip() for item in text.split(",") if item.strip()]
        return bool(items) and all(item in choices for item in items)

    return check


def _replica_list(text: str) -> bool:
    """``*.replication.throttled.replicas``: empty, ``*``, or PARTITION:BROKER pairs."""
    text = text.strip()
    if text in ("", "*"):
        return True
    for pair in text.split(","):
        partition, sep, broker = pair.strip().partition(":")
        if not (sep and partition.strip().isdigit() and broker.strip().isdigit()):
            return False
    return True


LONG_MAX = str(LARGEST)
# Apache Kafka 4.x's topic configs (LogConfig / TopicConfig), with the broker's defaults.
KAFKA_TOPIC_CONFIGS: dict[str, Spec] = {
    "cleanup.policy": Spec(LIST, "delete", _list_of("delete", "compact")),
    "compression.type": Spec(STRING, "producer", _one_of("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer")),
    "compression.gzip.level": Spec(INT, "-1", lambda t: _integer(1, 9)(t) or _integer(-1, -1)(t)),
    "compression.lz4.level": Spec(INT, "9", _integer(1, 17)),
    "compression.zstd.level": Spec(INT, "3", _integer(-131072, 22)),
    "delete.retention.ms": Spec(LONG, "86400000", _integer(0, LARGEST)),
    "file.delete.delay.ms": Spec(LONG, "60000", _integer(0, LARGEST)),
    "flush.messages": Spec(LONG, LONG_MAX, _integer(1, LARGEST)),
    "flush.ms": Spec(LONG, LONG_MAX, _integer(0, LARGEST)),
    "follower.replication.throttled.replicas": Spec(LIST, "", _replica_list),
    "index.interval.bytes": Spec(INT, "4096", _integer(0, INT_MAX)),
    "leader.replication.throttled.replicas": Spec(LIST, "", _replica_list),
    "local.retention.bytes": Spec(LONG, "-2", _integer(-2, LARGEST)),
    "local.retention.ms": Spec(LONG, "-2", _integer(-2, LARGEST)),
    "max.compaction.lag.ms": Spec(LONG, LONG_MAX, _integer(1, LARGEST)),
    "max.message.bytes": Spec(INT, "1048588", _integer(0, INT_MAX)),
    "message.timestamp.after.max.ms": Spec(LONG, "3600000", _integer(0, LARGEST)),
    "message.timestamp.before.max.ms": Spec(LONG, LONG_MAX, _integer(0, LARGEST)),
    "message.timestamp.type": Spec(STRING, "CreateTime", _one_of("CreateTime", "LogAppendTime")),
    "min.cleanable.dirty.ratio": Spec(DOUBLE, "0.5", _ratio),
    "min.compaction.lag.ms": Spec(LONG, "0", _integer(0, LARGEST)),
    "min.insync.replicas": Spec(INT, "1", _integer(1, INT_MAX)),
    "preallocate": Spec(BOOLEAN, "false", _boolean),
    "remote.log.copy.disable": Spec(BOOLEAN, "false", _boolean),
    "remote.log.delete.on.disable": Spec(BOOLEAN, "false", _boolean),
    "remote.storage.enable": Spec(BOOLEAN, "false", _boolean),
    "retention.bytes": Spec(LONG, "-1", _integer(-(2**63), LARGEST)),
    "retention.ms": Spec(LONG, "604800000", _integer(-1, LARGEST)),
    "segment.bytes": Spec(INT, "1073741824", _integer(4096, INT_MAX)),
    "segment.index.bytes": Spec(INT, "10485760", _integer(4, INT_MAX)),
    "segment.jitter.ms": Spec(LONG, "0", _integer(0, LARGEST)),
    "segment.ms": Spec(LONG, "604800000", _integer(1, LARGEST)),
    "unclean.leader.election.enable": Spec(BOOLEAN, "false", _boolean),
}
LIST_CONFIGS = {name for name, spec in KAFKA_TOPIC_CONFIGS.items() if spec.type == LIST}
KQ_DEFAULTS = kafka_configs(DEFAULT_CONFIG)  # what kq's own settings are when nobody set them


class Described(NamedTuple):
    name: str
    value: str
    is_default: bool
    type: int


def check_name(name: str) -> Spec:
    """The spec of the Kafka topic config ``name``; ValueError if Kafka has no such config."""
    spec = KAFKA_TOPIC_CONFIGS.get(name)
    if spec is None:
        raise ValueError(f"unknown topic config name: {name}")
    return spec


def check(name: str, value: str | None) -> str:
    """``value`` if Kafka would take it for the topic config ``name``; ValueError otherwise."""
    spec = check_name(name)
    if value is None:
        raise ValueError(f"null value not supported for topic config {name}")
    if not spec.valid(value):
        raise ValueError(f"invalid value {value!r} for topic config {name}")
    return value.strip()


def split(configs: Iterable[tuple[str, str | None]]) -> tuple[dict, dict[str, str]]:
    """Kafka topic configs as (kq settings, configs kept as given); ValueError names a bad one."""
    mapped, kept = [], {}
    for name, value in configs:
        value = check(name, value)
        if name in KQ_NAMES:
            mapped.append((name, _kq_spelling(name, value)))
        else:
            kept[name] = value
    return kq_config(mapped), kept


def _kq_spelling(name: str, value: str) -> str:
    """A valid Kafka value in the form kq's mapping takes (``compact,delete`` is kq's ``compact``,
    which applies retention too)."""
    if name == "cleanup.policy":
        policies = {p.strip() for p in value.split(",") if p.strip()}
        return "compact" if "compact" in policies else "delete"
    return value


def describe(config: dict, kept: dict[str, str]) -> list[Described]:
    """Every topic config of a topic with kq settings ``config`` and kept configs ``kept``, by name."""
    current = kafka_configs(config)
    out = []
    for name, spec in sorted(KAFKA_TOPIC_CONFIGS.items()):
        if name in current:
            value = current[name]
            is_default = value == KQ_DEFAULTS[name]
        else:
            value = kept.get(name, spec.default)
            is_default = name not in kept
        out.append(Described(name, value, is_default, spec.type))
    return out


def current_value(config: dict, kept: dict[str, str], name: str) -> str:
    """The value of ``name`` now (kq's setting, the kept config, or Kafka's default)."""
    current = kafka_configs(config)
    if name in current:
        return current[name]
    return kept.get(name, KAFKA_TOPIC_CONFIGS[name].default)
