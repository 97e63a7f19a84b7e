"""Records to a Kafka cluster: the producer (kq.producer's counterpart).

Each record goes through librdkafka with its ``murmur2_random`` partitioner
(Kafka's, and kq's, placement of keys), idempotent where asked, and
``flush`` returns once every record is acknowledged (acks=all), raising the
first refusal with the cluster's reason. Kept apart from the readers so that
a produce loads nothing of kq's storage engine.
"""

from __future__ import annotations

import time
from collections import deque
from functools import partial
from itertools import starmap

from ..errors import ClusterError, KqError

POLL_EVERY = 100_000  # a producer serves delivery reports (refusals) at least this often
MAX_REFRESHES = 20  # times a producer asks again for a topic's partitions before a new one counts as unknown
PRODUCER_DEFAULTS = {
    "partitioner": "murmur2_random",  # Kafka's (and kq's) placement of keys; librdkafka's default is CRC32
    "acks": "all",
    "allow.auto.create.topics": False,
    "queue.buffering.max.messages": 500_000,
}


class KafkaProducer:
    """Sends records to ``topic`` (kq.backends.base.Producer); ``partition`` pins every record there."""

    def __init__(
        self, backend, topic: str, partition: int | None = None, idempotent: bool = False, client=None, config=None
    ):
        self.backend = backend
        self.topic = topic
        self.partition = partition
        self.ck = backend.ck
        self.sent = 0
        self.failed = 0
        self._refusal: tuple | None = None  # the first record the cluster refused: (error, partition)
        self._unpolled = 0  # records sent since delivery reports were last served
        self._refreshes = 0  # times the topic's partitions were asked for again
        # Idempotence (no duplicate or gap from a retry, order kept) costs a
        # short-lived producer about half a second to get its producer id.
        defaults = {**PRODUCER_DEFAULTS, "enable.idempotence": idempotent}
        if config is None:
            config = producer_config(backend, defaults, self._delivered)
        try:
            self.queue_room = int(config["queue.buffering.max.messages"])
        except ValueError:
            self.queue_room = 0  # librdkafka refuses it below
        # ``client``: a transaction's librdkafka producer (kq.backends.kafka_transaction), shared
        self._producer = client if client is not None else backend.make("Producer", config)

    def _count_refusal(self, err, msg) -> None:
        self._delivered(err, msg)

    def _delivered(self, err, msg) -> None:
        # Only failures are reported (delivery.report.only.error): a callback per record would cost more than sending it.
        self.failed += 1
        if self._refusal is None:
            self._refusal = (err, msg.partition())

    @property
    def written(self) -> int:
        """Records acknowledged so far: sent, less those waiting or refused."""
        return self.sent - self.failed - len(self._producer)

    def _raise(self) -> None:
        if self._refusal is not None:
            err, partition = self._refusal
            raise ClusterError(
                self.backend.brokers,
                f"a record for {self.topic}/{partition} was not written: {self.backend.error_reason(err)}",
            )

    def _send(self, produce, items, star: bool) -> None:
        """``produce(*item)`` (or ``produce(item)``) for each item, waiting for room when librdkafka's queue is full."""
        i, n = 0, len(items)
        while i < n:
            todo = items[i:] if i else items
            rest = None  # the items map() has yet to take, when map() sends them
            try:
                if len(self._producer) + len(todo) <= self.queue_room:
                    # Room for all of them: no BufferError can come, so map() may call produce without
                    # a count (after an error, what is left in ``rest`` tells how far it got).
                    rest = iter(todo)
                    deque(starmap(produce, rest) if star else map(produce, rest), 0)
                    i = n
                    break
                for item in todo:
                    if star:
                        produce(*item)
                    else:
                        produce(item)
                    i += 1
            except BufferError:
                # Full (queue.buffering.max.kbytes can fill before the count): go on after the last one taken.
                i = _sent_before_error(i, todo, rest)
                self._producer.poll(0.005)  # deliveries free the queue
            except self.ck.KafkaException as exc:
                if exc.args[0].code() == self.ck.KafkaError._UNKNOWN_PARTITION and self._learn_partitions():
                    i = _sent_before_error(i, todo, rest)  # a partition added since: send from the record that failed
                    continue
                self.sent += _sent_before_error(i, todo, rest)
                raise self.backend.error(exc, f"sending to '{self.topic}'", self.topic) from None
            except TypeError as exc:
                self.sent += _sent_before_error(i, todo, rest)
                raise KqError(f"cannot send to '{self.topic}': {exc}") from None
        self.sent += n
        self._unpolled += n
        if self._unpolled >= POLL_EVERY:
            self._unpolled = 0
            self._producer.poll(0)  # serves refusals (delivery reports of errors)
        self._raise()

    def _learn_partitions(self) -> bool:
        """Ask the cluster for the topic's partitions again (they grew); False once that was tried enough."""
        self._refreshes += 1
        if self._refreshes > MAX_REFRESHES:
            return False
        try:
            self._producer.list_topics(self.topic, timeout=self.backend.timeout)
        except self.ck.KafkaException:
            pass
        time.sleep(0.05 * self._refreshes)  # a cluster's brokers learn of new partitions in a moment
        return True

    def _produce(self, **fixed):
        if self.partition is not None:
            fixed["partition"] = self.partition
        return partial(self._producer.produce, self.topic, **fixed)

    def send_values(self, values: list, key: bytes | None = None, headers=None, size: int | None = None) -> None:
        fixed: dict = {}
        if key is not None:
            fixed["key"] = key
        if headers:
            fixed["headers"] = list(headers)
        self._send(self._produce(**fixed), values, star=False)

    def send_keyed(self, keys: list, values: list, headers=None, size: int | None = None) -> None:
        fixed = {"headers": list(headers)} if headers else {}
        self._send(self._produce(**fixed), list(zip(values, keys)), star=True)

    def send_records(self, records) -> None:
        """(key, value, headers, partition, timestamp) tuples; a pinned partition wins over theirs."""
        produce = self._producer.produce
        topic, pinned = self.topic, self.partition

        def one(key, value, headers, partition, timestamp):
            p = pinned if pinned is not None else (-1 if partition is None else partition)
            produce(topic, value, key, p, timestamp=timestamp or 0, headers=headers or None)

        self._send(one, records, star=True)

    def send_columns(self, keys, values: list, headers, partitions, timestamps) -> None:
        """Records as columns (each but ``values`` None if no record has one); see send_records."""
        nones = [None] * len(values)
        self.send_records(list(zip(keys or nones, values, headers or nones, partitions or nones, timestamps or nones)))

    def flush(self) -> None:
        """Wait until every record sent is acknowledged or refused; raise the first refusal."""
        while len(self._producer):
            self._producer.flush(0.5)
        self._raise()

    def close(self) -> None:
        self.flush()


def producer_config(backend, defaults: dict, on_delivery, **fixed) -> dict:
    """A producer's settings: ``defaults``, the user's, then what kq needs (only failures reported)."""
    return backend.client_config(defaults, **{"delivery.report.only.error": True, "on_delivery": on_delivery, **fixed})


def _sent_before_error(counted: int, todo: list, rest) -> int:
    """How many records were handed to librdkafka before the one that raised: ``counted`` by a
    loop, or, when map() sent them from ``rest``, those of ``todo`` it took, less the failing one."""
    if rest is None:
        return counted
    return counted + len(todo) - sum(1 for _ in rest) - 1
