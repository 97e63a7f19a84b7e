"""A share group's settings on a topic: the ``share.json`` file (docs/FORMAT.md, "Share groups")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..engine.fileio import shown
from ..engine.names import check_name
from ..errors import CorruptFile, UnsupportedFormat, UsageError
from .state import MAX_ATTEMPTS

SETTINGS_FILE = "share.json"
SETTINGS_FORMAT = 1
MAX_DURATION_MS = 2**53  # JSON numbers every reader parses exactly
DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    """The default dead-letter topic of ``topic``: ``TOPIC.dlq`` (a valid name as long as the topic's is short enough)."""
    return topic + DEAD_LETTER_SUFFIX


# --------------------------------------------------------------------------- settings


@dataclass
class ShareSettings:
    """How a share group treats a topic's records. Stored per group and topic in ``share.json``:
    every worker and every ``kq ack``/``kq nack`` settles records the same way."""

    dead_letter: str = ""  # the dead-letter topic ("" until set: TOPIC.dlq)
    max_attempts: int = 5  # deliveries of a record before it is dead-lettered
    backoff_ms: int = 1000  # the wait before the second attempt; doubles with each failure ...
    backoff_max_ms: int = 60_000  # ... up to this

    def backoff(self, attempt: int) -> int:
        """How long a record waits after its ``attempt``-th delivery failed."""
        return min(self.backoff_ms * 2 ** min(attempt - 1, 62), self.backoff_max_ms)

    def check(self) -> ShareSettings:
        check_name(self.dead_letter, "dead-letter topic")
        if type(self.max_attempts) is not int or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise UsageError(f"max attempts must be from 1 to {MAX_ATTEMPTS}, not {shown(self.max_attempts)}")
        for name in ("backoff_ms", "backoff_max_ms"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_DURATION_MS:
                raise UsageError(f"{name} must be a whole number of milliseconds, not {shown(value)}")
        return self


def parse_settings(raw: bytes, path: str) -> ShareSettings:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptFile(path, "not JSON") from None
    if not isinstance(body, dict):
        raise CorruptFile(path, f"a JSON {type(body).__name__}, not an object")
    version = body.get("format")
    if type(version) is not int or version < 1:
        raise CorruptFile(path, f"format is {shown(version)}, not a version number")
    if version > SETTINGS_FORMAT:
        raise UnsupportedFormat(f"{path} has format {version}, newer than this kq understands; upgrade kq")
    fields: dict[str, Any] = {k: body.get(k) for k in ("dead_letter", "max_attempts", "backoff_ms", "backoff_max_ms")}
    if not isinstance(fields["dead_letter"], str):
        raise CorruptFile(path, f"dead_letter is {shown(fields['dead_letter'])}, not a topic name")
    try:
        return ShareSettings(**fields).check()
    except UsageError as exc:
        raise CorruptFile(path, str(exc)) from None


def settings_bytes(settings: ShareSettings) -> bytes:
    body = {"format": SETTINGS_FORMAT, **settings.__dict__}
    return json.dumps(body, indent=2).encode() + b"\n"
