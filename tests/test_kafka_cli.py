"""The same kq command lines against a data directory, `kq serve` and Tansu (issue #15).

Each test runs once per place (tests/cluster_support.py): what it asserts
is what a user sees, whichever place the commands work on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cluster_support import (
    KQ,
    TANSU_LATEST,
    TANSU_NO_CREATE_PARTITIONS,
    TANSU_NO_DELETE_RECORDS,
    TANSU_TIMES,
    backends,
    clusters,
)

from kq.engine.partitioner import partition_for_key

T0 = 1_700_000_000_000  # timestamps the tests give records


def values(rows, partition=None):
    return [r["value"] for r in rows if partition is None or r["partition"] == partition]


# ---------------------------------------------------------------- topics


@backends()
def test_topic_create_list_describe_alter_delete(place):
    t = place.name("topics")
    r = place.kq("topic", "create", t, "--partitions", "3", "--retention", "1d")
    assert r.returncode == 0, r.stderr
    assert f"created topic '{t}' with 3 partitions".encode() in r.stderr
    again = place.kq("topic", "create", t)
    assert again.returncode == 1 and f"topic '{t}' already exists".encode() in again.stderr
    assert place.kq("topic", "create", t, "--if-not-exists").returncode == 0
    assert t in place.ok("topic", "list").decode().split()
    assert {"name": t, "partitions": 3} in json.loads(place.ok("topic", "list", "--json"))

    described = json.loads(place.ok("topic", "describe", t, "--json"))
    assert described["name"] == t
    assert [(p["partition"], p["start_offset"], p["end_offset"]) for p in described["partitions"]] == [
        (0, 0, 0),
        (1, 0, 0),
        (2, 0, 0),
    ]
    assert described["config"]["retention_ms"] == 86_400_000
    plain = place.ok("topic", "describe", t).decode()
    assert plain.startswith(f"topic\t{t}\n") and "partition\tstart_offset\tend_offset\tsize\n" in plain

    r = place.kq("topic", "alter", t, "--retention", "2d", "--cleanup", "compact")
    assert r.returncode == 0, r.stderr
    assert b"retention_ms=2d, cleanup=compact" in r.stderr
    config = json.loads(place.ok("topic", "describe", t, "--json"))["config"]
    assert (config["retention_ms"], config["cleanup"]) == (172_800_000, "compact")

    assert place.kq("topic", "delete", t).returncode == 0
    gone = place.kq("topic", "describe", t)
    assert gone.returncode == 1 and gone.stderr == f"kq: error: topic '{t}' does not exist\n".encode()
    assert place.kq("topic", "delete", t).returncode == 1
    assert place.kq("topic", "delete", t, "--if-exists").returncode == 0
    assert place.kq("topic", "create", "bad name").returncode == 2


@backends(tansu=TANSU_LATEST)
def test_describe_shows_each_partitions_offsets(place):
    t = place.name("described")
    place.ok("topic", "create", t, "--partitions", "2")
    place.ok("produce", t, "-p", "1", input="a\n")
    place.ok("produce", t, "-p", "1", input="b\nc\nd\n")
    rows = json.loads(place.ok("topic", "describe", t, "--json"))["partitions"]
    assert [(p["start_offset"], p["end_offset"]) for p in rows] == [(0, 0), (0, 4)]
    assert place.ok("offsets", "show", t).decode().splitlines() == [
        "partition\tstart_offset\tend_offset",
        "0\t0\t0",
        "1\t0\t4",
    ]


@backends()
def test_a_group_timeout_counts_from_the_assignment_not_the_join(place):
    # Tansu takes about 3 s to answer a JoinGroup (Kafka waits group.initial.rebalance.delay.ms, 3 s):
    # `consume -g --timeout 1` (cron) must still read what is there.
    t, g = place.name("joined"), place.name("g")
    place.ok("produce", t, input="".join(f"{n}\n" for n in range(20)))
    r = place.kq("consume", t, "-g", g, "--timeout", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(n).encode() for n in range(20)]


@backends(tansu=TANSU_NO_DELETE_RECORDS)
def test_topic_trim_moves_the_start_offset(place):
    if place.kind == "tansu":
        pytest.skip(TANSU_NO_DELETE_RECORDS)  # it would take the shared broker down with it
    t = place.name("trimmed")
    place.ok("produce", t, input="".join(f"{i}\n" for i in range(5)))
    rows = json.loads(place.ok("topic", "trim", t, "--before", "3", "--json"))
    assert [(r["partition"], r["start_offset"]) for r in rows] == [(0, 3)]
    assert set(rows[0]) == {"partition", "start_offset", "segments_deleted", "bytes_reclaimed"}
    assert values(place.records(t)) == ["3", "4"]
    assert values(place.records(t, "-o", "1")) == ["3", "4"]  # below the start: from the start


# ---------------------------------------------------------------- produce


@backends()
def test_every_produce_input_mode(place, tmp_path):
    t = place.name("modes")
    place.ok("topic", "create", t, "--partitions", "3")
    place.ok("produce", t, "-p", "0", input="a\nb\n")
    place.ok("produce", t, "-p", "1", "-D", ";", input="c;d;")
    place.ok("produce", t, "-p", "2", "-0", input="e\0f\0")
    place.ok("produce", t, "-k", "key-g", input="g\n")
    place.ok("produce", t, "-K", ":", input="key-h:h\nkey-i:i\n")
    place.ok("produce", t, "-p", "0", "-H", "h1=x", "-H", "h2=y", input="j\n")
    lines = [
        {"partition": 1, "key": "kj", "value": "json-1", "headers": [["a", "1"], ["a", "2"]], "timestamp": T0},
        {"partition": 2, "key": None, "value": None, "timestamp": T0 + 1},
    ]
    place.ok("produce", t, "--json", input="".join(json.dumps(x) + "\n" for x in lines))
    place.ok("produce", t, "-p", "1", "-Z", input="\n")
    place.ok("produce", t, "--tombstone", "-k", "key-gone")
    file = tmp_path / "messages"
    file.write_bytes(b"from-file-1\nfrom-file-2\n")
    place.ok("produce", t, "-p", "2", "--file", str(file))

    rows = place.records(t)
    by_value = {r["value"]: r for r in rows if r["value"] is not None}
    assert values(rows, 0)[:2] == ["a", "b"] and values(rows, 1)[:2] == ["c", "d"] and values(rows, 2)[:2] == ["e", "f"]
    assert (by_value["g"]["key"], by_value["g"]["partition"]) == ("key-g", partition_for_key(b"key-g", 3))
    for k in ("h", "i"):
        assert (by_value[k]["key"], by_value[k]["partition"]) == (f"key-{k}", partition_for_key(f"key-{k}".encode(), 3))
    assert by_value["j"]["headers"] == [["h1", "x"], ["h2", "y"]] and by_value["j"]["partition"] == 0
    assert by_value["json-1"]["headers"] == [["a", "1"], ["a", "2"]]
    assert (by_value["json-1"]["partition"], by_value["json-1"]["timestamp"]) == (1, T0)
    tombstones = sorted((r["partition"], r["key"] or "") for r in rows if r["value"] is None)
    assert tombstones == sorted([(2, ""), (1, ""), (partition_for_key(b"key-gone", 3), "key-gone")])
    assert [r["timestamp"] for r in rows if r["value"] is None and r["partition"] == 2] == [T0 + 1]
    assert values(rows, 2)[-2:] == ["from-file-1", "from-file-2"]
    assert len(rows) == 16
    # Offsets are dense per partition, from 0.
    for p in range(3):
        assert [r["offset"] for r in rows if r["partition"] == p] == list(range(len(values(rows, p))))


@backends(tansu=TANSU_NO_CREATE_PARTITIONS)
def test_produce_json_grows_the_topic_it_created_to_the_partitions_its_input_names(place):
    t = place.name("grown")
    early = "".join(json.dumps({"partition": 0, "value": f"{i:0100d}"}) + "\n" for i in range(15_000))  # > 1 MB
    r = place.kq("produce", t, "--json", input=early + json.dumps({"partition": 3, "value": "late"}) + "\n")
    assert r.returncode == 0, r.stderr
    assert b"created topic" in r.stderr and b"grew topic" in r.stderr and b"to 4 partitions" in r.stderr
    assert place.ok("consume", t, "-p", "3") == b"late\n"


@backends()
def test_keys_land_where_the_data_directory_puts_them(place, tmp_path):
    """murmur2, as Kafka's Java client: the cluster backend sets librdkafka's murmur2_random."""
    t = place.name("placed")
    keyed = "".join(f"customer-{i}:order {i}\n" for i in range(200))
    place.ok("topic", "create", t, "--partitions", "7")
    place.ok("produce", t, "-K", ":", input=keyed)
    here = sorted(place.ok("consume", t, "-F", "%k %p\n").decode().splitlines())
    reference = subprocess.run(
        KQ + ["--data-dir", str(tmp_path / "reference"), "produce", "r", "--partitions", "7", "-K", ":"],
        input=keyed.encode(),
        capture_output=True,
    )
    assert reference.returncode == 0
    local = subprocess.run(
        KQ + ["--data-dir", str(tmp_path / "reference"), "consume", "r", "-F", "%k %p\n"], capture_output=True
    )
    assert here == sorted(local.stdout.decode().splitlines())
    assert len({line.split()[1] for line in here}) == 7


@backends()
def test_a_refused_record_fails_the_produce_with_the_reason(place):
    t = place.name("refused")
    place.ok("topic", "create", t)
    if place.is_cluster:  # the cluster's client refuses records above message.max.bytes
        r = place.kq("-X", "message.max.bytes=2000", "produce", t, input="small\n" + "x" * 3000 + "\n")
    else:  # a data directory, a message above its batch limit
        r = place.kq("produce", t, "-D", ";", input="small;" + "x" * (64 * 1024 * 1024 + 1))
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert err.startswith("kq: error: ") and err.count("\n") == 1, err
    assert err.endswith("; 1 record was written before the error\n"), err
    assert values(place.records(t)) == ["small"]


# ---------------------------------------------------------------- consume


def _offsets_topic(place, partitions=2, per_partition=10) -> str:
    t = place.name("offsets")
    place.ok("topic", "create", t, "--partitions", str(partitions))
    for p in range(partitions):
        lines = [
            json.dumps({"partition": p, "value": f"p{p}-{i}", "timestamp": T0 + i * 1000}) for i in range(per_partition)
        ]
        place.ok("produce", t, "--json", input="\n".join(lines) + "\n")
    return t


@backends()
def test_consume_offsets_partitions_counts_and_ranges(place):
    t = _offsets_topic(place)
    assert len(place.records(t)) == 20
    assert values(place.records(t, "-o", "beginning", "-p", "1")) == [f"p1-{i}" for i in range(10)]
    assert values(place.records(t, "-o", "7", "-p", "0")) == ["p0-7", "p0-8", "p0-9"]
    assert values(place.records(t, "-o", "2:4")) == ["p0-2", "p0-3", "p1-2", "p1-3"]
    assert values(place.records(t, "-p", "1", "-n", "3")) == ["p1-0", "p1-1", "p1-2"]
    assert place.ok("consume", t, "-o", "30") == b""  # past the end: nothing, at once
    assert place.ok("consume", t, "-p", "0", "-o", "8", "-F", "%p:%o:%s:%T\n").decode().splitlines() == [
        f"0:8:p0-8:{T0 + 8000}",
        f"0:9:p0-9:{T0 + 9000}",
    ]
    assert place.kq("consume", t, "-p", "5").returncode == 2


@backends(tansu=TANSU_LATEST)
def test_consume_from_the_end(place):
    t = _offsets_topic(place)
    assert values(place.records(t, "-o", "-2")) == ["p0-8", "p0-9", "p1-8", "p1-9"]
    assert place.ok("consume", t, "-o", "end") == b""
    assert values(place.records(t, "-o", "-3:-1", "-p", "1")) == ["p1-7", "p1-8"]


@backends(tansu=TANSU_TIMES)
def test_consume_from_a_time(place):
    t = _offsets_topic(place)
    assert values(place.records(t, "-o", f"@{T0 + 7500}")) == ["p0-8", "p0-9", "p1-8", "p1-9"]
    assert values(place.records(t, "-p", "0", "-o", f"@{T0 + 2000}:@{T0 + 4000}")) == ["p0-2", "p0-3"]


@backends()
def test_follow_and_timeout(place):
    t = place.name("follow")
    place.ok("topic", "create", t)
    r = place.kq("consume", t, "--timeout", "0.5")
    assert r.returncode == 3 and r.stdout == b"" and b"no message arrived within 0.5 s" in r.stderr
    follower = place.spawn("consume", t, "-f")
    try:
        time.sleep(0.5)  # (not a synchronisation: the record is produced whether or not it has started)
        place.ok("produce", t, input="late\n")
        line = follower.stdout.readline()
        assert line == b"late\n"
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err


# ---------------------------------------------------------------- groups


@backends(tansu=TANSU_LATEST)
def test_group_commits_what_was_written_and_resumes_there(place):
    t, g = place.name("grouped"), place.name("g")
    place.ok("topic", "create", t, "--partitions", "2")
    place.ok("produce", t, "-p", "0", input="a\nb\nc\n")
    place.ok("produce", t, "-p", "1", input="d\ne\nf\n")
    first = place.ok("consume", t, "-g", g, "-n", "2").decode().split()
    assert len(first) == 2
    shown = json.loads(place.ok("offsets", "show", t, "-g", g, "--json"))
    assert sum(r["committed"] or 0 for r in shown) == 2
    assert sum(r["lag"] for r in shown) == 4
    peek = place.ok("consume", t, "-g", g, "--no-commit").decode().split()
    rest = place.ok("consume", t, "-g", g).decode().split()
    assert sorted(peek) == sorted(rest) and sorted(first + rest) == list("abcdef")
    assert place.ok("consume", t, "-g", g) == b""
    described = json.loads(place.ok("group", "describe", g, "--json"))
    assert [(r["partition"], r["committed"], r["lag"]) for r in described["partitions"]] == [(0, 3, 0), (1, 3, 0)]
    assert g in place.ok("group", "list").decode().split()


@backends(tansu=TANSU_NO_DELETE_RECORDS)
def test_a_group_behind_a_trim_resumes_at_the_start_with_a_warning(place):
    if place.kind == "tansu":
        pytest.skip(TANSU_NO_DELETE_RECORDS)  # it would take the shared broker down with it
    t, g = place.name("trimmed-group"), place.name("slow")
    place.ok("produce", t, input="0\n1\n2\n3\n4\n")
    place.ok("consume", t, "-g", g, "-n", "1")
    place.ok("topic", "trim", t, "--before", "3")
    r = place.kq("consume", t, "-g", g)
    assert r.returncode == 0 and r.stdout == b"3\n4\n"
    assert r.stderr.decode() == (
        f"kq: warning: group '{g}' resumes {t}/0 at offset 3 (reset: earliest): "
        "2 message(s) after its committed offset 1 were deleted by retention or trim\n"
    )
    assert place.ok("consume", t, "-g", g) == b""


@backends()
def test_exec_commits_only_what_the_command_accepted(place, tmp_path):
    t, g = place.name("jobs"), place.name("mailer")
    place.ok("topic", "create", t)
    place.ok("produce", t, input="1\n2\nbad\n")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nif grep -q bad; then exit 7; fi\n")
    script.chmod(0o755)
    r = place.kq("consume", t, "-g", g, "--exec", str(script), "--batch", "1")
    assert r.returncode == 1 and b"exited with status 7" in r.stderr
    committed = json.loads(place.ok("offsets", "show", t, "-g", g, "--json"))
    assert [row["committed"] for row in committed] == [2]
    again = place.kq("consume", t, "-g", g, "--exec", "cat", "--batch", "10")
    assert again.returncode == 0 and again.stdout == b"bad\n"


@backends(tansu=TANSU_LATEST)
def test_reset_latest_starts_a_new_group_at_the_end(place):
    t, g = place.name("late"), place.name("late-group")
    place.ok("produce", t, input="old\nolder\n")
    assert place.ok("consume", t, "-g", g, "--reset", "latest") == b""
    place.ok("produce", t, input="new\n")
    assert place.ok("consume", t, "-g", g, "--reset", "latest") == b"new\n"


@backends(tansu=TANSU_LATEST)
def test_offsets_reset_every_form(place):
    g = place.name("billing")
    t = _offsets_topic(place)  # 10 records per partition, one second apart
    place.ok("consume", t, "-g", g)

    def committed():
        return [r["committed"] for r in json.loads(place.ok("offsets", "show", t, "-g", g, "--json"))]

    assert committed() == [10, 10]
    dry = json.loads(place.ok("offsets", "reset", t, "-g", g, "--to", "earliest", "--dry-run", "--json"))
    assert [(r["before"], r["after"]) for r in dry] == [(10, 0), (10, 0)] and committed() == [10, 10]
    place.ok("offsets", "reset", t, "-g", g, "--to", "earliest")
    assert committed() == [0, 0]
    place.ok("offsets", "reset", t, "-g", g, "--to", "+4")
    assert committed() == [4, 4]
    place.ok("offsets", "reset", t, "-g", g, "--to", "-1", "-p", "1")
    assert committed() == [4, 3]
    r = place.kq("offsets", "reset", t, "-g", g, "--to", "99", "-p", "0")
    assert r.returncode == 0 and b"partition 0: clamped to 10" in r.stderr
    place.ok("offsets", "reset", t, "-g", g, "--to", "latest", "-p", "1")
    assert committed() == [10, 10]
    assert values(place.records(t, "-g", g)) == []


@backends(tansu=TANSU_TIMES)
def test_offsets_reset_to_a_time(place):
    g = place.name("audit")
    t = _offsets_topic(place)
    place.ok("offsets", "reset", t, "-g", g, "--to", f"@{T0 + 6500}")
    assert values(place.records(t, "-g", g)) == ["p0-7", "p0-8", "p0-9", "p1-7", "p1-8", "p1-9"]


TANSU_NO_MEMBERS = "Tansu 0.6: DescribeGroups answers a stable group with an empty member list"


@backends(tansu=TANSU_NO_MEMBERS)
def test_group_list_describe_delete_and_live_members(place):
    t, g, busy = place.name("members"), place.name("done"), place.name("busy")
    place.ok("produce", t, input="x\n")
    place.ok("consume", t, "-g", g)
    assert g in place.ok("group", "list").decode().split()
    assert [r["group"] for r in json.loads(place.ok("group", "list", "--json")) if r["group"] == g] == [g]

    follower = place.spawn("consume", t, "-g", busy, "-f", "--reset", "earliest")
    try:
        assert follower.stdout.readline() == b"x\n"  # it has joined and holds the partition
        refused = place.kq("group", "delete", busy)
        assert refused.returncode == 1 and b"live member" in refused.stderr
        refused = place.kq("offsets", "reset", t, "-g", busy, "--to", "earliest")
        assert refused.returncode == 1 and b"live member" in refused.stderr
        members = json.loads(place.ok("group", "describe", busy, "--json"))["members"]
        assert [(m["topic"], m["partitions"]) for m in members] == [(t, [0])]
        # The same keys everywhere (null where a place does not know), so a script parses either.
        assert set(members[0]) >= {"member", "host", "pid", "client_id", "joined_at", "topic", "partitions"}
        member = next(
            line for line in place.ok("group", "describe", busy).decode().splitlines() if line.startswith("member\t")
        )
        pid = member.split("\t")[3]
        assert pid == "-" if place.is_cluster else pid == str(follower.pid)  # a cluster's members have no pid
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.communicate(timeout=30)
    assert follower.returncode == 0

    assert place.kq("group", "delete", g).returncode == 0
    assert g not in place.ok("group", "list").decode().split()
    gone = place.kq("group", "delete", g)
    assert gone.returncode == 1 and gone.stderr == f"kq: error: group '{g}' does not exist\n".encode()


# ---------------------------------------------------------------- cluster only


@clusters
def test_commands_without_a_cluster_meaning_say_so(place):
    for command in (["maintain"], ["verify"], ["bench"]):
        r = place.kq(*command)
        assert r.returncode == 2
        assert r.stderr.decode() == (
            f"kq: error: kq {command[0]} works on a kq data directory; it has no meaning on "
            f"Kafka cluster {place.bootstrap}\n"
        )
    for command in (["consume", "t", "--share", "s"], ["ack", "t", "--share", "s", "0:1:abcdefabcdef"]):
        r = place.kq(*command)
        assert r.returncode == 2
        assert r.stderr.decode() == (
            f"kq: error: a share group works on a kq data directory; it has no meaning on Kafka cluster {place.bootstrap}\n"
        )


@clusters
def test_tab_completion_asks_the_cluster(place):
    t, g = place.name("completed"), place.name("completer")
    place.ok("topic", "create", t, "--partitions", "3")
    place.ok("produce", t, input="x\n")
    place.ok("consume", t, "-g", g)

    def complete(words: str, env: dict | None = None) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        full = {**os.environ, "_KQ_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        r = subprocess.run(KQ, env={**full, **(env or {})}, capture_output=True, timeout=30)
        assert r.stderr == b""
        return r.stdout.decode().split()

    b = place.bootstrap
    assert t in complete(f"kq -b {b} consume ")
    assert complete(f"kq -b {b} consume {t[:-2]}") == [
        c for c in complete(f"kq -b {b} consume ") if c.startswith(t[:-2])
    ]
    assert complete(f"kq -b {b} consume {t} -p ") == ["0", "1", "2"]
    assert g in complete(f"kq -b {b} consume {t} -g ")
    assert t in complete("kq consume ", env={"KQ_BROKERS": b})
    started = time.monotonic()
    assert complete("kq -b 127.0.0.1:9 consume ") == []  # nothing listens there
    assert time.monotonic() - started < 5


def test_the_library_switches_with_one_argument(kq_serve_cluster, tmp_path):
    pytest.importorskip("confluent_kafka")
    code = (
        "import kq, sys\n"
        "for backend in (kq.open_backend(sys.argv[1]), kq.open_backend(brokers=sys.argv[2])):\n"
        "    with backend:\n"
        "        backend.create_topic(sys.argv[3], 2)\n"
        "        p = backend.producer(sys.argv[3]); p.send_keyed([b'k'], [b'v']); p.close()\n"
        "        print(backend.description.split()[0], [s.batch.values for s in next(backend.reader(sys.argv[3]).rounds())])\n"
    )
    topic = f"lib-{os.getpid()}"
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data"), kq_serve_cluster.bootstrap, topic], capture_output=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["data [[b'v']]", "Kafka [[b'v']]"]


def test_brokers_without_confluent_kafka_says_what_to_install(tmp_path):
    fake = tmp_path / "confluent_kafka"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(KQ + ["-b", "127.0.0.1:9092", "topic", "list"], capture_output=True, env=env)
    assert r.returncode == 1
    assert r.stderr.decode() == (
        "kq: error: a Kafka cluster needs confluent-kafka: pip install 'kq-log[kafka]' "
        "(from a checkout: pip install -e '.[kafka]')\n"
    )


def test_a_data_directory_never_loads_a_kafka_client(tmp_path):
    """`import kq`, and kq's commands on a data directory, leave confluent-kafka unloaded."""
    probe = (
        "import runpy, sys, atexit\n"
        "atexit.register(lambda: print('LOADED' if any(m.split('.')[0] == 'confluent_kafka' for m in sys.modules) "
        "else 'CLEAN', file=sys.stderr))\n"
        "sys.argv = ['kq'] + sys.argv[1:]\n"
        "runpy.run_module('kq', run_name='__main__')\n"
    )
    data = str(tmp_path / "data")
    for args, stdin in (
        (["produce", "t", "-K", ":"], b"k:v\n"),
        (["consume", "t", "-g", "g"], b""),
        (["topic", "describe", "t"], b""),
        (["offsets", "show", "t"], b""),
        (["group", "list"], b""),
    ):
        r = subprocess.run([sys.executable, "-c", probe, "--data-dir", data, *args], input=stdin, capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stderr.decode().strip().splitlines()[-1] == "CLEAN", (args, r.stderr)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kq, kq.backends, sys; kq.open_backend; print(sorted(m for m in sys.modules if 'confluent' in m))",
        ],
        capture_output=True,
    )
    assert r.stdout == b"[]\n", r.stderr


