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
from itertools import repeat

from .batch import MAX_BATCH_BYTES
from .errors import MessageTooLarge

READ_SIZE = 1024 * 1024
BATCH_BYTES = 1024 * 1024
GATHER_SECONDS = 0.05


def input_waiting(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # not selectable (e.g. some special files): just read


def read_messages(fd: int, delimiter: bytes, batch_bytes: int = BATCH_BYTES):
    """Yield (messages, size) split at ``delimiter``; the last message needs no delimiter.

    ``size`` bounds the messages' total length (it counts the delimiters too),
    so that a producer need not measure every message to cut batches.
    """
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
        while size < batch_bytes and input_waiting(fd) and time.monotonic() < deadline:
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
            yield messages, len(buf) - len(pending)
    if pending:
        yield [pending], len(pending)


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
