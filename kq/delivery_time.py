"""Delayed records: the header that carries a record's delivery time, and the times ``--delay`` and ``--at`` take.

A record whose ``kq.deliver-at`` header holds a time (epoch milliseconds, as
decimal text) is handed out by a share group only from that time on. The
time travels with the record, as any header does: ``kq replicate``, the
bridge, ``consume --json | produce --json`` and Kafka clients keep it.
Consumer groups (``-g``) and plain readers keep the log's order and ignore
it. A value that is not such a number is no delivery time (the record is
not delayed): a header from another program never holds a record back.
"""

from __future__ import annotations

import time

from .errors import InvalidOffsetSpec, UsageError

DELIVER_AT = "kq.deliver-at"
DELIVER_AT_BYTES = DELIVER_AT.encode()
# Epoch ms of 9999-12-31T23:59:59.999Z: later times are no calendar's.
MAX_DELIVER_AT = 253_402_300_799_999


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def deliver_at_time(text: str) -> int:
    """A delivery time written as the offset forms write times (``@T``): epoch milliseconds,
    ISO-8601 / RFC 3339 (``2026-12-07T09:00:00Z``), or a duration ago; UsageError otherwise."""
    from .offsetspec import parse_timestamp

    try:
        at = parse_timestamp(text.strip())
    except InvalidOffsetSpec:
        raise UsageError(
            f"bad time {text!r}: use epoch milliseconds or ISO-8601 such as 2026-12-07T09:00:00Z"
        ) from None
    except (OverflowError, OSError):
        at = -1
    if not 0 <= at <= MAX_DELIVER_AT:
        raise UsageError(f"bad time {text!r}: it lies outside the years 1970 to 9999")
    return at


def deliver_at_header(at: int) -> tuple[str, bytes]:
    """The header that delays a record until ``at`` (epoch ms)."""
    return (DELIVER_AT, str(at).encode())


def deliver_at(headers) -> int | None:
    """A record's delivery time from its headers ((name, value) pairs; the last such header
    counts), or None if it has none that holds a time."""
    if not headers:
        return None
    found = None
    for name, value in headers:
        if name == DELIVER_AT:
            found = value
    if found is None or not (0 < len(found) <= 15) or not found.isdigit():
        return None
    return int(found)
