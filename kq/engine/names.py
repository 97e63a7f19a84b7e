"""Validation of names before they become paths."""

from __future__ import annotations

import re

from ..errors import InvalidName

# Kafka's rule for topic names; kq uses it for group names too.
_LEGAL = re.compile(r"[A-Za-z0-9._-]{1,249}")


def check_name(name: str, kind: str = "topic") -> str:
    if not isinstance(name, str) or not _LEGAL.fullmatch(name) or name in (".", ".."):
        raise InvalidName(
            f"invalid {kind} name {name!r}: use 1-249 characters of letters, digits, '.', '_' and '-' (not '.' or '..')"
        )
    return name
