"""The status rule kq lag, --check and kq top share (Burrow's), and the exposition text's escaping."""

from __future__ import annotations

from kq.ops.metrics import Family, Histogram, render
from kq.ops.observe import BEHIND, OK, STALLED, STOPPED, GroupPartitionState, Sample, commit_samples, status


def test_a_committed_offset_standing_still_with_lag_is_stalled_or_stopped_after_the_window():
    still = [Sample(0, 5, 10), Sample(100, 5, 12), Sample(400, 5, 15)]
    assert status(still, stall_after=300, members=1) == STALLED
    assert status(still, stall_after=300, members=0) == STOPPED
    assert status(still, stall_after=500, members=1) == OK  # not for long enough yet
    # Only the trailing run counts: it moved at 200, so it has stood still for 200 s (and its lag grew).
    moved = [Sample(0, 5, 10), Sample(200, 6, 12), Sample(400, 6, 15)]
    assert status(moved, stall_after=300, members=1) == BEHIND


def test_lag_that_grows_while_the_offset_moves_is_falling_behind():
    assert status([Sample(0, 5, 10), Sample(1, 6, 12), Sample(2, 7, 15)], 300, 1) == BEHIND
    # It shrank between two samples: keeping up.
    assert status([Sample(0, 5, 10), Sample(1, 8, 12), Sample(2, 9, 15)], 300, 1) == OK


def test_no_lag_is_ok_however_old_the_commit():
    assert status([Sample(0, 15, 15), Sample(10_000, 15, 15)], 300, 0) == OK
    assert status([], 300) == OK


def test_one_snapshot_judges_from_the_last_commit_time():
    def partition(committed_at_ms, committed=4, current=6):
        return GroupPartitionState("g", "t", 0, committed, 0, current, current - committed, committed_at_ms)

    assert status(commit_samples(partition(1_000_000), now=1_000 + 301), 300, 0) == STOPPED
    assert status(commit_samples(partition(1_000_000), now=1_000 + 10), 300, 0) == OK
    # Where commit times are not recorded (a Kafka cluster), one snapshot cannot tell a stall.
    assert status(commit_samples(partition(None), now=10_000), 300, 0) == OK


def test_label_values_are_escaped():
    family = Family("kq_test", "gauge", "a help\\nwith a backslash")
    family.add(1, topic='a"b\\c\nd')
    assert render([family]).decode() == (
        '# HELP kq_test a help\\\\nwith a backslash\n# TYPE kq_test gauge\nkq_test{topic="a\\"b\\\\c\\nd"} 1\n'
    )


def test_a_histogram_is_cumulative_and_its_count_is_its_last_bucket():
    h = Histogram()
    for seconds in (0.0001, 0.003, 0.003, 20.0):
        h.observe("Produce", seconds)
    counter, latency = Family("c_total", "counter", "c"), Family("d", "histogram", "d")
    h.families(counter, latency, "api")
    buckets = [(labels["le"], v) for suffix, labels, v in latency.samples if suffix == "_bucket"]
    assert buckets[0] == ("0.0005", 1) and ("0.005", 3) in buckets and buckets[-1] == ("+Inf", 4)
    assert [v for suffix, _, v in latency.samples if suffix == "_count"] == [4]
    assert counter.samples == [("", {"api": "Produce"}, 4)]
