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
