"""What ``kq verify`` reports: one Problem per finding, its severity, and what repair did about it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from ..engine.fileio import file_kind
from ..errors import CorruptFile

ERROR = "error"  # the partition cannot be read as written: exit 1 until repaired
WARNING = "warning"  # surprising but readable (a group behind the start offset, a crash's torn tail)
INFO = "info"  # files worth knowing about (leftovers, quarantined bytes)


@dataclass
class Problem:
    topic: str
    partition: int | None  # None: a topic-wide file (topic.json)
    file: str
    position: int | None  # a byte position in ``file``, where that means something
    problem: str
    severity: str = ERROR
    action: str | None = None  # with repair: what was done, or why nothing was
    repaired: bool = False
    why_not: str | None = field(default=None, repr=False)  # why repair cannot fix it, if it cannot

    def line(self) -> str:
        where = "" if self.position is None else f" position {self.position}:"
        text = f"{self.file}:{where} {self.severity}: {self.problem}"
        return text if self.action is None else f"{text} -> {self.action}"

    def as_dict(self, with_action: bool = False) -> dict:
        out = {
            "topic": self.topic,
            "partition": self.partition,
            "file": self.file,
            "position": self.position,
            "problem": self.problem,
            "severity": self.severity,
        }
        if with_action:
            out["action"] = self.action
            out["repaired"] = self.repaired
        return out


FOREIGN = "kq did not write it and does not remove what it did not write; move it away"


def unreadable(exc: BaseException, path: str) -> tuple[str, str]:
    """(file, why) for an error that kept verify from reading something: the file it names, else ``path``."""
    if isinstance(exc, CorruptFile):
        return exc.path, exc.reason
    if isinstance(exc, OSError):
        return exc.filename or path, exc.strerror or str(exc)
    return path, str(exc)


def not_regular(path: str) -> str | None:
    """What ``path`` is if it is there and not a regular file (a FIFO, ...), else None."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def not_repaired(p: Problem, repair: bool) -> Problem:
    """With ``repair``, say that ``p`` is left as it is, and why."""
    if repair and p.action is None:
        p.action = f"not repaired: {p.why_not}" if p.why_not else "not repaired"
    return p
