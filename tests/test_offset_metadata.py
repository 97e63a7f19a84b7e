"""A commit's metadata string is kept with the committed offset and given back, as Kafka does:
OffsetFetch through kq serve, `kq offsets show --json` (here and in cluster mode), and the
copies `kq replicate` and the bridge make of a group's offsets."""

from __future__ import annotations

import json
import os

import pytest
from cluster_support import Place
from serve_support import KqServer

confluent_kafka = pytest.importorskip("confluent_kafka")


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, tuple[int, str | None]]) -> list:
    """Commit through a confluent-kafka consumer; the offsets it then reads back (committed())."""
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = [
            confluent_kafka.TopicPartition(topic, p, o, metadata=m)
            if m is not None
            else confluent_kafka.TopicPartition(topic, p, o)
            for p, (o, m) in sorted(offsets.items())
        ]
        for tp in c.commit(offsets=tps, asynchronous=False):
            assert tp.error is None, tp.error
        return c.committed([confluent_kafka.TopicPartition(topic, p) for p in sorted(offsets)], timeout=20)
    finally:
        c.close()


def shown(place_or_run, topic: str, group: str) -> dict[int, tuple]:
    out = place_or_run("offsets", "show", topic, "-g", group, "--json")
    assert out.returncode == 0, out.stderr
    return {r["partition"]: (r["committed"], r["metadata"]) for r in json.loads(out.stdout)}


def test_a_commits_metadata_comes_back_from_offset_fetch_and_offsets_show(server, run_kq, data_dir):
    assert run_kq("topic", "create", "t", "--partitions", "3").returncode == 0
    assert run_kq("produce", "t", "-p", "0", input="a\nb\nc\n").returncode == 0
    got = commit(server.bootstrap, "g", "t", {0: (2, "hello world"), 1: (0, None)})
    # (librdkafka gives an empty metadata string as None)
    assert [(tp.partition, tp.offset, tp.metadata or "") for tp in got] == [(0, 2, "hello world"), (1, 0, "")]

    # librdkafka sends the C string's terminating NUL as part of the metadata (Kafka keeps it too,
    # and librdkafka's reader stops at it): kq keeps exactly what the client sent.
    assert shown(run_kq, "t", "g") == {0: (2, "hello world\0"), 1: (0, ""), 2: (None, None)}

    kafka = pytest.importorskip("kafka")
    from kafka.structs import OffsetAndMetadata

    c = kafka.KafkaConsumer(bootstrap_servers=server.bootstrap, group_id="g", enable_auto_commit=False)
    try:
        c.commit({kafka.TopicPartition("t", 2): OffsetAndMetadata(1, "hello world", -1)})
        assert c.committed(kafka.TopicPartition("t", 2), metadata=True).metadata == "hello world"
    finally:
        c.close()
    with open(os.path.join(data_dir, "groups", "g", "t", "2.offset")) as f:
        assert json.load(f)["metadata"] == "hello world"
    assert shown(run_kq, "t", "g") == {0: (2, "hello world\0"), 1: (0, ""), 2: (1, "hello world")}
    # Cluster mode reads through librdkafka, which ends the string at a NUL.
    cluster = Place("serve", ["-b", server.bootstrap], server.bootstrap)
    assert shown(cluster.kq, "t", "g") == {0: (2, "hello world"), 1: (0, ""), 2: (1, "hello world")}

    # A later commit replaces the metadata with its own (none), as in Kafka.
    got = commit(server.bootstrap, "g", "t", {0: (3, None)})
    assert [(tp.offset, tp.metadata or "") for tp in got] == [(3, "")]

    # Kafka's default limit, offset.metadata.max.bytes: a longer string is refused, nothing stored.
    c = confluent_kafka.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "g", "enable.auto.commit": False})
    try:
        with pytest.raises(confluent_kafka.KafkaException) as refused:
            c.commit(offsets=[confluent_kafka.TopicPartition("t", 0, 1, metadata="x" * 4097)], asynchronous=False)
        assert refused.value.args[0].code() == confluent_kafka.KafkaError.OFFSET_METADATA_TOO_LARGE
    finally:
        c.close()
    assert shown(run_kq, "t", "g")[0] == (3, "")


def test_an_offsets_file_written_before_metadata_was_kept_still_reads(run_kq, data_dir):
    assert run_kq("produce", "t", input="a\nb\n").returncode == 0
    directory = os.path.join(data_dir, "groups", "old", "t")
    os.makedirs(directory)
    with open(os.path.join(directory, "0.offset"), "w") as f:
        f.write('{"format": 1, "offset": 1, "committed_at": 1700000000000}\n')
    assert shown(run_kq, "t", "old") == {0: (1, "")}
    assert run_kq("consume", "t", "-g", "old").stdout == b"b\n"


def test_replicate_and_the_bridge_carry_a_commits_metadata(server, run_kq, data_dir, tmp_path, kq_serve_cluster):
    assert run_kq("topic", "create", "t", "--partitions", "2").returncode == 0
    assert run_kq("produce", "t", "-p", "0", input="a\nb\nc\n").returncode == 0
    commit(server.bootstrap, "g", "t", {0: (2, "hello world")})

    replica = str(tmp_path / "replica")
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    assert shown(lambda *a: run_kq(*a, data=replica), "t", "g") == {0: (2, "hello world\0"), 1: (None, None)}

    target = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    topic = target.name("meta")
    home = Place("dir", ["--data-dir", replica], data_dir=replica)
    home.ok("topic", "create", topic, "--partitions", "2")
    home.ok("produce", topic, "-p", "0", input="a\nb\nc\n")
    # Commit with metadata in the directory, through a server on it, then bridge it to the cluster.
    server.kill()
    on_replica = KqServer(replica)
    try:
        commit(on_replica.bootstrap, "g2", topic, {0: (3, "from the directory")})
    finally:
        on_replica.kill()
    assert shown(home.kq, topic, "g2")[0] == (3, "from the directory\0")
    r = home.kq("replicate", topic, "--to", f"kafka://{kq_serve_cluster.bootstrap}", "--groups")
    assert r.returncode == 0, r.stderr
    assert shown(target.kq, topic, "g2")[0] == (3, "from the directory")
    with open(os.path.join(kq_serve_cluster.data_dir, "groups", "g2", topic, "0.offset")) as f:
        assert json.load(f)["metadata"] == "from the directory\0"  # as the client sent it

    back = Place("dir", ["--data-dir", str(tmp_path / "back")], data_dir=str(tmp_path / "back"))
    url = f"kafka://{kq_serve_cluster.bootstrap}"
    back.ok("replicate", topic, "--from", url, "--to", back.data_dir, "--groups")
    assert shown(back.kq, topic, "g2")[0] == (3, "from the directory")
