"""kq.share.state's state, in-process: ranges carved and settled, fitted to the log, parsed from untrusted bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kq.errors import CorruptFile, UnsupportedFormat
from kq.share.deliveries import parse_lease
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


def test_scheduled_ranges_wait_for_their_wall_clock_time_survive_a_reboot_and_join_at_the_earlier():
    s = PartitionState(start=0, next=10, boot="b")
    s.ranges = [Range(0, 3, AVAILABLE, 0, at=5000), Range(4, 6, AVAILABLE, 0, at=3000), Range(8, 9, AVAILABLE, 0)]
    assert s.due(now=1, wall=2999) == [s.ranges[2]]
    assert s.has_work(end=10, now=1, wall=2999)  # the unscheduled one is work
    s.ranges.pop()
    assert not s.has_work(end=10, now=1, wall=2999) and s.has_work(end=10, now=1, wall=3000)
    assert s.scheduled(wall=2999) == (7, 3000) and s.scheduled(wall=4000) == (4, 5000)
    s.normalize(0, "another-boot")  # a reboot voids leases, not delivery times
    assert [r.at for r in s.ranges] == [5000, 3000]
    s.merge()
    assert [(r.first, r.last, r.at) for r in s.ranges] == [(0, 6, 3000)]
    assert parse_state(s.to_bytes(), "P.share").ranges[0].at == 3000


def test_only_an_available_range_is_scheduled():
    body = json.loads(PartitionState(start=0, next=5).to_bytes())
    body["ranges"] = [
        {"first": 0, "last": 1, "state": "acquired", "attempt": 1, "lease": "a", "owner": "w", "until": 1, "at": 7}
    ]
    with pytest.raises(CorruptFile, match="only an available range is scheduled"):
        parse_state(json.dumps(body).encode(), "P.share")
    body["ranges"] = [{"first": 0, "last": 1, "state": "available", "attempt": 0, "until": 0, "at": -1}]
    with pytest.raises(CorruptFile, match="at is -1"):
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


def test_more_delayed_runs_than_a_state_holds_fill_it_and_never_overfill_it(tmp_path):
    # Delayed and undelayed records alternating, one by one: each delayed record is a scheduled
    # range of its own, and a state holds at most MAX_RANGES ranges (a longer one is unreadable).
    from kq import DataDir
    from kq.delivery_time import deliver_at_header
    from kq.share.consumer import ShareConsumer
    from kq.share.shares import Shares
    from kq.share.state import MAX_RANGES, wall_ms

    data = DataDir(str(tmp_path / "data"))
    topic = data.create_topic("jobs", 1)
    later = [deliver_at_header(wall_ms() + 3_600_000)]
    n = MAX_RANGES + 300
    topic.partition(0).append([b"x"] * (2 * n), headers=[later if i % 2 else [] for i in range(2 * n)])
    delivered = []
    with ShareConsumer(data, topic, "s") as worker:
        got = worker.acquire(1000)
        while got:
            delivered += got
            got = worker.acquire(1000, ack=got)
    assert all(d.headers == [] and d.offset % 2 == 0 for d in delivered)
    state = Shares(data).read_state("s", topic, 0)
    assert state is not None and len(state.ranges) <= MAX_RANGES
    scheduled, _ = state.scheduled(wall_ms())
    assert scheduled == len(state.ranges) and MAX_RANGES - 2 <= scheduled
    # Every record up to where the state filled is settled or scheduled; the rest wait.
    assert len(delivered) == state.acked and scheduled <= len(delivered) + 1 < n
