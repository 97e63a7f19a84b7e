"""Splitting a byte stream into delimited messages, promptly and in bounded memory.

``read_messages`` yields lists of complete messages as soon as they are
available: it reads what the pipe holds (never waiting to fill a buffer), so
a line arriving alone from ``tail -F`` is handed on at once, while a fast
producer still gets large batches.
"""

from __future__ import annotations

import os
import re
import select
import time
from itertools import repeat

from ..errors import KqError, MessageTooLarge
from .batch import MAX_BATCH_BYTES

READ_SIZE = 1024 * 1024
BATCH_BYTES = 1024 * 1024
GATHER_SECONDS = 0.05


def input_waiting(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # not selectable (e.g. some special files): just read


def read_messages(fd: int, delimiter: bytes, batch_bytes: int = BATCH_BYTES, name: str = "the input"):
    """Yield (messages, size) split at ``delimiter``; the last message needs no delimiter.

    ``size`` bounds the messages' total length (it counts the delimiters too),
    so that a producer need not measure every message to cut batches.
    ``name`` names the input in a read error.
    """
    # A message longer than a read is kept in pieces and joined once, when its
    # delimiter arrives: joining (and searching) it again at every read made
    # a long line from a pipe cost time quadratic in its length.
    pending: list[bytes] = []
    pending_size = 0
    overlap = len(delimiter) - 1  # a delimiter may straddle two reads
    tail = b""  # the last ``overlap`` bytes of the pending pieces
    eof = False
    _widen_pipe(fd)
    while not eof:
        data = _read(fd, name)
        if not data:
            break
        chunks = [data]
        size = len(data)
        deadline = time.monotonic() + GATHER_SECONDS
        # Gather what is already waiting, up to a batch, without blocking.
        while size < batch_bytes and input_waiting(fd) and time.monotonic() < deadline:
            data = _read(fd, name)
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        if not overlap:  # a one-byte delimiter: no need to join the reads to look for it
            if pending and not any(delimiter in chunk for chunk in chunks):
                pending += chunks
                pending_size += size
                _check_length(pending_size)
                continue
            new = b"".join(chunks) if len(chunks) > 1 else chunks[0]
            messages = new.split(delimiter)
            if pending:  # the message begun in earlier reads: joined alone, not copied with the whole read
                messages[0] = b"".join([*pending, messages[0]])
        else:
            new = b"".join(chunks) if len(chunks) > 1 else chunks[0]
            if pending and delimiter not in new and delimiter not in tail + new[:overlap]:
                pending.append(new)
                pending_size += size
                _check_length(pending_size)
                tail = (tail + new[-overlap:])[-overlap:]
                continue
            messages = (b"".join([*pending, new]) if pending else new).split(delimiter)
        total = pending_size + size
        last = messages.pop()
        pending, pending_size = ([last], len(last)) if last else ([], 0)
        _check_length(pending_size)
        tail = last[-overlap:] if overlap else b""
        if messages:
            yield messages, total - pending_size
    if pending:
        yield [b"".join(pending)], pending_size


def _widen_pipe(fd: int) -> None:
    """Let a pipe hold a whole read (Linux: 64 KiB by default, so a fast writer such as
    ``cat`` waited on each 64 KiB and every batch was that small); left as it is where not allowed."""
    import stat

    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)
    except (OSError, ImportError, AttributeError):  # over the user's pipe limit, not Linux
        pass


def _read(fd: int, name: str) -> bytes:
    try:
        return os.read(fd, READ_SIZE)
    except OSError as exc:
        raise KqError(f"cannot read {name}: {exc.strerror}") from None


def _check_length(pending_size: int) -> None:
    if pending_size > MAX_BATCH_BYTES:
        raise MessageTooLarge(f"a message is longer than {MAX_BATCH_BYTES} bytes without a delimiter")


def split_keys(messages: list[bytes], delimiter: bytes) -> tuple[list, list[bytes]]:
    """Keys and values of messages split at the first ``delimiter`` (no delimiter: no key)."""
    if not messages:
        return [], []
    # map and zip keep the per-message work in C: a Python loop over a
    # million messages costs more than the rest of a keyed produce.
    keys, seps, values = (list(column) for column in zip(*map(bytes.partition, messages, repeat(delimiter))))
    if b"" in seps:
        for i, sep in enumerate(seps):
            if not sep:
                keys[i], values[i] = None, messages[i]
    return keys, values


_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "0": b"\0", "\\": b"\\"}
_ESCAPE = re.compile(r"(\\x[0-9a-fA-F]{2}|\\[ntr0\\])")


def arg_bytes(text: str) -> bytes:
    """The bytes the shell passed for an argument, valid UTF-8 or not.

    Python decodes arguments with surrogateescape; encoding them back the
    same way gives a shell user's bytes (`-k "$(printf '\\xff')"`) unchanged.
    """
    return text.encode("utf-8", "surrogateescape")


def unescape(text: str) -> bytes:
    r"""Bytes of a delimiter or format given on the command line: \n \t \r \0 \\ \xHH."""
    out = bytearray()
    for i, piece in enumerate(_ESCAPE.split(text)):
        if i % 2 == 0:
            out += arg_bytes(piece)
        elif piece[1] == "x":
            out.append(int(piece[2:], 16))
        else:
            out += _ESCAPES[piece[1]]
    return bytes(out)
