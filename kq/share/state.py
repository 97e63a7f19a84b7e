"""Share groups: job queues over a topic, with per-record leases, retries and a dead-letter topic.

A share group (Kafka's KIP-932 share groups; Redis Streams' pending entries)
lets any number of workers take *different records of the same partitions*:
a record is acquired by one worker for a lease, and is then acknowledged
(done), released for another attempt after a backoff, or dead-lettered
(copied to a dead-letter topic with headers that say why). Per-partition
order is not kept; ``-g`` groups remain the ordered choice.

Files under ``DATA/shares/SHARE/TOPIC/`` (docs/FORMAT.md, "Share groups"):

    share.json           the group's settings on the topic: dead-letter topic, attempts, backoff
    P.share              partition P's state (below), replaced atomically
    P.share.lock         flock'ed by whoever reads and changes P.share
    members/ID.member    one per live worker, flock'ed by it (as a -g group's members)

A partition's state is its *start* (every offset below it is settled), its
*next* (no offset from it on was ever acquired) and, between them, the
ranges of records that are not settled: acquired (by a lease until a
deadline), available again (after a release, from a time on), or being
dead-lettered. An offset between start and next in no range is settled.
Every change happens under ``P.share.lock``: read the file, change it,
replace it (temporary file, fsync, rename, fsync of the directory), as a
group's committed offsets are written, so a crash leaves the old state or
the new one.

Lease deadlines and retry times are kept on the boot clock (CLOCK_BOOTTIME,
shared by every process of one machine and never set back), with the boot's
id: a wall clock set back or forward moves no lease, and after a reboot
every lease is void (its holder died with the machine).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any

from ..consumer import POLL_SECONDS, IdleClock
from ..engine.batch import RecordBatch
from ..engine.datadir import DataDir
from ..engine.fileio import FileLock, atomic_write, is_locked, make_dirs, read_small, shown
from ..engine.location import SHARES_DIR, share_names
from ..engine.names import check_name
from ..engine.segment import MAX_OFFSET
from ..engine.topic import MAX_TOPIC_ID, Topic, check_inside
from ..errors import CorruptFile, KqError, ShareNotFound, UnsupportedFormat, UsageError
from ..errors import warn as kq_warn
from ..groups.store import MEMBER_SUFFIX, MEMBERS_DIR, Groups, Member, partition_of

STATE_SUFFIX = ".share"
LOCK_SUFFIX = ".share.lock"
SETTINGS_FILE = "share.json"
STATE_FORMAT = 1
SETTINGS_FORMAT = 1
# A partition's state grows with the ranges of records that are not settled;
# past MAX_RANGES no new records are acquired until some are settled, so the
# file stays well under MAX_STATE_BYTES (a range is about 150 bytes, plus
# its last error's text, at most MAX_ERROR_CHARS).
MAX_STATE_BYTES = 8 * 1024 * 1024
MAX_RANGES = 4096
MAX_ERROR_CHARS = 2000
MAX_ATTEMPTS = 1000
MAX_DURATION_MS = 2**53  # JSON numbers every reader parses exactly
# The longest lease kq grants (``--lease``): a lease that would end later than
# this from now was not written by kq, and is cut to it.
MAX_LEASE_MS = 24 * 3600 * 1000
# A worker's id, as kq.groups.store.Member makes it; its member file is flock'ed while it lives.
WORKER_ID = re.compile(r"[0-9]{20}-[0-9]{1,10}-[0-9a-f]{6}")
HOLDER_CHECK_SECONDS = 1.0  # how long a worker found alive is taken to be alive without looking again
MAX_TOKEN = 64
MAX_OWNER = 256
ACQUIRED, AVAILABLE, DEAD_LETTERING = "acquired", "available", "dead-lettering"
STATES = (ACQUIRED, AVAILABLE, DEAD_LETTERING)
DEAD_LETTER_SUFFIX = ".dlq"
# Header names of a dead-lettered record (after the record's own headers).
DLQ_HEADER = "kq.dlq."
# Reading a partition again from an offset this far ahead of where a reader
# stands costs less through the index than by skipping batches.
RESEEK_OFFSETS = 10_000
ROUND_RECORDS = 1000  # acquired at a time by ``ShareConsumer.rounds``


def clock_ms() -> int:
    """Milliseconds on the boot clock: every process of the machine reads the same, and it never goes back."""
    return time.clock_gettime_ns(_CLOCK) // 1_000_000


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
_BOOT: list[str] = []


def boot_id() -> str:
    """This boot's id (Linux); a state written under another boot holds no live lease."""
    if not _BOOT:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT.append(f.read(64).strip())
        except OSError:
            _BOOT.append("")
    return _BOOT[0]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def dead_letter_topic(topic: str) -> str:
    """The default dead-letter topic of ``topic``: ``TOPIC.dlq`` (a valid name as long as the topic's is short enough)."""
    return topic + DEAD_LETTER_SUFFIX


# --------------------------------------------------------------------------- settings


