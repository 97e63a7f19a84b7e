"""What a share group's worker holds and hands back: a delivery (a record under a lease), lease ids, failures, outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.fileio import shown
from ..engine.segment import MAX_OFFSET
from ..errors import UsageError
from .state import MAX_ERROR_CHARS, MAX_TOKEN


class Delivery:
    """One acquired record: where it is, which attempt this is, and the lease that holds it."""

    __slots__ = ("partition", "offset", "attempt", "token", "batch", "index")

    def __init__(self, partition: int, offset: int, attempt: int, token: str, batch, index: int):
        self.partition = partition
        self.offset = offset
        self.attempt = attempt
        self.token = token
        self.batch = batch  # the kq.engine.batch.RecordBatch holding it, at ``index``
        self.index = index

    @property
    def lease(self) -> str:
        """The lease id ``kq ack`` and ``kq nack`` take: PARTITION:OFFSET:TOKEN."""
        return f"{self.partition}:{self.offset}:{self.token}"

    @property
    def value(self) -> bytes | None:
        return self.batch.values[self.index]

    @property
    def key(self) -> bytes | None:
        return None if self.batch.keys is None else self.batch.keys[self.index]

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        h = self.batch.headers
        return [] if h is None or h[self.index] is None else [tuple(x) for x in h[self.index]]

    @property
    def timestamp(self) -> int:
        d = self.batch.timestamp_deltas
        return self.batch.base_timestamp + (0 if d is None else d[self.index])

    def __repr__(self) -> str:
        return f"Delivery({self.lease}, attempt {self.attempt})"


def parse_lease(lease: str) -> tuple[int, int, str]:
    """(partition, offset, token) from a lease id, or UsageError."""
    parts = lease.strip().split(":") if isinstance(lease, str) else []
    if len(parts) == 3 and all(p.isascii() and p.isdigit() and len(p) <= 19 for p in parts[:2]):
        partition, offset, token = int(parts[0]), int(parts[1]), parts[2]
        if offset <= MAX_OFFSET and 0 < len(token) <= MAX_TOKEN and token.isascii() and token.isalnum():
            return partition, offset, token
    raise UsageError(f"{shown(lease)} is not a lease id (PARTITION:OFFSET:TOKEN, as consume --share prints)")


@dataclass
class Failure:
    """Why a delivery failed: the command's exit status (None: none ran), a reason, the last lines of its stderr."""

    reason: str
    exit: int | None = None
    stderr: str = ""

    def as_json(self) -> dict:
        tail = self.stderr[-MAX_ERROR_CHARS:]
        return {"exit": self.exit, "reason": self.reason[:MAX_ERROR_CHARS], "stderr": tail}


LEASE_EXPIRED = Failure("lease expired before the record was acknowledged")


@dataclass
class Outcome:
    """What one settle call did."""

    acked: int = 0
    released: int = 0  # back for another attempt
    dead: int = 0  # dead-lettered
    extended: int = 0
    not_held: list = field(default_factory=list)  # leases (ids) that were not held
