"""Compression at rest (`kq topic create --compression zstd`): every reader of a compressed topic.

Batches are stored compressed whole (the codec in bits 3-5 of a batch's
attributes), in a directory of format 3; readers inflate them in one place,
bounded by the batch limit. Produce, consume (each output), groups, share
groups, --exec, seeks, retention, trim, compaction, verify (and --repair),
replicate, the bridge and kq serve, on compressed topics.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import zlib

import pytest
from cluster_support import Place
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_support import KqServer
from test_faults import (
    assert_verify_clean,
    end_offsets,
    produce_killed_in_a_loop,
)

import kq
from kq.engine import batch as batchfmt
from kq.engine import compression

CODECS = ["zstd", "lz4", "gzip", "snappy"]
CODEC_IDS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
LINES = "".join(f'{{"event": "click", "user": {i % 97}, "page": "/items/{i % 13}"}}\n' for i in range(3000))


def directory_format(data_dir: str) -> int:
    with open(os.path.join(data_dir, "kq.json")) as f:
        return json.load(f)["format"]


def stored_codecs(data_dir: str, topic: str, partition: int = 0) -> list[int]:
    """The codec bits (3-5) of every batch of a partition, read from its segment files."""
    path = os.path.join(data_dir, "topics", topic, str(partition))
    out = []
    for name in sorted(n for n in os.listdir(path) if n.endswith(".log")):
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + batchfmt.HEADER_SIZE <= len(data):
            header = batchfmt.header_at(data, pos)
            out.append(batchfmt.stored_codec(header.attributes))
            pos += header.size
    return out


def segment_of(data_dir: str, topic: str, partition: int = 0) -> str:
    path = os.path.join(data_dir, "topics", topic, str(partition))
    return os.path.join(path, sorted(n for n in os.listdir(path) if n.endswith(".log"))[0])


def rewrite_payload(path: str, pos: int, new_payload: bytes, attributes: int | None = None) -> None:
    """Replace the payload of the batch at ``pos`` (same length or not) and give it a valid checksum."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    header = batchfmt.header_at(data, pos)
    fields = struct.pack(
        ">IqIIqqH",
        batchfmt.HEADER_SIZE - batchfmt.PREFIX_SIZE + len(new_payload),
        header.base_offset,
        header.last_offset_delta,
        header.record_count,
        header.base_timestamp,
        header.max_timestamp,
        header.attributes if attributes is None else attributes,
    )
    crc = zlib.crc32(new_payload, zlib.crc32(fields))
    batch = batchfmt.MAGIC + struct.pack(">I", crc) + fields + new_payload
    data[pos : pos + header.size] = batch
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- the format


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    codec=st.sampled_from(["none", *CODECS]),
    values=st.lists(st.one_of(st.none(), st.binary(max_size=300)), min_size=1, max_size=400),
    keyed=st.booleans(),
    headers=st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=5))), max_size=2),
)
def test_a_batch_round_trips_through_every_codec(codec, values, keyed, headers):
    kind = compression.CODEC_IDS[codec]
    keys = [b"k%d" % (i % 7) for i in range(len(values))] if keyed else None
    header_column = [headers] * len(values) if headers else None
    data = batchfmt.encode(7, values, keys=keys, headers=header_column, timestamp=1234, compression=kind)
    status, header = batchfmt.check(data, 0, len(data))
    assert status == batchfmt.OK
    assert batchfmt.stored_codec(header.attributes) == kind
    b = batchfmt.decode(data, 0, header)
    assert b.values == values and b.count == len(values)
    assert [r.key for r in b.records()] == (keys or [None] * len(values))
    assert [r.headers for r in b.records()] == [list(headers)] * len(values)
    assert list(b.offsets()) == list(range(7, 7 + len(values)))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(codec=st.sampled_from(CODECS), sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=4))
def test_a_partition_of_compressed_batches_reads_back_whatever_the_batch_sizes(tmp_path_factory, codec, sizes):
    data = kq.DataDir(str(tmp_path_factory.mktemp("d")))
    t = data.create_topic("t", config={"compression": codec, "segment_bytes": 8192})
    p = t.partition(0)
    sent = []
    for n in sizes:
        values = [b"line %d of %d: " % (i, n) + b"x" * (i % 50) for i in range(n)]
        p.append(values)
        sent += values
    assert [r.value for r in p.read()] == sent
    assert set(stored_codecs(data.path, "t")) == {CODEC_IDS[codec]}
    assert directory_format(data.path) == 3
    t.close()


