"""Dead-lettering a share group's records: copied once to the dead-letter topic, with ``kq.dlq.*`` headers saying why.

A range is first marked as being dead-lettered (saved), then copied, then removed: whoever next holds
the partition's lock finishes what a crash interrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .deliveries import Delivery
from .state import DEAD_LETTERING, PartitionState, Range

if TYPE_CHECKING:
    from .consumer import ShareConsumer
    from .lease import SharePartition


# Header names of a dead-lettered record (after the record's own headers).
DLQ_HEADER = "kq.dlq."


def dead_letter(part: SharePartition, state: PartitionState, doomed: list[Range]) -> int:
    """Copy the records of ``doomed`` to the dead-letter topic, once, and settle them.

    First the ranges are marked as being dead-lettered with the
    dead-letter partition's end offset (saved), then copied, then
    removed: a crash between leaves the mark, and whoever next holds
    the lock looks in the dead-letter partition from that offset for
    what was copied and copies the rest (``finish_dead_lettering``).
    """
    c = part.consumer
    dlq = c.dead_letter_partition(part.number)
    dlq_from = dlq.end_offset()
    for r in doomed:
        r.state, r.lease, r.owner, r.until, r.detached = DEAD_LETTERING, None, None, 0, False
        r.dlq = [dlq.topic, dlq.number, dlq_from]
    part.save(state)
    return finish_dead_lettering(part, state)


def finish_dead_lettering(part: SharePartition, state: PartitionState) -> int:
    marked = [r for r in state.ranges if r.state == DEAD_LETTERING]
    if not marked:
        return 0
    c = part.consumer
    _own_dead_letter_topic(part, state, marked)
    copied = 0
    by_target: dict[tuple, list[Range]] = {}
    for r in marked:
        assert r.dlq is not None  # parse_state and dead_letter give every dead-lettering range one
        by_target.setdefault(tuple(r.dlq), []).append(r)
    for (topic, number, since), ranges in by_target.items():
        dlq = c.dead_letter_partition(part.number, topic, number)
        already = _dead_lettered_offsets(dlq, since, c.topic.name, part.number, c.share)
        values, keys, headers, stamps = [], [], [], []
        for r in ranges:
            for b, lo, hi in part.records.read(r.first, r.last):
                offsets = b.offsets()
                for i in range(lo, hi):
                    d = Delivery(part.number, offsets[i], r.attempt, "", b, i)
                    copied += 1
                    if d.offset in already:
                        continue
                    values.append(d.value)
                    keys.append(d.key)
                    headers.append(_dlq_headers(c, d, r))
                    stamps.append(d.timestamp)
        if values:
            dlq.append(values, keys, headers, timestamps=stamps)
    state.dead += copied
    state.remove(marked)
    part.save(state)
    return copied


def _own_dead_letter_topic(part: SharePartition, state: PartitionState, marked: list[Range]) -> None:
    """Point ranges being dead-lettered to another topic than the group's dead-letter topic (a
    crafted state, or one saved before ``--dead-letter`` changed) at the group's own."""
    c = part.consumer
    own = c.settings.dead_letter
    astray = [r for r in marked if r.dlq is not None and r.dlq[0] != own]
    if not astray:
        return
    dlq = c.dead_letter_partition(part.number)
    end = dlq.end_offset()
    for r in astray:
        assert r.dlq is not None
        c.warn(
            f"share group '{c.share}' on {c.topic.name}/{part.number}: {part.path} dead-letters offsets "
            f"{r.first}..{r.last} to '{r.dlq[0]}', not to the group's dead-letter topic '{own}': "
            f"they go to '{own}'"
        )
        r.dlq = [dlq.topic, dlq.number, end]
    part.save(state)


def _dlq_headers(c: ShareConsumer, d: Delivery, r: Range) -> list[tuple[str, bytes]]:
    """The record's own headers, then the ``kq.dlq.*`` headers saying where it was and why it failed.

    A record dead-lettered before (a replayed dead letter that failed again) loses its earlier
    ``kq.dlq.*`` headers, which would name a stale source twice; where it was first is kept in
    ``kq.dlq.original-topic``, ``-partition`` and ``-offset``. A header with no value (no
    command ran, so no exit status; no stderr) is left out.
    """
    own = [(n, v) for n, v in d.headers if not n.startswith(DLQ_HEADER)]
    earlier: dict[str, bytes] = {}
    for n, v in d.headers:
        if n.startswith(DLQ_HEADER):
            earlier.setdefault(n, v)  # the first of each: an older kq appended a set per dead-lettering
    original = []
    for part in ("topic", "partition", "offset"):
        first = earlier.get(DLQ_HEADER + "original-" + part, earlier.get(DLQ_HEADER + part))
        if first is not None:
            original.append((DLQ_HEADER + "original-" + part, first))
    error = r.error or {}
    code = error.get("exit")
    reason, stderr = str(error.get("reason") or ""), str(error.get("stderr") or "")
    out = [
        (DLQ_HEADER + "topic", c.topic.name.encode()),
        (DLQ_HEADER + "partition", str(d.partition).encode()),
        (DLQ_HEADER + "offset", str(d.offset).encode()),
        (DLQ_HEADER + "share", c.share.encode()),
        (DLQ_HEADER + "attempts", str(r.attempt).encode()),
    ]
    if code is not None:
        out.append((DLQ_HEADER + "exit", str(code).encode()))
    out.append((DLQ_HEADER + "reason", (reason or "rejected").encode()))
    if stderr:
        out.append((DLQ_HEADER + "stderr", stderr.encode()))
    return own + out + original


def _dead_lettered_offsets(dlq, since: int, topic: str, partition: int, share: str) -> set[int]:
    """Offsets of ``topic``/``partition`` that ``share`` already copied to ``dlq`` from offset ``since`` on."""
    want = {
        DLQ_HEADER + "topic": topic.encode(),
        DLQ_HEADER + "partition": str(partition).encode(),
        DLQ_HEADER + "share": share.encode(),
    }
    found = set()
    for record in dlq.read(since):
        h = dict(record.headers)
        if all(h.get(k) == v for k, v in want.items()):
            try:
                found.add(int(h.get(DLQ_HEADER + "offset", b"")))
            except ValueError:
                pass
    return found
