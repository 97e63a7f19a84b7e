"""A transaction on a Kafka cluster: librdkafka's transactional producer and ``send_offsets_to_transaction``.

The cluster's counterpart of kq.backends.local_transaction, for
``kq -b ... produce --transactional`` and the ``--exec --produce-to``
pipeline: one librdkafka producer with a ``transactional.id``, a
transaction always begun, and a group's offsets sent with the consumer's
group metadata (KIP-447), so a zombie member's commit is fenced.
"""

from __future__ import annotations

from ..errors import ClusterError, ProducerFenced
from .kafka_producer import PRODUCER_DEFAULTS, KafkaProducer, producer_config


class KafkaTransaction:
    """A transactional id's producer on a cluster (kq.backends.base.Transaction)."""

    def __init__(self, backend, transactional_id: str, timeout_ms: int | None = None):
        self.backend = backend
        self.ck = backend.ck
        self.transactional_id = transactional_id
        self.reader = None  # the group reader whose consumer's metadata goes with sent offsets
        self._producers: list[KafkaProducer] = []
        self._refusals: list = []
        fixed = {"transactional.id": transactional_id, "enable.idempotence": True}
        if timeout_ms is not None:
            fixed["transaction.timeout.ms"] = timeout_ms
        self.config = producer_config(backend, dict(PRODUCER_DEFAULTS), self._delivered, **fixed)
        self.client = backend.make("Producer", self.config)
        self._call(self.client.init_transactions, "initialising the transactional id", backend.timeout)
        self._call(self.client.begin_transaction, "beginning a transaction")

    def _delivered(self, err, msg) -> None:
        for producer in self._producers:
            if producer.topic == msg.topic():
                producer._count_refusal(err, msg)
                return

    def _call(self, fn, what: str, *args):
        try:
            return fn(*args)
        except self.ck.KafkaException as exc:
            err = exc.args[0]
            if err.fatal() or err.code() == self.ck.KafkaError._FENCED:
                raise ProducerFenced(f"Kafka cluster {self.backend.brokers}: {what}: {err.str()}") from None
            raise ClusterError(self.backend.brokers, f"{what}: {err.str()}") from None

    def producer(self, topic: str, partition: int | None = None) -> KafkaProducer:
        count = self.backend.partition_count(topic)
        if partition is not None:
            self.backend.check_partition(topic, partition, count)
        producer = KafkaProducer(self.backend, topic, partition, True, client=self.client, config=self.config)
        self._producers.append(producer)
        return producer

    def send_offsets(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        if self.reader is None:
            raise ClusterError(self.backend.brokers, "offsets can only be sent with a group reader's metadata")
        tps = [self.ck.TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
        metadata = self.reader.consumer.consumer_group_metadata()
        self._call(self.client.send_offsets_to_transaction, "sending offsets", tps, metadata, self.backend.timeout)

    def commit(self) -> None:
        for producer in self._producers:
            producer.flush()
        self._call(self.client.commit_transaction, "committing a transaction", self.backend.timeout)
        self._call(self.client.begin_transaction, "beginning a transaction")

    def abort(self) -> None:
        self._call(self.client.abort_transaction, "aborting a transaction", self.backend.timeout)
        self._call(self.client.begin_transaction, "beginning a transaction")

    def close(self) -> None:
        try:
            self.client.abort_transaction(self.backend.timeout)
        except self.ck.KafkaException:
            pass
        self.client.flush(0)
