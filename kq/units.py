"""Human sizes (``64M``, ``1G``) and durations (``7d``, ``12h``)."""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``64M``, ``1G``, ``1GiB`` (binary units)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"bad size {text!r}: use a number of bytes with an optional K, M, G or T")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|)", re.IGNORECASE)
_DURATION_MS = {"ms": 1, "s": 1000, "": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration(text: str) -> int:
    """Milliseconds from ``500ms``, ``1.5s``, ``15m``, ``12h``, ``7d``, ``2w``, or a bare number of seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise UsageError(
            f"bad duration {text!r}: use a number of seconds, or one with ms, s, m, h, d or w (e.g. 1.5s, 7d)"
        )
    return int(float(m.group(1)) * _DURATION_MS[m.group(2).lower()])


def parse_limit(text: str, parse) -> int | None:
    """``none`` (no limit) or what ``parse`` makes of the text."""
    if text.strip().lower() in ("none", "unlimited", "forever"):
        return None
    try:
        return parse(text)
    except UsageError as exc:
        raise UsageError(f"{exc}, or none") from None
