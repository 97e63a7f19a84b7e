"""Snapshots taken again and again (kq top) reuse what did not change, and say what a fresh look says."""

from __future__ import annotations

import dataclasses
import time

import kq
from kq.backends.local import LocalBackend
from kq.engine.stamps import RACY_NS
from kq.groups.store import Groups
from kq.ops.observe import Memory, snapshot
from kq.ops.top import Top

SETTLE = RACY_NS / 1e9 + 0.05  # past the window in which a file's change may hide in its clock's tick


def fresh(path: str):
    with LocalBackend(path) as backend:
        return snapshot(backend)


def contents(snap) -> tuple:
    return snap.topics, snap.groups, snap.shares, snap.problems


def make(tmp_path):
    path = str(tmp_path / "data")
    data = kq.DataDir(path)
    for name in ("orders", "audit", "spare"):
        topic = data.create_topic(name, 2)
        topic.partition(0).append([b"x"] * 10)
        topic.close()
    groups = Groups(data)
    for group in ("billing", "shipping"):
        for name in ("orders", "audit"):
            groups.commit(group, name, 0, 4)
    return path, data, groups


def test_a_snapshot_reuses_unchanged_states_and_shows_every_change_in_the_next(tmp_path):
    path, data, groups = make(tmp_path)
    backend, memory = LocalBackend(path), Memory()

    def look():
        snap = snapshot(backend, memory=memory)
        assert contents(snap) == contents(fresh(path))
        return snap

    time.sleep(SETTLE)
    first = look()
    second = look()  # nothing changed: the very same states, none built again
    assert second.groups["billing"] is first.groups["billing"]
    assert second.topics["orders"] is first.topics["orders"]

    orders = data.topic("orders")
    orders.partition(0).append([b"y"] * 5)  # an append
    third = look()
    assert third.topics["orders"].current == 15 and third.topics["audit"] is first.topics["audit"]
    assert {(p.topic, p.partition): p.lag for p in third.groups["billing"].partitions}[("orders", 0)] == 11

    time.sleep(SETTLE)
    settled = look()
    groups.commit("billing", "orders", 0, 15)  # a commit
    fourth = look()
    assert {(p.topic, p.partition): p.lag for p in fourth.groups["billing"].partitions}[("orders", 0)] == 0
    assert fourth.groups["shipping"] is settled.groups["shipping"]  # another group's directory: unchanged

    time.sleep(SETTLE)
    look()
    groups.commit("reports", "spare", 1, 0)  # a new group
    assert look().groups["reports"].partitions[1].committed == 0

    time.sleep(SETTLE)
    look()
    orders.close()
    data.delete_topic("orders")  # a deleted topic
    fifth = look()
    assert "orders" not in fifth.topics
    assert {p.topic for p in fifth.groups["billing"].partitions} == {"audit"}


def test_kq_top_keeping_rows_between_frames_shows_what_building_them_afresh_shows(tmp_path):
    path, data, groups = make(tmp_path)
    backend, other = LocalBackend(path), LocalBackend(path)
    # One keeps its rows from frame to frame; the other is handed new states each time, so it
    # builds and judges every row afresh at every frame (what kq top did before it kept rows).
    keeping, afresh = Top(backend, stall_after=20.0, rate_span=5.0), Top(backend, stall_after=20.0, rate_span=5.0)
    started = time.time()
    orders = data.topic("orders")
    seen_statuses = set()
    for second in range(40):
        if second == 3:
            orders.partition(0).append([b"y"] * 50)
        if second in (6, 7, 8):
            groups.commit("billing", "orders", 0, 5 * second)
        if second == 12:
            groups.commit("reports", "spare", 0, 0)
        if second in (3, 6, 12):
            time.sleep(SETTLE)  # the change is told from its stamps, not only re-read as too recent
        snap = dataclasses.replace(snapshot(backend, memory=keeping.memory), taken_at=started + second)
        kept = keeping.frame(snap, float(second))
        anew = afresh.frame(dataclasses.replace(snapshot(other), taken_at=started + second), float(second))
        assert kept.as_json() == anew.as_json(), second
        for row in kept.groups:
            assert keeping.lag_history(row) == afresh.lag_history(row)
        seen_statuses |= {row.status for row in kept.groups}
    # A group whose offsets stood still with lag, and no members, turned "stopped" though its rows were kept.
    assert {"OK", "stopped"} <= seen_statuses
    orders.close()
