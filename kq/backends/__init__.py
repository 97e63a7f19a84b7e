"""Backends: where a kq command's topics live (kq.backends.base has the interface).

``open_backend`` picks one: a Kafka cluster when brokers are given, the data
directory otherwise. Modules are imported on use, so that ``import kq`` (and a
command on a data directory) never loads a Kafka client.
"""

from __future__ import annotations


def open_backend(data_dir: str | None = None, brokers: str | None = None, kafka_config: dict | None = None):
    """A backend for the data directory ``data_dir`` (the default one if None), or for the
    Kafka cluster at ``brokers`` (HOST:PORT[,HOST:PORT...]) with librdkafka settings ``kafka_config``."""
    if brokers:
        from .kafka import KafkaBackend

        return KafkaBackend(brokers, kafka_config or {})
    from .local import LocalBackend

    return LocalBackend(data_dir)
