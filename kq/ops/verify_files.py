"""``kq verify``: the small files beside the log. A partition's start offset, lock files and
leftovers; each group's committed offsets, claim and member files; each share group's
settings, states and lock files. Each must parse and fit the partition it names.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..engine.datadir import DataDir
from ..engine.fileio import shown, try_lock
from ..engine.log_writer import WRITER_LOCK
from ..engine.maintain import COMPACT_SUFFIX
from ..engine.partition import MAINTENANCE_LOCK, START_NAME
from ..engine.segment import INDEX_SUFFIX, QUARANTINE
from ..engine.topic import Topic
from ..engine.txn_log import TXN_INDEX_SUFFIX
from ..errors import CorruptFile, KqError
from ..groups.store import CLAIM_SUFFIX, MEMBER_SUFFIX, MEMBERS_DIR, OFFSET_SUFFIX, Groups, _read_member, partition_of
from .verify_problem import FOREIGN, INFO, WARNING, Problem, not_regular, not_repaired, unreadable
from .verify_repair import quarantine_offsets, quarantine_share_state

if TYPE_CHECKING:
    from .verify_partition import PartitionCheck


def _check_open_transactions(check, path: str) -> None:
    """``txn.open``: readable, and each transaction still open named (read_committed readers wait at it)."""
    from ..engine.txn_log import OPEN_FILE, read_open

    try:
        entries = read_open(path)
    except (KqError, OSError) as exc:
        file, why = unreadable(exc, os.path.join(path, OPEN_FILE))
        check.report(
            file,
            None,
            f"open transactions unreadable: {why}",
            why_not="restore the file; read_committed readers and transactional writers refuse the partition",
        )
        return
    for pid, entry in sorted(entries.items()):
        who = f"transactional id {entry.transactional_id!r}" if entry.transactional_id else "a replicated producer"
        check.report(
            os.path.join(path, OPEN_FILE),
            None,
            f"a transaction of producer {pid} ({who}, epoch {entry.epoch}) is open from offset "
            f"{entry.first_offset}: read_committed readers stop there until it ends (kq maintain ends "
            "one whose producer is gone or that ran past its timeout)",
            INFO,
        )


def check_partition_files(check: PartitionCheck, bases: list[int]) -> None:
    """The files beside a partition's segments: its start offset, lock files, and what
    interrupted work or an earlier repair left."""
    path = check.part.path
    try:
        trimmed = check.part.trimmed_to()
    except (CorruptFile, OSError) as exc:
        file, why = unreadable(exc, os.path.join(path, START_NAME))
        check.report(
            file,
            None,
            f"start offset file unreadable: {why}",
            why_not="the start offset it held is unknown; restore the file, or remove it to serve the "
            "partition from its first segment (records trimmed before would be served again)",
        )
    else:
        end = max(check.next_offset or 0, bases[-1] if bases else 0)
        if trimmed > end and len(check.segments) == len(bases):  # (with a segment unread, the end is unknown)
            # A trim never moves the start past the end: readers would skip records not yet written.
            check.report(
                os.path.join(path, START_NAME),
                None,
                f"start offset {trimmed} is past the end offset {end}: records appended below "
                f"{trimmed} would never be served",
                why_not="restore the file, or remove it to serve the partition from its first segment",
            )
    segments = {seg.base for seg in check.segments}
    _check_open_transactions(check, path)
    for name in sorted(os.listdir(path)):
        stem = name[: -len(INDEX_SUFFIX)]
        if name in (WRITER_LOCK, MAINTENANCE_LOCK) and (kind := not_regular(os.path.join(path, name))):
            check.report(
                os.path.join(path, name),
                None,
                f"lock file is a {kind}, not a regular file: writers cannot lock the partition",
                why_not=FOREIGN,
            )
        elif (
            name.endswith(TXN_INDEX_SUFFIX)
            and (txn_stem := name[: -len(TXN_INDEX_SUFFIX)]).isascii()
            and txn_stem.isdigit()
            and int(txn_stem) not in segments
        ):
            check.report(
                os.path.join(path, name),
                None,
                "transaction index of a segment that does not exist (left by an interrupted deletion)",
                INFO,
            )
        elif name.endswith(INDEX_SUFFIX) and stem.isascii() and stem.isdigit() and int(stem) not in segments:
            check.report(
                os.path.join(path, name),
                None,
                "index of a segment that does not exist (left by an interrupted deletion)",
                INFO,
            )
        elif name.endswith(COMPACT_SUFFIX):
            check.report(
                os.path.join(path, name),
                None,
                "left by an interrupted compaction; never read, the next compaction removes it",
                INFO,
            )
        elif QUARANTINE in name:
            size = os.lstat(os.path.join(path, name)).st_size
            check.report(
                os.path.join(path, name),
                None,
                f"{size} byte(s) quarantined by an earlier repair: not served; inspect, then remove",
                INFO,
            )


class GroupFilesCheck:
    """The files of the groups and share groups reading a topic (with ``repair``, unreadable
    offsets files and share states are moved aside)."""

    def __init__(self, data: DataDir, repair: bool):
        self.data = data
        self.repair = repair

    def group_offsets(self, topic: Topic, ranges: dict[int, tuple[int, int] | None]):
        """Each group's files for this topic: committed offsets readable and inside the
        partition, claim and member files that a member can open."""
        groups = Groups(self.data)
        for group in groups.groups_of_topic(topic.name):
            directory = os.path.join(groups.path, group, topic.name)
            names, problems = self._group_directory(topic, group, directory, f"group '{group}'")
            yield from problems
            if names is None:
                continue
            for name in names:
                path = os.path.join(directory, name)
                number = partition_of(name, CLAIM_SUFFIX)
                if number is not None:
                    yield from self._lock_file(topic, number, path, f"claim file of group '{group}'")
                number = partition_of(name, OFFSET_SUFFIX)
                if number is None:
                    continue
                try:
                    found = Groups.read_offset_file(path)
                except (CorruptFile, OSError) as exc:
                    yield self._unreadable_file(
                        topic,
                        number,
                        path,
                        exc,
                        f"offsets file of group '{group}'",
                        quarantine_offsets,
                        group,
                        directory,
                    )
                    continue
                if found is None:
                    continue
                offset, committed_for = found.offset, found.topic_id
                if topic.id is not None and committed_for not in (None, topic.id):
                    yield Problem(
                        topic.name,
                        number,
                        path,
                        None,
                        f"group '{group}' committed this offset for an earlier topic named '{topic.name}' "
                        "(deleted and re-created): it is ignored",
                        WARNING,
                    )
                    continue
                if number >= topic.partition_count:
                    yield Problem(
                        topic.name,
                        number,
                        path,
                        None,
                        f"group '{group}' has an offset for partition {number}, which does not exist",
                        WARNING,
                    )
                    continue
                yield from _offset_in_range(topic, number, path, group, offset, ranges.get(number))

    def _lock_file(self, topic: Topic, number: int, path: str, what: str):
        """A lock file (a group's claim, a share group's lock) must be a regular file: kq cannot lock anything else."""
        kind = not_regular(path)
        if kind:
            yield self._not_repaired(
                Problem(topic.name, number, path, None, f"{what} is a {kind}, not a regular file", why_not=FOREIGN)
            )

    def _group_members(self, topic: Topic, group: str, directory: str):
        """Member files a live member holds must be what a member writes (others are tidied by members)."""
        members = os.path.join(directory, MEMBERS_DIR)
        try:
            names = sorted(n for n in os.listdir(members) if n.endswith(MEMBER_SUFFIX))
        except FileNotFoundError:
            return
        except OSError as exc:
            yield self._not_repaired(
                Problem(topic.name, None, members, None, f"members of group '{group}' unreadable: {exc.strerror}")
            )
            return
        for name in names:
            path = os.path.join(members, name)
            try:
                probe = try_lock(path)
                if probe is not None:  # its member is gone; the next member removes it
                    probe.close()
                    continue
                _read_member(path, name[: -len(MEMBER_SUFFIX)])
            except FileNotFoundError:
                continue
            except (CorruptFile, OSError) as exc:
                _, why = unreadable(exc, path)
                yield self._not_repaired(
                    Problem(
                        topic.name,
                        None,
                        path,
                        None,
                        f"member file of group '{group}' unreadable: {why}",
                        why_not=FOREIGN,
                    )
                )

    def share_states(self, topic: Topic, ranges: dict[int, tuple[int, int] | None]):
        """Each share group's files for this topic (kq.share.state): settings and partition states that
        parse and fit the partition, lock files that are regular files, live workers' member files."""
        from ..share.settings import SETTINGS_FILE, dead_letter_topic
        from ..share.shares import Shares
        from ..share.state import LOCK_SUFFIX, STATE_SUFFIX

        shares = Shares(self.data)
        for share in shares.shares_of_topic(topic.name):
            directory = os.path.join(shares.path, share, topic.name)
            names, problems = self._group_directory(topic, share, directory, f"share group '{share}'")
            yield from problems
            if names is None:
                continue
            dead_letter: str | None = dead_letter_topic(topic.name)
            if SETTINGS_FILE in names:
                path = os.path.join(directory, SETTINGS_FILE)
                try:
                    settings = shares.read_settings(share, topic.name)
                    if settings is not None:
                        dead_letter = settings.dead_letter
                except (CorruptFile, OSError) as exc:
                    dead_letter = None
                    yield self._not_repaired(
                        Problem(
                            topic.name,
                            None,
                            path,
                            None,
                            f"settings of share group '{share}' unreadable: {unreadable(exc, path)[1]}",
                            why_not="restore it, or remove it (the group takes the default settings again)",
                        )
                    )
            for name in names:
                path = os.path.join(directory, name)
                number = partition_of(name, LOCK_SUFFIX)
                if number is not None:
                    yield from self._lock_file(topic, number, path, f"lock file of share group '{share}'")
                    continue
                number = partition_of(name, STATE_SUFFIX)
                if number is None:
                    continue
                try:
                    state = shares.read_state(share, topic.name, number)
                    if state is not None and state.schedule is not None:
                        state, schedule = shares.read_schedule(share, topic.name, number, state)
                        schedule.check(state.start, state.next, state.ranges)
                except (CorruptFile, OSError, KqError) as exc:
                    yield self._unreadable_file(
                        topic,
                        number,
                        path,
                        exc,
                        f"state of share group '{share}'",
                        quarantine_share_state,
                        share,
                        directory,
                    )
                    continue
                if state is None:
                    continue
                yield from _share_state_in_range(topic, number, path, share, state, ranges.get(number))
                for p in _share_state_unsound(topic, number, path, share, state, dead_letter):
                    yield self._not_repaired(p)

    def _group_directory(
        self, topic: Topic, group: str, directory: str, what: str
    ) -> tuple[list[str] | None, list[Problem]]:
        """The names in a (share) group's directory for ``topic`` (None if there is none), and the
        problems of the directory (it cannot be listed) or of its members' files."""
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return None, []
        except OSError as exc:
            why = f"directory of {what} unreadable: {exc.strerror}"
            return None, [self._not_repaired(Problem(topic.name, None, directory, None, why))]
        return names, list(self._group_members(topic, group, directory))

    def _unreadable_file(self, topic: Topic, number: int, path: str, exc: Exception, what: str, quarantine, *where):
        """The problem of a group's or share group's file that could not be read; with --repair a
        corrupt one goes to quarantine (``quarantine(problem, *where)``)."""
        file, why = unreadable(exc, path)
        if file != path:  # (a file the state names: a share group's schedule)
            why = f"{os.path.basename(file)}: {why}"
        p = Problem(topic.name, number, path, None, f"{what} unreadable: {why}")
        if self.repair and isinstance(exc, CorruptFile):
            quarantine(p, *where)
        return self._not_repaired(p)

    def _not_repaired(self, p: Problem) -> Problem:
        return not_repaired(p, self.repair)