def test_a_directory_is_format_3_only_once_compression_is_set_and_an_older_kq_refuses_it(run_kq, data_dir):
    assert run_kq("produce", "plain", input="a\nb\n").returncode == 0
    assert directory_format(data_dir) == 1  # no compression anywhere: what every kq opens
    with open(os.path.join(data_dir, "topics", "plain", "topic.json")) as f:
        assert "compression" not in json.load(f)["config"]  # an older kq refuses keys it does not know
    assert run_kq("topic", "create", "logs", "--compression", "zstd").returncode == 0
    assert directory_format(data_dir) == 3

    # A kq that knows format 2 (the one before this) refuses the directory whole, by its format check.
    from kq.engine import datadir

    saved = datadir.FORMAT_VERSION
    datadir.FORMAT_VERSION = 2
    try:
        with pytest.raises(kq.errors.UnsupportedFormat, match=r"has format 3 .*newer than this kq understands \(2\)"):
            datadir.read_format(data_dir)
    finally:
        datadir.FORMAT_VERSION = saved
    assert run_kq("consume", "plain").stdout == b"a\nb\n"  # the old topic reads unchanged


def test_an_unknown_codec_or_a_missing_library_is_a_clear_error(run_kq, data_dir, tmp_path):
    r = run_kq("topic", "create", "t", "--compression", "brotli")
    assert r.returncode == 2 and r.stderr.startswith(b"kq: error: compression must be one of none, zstd")
    blocker = tmp_path / "blocker"
    (blocker / "zstandard").mkdir(parents=True)
    (blocker / "zstandard" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{os.getcwd()}"}
    r = run_kq("topic", "create", "t", "--compression", "zstd", env=env)
    assert r.returncode == 1
    assert r.stderr == (
        b"kq: error: the zstd codec needs the Python package zstandard, which is not installed: "
        b"pip install 'kq-log[compression]' (or: pip install zstandard)\n"
    )
    assert run_kq("topic", "create", "t", "--compression", "zstd").returncode == 0
    assert run_kq("produce", "t", input="x\n").returncode == 0
    r = run_kq("consume", "t", env=env)
    assert r.returncode == 1 and b"pip install 'kq-log[compression]'" in r.stderr and b"Traceback" not in r.stderr
    r = run_kq("verify", env=env)  # not damage: the bytes are fine, the library is missing
    assert r.returncode == 1 and b"partition not checked: the zstd codec needs" in r.stdout
    assert b"damage" not in r.stdout and b"quarantin" not in r.stdout


# ---------------------------------------------------------------- readers


def test_every_local_reader_of_a_compressed_topic(run_kq, data_dir, tmp_path):
    assert run_kq("topic", "create", "ev", "--compression", "zstd", "--partitions", "2").returncode == 0
    assert run_kq("produce", "ev", input=LINES).returncode == 0
    expected = sorted(LINES.splitlines())
    assert sorted(run_kq("consume", "ev").stdout.decode().splitlines()) == expected
    rows = [json.loads(x) for x in run_kq("consume", "ev", "--json").stdout.splitlines()]
    assert sorted(r["value"] for r in rows) == expected
    assert run_kq("consume", "ev", "-o", "5", "-n", "1", "-F", "%o\\n").stdout == b"5\n"
    timed = "".join(json.dumps({"value": f"t{i}", "timestamp": 1000 + i}) + "\n" for i in range(1000))
    assert run_kq("topic", "create", "timed", "--compression", "lz4").returncode == 0
    assert run_kq("produce", "timed", "--json", input=timed).returncode == 0
    assert run_kq("consume", "timed", "-o", "@1500", "-n", "1").stdout == b"t500\n"
    # groups, --exec, share groups
    assert len(run_kq("consume", "ev", "-g", "g").stdout.splitlines()) == 3000
    assert run_kq("produce", "ev", "-p", "1", input="late\n").returncode == 0
    assert run_kq("consume", "ev", "-g", "g").stdout == b"late\n"
    ran = tmp_path / "ran"
    r = run_kq("consume", "ev", "-p", "1", "-o", "-1", "--exec", f"cat >> {ran}")
    assert r.returncode == 0 and ran.read_bytes() == b"late\n"
    ran.unlink()
    assert run_kq("topic", "create", "jobs", "--compression", "gzip").returncode == 0
    assert run_kq("produce", "jobs", input="".join(f"job {i}\n" for i in range(12))).returncode == 0
    r = run_kq("consume", "jobs", "--share", "workers", "--exec", f"cat >> {ran}; echo >> {ran}", "--parallel", "2")
    assert r.returncode == 0, r.stderr
    assert sorted(x for x in ran.read_text().splitlines() if x) == sorted(f"job {i}" for i in range(12))
    # describe: the codec, bytes on disk and what they would be uncompressed
    d = json.loads(run_kq("topic", "describe", "ev", "--json").stdout)
    assert d["config"]["compression"] == "zstd"
    assert d["uncompressed_size"] > 5 * d["size"] and d["compression_ratio"] > 5
    assert d["size"] == sum(p["size"] for p in d["partitions"])
    assert b"\nsize\t" in run_kq("topic", "describe", "ev").stdout
    assert_verify_clean(run_kq)


def test_alter_changes_the_codec_of_new_batches_and_old_ones_stay_readable(run_kq, data_dir):
    assert run_kq("topic", "create", "t", "--compression", "gzip").returncode == 0
    assert run_kq("produce", "t", input="one\n").returncode == 0
    r = run_kq("topic", "alter", "t", "--compression", "lz4")
    assert r.returncode == 0 and b"compression=lz4" in r.stderr
    assert run_kq("produce", "t", input="two\n").returncode == 0
    assert run_kq("topic", "alter", "t", "--compression", "none").returncode == 0
    assert run_kq("produce", "t", input="three\n").returncode == 0
    assert stored_codecs(data_dir, "t") == [1, 3, 0]
    assert run_kq("consume", "t").stdout == b"one\ntwo\nthree\n"
    assert_verify_clean(run_kq)


def test_retention_trim_and_compaction_of_a_compressed_topic(run_kq, data_dir):
    assert run_kq("topic", "create", "kv", "--compression", "snappy", "--cleanup", "compact").returncode == 0
    assert run_kq("topic", "alter", "kv", "--segment-bytes", "4K").returncode == 0
    rng = random.Random(5)

    def value(round_: int, i: int) -> str:
        return f"v{round_}-{i}-" + f"{rng.getrandbits(512):0128x}"  # random: every batch fills a segment

    written: dict[str, str] = {}
    for round_, keys in enumerate([range(60), range(60), range(60), range(30), ["other"]]):
        lines = {f"k{i}" if i != "other" else i: value(round_, i) for i in keys}
        written.update(lines)
        assert (
            run_kq("produce", "kv", "-K", "\t", input="".join(f"{k}\t{v}\n" for k, v in lines.items())).returncode == 0
        )
    assert run_kq("topic", "alter", "kv", "--compression", "zstd").returncode == 0
    r = run_kq("maintain", "kv")
    assert r.returncode == 0 and b"superseded record(s)" in r.stderr
    got = dict(line.split("\t") for line in run_kq("consume", "kv", "-F", "%k\t%s\n").stdout.decode().splitlines())
    assert got == written
    codecs = stored_codecs(data_dir, "kv")
    assert 4 in codecs  # rewritten batches take the topic's codec of today
    assert_verify_clean(run_kq)
    end = end_offsets(data_dir, "kv")[0]
    assert run_kq("topic", "trim", "kv", "--before", str(end - 10)).returncode == 0
    assert len(run_kq("consume", "kv").stdout.splitlines()) <= 10

    assert run_kq("topic", "create", "old", "--compression", "lz4", "--segment-bytes", "4K").returncode == 0
    for _ in range(5):
        noise = f"{rng.getrandbits(6000):01500x}\n"  # does not compress: each batch fills a segment
        assert run_kq("produce", "old", input=noise * 4).returncode == 0
    assert run_kq("topic", "alter", "old", "--retention-bytes", "1").returncode == 0
    assert run_kq("maintain", "old").returncode == 0
    left = run_kq("consume", "old").stdout.splitlines()
    assert 0 < len(left) < 20
    assert_verify_clean(run_kq)


def test_replicate_copies_compressed_batches_byte_for_byte(run_kq, data_dir, tmp_path):
    assert run_kq("topic", "create", "ev", "--compression", "zstd").returncode == 0
    assert run_kq("produce", "ev", input=LINES).returncode == 0
    replica = str(tmp_path / "replica")
    assert run_kq("replicate", "ev", "--to", replica).returncode == 0
    assert directory_format(replica) == 3
    with open(segment_of(data_dir, "ev"), "rb") as a, open(segment_of(replica, "ev"), "rb") as b:
        assert a.read() == b.read()
    assert run_kq("consume", "ev", data=replica).stdout == LINES.encode()
    assert_verify_clean(run_kq, data=replica)


# ---------------------------------------------------------------- damage


def test_a_compressed_batch_that_does_not_inflate_is_damage_verify_reports_and_repairs(run_kq, data_dir):
    assert run_kq("topic", "create", "t", "--compression", "zstd").returncode == 0
    for word in ("first", "second", "third"):
        assert run_kq("produce", "t", input=f"{word}\n" * 100).returncode == 0
    path = segment_of(data_dir, "t")
    with open(path, "rb") as f:
        data = f.read()
    second = batchfmt.header_at(data, 0).size
    header = batchfmt.header_at(data, second)
    payload = data[second + batchfmt.HEADER_SIZE : second + header.size]
    rewrite_payload(path, second, b"\0\0\0\0" + payload[4:])  # no zstd frame, yet a valid checksum

    r = run_kq("consume", "t")
    assert r.returncode == 1 and b"does not decompress" in r.stderr and b"Traceback" not in r.stderr
    r = run_kq("verify")
    assert r.returncode != 0 and b"does not decompress" in r.stdout + r.stderr
    r = run_kq("verify", "--repair")
    assert r.returncode in (0, 1), r.stderr
    assert_verify_clean(run_kq)
    assert run_kq("consume", "t").stdout == b"first\n" * 100 + b"third\n" * 100


def test_a_small_batch_that_would_inflate_past_the_batch_limit_is_refused_not_inflated(run_kq, data_dir):
    assert run_kq("topic", "create", "t", "--compression", "zstd").returncode == 0
    assert run_kq("produce", "t", input="x\n").returncode == 0
    import zstandard

    bomb = zstandard.ZstdCompressor(level=1).compress(b"\0" * (batchfmt.MAX_BATCH_BYTES + 1024))
    assert len(bomb) < 10_000
    rewrite_payload(segment_of(data_dir, "t"), 0, bomb)
    r = run_kq("consume", "t")
    assert r.returncode == 1 and b"decompresses to more than" in r.stderr
    r = run_kq("verify")
    assert r.returncode != 0 and b"decompresses to more than" in r.stdout + r.stderr


# ---------------------------------------------------------------- kill -9


def test_kill_9_during_compressed_produce_loses_no_acknowledged_message(run_kq, data_dir):
    kills = 6
    assert run_kq("topic", "create", "t", "--segment-bytes", "16K", "--compression", "zstd").returncode == 0
    landed = produce_killed_in_a_loop(run_kq, data_dir, "t", random.Random(23), kills, every_kill_under_way=True)
    assert set(stored_codecs(data_dir, "t")) == {4}
    assert landed >= kills // 2


# ---------------------------------------------------------------- kq serve and the bridge


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def _kcat_values(bootstrap: str, topic: str) -> list[str]:
    r = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-e", "-q", "-f", "%s\n"], capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().splitlines()


def test_kafka_clients_produce_into_a_zstd_topic_and_a_producer_topic(server, run_kq, data_dir):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    futures = admin.create_topics(
        [
            NewTopic("z", 1, 1, config={"compression.type": "zstd"}),
            NewTopic("kept", 1, 1, config={"compression.type": "producer"}),
        ]
    )
    for f in futures.values():
        f.result(30)
    values = [f"event {i} " + "payload " * 5 for i in range(500)]
    for topic in ("z", "kept"):
        p = confluent_kafka.Producer(
            {"bootstrap.servers": server.bootstrap, "compression.type": "lz4", "linger.ms": 50}
        )
        for v in values:
            p.produce(topic, v.encode())
        assert p.flush(30) == 0
    assert directory_format(data_dir) == 3
    assert set(stored_codecs(data_dir, "z")) == {4}  # the topic's codec, whatever the client sent
    assert set(stored_codecs(data_dir, "kept")) == {3}  # the client's own (lz4)
    for topic in ("z", "kept"):
        assert run_kq("consume", topic).stdout.decode().splitlines() == values
        assert _kcat_values(server.bootstrap, topic) == values
    # kcat producing (snappy) into the zstd topic
    r = subprocess.run(
        ["kcat", "-b", server.bootstrap, "-P", "-t", "z", "-z", "snappy"], input=b"from kcat\n", capture_output=True
    )
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "z", "-o", "-1").stdout == b"from kcat\n"
    assert set(stored_codecs(data_dir, "z")) == {4}
    # kq itself as a Kafka client: a topic created with --compression, a producer's codec set with -X
    cluster = ["-b", server.bootstrap]
    assert run_kq(*cluster, "topic", "create", "viak", "--compression", "producer", data=None).returncode == 0
    lines = "".join(f"line {i} of a log that compresses well\n" for i in range(200))  # librdkafka sends
    r = run_kq(*cluster, "-X", "compression.type=gzip", "produce", "viak", input=lines, data=None)  # small ones raw
    assert r.returncode == 0, r.stderr
    assert run_kq("consume", "viak").stdout == lines.encode()
    assert set(stored_codecs(data_dir, "viak")) == {1}
    assert_verify_clean(run_kq)


