"""The bridge's record of a copy: which source offsets became which target offsets (kq.ops.bridge)."""

from __future__ import annotations

import json

import pytest

from kq.errors import CorruptFile, KqError
from kq.ops.bridge import kafka_url, peer_name
from kq.ops.bridge_state import MAX_RUNS, BridgeState, PartitionState


def copied(*runs, source_next=None, target_start=0) -> PartitionState:
    """A partition whose copy sent ``runs`` of (first source offset, count), in order."""
    ps = PartitionState(runs[0][0] if runs else 0, target_start)
    for first, count in runs:
        ps.add(first, count)
    if source_next is not None:
        ps.source_next = source_next
    return ps


def test_consecutive_records_make_one_run():
    ps = copied((0, 10), (10, 5))
    assert ps.runs == [[0, 0, 15]] and (ps.source_next, ps.target_next) == (15, 15)


@pytest.mark.parametrize(
    "offset, expected",
    [
        (0, 100),  # the first copied record
        (3, 103),
        (4, 104),  # in a gap (compaction removed 4..9): the next copied record, source 10
        (9, 104),
        (10, 104),
        (12, 106),
        (13, 107),  # the end of what was copied: the target's next offset
        (50, 107),  # past it (a group ahead of the copy): never past what the target holds
    ],
)
def test_a_group_offset_translates_to_the_first_copied_record_at_or_after_it(offset, expected):
    ps = copied((0, 4), (10, 3), target_start=100)
    assert ps.runs == [[0, 100, 4], [10, 104, 3]]
    assert ps.translate(offset) == expected


def test_records_deleted_before_they_were_copied_translate_to_the_first_copied():
    ps = copied((500, 3), target_start=0)
    assert ps.translate(0) == 0 and ps.translate(499) == 0 and ps.translate(501) == 1


def test_source_of_is_translate_backwards():
    ps = copied((0, 4), (10, 3), target_start=100)
    assert [ps.source_of(t) for t in range(99, 108)] == [None, 0, 1, 2, 3, 10, 11, 12, None]


def test_past_max_runs_the_oldest_are_forgotten_and_translate_early_never_late():
    ps = copied(*[(i * 2, 1) for i in range(MAX_RUNS + 10)])  # every other offset: a run each
    assert len(ps.runs) == MAX_RUNS and ps.runs[0] == [20, 10, 1]
    # A group before the first kept run reads again from there: early (some records twice), never late.
    assert ps.translate(4) == 10


def test_the_record_round_trips_and_rejects_what_kq_did_not_write(tmp_path):
    path = str(tmp_path / "orders.json")
    state = BridgeState(path, "orders")
    state.source_id = "abc"
    state.partitions[0] = copied((0, 4), (10, 3))
    state.save()
    back = BridgeState.load(path, "orders")
    assert back.source_id == "abc" and back.partitions[0] == state.partitions[0]
    assert BridgeState.load(str(tmp_path / "missing.json"), "x").partitions == {}
    for meta in (
        {"format": 2, "topic": "orders", "partitions": {}},
        {"format": 1, "topic": "other", "partitions": {}},
        {"format": 1, "topic": "orders", "partitions": {"0": {"source_next": -1, "target_next": 0, "runs": []}}},
        {"format": 1, "topic": "orders", "partitions": {"0": {"source_next": 1, "target_next": 0, "runs": [[0, 0]]}}},
        {"format": 1, "topic": "orders", "partitions": {"x": {}}},
        {"format": 1, "topic": "orders", "partitions": []},
    ):
        (tmp_path / "orders.json").write_text(json.dumps(meta))
        with pytest.raises(CorruptFile):
            BridgeState.load(path, "orders")


def test_kafka_urls_and_peer_names():
    assert kafka_url("/mnt/backup") is None
    assert kafka_url("kafka://h1:9092,h2:9093/") == "h1:9092,h2:9093"
    for bad in ("kafka://", "kafka://host", "kafka://host:x", "kafka://:9092", "kafka://h:70000"):
        with pytest.raises(KqError):
            kafka_url(bad)
    assert peer_name("to", "h2:9093,h1:9092") == "to-kafka-h1_9092_h2_9093"
