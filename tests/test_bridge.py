"""The bridge: `kq replicate` between a data directory and a Kafka cluster (kq serve, Tansu).

What a user sees: the records (partition, key, value, headers, timestamp)
and the groups' positions arrive, exactly once, however often a copy is
killed; a rerun copies only what is new; --verify compares both sides.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import time

import pytest
from cluster_support import TANSU_SETTINGS, Place, backends
from conftest import KQ as KQ_BRIDGE
from conftest import wait_for

T0 = 1_700_000_000_000


def local(tmp_path, name: str = "data") -> Place:
    path = str(tmp_path / name)
    return Place("dir", ["--data-dir", path], data_dir=path)


def shape(rows) -> list[tuple]:
    """What a copy keeps of each record, in order per partition."""
    return [(r["partition"], r["key"], r["value"], r["headers"], r["timestamp"]) for r in rows]


def fill(place: Place, topic: str, n: int, partitions: int = 3, start: int = 0) -> None:
    lines = []
    for i in range(start, start + n):
        record = {"partition": i % partitions, "key": f"k{i % 7}", "value": f"record {i}", "timestamp": T0 + i}
        if i % 3 == 0:
            record["headers"] = [["trace", f"t{i}"], ["trace", "again"]]
        if i % 11 == 0:
            record["value"] = None
        lines.append(json.dumps(record))
    if partitions and not place.kq("topic", "describe", topic).returncode == 0:
        place.ok("topic", "create", topic, "--partitions", str(partitions), "--retention", "30d")
    place.ok("produce", topic, "--json", input="\n".join(lines) + "\n")


def lines(output: bytes) -> list[bytes]:
    """A consume's output lines, in an order that does not depend on which partition came first."""
    return sorted(output.splitlines())


def committed(place: Place, topic: str, group: str) -> dict[int, int]:
    rows = json.loads(place.ok("offsets", "show", topic, "-g", group, "--json"))
    return {r["partition"]: r["committed"] for r in rows if r["committed"] is not None}


@backends(["serve", "tansu"])
def test_a_topic_and_its_group_move_to_a_cluster_and_back(place, tmp_path):
    home, back = local(tmp_path), local(tmp_path, "back")
    t, g = place.name("orders"), place.name("billing")
    url = f"kafka://{place.bootstrap}"
    fill(home, t, 40)
    home.ok("consume", t, "-g", g, "-n", "10")

    # The cluster's -X settings go with the commands that reach it, not with the directory's own.
    bridge = home.plus(place.client_args)
    r = bridge.kq("replicate", t, "--to", url, "--groups")
    assert r.returncode == 0, r.stderr
    assert f"{t}/0: copied 14 records".encode() in r.stderr
    assert shape(place.records(t)) == shape(home.records(t))
    assert committed(place, t, g) == committed(home, t, g)
    assert json.loads(place.ok("topic", "describe", t, "--json"))["config"]["retention_ms"] == 30 * 86_400_000
    assert bridge.kq("replicate", t, "--to", url, "--verify", "--groups").returncode == 0

    again = bridge.kq("replicate", t, "--to", url, "--groups")
    assert again.returncode == 0 and b"copied" not in again.stderr  # nothing new
    fill(home, t, 5, start=40)
    home.ok("consume", t, "-g", g, "-n", "20")
    again = bridge.kq("replicate", t, "--to", url, "--groups")
    assert again.returncode == 0 and again.stderr.count(b"copied") == 3
    assert shape(place.records(t)) == shape(home.records(t))
    assert committed(place, t, g) == committed(home, t, g)

    r = back.plus(place.client_args).kq("replicate", t, "--from", url, "--to", back.data_dir, "--groups")
    assert r.returncode == 0, r.stderr
    assert shape(back.records(t)) == shape(home.records(t))
    assert committed(back, t, g) == committed(home, t, g)
    # The group goes on where it stopped, on either side, with the same records.
    assert (
        place.ok("consume", t, "-g", g)
        == home.ok("consume", t, "-g", g, "--no-commit")
        == back.ok("consume", t, "-g", g)
    )


