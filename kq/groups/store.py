"""Consumer groups: committed offsets, and members sharing partitions.

The coordinator is the lock table. Files under ``DATA/groups/GROUP/TOPIC/``:

    P.offset             committed offset of partition P: {"format": 1, "offset": N, "committed_at": ms}
                         (and "topic_id", and "metadata": the commit's string, when not empty)
    P.lock               flock'ed by the member that owns partition P; holds its member id
    members/ID.member    one per live member, flock'ed by it for as long as it lives

The kernel drops a dead process's locks, so liveness and ownership need no
heartbeats: a member file that can be locked belongs to a dead member, and a
partition whose lock can be taken is free. Every member computes the same
assignment from the sorted list of live members (partition p goes to member
p mod M), releases what is no longer its own and claims what is.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from typing import NamedTuple

from ..engine.datadir import DataDir
from ..engine.fileio import (
    atomic_write,
    integer_field,
    is_locked,
    make_dirs,
    read_metadata,
    read_small,
    shown,
    try_lock,
)
from ..engine.location import MAX_PARTITIONS, group_names, is_name, named_directories
from ..engine.names import check_name
from ..engine.segment import MAX_OFFSET
from ..engine.stamps import reading_started, settled, stamp
from ..engine.topic import MAX_TOPIC_ID, Topic, check_inside
from ..errors import CorruptFile, GroupBusy, GroupNotFound, KqError, UsageError

OFFSET_SUFFIX = ".offset"
CLAIM_SUFFIX = ".lock"
MEMBER_SUFFIX = ".member"
MEMBERS_DIR = "members"
MAX_MEMBER_ID = 256  # bytes of a P.lock: a member id is 20 digits, a pid and 6 hex digits
OFFSETS_FORMAT = 1
# A commit's metadata string (Kafka's, kept for its clients), at most this many characters:
# Kafka's default offset.metadata.max.bytes. Escaped, it stays well inside a JSON file's 64 KiB.
MAX_COMMIT_METADATA = 4096
REBALANCE_SECONDS = 0.5
# While rounds come back to back, commit at most this often: each commit is
# two fsyncs, and a backlog read in 2 MiB rounds would otherwise spend more
# time committing than reading. An idle member commits at once.
COMMIT_SECONDS = 0.1
# A member that exits at the end of the log waits this long for partitions
# that another member still holds but is due to hand over.
CLAIM_PATIENCE_SECONDS = 2.0
# A member shows it is alive and reading at most this often (Member.touch).
PROGRESS_SECONDS = 1.0


class CommittedOffset(NamedTuple):
    """What an offsets file holds."""

    offset: int
    topic_id: str | None  # the topic it was committed for, if recorded
    metadata: str  # the commit's metadata string; "" if none (and in files written before it was kept)
    committed_at: int | None = None  # when it was committed (ms since the epoch), if the file says


class GroupTopic(NamedTuple):
    """What ``Groups.overview`` finds of a group on one topic."""

    topic: str
    offsets: dict[int, CommittedOffset]  # by partition, whatever topic id each recorded
    members: list[dict]  # live members, as ``Groups.members`` lists them


def check_commit_metadata(metadata: str) -> None:
    if len(metadata) > MAX_COMMIT_METADATA:
        raise UsageError(f"a commit's metadata is at most {MAX_COMMIT_METADATA} characters, not {len(metadata)}")


def partition_of(name: str, suffix: str) -> int | None:
    """The partition number a group file's name starts with ("3.offset"), or None.

    Only the canonical decimal kq writes counts: not "03" (another name for
    partition 3), not other scripts' digits, not past MAX_PARTITIONS.
    """
    stem = name[: -len(suffix)]
    if not (name.endswith(suffix) and stem.isascii() and stem.isdigit() and len(stem) <= len(str(MAX_PARTITIONS))):
        return None
    number = int(stem)
    return number if str(number) == stem and number < MAX_PARTITIONS else None


class Groups:
    """The consumer groups of a data directory."""

    def __init__(self, data: DataDir):
        self.data = data
        self.path = data.groups_path

    def _dir(self, group: str, topic: str | None = None) -> str:
        check_name(group, "group")
        if topic is None:
            return check_inside(os.path.join(self.path, group), self.data.path)
        return check_inside(os.path.join(self.path, group, check_name(topic)), self.data.path)

    # ------------------------------------------------------------------ names

    def names(self) -> list[str]:
        return group_names(self.data.path) if self.data.exists() else []

    def topics(self, group: str) -> list[str]:
        return named_directories(self._dir(group), "topic")

    def exists(self, group: str) -> bool:
        return self.data.exists() and os.path.isdir(self._dir(group))

    def groups_of_topic(self, topic: str) -> list[str]:
        return [g for g in self.names() if os.path.isdir(os.path.join(self.path, g, topic))]

    # ------------------------------------------------------------------ offsets

    def committed(self, group: str, topic: str | Topic) -> dict[int, int]:
        """Committed offsets of a group on a topic, by partition (absent: none yet).

        Given a Topic, offsets committed for another topic of the same name
        (one since deleted and re-created) are left out: they are not this
        topic's offsets.
        """
        return {p: found.offset for p, found in self.committed_offsets(group, topic).items()}

    def committed_offsets(self, group: str, topic: str | Topic) -> dict[int, CommittedOffset]:
        """``committed``, with each commit's metadata (and the topic id it recorded)."""
        name, topic_id = _name_and_id(topic)
        out: dict[int, CommittedOffset] = {}
        for number, path in self._partition_files(group, name, OFFSET_SUFFIX):
            found = self.read_offset_file(path)
            if found is not None and (topic_id is None or found.topic_id in (None, topic_id)):
                out[number] = found
        return out

    def _partition_files(self, group: str, topic: str, suffix: str) -> list[tuple[int, str]]:
        """(partition, path) of the group's files for ``topic`` named "P<suffix>" (offsets, claims)."""
        directory = self._dir(group, topic)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [
            (number, os.path.join(directory, name))
            for name in names
            if (number := partition_of(name, suffix)) is not None
        ]

    @staticmethod
    def read_offset_file(path: str) -> CommittedOffset | None:
        """What an offsets file holds; None if it is missing."""
        try:
            body = read_metadata(path)
        except FileNotFoundError:
            return None
        offset, topic_id = integer_field(body, "offset", path, 0, MAX_OFFSET), body.get("topic_id")
        if topic_id is not None and not (isinstance(topic_id, str) and len(topic_id) <= MAX_TOPIC_ID):
            raise CorruptFile(path, f"topic_id is {shown(topic_id)}, not a topic id")
        metadata = body.get("metadata", "")
        if not (isinstance(metadata, str) and len(metadata) <= MAX_COMMIT_METADATA):
            raise CorruptFile(path, f"metadata is {shown(metadata)}, not a string of at most {MAX_COMMIT_METADATA}")
        committed_at = body.get("committed_at")
        if type(committed_at) is not int or committed_at < 0:
            committed_at = None  # only shown, never acted on: a file without it is still a commit
        return CommittedOffset(offset, topic_id, metadata, committed_at)

    @classmethod
    def _read_offset(cls, path: str) -> int | None:
        found = cls.read_offset_file(path)
        return None if found is None else found[0]

    def commit(
        self, group: str, topic: str | Topic, partition: int, offset: int, metadata: str = "", sync: bool = True
    ) -> None:
        """Store a committed offset atomically (temp file, fsync, rename, fsync dir).

        Given a Topic, the offset records the topic's id (see ``committed``).
        ``metadata`` is the commit's string, as a Kafka client gives it (kept when not empty).
        ``sync=False`` (a transaction's commit on a topic that does not sync) leaves out the fsyncs.
        """
        if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:  # kq never writes what it would refuse to read
            raise KqError(f"a committed offset is a whole number from 0 to {MAX_OFFSET}, not {shown(offset)}")
        check_commit_metadata(metadata)
        name, topic_id = _name_and_id(topic)
        directory = self._dir(group, name)
        make_dirs(directory)
        body: dict[str, int | str] = {
            "format": OFFSETS_FORMAT,
            "offset": offset,
            "committed_at": time.time_ns() // 1_000_000,
        }
        if topic_id is not None:
            body["topic_id"] = topic_id
        if metadata:
            body["metadata"] = metadata
        atomic_write(
            os.path.join(directory, f"{partition}{OFFSET_SUFFIX}"), json.dumps(body).encode() + b"\n", sync=sync
        )

    def transaction_committer(self, sync: bool = True):
        """The ``commit_offset`` function a transaction store (kq.engine.transactions) applies group offsets with."""

        def commit_offset(group: str, topic: str, partition: int, offset: int, metadata: str) -> None:
            from ..errors import TopicNotFound

            try:
                target: str | Topic = self.data.topic(topic)
            except TopicNotFound:
                target = topic
            self.commit(group, target, partition, offset, metadata, sync=sync)

        return commit_offset

    # ------------------------------------------------------------------ members

    def members(self, group: str, topic: str) -> list[dict]:
        """Live members consuming ``topic`` in ``group`` (dead ones are cleaned up)."""
        return self._live_members(os.path.join(self._dir(group, topic), MEMBERS_DIR))

    def _live_members(self, directory: str) -> list[dict]:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        live = []
        for name in names:
            if not name.endswith(MEMBER_SUFFIX):
                continue
            path = os.path.join(directory, name)
            lock = try_lock(path)
            if lock is not None:  # its owner is gone: tidy up under the lock
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                lock.close()
                continue
            try:
                info = _read_member(path, name[: -len(MEMBER_SUFFIX)])
                # The member file's time is the member's last sign of progress (Member.touch).
                info["progress_at"] = os.lstat(path).st_mtime_ns // 1_000_000
            except FileNotFoundError:  # it left meanwhile
                continue
            live.append(info)
        return live

    def overview(self, group: str, remembered: dict | None = None) -> list[GroupTopic]:
        """Every topic of ``group``: its committed offsets and live members, in one pass (kq metrics, kq top).

        The same files as ``committed_offsets`` and ``members`` read, for a whole
        group at a time: its directory is checked to lie inside the data
        directory once, and a topic directory again only if it is a link.
        Offsets are not matched against the topic's id here (the caller knows it).

        ``remembered``: a dict the caller keeps between calls (``kq top`` and
        ``kq metrics --listen`` look again and again). A topic directory whose
        stamp (kq.engine.stamps) is the one of the last call has had no offset
        committed since (a commit renames a file into it), so its offsets are
        not read again; members are always looked at (one that dies changes
        no stamp).
        """
        root = self._dir(group)
        try:
            with os.scandir(root) as listing:
                entries = sorted((e for e in listing if is_name(e.name, "topic")), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            if remembered is not None:
                remembered.pop(group, None)  # a deleted group's are forgotten
            return []
        known = None if remembered is None else remembered.setdefault(group, {})
        out = []
        for entry in entries:
            topic, directory = entry.name, entry.path
            if entry.is_symlink():  # a link must lead inside the data directory (one under it never does)
                check_inside(directory, self.data.path)
            seen = None if known is None else known.get(topic)
            now = None if known is None else stamp(directory)
            if seen is not None and now is not None and seen[0] == now:
                offsets, has_members = seen[1], seen[2]
            else:
                read_at = reading_started()
                try:
                    names = os.listdir(directory)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                offsets = {}
                for name in names:
                    number = partition_of(name, OFFSET_SUFFIX)
                    if number is not None:
                        found = self.read_offset_file(os.path.join(directory, name))
                        if found is not None:
                            offsets[number] = found
                has_members = MEMBERS_DIR in names
                if known is not None:
                    if now is not None and settled([now], read_at):
                        known[topic] = (now, offsets, has_members)
                    else:
                        known.pop(topic, None)
            members = self._live_members(os.path.join(directory, MEMBERS_DIR)) if has_members else []
            out.append(GroupTopic(topic, offsets, members))
        if known is not None:
            for gone in set(known) - {e.name for e in entries}:
                del known[gone]
        return out

    def owners(self, group: str, topic: str) -> dict[int, str]:
        """Partition -> member id, for partitions a live member holds."""
        out: dict[int, str] = {}
        for number, path in self._partition_files(group, topic, CLAIM_SUFFIX):
            if is_locked(path):
                try:
                    out[number] = read_small(path, MAX_MEMBER_ID).decode("ascii", "replace").strip()
                except FileNotFoundError:
                    pass
        return out

    def live_member_count(self, group: str) -> int:
        return sum(len(self.members(group, t)) for t in self.topics(group))

    def delete(self, group: str) -> None:
        if not self.exists(group):
            raise GroupNotFound(group)
        live = self.live_member_count(group)
        if live:
            raise KqError(f"group '{group}' has {live} live member(s); stop them first")
        doomed = os.path.join(self.data.tmp_path, f"delete-group-{uuid.uuid4().hex}")
        make_dirs(self.data.tmp_path)
        os.rename(self._dir(group), doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def check_no_live_members(self, group: str, topic: str) -> None:
        """Raise GroupBusy if a live member of ``group`` consumes ``topic`` (offsets must not move under it)."""
        live = self.members(group, topic)
        if live:
            raise GroupBusy(group, topic, len(live))


def _name_and_id(topic: str | Topic) -> tuple[str, str | None]:
    return (topic, None) if isinstance(topic, str) else (topic.name, topic.id)


def _read_member(path: str, member_id: str) -> dict:
    """A live member's file: the fields ``group describe`` shows, each of its type."""
    info = read_metadata(path)
    for key, kind in (("member", str), ("host", str), ("topic", str), ("pid", int), ("joined_at", int)):
        if type(info.get(key)) is not kind:
            raise CorruptFile(path, f"{key} is {shown(info.get(key))}, not a {kind.__name__}")
    if info["member"] != member_id:
        # Assignment ranks members by id: one file claiming another's id would
        # give two members the same partitions.
        raise CorruptFile(path, f"member {shown(info['member'])} in the file of member {member_id}")
    return info
