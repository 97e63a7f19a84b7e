"""Splitting a byte stream into delimited messages, promptly and in bounded memory.

``read_messages`` yields lists of complete messages as soon as they are
available: it reads what the pipe holds (never waiting to fill a buffer), so
a line arriving alone from ``tail -F`` is handed on at once, while a fast
producer still gets large batches.
"""

from __future__ import annotations

import os
import select
import time

from .batch import MAX_BATCH_BYTES
from .errors import MessageTooLarge

READ_SIZE = 1024 * 1024
BATCH_BYTES = 1024 * 1024
GATHER_SECONDS = 0.05


def _readable_now(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # not selectable (e.g. some special files): just read


def read_messages(fd: int, delimiter: bytes, batch_bytes: int = BATCH_BYTES):
    """Yield lists of messages split at ``delimiter``; the last needs no delimiter."""
    pending = b""
    eof = False
    while not eof:
        data = os.read(fd, READ_SIZE)
        if not data:
            break
        chunks = [data]
        size = len(data)
        deadline = time.monotonic() + GATHER_SECONDS
        # Gather what is already waiting, up to a batch, without blocking.
        while size < batch_bytes and _readable_now(fd) and time.monotonic() < deadline:
            data = os.read(fd, READ_SIZE)
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        buf = pending + b"".join(chunks) if pending else b"".join(chunks)
        messages = buf.split(delimiter)
        pending = messages.pop()
        if len(pending) > MAX_BATCH_BYTES:
            raise MessageTooLarge(
                f"a message is longer than {MAX_BATCH_BYTES} bytes without a delimiter"
            )
        if messages:
            yield messages
    if pending:
        yield [pending]
