"""kq.share.state's state, in-process: ranges carved and settled, fitted to the log, parsed from untrusted bytes."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kq.errors import CorruptFile, UnsupportedFormat
from kq.share.deliveries import parse_lease
from kq.share.schedule import ENTRY, MAGIC, Schedule
from kq.share.state import ACQUIRED, AVAILABLE, PartitionState, Range, parse_state


def state_with(*ranges, start=0, next=20) -> PartitionState:
    return PartitionState(
        start=start, next=next, ranges=[Range(a, b, s, 1, lease=t, owner="w") for a, b, s, t in ranges]
    )


def shape(state: PartitionState) -> list[tuple]:
    return [(r.first, r.last, r.state, r.lease) for r in state.ranges]


def test_carve_splits_out_exactly_the_offsets_a_lease_holds():
    s = state_with((0, 9, ACQUIRED, "a"), (10, 14, ACQUIRED, "b"))
    pieces = s.carve(3, 5, "a")
    assert [(p.first, p.last) for p in pieces] == [(3, 5)]
    assert shape(s) == [(0, 2, ACQUIRED, "a"), (3, 5, ACQUIRED, "a"), (6, 9, ACQUIRED, "a"), (10, 14, ACQUIRED, "b")]
    s.remove(pieces)
    assert shape(s)[:2] == [(0, 2, ACQUIRED, "a"), (6, 9, ACQUIRED, "a")]
    assert s.carve(3, 3, "a") is None  # settled already
    assert s.carve(9, 10, "a") is None  # 10 is another lease's
    assert s.carve(0, 2, "b") is None
    s.remove(s.carve(0, 2, "a"))
    assert s.start == 6


def test_merge_joins_neighbours_that_differ_only_in_offsets():
    s = state_with((0, 4, ACQUIRED, "a"), (5, 9, ACQUIRED, "a"), (10, 12, ACQUIRED, "b"))
    held = list(s.ranges)
    s.merge()
    assert shape(s) == [(0, 9, ACQUIRED, "a"), (10, 12, ACQUIRED, "b")]
    # The ranges a caller still holds (an acquire reads their records after saving) keep their offsets.
    assert [(r.first, r.last) for r in held] == [(0, 4), (5, 9), (10, 12)]


def test_retention_past_unsettled_records_counts_them_skipped_and_warns():
    s = state_with((5, 9, AVAILABLE, None), start=5, next=12)
    warning = s.normalize(log_start=8, boot=s.boot)
    assert (s.start, s.next, shape(s), s.skipped) == (8, 12, [(8, 9, AVAILABLE, None)], 3)
    assert "3 offset(s) below the start offset 8" in warning
    s = state_with(start=4, next=4)
    s.normalize(log_start=10, boot=s.boot)
    assert (s.start, s.next, s.skipped) == (10, 10, 6)  # never acquired, and gone


def test_another_boot_voids_every_lease():
    s = state_with((0, 3, ACQUIRED, "a"))
    for r in s.ranges:
        r.until = 10**12
    s.normalize(0, "another-boot")
    assert [r.until for r in s.ranges] == [0] and s.due(now=1) == s.ranges


def test_a_schedule_keeps_runs_until_their_time_and_gives_them_back_in_time_order(tmp_path):
    directory = str(tmp_path)
    schedule = Schedule(directory, 0)
    state = PartitionState(start=0, next=10, boot="b")
    schedule.add(0, 3, 5000, 0)
    schedule.add(4, 6, 3000, 1)
    schedule.commit(state)
    state.advance()
    assert state.schedule["records"] == 7 and state.next_due == 3000 and state.start == 0
    assert not state.has_work(end=10, now=1, wall=2999) and state.has_work(end=10, now=1, wall=3000)
    assert state.lag(end=12) == 7 + 2
    assert schedule.waiting(wall=2999) == (7, 3000) and schedule.waiting(wall=4000) == (4, 5000)
    state.normalize(0, "another-boot")  # a reboot voids leases, not delivery times
    assert state.next_due == 3000
    again = Schedule(directory, 0)
    again.sync(parse_state(state.to_bytes(), "P.share").schedule)
    assert list(again) == [(0, 3, 5000, 0), (4, 6, 3000, 1)]
    assert again.take_due(wall=4000, limit=5) == [(4, 6, 1)] and again.take_due(wall=4000, limit=5) == []
    again.commit(state)
    # A worker that looked before reads only what was added since, and agrees.
    schedule.sync(state.schedule)
    assert list(schedule) == [(0, 3, 5000, 0)] and schedule.records == 4
    assert schedule.take_due(wall=5000, limit=5) == [(0, 3, 0)]
    schedule.commit(state)
    schedule.collect()
    assert state.schedule is None and os.listdir(directory) == []  # nothing waits: no file
    assert json.loads(state.to_bytes())["format"] == 1  # (an older kq reads it)


def test_a_schedule_mostly_given_back_is_written_anew_and_the_old_file_deleted(tmp_path):
    directory = str(tmp_path)
    schedule = Schedule(directory, 3)
    state = PartitionState(start=0, next=10**6, boot="b")
    schedule.add(10**6 - 1, 10**6 - 1, 9 * 10**12, 0)  # one run that never falls due
    for i in range(3000):
        schedule.add(2 * i, 2 * i, 1000 + i, 0)
    schedule.commit(state)
    first = state.schedule["generation"]
    for _ in range(3):
        schedule.take_due(wall=10**6, limit=1000)
        schedule.commit(state)
        schedule.collect()
    assert state.schedule["generation"] != first and state.schedule["records"] == 1
    assert os.listdir(directory) == [os.path.basename(schedule.path)]
    assert os.path.getsize(schedule.path) == len(MAGIC) + ENTRY.size
    fresh = Schedule(directory, 3)
    fresh.sync(state.schedule)
    assert list(fresh) == [(10**6 - 1, 10**6 - 1, 9 * 10**12, 0)]


def test_retention_and_a_replicas_end_cut_scheduled_runs(tmp_path):
    schedule = Schedule(str(tmp_path), 0)
    state = PartitionState(start=0, next=20, boot="b")
    for first, last in ((0, 4), (6, 9), (12, 17)):
        schedule.add(first, last, 10**13, 0)
    schedule.commit(state)
    assert state.normalize(8, "b", schedule) and state.skipped == 7 and state.start == 8
    schedule.trim_from(15)
    schedule.commit(state)
    assert list(schedule) == [(8, 9, 10**13, 0), (12, 14, 10**13, 0)]


def test_a_schedule_file_that_does_not_match_its_state_is_a_corrupt_file(tmp_path):
    schedule = Schedule(str(tmp_path), 0)
    state = PartitionState(start=0, next=20, boot="b")
    schedule.add(0, 4, 10**13, 0)
    schedule.commit(state)
    for damage, match in (
        (lambda raw: b"NOTSCHED" + raw[8:], "not a kq schedule"),
        (lambda raw: raw[:-1], "bytes long"),
        (lambda raw: raw + ENTRY.pack(6, 7, 10**13, 0), "counts"),
    ):
        with open(schedule.path, "rb") as f:
            good = f.read()
        with open(schedule.path, "wb") as f:
            f.write(damage(good))
        summary = dict(state.schedule, bytes=len(damage(good))) if match == "counts" else state.schedule
        with pytest.raises(CorruptFile, match=match):
            Schedule(str(tmp_path), 0).sync(summary)
        with open(schedule.path, "wb") as f:
            f.write(good)
    body = json.loads(state.to_bytes())
    body["format"] = 1
    with pytest.raises(CorruptFile, match="not an object of a format 2 state"):
        parse_state(json.dumps(body).encode(), "P.share")
    body["format"], body["schedule"]["bytes"] = 2, 9
    with pytest.raises(CorruptFile, match="schedule.bytes is 9"):
        parse_state(json.dumps(body).encode(), "P.share")


def test_cut_back_forgets_acquisitions_past_a_replicas_end():
    s = state_with((2, 4, ACQUIRED, "a"), (8, 12, ACQUIRED, "b"), start=2, next=15)
    s.cut_back(10)
    assert (s.start, s.next, shape(s)) == (2, 10, [(2, 4, ACQUIRED, "a"), (8, 9, ACQUIRED, "b")])
    s = state_with(start=15, next=15)
    s.cut_back(10)
    assert (s.start, s.next) == (10, 10)


def test_a_state_survives_its_own_format():
    s = state_with((0, 3, ACQUIRED, "a"), (7, 9, AVAILABLE, None), start=0, next=12)
    s.ranges[1].error = {"exit": 2, "reason": "command exited with status 2", "stderr": "boom"}
    again = parse_state(s.to_bytes(), "P.share")
    assert again.essence() == s.essence()


@pytest.mark.parametrize("lease", ["0:0", "a:1:x", "1:-1:x", "1:1:", "1:1:x y", "1:99999999999999999999:x", 7])
def test_lease_ids_are_checked(lease):
    from kq.errors import UsageError

    with pytest.raises(UsageError):
        parse_lease(lease)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(["format", "start", "next", "acked", "dead", "skipped", "boot", "ranges", "topic_id"])


@given(st.dictionaries(field_names, json_values))
def test_any_json_in_a_state_file_gives_a_checked_state_or_a_corrupt_file_error(body):
    base = {"format": 1, "start": 0, "next": 5, "acked": 0, "dead": 0, "skipped": 0, "boot": "", "ranges": []}
    try:
        s = parse_state(json.dumps({**base, **body}).encode(), "P.share")
    except (CorruptFile, UnsupportedFormat):  # a format number past kq's: "upgrade kq"
        return
    assert 0 <= s.start <= s.next < 2**63
    floor = s.start
    for r in s.ranges:
        assert floor <= r.first <= r.last < s.next
        floor = r.last + 1


@given(st.binary(max_size=200))
def test_any_bytes_in_a_state_file_give_a_state_or_a_corrupt_file_error(raw):
    try:
        parse_state(raw, "P.share")
    except (CorruptFile, UnsupportedFormat):
        pass


def test_a_backend_without_share_groups_lists_none_and_refuses_the_rest():
    from kq.backends.base import Backend
    from kq.errors import UnsupportedByBackend

    class Elsewhere:
        description = "Kafka cluster broker:9092"

    place = Elsewhere()
    assert Backend.share_names(place) == [] and Backend.shares_of_topic(place, "t") == []
    for call in (
        lambda: Backend.share_reader(place, "t", "s"),
        lambda: Backend.share_settle(place, "t", "s", ["0:0:a"], "ack"),
        lambda: Backend.describe_share(place, "s"),
        lambda: Backend.delete_share(place, "s"),
        lambda: Backend.share_offset_rows(place, "t", ["s"]),
    ):
        with pytest.raises(UnsupportedByBackend, match="has no meaning on Kafka cluster broker:9092"):
            call()


def test_delayed_records_between_undelayed_ones_never_hold_the_undelayed_ones_back(tmp_path):
    # Delayed and undelayed records alternating, one by one: each delayed record is a scheduled
    # run of its own, more of them than a state holds ranges.
    from kq import DataDir
    from kq.delivery_time import deliver_at_header
    from kq.share.consumer import ShareConsumer
    from kq.share.shares import Shares
    from kq.share.state import MAX_RANGES, wall_ms

    data = DataDir(str(tmp_path / "data"))
    topic = data.create_topic("jobs", 1)
    n = MAX_RANGES + 300
    due = wall_ms() + 2000
    later = [deliver_at_header(due)]
    topic.partition(0).append([b"x"] * (2 * n), headers=[later if i % 2 else [] for i in range(2 * n)])
    delivered = []
    with ShareConsumer(data, topic, "s") as worker:
        got = worker.acquire(1000)
        while got:
            delivered += got
            got = worker.acquire(1000, ack=got)
        assert sorted(d.offset for d in delivered) == list(range(0, 2 * n, 2))
        state = Shares(data).read_state("s", topic, 0)
        assert state is not None and state.ranges == [] and state.acked == n
        assert (state.scheduled_records, state.next_due, state.start) == (n, due, 1)
        assert wall_ms() < due  # (else the test proves nothing: the delayed ones were due)
        while wall_ms() < due:
            assert worker.acquire(1000, ack=got) == []
            got = []
        late = []
        while got := worker.acquire(1000, ack=got):
            late += got
        assert sorted(d.offset for d in late) == list(range(1, 2 * n, 2))
        assert all(d.attempt == 1 for d in late)
    state = Shares(data).read_state("s", topic, 0)
    assert state is not None and state.schedule is None and state.acked == 2 * n


def _delayed_topic(tmp_path, n: int, delay_ms: int):
    """A one-partition topic of ``n`` records alternating undelayed and delayed by ``delay_ms``; the due time."""
    from kq import DataDir
    from kq.delivery_time import deliver_at_header
    from kq.share.state import wall_ms

    data = DataDir(str(tmp_path / "data"))
    topic = data.create_topic("jobs", 1)
    due = wall_ms() + delay_ms
    later = [deliver_at_header(due)]
    topic.partition(0).append([b"x%d" % i for i in range(n)], headers=[later if i % 2 else [] for i in range(n)])
    return data, topic, due


def _acquire_until(worker, want: int, count: int, deadline_s: float = 10.0) -> list:
    """Acquire (acknowledging each round) until ``count`` records came or the deadline passed."""
    import time

    got, out = [], []
    end = time.monotonic() + deadline_s
    while len(out) < count and time.monotonic() < end:
        got = worker.acquire(want, ack=got)
        out += got
    worker.ack(got)
    return out


@pytest.mark.parametrize("want", [1, 1000, 5000])
def test_delayed_records_come_back_at_their_time_however_many_records_a_worker_asks_for(tmp_path, want):
    from kq.share.consumer import ShareConsumer

    data, topic, _ = _delayed_topic(tmp_path, 6, 300)
    with ShareConsumer(data, topic, "s") as worker:
        got = _acquire_until(worker, want, 6)
    assert sorted(d.offset for d in got) == list(range(6))


def test_a_full_schedule_takes_no_new_records_until_some_fall_due_and_then_drains(tmp_path, monkeypatch):
    from kq.share import schedule
    from kq.share.consumer import ShareConsumer
    from kq.share.shares import Shares
    from kq.share.state import wall_ms

    monkeypatch.setattr(schedule, "MAX_RUNS", 3)
    data, topic, due = _delayed_topic(tmp_path, 20, 500)
    with ShareConsumer(data, topic, "s") as worker:
        first = worker.acquire(100)
        worker.ack(first)
        state = Shares(data).read_state("s", topic, 0)
        assert wall_ms() < due and state is not None and state.scheduled_records == 3
        assert [d.offset for d in first] == [0, 2, 4]  # no new record past the third run
        rest = _acquire_until(worker, 100, 17)
    assert sorted(d.offset for d in first + rest) == list(range(20))


def test_a_schedule_count_larger_than_its_file_is_a_corrupt_file_not_a_huge_read(tmp_path):
    schedule = Schedule(str(tmp_path), 0)
    state = PartitionState(start=0, next=20, boot="b")
    schedule.add(0, 4, 10**13, 0)
    schedule.commit(state)
    huge = dict(state.schedule, bytes=len(MAGIC) + ENTRY.size * 2**50)
    with pytest.raises(CorruptFile, match="40 bytes long"):
        Schedule(str(tmp_path), 0).sync(huge)


def test_a_worker_removes_schedule_files_no_state_names(tmp_path):
    from kq.share.consumer import ShareConsumer

    data, topic, _ = _delayed_topic(tmp_path, 4, 3_600_000)
    directory = tmp_path / "data" / "shares" / "s" / "jobs"
    directory.mkdir(parents=True)
    (directory / "0.000000000001.schedule").write_bytes(MAGIC)  # a crash's leftover
    (directory / "1.000000000001.schedule").write_bytes(MAGIC)  # another partition's: not this worker's
    with ShareConsumer(data, topic, "s") as worker:
        assert [d.offset for d in worker.acquire(10)] == [0, 2]
    names = sorted(os.listdir(directory))
    assert "0.000000000001.schedule" not in names and "1.000000000001.schedule" in names
    assert len([n for n in names if n.startswith("0.") and n.endswith(".schedule")]) == 1
