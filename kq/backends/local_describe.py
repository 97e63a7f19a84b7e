"""A data directory's topics described again and again (``kq top`` does it every second), cheaply.

Describing a partition reads its directory, its start offset file and the
tail of its last segment. Most partitions of a large directory have not
changed since the last look, and that is known from two stamps
(kq.engine.stamps):

- the partition directory's: a segment created, deleted or replaced (a
  roll, retention, compaction, a trim's ``start.offset``) renames or
  removes an entry in it;
- the last segment's: an append (or a recovery cutting a torn tail) changes
  its size.

When neither changed, the partition's start offset, end offset and size are
the ones found last time, and a topic none of whose partitions changed is
described by the very ``TopicInfo`` returned last time (callers may reuse
what they made of it, by identity). A topic's ``topic.json`` is stamped the same way:
a topic created again or given more partitions has a new one (it is written
whole and renamed into place), and is opened afresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..engine.datadir import DataDir
from ..engine.location import TOPIC_FILE
from ..engine.partition import Partition
from ..engine.stamps import reading_started, settled, stamp
from ..engine.topic import Topic
from ..errors import KqError
from .base import PartitionInfo, TopicInfo


@dataclass
class _KnownPartition:
    directory: tuple | None
    last_log: str | None  # the last segment's path when it was read
    last_log_stamp: tuple | None
    info: PartitionInfo
    trusted: bool  # read long enough after both stamps' modification times


@dataclass
class _KnownTopic:
    topic: Topic
    stamp: tuple
    partitions: dict[int, _KnownPartition] = field(default_factory=dict)
    info: TopicInfo | None = None  # the last answer, given again while its partitions' are the same


class TopicDescriber:
    """``describe_topics`` for a data directory that is asked again and again."""

    def __init__(self, data: DataDir):
        self.data = data
        self._known: dict[str, _KnownTopic] = {}

    def close(self) -> None:
        for known in self._known.values():
            known.topic.close()
        self._known.clear()

    def describe(self, names: list[str]) -> tuple[list[TopicInfo], list[str]]:
        found, problems = [], []
        for name in names:
            try:
                found.append(self._describe(name))
            except (KqError, OSError) as exc:
                self._forget(name)
                problems.append(f"topic '{name}': {exc}")
        asked = set(names)
        for name in [n for n in self._known if n not in asked]:
            self._forget(name)
        return found, problems

    def _forget(self, name: str) -> None:
        known = self._known.pop(name, None)
        if known is not None:
            known.topic.close()

    def _describe(self, name: str) -> TopicInfo:
        meta = stamp(os.path.join(self.data.topics_path, name, TOPIC_FILE))
        known = self._known.get(name)
        if known is None or meta is None or known.stamp != meta:
            self._forget(name)
            topic = self.data.topic(name)  # raises TopicNotFound, CorruptFile, ... as describing always did
            known = self._known[name] = _KnownTopic(topic, meta or ())
        t = known.topic
        infos = [self._partition(known, p) for p in t.partitions()]
        last = known.info
        if (
            last is not None
            and len(last.partitions) == len(infos)
            and all(a is b for a, b in zip(last.partitions, infos))
        ):
            return last  # the same object: kq top's snapshot reuses what it built of it (kq.ops.observe)
        known.info = TopicInfo(t.name, infos, dict(t.config), t.id)
        return known.info

    def _partition(self, known: _KnownTopic, p: Partition) -> PartitionInfo:
        directory = stamp(p.path)
        seen = known.partitions.get(p.number)
        if seen is not None and seen.trusted and directory is not None and seen.directory == directory:
            last_log_stamp = None if seen.last_log is None else stamp(seen.last_log)
            if last_log_stamp == seen.last_log_stamp:
                return seen.info
        reading_at = reading_started()
        bases = p.segments()
        last_log = p.log_path(bases[-1]) if bases else None
        last_log_stamp = None if last_log is None else stamp(last_log)
        info = PartitionInfo(p.number, p.start_offset(bases), p.end_offset(bases), p.size(bases))
        trusted = directory is not None and settled([directory, last_log_stamp], reading_at)
        known.partitions[p.number] = _KnownPartition(directory, last_log, last_log_stamp, info, trusted)
        return info