@dataclass
class ShareSettings:
    """How a share group treats a topic's records. Stored per group and topic in ``share.json``:
    every worker and every ``kq ack``/``kq nack`` settles records the same way."""

    dead_letter: str = ""  # the dead-letter topic ("" until set: TOPIC.dlq)
    max_attempts: int = 5  # deliveries of a record before it is dead-lettered
    backoff_ms: int = 1000  # the wait before the second attempt; doubles with each failure ...
    backoff_max_ms: int = 60_000  # ... up to this

    def backoff(self, attempt: int) -> int:
        """How long a record waits after its ``attempt``-th delivery failed."""
        return min(self.backoff_ms * 2 ** min(attempt - 1, 62), self.backoff_max_ms)

    def check(self) -> ShareSettings:
        check_name(self.dead_letter, "dead-letter topic")
        if type(self.max_attempts) is not int or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise UsageError(f"max attempts must be from 1 to {MAX_ATTEMPTS}, not {shown(self.max_attempts)}")
        for name in ("backoff_ms", "backoff_max_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_DURATION_MS:
                raise UsageError(f"{name} must be a whole number of milliseconds, not {shown(value)}")
        return self


# --------------------------------------------------------------------------- state


class Range:
    """Offsets ``first``..``last`` of a partition, not settled, all in one state."""

    __slots__ = ("first", "last", "state", "attempt", "lease", "until", "owner", "error", "dlq", "detached")

    def __init__(
        self,
        first: int,
        last: int,
        state: str,
        attempt: int,
        lease: str | None = None,
        until: int = 0,
        owner: str | None = None,
        error: dict | None = None,
        dlq: list | None = None,
        detached: bool = False,
    ):
        self.first = first
        self.last = last
        self.state = state
        self.attempt = attempt  # deliveries so far, the one under way included (0: released unprocessed)
        self.lease = lease  # acquired: the lease's token
        self.until = until  # boot-clock ms: acquired, the lease's deadline; available, when it may go again
        self.owner = owner  # acquired: the worker that holds the lease
        self.error = error  # the last failure: {"exit": int | None, "reason": str, "stderr": str}
        self.dlq = dlq  # dead-lettering: [topic, partition, its end offset before the copies]
        # acquired: the lease was handed to a script (``consume --share`` without --exec) and holds
        # until ``until`` after its worker exits; any other lease ends with its owner's member lock.
        self.detached = detached

    def copy(self, first: int, last: int) -> Range:
        return Range(
            first,
            last,
            self.state,
            self.attempt,
            self.lease,
            self.until,
            self.owner,
            self.error,
            self.dlq,
            self.detached,
        )

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def as_json(self) -> dict:
        out = {"first": self.first, "last": self.last, "state": self.state, "attempt": self.attempt}
        if self.state == ACQUIRED:
            out["lease"], out["owner"] = self.lease, self.owner
            if self.detached:
                out["detached"] = True
        out["until"] = self.until
        if self.error is not None:
            out["error"] = self.error
        if self.dlq is not None:
            out["dlq"] = self.dlq
        return out

    def __repr__(self) -> str:
        return f"Range({self.first}..{self.last} {self.state} attempt {self.attempt})"


@dataclass
class PartitionState:
    """One partition's share state (see the module docstring)."""

    start: int = 0
    next: int = 0
    ranges: list[Range] = field(default_factory=list)
    acked: int = 0  # records acknowledged, ever
    dead: int = 0  # records dead-lettered, ever
    skipped: int = 0  # offsets retention deleted before they were settled
    boot: str = ""
    topic_id: str | None = None
    fresh: bool = True  # no file yet: ``start`` is where ``--reset`` puts it

    def to_bytes(self) -> bytes:
        body = {
            "format": STATE_FORMAT,
            "start": self.start,
            "next": self.next,
            "acked": self.acked,
            "dead": self.dead,
            "skipped": self.skipped,
            "boot": self.boot,
            "updated_at": wall_ms(),
            "ranges": [r.as_json() for r in self.ranges],
        }
        if self.topic_id is not None:
            body["topic_id"] = self.topic_id
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @property
    def unsettled(self) -> int:
        """Offsets between start and next that are not settled."""
        return sum(r.count for r in self.ranges)

    def lag(self, end: int) -> int:
        """Records not yet settled: in flight or waiting, and never acquired up to ``end``."""
        return self.unsettled + max(end - self.next, 0)

    # ------------------------------------------------------------ keeping it sound

    def normalize(self, log_start: int, boot: str) -> str | None:
        """Fit the state to the log and this boot; returns a warning if records were lost to retention."""
        if boot != self.boot:
            # Leases and retry times of another boot: their holders are gone.
            for r in self.ranges:
                r.until = 0
            self.boot = boot
        warning = None
        if log_start > self.start:
            lost = sum(min(r.last, log_start - 1) - r.first + 1 for r in self.ranges if r.first < log_start)
            lost += max(log_start - self.next, 0)  # never acquired
            self.ranges = [
                r if r.first >= log_start else r.copy(log_start, r.last) for r in self.ranges if r.last >= log_start
            ]
            if lost:
                self.skipped += lost
                warning = f"{lost} offset(s) below the start offset {log_start} were deleted by retention or trim before they were settled"
            self.start = log_start
            self.next = max(self.next, log_start)
        self.advance()
        return warning

    def essence(self) -> tuple:
        """What two copies of a state must share to be the same state (not when each was written)."""
        return (
            self.start,
            self.next,
            self.acked,
            self.dead,
            self.skipped,
            self.boot,
            self.topic_id,
            [r.as_json() for r in self.ranges],
        )

    def cut_back(self, end: int) -> None:
        """Forget acquisitions at or past ``end`` (a replica that holds the log only up to there)."""
        if self.next <= end:
            return
        self.ranges = [r if r.last < end else r.copy(r.first, end - 1) for r in self.ranges if r.first < end]
        self.next = max(end, 0)
        self.start = min(self.start, self.next)
        self.advance()

    def advance(self) -> None:
        """Move ``start`` up to the first offset that is not settled."""
        self.start = self.ranges[0].first if self.ranges else self.next

    def due(self, now: int) -> list[Range]:
        """Ranges that may be delivered now: available ones whose time came, and expired leases."""
        return [r for r in self.ranges if r.state != DEAD_LETTERING and r.until <= now]

    def has_work(self, end: int, now: int, holder_live=None) -> bool:
        """Whether a worker holding the lock would find something to do: records to deliver or to
        dead-letter, or a lease that cannot hold (``unsound_lease``)."""
        return self.next < end or any(
            r.until <= now or r.state == DEAD_LETTERING or unsound_lease(r, now, holder_live) for r in self.ranges
        )

    def bound_leases(self, now: int, holder_live) -> bool:
        """End the leases that cannot hold (``unsound_lease``): one longer than any lease kq grants
        is cut to the longest, one whose worker is gone has ended. True if any changed."""
        changed = False
        for r in self.ranges:
            why = unsound_lease(r, now, holder_live)
            if why is not None:
                r.until = now + MAX_LEASE_MS if why == TOO_LONG else 0
                changed = True
        return changed

    def carve(self, first: int, last: int, token: str | None = None) -> list[Range] | None:
        """The ranges that make up exactly ``first``..``last``, split out of larger ones; None unless
        every offset there is acquired by lease ``token`` (or, without a token, in any range)."""
        import bisect

        firsts = [r.first for r in self.ranges]
        at = max(bisect.bisect_right(firsts, first) - 1, 0)
        covering = []
        expect = first
        i = at
        while i < len(self.ranges) and expect <= last:
            r = self.ranges[i]
            if r.last < expect:
                i += 1
                continue
            if r.first > expect or (token is not None and (r.state != ACQUIRED or r.lease != token)):
                return None
            covering.append(i)
            expect = r.last + 1
            i += 1
        if expect <= last:
            return None
        out = []
        pieces: list[Range] = []
        for j in covering:
            r = self.ranges[j]
            lo, hi = max(r.first, first), min(r.last, last)
            if r.first < lo:
                pieces.append(r.copy(r.first, lo - 1))
            mid = r.copy(lo, hi)
            pieces.append(mid)
            out.append(mid)
            if hi < r.last:
                pieces.append(r.copy(hi + 1, r.last))
        self.ranges[covering[0] : covering[-1] + 1] = pieces
        return out

    def remove(self, doomed: Iterable[Range]) -> None:
        ids = {id(r) for r in doomed}
        self.ranges = [r for r in self.ranges if id(r) not in ids]
        self.advance()

    def merge(self) -> None:
        """Join neighbouring ranges that differ in nothing but their offsets.

        A joined range is a new object: a caller may still hold the ranges it
        carved (an acquire reads their records after saving), and stretching
        one of them would hand its neighbour's records out twice.
        """
        out: list[Range] = []
        for r in self.ranges:
            p = out[-1] if out else None
            if (
                p is not None
                and p.last + 1 == r.first
                and (p.state, p.attempt, p.lease, p.until, p.owner, p.error, p.dlq, p.detached)
                == (r.state, r.attempt, r.lease, r.until, r.owner, r.error, r.dlq, r.detached)
            ):
                out[-1] = p.copy(p.first, r.last)
            else:
                out.append(r)
        self.ranges = out


TOO_LONG, HOLDER_GONE = "too long", "holder gone"


def unsound_lease(r: Range, now: int, holder_live=None) -> str | None:
    """Why the lease of ``r`` cannot hold (every file is untrusted input), or None if it can or
    ``r`` holds none: it ends later than the longest lease kq grants from ``now`` (TOO_LONG), or it
    is not detached and ``holder_live(owner)`` says its worker is gone (HOLDER_GONE)."""
    if r.state != ACQUIRED or r.until <= now:
        return None
    if holder_live is not None and not r.detached and not holder_live(r.owner):
        return HOLDER_GONE
    if r.until > now + MAX_LEASE_MS:
        return TOO_LONG
    return None


def parse_state(raw: bytes, path: str) -> PartitionState:
    """A ``P.share`` file's bytes as a checked PartitionState, or CorruptFile naming ``path``."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CorruptFile(path, "JSON nested too deeply" if isinstance(exc, RecursionError) else "not JSON") from None
    if not isinstance(body, dict):
        raise CorruptFile(path, f"a JSON {type(body).__name__}, not an object")
    version = body.get("format")
    if type(version) is not int or version < 1:
        raise CorruptFile(path, f"format is {shown(version)}, not a version number")
    if version > STATE_FORMAT:
        raise UnsupportedFormat(
            f"share state {path} has format {version}, newer than this kq understands ({STATE_FORMAT}); upgrade kq"
        )

    def number(obj, key, low=0, high=MAX_OFFSET, where=""):
        value = obj.get(key)
        if type(value) is not int or not low <= value <= high:
            raise CorruptFile(path, f"{where}{key} is {shown(value)}, not a whole number from {low} to {high}")
        return value

    def text(obj, key, limit, where="", optional=False):
        value = obj.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise CorruptFile(path, f"{where}{key} is {shown(value)}, not a string of at most {limit} characters")
        return value

    state = PartitionState(fresh=False)
    state.start = number(body, "start")
    state.next = number(body, "next")
    state.acked = number(body, "acked")
    state.dead = number(body, "dead")
    state.skipped = number(body, "skipped")
    state.boot = text(body, "boot", 64)
    state.topic_id = text(body, "topic_id", MAX_TOPIC_ID, optional=True)
    if state.next < state.start:
        raise CorruptFile(path, f"next {state.next} is below start {state.start}")
    ranges = body.get("ranges")
    if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
        raise CorruptFile(path, f"ranges is {shown(ranges)}, not a list of at most {MAX_RANGES}")
    floor = state.start
    for i, item in enumerate(ranges):
        where = f"ranges[{i}]."
        if not isinstance(item, dict):
            raise CorruptFile(path, f"ranges[{i}] is {shown(item)}, not an object")
        first = number(item, "first", where=where)
        last = number(item, "last", where=where)
        if not floor <= first <= last < state.next:
            raise CorruptFile(
                path, f"{where[:-1]} is {first}..{last}: ranges lie in order between start and next, apart"
            )
        floor = last + 1
        kind = item.get("state")
        if kind not in STATES:
            raise CorruptFile(path, f"{where}state is {shown(kind)}, not one of {', '.join(STATES)}")
        r = Range(
            first, last, kind, number(item, "attempt", 0, MAX_ATTEMPTS, where), until=number(item, "until", where=where)
        )
        if kind == ACQUIRED:
            r.lease = text(item, "lease", MAX_TOKEN, where)
            r.owner = text(item, "owner", MAX_OWNER, where)
            detached = item.get("detached", False)
            if type(detached) is not bool:
                raise CorruptFile(path, f"{where}detached is {shown(detached)}, not true or false")
            r.detached = detached
        error = item.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise CorruptFile(path, f"{where}error is {shown(error)}, not an object")
            code = error.get("exit")
            if code is not None and (type(code) is not int or not -(2**31) <= code < 2**31):
                raise CorruptFile(path, f"{where}error.exit is {shown(code)}, not an exit status")
            r.error = {
                "exit": code,
                "reason": text(error, "reason", MAX_ERROR_CHARS, where + "error."),
                "stderr": text(error, "stderr", MAX_ERROR_CHARS, where + "error."),
            }
        if kind == DEAD_LETTERING:
            dlq = item.get("dlq")
            if not (
                isinstance(dlq, list)
                and len(dlq) == 3
                and isinstance(dlq[0], str)
                and type(dlq[1]) is int
                and type(dlq[2]) is int
                and 0 <= dlq[2] <= MAX_OFFSET
            ):
                raise CorruptFile(path, f"{where}dlq is {shown(dlq)}, not [topic, partition, offset]")
            try:
                check_name(dlq[0])
            except UsageError:
                raise CorruptFile(path, f"{where}dlq names {shown(dlq[0])}, not a topic") from None
            r.dlq = dlq
        state.ranges.append(r)
    return state


def parse_settings(raw: bytes, path: str) -> ShareSettings:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptFile(path, "not JSON") from None
    if not isinstance(body, dict):
        raise CorruptFile(path, f"a JSON {type(body).__name__}, not an object")
    version = body.get("format")
    if type(version) is not int or version < 1:
        raise CorruptFile(path, f"format is {shown(version)}, not a version number")
    if version > SETTINGS_FORMAT:
        raise UnsupportedFormat(f"{path} has format {version}, newer than this kq understands; upgrade kq")
    fields: dict[str, Any] = {k: body.get(k) for k in ("dead_letter", "max_attempts", "backoff_ms", "backoff_max_ms")}
    if not isinstance(fields["dead_letter"], str):
        raise CorruptFile(path, f"dead_letter is {shown(fields['dead_letter'])}, not a topic name")
    try:
        return ShareSettings(**fields).check()
    except UsageError as exc:
        raise CorruptFile(path, str(exc)) from None


def settings_bytes(settings: ShareSettings) -> bytes:
    body = {"format": SETTINGS_FORMAT, **settings.__dict__}
    return json.dumps(body, indent=2).encode() + b"\n"


# --------------------------------------------------------------------------- the directory


class Shares(Groups):
    """The share groups of a data directory (``DATA/shares/``).

    Their workers' liveness works as a -g group's members' does (a member
    file each, flock'ed while the worker lives), so this shares ``Groups``'
    member, listing and deletion code over another directory.
    """

    kind = "share group"

    def __init__(self, data: DataDir):
        self.data = data
        self.path = os.path.join(data.path, SHARES_DIR)

    def names(self) -> list[str]:
        return share_names(self.data.path) if self.data.exists() else []

    def delete(self, group: str) -> None:
        if not self.exists(group):
            raise ShareNotFound(group)
        super().delete(group)

    def state_path(self, share: str, topic: str, partition: int) -> str:
        return os.path.join(self._dir(share, topic), f"{partition}{STATE_SUFFIX}")

    def read_state(self, share: str, topic: str | Topic, partition: int) -> PartitionState | None:
        """A partition's state as it is now (no lock: the file is replaced whole), or None if it has none."""
        name = topic if isinstance(topic, str) else topic.name
        path = self.state_path(share, name, partition)
        try:
            raw = read_small(path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        state = parse_state(raw, path)
        if isinstance(topic, Topic) and topic.id is not None and state.topic_id not in (None, topic.id):
            return None  # the state of a deleted topic of the same name
        return state

    def states(self, share: str, topic: str | Topic) -> dict[int, PartitionState]:
        name = topic if isinstance(topic, str) else topic.name
        out: dict[int, PartitionState] = {}
        try:
            entries = os.listdir(self._dir(share, name))
        except FileNotFoundError:
            return out
        for entry in entries:
            number = partition_of(entry, STATE_SUFFIX)
            if number is not None:
                state = self.read_state(share, topic, number)
                if state is not None:
                    out[number] = state
        return out

    def read_settings(self, share: str, topic: str) -> ShareSettings | None:
        path = os.path.join(self._dir(share, topic), SETTINGS_FILE)
        try:
            settings = parse_settings(read_small(path), path)
        except FileNotFoundError:
            return None
        if settings.dead_letter == topic:
            raise CorruptFile(path, f"dead_letter names the topic '{topic}' itself")
        return settings

    def settings(self, share: str, topic: str, changes: dict | None = None) -> ShareSettings:
        """The group's settings on ``topic``, after ``changes`` (stored, if they change anything)."""
        current = self.read_settings(share, topic)
        wanted = ShareSettings(**{**(current or ShareSettings()).__dict__, **(changes or {})})
        if not wanted.dead_letter:
            wanted.dead_letter = dead_letter_topic(topic)
        wanted.check()
        if wanted.dead_letter == topic:
            raise UsageError(f"the dead-letter topic must be another topic than '{topic}'")
        if wanted != current:
            directory = self._dir(share, topic)
            self.data.ensure()
            make_dirs(directory)
            atomic_write(os.path.join(directory, SETTINGS_FILE), settings_bytes(wanted))
        return wanted

    def shares_of_topic(self, topic: str) -> list[str]:
        return self.groups_of_topic(topic)

    def lease_holders(self, share: str, topic: str) -> dict[str, dict]:
        """Live workers of ``share`` on ``topic``, by id."""
        return {m["member"]: m for m in self.members(share, topic)}


# --------------------------------------------------------------------------- deliveries


class Delivery:
    """One acquired record: where it is, which attempt this is, and the lease that holds it."""

    __slots__ = ("partition", "offset", "attempt", "token", "batch", "index")

    def __init__(self, partition: int, offset: int, attempt: int, token: str, batch, index: int):
        self.partition = partition
        self.offset = offset
        self.attempt = attempt
        self.token = token
        self.batch = batch  # the kq.engine.batch.RecordBatch holding it, at ``index``
        self.index = index

    @property
    def lease(self) -> str:
        """The lease id ``kq ack`` and ``kq nack`` take: PARTITION:OFFSET:TOKEN."""
        return f"{self.partition}:{self.offset}:{self.token}"

    @property
    def value(self) -> bytes | None:
        return self.batch.values[self.index]

    @property
    def key(self) -> bytes | None:
        return None if self.batch.keys is None else self.batch.keys[self.index]

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        h = self.batch.headers
        return [] if h is None or h[self.index] is None else [tuple(x) for x in h[self.index]]

    @property
    def timestamp(self) -> int:
        d = self.batch.timestamp_deltas
        return self.batch.base_timestamp + (0 if d is None else d[self.index])

    def __repr__(self) -> str:
        return f"Delivery({self.lease}, attempt {self.attempt})"


def parse_lease(lease: str) -> tuple[int, int, str]:
    """(partition, offset, token) from a lease id, or UsageError."""
    parts = lease.strip().split(":") if isinstance(lease, str) else []
    if len(parts) == 3 and all(p.isascii() and p.isdigit() and len(p) <= 19 for p in parts[:2]):
        partition, offset, token = int(parts[0]), int(parts[1]), parts[2]
        if offset <= MAX_OFFSET and 0 < len(token) <= MAX_TOKEN and token.isascii() and token.isalnum():
            return partition, offset, token
    raise UsageError(f"{shown(lease)} is not a lease id (PARTITION:OFFSET:TOKEN, as consume --share prints)")


@dataclass
class Failure:
    """Why a delivery failed: the command's exit status (None: none ran), a reason, the last lines of its stderr."""

    reason: str
    exit: int | None = None
    stderr: str = ""

    def as_json(self) -> dict:
        tail = self.stderr[-MAX_ERROR_CHARS:]
        return {"exit": self.exit, "reason": self.reason[:MAX_ERROR_CHARS], "stderr": tail}


LEASE_EXPIRED = Failure("lease expired before the record was acknowledged")


@dataclass
class Outcome:
    """What one settle call did."""

    acked: int = 0
    released: int = 0  # back for another attempt
    dead: int = 0  # dead-lettered
    extended: int = 0
    not_held: list = field(default_factory=list)  # leases (ids) that were not held


class _Records:
    """Reads offset ranges of one partition, mostly forward, keeping the batches it read past."""

    def __init__(self, partition):
        self.partition = partition
        self.cursor = None
        self.pending: deque = deque()

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None
        self.pending.clear()

    def _position(self) -> int:
        return self.pending[0].base_offset if self.pending else self.cursor.offset

    def read(self, first: int, last: int) -> list[tuple[RecordBatch, int, int]]:
        """(batch, lo, hi) slices holding the records with offsets first..last, in order."""
        if (
            self.cursor is None
            or first < self._position()
            or (not self.pending and first > self.cursor.offset + RESEEK_OFFSETS)
        ):
            self.close()
            self.cursor = self.partition.cursor(first)
        out = []
        while True:
            if not self.pending:
                got = self.cursor.poll()
                if not got:
                    break
                self.pending.extend(got)
            b = self.pending[0]
            if b.next_offset <= first:
                self.pending.popleft()
                continue
            if b.base_offset > last:
                break
            lo, hi = b.index_of(first), b.index_of(last + 1)
            if lo < hi:
                out.append((b, lo, hi))
            if b.next_offset > last + 1:
                break
            self.pending.popleft()
        return out


class SharePartition:
    """One partition of a share group on a topic: its lock, its state file, its records."""

    def __init__(self, consumer: ShareConsumer, number: int):
        self.consumer = consumer
        self.number = number
        self.partition = consumer.topic.partition(number)
        directory = consumer.dir
        self.path = os.path.join(directory, f"{number}{STATE_SUFFIX}")
        self.lock = FileLock(os.path.join(directory, f"{number}{LOCK_SUFFIX}"))
        self.records = _Records(self.partition)
        self.seen: bytes | None = None  # the file's bytes when this process last looked

    def close(self) -> None:
        self.records.close()
        self.lock.close()

    def peek(self) -> PartitionState | None:
        """The state without the lock (for a quick look: is there work?)."""
        try:
            raw = read_small(self.path, MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        return parse_state(raw, self.path)

    def load(self) -> PartitionState:
        """The state, under the lock (the caller holds it), fitted to the log and this boot."""
        c = self.consumer
        try:
            raw = read_small(self.path, MAX_STATE_BYTES)
            state = parse_state(raw, self.path)
            self.seen = raw
        except FileNotFoundError:
            state, self.seen = None, None
        topic_id = c.topic.id
        if state is not None and topic_id is not None and state.topic_id not in (None, topic_id):
            c.warn(
                f"share group '{c.share}' on {c.topic.name}/{self.number}: its state was of an earlier topic of that name; starting afresh"
            )
            state = None
        log_start = self.partition.start_offset()
        if state is None:
            first = log_start if c.reset == "earliest" else self.partition.end_offset()
            state = PartitionState(start=first, next=first, boot=boot_id(), topic_id=topic_id)
        warning = state.normalize(log_start, boot_id())
        state.bound_leases(clock_ms(), c.holder_live)
        if warning:
            c.warn(f"share group '{c.share}' on {c.topic.name}/{self.number}: {warning}")
        if state.topic_id is None:
            state.topic_id = topic_id
        return state

    def save(self, state: PartitionState) -> None:
        state.merge()
        state.advance()
        raw = state.to_bytes()
        if state.fresh or raw != self.seen:
            make_dirs(os.path.dirname(self.path))
            atomic_write(self.path, raw)
            self.seen = raw
            state.fresh = False

    # ------------------------------------------------------------ operations (each under the lock)

    def acquire(self, want: int, lease_ms: int, acks=(), outcome: Outcome | None = None) -> list[Delivery]:
        """Up to ``want`` records under a new lease, after acknowledging ``acks`` ((token, spans)
        pairs, as ``settle`` takes them) in the same change of the state (``outcome`` counts them)."""
        deliveries, only_gaps = self._acquire(want, lease_ms, acks, outcome)
        while only_gaps:  # offsets without records (a compacted topic): look further on
            deliveries, only_gaps = self._acquire(want, lease_ms)
        return deliveries

    def _acquire(
        self, want: int, lease_ms: int, acks=(), outcome: Outcome | None = None
    ) -> tuple[list[Delivery], bool]:
        c = self.consumer
        now = clock_ms()
        end = self.partition.end_offset()
        if not acks:
            quick = self.peek()
            if want <= 0 or (
                quick is not None and not quick.has_work(end, now, c.holder_live) and quick.boot == boot_id()
            ):
                return [], False
        token = uuid.uuid4().hex[:12]
        taken: list[Range] = []
        with self.lock:
            state = self.load()
            self._finish_dead_lettering(state)
            for ack_token, spans in acks:
                self._apply(state, ack_token, spans, "ack", outcome if outcome is not None else Outcome())
            doomed = []
            got = 0
            for r in state.due(now) if want > 0 else ():
                if got >= want:
                    break
                if r.attempt >= c.settings.max_attempts:
                    doomed.append(r)  # its last delivery's lease ran out: nobody acknowledged it
                    continue
                pieces = state.carve(r.first, min(r.last, r.first + want - got - 1))
                assert pieces is not None  # r is one whole range of the state
                part = pieces[0]
                part.state, part.attempt, part.lease, part.owner = ACQUIRED, part.attempt + 1, token, c.owner
                part.detached = c.detach
                part.until = now + lease_ms
                taken.append(part)
                got += part.count
            if 0 < want and got < want and state.next < end and len(state.ranges) < MAX_RANGES:
                last = min(end, state.next + want - got) - 1
                new = Range(state.next, last, ACQUIRED, 1, token, now + lease_ms, c.owner, detached=c.detach)
                state.ranges.append(new)
                state.next = last + 1
                taken.append(new)
            if doomed:
                for r in doomed:
                    if r.state == ACQUIRED or r.error is None:
                        r.error = LEASE_EXPIRED.as_json()
                self._dead_letter(state, doomed)
            spans = sorted((r.first, r.last, r.attempt) for r in taken)  # as taken, before save() joins ranges
            self.save(state)
        deliveries, phantoms = [], []
        for first, last, attempt in spans:
            expect = first
            for b, lo, hi in self.records.read(first, last):
                offsets = b.offsets()
                if b.offset_deltas is None:  # dense: a gap can only come before it
                    if offsets[lo] > expect:
                        phantoms.append((expect, offsets[lo] - 1))
                    deliveries += [Delivery(self.number, offsets[i], attempt, token, b, i) for i in range(lo, hi)]
                    expect = offsets[hi - 1] + 1
                    continue
                for i in range(lo, hi):
                    if offsets[i] > expect:
                        phantoms.append((expect, offsets[i] - 1))
                    deliveries.append(Delivery(self.number, offsets[i], attempt, token, b, i))
                    expect = offsets[i] + 1
            if expect <= last:
                phantoms.append((expect, last))
        if phantoms:
            # Offsets without a record (a compacted topic's gaps, or records
            # retention deleted since): nothing to deliver, settled at once.
            self.settle(token, phantoms, "skip")
        return deliveries, bool(taken) and not deliveries

    def settle(
        self, token: str, spans: list[tuple[int, int]], how: str, failure: Failure | None = None, lease_ms: int = 0
    ) -> Outcome:
        """Settle offsets ``spans`` acquired under ``token``: ``ack``, ``nack`` (retry or, at the last
        attempt, dead-letter), ``dead`` (dead-letter now), ``release`` (again at once, the attempt
        not counted), ``extend`` (the lease by ``lease_ms``), ``skip`` (no record there)."""
        out = Outcome()
        with self.lock:
            state = self.load()
            self._finish_dead_lettering(state)
            if self._apply(state, token, spans, how, out, failure, lease_ms):
                self.save(state)
        return out

    def _apply(
        self,
        state: PartitionState,
        token: str,
        spans,
        how: str,
        out: Outcome,
        failure: Failure | None = None,
        lease_ms: int = 0,
    ) -> bool:
        """Settle ``spans`` of lease ``token`` in ``state`` (see ``settle``); True if it changed."""
        c = self.consumer
        now = clock_ms()
        held: list[Range] = []
        for first, last in spans:
            pieces = state.carve(first, last, token)
            if pieces is None:
                out.not_held.append((self.number, first, last, token))
            else:
                held += pieces
        if not held:
            return False
        if how in ("ack", "skip"):
            n = sum(r.count for r in held)
            if how == "ack":
                state.acked += n
                out.acked += n
            state.remove(held)
        elif how == "extend":
            for r in held:
                r.until = max(r.until, now + lease_ms)
            out.extended += sum(r.count for r in held)
        elif how == "release":
            for r in held:
                r.state, r.attempt, r.lease, r.owner, r.until = AVAILABLE, r.attempt - 1, None, None, now
                r.detached = False
            out.released += sum(r.count for r in held)
        else:
            doomed = []
            for r in held:
                r.error = (failure or Failure("rejected")).as_json()
                if how == "dead" or r.attempt >= c.settings.max_attempts:
                    doomed.append(r)
                else:
                    r.state, r.lease, r.owner, r.detached = AVAILABLE, None, None, False
                    r.until = now + c.settings.backoff(r.attempt)
                    out.released += r.count
            if doomed:
                out.dead += self._dead_letter(state, doomed)
        return True

    # ------------------------------------------------------------ dead-lettering

    def _dead_letter(self, state: PartitionState, doomed: list[Range]) -> int:
        """Copy the records of ``doomed`` to the dead-letter topic, once, and settle them.

        First the ranges are marked as being dead-lettered with the
        dead-letter partition's end offset (saved), then copied, then
        removed: a crash between leaves the mark, and whoever next holds
        the lock looks in the dead-letter partition from that offset for
        what was copied and copies the rest (``_finish_dead_lettering``).
        """
        c = self.consumer
        dlq = c.dead_letter_partition(self.number)
        dlq_from = dlq.end_offset()
        for r in doomed:
            r.state, r.lease, r.owner, r.until, r.detached = DEAD_LETTERING, None, None, 0, False
            r.dlq = [dlq.topic, dlq.number, dlq_from]
        self.save(state)
        return self._finish_dead_lettering(state)

    def _finish_dead_lettering(self, state: PartitionState) -> int:
        marked = [r for r in state.ranges if r.state == DEAD_LETTERING]
        if not marked:
            return 0
        c = self.consumer
        self._own_dead_letter_topic(state, marked)
        copied = 0
        by_target: dict[tuple, list[Range]] = {}
        for r in marked:
            assert r.dlq is not None  # parse_state and _dead_letter give every dead-lettering range one
            by_target.setdefault(tuple(r.dlq), []).append(r)
        for (topic, number, since), ranges in by_target.items():
            dlq = c.dead_letter_partition(self.number, topic, number)
            already = _dead_lettered_offsets(dlq, since, c.topic.name, self.number, c.share)
            values, keys, headers, stamps = [], [], [], []
            for r in ranges:
                for b, lo, hi in self.records.read(r.first, r.last):
                    offsets = b.offsets()
                    for i in range(lo, hi):
                        d = Delivery(self.number, offsets[i], r.attempt, "", b, i)
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
        self.save(state)
        return copied

    def _own_dead_letter_topic(self, state: PartitionState, marked: list[Range]) -> None:
        """Point ranges being dead-lettered to another topic than the group's dead-letter topic (a
        crafted state, or one saved before ``--dead-letter`` changed) at the group's own."""
        c = self.consumer
        own = c.settings.dead_letter
        astray = [r for r in marked if r.dlq is not None and r.dlq[0] != own]
        if not astray:
            return
        dlq = c.dead_letter_partition(self.number)
        end = dlq.end_offset()
        for r in astray:
            assert r.dlq is not None
            c.warn(
                f"share group '{c.share}' on {c.topic.name}/{self.number}: {self.path} dead-letters offsets "
                f"{r.first}..{r.last} to '{r.dlq[0]}', not to the group's dead-letter topic '{own}': "
                f"they go to '{own}'"
            )
            r.dlq = [dlq.topic, dlq.number, end]
        self.save(state)


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


# --------------------------------------------------------------------------- the consumer


class ShareConsumer:
    """A worker of share group ``share`` on ``topic``: acquire records, then ack, nack or extend them.

        >>> worker = ShareConsumer(data, topic, "mailer")       # doctest: +SKIP
        >>> for d in worker.acquire(100): ...                    # doctest: +SKIP
        >>> worker.ack(done); worker.nack(failed, Failure("bad address"))   # doctest: +SKIP

    Records come from every partition, any number of workers share them,
    and a record is delivered again (``attempt`` + 1) when its lease runs
    out or it is nacked, until ``max_attempts``; then it is copied to the
    dead-letter topic. Settling goes by partition, one state change each.
    """

    def __init__(
        self,
        data: DataDir,
        topic: Topic,
        share: str,
        changes: dict | None = None,
        lease_ms: int = 30_000,
        reset: str = "earliest",
        join: bool = True,
        create: bool = True,
        warn=None,
        detach: bool = False,
    ):
        if reset not in ("earliest", "latest"):
            raise UsageError(f"reset must be 'earliest' or 'latest', not {reset!r}")
        if type(lease_ms) is not int or not 1 <= lease_ms <= MAX_LEASE_MS:
            raise UsageError(f"a lease lasts from 1 ms to 24 h ({MAX_LEASE_MS} ms), not {shown(lease_ms)} ms")
        self.data = data
        self.topic = topic
        self.share = check_name(share, "share group")
        self.shares = Shares(data)
        if not create and not self.shares.exists(share):
            raise ShareNotFound(share)
        if Groups(data).exists(share):
            raise UsageError(f"'{share}' is a consumer group (-g); a share group needs a name of its own")
        self.dir = check_inside(self.shares._dir(share, topic.name), data.path)
        data.ensure()
        make_dirs(self.dir)
        self.settings = self.shares.settings(share, topic.name, changes)
        self.lease_ms = lease_ms
        self.reset = reset
        self.warn = warn or kq_warn
        self.member = Member(self.shares, share, topic.name)
        self.owner = self.member.id
        # Leases handed to a script (``consume --share`` printing lease ids for `kq ack`) outlive
        # this worker; a worker's own leases end with it (``holder_live``).
        self.detach = detach
        self._holders: dict[str, tuple[bool, float]] = {}
        self._joined = False
        self._join = join
        self._parts: dict[int, SharePartition] = {}
        self._dead_letter_topic: Topic | None = None
        self._turn = random.randrange(topic.partition_count)

    def __enter__(self) -> ShareConsumer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def holder_live(self, owner: str | None) -> bool:
        """Whether the worker ``owner`` lives: its member file is flock'ed (the kernel drops the lock
        when it dies). A worker found alive is not looked at again for HOLDER_CHECK_SECONDS; one
        found gone never comes back (ids are never reused)."""
        if owner == self.owner:
            return True
        if owner is None or not WORKER_ID.fullmatch(owner):
            return False  # not an id kq makes: nobody holds its lock
        now = time.monotonic()
        known = self._holders.get(owner)
        if known is not None and (not known[0] or now - known[1] < HOLDER_CHECK_SECONDS):
            return known[0]
        if len(self._holders) > MAX_RANGES:
            self._holders.clear()
        live = is_locked(os.path.join(self.dir, MEMBERS_DIR, owner + MEMBER_SUFFIX))
        self._holders[owner] = (live, now)
        return live

    def partition(self, number: int) -> SharePartition:
        p = self._parts.get(number)
        if p is None:
            p = self._parts[number] = SharePartition(self, number)
        return p

    def close(self) -> None:
        for p in self._parts.values():
            p.close()
        self._parts.clear()
        if self._dead_letter_topic is not None:
            self._dead_letter_topic.close()
            self._dead_letter_topic = None
        if self._joined:
            self.member.leave()
            self._joined = False

    def dead_letter_partition(self, source_partition: int, topic: str | None = None, number: int | None = None):
        """The dead-letter partition for ``source_partition``: the same number, in a topic with as many
        partitions as the source (created so), or the number modulo a smaller topic's count."""
        name = topic or self.settings.dead_letter
        t = self._dead_letter_topic
        if t is None or t.name != name:
            if t is not None:
                t.close()
            try:
                t = self.data.topic(name)
            except KqError:
                t, _ = self.data.get_or_create_topic(name, self.topic.partition_count)
            self._dead_letter_topic = t
        return t.partition((source_partition if number is None else number) % t.partition_count)

    # ------------------------------------------------------------ acquiring

    def acquire(self, max_records: int, lease_ms: int | None = None, ack: Iterable[Delivery] = ()) -> list[Delivery]:
        """Up to ``max_records`` records no other worker holds, each under a lease of ``lease_ms``
        (the consumer's by default); fewer, or none, if fewer are there now.

        ``ack``: deliveries to acknowledge first, in the same change of each partition's state
        (as Kafka's ShareFetch carries the acknowledgements of the records fetched before):
        one write instead of two. ``last_ack`` tells what came of them.
        """
        if self._join and not self._joined:
            self.member.join()
            self._joined = True
        else:
            self.member.touch()
        lease = self.lease_ms if lease_ms is None else lease_ms
        acks: dict[int, list] = {}
        for (partition, token), offsets in _by_lease(ack).items():
            acks.setdefault(partition, []).append((token, _runs(offsets)))
        self.last_ack = Outcome()
        out: list[Delivery] = []
        count = self.topic.partition_count
        for i in range(count):
            number = (self._turn + i) % count
            mine = acks.pop(number, ())
            if len(out) >= max_records and not mine:
                continue
            found = Outcome()
            out += self.partition(number).acquire(max_records - len(out), lease, mine, found)
            self._add(self.last_ack, found, number)
        # The next call starts at the next partition, so that workers spread over all of them.
        self._turn = (self._turn + 1) % count
        return out

    def rounds(self, count: int | None = None, follow: bool = False, idle_timeout: float | None = None):
        """Lists of deliveries until ``count`` records were acquired, or none can be had now (without
        ``follow``); following, until ``idle_timeout`` seconds pass without one (sets ``timed_out``)."""
        self.timed_out = False
        idle = IdleClock(idle_timeout)
        follow = follow or idle_timeout is not None
        taken = 0
        while count is None or taken < count:
            got = self.acquire(ROUND_RECORDS if count is None else min(ROUND_RECORDS, count - taken))
            if got:
                idle.reset()
                taken += len(got)
                yield got
            elif not follow:
                return
            elif idle.expired():
                self.timed_out = True
                return
            else:
                idle.pause(POLL_SECONDS)

    timed_out = False
    last_ack = Outcome()

    # ------------------------------------------------------------ settling

    def ack(self, deliveries: Iterable[Delivery]) -> Outcome:
        """The records were processed: settle them for good."""
        return self._settle(deliveries, "ack")

    def nack(
        self, deliveries: Iterable[Delivery], failure: Failure | None = None, dead_letter: bool = False
    ) -> Outcome:
        """The records failed: deliver them again after the backoff, or dead-letter them (at once with
        ``dead_letter``, else once they have had ``max_attempts``)."""
        return self._settle(deliveries, "dead" if dead_letter else "nack", failure)

    def release(self, deliveries: Iterable[Delivery]) -> Outcome:
        """Give the records back unprocessed (a worker stopping): deliverable at once, this attempt not counted."""
        return self._settle(deliveries, "release")

    def extend(self, deliveries: Iterable[Delivery], lease_ms: int | None = None) -> Outcome:
        """Keep holding the records for another ``lease_ms`` from now."""
        return self._settle(deliveries, "extend", lease_ms=self.lease_ms if lease_ms is None else lease_ms)

    def settle_leases(self, leases: Iterable[str], how: str, failure: Failure | None = None) -> Outcome:
        """Settle records by lease id (``kq ack``/``kq nack``); ids that are not held are listed in the outcome."""
        spans: dict[tuple[int, str], list[int]] = {}
        for lease in leases:
            partition, offset, token = parse_lease(lease)
            self.topic.partition(partition)  # PartitionNotFound for one the topic lacks
            spans.setdefault((partition, token), []).append(offset)
        return self._settle_spans(spans, how, failure)

    def _settle(self, deliveries, how: str, failure: Failure | None = None, lease_ms: int = 0) -> Outcome:
        return self._settle_spans(_by_lease(deliveries), how, failure, lease_ms)

    def _settle_spans(self, spans, how, failure=None, lease_ms: int = 0) -> Outcome:
        total = Outcome()
        for (partition, token), offsets in sorted(spans.items()):
            self._add(total, self.partition(partition).settle(token, _runs(offsets), how, failure, lease_ms), partition)
        return total

    @staticmethod
    def _add(total: Outcome, out: Outcome, partition: int) -> None:
        """Add a partition's outcome to ``total``, its leases not held as lease ids."""
        total.acked += out.acked
        total.released += out.released
        total.dead += out.dead
        total.extended += out.extended
        for _, first, last, token in out.not_held:
            total.not_held += [f"{partition}:{o}:{token}" for o in range(first, last + 1)]


def _by_lease(deliveries: Iterable[Delivery]) -> dict[tuple[int, str], list[int]]:
    """Offsets by (partition, lease token). Deliveries of one acquisition come together, so they
    are grouped in runs (itertools in C, not a dict operation per record)."""
    spans: dict[tuple[int, str], list[int]] = {}
    for key, group in groupby(deliveries, key=_LEASE_OF):
        spans.setdefault(key, []).extend(map(_OFFSET_OF, group))
    return spans


_LEASE_OF = attrgetter("partition", "token")
_OFFSET_OF = attrgetter("offset")


def _runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted offsets as (first, last) runs of consecutive ones."""
    if offsets:
        low, high = min(offsets), max(offsets)
        if high - low + 1 == len(offsets) == len(set(offsets)):
            return [(low, high)]  # the common case, a whole acquisition: found without a Python loop
    out: list[list[int]] = []
    for o in sorted(set(offsets)):
        if out and out[-1][1] + 1 == o:
            out[-1][1] = o
        else:
            out.append([o, o])
    return [(a, b) for a, b in out]


# --------------------------------------------------------------------------- replicating


def copy_share_state(source: DataDir, replica: DataDir, src: Topic, rep: Topic) -> None:
    """Copy each share group's settings and partition states for ``src`` into ``replica``
    (``kq replicate``), never claiming offsets the replica does not hold yet: a state is cut
    back to the replica's end offset (what lies past it was never acquired, as far as the
    replica knows). Written under the replica partition's share lock, only when it changed."""
    theirs, ours = Shares(source), Shares(replica)
    for share in theirs.shares_of_topic(src.name):
        settings = theirs.read_settings(share, src.name)
        states = theirs.states(share, src)
        if settings is None and not states:
            continue
        directory = ours._dir(share, rep.name)
        make_dirs(directory)
        if settings is not None and ours.read_settings(share, rep.name) != settings:
            atomic_write(os.path.join(directory, SETTINGS_FILE), settings_bytes(settings))
        for number, state in states.items():
            if number >= rep.partition_count:
                continue
            state.cut_back(rep.partition(number).end_offset())
            with FileLock(os.path.join(directory, f"{number}{LOCK_SUFFIX}")):
                have = ours.read_state(share, rep.name, number)
                if have is None or have.essence() != state.essence():
                    atomic_write(os.path.join(directory, f"{number}{STATE_SUFFIX}"), state.to_bytes())


# --------------------------------------------------------------------------- describing


def describe_share(data: DataDir, share: str) -> dict:
    """Per topic and partition: acquired, available, retrying and dead-lettered counts, and each worker's leases."""
    shares = Shares(data)
    if not shares.exists(share):
        raise ShareNotFound(share)
    now = clock_ms()
    boot = boot_id()
    partitions, workers = [], {}
    for name in shares.topics(share):
        try:
            topic = data.topic(name)
        except KqError:
            continue
        try:
            states = shares.states(share, topic)
            live = shares.lease_holders(share, name)
            for m in live.values():
                workers[m["member"]] = {**m, "leases": []}
            settings = shares.read_settings(share, name)
            for number in range(topic.partition_count):
                part = topic.partition(number)
                start, end = part.start_offset(), part.end_offset()
                state = states.get(number)
                row = {
                    "topic": name,
                    "partition": number,
                    "start_offset": start,
                    "end_offset": end,
                    "share_start": None,
                    "acquired": 0,
                    "available": max(end - start, 0),
                    "retrying": 0,
                    "dead_lettered": 0,
                    "acknowledged": 0,
                    "lag": max(end - start, 0),
                }
                if state is not None:
                    current = state.boot == boot
                    acquired = [
                        r
                        for r in state.ranges
                        if r.state == ACQUIRED
                        and current
                        and r.until > now
                        and unsound_lease(r, now, live.__contains__) != HOLDER_GONE
                    ]
                    retrying = [r for r in state.ranges if r.state == AVAILABLE and current and r.until > now]
                    row.update(
                        share_start=state.start,
                        acquired=sum(r.count for r in acquired),
                        retrying=sum(r.count for r in retrying),
                        available=state.lag(end) - sum(r.count for r in acquired + retrying),
                        dead_lettered=state.dead,
                        acknowledged=state.acked,
                        lag=state.lag(end),
                    )
                    for r in acquired:
                        w = workers.setdefault(
                            r.owner,
                            {"member": r.owner, "topic": name, "pid": None, "host": None, "live": False, "leases": []},
                        )
                        w["leases"].append(
                            {
                                "topic": name,
                                "partition": number,
                                "first": r.first,
                                "last": r.last,
                                "attempt": r.attempt,
                                "expires_in": round(min(r.until - now, MAX_LEASE_MS) / 1000, 1),
                            }
                        )
                partitions.append(row)
            if settings is not None:
                for row in partitions:
                    if row["topic"] == name:
                        row["dead_letter"] = settings.dead_letter
        finally:
            topic.close()
    for w in workers.values():
        w.setdefault("live", True)
    return {
        "share_group": share,
        "partitions": partitions,
        "workers": sorted(workers.values(), key=lambda w: w["member"]),
    }


def share_offset_rows(data: DataDir, topic: Topic, shares_wanted: list[str]) -> list[dict]:
    """``kq offsets show`` rows for share groups: their start (everything before it settled) and lag."""
    shares = Shares(data)
    rows = []
    for share in shares_wanted:
        states = shares.states(share, topic)
        for number in range(topic.partition_count):
            part = topic.partition(number)
            start, end = part.start_offset(), part.end_offset()
            state = states.get(number)
            rows.append(
                {
                    "topic": topic.name,
                    "partition": number,
                    "start_offset": start,
                    "end_offset": end,
                    "group": share,
                    "type": "share",
                    "committed": None if state is None else state.start,
                    "lag": max(end - start, 0) if state is None else state.lag(end),
                }
            )
    return rows