def test_settings_come_from_x_and_a_file_and_secrets_never_show(kq_serve_cluster, tmp_path):
    pytest.importorskip("confluent_kafka")
    b = kq_serve_cluster.bootstrap
    secret = "hunter2-secret-value"
    settings = tmp_path / "client.properties"
    settings.write_text(f"# a comment\n\nclient.id = from-file\nsasl.password={secret}\n")
    r = subprocess.run(
        KQ + ["-b", b, "--kafka-config", str(settings), "-X", "client.id=kq-test", "topic", "list"], capture_output=True
    )
    assert r.returncode == 0, r.stderr
    # A bad setting: the error names it, never a secret's value.
    r = subprocess.run(
        KQ + ["-b", b, "--kafka-config", str(settings), "-X", "no.such.setting=1", "topic", "list"], capture_output=True
    )
    assert r.returncode == 2 and b"no.such.setting" in r.stderr and secret.encode() not in r.stderr
    r = subprocess.run(KQ + ["-b", b, "-X", f"sasl.password{secret}", "topic", "list"], capture_output=True)
    assert r.returncode == 2 and secret.encode() not in r.stderr and b"-X #1" in r.stderr
    bad_file = tmp_path / "bad.properties"
    bad_file.write_text(f"ssl.key.password {secret}\n")
    r = subprocess.run(KQ + ["-b", b, "--kafka-config", str(bad_file), "topic", "list"], capture_output=True)
    assert r.returncode == 2 and secret.encode() not in r.stderr and f"line 1 of {bad_file}".encode() in r.stderr
    env = {**os.environ, "KQ_BROKERS": f"{b}", "KQ_KAFKA_CONFIG": str(settings)}
    for args in (["--help"], ["consume", "--help"]):
        r = subprocess.run(KQ + args, capture_output=True, env=env)
        assert r.returncode == 0 and secret.encode() not in r.stdout and str(settings).encode() not in r.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["topic", "list"],
        ["group", "list"],
        ["group", "list", "--json"],
        ["group", "describe", "g"],
        ["group", "delete", "g"],
    ],
)
def test_an_unreachable_cluster_is_one_error_line(tmp_path, command):
    # Never an empty answer: a cron job must tell a cluster that is down from one without groups.
    pytest.importorskip("confluent_kafka")
    started = time.monotonic()
    r = subprocess.run(KQ + ["-b", "127.0.0.1:9", "-X", "socket.timeout.ms=1500", *command], capture_output=True)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.decode().startswith("kq: error: Kafka cluster 127.0.0.1:9: cannot be reached")
    assert r.stderr.count(b"\n") == 1
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "args,message",
    [
        (["-b", "127.0.0.1:notaport"], "'127.0.0.1:notaport' is not a broker list: HOST:PORT[,HOST:PORT...]"),
        (["-b", "127.0.0.1:99999"], "'127.0.0.1:99999' is not a broker list: HOST:PORT[,HOST:PORT...]"),
        (["-b", "a:1,,b:2"], "'a:1,,b:2' is not a broker list: HOST:PORT[,HOST:PORT...]"),
        (
            ["-b", "127.0.0.1:9", "-X", "socket.timeout.ms=abc"],
            "Kafka cluster 127.0.0.1:9: bad client setting: socket.timeout.ms must be a number of milliseconds",
        ),
        (
            ["-b", "127.0.0.1:9", "-X", "socket.timeout.ms=5"],
            'Kafka cluster 127.0.0.1:9: bad client setting: Configuration property "socket.timeout.ms" value 5 is '
            "outside allowed range 10..300000",
        ),
    ],
)
def test_a_malformed_broker_list_or_setting_is_a_usage_error_at_once(args, message):
    pytest.importorskip("confluent_kafka")
    started = time.monotonic()
    r = subprocess.run(KQ + [*args, "topic", "list"], capture_output=True)
    assert (r.returncode, r.stderr.decode()) == (2, f"kq: error: {message}\n")
    assert time.monotonic() - started < 5, "it waited for a cluster instead of checking the setting"