@backends(["serve", "tansu"])
def test_a_cluster_topic_comes_into_a_directory(place, tmp_path):
    home = local(tmp_path)
    t, g = place.name("events"), place.name("audit")
    fill(place, t, 30, partitions=2)
    place.ok("consume", t, "-g", g, "-n", "7")
    url = f"kafka://{place.bootstrap}"
    r = home.plus(place.client_args).kq("replicate", t, "--from", url, "--to", home.data_dir, "--groups")
    assert r.returncode == 0, r.stderr
    assert shape(home.records(t)) == shape(place.records(t))
    assert committed(home, t, g) == committed(place, t, g)
    assert lines(home.ok("consume", t, "-g", g)) == lines(place.ok("consume", t, "-g", g, "--no-commit"))


def test_group_offsets_translate_across_a_compacted_topics_gaps(kq_serve_cluster, tmp_path):
    """A compacted source has gaps in its offsets; the cluster's copy has none: each group offset
    becomes the target offset of the first record at or after it, so the group reads the same records."""
    home = local(tmp_path)
    t, g = f"table-{time.monotonic_ns()}", "reader"
    home.ok("topic", "create", t, "--cleanup", "compact", "--segment-bytes", "4096")
    pad = "x" * 200
    home.ok("produce", t, "-K", ":", input="".join(f"key{i}:first-{pad}\n" for i in range(10)))
    home.ok("produce", t, "-K", ":", input="".join(f"key{i}:second-{pad}\n" for i in range(0, 10, 2)))
    for round_ in range(4):  # fill segments, so that the first ones close and compact
        home.ok("produce", t, "-K", ":", input="".join(f"other{round_}-{i}:{pad}\n" for i in range(10)))
    home.ok("maintain")
    offsets = [r["offset"] for r in home.records(t)]
    assert offsets != list(range(len(offsets))), "compaction left no gap"
    gap = next(o + 1 for o, nxt in zip(offsets, offsets[1:]) if nxt > o + 1)  # an offset compaction removed
    home.ok("offsets", "reset", t, "-g", g, "--to", str(gap))
    url = f"kafka://{kq_serve_cluster.bootstrap}"
    assert home.kq("replicate", t, "--to", url, "--groups").returncode == 0
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    assert [r["offset"] for r in cluster.records(t)] == list(range(len(offsets)))
    assert lines(cluster.ok("consume", t, "-g", g)) == lines(home.ok("consume", t, "-g", g))
    assert home.kq("replicate", t, "--to", url, "--verify").returncode == 0


def _kill_loop(command: list[str], more, kills: int, seed: int, most: int = 12) -> int:
    """Add records (``more()``), start ``command`` and kill -9 it at a random moment (start-up,
    reading, sending, recording), until ``kills`` runs were killed before they ended (or ``most``
    runs were made); returns how many were killed. A run that ends first makes the next wait less."""
    rng = random.Random(seed)
    killed, runs, longest = 0, 0, 0.6
    while killed < kills and runs < most:
        runs += 1
        more()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.1, longest))
            assert proc.returncode == 0, proc.stderr.read().decode()
            longest = max(0.2, longest * 0.7)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
        proc.stderr.close()
    return killed


ROUND = 60_000  # records added before each run: a run copies them in a few tenths of a second


def same_records(a: Place, b: Place, topic: str, partitions: int) -> None:
    """Both hold the same records in each partition, in the same order, each once."""
    for p in range(partitions):
        fmt = ["consume", topic, "-p", p, "-F", "%k %s %T %h\n"]
        mine, theirs = a.ok(*fmt), b.ok(*fmt)
        assert mine.count(b"\n") == theirs.count(b"\n"), f"partition {p}: a different number of records"
        assert mine == theirs, f"partition {p}: different records"


def _payments(place: Place, topic: str, start: int, n: int = ROUND) -> None:
    lines = "".join(f"customer-{i % 97}:payment {i}\n" for i in range(start, start + n))
    place.ok("produce", topic, "-K", ":", input=lines)


