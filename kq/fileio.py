"""The few system calls through which kq changes files.

Every log append goes through ``write_all`` so that a test can inject short
writes or ENOSPC in one place; small files are replaced atomically.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager

import portalocker

DIR_MODE = 0o700
FILE_MODE = 0o600
IOV_MAX = 1024  # the most buffers one writev takes on Linux


def write_all(fd: int, *chunks) -> None:
    """Write every byte of ``chunks`` in order, looping on short writes (never retrying errors).

    Several chunks go out in one ``writev``, so a caller need not join them.
    """
    views = [memoryview(c) for c in chunks if len(c)]
    while views:
        written = os.writev(fd, views[:IOV_MAX]) if len(views) > 1 else os.write(fd, views[0])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str) -> bool:
    """Create ``path`` and missing parents with mode 0700 (less a stricter umask).

    ``os.makedirs(mode=...)`` does not apply the mode to intermediate
    directories, so each level is created on its own. Returns True if the
    leaf was created here.
    """
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    if parent != path and not os.path.isdir(parent):
        make_dirs(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return False
    return True


def atomic_write(path: str, data: bytes, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    Write a temporary file beside it, fsync, rename over, fsync the directory.
    A stale temporary file from a crash is harmless: its name carries the pid.
    """
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if sync:
        fsync_dir(directory or ".")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class FileLock:
    """An exclusive flock on one lock file: the one way kq locks anything.

    The file is opened once and the lock taken and dropped as often as needed
    (a producer locks its partition for every batch). The kernel drops the
    lock when the holder dies, so a crash never leaves it held. With
    ``read_only_ok`` a lock file that cannot be opened for writing (a
    read-only mount, another user's directory) is locked through a read-only
    descriptor, and one that does not exist and cannot be created is not
    locked at all: whoever could write there has not.
    """

    def __init__(self, path: str, read_only_ok: bool = False, create: bool = True):
        self.path = path
        self.read_only_ok = read_only_ok
        self.create = create  # without it, a missing lock file raises FileNotFoundError
        self.file = None  # the open lock file (group claims write their owner into it)
        self.held = False
        self._depth = 0  # taken again by its holder: released when the outermost ``with`` ends

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if self.create else 0) | os.O_NOFOLLOW, FILE_MODE)
            mode = "r+"
        except OSError as exc:
            if not self.read_only_ok or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return False
            mode = "r"
        self.file = os.fdopen(fd, mode)
        return True

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, return False at once if another holds it."""
        if self.held:
            self._depth += 1
            return True
        if self.file is None and not self._open():
            self.held, self._depth = True, 1  # nothing to lock: see the class docstring
            return True
        flags = portalocker.LockFlags.EXCLUSIVE
        if not blocking:
            flags |= portalocker.LockFlags.NON_BLOCKING
        try:
            portalocker.lock(self.file, flags)
        except portalocker.exceptions.LockException:
            return False
        self.held, self._depth = True, 1
        return True

    def release(self) -> None:
        if not self.held:
            return
        self._depth -= 1
        if self._depth:
            return
        if self.file is not None:
            portalocker.unlock(self.file)
        self.held = False

    def close(self) -> None:
        """Close the file, which drops the lock if it is held."""
        self.held, self._depth = False, 0
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_lock(path: str, create: bool = False) -> FileLock | None:
    """Take the lock on ``path`` without waiting: the held FileLock, or None if another
    process holds it (or, without ``create``, the file does not exist). Close it to let go."""
    lock = FileLock(path, create=create)
    try:
        if lock.acquire(blocking=False):
            return lock
    except FileNotFoundError:
        return None
    lock.close()
    return None


def is_locked(path: str) -> bool:
    """Whether another process holds the lock on ``path`` (a probe: takes and drops it if free)."""
    lock = try_lock(path)
    if lock is None:
        return os.path.exists(path)
    lock.close()
    return False


@contextmanager
def locked(path: str, blocking: bool = True, read_only_ok: bool = False):
    """Hold the lock on ``path`` for a ``with`` block; yields False if it is taken and not ``blocking``.

    Writers that already hold a lock must flush what they wrote before the
    block ends: the lock goes before the file is closed.
    """
    lock = FileLock(path, read_only_ok)
    try:
        yield lock.acquire(blocking)
    finally:
        lock.close()
