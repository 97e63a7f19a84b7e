"""The bridge's copier: one topic's records from the source to the target, exactly once.

A reader on the source and an idempotent producer to the target; the position is put on record
(kq.ops.bridge_state) only after the records before it are acknowledged, and a run first adopts what
a killed run landed after the recorded position (docs/GUARANTEES.md, "The bridge").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..backends.base import Producer, Reader
from ..errors import KqError, TopicNotFound
from .bridge_compare import partition_records, record_digest, same_record
from .bridge_state import CHECKPOINT_RECORDS, BridgeState, PartitionState

if TYPE_CHECKING:
    from .bridge import Bridge

# A checkpoint at least this often (and after CHECKPOINT_RECORDS records).
CHECKPOINT_SECONDS = 1.0
FOLLOW_IDLE_SECONDS = 0.1


@dataclass
class CopyReport:
    topic: str
    partition: int
    from_offset: int  # source offsets copied: from_offset .. to_offset - 1
    to_offset: int
    target_from: int  # the target offsets they got
    target_to: int
    records: int = 0
    bytes: int = 0
    recovered: int = 0  # records a killed run had landed, found and put on record
    skipped_to: int | None = None  # the source's retention had deleted what was not yet copied


class TopicCopier:
    """One topic's copy: a reader on the source, an idempotent producer to the target, the record."""

    def __init__(self, bridge: Bridge, topic: str, follow: bool = False):
        self.bridge = bridge
        self.topic = topic
        self.source, self.target = bridge.source, bridge.target
        self.state = BridgeState.load(bridge.state_path(topic), topic)
        self._reports: dict[int, CopyReport] = {}
        self._pending: dict[int, list] = {}  # partition -> runs [source first, count] sent since the checkpoint
        self._pending_records = 0
        self._last: dict = {}  # partition -> the last record sent since the checkpoint
        self.last_checkpoint = time.monotonic()
        self._reader: Reader | None = None
        self._producer: Producer | None = None
        self._rounds: Iterator | None = None
        info = self.source.describe_topic(topic)
        self._ensure_target(info)
        self._recover(info)
        starts = {p: ps.source_next for p, ps in sorted(self.state.partitions.items())}
        self._reader = self.source.reader_from(topic, starts, follow=follow)

    # ------------------------------------------------------------------ set-up

    def _ensure_target(self, info) -> None:
        count = len(info.partitions)
        source_id = self.source.topic_id(self.topic)
        if self.state.source_id is not None and source_id is not None and source_id != self.state.source_id:
            raise KqError(
                f"topic '{self.topic}' was deleted and created again in {self.source.description} since it was "
                f"copied; to copy it from scratch, delete {self.state.path} (and the copy)"
            )
        try:
            have = self.target.partition_count(self.topic)
        except TopicNotFound:
            if self.state.partitions:
                raise KqError(
                    f"topic '{self.topic}' no longer exists in {self.target.description}, where it was copied; "
                    f"to copy it from scratch, delete {self.state.path}"
                ) from None
            # Kafka's default compression.type, producer, is no codec of kq's own writers (they store
            # batches uncompressed under it): naming it would only raise a directory's format for nothing.
            config = {k: v for k, v in info.config.items() if not (k == "compression" and v == "producer")}
            self.target.create_topic(self.topic, count, config)
            have = count
        if have < count:
            self.target.add_partitions(self.topic, count)
        elif have > count:
            raise KqError(
                f"topic '{self.topic}' has {count} partitions in {self.source.description} "
                f"but {have} in {self.target.description}"
            )
        target_id = self.target.topic_id(self.topic)
        if self.state.target_id is not None and target_id is not None and target_id != self.state.target_id:
            raise KqError(
                f"topic '{self.topic}' was deleted and created again in {self.target.description} since it was "
                f"copied there; to copy it from scratch, delete {self.state.path}"
            )
        self.state.source_id = self.state.source_id or source_id
        self.state.target_id = self.state.target_id or target_id

    def _recover(self, info) -> None:
        """Put on record what a killed run landed, and start new partitions where the target ends."""
        target = self.target.describe_topic(self.topic)
        ends = self._target_ends(target)
        fresh = False
        for p, sp in enumerate(info.partitions):
            end = ends[p]
            ps = self.state.partitions.get(p)
            if ps is None:
                if end > target.partitions[p].start_offset:
                    raise KqError(
                        f"{self.topic}/{p} in {self.target.description} holds records kq replicate did not copy "
                        "there; the bridge copies into an empty topic or one it filled itself"
                    )
                self.state.partitions[p] = PartitionState(sp.start_offset, end)
                fresh = True
                continue
            self._check_source(p, ps, sp)
            if end < ps.target_next:
                raise KqError(
                    f"{self.topic}/{p} ends at offset {end} in {self.target.description}, but the copy put records "
                    f"up to offset {ps.target_next - 1} there (was the topic deleted and created again?); "
                    f"to copy it from scratch, delete {self.state.path}"
                )
            if end > ps.target_next:
                self._adopt(p, ps, end)
            if ps.sending:
                ps.sending = []  # what landed of it is on record now; the rest is sent again
                fresh = True
            if sp.start_offset > ps.source_next:
                # The source's retention deleted what was not yet copied: go on from its start.
                report = self.report(p)
                report.skipped_to = report.from_offset = report.to_offset = sp.start_offset
                ps.source_next = sp.start_offset
                fresh = True
        if fresh or any(r.recovered for r in self._reports.values()):
            self.state.save()  # on record before anything is sent

    def _target_ends(self, target) -> dict[int, int]:
        """Each target partition's end offset, read from its records where the copy has a record
        of it, rather than taken from the end it lists: a broker may list one short (Tansu 0.6
        answers ListOffsets "latest" with its last batch's base offset + 1), and a short end
        would make the bridge send again records a killed run landed, or refuse the copy it made.

        One reader, from the recorded position (or the listed end, if that is lower: to tell a
        short list from a topic that lost records) to the end a fetch reports.
        """
        ends = {p: tp.end_offset for p, tp in enumerate(target.partitions)}
        starts = {
            p: max(min(ps.target_next, ends[p]), target.partitions[p].start_offset)
            for p, ps in self.state.partitions.items()
            if p in ends
        }
        if not starts:
            return ends
        reader = self.target.reader_from(self.topic, starts)
        try:
            for slices in reader.rounds():
                for sl in slices:
                    if sl.stop > sl.start:
                        ends[sl.partition] = max(ends[sl.partition], sl.batch.offset_at(sl.stop - 1) + 1)
        finally:
            reader.close()
        return ends

    def _check_source(self, p: int, ps: PartitionState, sp) -> None:
        """Refuse a source partition that is not the one copied: it ends before what was copied
        from it, or holds another record where the last copied one was."""
        if sp.end_offset < ps.source_next:
            raise KqError(
                f"{self.topic}/{p} ends at offset {sp.end_offset} in {self.source.description}, but records up to "
                f"offset {ps.source_next - 1} were copied from it (was the topic deleted and created again?); "
                f"to copy it from scratch, delete {self.state.path} (and the copy)"
            )
        if ps.last is None or ps.last[0] < sp.start_offset:
            return
        offset, digest = ps.last
        for r in partition_records(self.source, self.topic, p, offset, count=1):
            if r.offset == offset and record_digest(r) != digest:
                raise KqError(
                    f"{self.topic}/{p} in {self.source.description} holds another record at offset {offset} than "
                    f"the one copied from there (was the topic deleted and created again?); to copy it from "
                    f"scratch, delete {self.state.path} (and the copy)"
                )

    def _adopt(self, p: int, ps: PartitionState, end: int) -> None:
        """Records a killed run landed after the recorded position: check they are the beginning of
        what it was sending, then record them.

        Each is compared with its source record where the source still holds it (retention,
        trim or compaction may have removed it since; ``sending`` still says which it was).
        """
        landed = end - ps.target_next
        offsets = [o for first, count in ps.sending for o in range(first, first + count)][:landed]
        if len(offsets) == landed:
            sources = {
                r.offset: r for r in partition_records(self.source, self.topic, p, offsets[0], stop=offsets[-1] + 1)
            }
        else:  # a record written by a kq that kept no sending runs: the source's next records
            found = list(partition_records(self.source, self.topic, p, ps.source_next, count=landed))
            offsets, sources = [r.offset for r in found], {r.offset: r for r in found}
        targets = list(partition_records(self.target, self.topic, p, ps.target_next, stop=end))
        if (
            len(offsets) != landed
            or len(targets) != landed
            or any(o in sources and not same_record(sources[o], t) for o, t in zip(offsets, targets))
        ):
            raise KqError(
                f"{self.topic}/{p} in {self.target.description} holds records from offset {ps.target_next} on that "
                f"are not the next ones of the source (did something else write there?); to copy it from scratch, "
                f"delete the topic there and {self.state.path}"
            )
        for first, count in _runs_of(offsets):
            ps.add(first, count)
        if offsets and offsets[-1] in sources:
            ps.last = [offsets[-1], record_digest(sources[offsets[-1]])]
        self.report(p).recovered = landed

    def report(self, p: int) -> CopyReport:
        r = self._reports.get(p)
        if r is None:
            ps = self.state.partitions[p]
            r = self._reports[p] = CopyReport(
                self.topic, p, ps.source_next, ps.source_next, ps.target_next, ps.target_next
            )
        return r

    def reports(self, reset: bool = False) -> list[CopyReport]:
        for p in self.state.partitions:
            self.report(p)
        out = [self._reports[p] for p in sorted(self._reports)]
        if reset:
            self._reports = {}
        return out

    # ------------------------------------------------------------------ copying

    def pump(self, follow: bool) -> None:
        """Send what the source has: all of it (to the end as it was), or, following, what comes
        before a short quiet spell or a checkpoint."""
        assert self._reader is not None, "pump() after close()"
        if self._producer is None:
            self._producer = self.target.producer(self.topic, idempotent=True)
        if self._rounds is None:
            self._rounds = self._reader.rounds(FOLLOW_IDLE_SECONDS if follow else None)
        for slices in self._rounds:
            self._send(slices)
            if self.checkpoint_due():
                if follow:
                    return
                self.checkpoint()
        self._rounds = None  # ended: the end (or, following, a quiet spell)

    def _send(self, slices) -> None:
        records = []
        for sl in slices:
            b, lo, hi = sl.batch, sl.start, sl.stop
            rows = list(b.records(lo, hi))
            records += [(r.key, r.value, r.headers, sl.partition, r.timestamp) for r in rows]
            runs = self._pending.setdefault(sl.partition, [])
            first, last = b.offset_at(lo), b.offset_at(hi - 1)
            if last - first == hi - lo - 1:
                _extend(runs, first, hi - lo)
            else:
                for s, n in _runs_of([r.offset for r in rows]):
                    _extend(runs, s, n)
            self._last[sl.partition] = rows[-1]
            report = self.report(sl.partition)
            report.records += hi - lo
            report.bytes += sum(len(r.value or b"") + len(r.key or b"") for r in rows)
            if self.bridge.progress is not None:
                self.bridge.progress(report)
        # On record before they go: a run killed once some have landed knows which they were.
        for p, runs in self._pending.items():
            self.state.partitions[p].sending = [list(r) for r in runs]
        self.state.save()
        assert self._producer is not None
        self._producer.send_records(records)
        self._pending_records += len(records)

    def checkpoint_due(self) -> bool:
        return self._pending_records >= CHECKPOINT_RECORDS or (
            self._pending_records > 0 and time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS
        )

    def checkpoint(self, force: bool = False) -> None:
        """Wait for every acknowledgement, then put the position on record and carry the groups'
        offsets over (``force``: even if nothing was sent since the last checkpoint)."""
        if self._producer is not None:
            self._producer.flush()
        for p, runs in self._pending.items():
            ps = self.state.partitions[p]
            for first, count in runs:
                ps.add(first, count)
            ps.sending = []
            if p in self._last:
                ps.last = [self._last[p].offset, record_digest(self._last[p])]
            report = self.report(p)
            report.to_offset, report.target_to = ps.source_next, ps.target_next
        changed = bool(self._pending)
        self._pending, self._pending_records, self._last = {}, 0, {}
        self.last_checkpoint = time.monotonic()
        if changed:
            self.state.save()
        if self.bridge.groups and (changed or force):
            self.bridge.copy_groups(self.topic, self.state)

    def close(self, quietly: bool = False) -> None:
        try:
            if self._reader is not None:
                self._reader.close()
        finally:
            self._reader = None
            if self._producer is not None:
                try:
                    self._producer.close()
                except KqError:
                    if not quietly:
                        raise
                finally:
                    self._producer = None


def _extend(runs: list, first: int, count: int) -> None:
    if runs and runs[-1][0] + runs[-1][1] == first:
        runs[-1][1] += count
    else:
        runs.append([first, count])


def _runs_of(offsets: list[int]) -> list[tuple[int, int]]:
    """Rising offsets as (first, count) runs of consecutive ones."""
    runs: list = []
    for o in offsets:
        _extend(runs, o, 1)
    return [tuple(r) for r in runs]
