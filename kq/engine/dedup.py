"""A topic's deduplication window: the ids of records produced lately, in ``dedup.index``.

One index per topic (and id rule: the key, or a header's value; see
``index_name``), not per partition: an id taken from a header need not
go where its record's key sends it, so the same id may reach two partitions,
and only an index over all of them sees the second copy. It lives in the
topic's directory and is guarded by ``dedup.lock`` beside it. A
deduplicating producer holds that lock from reading the index, through its
appends (each under its partition's writer lock, always taken after this
one), to writing the ids it appended: two such producers never both admit
one id.

The log is the truth and the index a cache of it that records how far it
covers each partition (its marks). A producer killed between an append and
its index write leaves records past a mark; the next holder of the lock
indexes the records between the mark and the log's end before deciding
anything (catch-up), so a record is never both written and forgotten. An id
enters the index only after its record was appended (or read back from the
log), so no record is dropped without an earlier copy in the log. Records
appended by producers without a window (an older kq, ``kq replicate``) are
caught up the same way. The format is in docs/FORMAT.md.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from contextlib import contextmanager
from itertools import compress, repeat

from xxhash import xxh3_64_intdigest

from ..errors import UnsupportedFormat, warn
from .fileio import FileLock, fsync_dir, open_regular, write_all
from .partition import Partition, now_ms

INDEX_NAME = "dedup.index"
LOCK_NAME = "dedup.lock"
MAGIC = b"KQDI"
VERSION = 1
HEADER = struct.Struct(">4sHHQQQ")  # magic, version, flags, keep_ms, entries after the last rewrite, reserved
ENTRY_SIZE = 16  # two big-endian uint64 words
MARK_BIT = 1 << 63  # set in an entry's second word: a mark, not an id
OFFSET_MASK = MARK_BIT - 1
MARK_CHECK = struct.Struct(">IQ")  # partition, next offset: what a mark's crc32 covers
# The file is rewritten without its expired entries once it holds twice as
# many as after the last rewrite (and at least this many): appends stay
# amortised O(1) and the file at most twice its live size.
REWRITE_MIN_ENTRIES = 65_536
_SWAP = sys.byteorder == "little"  # the file is big-endian, as kq's other binary files


def _words(data: bytes) -> array:
    """``data`` as big-endian uint64 words."""
    words = array("Q")
    words.frombytes(data)
    if _SWAP:
        words.byteswap()
    return words


def _bytes(words: array) -> bytes:
    if _SWAP:
        words = array("Q", words)
        words.byteswap()
    return words.tobytes()


def id_hashes(ids: list[bytes]) -> array:
    """The 64-bit hash kq keeps of each id: XXH3-64 with seed 0 (BLAKE2b took 4 times as long a record)."""
    return array("Q", map(xxh3_64_intdigest, ids))


def mark_words(partition: int, next_offset: int) -> tuple[int, int]:
    """A mark entry: the index covers ``partition`` up to (not including) ``next_offset``."""
    check = zlib.crc32(MARK_CHECK.pack(partition, next_offset)) & 0x7FFFFFFF
    return partition | (check << 32), MARK_BIT | next_offset


def read_mark(first: int, second: int) -> tuple[int, int] | None:
    """(partition, next offset) of a mark entry, or None if its check fails (bytes a crash left)."""
    partition, offset = first & 0xFFFFFFFF, second & OFFSET_MASK
    return (partition, offset) if mark_words(partition, offset)[0] == first else None


def index_name(header: str | None) -> str:
    """The index file of an id rule: ``dedup.index`` for keys, one per header name otherwise.

    Each rule has its own index, each covering every record of the topic: a
    producer whose ids are keys and one whose ids are a header's values
    both see every record, each by its own id.
    """
    if header is None:
        return INDEX_NAME
    return f"dedup.h-{xxh3_64_intdigest(header.encode('utf-8')):016x}.index"


def record_ids(keys, headers, header: str | None, count: int) -> list:
    """Each record's id: its key, or the value of its first header named ``header`` (None: it has none)."""
    if header is None:
        return [None] * count if keys is None else list(keys)
    if headers is None:
        return [None] * count
    out: list = []
    for pairs in headers:
        found = None
        for name, value in pairs or ():
            if name == header:
                found = value
                break
        out.append(found)
    return out


