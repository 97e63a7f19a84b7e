"""Offset specifications, as given to ``consume -o`` and ``offsets reset --to``.

beginning | earliest    the partition's start offset
end | latest            its end offset (when the command started)
N                       absolute offset N
-N                      N before the end
+N / -N (relative)      shift from a committed offset (reset only)
@T                      the first record with a timestamp >= T, where T is
                        epoch milliseconds, ISO-8601 / RFC 3339, or a
                        duration back from now such as -1h, -30m, -2d
A:B                     start at A, stop before B (consume only)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .errors import InvalidOffsetSpec

BEGINNING, END, ABSOLUTE, FROM_END, RELATIVE, TIMESTAMP = (
    "beginning",
    "end",
    "absolute",
    "from_end",
    "relative",
    "timestamp",
)
_DURATION = re.compile(r"-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


@dataclass(frozen=True)
class OffsetSpec:
    kind: str
    value: int = 0

    def resolve(self, partition, end: int | None = None, committed: int | None = None) -> int:
        """The offset this spec names in ``partition`` (``end``: a snapshot of its end)."""
        if self.kind == BEGINNING:
            return partition.start_offset()
        if self.kind == END:
            return partition.end_offset() if end is None else end
        if self.kind == ABSOLUTE:
            return self.value
        if self.kind == FROM_END:
            end = partition.end_offset() if end is None else end
            return max(partition.start_offset(), end - self.value)
        if self.kind == RELATIVE:
            base = partition.start_offset() if committed is None else committed
            return base + self.value
        return partition.offset_for_timestamp(self.value)


@dataclass(frozen=True)
class OffsetRange:
    start: OffsetSpec
    stop: OffsetSpec | None = None


def parse_timestamp(text: str, now_ms: int | None = None) -> int:
    """Epoch milliseconds from ms digits, ISO-8601 / RFC 3339, or a duration ago."""
    if re.fullmatch(r"\d+", text):
        return int(text)
    m = _DURATION.fullmatch(text)
    if m:
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return now - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    from datetime import datetime

    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        # A naive time is local time, as `date` prints it.
        return int(datetime.fromisoformat(iso).timestamp() * 1000)
    except ValueError:
        raise InvalidOffsetSpec(
            f"bad timestamp {text!r}: use epoch milliseconds, ISO-8601 "
            "(2024-05-01T12:00:00Z) or a duration ago such as -1h, -30m, -2d"
        ) from None


def parse_spec(text: str, relative: bool = False) -> OffsetSpec:
    t = text.strip()
    if t in ("beginning", "earliest"):
        return OffsetSpec(BEGINNING)
    if t in ("end", "latest"):
        return OffsetSpec(END)
    if t.startswith("@") and len(t) > 1:
        return OffsetSpec(TIMESTAMP, parse_timestamp(t[1:]))
    if re.fullmatch(r"\d+", t):
        return OffsetSpec(ABSOLUTE, int(t))
    if re.fullmatch(r"[-+]\d+", t):
        if relative:
            return OffsetSpec(RELATIVE, int(t))
        if t.startswith("-"):
            return OffsetSpec(FROM_END, int(t[1:]))
    raise InvalidOffsetSpec(
        f"bad offset {text!r}: use "
        # The forms each command's help lists.
        + ("earliest, latest, N, +N, -N or @T" if relative else "beginning, end, N, -N, @T or a range A:B")
    )


def parse_range(text: str) -> OffsetRange:
    """Parse ``SPEC`` or ``A:B``; an empty A means beginning, an empty B the end."""
    try:
        return OffsetRange(parse_spec(text))
    except InvalidOffsetSpec as first_error:
        backwards = None
        # ISO timestamps contain ':' too: try each ':' until both sides parse.
        for i, ch in enumerate(text):
            if ch != ":":
                continue
            left, right = text[:i], text[i + 1 :]
            try:
                start = parse_spec(left) if left else OffsetSpec(BEGINNING)
                stop = parse_spec(right) if right else OffsetSpec(END)
            except InvalidOffsetSpec:
                continue
            if _reversed(start, stop):
                backwards = InvalidOffsetSpec(f"bad range {text!r}: it ends before it starts")
                continue  # an ISO time's ':' may have split it wrongly: try the next
            return OffsetRange(start, stop)
        raise (backwards or first_error) from None


def _reversed(start: OffsetSpec, stop: OffsetSpec) -> bool:
    """Whether a range ends before it starts in every partition (5:2, -2:-4, end:beginning)."""
    if start.kind == stop.kind and start.kind in (ABSOLUTE, TIMESTAMP):
        return stop.value < start.value
    if start.kind == stop.kind == FROM_END:
        return stop.value > start.value
    return start.kind == END and stop.kind == BEGINNING
