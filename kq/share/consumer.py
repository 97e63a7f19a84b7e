"""A share group's worker (``ShareConsumer``): acquire records from every partition, then ack, nack, release or extend them."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterable
from itertools import groupby
from operator import attrgetter

from ..consumer import POLL_SECONDS, IdleClock
from ..engine.datadir import DataDir
from ..engine.fileio import is_locked, make_dirs, shown
from ..engine.names import check_name
from ..engine.topic import Topic, check_inside
from ..errors import KqError, ShareNotFound, UsageError
from ..errors import warn as kq_warn
from ..groups.member import Member
from ..groups.store import MEMBER_SUFFIX, MEMBERS_DIR, Groups
from .deliveries import Delivery, Failure, Outcome, parse_lease
from .lease import SharePartition
from .shares import Shares
from .state import MAX_LEASE_MS, MAX_RANGES

# A worker's id, as kq.groups.member.Member makes it; its member file is flock'ed while it lives.
WORKER_ID = re.compile(r"[0-9]{20}-[0-9]{1,10}-[0-9a-f]{6}")
HOLDER_CHECK_SECONDS = 1.0  # how long a worker found alive is taken to be alive without looking again
ROUND_RECORDS = 1000  # acquired at a time by ``ShareConsumer.rounds``


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
