"""What a broker's topics hold, read straight from its data directory (no consumer, no protocol)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from ..engine.datadir import DataDir
from ..errors import KqError

MAX_SHOWN_RECORDS = 50  # per report: the first failing question is "what was in the topic?", not all of it
MAX_SHOWN_BYTES = 100  # of a key or a value


class TopicRecord(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int  # milliseconds since the epoch, as Kafka's


def records(data_dir: str, topic: str) -> Iterator[TopicRecord]:
    """Every record of ``topic``, partition by partition, in offset order."""
    t = DataDir(data_dir).topic(topic)
    try:
        for number in range(t.partition_count):
            for r in t.partition(number).read():
                yield TopicRecord(number, r.offset, r.key, r.value, list(r.headers), r.timestamp)
    finally:
        t.close()


def summary(data_dir: str, limit: int = MAX_SHOWN_RECORDS) -> str:
    """What the topics held, one line per record (at most ``limit``), for a failing test's report."""
    try:
        names = DataDir(data_dir).topic_names()
    except (KqError, OSError) as exc:
        return f"(the data directory could not be read: {exc})"
    if not names:
        return "(no topics)"
    lines: list[str] = []
    shown = total = 0
    for name in names:
        count = 0
        try:
            for r in records(data_dir, name):
                count += 1
                if shown < limit:
                    shown += 1
                    lines.append(
                        f"{name} [{r.partition}] @{r.offset} key={_one_line(r.key)} value={_one_line(r.value)}"
                    )
        except (KqError, OSError) as exc:
            lines.append(f"{name}: could not be read: {exc}")
        if count == 0:
            lines.append(f"{name}: empty")
        total += count
    if total > shown:
        lines.append(f"... {total - shown} more records not shown ({total} in all)")
    return "\n".join(lines)


def _one_line(data: bytes | None) -> str:
    """``data`` as Python shows bytes, without the b: escapes keep it on one line; long ones are cut."""
    if data is None:
        return "null"
    if len(data) <= MAX_SHOWN_BYTES:
        return repr(data)[1:]
    return f"{repr(data[:MAX_SHOWN_BYTES])[1:]}... ({len(data)} bytes)"
