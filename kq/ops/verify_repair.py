"""``kq verify --repair``: what it does to what a check found. Damaged bytes go to a quarantine
file beside their segment, a torn tail is truncated as the next writer would, indexes are
rebuilt, and an unreadable offsets file or share state is moved aside, each under the lock of
whoever writes it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..engine.fileio import atomic_write, fsync_dir, open_regular, try_lock, write_all
from ..engine.index import pack_entries
from ..engine.segment import QUARANTINE, READ_CHUNK, quarantine_name
from ..errors import CorruptFile, DataDirError, KqError
from ..groups.store import CLAIM_SUFFIX, Groups
from .verify_problem import Problem, unreadable

if TYPE_CHECKING:
    from .verify_partition import CheckedSegment, PartitionCheck

# Quarantined bytes ("<segment>.log.quarantine-<byte position>", kq.engine.segment)
# and offsets files ("<P>.offset.quarantine") are never read by kq, never deleted by it.


def repair_segments(check: PartitionCheck) -> None:
    """Quarantine damage and truncate torn tails (the caller holds both locks)."""
    for seg in check.segments:
        if seg.damaged_last is not None:
            r = seg.damaged_last
            r.problem.action = check.part.recover() or "nothing to do: a writer dealt with it meanwhile"
            r.problem.repaired = True
        if seg.damaged:
            _quarantine_and_splice(seg)
        elif seg.torn_tail is not None:
            _truncate(seg.path, seg.torn_tail.start)
        if seg.torn_tail is not None:
            r = seg.torn_tail
            r.problem.action = (
                f"truncated the segment to {r.start} bytes: dropped {r.end - r.start} byte(s) "
                "of an incomplete write, as the next producer would"
            )
            r.problem.repaired = True


def rebuild_indexes(check: PartitionCheck) -> None:
    """Write every index that is not what kq writes (after ``repair_segments``, on a fresh check)."""
    for seg in check.segments:
        if seg.index_problem is not None and not seg.damaged:
            atomic_write(seg.index_path, pack_entries(seg.index))
            seg.index_problem.action = f"rebuilt the index ({len(seg.index)} entries)"
            seg.index_problem.repaired = True
        if seg.txn_index_problem is not None and not seg.damaged:
            from ..engine.txn_log import TXN_ENTRY

            atomic_write(seg.txn_index_path, b"".join(TXN_ENTRY.pack(*e) for e in seg.txn_index))
            seg.txn_index_problem.action = f"rebuilt the transaction index ({len(seg.txn_index)} entries)"
            seg.txn_index_problem.repaired = True


def _quarantine_and_splice(seg: CheckedSegment) -> None:
    """Move each damaged region to its own file, then rewrite the segment without them.

    The quarantine files are on disk (fsynced) before the segment loses the
    bytes, so a crash in between leaves them twice, never nowhere; a rerun
    finds the same damage and reuses the same file names.
    """
    fd = open_regular(seg.path)
    try:
        for r in seg.damaged:
            moved = _read(fd, r.start, r.end)
            target = quarantine_name(f"{seg.path}{QUARANTINE}-{r.start}", moved)
            atomic_write(target, moved)
            after = "the batches after them stay in the segment" if r.end < seg.size else "they ended the segment"
            r.problem.action = f"moved bytes {r.start}..{r.end - 1} ({r.end - r.start} bytes) to {target}; {after}"
            r.problem.repaired = True
        cut = sorted(seg.damaged, key=lambda r: r.start) + ([seg.torn_tail] if seg.torn_tail else [])
        keep, at = [], 0
        for r in cut:
            keep.append((at, r.start))
            at = r.end
        keep.append((at, seg.size))
        tmp = f"{seg.path}.tmp-{os.getpid()}"
        out = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for lo, hi in keep:
                for chunk_start in range(lo, hi, READ_CHUNK):
                    write_all(out, _read(fd, chunk_start, min(chunk_start + READ_CHUNK, hi)))
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, seg.path)
        fsync_dir(os.path.dirname(seg.path))
    finally:
        os.close(fd)


def _read(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        raise DataDirError(f"segment shrank while being repaired (read {len(data)} of {end - start} bytes at {start})")
    return data


def _truncate(path: str, size: int) -> None:
    fd = open_regular(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def quarantine_offsets(p: Problem, group: str, directory: str) -> None:
    # Holding the partition's claim, no member can own it and commit a good
    # offset that would then be moved aside in its place.
    _move_aside(
        p,
        os.path.join(directory, f"{p.partition}{CLAIM_SUFFIX}"),
        lambda: Groups.read_offset_file(p.file),
        f"a live member of group '{group}' owns partition {p.partition}; run again when it stops",
        f"group '{group}' will restart partition {p.partition} from its reset policy (earliest by default)",
    )


def quarantine_share_state(p: Problem, share: str, directory: str) -> None:
    # Under the partition's share lock: no worker reads or replaces the file meanwhile.
    from ..share.shares import read_state_file
    from ..share.state import LOCK_SUFFIX

    number = p.partition
    assert number is not None  # (a state's problem names its partition)
    _move_aside(
        p,
        os.path.join(directory, f"{number}{LOCK_SUFFIX}"),
        lambda: read_state_file(p.file, number),
        f"a worker of share group '{share}' is using it; run again",
        f"share group '{share}' will start partition {p.partition} afresh from its reset policy "
        "(earliest by default), delivering again what it had settled",
    )


def _move_aside(p: Problem, lock_path: str, read, busy: str, after: str) -> None:
    """Move an unreadable small file to a quarantine file beside it, holding the lock of whoever
    writes it; ``read`` raises CorruptFile while the file is still unreadable (a writer may have
    replaced it meanwhile)."""
    try:
        lock = try_lock(lock_path, create=True)
    except (KqError, OSError) as exc:
        p.action = f"not repaired: {unreadable(exc, p.file)[1]}"
        return
    if lock is None:
        p.action = f"not repaired: {busy}"
        return
    try:
        try:
            read()
            p.action, p.repaired = "nothing to do: it was replaced or removed meanwhile", True
            return
        except CorruptFile:
            pass
        target = quarantine_name(p.file + QUARANTINE)
        os.rename(p.file, target)
        fsync_dir(os.path.dirname(p.file))
    finally:
        lock.close()
    p.action = f"moved it to {target}; {after}"
    p.repaired = True