def test_the_bridge_copies_a_compressed_topic_to_a_cluster_and_back(kq_serve_cluster, tmp_path):
    home = Place("dir", ["--data-dir", str(tmp_path / "home")], data_dir=str(tmp_path / "home"))
    back = Place("dir", ["--data-dir", str(tmp_path / "back")], data_dir=str(tmp_path / "back"))
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    t = cluster.name("packed")
    home.ok("topic", "create", t, "--compression", "zstd")
    home.ok("produce", t, input=LINES[:5000])
    url = f"kafka://{kq_serve_cluster.bootstrap}"
    home.ok("replicate", t, "--to", url)
    want = LINES[:5000].splitlines()
    assert [r["value"] for r in cluster.records(t)] == want
    back.ok("topic", "create", t, "--compression", "gzip")
    back.ok("replicate", t, "--from", url, "--to", back.data_dir)
    assert [r["value"] for r in back.records(t)] == want
    assert set(stored_codecs(back.data_dir, t)) == {1}


def test_a_killed_server_keeps_compressed_batches_intact(server, run_kq, data_dir):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    assert run_kq("topic", "create", "z", "--compression", "zstd").returncode == 0
    p = confluent_kafka.Producer({"bootstrap.servers": server.bootstrap, "acks": "all"})
    for i in range(200):
        p.produce("z", b"v%d" % i)
    assert p.flush(30) == 0
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    assert run_kq("consume", "z").stdout.splitlines() == [b"v%d" % i for i in range(200)]
    assert_verify_clean(run_kq)


def test_a_cluster_topics_producer_compression_leaves_a_bridged_directory_as_it_was(kq_serve_cluster, tmp_path):
    """Kafka's default compression.type (producer) means nothing to kq's own writers: copying such a
    topic into a directory keeps the directory's format, so an older kq still opens it."""
    back = Place("dir", ["--data-dir", str(tmp_path / "back")], data_dir=str(tmp_path / "back"))
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    t = cluster.name("kept")
    cluster.ok("topic", "create", t, "--compression", "producer")
    cluster.ok("produce", t, input="a\nb\n")
    back.ok("replicate", t, "--from", f"kafka://{kq_serve_cluster.bootstrap}", "--to", back.data_dir)
    assert [r["value"] for r in back.records(t)] == ["a", "b"]
    assert directory_format(back.data_dir) == 1
    assert json.loads(back.ok("topic", "describe", t, "--json"))["config"]["compression"] == "none"