def _share_state_in_range(topic: Topic, number: int, path: str, share: str, state, ends):
    if topic.id is not None and state.topic_id not in (None, topic.id):
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' kept this state for an earlier topic named '{topic.name}' "
            "(deleted and re-created): it is ignored",
            WARNING,
        )
        return
    if number >= topic.partition_count:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' has a state for partition {number}, which does not exist",
            WARNING,
        )
        return
    if ends is None:
        return
    start, end = ends
    if state.next > end:
        end = topic.partition(number).end_offset()  # a producer may have appended since
    if state.next > end:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' has acquired up to offset {state.next}, past the end offset {end}",
            WARNING,
        )
    if state.start < start and state.lag(end) > 0:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"share group '{share}' has records below the start offset {start} that it never settled: "
            "retention or trim deleted them, and they will be skipped",
            WARNING,
        )


def _share_state_unsound(topic: Topic, number: int, path: str, share: str, state, dead_letter: str | None):
    """What a worker would not follow in a share state (every file is untrusted input): records
    dead-lettered to another topic than the group's dead-letter topic, a lease longer than any kq
    grants, a lease held by something that is not a worker."""
    from ..share.consumer import WORKER_ID
    from ..share.state import ACQUIRED, DEAD_LETTERING, MAX_LEASE_MS, boot_id, clock_ms

    if (topic.id is not None and state.topic_id not in (None, topic.id)) or number >= topic.partition_count:
        return  # a state nobody reads (_share_state_in_range warns of it)
    why_not = "a worker of the group sets it right when it next takes records of the partition"
    now = clock_ms()
    for r in state.ranges:
        where = f"share group '{share}' "
        if r.state == DEAD_LETTERING and dead_letter is not None and r.dlq is not None and r.dlq[0] != dead_letter:
            what = "the topic itself" if r.dlq[0] == topic.name else f"'{r.dlq[0]}'"
            yield Problem(
                topic.name,
                number,
                path,
                None,
                f"{where}dead-letters offsets {r.first}..{r.last} to {what}, not to its dead-letter topic "
                f"'{dead_letter}'",
                why_not=why_not,
            )
        if r.state != ACQUIRED or state.boot != boot_id() or r.until <= now:
            continue  # no lease holds (a lease of another boot is void)
        if r.until > now + MAX_LEASE_MS:
            yield Problem(
                topic.name,
                number,
                path,
                None,
                f"{where}holds offsets {r.first}..{r.last} under a lease that ends in {(r.until - now) / 3_600_000:.0f} h, "
                f"longer than any lease kq grants (24 h)",
                why_not=why_not,
            )
        if not r.detached and (r.owner is None or not WORKER_ID.fullmatch(r.owner)):
            yield Problem(
                topic.name,
                number,
                path,
                None,
                f"{where}holds offsets {r.first}..{r.last} under a lease of {shown(r.owner)}, which is not a worker",
                why_not=why_not,
            )


def _offset_in_range(topic: Topic, number: int, path: str, group: str, offset: int, ends):
    if ends is None:
        return
    start, end = ends
    if offset > end:
        end = topic.partition(number).end_offset()  # a producer may have appended since
    if offset < start:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"group '{group}' committed offset {offset}, below the start offset {start}: it will resume "
            f"at {start}, having missed {start - offset} record(s) retention or trim deleted",
            WARNING,
        )
    elif offset > end:
        yield Problem(
            topic.name,
            number,
            path,
            None,
            f"group '{group}' committed offset {offset}, past the end offset {end}",
            WARNING,
        )