class DedupWindow:
    """A producer's view of a topic's deduplication index, used under ``holding()``.

    ``window_ms``: a record is dropped if its id was produced to the topic
    less than this long ago. ``header``: the id is this header's value
    rather than the key. Records without an id are never dropped.
    """

    def __init__(self, topic, window_ms: int, header: str | None = None):
        self.topic = topic
        self.window_ms = window_ms
        self.header = header
        self.path = os.path.join(topic.path, index_name(header))
        self.lock = FileLock(os.path.join(topic.path, LOCK_NAME))
        self.dropped = 0  # records dropped as duplicates, in all
        self._now = 0  # the time of this round (ms)
        self._tag = -1  # this round's tag in _seen (below)
        self._fd: int | None = None
        self._forget()

    def _forget(self) -> None:
        """Drop what is known of the index: it is read again from the start at the next round."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]
        self._fd = None
        self._inode: int | None = None
        self._read_to = 0  # bytes of the file read into _seen and _marks
        # id hash -> when it was last produced: ms, or (negative) the tag of a round of this
        # process, whose time is in _round_times (admitting a new id then costs one dict pass)
        self._seen: dict[int, int] = {}
        self._round_times: dict[int, int] = {self._tag: self._now}
        self._oldest = OFFSET_MASK  # no entry in _seen is older than this (ms): a rewrite would drop none
        self._marks: dict[int, int] = {}  # partition -> the offset the index covers it up to
        self._logs: dict[int, tuple] = {}  # partition -> (the last segment's state, its end offset)
        self._keep_ms = self.window_ms
        self._base_entries = 0  # entries in the file after its last rewrite
        self._pending = array("Q")  # hashes admitted this round, written by commit()
        self._moved: set[int] = set()  # partitions whose mark moved this round

    def close(self) -> None:
        self._forget()
        self.lock.close()

    # ------------------------------------------------------------------ the round

    @contextmanager
    def holding(self):
        """Hold ``dedup.lock`` with the index brought up to the log's end; commit() before leaving."""
        try:
            self.lock.acquire()
        except FileNotFoundError:
            raise self.topic.partition(0)._gone() from None
        try:
            self._now = now_ms()
            self._tag -= 1
            self._round_times[self._tag] = self._now
            self._catch_up()
            yield self
        except BaseException:
            self._forget()  # admitted ids may not have been appended: read the truth again
            raise
        finally:
            self.lock.release()

    def admit(self, ids: list) -> list[int]:
        """The indexes of ``ids`` that are duplicates within the window; the others count as produced now."""
        if None in ids:
            present: Sequence[int] = [i for i, v in enumerate(ids) if v is not None]
            hashes = id_hashes([ids[i] for i in present])
        else:
            present, hashes = range(len(ids)), id_hashes(ids)
        if not hashes:
            return []
        seen, now, tag = self._seen, self._now, self._tag
        # One pass in C over the dict: an id not there is added with this round's tag.
        n, before = len(hashes), len(seen)
        whens = list(map(seen.setdefault, hashes, repeat(tag)))
        if len(seen) - before == n:  # every id new, none twice: the common case
            self._pending.extend(hashes)
            return []
        cutoff = now - self.window_ms
        times = self._round_times
        if tag not in whens and min(whens) > cutoff:  # all produced within the window (a rerun)
            self.dropped += n
            return list(present)
        duplicates: list[int] = []
        pending = self._pending
        admitted: set[int] = set()
        for i, h, when in zip(present, hashes, whens):
            if when == tag and h not in admitted:  # new
                admitted.add(h)
                pending.append(h)
            elif when == tag or (when if when >= 0 else times[when]) > cutoff:  # a second copy, or within
                duplicates.append(i)
            else:  # produced before the window: produced anew now
                seen[h] = tag
                admitted.add(h)
                pending.append(h)
        self.dropped += len(duplicates)
        return duplicates

    def _time(self, when: int) -> int:
        """The time (ms) of a value of _seen: itself, or its round's (-1: none)."""
        return when if when >= -1 else self._round_times[when]

    def appended(self, partition: int, first: int, last: int) -> None:
        """Note records appended at ``first``..``last``: the mark moves if they follow it directly."""
        if self._marks.get(partition) == first:
            self._marks[partition] = last + 1
            self._moved.add(partition)
        # Otherwise another writer appended in between without this lock (a
        # producer without a window): the next catch-up reads both from the mark.

    def commit(self) -> None:
        """Write the ids admitted and the marks moved this round, in one write."""
        pending = self._pending
        words = array("Q", [0]) * (2 * len(pending))
        if pending:
            self._oldest = min(self._oldest, self._now)
            words[0::2] = pending
            words[1::2] = array("Q", [self._now]) * len(pending)
        for partition in sorted(self._moved):
            words.extend(mark_words(partition, self._marks[partition]))
        self._pending, self._moved = array("Q"), set()
        self._append(words)
        self._maybe_rewrite()

    # ------------------------------------------------------------------ the file

    def _append(self, words: array) -> None:
        if not words:
            return
        assert self._fd is not None
        data = _bytes(words)
        # At the end of the file as last read: the lock is ours, so that is its end. (Not
        # O_APPEND: on Linux that would send the header's pwrite to the end as well.)
        os.lseek(self._fd, self._read_to, os.SEEK_SET)
        write_all(self._fd, data)
        if self.topic.config.get("sync"):
            os.fdatasync(self._fd)
        self._read_to += len(data)

    def _open(self) -> None:
        """Open the index (creating it), or open it anew if a rewrite replaced it."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = None
        if self._fd is not None and inode == self._inode:
            return
        self._forget()
        if inode is None:
            self._start_file()
            return
        self._fd = open_regular(self.path, os.O_RDWR)
        self._inode = os.fstat(self._fd).st_ino

    def _start_file(self) -> None:
        """Replace the index with an empty one (none yet, or one a crash left without a whole header).

        Always a new file, never one truncated in place: another producer
        that has read the old one sees the inode change and reads anew.
        """
        self._forget()
        self._replace(HEADER.pack(MAGIC, VERSION, 0, self.window_ms, 0, 0), b"")
        self._read_to = HEADER.size

    def _replace(self, header: bytes, entries: bytes) -> None:
        """Put a new index file in place (temporary file, rename) and open it."""
        sync = bool(self.topic.config.get("sync"))
        tmp = self.path + ".tmp"  # under the lock, so one name will do; a crash's leftover is overwritten
        try:
            fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except FileNotFoundError:
            raise self.topic.partition(0)._gone() from None
        try:
            write_all(fd, header, entries)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)  # the lock is ours: other producers open the new file at their next round
        if sync:
            fsync_dir(self.topic.path)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = open_regular(self.path, os.O_RDWR)
        self._inode = os.fstat(self._fd).st_ino
        self._keep_ms, self._base_entries = HEADER.unpack(header)[3:5]

    def _read_header(self) -> bool:
        """Check the header and take its settings; False if it is not an index kq can trust."""
        assert self._fd is not None
        magic, version, _, keep, base, _ = HEADER.unpack(os.pread(self._fd, HEADER.size, 0))
        if magic != MAGIC:
            return False
        if version > VERSION:
            raise UnsupportedFormat(
                f"{self.path} has format {version}, newer than this kq understands ({VERSION}); upgrade kq"
            )
        if version < 1 or keep > OFFSET_MASK:
            return False
        self._keep_ms, self._base_entries = keep, base
        if self.window_ms > keep:  # a longer window than any before: entries are kept that long from now on
            os.pwrite(self._fd, struct.pack(">Q", self.window_ms), 8)
            self._keep_ms = self.window_ms
        return True

    def _read_entries(self) -> None:
        """Read the entries appended since the last round (by anyone) into memory."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < HEADER.size:  # a crash while the file was made (rename makes this rare)
            self._start_file()
            return
        if not self._read_header():
            warn(f"{self.path} is not a deduplication index kq wrote: it is rebuilt from the log")
            self._start_file()
            return
        start = max(self._read_to, HEADER.size)
        whole = start + (size - start) // ENTRY_SIZE * ENTRY_SIZE
        if whole != size:  # an append cut short by a crash (the lock is ours: nobody is writing)
            os.ftruncate(self._fd, whole)
        if whole > start:
            words = _words(os.pread(self._fd, whole - start, start))
            firsts, seconds = words[0::2], words[1::2]
            self._oldest = min(self._oldest, min(seconds))  # (a mark's second word is above any time)
            seen = self._seen
            if self._read_to == 0 and not seen:
                seen.update(zip(firsts, seconds))
            else:
                for h, when in zip(firsts, seconds):
                    if when > self._time(seen.get(h, -1)):
                        seen[h] = when
            for i in compress(range(len(seconds)), map(MARK_BIT.__le__, seconds)):  # the marks, found in C
                first, second = firsts[i], seconds[i]
                if seen.get(first) == second:
                    del seen[first]
                mark = read_mark(first, second)
                if mark is not None:
                    self._marks[mark[0]] = mark[1]
        self._read_to = whole

    def _catch_up(self) -> None:
        """Bring the index to the log's end in every partition (records a crash or another writer left)."""
        self._open()
        self._read_entries()
        cutoff = self._now - self._keep_ms
        words = array("Q")
        for part in self.topic.partitions():
            end = self._log_end(part)
            mark = self._marks.get(part.number)
            if mark == end:
                continue
            if mark is None:  # never indexed: the records produced within the window count
                mark = part.offset_for_timestamp(max(cutoff, 0))
            mark = min(max(mark, part.start_offset()), end)
            if mark < end:
                self._index_records(part, mark, end, cutoff, words)
            self._marks[part.number] = end
            words.extend(mark_words(part.number, end))
        self._append(words)

    def _log_end(self, part: Partition) -> int:
        """The partition's end offset, found again only if its last segment changed."""
        bases = part.segments()
        base = bases[-1] if bases else -1
        try:
            st = os.stat(part.log_path(base)) if bases else None
        except FileNotFoundError:
            st = None
        state = (base, st.st_size, st.st_ino) if st is not None else None
        known = self._logs.get(part.number)
        if state is not None and known is not None and known[0] == state:
            return known[1]
        end = part.end_offset()
        self._logs[part.number] = (state, end)
        return end

    def _index_records(self, part: Partition, start: int, stop: int, cutoff: int, words: array) -> None:
        """Add the ids of ``part``'s records ``start``..``stop`` produced after ``cutoff`` to the index."""
        cursor = part.cursor(start)
        seen = self._seen
        try:
            while True:
                batches = cursor.poll()
                if not batches:
                    return
                for b in batches:
                    if b.base_offset >= stop:
                        return
                    lo, hi = b.index_of(start), b.index_of(stop)
                    if b.max_timestamp <= cutoff or lo >= hi:
                        continue
                    ids = record_ids(b.keys, b.headers, self.header, b.count)
                    stamps = b.timestamps()
                    chosen = [i for i in range(lo, hi) if ids[i] is not None and stamps[i] > cutoff]
                    if not chosen:
                        continue
                    for h, i in zip(id_hashes([ids[i] for i in chosen]), chosen):
                        when = stamps[i]
                        self._oldest = min(self._oldest, when)
                        if when > self._time(seen.get(h, -1)):
                            seen[h] = when
                        words.extend((h, when))
        finally:
            cursor.close()

    def _maybe_rewrite(self) -> None:
        """Rewrite the index without its expired entries once it has doubled since the last rewrite."""
        entries = (self._read_to - HEADER.size) // ENTRY_SIZE
        if entries < max(REWRITE_MIN_ENTRIES, 2 * self._base_entries):
            return
        cutoff = self._now - self._keep_ms
        assert self._fd is not None
        if self._oldest > cutoff:  # nothing has expired: no rewrite yet, until the file doubles again
            self._base_entries = entries
            os.pwrite(self._fd, struct.pack(">Q", entries), 16)
            return
        times = self._round_times
        live = {h: t for h, when in self._seen.items() if (t := when if when >= 0 else times[when]) > cutoff}
        self._round_times = {self._tag: self._now}
        self._oldest = min(live.values(), default=OFFSET_MASK)
        words = array("Q", [0]) * (2 * len(live))
        if live:
            words[0::2] = array("Q", live.keys())
            words[1::2] = array("Q", live.values())
        for partition, offset in sorted(self._marks.items()):
            words.extend(mark_words(partition, offset))
        count = len(words) // 2
        self._replace(HEADER.pack(MAGIC, VERSION, 0, self._keep_ms, count, 0), _bytes(words))
        self._seen = live
        self._read_to = HEADER.size + count * ENTRY_SIZE
