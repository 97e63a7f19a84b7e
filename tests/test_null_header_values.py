"""A header whose value is null stays null, distinct from an empty value, as in Kafka.

Through kq serve (a Kafka client's header), the stored format, `consume --json`
(null), `-F %h` (NULL, as kcat prints it), `produce --json` and `-H NAME`,
replicate and the bridge. A directory that holds one is format 2, so that an
older kq refuses it whole instead of failing on (or misreading) the record.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from cluster_support import Place
from serve_support import KqServer

HEADERS = [("gone", None), ("empty", b""), ("set", b"x"), ("gone", None)]
AS_JSON = [["gone", None], ["empty", ""], ["set", "x"], ["gone", None]]


def directory_format(data_dir: str) -> int:
    with open(os.path.join(data_dir, "kq.json")) as f:
        return json.load(f)["format"]


def json_rows(run, *args) -> list[dict]:
    r = run("consume", *args, "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture
def server(data_dir):
    s = KqServer(data_dir)
    yield s
    s.kill()


def test_a_null_header_value_from_a_kafka_client_reads_back_null_everywhere(server, run_kq, data_dir):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    p = confluent_kafka.Producer({"bootstrap.servers": server.bootstrap})
    p.produce("t", b"v", headers=HEADERS)
    assert p.flush(30) == 0

    assert [r["headers"] for r in json_rows(run_kq, "t")] == [AS_JSON]
    assert run_kq("consume", "t", "-F", "%h\n").stdout == b"gone=NULL,empty=,set=x,gone=NULL\n"
    assert directory_format(data_dir) == 2

    c = confluent_kafka.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "g", "enable.auto.commit": False})
    try:
        c.assign([confluent_kafka.TopicPartition("t", 0, confluent_kafka.OFFSET_BEGINNING)])
        got = c.consume(num_messages=1, timeout=20)
    finally:
        c.close()
    assert len(got) == 1 and got[0].error() is None
    assert got[0].headers() == HEADERS

    kcat = subprocess.run(
        ["kcat", "-b", server.bootstrap, "-C", "-t", "t", "-e", "-q", "-f", "%h\n"], capture_output=True, timeout=60
    )
    assert kcat.stdout == b"gone=NULL,empty=,set=x,gone=NULL\n"  # what kq's -F %h prints


def test_json_and_header_options_take_null_and_only_then_raise_the_directory_format(run_kq, data_dir):
    line = {"value": "v", "headers": [["plain", "1"]]}
    assert run_kq("produce", "t", "--json", input=json.dumps(line) + "\n").returncode == 0
    assert run_kq("produce", "t", "-H", "plain=", input="w\n").returncode == 0
    assert directory_format(data_dir) == 1  # what every kq opens: nothing here needs more

    line = {"value": "v", "headers": AS_JSON}
    assert run_kq("produce", "t", "--json", input=json.dumps(line) + "\n").returncode == 0
    assert run_kq("produce", "t", "-H", "gone", "-H", "empty=", input="w\n").returncode == 0
    rows = json_rows(run_kq, "t")
    assert [r["headers"] for r in rows] == [[["plain", "1"]], [["plain", ""]], AS_JSON, [["gone", None], ["empty", ""]]]
    assert directory_format(data_dir) == 2

    binary = {"value": "v", "headers": [["b", "/w=="], ["n", None]], "headers_encoding": "base64"}
    assert run_kq("produce", "b", "--json", input=json.dumps(binary) + "\n").returncode == 0
    (row,) = json_rows(run_kq, "b")
    assert row["headers"] == [["b", "/w=="], ["n", None]] and row["headers_encoding"] == "base64"


def test_replicate_keeps_null_header_values_and_the_format_they_need(run_kq, data_dir, tmp_path):
    line = {"value": "v", "headers": AS_JSON}
    assert run_kq("produce", "t", "--json", input=json.dumps(line) + "\n").returncode == 0
    replica = str(tmp_path / "replica")
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    assert directory_format(replica) == 2
    again = run_kq("consume", "t", "--json", data=replica)
    assert [json.loads(x)["headers"] for x in again.stdout.splitlines()] == [AS_JSON]


def test_the_bridge_keeps_null_header_values_both_ways(kq_serve_cluster, tmp_path):
    home = Place("dir", ["--data-dir", str(tmp_path / "home")], data_dir=str(tmp_path / "home"))
    back = Place("dir", ["--data-dir", str(tmp_path / "back")], data_dir=str(tmp_path / "back"))
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    t = cluster.name("nulls")
    line = {"value": "v", "headers": AS_JSON}
    home.ok("produce", t, "--json", input=json.dumps(line) + "\n")
    url = f"kafka://{kq_serve_cluster.bootstrap}"
    home.ok("replicate", t, "--to", url)
    assert [r["headers"] for r in cluster.records(t)] == [AS_JSON]
    back.ok("replicate", t, "--from", url, "--to", back.data_dir)
    assert [r["headers"] for r in back.records(t)] == [AS_JSON]
    assert directory_format(back.data_dir) == 2
    assert home.kq("replicate", t, "--to", url, "--verify").returncode == 0
