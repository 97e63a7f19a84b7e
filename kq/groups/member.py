"""A process's membership of a group on one topic: its member file, and the partitions it claims.

Liveness is the kernel's: a member file is flock'ed for as long as its member lives, a partition's
``P.lock`` by the member that owns it (see kq.groups.store).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from ..engine.fileio import (
    FileLock,
    make_dirs,
    try_lock,
)
from ..errors import KqError
from .store import CLAIM_SUFFIX, MEMBER_SUFFIX, MEMBERS_DIR, PROGRESS_SECONDS, Groups


class Member:
    """This process's membership of a group on one topic."""

    def __init__(self, groups: Groups, group: str, topic: str):
        self.groups = groups
        self.group = group
        self.topic = topic
        self.dir = groups._dir(group, topic)
        # Ids sort by joining time, so the longest-lived member keeps rank 0.
        self.id = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._member_file: FileLock | None = None
        self._touched = 0.0
        self._claims: dict[int, FileLock] = {}

    def join(self) -> None:
        members = os.path.join(self.dir, MEMBERS_DIR)
        self.groups.data.ensure()
        make_dirs(members)
        # Lock the file before it gets its final name, so that no prober can
        # ever see it unlocked and take it for a dead member's.
        tmp = os.path.join(members, f".{self.id}.joining")
        lock = try_lock(tmp, create=True)
        if lock is None:  # a name of this process's own: nobody else takes it
            raise KqError(f"cannot join group '{self.group}': {tmp} is locked")
        info = {
            "member": self.id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "topic": self.topic,
            "joined_at": time.time_ns() // 1_000_000,
        }
        lock.write(json.dumps(info))
        os.rename(tmp, os.path.join(members, self.id + MEMBER_SUFFIX))
        self._member_file = lock
        self._touched = time.monotonic()

    def touch(self) -> None:
        """Show that this member is making progress (its member file's time), at most once a second.

        A member that stops calling this (stopped with SIGSTOP, stuck in an
        --exec command) still holds its partitions; `kq group describe`
        shows how long it has been idle so that a user can find and kill it.
        """
        now = time.monotonic()
        if self._member_file is not None and now - self._touched >= PROGRESS_SECONDS:
            self._touched = now
            try:
                os.utime(self._member_file.fileno())
            except OSError:
                pass  # a missing member file is tidied up by the next prober; nothing to show

    def live_ids(self) -> list[str]:
        return sorted(m["member"] for m in self.groups.members(self.group, self.topic))

    def assignment(self, partition_count: int) -> set[int]:
        ids = self.live_ids()
        if self.id not in ids:
            ids = sorted(ids + [self.id])
        rank, size = ids.index(self.id), len(ids)
        return {p for p in range(partition_count) if p % size == rank}

    def claim(self, partition: int) -> bool:
        lock = try_lock(os.path.join(self.dir, f"{partition}{CLAIM_SUFFIX}"), create=True)
        if lock is None:
            return False
        lock.write(self.id)
        self._claims[partition] = lock
        return True

    def release(self, partition: int) -> None:
        lock = self._claims.pop(partition, None)
        if lock is not None:
            lock.close()

    @property
    def owned(self) -> set[int]:
        return set(self._claims)

    def leave(self) -> None:
        for p in list(self._claims):
            self.release(p)
        if self._member_file is not None:
            try:
                os.unlink(os.path.join(self.dir, MEMBERS_DIR, self.id + MEMBER_SUFFIX))
            except FileNotFoundError:
                pass
            self._member_file.close()
            self._member_file = None
