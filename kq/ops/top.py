"""What ``kq top`` shows: topics, consumer groups and share groups with their rates, sampled again and again.

``Top`` takes a snapshot of a backend (kq.ops.observe) each time it is asked,
keeps the last few (rates over a sliding window, a lag's history for a
sparkline, the samples the status rule reads) and makes a ``Frame`` of
rows; ``arrange`` sorts and filters them as the viewer asked. Drawing them
is the command's job (kq/cli/top.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from .rates import History, RateWindow, catch_up_seconds

SORTS = ("lag", "rate", "name")


@dataclass
class TopicRow:
    topic: str
    partitions: int
    records: int  # end offsets minus start offsets: what the topic holds now
    end_offset: int  # the sum of its partitions' end offsets: every record ever written
    bytes: int | None  # on disk (None where the backend cannot tell)
    rate_in: float | None  # records/s appended, over the rate window (None until two samples)
    lag: int = 0  # the largest lag of a group on the topic (for sorting by lag)


@dataclass
class GroupRow:
    group: str
    topic: str
    members: int
    lag: int
    committed: int  # the sum of its committed offsets (a share group: settled up to)
    rate_out: float | None  # records/s committed (settled), over the rate window
    catch_up: float | None  # seconds to reach the end at the current rates (inf: never; None: not known yet)
    status: str  # kq.ops.observe's verdict: ok, falling behind, stalled, stopped
    lag_history: list[int | None] = field(default_factory=list)  # oldest first, one value per slice
    # Share groups only: records leased to a worker now, waiting for a retry, dead-lettered.
    acquired: int | None = None
    retrying: int | None = None
    dead_lettered: int | None = None


@dataclass
class Frame:
    source: str  # "data directory DIR", "Kafka cluster HOST:PORT"
    taken_at: float  # wall-clock seconds
    topics: list[TopicRow]
    groups: list[GroupRow]
    shares: list[GroupRow]

    def as_json(self) -> dict:
        rows = asdict(self)
        for kind in ("groups", "shares"):
            for row in rows[kind]:
                if row["catch_up"] == float("inf"):
                    row["catch_up"] = None  # JSON has no infinity; "never" is told by the status and rates
                    row["catches_up"] = False
                else:
                    row["catches_up"] = row["catch_up"] is not None
        for row in rows["groups"]:
            for key in ("acquired", "retrying", "dead_lettered"):
                del row[key]
        rows["share_groups"] = rows.pop("shares")
        return rows


def _sort_key(sort: str):
    if sort == "lag":
        return lambda r: (-r.lag, _name(r))
    if sort == "rate":
        return lambda r: (-(_rate(r) or 0.0), _name(r))
    return _name


def _name(row) -> tuple:
    return (row.topic,) if isinstance(row, TopicRow) else (row.group, row.topic)


def _rate(row) -> float | None:
    return row.rate_in if isinstance(row, TopicRow) else row.rate_out


def arrange(frame: Frame, sort: str = "lag", text: str = "") -> Frame:
    """The frame's rows sorted (by lag or rate, largest first, or by name), and only those whose
    topic or group name holds ``text`` (any case); a topic stays when a group kept reads it."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    wanted = text.casefold()
    groups, shares, topics = frame.groups, frame.shares, frame.topics
    if wanted:
        groups = [g for g in groups if wanted in g.group.casefold() or wanted in g.topic.casefold()]
        shares = [g for g in shares if wanted in g.group.casefold() or wanted in g.topic.casefold()]
        read = {g.topic for g in groups} | {g.topic for g in shares}
        topics = [t for t in topics if wanted in t.topic.casefold() or t.topic in read]
    key = _sort_key(sort)
    return Frame(frame.source, frame.taken_at, sorted(topics, key=key), sorted(groups, key=key), sorted(shares, key=key))