@pytest.mark.parametrize("args", [["-X", "novalue"], ["-X", "client.id=x"], ["--kafka-config", "/dev/null"]])
@pytest.mark.parametrize("command", [["topic", "list"], ["replicate", "t", "--to", "REPLICA"]])
def test_client_settings_without_a_cluster_are_a_usage_error(run_kq, tmp_path, args, command):
    # Ignoring them would run a command meant for a cluster against the local directory.
    command = [str(tmp_path / "replica") if a == "REPLICA" else a for a in command]
    run_kq("produce", "t", input="a\n")
    r = run_kq(*args, *command)
    assert (r.returncode, r.stdout) == (2, b""), r.stderr
    assert r.stderr.startswith(f"kq: error: {args[0]} sets Kafka client settings, but no cluster is named".encode())
    # A settings file from the environment is a default for when a cluster is named: not an error.
    assert run_kq("topic", "list", env={"KQ_KAFKA_CONFIG": "/dev/null"}).returncode == 0


def test_an_unknown_client_setting_is_a_usage_error_for_the_bridge_too(run_kq, tmp_path):
    pytest.importorskip("confluent_kafka")
    run_kq("produce", "t", input="a\n")
    for args in (
        ["-X", "bogus.setting=1", "replicate", "t", "--to", "kafka://127.0.0.1:9"],
        ["-b", "127.0.0.1:9", "-X", "bogus.setting=1", "replicate", "t", "--to", str(tmp_path / "replica")],
        ["-b", "127.0.0.1:9", "-X", "bogus.setting=1", "topic", "list"],
    ):
        r = run_kq(*args, timeout=20)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.decode() == (
            'kq: error: Kafka cluster 127.0.0.1:9: bad client setting: No such configuration property: "bogus.setting"\n'
        )


