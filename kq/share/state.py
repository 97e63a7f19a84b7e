"""Share groups: job queues over a topic, with per-record leases, retries and a dead-letter topic.

This module: a partition's state file (``P.share``), its ranges, and the clocks of its leases.

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
dead-lettered; and the runs of records that are *scheduled* (delayed by
their ``kq.deliver-at`` headers until a wall-clock time; see
kq.delivery_time), kept in a schedule file of their own (kq.share.schedule)
that the state names and summarizes. An offset between start and next in
no range and no scheduled run is settled.
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
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..engine.fileio import shown
from ..engine.names import check_name
from ..engine.segment import MAX_OFFSET
from ..engine.topic import MAX_TOPIC_ID
from ..errors import CorruptFile, UnsupportedFormat, UsageError

STATE_SUFFIX = ".share"
LOCK_SUFFIX = ".share.lock"
# Format 2: the state names a schedule file (an older kq, which knows none, would take its records
# for settled). A state without one is still written as format 1.
STATE_FORMAT = 2
# A partition's state grows with the ranges of records that are not settled;
# past MAX_RANGES no new records are acquired until some are settled, so the
# file stays well under MAX_STATE_BYTES (a range is about 150 bytes, plus
# its last error's text, at most MAX_ERROR_CHARS).
MAX_STATE_BYTES = 8 * 1024 * 1024
MAX_RANGES = 4096
MAX_ERROR_CHARS = 2000
MAX_ATTEMPTS = 1000
# The longest lease kq grants (``--lease``): a lease that would end later than
# this from now was not written by kq, and is cut to it.
MAX_LEASE_MS = 24 * 3600 * 1000
MAX_TOKEN = 64
MAX_OWNER = 256
ACQUIRED, AVAILABLE, DEAD_LETTERING = "acquired", "available", "dead-lettering"
STATES = (ACQUIRED, AVAILABLE, DEAD_LETTERING)


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
    # The schedule file's summary (kq.share.schedule.Schedule.commit): its generation, the bytes of
    # it that hold, its records, the first of their offsets and the earliest time one falls due.
    schedule: dict | None = None

    def to_bytes(self) -> bytes:
        body = {
            "format": STATE_FORMAT if self.schedule is not None else 1,
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
        if self.schedule is not None:
            body["schedule"] = self.schedule
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @property
    def unsettled(self) -> int:
        """Offsets between start and next that are not settled (scheduled ones included)."""
        return sum(r.count for r in self.ranges) + self.scheduled_records

    @property
    def scheduled_records(self) -> int:
        return self.schedule["records"] if self.schedule else 0

    @property
    def next_due(self) -> int | None:
        """When the earliest scheduled run falls due (wall-clock epoch ms), or None if none is."""
        return self.schedule["next_due"] if self.schedule else None

    def lag(self, end: int) -> int:
        """Records not yet settled: in flight or waiting, and never acquired up to ``end``."""
        return self.unsettled + max(end - self.next, 0)

    # ------------------------------------------------------------ keeping it sound

    def normalize(self, log_start: int, boot: str, schedule=None) -> str | None:
        """Fit the state to the log and this boot; returns a warning if records were lost to retention.

        ``schedule``: the state's kq.share.schedule.Schedule, synced to it (runs below the log's
        start are forgotten there too); without one the state must name none."""
        if boot != self.boot:
            # Leases and retry times of another boot: their holders are gone.
            for r in self.ranges:
                r.until = 0
            self.boot = boot
        warning = None
        if log_start > self.start:
            lost = sum(min(r.last, log_start - 1) - r.first + 1 for r in self.ranges if r.first < log_start)
            lost += max(log_start - self.next, 0)  # never acquired
            if schedule is not None:
                lost += schedule.trim_below(log_start)
            self.ranges = [
                r if r.first >= log_start else r.copy(log_start, r.last) for r in self.ranges if r.last >= log_start
            ]
            if lost:
                self.skipped += lost
                warning = f"{lost} offset(s) below the start offset {log_start} were deleted by retention or trim before they were settled"
            self.start = log_start
            self.next = max(self.next, log_start)
        self.advance(schedule)
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
            self.schedule and (self.schedule["records"], self.schedule["first"], self.schedule["next_due"]),
        )

    def cut_back(self, end: int) -> None:
        """Forget acquisitions at or past ``end`` (a replica that holds the log only up to there)."""
        if self.next <= end:
            return
        self.ranges = [r if r.last < end else r.copy(r.first, end - 1) for r in self.ranges if r.first < end]
        self.next = max(end, 0)
        self.start = min(self.start, self.next)
        self.advance()

    def advance(self, schedule=None) -> None:
        """Move ``start`` up to the first offset that is not settled (``schedule``: the state's
        Schedule, if it changed since ``self.schedule`` was set from it)."""
        start = self.ranges[0].first if self.ranges else self.next
        if schedule is not None:
            first = schedule.first_offset()
        else:
            first = self.schedule["first"] if self.schedule else None
        self.start = start if first is None else min(start, first)

    def due(self, now: int) -> list[Range]:
        """Ranges that may be delivered now: available ones whose time came (on the boot clock ``now``),
        and expired leases."""
        return [r for r in self.ranges if r.state != DEAD_LETTERING and r.until <= now]

    def has_work(self, end: int, now: int, holder_live=None, wall: int | None = None) -> bool:
        """Whether a worker holding the lock would find something to do: records to deliver or to
        dead-letter, or a lease that cannot hold (``unsound_lease``). Scheduled records are work
        only from their time on, so an idle follower does not take the lock for them."""
        if wall is None:
            wall = wall_ms()
        due = self.next_due
        return (
            self.next < end
            or (due is not None and due <= wall)
            or any(
                r.until <= now or r.state == DEAD_LETTERING or unsound_lease(r, now, holder_live) for r in self.ranges
            )
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

    def carve(
        self, first: int, last: int, token: str | None = None, firsts: list[int] | None = None
    ) -> list[Range] | None:
        """The ranges that make up exactly ``first``..``last``, split out of larger ones; None unless
        every offset there is acquired by lease ``token`` (or, without a token, in any range).

        ``firsts``: the ranges' first offsets as they were before earlier carves of higher offsets
        (a carve leaves the ranges before the one it starts in, and that one's first, as they
        were): many spans are carved from the last back with one list (``carve_all``)."""
        import bisect

        if firsts is None:
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

    def carve_all(self, spans, token: str) -> tuple[list[Range], list[tuple[int, int]]]:
        """``carve`` each of ``spans`` ((first, last) pairs, in order, apart) held by lease ``token``:
        the ranges carved, and the spans that are not held."""
        firsts = [r.first for r in self.ranges]
        held: list[Range] = []
        missing: list[tuple[int, int]] = []
        for first, last in reversed(spans):
            pieces = self.carve(first, last, token, firsts)
            if pieces is None:
                missing.append((first, last))
            else:
                held += pieces
        missing.reverse()
        return held, missing

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
        first, last = item.get("first"), item.get("last")
        if not (type(first) is int and type(last) is int and 0 <= first <= MAX_OFFSET and 0 <= last <= MAX_OFFSET):
            # (checked inline first: a state has thousands of ranges, read at every acquisition)
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
        attempt, until = item.get("attempt"), item.get("until")
        if not (
            type(attempt) is int and type(until) is int and 0 <= attempt <= MAX_ATTEMPTS and 0 <= until <= MAX_OFFSET
        ):
            attempt, until = number(item, "attempt", 0, MAX_ATTEMPTS, where), number(item, "until", where=where)
        r = Range(first, last, kind, attempt, until=until)
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
    schedule = body.get("schedule")
    if schedule is not None:
        state.schedule = _parse_schedule_summary(schedule, state, version, path, number)
    return state


def _parse_schedule_summary(body, state: PartitionState, version: int, path: str, number) -> dict:
    """A state's ``schedule`` (see PartitionState.schedule), checked."""
    from .schedule import ENTRY, MAGIC, MAX_GENERATION

    if version < 2 or not isinstance(body, dict):
        raise CorruptFile(path, f"schedule is {shown(body)}, not an object of a format 2 state")
    out = {
        "generation": number(body, "generation", 1, MAX_GENERATION, "schedule."),
        "bytes": number(body, "bytes", len(MAGIC) + ENTRY.size, where="schedule."),
        "records": number(body, "records", 1, where="schedule."),
        "first": number(body, "first", state.start, max(state.next - 1, state.start), "schedule."),
        "next_due": number(body, "next_due", 1, where="schedule."),
    }
    if (out["bytes"] - len(MAGIC)) % ENTRY.size:
        raise CorruptFile(path, f"schedule.bytes is {out['bytes']}, not the length of a schedule file")
    return out
