"""What ``kq group describe`` and ``kq offsets show`` tell of a share group: counts, workers and their leases, lag."""

from __future__ import annotations

from ..engine.datadir import DataDir
from ..engine.topic import Topic
from ..errors import KqError, ShareNotFound
from .shares import Shares
from .state import ACQUIRED, AVAILABLE, HOLDER_GONE, MAX_LEASE_MS, boot_id, clock_ms, unsound_lease, wall_ms

# ``describe`` reads at most this many records a partition has never handed out, to count the
# delayed ones among them (the ones handed out, or passed over, are in the state).
DESCRIBE_SCAN_RECORDS = 10_000


def delayed_records(partition, first: int, end: int, wall: int, limit: int = DESCRIBE_SCAN_RECORDS):
    """(count, earliest time) of the records from ``first`` (up to ``end``, at most ``limit`` of them)
    whose delivery time (kq.delivery_time) is later than ``wall``."""
    from ..delivery_time import DELIVER_AT_BYTES, deliver_at

    found, earliest = 0, None
    if first >= end:
        return found, earliest
    cursor = partition.cursor(first)
    try:
        seen = 0
        while seen < limit:
            batches = cursor.poll(defer_values_if=DELIVER_AT_BYTES)  # (the values are not read)
            if not batches:
                break
            for b in batches:
                if b.base_offset >= end or seen >= limit:
                    return found, earliest
                lo, hi = b.index_of(first), b.index_of(end)
                seen += hi - lo
                pick = [] if b.headers is None else b.headers[lo:hi]
                if not pick:
                    continue
                if pick.count(pick[0]) == len(pick):  # one produce's headers, compared in C: one look
                    pick, repeat = pick[:1], len(pick)
                else:
                    repeat = 1
                for h in pick:
                    at = deliver_at(h) if h else None
                    if at is not None and at > wall:
                        found += repeat
                        earliest = at if earliest is None else min(earliest, at)
    finally:
        cursor.close()
    return found, earliest


def describe_share(data: DataDir, share: str) -> dict:
    """Per topic and partition: acquired, available, retrying and dead-lettered counts, and each worker's leases."""
    shares = Shares(data)
    if not shares.exists(share):
        raise ShareNotFound(share)
    now, wall = clock_ms(), wall_ms()
    boot = boot_id()
    partitions, workers = [], {}
    for name in shares.topics(share):
        try:
            topic = data.topic(name)
        except KqError:
            continue
        try:
            states = shares.states(share, topic)
            live = shares.lease_holders(share, name)
            for m in live.values():
                workers[m["member"]] = {**m, "leases": []}
            settings = shares.read_settings(share, name)
            for number in range(topic.partition_count):
                part = topic.partition(number)
                start, end = part.start_offset(), part.end_offset()
                state = states.get(number)
                row = {
                    "topic": name,
                    "partition": number,
                    "start_offset": start,
                    "end_offset": end,
                    "share_start": None,
                    "acquired": 0,
                    "available": max(end - start, 0),
                    "retrying": 0,
                    "scheduled": 0,
                    "next_due": None,
                    "dead_lettered": 0,
                    "acknowledged": 0,
                    "lag": max(end - start, 0),
                }
                waiting, due = delayed_records(part, start if state is None else max(state.next, start), end, wall)
                if state is None:
                    row.update(scheduled=waiting, next_due=due, available=row["available"] - waiting)
                if state is not None:
                    current = state.boot == boot
                    state, schedule = shares.read_schedule(share, topic, number, state)
                    scheduled, next_due = schedule.waiting(wall)
                    scheduled += waiting
                    if due is not None:
                        next_due = due if next_due is None else min(next_due, due)
                    acquired = [
                        r
                        for r in state.ranges
                        if r.state == ACQUIRED
                        and current
                        and r.until > now
                        and unsound_lease(r, now, live.__contains__) != HOLDER_GONE
                    ]
                    retrying = [r for r in state.ranges if r.state == AVAILABLE and current and r.until > now]
                    row.update(
                        share_start=state.start,
                        acquired=sum(r.count for r in acquired),
                        retrying=sum(r.count for r in retrying),
                        scheduled=scheduled,
                        next_due=next_due,
                        available=state.lag(end) - sum(r.count for r in acquired + retrying) - scheduled,
                        dead_lettered=state.dead,
                        acknowledged=state.acked,
                        lag=state.lag(end),
                    )
                    for r in acquired:
                        w = workers.setdefault(
                            r.owner,
                            {"member": r.owner, "topic": name, "pid": None, "host": None, "live": False, "leases": []},
                        )
                        w["leases"].append(
                            {
                                "topic": name,
                                "partition": number,
                                "first": r.first,
                                "last": r.last,
                                "attempt": r.attempt,
                                "expires_in": round(min(r.until - now, MAX_LEASE_MS) / 1000, 1),
                            }
                        )
                partitions.append(row)
            if settings is not None:
                for row in partitions:
                    if row["topic"] == name:
                        row["dead_letter"] = settings.dead_letter
        finally:
            topic.close()
    for w in workers.values():
        w.setdefault("live", True)
    return {
        "share_group": share,
        "partitions": partitions,
        "workers": sorted(workers.values(), key=lambda w: w["member"]),
    }


def share_offset_rows(data: DataDir, topic: Topic, shares_wanted: list[str]) -> list[dict]:
    """``kq offsets show`` rows for share groups: their start (everything before it settled) and lag."""
    shares = Shares(data)
    rows = []
    for share in shares_wanted:
        states = shares.states(share, topic)
        for number in range(topic.partition_count):
            part = topic.partition(number)
            start, end = part.start_offset(), part.end_offset()
            state = states.get(number)
            rows.append(
                {
                    "topic": topic.name,
                    "partition": number,
                    "start_offset": start,
                    "end_offset": end,
                    "group": share,
                    "type": "share",
                    "committed": None if state is None else state.start,
                    "lag": max(end - start, 0) if state is None else state.lag(end),
                }
            )
    return rows