def test_the_bridges_kafka_url_works_as_a_broker_list(kq_serve_cluster):
    r = subprocess.run(KQ + ["-b", f"kafka://{kq_serve_cluster.bootstrap}", "topic", "list"], capture_output=True)
    assert r.returncode == 0, r.stderr


@backends()
def test_exec_batches_hold_up_to_batch_records_whatever_the_producer_batches(place, tmp_path):
    t, g = place.name("events"), place.name("runner")
    place.ok("topic", "create", t)
    for i in range(8):  # eight producer runs: eight stored batches of one record each
        place.ok("produce", t, input=f"m{i}\n")
    log = tmp_path / "runs"
    cmd = f'echo "$KQ_OFFSET $KQ_LAST_OFFSET $(tr "\\n" " ")" >> {log}'
    place.ok("consume", t, "-g", g, "--batch", "3", "--exec", cmd)
    runs = [line.split() for line in log.read_text().splitlines()]
    assert [v for run in runs for v in run[2:]] == [f"m{i}" for i in range(8)]
    for first, last, *values in runs:
        assert 1 <= len(values) <= 3 and int(last) - int(first) + 1 == len(values)
    if not place.is_cluster:  # a data directory reads all eight in one round
        assert [len(run) - 2 for run in runs] == [3, 3, 2]
    log.unlink()
    place.ok("consume", t, "-g", place.name("all"), "--batch", "100", "--exec", cmd)
    if not place.is_cluster:
        assert log.read_text() == "0 7 m0 m1 m2 m3 m4 m5 m6 m7 \n"
