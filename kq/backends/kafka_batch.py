"""One round's messages of one partition from a Kafka cluster, shaped like kq.engine.batch.RecordBatch
for the writers: values taken from confluent-kafka's messages in C, records made only when asked.
"""

from __future__ import annotations

from ..engine.batch import Record


class MessageBatch:
    """Records of one partition from one round, shaped like kq.engine.batch.RecordBatch for the writers."""

    __slots__ = ("messages", "count", "base_offset", "next_offset", "last_offset_delta", "_values", "_offsets")

    def __init__(self, messages: list):
        self.messages = messages
        self.count = len(messages)
        self.base_offset = messages[0].offset()
        last = messages[-1].offset()
        self.next_offset = last + 1
        self.last_offset_delta = last - self.base_offset
        self._values: list | None = None
        # Offsets are dense unless the topic is compacted or transactional.
        self._offsets = None if last - self.base_offset + 1 == self.count else [m.offset() for m in messages]

    @property
    def values(self) -> list:
        if self._values is None:
            from confluent_kafka import Message

            self._values = list(map(Message.value, self.messages))
        return self._values

    def offsets(self):
        if self._offsets is None:
            return range(self.base_offset, self.next_offset)
        return self._offsets

    def offset_at(self, index: int) -> int:
        if index >= self.count:
            return self.next_offset
        return self.base_offset + index if self._offsets is None else self._offsets[index]

    def records(self, start: int = 0, stop: int | None = None):
        for m in self.messages[start : self.count if stop is None else stop]:
            headers = m.headers()
            yield Record(
                m.offset(),
                m.timestamp()[1],
                m.key(),
                m.value(),
                list(headers) if headers else [],
            )
