"""Comparing a copy with its source, record by record: whether a record is the copy of another,
the content digest the bridge keeps of the last record copied (docs/FORMAT.md, "Bridge records":
``last``), and one partition's records read in order from either side.
"""

from __future__ import annotations

import hashlib
import struct

from ..backends.base import Backend
from ..offsetspec import ABSOLUTE, OffsetRange, OffsetSpec


def record_digest(r) -> str:
    """The hex SHA-256 of a record's timestamp, key, value and headers, fed unambiguously
    (docs/FORMAT.md, "Bridge records": ``last``)."""
    h = hashlib.sha256()

    def chunk(data: bytes | None) -> None:
        if data is None:
            h.update(b"\xff")
        else:
            h.update(struct.pack(">I", len(data)))
            h.update(data)

    h.update(struct.pack(">q", r.timestamp))
    chunk(r.key)
    chunk(r.value)
    h.update(struct.pack(">I", len(r.headers)))
    for name, value in r.headers:
        chunk(name.encode("utf-8"))
        chunk(value)
    return h.hexdigest()


def same_record(source, target) -> bool:
    """Whether ``target`` is the copy of ``source``. librdkafka cannot send a timestamp of 0 (it
    reads 0 as "now"), so a source record stamped 0 matches its copy whatever the copy's stamp."""

    def content(r) -> tuple:
        return r.key, r.value, [(name, value) for name, value in r.headers]

    return (source.timestamp == target.timestamp or source.timestamp == 0) and content(source) == content(target)


def partition_records(backend: Backend, topic: str, partition: int, start: int, count: int | None = None, stop=None):
    """The records of one partition from ``start`` (``count`` of them, or up to ``stop``, or to the end)."""
    if count == 0:
        return
    stop_spec = None if stop is None else OffsetSpec(ABSOLUTE, stop)
    reader = backend.reader(topic, [partition], OffsetRange(OffsetSpec(ABSOLUTE, start), stop_spec))
    try:
        for slices in reader.rounds():
            for sl in slices:
                for r in sl.batch.records(sl.start, sl.stop):
                    yield r
                    if count is not None:
                        count -= 1
                        if count == 0:
                            return
    finally:
        reader.close()
