"""Whether a file or directory changed since it was last read, told by one ``stat``.

kq top reads a whole data directory every second; most of it has not changed
since the second before. A file kq replaces (written whole and renamed into
place) gets a new inode; an appended one a new size; a directory a new
modification time whenever an entry is created, renamed or removed in it.
So (device, inode, size, modification time) taken before a read, and equal
the next time, says the read would find the same.

Except within a tick of the file system's clock (coarse on many: a few ms),
where a second change may leave the time as it was. As git does with its
index, a read made within RACY_NS of what it read's modification time is not
trusted: it is read again next time.
"""

from __future__ import annotations

import os
import time

RACY_NS = 100_000_000

Stamp = tuple[int, int, int, int]


def stamp(path: str) -> Stamp | None:
    """Device, inode, size and modification time (ns) of ``path`` (followed if a link); None if missing."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def stamp_in(directory_fd: int, name: str) -> Stamp | None:
    """``stamp`` of ``name`` in the open directory ``directory_fd`` (no path walked from the root)."""
    try:
        st = os.stat(name, dir_fd=directory_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def reading_started() -> int:
    """The time to pass to ``settled`` for a read about to start (stamps taken before it)."""
    return time.time_ns()


def settled(stamps: list[Stamp | None], read_at: int) -> bool:
    """Whether what was read at ``read_at`` can stand for as long as these stamps stay the same."""
    return all(s is None or s[3] < read_at - RACY_NS for s in stamps)
