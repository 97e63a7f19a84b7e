"""Kafka's names for kq's things: client settings (``-X``, a settings file) and topic configs.

Nothing here imports a Kafka library: the CLI reads settings before it knows
whether confluent-kafka is installed, and ``kq serve`` maps topic configs
with the same table.
"""

from __future__ import annotations

import re

from ..errors import UsageError

# librdkafka settings whose values are secrets (passwords, private keys,
# OAuth client secrets, JAAS lines): never printed, and blanked out of any
# error text that quotes them.
_SECRET = re.compile(r"password|secret|\.pem$|ssl\.key\.|jaas|oauthbearer\.config|token|credential", re.I)
REDACTED = "[redacted]"
MAX_SETTINGS_BYTES = 1024 * 1024


# One broker of a list: [PROTOCOL://]HOST:PORT. The port is required, as Kafka's own tools require it
# (librdkafka would take 9092), so that one cluster has one spelling: the bridge keys its positions on it.
_BROKER = re.compile(r"(?:[A-Za-z_]+://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\],]+):(\d{1,5})")


def parse_brokers(text: str) -> str:
    """The broker list ``HOST:PORT[,HOST:PORT...]`` (a leading ``kafka://`` dropped, as the bridge
    writes it), checked, so that a typo is an error at once rather than a wait for a cluster that is not there."""
    brokers = text.strip()
    if brokers.startswith("kafka://"):
        brokers = brokers[len("kafka://") :].rstrip("/")
    for broker in brokers.split(","):
        m = _BROKER.fullmatch(broker.strip())
        if not m or not 0 < int(m.group(2)) < 65536:
            raise UsageError(f"{text!r} is not a broker list: HOST:PORT[,HOST:PORT...]")
    return ",".join(b.strip() for b in brokers.split(","))


def is_secret(key: str) -> bool:
    return bool(_SECRET.search(key))


def parse_setting(text: str, where: str) -> tuple[str, str]:
    """``KEY=VALUE`` as (key, value); the error names ``where`` but never the value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(c.isspace() for c in key):
        raise UsageError(f"{where}: expected KEY=VALUE (a librdkafka setting such as security.protocol=SSL)")
    return key, value.strip()


def read_settings_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines skipped), as kcat's ``-F`` reads them."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SETTINGS_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the Kafka settings file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SETTINGS_BYTES:
        raise UsageError(f"the Kafka settings file {path} is larger than {MAX_SETTINGS_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the Kafka settings file {path} is not UTF-8 text") from None
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, value = parse_setting(stripped, f"line {number} of {path}")
        out[key] = value
    return out


def client_settings(pairs: list[str] | None = None, path: str | None = None, label: str = "setting") -> dict[str, str]:
    """The librdkafka settings of a run: the file's, then each ``KEY=VALUE`` of ``pairs`` (which win).

    A malformed pair is named by ``label`` and its number, never by its text (it may hold a secret).
    """
    out = read_settings_file(path) if path else {}
    for number, pair in enumerate(pairs or (), 1):
        key, value = parse_setting(pair, f"{label} #{number}")
        out[key] = value
    return out


SHORT_SECRET = 8  # a secret this short is blanked out only where it stands alone (it may be a common letter)


def redact(text: str, settings: dict) -> str:
    """``text`` with the value of every secret setting blanked out.

    A long value is blanked out wherever it occurs; a short one only where it
    is not part of a longer word, or a one-letter password would blank every
    "e" of the message (and hide nothing: any text holds such a letter).
    """
    for key, value in settings.items():
        if is_secret(key) and isinstance(value, str) and value:
            if len(value) >= SHORT_SECRET:
                text = text.replace(value, REDACTED)
            else:
                text = re.sub(rf"(?<![\w]){re.escape(value)}(?![\w])", REDACTED, text)
    return text


# ---------------------------------------------------------------- topic configs
# kq's topic settings under their Kafka names:
#
#     segment.bytes        segment_bytes
#     retention.ms         retention_ms (-1: keep forever)
#     retention.bytes      retention_bytes (-1: no limit)
#     cleanup.policy       cleanup (delete | compact; Kafka's "compact,delete" is kq's compact,
#                          which applies retention too)
#     delete.retention.ms  tombstone_retention_ms
#     flush.messages       sync (1: fdatasync every batch; otherwise the maximum, as Kafka's default)
#     compression.type     compression (Kafka's "uncompressed" is kq's none; zstd, lz4, gzip, snappy, producer)

NO_LIMIT = 9223372036854775807  # Kafka's Long.MAX_VALUE, its "never" for flush.messages
KAFKA_NAMES = {
    "segment_bytes": "segment.bytes",
    "retention_ms": "retention.ms",
    "retention_bytes": "retention.bytes",
    "cleanup": "cleanup.policy",
    "tombstone_retention_ms": "delete.retention.ms",
    "sync": "flush.messages",
    "compression": "compression.type",
}
KQ_NAMES = {kafka: kq for kq, kafka in KAFKA_NAMES.items()}


def kafka_value(name: str, value) -> str:
    """One kq setting's value as the Kafka config of ``KAFKA_NAMES[name]`` takes it."""
    if name == "sync":
        return "1" if value else str(NO_LIMIT)
    if name in ("retention_ms", "retention_bytes"):
        return "-1" if value is None else str(value)
    if name == "compression" and value == "none":
        return "uncompressed"
    return str(value)


def kafka_configs(config: dict) -> dict[str, str]:
    """kq topic settings (all or some) as Kafka topic configs."""
    return {KAFKA_NAMES[k]: kafka_value(k, v) for k, v in config.items() if k in KAFKA_NAMES}


def kq_config(configs, strict: bool = True) -> dict:
    """Kafka topic configs ((name, value) pairs) as kq settings.

    ``strict`` (a CreateTopics request to kq serve): a config kq has no
    setting for, or a value out of its range, raises ValueError naming it.
    Otherwise (describing a cluster's topic) such configs are left out.
    """
    out: dict = {}
    for name, value in configs:
        if value is None:
            continue
        kq_name = KQ_NAMES.get(name)
        try:
            if kq_name is None:
                raise ValueError(f"kq topics have no setting {name!r}")
            if kq_name in ("segment_bytes", "tombstone_retention_ms"):
                out[kq_name] = int(value)
            elif kq_name in ("retention_ms", "retention_bytes"):
                number = int(value)
                out[kq_name] = None if number < 0 else number
            elif kq_name == "cleanup":
                policies = {p.strip() for p in value.split(",")}
                if not policies or not policies <= {"delete", "compact"} or (strict and len(policies) > 1):
                    raise ValueError
                out[kq_name] = "compact" if "compact" in policies else "delete"
            elif kq_name == "compression":
                codec = value.strip()
                if codec not in ("uncompressed", "none", "zstd", "lz4", "gzip", "snappy", "producer"):
                    raise ValueError
                out[kq_name] = "none" if codec == "uncompressed" else codec
            else:
                out[kq_name] = int(value) == 1
        except ValueError as exc:
            if strict:
                raise ValueError(str(exc) or f"invalid value {value!r} for {name}") from None
    return out
