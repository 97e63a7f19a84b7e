"""The bridge's record of a copy (docs/FORMAT.md, "Bridge records"): per topic, per partition, the
next source offset to copy, the target offset it will get, the runs of source offsets that became
target offsets, what is being sent, and the last record copied. One JSON file per topic,
``DATA/bridges/PEER/TOPIC.json``, replaced atomically; read as untrusted input.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import asdict, dataclass, field

from ..engine.fileio import atomic_write, integer_field, make_dirs, read_metadata, shown
from ..errors import CorruptFile

STATE_FORMAT = 1
# A checkpoint (wait for every acknowledgement, then record the position) after at most this
# many records (kq.ops.bridge_copier).
CHECKPOINT_RECORDS = 50_000
# Runs of source offsets that became consecutive target offsets: a topic with
# no gaps in its offsets has one run; a compacted one many. Past this many,
# the oldest are forgotten and a group offset before the first kept run
# translates to that run's start (the group reads some records again).
MAX_RUNS = 1000
MAX_SENDING_RUNS = CHECKPOINT_RECORDS  # a run per record at worst, between two checkpoints
MAX_OFFSET = 2**63 - 1


@dataclass
class PartitionState:
    """Where one partition's copy stands: the next source offset to copy, the target offset it
    will get, and the runs [source offset, target offset, count] of records copied so far."""

    source_next: int
    target_next: int
    runs: list = field(default_factory=list)
    # Runs [source offset, count] sent after the recorded position, on record *before* they are
    # sent: what a killed run landed is their beginning, even once the source has deleted or
    # compacted those records away.
    sending: list = field(default_factory=list)
    # [source offset, digest] of the last record copied: a source that holds another record
    # there now was deleted and created again (a cluster may have no topic ids to say so).
    last: list | None = None

    def add(self, source_first: int, count: int) -> None:
        """``count`` records with consecutive source offsets from ``source_first`` were copied
        (as the next ``count`` target offsets)."""
        if not count:
            return
        if self.runs:
            s, t, n = self.runs[-1]
            if s + n == source_first and t + n == self.target_next:
                self.runs[-1][2] = n + count
                self._moved(source_first, count)
                return
        self.runs.append([source_first, self.target_next, count])
        if len(self.runs) > MAX_RUNS:
            del self.runs[0]
        self._moved(source_first, count)

    def _moved(self, source_first: int, count: int) -> None:
        self.source_next = source_first + count
        self.target_next += count

    def translate(self, offset: int) -> int:
        """The target offset from which a reader at source ``offset`` reads on: the target offset
        of the first copied record at or after ``offset`` (the target's next one if none is)."""
        if offset >= self.source_next:
            return self.target_next
        i = bisect.bisect_right([r[0] for r in self.runs], offset) - 1
        if i < 0:
            return self.runs[0][1] if self.runs else self.target_next
        s, t, n = self.runs[i]
        if offset < s + n:
            return t + (offset - s)
        return self.runs[i + 1][1] if i + 1 < len(self.runs) else self.target_next

    def source_of(self, target_offset: int) -> int | None:
        """The source offset of the record copied to ``target_offset`` (None if it is not on record)."""
        for s, t, n in self.runs:
            if t <= target_offset < t + n:
                return s + (target_offset - t)
        return None


class BridgeState:
    """The record of one topic's copy, kept on the data directory's side."""

    def __init__(self, path: str, topic: str):
        self.path = path
        self.topic = topic
        self.source_id: str | None = None
        self.target_id: str | None = None
        self.partitions: dict[int, PartitionState] = {}

    @classmethod
    def load(cls, path: str, topic: str) -> BridgeState:
        state = cls(path, topic)
        try:
            meta = read_metadata(path)
        except FileNotFoundError:
            return state
        if meta.get("format") != STATE_FORMAT or meta.get("topic") != topic:
            raise CorruptFile(path, f"not a kq bridge record of topic '{topic}' (format {shown(meta.get('format'))})")
        for key in ("source_id", "target_id"):
            value = meta.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > 64):
                raise CorruptFile(path, f"{key} is {shown(value)}")
            setattr(state, key, value)
        partitions = meta.get("partitions")
        if not isinstance(partitions, dict):
            raise CorruptFile(path, "partitions is not an object")
        for name, entry in partitions.items():
            if not (name.isascii() and name.isdigit()) or not isinstance(entry, dict):
                raise CorruptFile(path, f"partition {shown(name)} is not a partition's record")
            runs = entry.get("runs")
            if not isinstance(runs, list) or len(runs) > MAX_RUNS or not all(_is_run(r) for r in runs):
                raise CorruptFile(path, f"partition {name}: runs are not [source, target, count] offsets")
            sending = entry.get("sending", [])
            if (
                not isinstance(sending, list)
                or len(sending) > MAX_SENDING_RUNS
                or not all(isinstance(r, list) and len(r) == 2 and _is_run([0, *r]) for r in sending)
            ):
                raise CorruptFile(path, f"partition {name}: sending is not [source, count] runs")
            last = entry.get("last")
            if last is not None and not (
                isinstance(last, list)
                and len(last) == 2
                and type(last[0]) is int
                and 0 <= last[0] <= MAX_OFFSET
                and isinstance(last[1], str)
                and len(last[1]) == 64
            ):
                raise CorruptFile(path, f"partition {name}: last is not [source offset, digest]")
            state.partitions[int(name)] = PartitionState(
                integer_field(entry, "source_next", path, 0, MAX_OFFSET),
                integer_field(entry, "target_next", path, 0, MAX_OFFSET),
                [list(r) for r in runs],
                [list(r) for r in sending],
                None if last is None else list(last),
            )
        return state

    def save(self) -> None:
        meta = {
            "format": STATE_FORMAT,
            "topic": self.topic,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "partitions": {str(p): asdict(s) for p, s in sorted(self.partitions.items())},
        }
        make_dirs(os.path.dirname(self.path))
        atomic_write(self.path, json.dumps(meta, separators=(",", ":")).encode() + b"\n")


def _is_run(run) -> bool:
    return (
        isinstance(run, list)
        and len(run) == 3
        and all(type(x) is int and 0 <= x <= MAX_OFFSET for x in run)
        and run[2] > 0
    )
