"""A data directory described again and again (kq top) says what a fresh look says, whatever changed between."""

from __future__ import annotations

import time

import kq
from kq.backends.local import LocalBackend
from kq.engine.maintain import trim
from kq.engine.stamps import RACY_NS

SETTLE = RACY_NS / 1e9 + 0.05  # past the window in which a file's change may hide in its clock's tick


def fresh(path: str, names: list[str]):
    with LocalBackend(path) as backend:
        return backend.describe_topics(names)


def test_each_look_sees_appends_trims_new_partitions_and_a_topic_made_again(tmp_path):
    path = str(tmp_path / "data")
    data = kq.DataDir(path)
    topic = data.create_topic("orders", 2)
    topic.partition(0).append([b"x"] * 10)
    watcher = LocalBackend(path)

    def same_as_fresh(names=("orders",)):
        seen = watcher.describe_topics(list(names))
        assert seen == fresh(path, list(names))
        return seen

    time.sleep(SETTLE)
    assert [(p.start_offset, p.end_offset) for p in same_as_fresh()[0][0].partitions] == [(0, 10), (0, 0)]
    same_as_fresh()  # unchanged: told from the files' stamps

    topic.partition(0).append([b"y"] * 5)
    assert same_as_fresh()[0][0].partitions[0].end_offset == 15

    time.sleep(SETTLE)
    same_as_fresh()
    trim(topic.partition(0), 12)
    assert same_as_fresh()[0][0].partitions[0].start_offset == 12

    time.sleep(SETTLE)
    same_as_fresh()
    data.add_partitions(data.topic("orders"), 3)
    assert len(same_as_fresh()[0][0].partitions) == 3

    time.sleep(SETTLE)
    before = same_as_fresh()[0][0]
    topic.close()
    data.delete_topic("orders")
    again = data.create_topic("orders", 1)
    again.partition(0).append([b"z"] * 3)
    after = same_as_fresh()[0][0]
    assert after.id != before.id and [(p.start_offset, p.end_offset) for p in after.partitions] == [(0, 3)]

    again.close()
    data.delete_topic("orders")
    infos, problems = watcher.describe_topics(["orders"])
    assert infos == [] and len(problems) == 1 and "orders" in problems[0]
    watcher.close()


def test_each_look_at_a_group_sees_its_new_commits(tmp_path):
    from kq.groups.store import Groups

    path = str(tmp_path / "data")
    data = kq.DataDir(path)
    topic = data.create_topic("orders", 2)
    store = Groups(data)
    store.commit("billing", topic, 0, 3)
    watcher = LocalBackend(path)

    def committed():
        seen = [(g.topic, g.committed) for g in watcher.group_overview("billing")]
        with LocalBackend(path) as other:
            assert seen == [(g.topic, g.committed) for g in other.group_overview("billing")]
        return seen

    time.sleep(SETTLE)
    assert committed() == [("orders", {0: 3})]
    assert committed() == [("orders", {0: 3})]  # unchanged: told from the directory's stamp
    store.commit("billing", topic, 0, 7)
    store.commit("billing", topic, 1, 1)
    assert committed() == [("orders", {0: 7, 1: 1})]
    time.sleep(SETTLE)
    committed()
    store.commit("billing", topic, 1, 2)
    assert committed() == [("orders", {0: 7, 1: 2})]
    topic.close()
    watcher.close()
