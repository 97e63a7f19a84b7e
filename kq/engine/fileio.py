"""The few system calls through which kq opens, reads and changes files.

Every file in a data directory is untrusted input: another process, a
crash or a person may have put anything there. Every file kq opens goes
through ``open_regular`` (never a FIFO, device, directory or symbolic
link, so no open or read can hang), and every small metadata file is read
through ``read_metadata`` (bounded in size and depth, a JSON object or a
``CorruptFile`` naming the file). Every log append goes through
``write_all`` so that a test can inject short writes or ENOSPC in one
place; small files are replaced atomically.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from contextlib import contextmanager
from typing import IO

import portalocker

from ..errors import CorruptFile, NotRegularFile

DIR_MODE = 0o700
FILE_MODE = 0o600
IOV_MAX = 1024  # the most buffers one writev takes on Linux
# kq's JSON files (kq.json, topic.json, start.offset, P.offset, members) are
# a few hundred bytes; anything this large was not written by kq.
MAX_METADATA_BYTES = 64 * 1024

_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISLNK, "symbolic link"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: \"directory\", \"named pipe (FIFO)\", ..."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = FILE_MODE) -> int:
    """Open ``path`` (with ``os.open`` flags) only if it is a regular file; return the fd.

    O_NONBLOCK makes the open itself return at once where a FIFO would block
    until a writer came, O_NOFOLLOW refuses a planted link, and fstat on the
    open file (not a stat before it, which a swap could outrun) decides.
    Regular files ignore O_NONBLOCK, but it is cleared anyway so the fd
    behaves as an ordinary one wherever it goes (portalocker, os.fdopen).
    Raises NotRegularFile naming the path; FileNotFoundError as os.open does.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, mode)
    except OSError as exc:
        # ELOOP: a link (O_NOFOLLOW); EISDIR: a directory opened to write;
        # ENXIO: a FIFO without a reader, or a socket, opened to write.
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            try:
                st = os.lstat(path)
            except OSError:
                raise exc from None
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFile(path, file_kind(st.st_mode)) from None
        if exc.filename is None:
            exc.filename = path
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, file_kind(st.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_file(path: str, flags: int = os.O_RDWR, mode: str = "r+"):
    """``open_regular`` as a Python file object (lock files, which portalocker takes)."""
    return os.fdopen(open_regular(path, flags), mode)


def read_small(path: str, limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of a small regular file; CorruptFile if it holds more than ``limit``.

    Raises FileNotFoundError if it is missing. Never reads (or allocates)
    more than ``limit`` + 1 bytes, whatever size the file claims.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CorruptFile(path, f"{size} bytes, more than the {limit} kq ever writes there")
        chunks, have = [], 0
        while have <= limit:
            chunk = os.read(fd, limit + 1 - have)
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
    finally:
        os.close(fd)
    if have > limit:  # it grew after the fstat
        raise CorruptFile(path, f"more than the {limit} bytes kq ever writes there")
    return b"".join(chunks)


def read_metadata(path: str) -> dict:
    """A small JSON file kq wrote, as a dict, or CorruptFile naming ``path``.

    Raises FileNotFoundError if it is missing. JSON nested deeply enough to
    exhaust the parser's recursion, a number too long to convert and any
    value that is not an object are all corruption, never a crash.
    """
    import json  # not at import time: kq starts once per message in shell loops

    raw = read_small(path)
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptFile(path, "JSON nested too deeply" if isinstance(exc, RecursionError) else "not JSON") from None
    if not isinstance(value, dict):
        raise CorruptFile(path, f"a JSON {type(value).__name__}, not an object")
    return value


def shown(value, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters: error messages quote hostile values."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def integer_field(meta: dict, key: str, path: str, low: int, high: int) -> int:
    """``meta[key]`` if it is a whole number in [low, high] (not a bool), else CorruptFile."""
    if key not in meta:
        raise CorruptFile(path, f"no {key!r}")
    value = meta[key]
    if type(value) is not int or not low <= value <= high:
        raise CorruptFile(path, f"{key} is {shown(value)}, not a whole number from {low} to {high}")
    return value


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


def name_the_file(exc: BaseException, path: str) -> None:
    """Let an OSError from a write or fsync (disk full, EIO) say which file it hit: os.write's does not."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = path


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


def atomic_write(path: str, data: bytes, sync: bool = True, release_old_later: bool = False) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    Write a temporary file beside it, fsync, rename over, fsync the directory.
    A stale temporary file from a crash is harmless: its name carries the pid.
    Errors name ``path`` (not the temporary file, which is gone).

    ``release_old_later``: for a file replaced many times a second (a
    transaction's record, ``txn.open``). On ext4 a rename over a file starts
    the new file's writeback, and dropping the replaced inode waits for its
    own writeback to end: replacing a file written a moment ago blocks for a
    disk write (1-4 ms on a busy disk) even without ``sync``. With this the
    replaced inode is kept open and let go of by a background thread, so the
    caller does not wait. What is on disk, and when, is the same.
    """
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError as exc:
        exc.filename, exc.filename2 = path, None
        raise
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        _unlink_quietly(tmp)
        name_the_file(exc, path)
        raise
    os.close(fd)
    old = _open_replaced(path) if release_old_later else None
    try:
        os.replace(tmp, path)
    except BaseException as exc:
        if old is not None:
            os.close(old)
        _unlink_quietly(tmp)
        if isinstance(exc, IsADirectoryError):
            raise NotRegularFile(path, "directory") from None
        if isinstance(exc, OSError):
            exc.filename, exc.filename2 = path, None
        raise
    if old is not None:
        _replaced_inodes.release(old)
    if sync:
        fsync_dir(directory or ".")


def _open_replaced(path: str) -> int | None:
    """A descriptor of the file about to be replaced (None if there is none, or it is not a plain file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


class _ReplacedInodes:
    """Closes the descriptors of replaced files on a daemon thread (their last close may wait for the disk).

    The thread is woken once a round, not once a file: it waits ``ROUND``
    after the first descriptor of a round and then closes all that came
    meanwhile. A wake-up per file (a transaction replaces four) cost the
    writer a thread switch each, which on a busy core took longer than the
    replacement itself.
    """

    MAX_WAITING = 256  # past this many unclosed, the caller closes the oldest itself: descriptors stay bounded
    ROUND = 0.02  # seconds

    def __init__(self) -> None:
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def release(self, fd: int) -> None:
        with self._lock:
            self._fds.append(fd)
            first = len(self._fds) == 1
            oldest = self._fds.pop(0) if len(self._fds) > self.MAX_WAITING else None
            if self._thread is None:
                self._thread = threading.Thread(target=self._close_all, name="kq-release-replaced", daemon=True)
                self._thread.start()
        if first:
            self._wake.set()
        if oldest is not None:
            _close_quietly(oldest)

    def _close_all(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.ROUND)
            with self._lock:
                self._wake.clear()
                fds, self._fds = self._fds, []
            for fd in fds:
                _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_replaced_inodes = _ReplacedInodes()


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
        self.file: IO[str] | None = None  # the open lock file (group claims write their owner into it)
        self.held = False
        self._depth = 0  # taken again by its holder: released when the outermost ``with`` ends

    def _open(self) -> bool:
        try:
            fd = open_regular(self.path, os.O_RDWR | (os.O_CREAT if self.create else 0))
            mode = "r+"
        except OSError as exc:
            if not self.read_only_ok or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:
                fd = open_regular(self.path)
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
            portalocker.lock(self.file, flags)  # type: ignore[arg-type]  # opened just above
        except portalocker.exceptions.LockException:
            return False
        self.held, self._depth = True, 1
        return True

    def write(self, text: str) -> None:
        """Replace the lock file's content (a claim names its owner), holding the lock."""
        if self.file is None:
            raise ValueError(f"{self.path} is not open")
        self.file.seek(0)
        self.file.truncate()
        self.file.write(text)
        self.file.flush()

    def fileno(self) -> int:
        if self.file is None:
            raise ValueError(f"{self.path} is not open")
        return self.file.fileno()

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

    def __enter__(self) -> FileLock:
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
