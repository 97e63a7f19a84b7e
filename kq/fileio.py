"""The few system calls through which kq changes files.

Every log append goes through ``write_all`` so that a test can inject short
writes or ENOSPC in one place; small files are replaced atomically.
"""

from __future__ import annotations

import os

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