def test_kill_9_in_a_loop_leaves_every_record_exactly_once_on_the_cluster(kq_serve_cluster, tmp_path):
    home = local(tmp_path)
    t, g = f"moving-{time.monotonic_ns()}", "payments"
    home.ok("topic", "create", t, "--partitions", "3")
    added = [0]

    def more():
        _payments(home, t, added[0])
        added[0] += ROUND
        home.ok("consume", t, "-g", g, "-n", str(ROUND // 3))

    url = f"kafka://{kq_serve_cluster.bootstrap}"
    killed = _kill_loop(home.command("replicate", t, "--to", url, "--groups"), more, kills=5, seed=15)
    assert killed >= 3, f"only {killed} runs were killed: the loop tests little"
    r = home.kq("replicate", t, "--to", url, "--groups")
    assert r.returncode == 0, r.stderr
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    same_records(home, cluster, t, 3)
    assert committed(cluster, t, g) == committed(home, t, g)
    assert home.kq("replicate", t, "--to", url, "--verify", "--groups").returncode == 0


def test_kill_9_in_a_loop_copies_each_record_once_to_a_broker_that_lists_a_short_end(tansu_cluster, tmp_path):
    """Tansu 0.6 answers ListOffsets "latest" with its last batch's base offset + 1: a bridge that
    resumed from that end sent again what a killed run had landed, then refused every later run."""
    home = local(tmp_path)
    t = f"short-end-{time.monotonic_ns()}"
    home.ok("topic", "create", t, "--partitions", "3")
    added = [0]

    def more():
        _payments(home, t, added[0], n=ROUND // 4)
        added[0] += ROUND // 4

    url = f"kafka://{tansu_cluster.bootstrap}"
    command = home.command("replicate", t, "--to", url)
    killed = _kill_loop(command, more, kills=8, seed=20, most=16)
    assert killed >= 4, f"only {killed} runs were killed: the loop tests little"
    r = subprocess.run(command, capture_output=True)
    assert r.returncode == 0, r.stderr
    tansu = Place("tansu", ["-b", tansu_cluster.bootstrap, *TANSU_SETTINGS], tansu_cluster.bootstrap)
    same_records(home, tansu, t, 3)
    again = subprocess.run(command, capture_output=True)
    assert again.returncode == 0 and b"copied" not in again.stderr, again.stderr


def test_kill_9_in_a_loop_leaves_every_record_exactly_once_in_the_directory(kq_serve_cluster, tmp_path):
    home = local(tmp_path)
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    t = f"arriving-{time.monotonic_ns()}"
    cluster.ok("topic", "create", t, "--partitions", "3")
    added = [0]

    def more():
        _payments(cluster, t, added[0])
        added[0] += ROUND

    url = f"kafka://{kq_serve_cluster.bootstrap}"
    command = home.command("replicate", t, "--from", url, "--to", home.data_dir)
    killed = _kill_loop(command, more, kills=5, seed=16)
    assert killed >= 3, f"only {killed} runs were killed: the loop tests little"
    assert subprocess.run(command, capture_output=True).returncode == 0
    same_records(home, cluster, t, 3)
    assert home.kq("replicate", t, "--from", url, "--to", home.data_dir, "--verify").returncode == 0


def test_the_bridge_never_mixes_its_copy_with_records_it_did_not_write(kq_serve_cluster, tmp_path):
    home = local(tmp_path)
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    url = f"kafka://{kq_serve_cluster.bootstrap}"
    taken, t = f"taken-{time.monotonic_ns()}", f"ours-{time.monotonic_ns()}"
    home.ok("produce", taken, input="mine\n")
    cluster.ok("produce", taken, input="theirs\n")
    r = home.kq("replicate", taken, "--to", url)
    assert r.returncode == 1 and b"holds records kq replicate did not copy there" in r.stderr

    home.ok("produce", t, input="1\n2\n")
    assert home.kq("replicate", t, "--to", url).returncode == 0
    cluster.ok("produce", t, input="intruder\n")
    checked = home.kq("replicate", t, "--to", url, "--verify")
    assert checked.returncode == 1 and b"mismatch" in checked.stdout and b"does not verify" in checked.stderr
    home.ok("produce", t, input="3\n")
    r = home.kq("replicate", t, "--to", url)
    assert r.returncode == 1 and b"are not the next ones of the source" in r.stderr
    assert values(cluster.records(t)) == ["1", "2", "intruder"]

    parts = f"parts-{time.monotonic_ns()}"
    home.ok("topic", "create", parts, "--partitions", "2")
    cluster.ok("topic", "create", parts, "--partitions", "3")
    r = home.kq("replicate", parts, "--to", url)
    assert r.returncode == 1 and b"has 2 partitions in data directory" in r.stderr


def values(rows):
    return [r["value"] for r in rows]


def values_now(place: Place, topic: str) -> list | None:
    """The topic's values as they are now; None while it does not exist yet."""
    r = place.kq("consume", topic)
    return r.stdout.decode().splitlines() if r.returncode == 0 else None


def test_follow_keeps_the_cluster_and_the_group_caught_up(kq_serve_cluster, tmp_path):
    home = local(tmp_path)
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    t, g = f"live-{time.monotonic_ns()}", "live-readers"
    home.ok("produce", t, input="first\n")
    follower = home.spawn("replicate", t, "--to", f"kafka://{kq_serve_cluster.bootstrap}", "--follow", "--groups")
    try:
        wait_for(lambda: values_now(cluster, t) == ["first"], timeout=20, message="the first record")
        home.ok("produce", t, input="second\n")
        home.ok("consume", t, "-g", g)
        wait_for(lambda: values_now(cluster, t) == ["first", "second"], timeout=20, message="the next record")
        wait_for(lambda: committed(cluster, t, g) == {0: 2}, timeout=20, message="the group's offset")
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert err.startswith(f"kq: {t}/0: copied ".encode()), err


def test_bridge_usage_errors(tmp_path):
    home = local(tmp_path)
    home.ok("produce", "t", input="x\n")
    for args, message in (
        (["--to", "kafka://h:1", "--truncate"], b"--truncate is for replica directories"),
        (["--from", "/tmp/x", "--to", "d"], b"--from names a Kafka cluster"),
        (["--from", "kafka://h:1", "--to", "kafka://h:2"], b"use MirrorMaker"),
        (["--to", ""], b"it is empty: give a replica directory or kafka://HOST:PORT"),
        (["--to", "kafka://h:0"], b"is not a broker list: HOST:PORT"),
        (["--to", "kafka://h:x"], b"is not a broker list: HOST:PORT"),
    ):
        r = home.kq("replicate", "t", *args)
        assert r.returncode == 2 and message in r.stderr, r.stderr


def _bridge_record(home: Place, topic: str) -> tuple[str, dict]:
    [path] = glob.glob(os.path.join(home.data_dir, "bridges", "*", f"{topic}.json"))
    with open(path) as f:
        return path, json.load(f)


def test_records_a_killed_run_landed_are_found_though_the_source_trimmed_them_since(kq_serve_cluster, tmp_path):
    # A kill between the cluster's acknowledgement and the record, then a trim (or retention, or
    # compaction) of the source before the rerun: the rerun used to refuse for good.
    home = local(tmp_path)
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    url, t = f"kafka://{kq_serve_cluster.bootstrap}", f"trimmed-{time.monotonic_ns()}"
    home.ok("produce", t, input="".join(f"{n}\n" for n in range(100)))
    home.ok("replicate", t, "--to", url)
    # What the record says after a run killed just after offsets 50..99 were acknowledged.
    path, record = _bridge_record(home, t)
    record["partitions"]["0"].update(source_next=50, target_next=50, runs=[[0, 0, 50]], sending=[[50, 50]], last=None)
    with open(path, "w") as f:
        json.dump(record, f)
    home.ok("topic", "trim", t, "--before", "80")
    home.ok("produce", t, input="100\n101\n")
    r = home.kq("replicate", t, "--to", url)
    assert r.returncode == 0, r.stderr
    assert values(cluster.records(t)) == [str(n) for n in range(102)]  # each once
    assert home.kq("replicate", t, "--to", url, "--verify").returncode == 0


def test_records_a_killed_run_landed_are_found_though_the_broker_lists_a_short_end(tansu_cluster, tmp_path):
    # Tansu lists the end of a partition whose last batch holds 100 records as that batch's base
    # offset + 1: taken as given, the rerun recorded one of the 100 and sent the other 99 again.
    home = local(tmp_path)
    tansu = Place("tansu", ["-b", tansu_cluster.bootstrap, *TANSU_SETTINGS], tansu_cluster.bootstrap)
    url, t = f"kafka://{tansu_cluster.bootstrap}", f"short-{time.monotonic_ns()}"
    home.ok("produce", t, input="".join(f"{n}\n" for n in range(100)))
    home.ok("replicate", t, "--to", url)
    # What the record says after a run killed just after offsets 50..99 were acknowledged.
    path, record = _bridge_record(home, t)
    record["partitions"]["0"].update(source_next=50, target_next=50, runs=[[0, 0, 50]], sending=[[50, 50]], last=None)
    with open(path, "w") as f:
        json.dump(record, f)
    home.ok("produce", t, input="100\n101\n")
    r = home.kq("replicate", t, "--to", url)
    assert r.returncode == 0, r.stderr
    assert f"{t}/0: 50 records an interrupted copy had sent were found and kept".encode() in r.stderr, r.stderr
    assert values(tansu.records(t)) == [str(n) for n in range(102)]  # each once
    again = home.kq("replicate", t, "--to", url)
    assert again.returncode == 0 and b"copied" not in again.stderr, again.stderr


def test_a_record_stamped_0_keeps_its_copy_verifiable(kq_serve_cluster, tmp_path):
    # librdkafka reads a timestamp of 0 as "now": the copy gets the cluster's time, and --verify
    # (and a rerun after a kill) must still take it for the copy it is.
    home = local(tmp_path)
    url, t = f"kafka://{kq_serve_cluster.bootstrap}", f"epoch-{time.monotonic_ns()}"
    home.ok("produce", t, "--json", input='{"value": "a", "timestamp": 0}\n{"value": "b", "timestamp": 5}\n')
    home.ok("replicate", t, "--to", url)
    r = home.kq("replicate", t, "--to", url, "--verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_source_deleted_and_created_again_is_refused_not_copied_with_a_gap(kq_serve_cluster, tmp_path):
    # kq serve (like a cluster without topic ids) cannot say the topic is another one now.
    cluster = Place("serve", ["-b", kq_serve_cluster.bootstrap], kq_serve_cluster.bootstrap)
    url, t = f"kafka://{kq_serve_cluster.bootstrap}", f"again-{time.monotonic_ns()}"
    target = str(tmp_path / "copy")
    for first, count in ((1, 100), (1001, 250)):
        if first > 1:
            cluster.ok("topic", "delete", t)
        cluster.ok("produce", t, input="".join(f"{n}\n" for n in range(first, first + count)))
        r = subprocess.run(KQ_BRIDGE + ["replicate", t, "--from", url, "--to", target], capture_output=True)
        if first == 1:
            assert r.returncode == 0, r.stderr
    assert r.returncode == 1 and b"holds another record at offset 99" in r.stderr, r.stderr
    cluster.ok("topic", "delete", t)
    cluster.ok("produce", t, input="".join(f"{n}\n" for n in range(10)))
    r = subprocess.run(KQ_BRIDGE + ["replicate", t, "--from", url, "--to", target], capture_output=True)
    assert r.returncode == 1 and b"ends at offset 10" in r.stderr, r.stderr


def test_verify_counts_a_partition_only_the_target_has(kq_serve_cluster, tmp_path):
    home = local(tmp_path)
    url, t = f"kafka://{kq_serve_cluster.bootstrap}", f"wider-{time.monotonic_ns()}"
    home.ok("produce", t, input="a\n")
    home.ok("replicate", t, "--to", url)
    admin = pytest.importorskip("confluent_kafka.admin")
    client = admin.AdminClient({"bootstrap.servers": kq_serve_cluster.bootstrap})
    client.create_partitions([admin.NewPartitions(t, 2)])[t].result(10)  # as another tool would
    r = home.kq("replicate", t, "--to", url, "--verify")
    assert r.returncode == 1 and b"the target has it, the source does not" in r.stdout, r.stdout


def test_a_copy_behind_the_sources_retention_reports_where_it_went_on(kq_serve_cluster, tmp_path):
    home = local(tmp_path)
    url, t = f"kafka://{kq_serve_cluster.bootstrap}", f"behind-{time.monotonic_ns()}"
    home.ok("produce", t, input="".join(f"{n}\n" for n in range(600)))
    home.ok("replicate", t, "--to", url)
    home.ok("produce", t, input="".join(f"{n}\n" for n in range(600, 1500)))
    home.ok("topic", "trim", t, "--before", "1000")
    r = home.kq("replicate", t, "--to", url, "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)["partitions"]
    assert (row["from_offset"], row["to_offset"], row["records"], row["skipped_to"]) == (1000, 1500, 500, 1000)
