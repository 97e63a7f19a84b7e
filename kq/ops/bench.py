"""A quick produce/consume benchmark on a scratch topic (``kq bench``).

Like Kafka's kafka-producer-perf-test: it measures this machine's disk and
CPU with kq's own code paths (batches as ``kq produce`` cuts them, reads as
``kq consume`` does), in this process, on a topic it deletes afterwards.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..consumer import Consumer
from ..engine.datadir import DataDir
from ..errors import KqError
from ..producer import Producer

BATCH_MESSAGES = 10_000  # about what `kq produce` packs per batch from a fast pipe


@dataclass
class Phase:
    name: str
    messages: int
    bytes: int
    seconds: float

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def scratch_topic_name() -> str:
    return f"__kq-bench-{os.getpid()}"


def run(data: DataDir, messages: int, size: int, partitions: int = 1, keys: int = 0, sync: bool = False) -> list[Phase]:
    """Produce ``messages`` values of ``size`` bytes to a scratch topic, then consume them."""
    name = scratch_topic_name()
    topic = data.create_topic(name, partitions, {"sync": sync})
    try:
        value = (b"0123456789abcdef" * (size // 16 + 1))[:size]
        values = [value] * min(BATCH_MESSAGES, messages)
        key_list = [b"key-%d" % (i % keys) for i in range(len(values))] if keys else None
        producer = Producer(topic)
        start = time.perf_counter()
        sent = 0
        while sent < messages:
            n = min(len(values), messages - sent)
            if key_list is None:
                producer.send_values(values[:n], size=n * size)
            else:
                producer.send_keyed(key_list[:n], values[:n], size=n * size)
            sent += n
        produced = Phase("produce", sent, sent * size, time.perf_counter() - start)

        consumer = Consumer.from_spec(topic)
        start = time.perf_counter()
        received = 0
        for slices in consumer.rounds():
            received += sum(s.stop - s.start for s in slices)
        consumer.close()
        consumed = Phase("consume", received, received * size, time.perf_counter() - start)
        if received != sent:
            raise KqError(f"the benchmark produced {sent} messages but read back {received}")
        return [produced, consumed]
    finally:
        topic.close()
        data.delete_topic(name)
