"""The share groups of a data directory (``DATA/shares/``): listing, settings, partition states, replication."""

from __future__ import annotations

import os

from ..engine.datadir import DataDir
from ..engine.fileio import FileLock, atomic_write, make_dirs, read_small
from ..engine.location import SHARES_DIR, share_names
from ..engine.topic import Topic
from ..errors import CorruptFile, ShareNotFound, UsageError
from ..groups.store import Groups, partition_of
from .schedule import Schedule
from .settings import SETTINGS_FILE, ShareSettings, dead_letter_topic, parse_settings, settings_bytes
from .state import LOCK_SUFFIX, MAX_STATE_BYTES, STATE_SUFFIX, PartitionState, parse_state

# A reader without the lock retries when a worker replaced the schedule file between its two reads.
SCHEDULE_READS = 5


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

    def read_schedule(
        self, share: str, topic: str | Topic, partition: int, state: PartitionState
    ) -> tuple[PartitionState, Schedule]:
        """The schedule ``state`` names, read without the lock, and the state it goes with (read
        again if a worker replaced the schedule file meanwhile)."""
        name = topic if isinstance(topic, str) else topic.name
        schedule = Schedule(self._dir(share, name), partition)
        for attempt in range(SCHEDULE_READS):
            try:
                schedule.sync(state.schedule)
                return state, schedule
            except CorruptFile:
                newer = self.read_state(share, topic, partition)
                if attempt == SCHEDULE_READS - 1 or newer is None or newer.schedule == state.schedule:
                    raise
                state = newer
        raise AssertionError("unreachable")

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


def read_state_file(path: str, partition: int) -> tuple[PartitionState, Schedule]:
    """A partition's state file and the schedule it names, each checked, and the schedule's runs
    against the state's ranges (``kq verify``); CorruptFile naming the file at fault."""
    state = parse_state(read_small(path, MAX_STATE_BYTES), path)
    schedule = Schedule(os.path.dirname(path), partition)
    schedule.sync(state.schedule)
    schedule.check(state.start, state.next, state.ranges)
    return state, schedule


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
            end = rep.partition(number).end_offset()
            state, schedule = theirs.read_schedule(share, src, number, state)
            schedule.trim_from(end)
            state.cut_back(end)
            with FileLock(os.path.join(directory, f"{number}{LOCK_SUFFIX}")):
                have = ours.read_state(share, rep.name, number)
                theirs_now = (state.essence(), list(schedule))
                if (
                    have is not None
                    and (have.essence(), list(ours.read_schedule(share, rep, number, have)[1])) == theirs_now
                ):
                    continue
                copy = schedule.copy_to(directory)
                copy.commit(state)
                state.advance()
                atomic_write(os.path.join(directory, f"{number}{STATE_SUFFIX}"), state.to_bytes())
                if have is not None and have.schedule is not None:
                    copy.drop(have.schedule["generation"])
                copy.collect()
