"""The deduplication window (`kq produce --dedup-window`, `kq topic create --dedup-window`), through the CLI."""

from __future__ import annotations

import calendar
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time

from conftest import KQ

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL_ITERATIONS = int(os.environ.get("KQ_DEDUP_KILL_ITERATIONS", "3"))  # more by hand (docs/BENCHMARKS.md)


def keys_of(run_kq, topic: str) -> list[str]:
    out = run_kq("consume", topic, "-F", "%k\n")
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().split()


def index_behind_log(run_kq, data_dir: str, topic: str) -> bool:
    """Whether the log holds records past what the key index covers (docs/FORMAT.md: its marks)."""
    data = open(os.path.join(data_dir, "topics", topic, "dedup.index"), "rb").read()
    marks: dict[int, int] = {}
    for pos in range(32, len(data) - len(data) % 16, 16):
        first, second = struct.unpack_from(">QQ", data, pos)
        if second >> 63:
            marks[first & 0xFFFFFFFF] = second & (2**63 - 1)
    described = json.loads(run_kq("topic", "describe", topic, "--json").stdout)["partitions"]
    return any(p["end_offset"] > marks.get(p["partition"], 0) for p in described)


def json_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_a_key_produced_within_the_window_is_dropped_and_counted(run_kq):
    r = run_kq("produce", "jobs", "-K", ":", "--dedup-window", "1h", input="a:1\nb:2\na:3\n")
    assert r.returncode == 0, r.stderr
    assert b"dropped 1 duplicate record (ids produced to 'jobs' within 1h); wrote 2" in r.stderr
    # Another process, later: a and b are still in the window, c is new.
    r = run_kq("produce", "jobs", "-K", ":", "--dedup-window", "1h", input="b:4\nc:5\na:6\n")
    assert r.returncode == 0, r.stderr
    assert b"dropped 2 duplicate records" in r.stderr and b"wrote 1" in r.stderr
    out = run_kq("consume", "jobs", "-F", "%k:%s\n").stdout.decode()
    assert out == "a:1\nb:2\nc:5\n"
    # Without a window nothing is dropped, and nothing is said.
    r = run_kq("produce", "jobs", "-K", ":", input="a:7\n")
    assert r.returncode == 0 and b"dropped" not in r.stderr
    assert keys_of(run_kq, "jobs") == ["a", "b", "c", "a"]


def test_an_id_is_produced_again_once_the_window_has_passed(run_kq):
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "300ms", input="a:1\n")
    assert r.returncode == 0, r.stderr
    time.sleep(0.4)  # the window itself is what is tested: nothing to poll
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "300ms", input="a:2\n")
    assert r.returncode == 0 and b"dropped" not in r.stderr, r.stderr
    # A longer window sees both copies: a third is dropped.
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="a:3\n")
    assert b"dropped 1 duplicate record" in r.stderr
    assert run_kq("consume", "t").stdout == b"1\n2\n"


def test_a_header_id_is_one_id_across_partitions_and_json_says_which_were_dropped(run_kq):
    run_kq("topic", "create", "t", "--partitions", "3")
    records = [
        {"partition": 0, "key": "k1", "value": "first", "headers": [["Nats-Msg-Id", "m1"]]},
        {"partition": 1, "key": "k2", "value": "same id, another partition", "headers": [["Nats-Msg-Id", "m1"]]},
        {"partition": 2, "key": "k1", "value": "same key, another id", "headers": [["Nats-Msg-Id", "m2"]]},
        {"partition": 2, "key": "k3", "value": "no id: never dropped"},
        {"partition": 0, "key": "k4", "value": "no id again"},
    ]
    r = run_kq(
        "produce", "t", "--json", "--dedup-window", "1h", "--dedup-header", "Nats-Msg-Id", input=json_lines(records)
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["duplicates"] == 1 and summary["written"] == 4 and summary["dropped"] == [{"id": "m1"}]
    assert summary["dedup_window_ms"] == 3_600_000
    values = run_kq("consume", "t", "-F", "%s\n").stdout.decode().splitlines()
    assert sorted(values) == sorted(["first", "same key, another id", "no id: never dropped", "no id again"])
    # By key instead, in a second run: k1 and k3 and k4 are new to a key window only if it has not seen them.
    r = run_kq("produce", "t", "--json", "--dedup-window", "1h", input=json_lines(records[:2]))
    summary = json.loads(r.stdout)
    # The key window reads the log: k1 is there (partition 0 and 2), k2 is not.
    assert summary["duplicates"] == 1 and summary["dropped"] == [{"id": "k1"}] and summary["written"] == 1


def test_expired_ids_leave_the_index_when_it_is_rewritten(run_kq, data_dir):
    """The index is rewritten without expired ids once it has doubled (and holds 65,536 entries)."""
    index = os.path.join(data_dir, "topics", "t", "dedup.index")
    first = "".join(f"a{i}:v\n" for i in range(40_000))
    assert run_kq("produce", "t", "-K", ":", "--dedup-window", "1s", input=first).returncode == 0
    assert os.path.getsize(index) >= 32 + 40_000 * 16
    time.sleep(1.1)  # the window itself is what is tested: nothing to poll
    second = "".join(f"b{i}:v\n" for i in range(40_000))
    assert run_kq("produce", "t", "-K", ":", "--dedup-window", "1s", input=second).returncode == 0
    assert os.path.getsize(index) < 32 + 41_000 * 16  # the a ids are gone, the b ids kept
    # A longer window from now on: the b ids are still in the index, the a ids are not.
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="a1:again\nb1:again\n")
    assert b"dropped 1 duplicate record" in r.stderr, r.stderr
    assert run_kq("consume", "t", "-o", "80000").stdout == b"again\n"


def test_the_window_survives_a_lost_index_and_an_index_behind_the_log(run_kq, data_dir):
    """The index is a cache of the log: records it lacks (a crash after the append) are read back."""
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="a:1\nb:2\n")
    assert r.returncode == 0, r.stderr
    index = os.path.join(data_dir, "topics", "t", "dedup.index")
    header = open(index, "rb").read()[:32]
    with open(index, "wb") as f:  # as if the producer died between its append and its index write
        f.write(header)
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="a:3\nc:4\n")
    assert b"dropped 1 duplicate record" in r.stderr, r.stderr
    os.unlink(index)
    with open(index + ".tmp", "wb") as f:  # a rewrite a crash cut short
        f.write(b"\0" * 10)
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="b:5\nc:6\nd:7\n")
    assert b"dropped 2 duplicate records" in r.stderr, r.stderr
    with open(index, "ab") as f:  # a torn entry at the end, and then a file that is not an index at all
        f.write(b"\1" * 7)
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="d:8\n")
    assert r.returncode == 0 and b"dropped 1 duplicate record" in r.stderr, r.stderr
    with open(index, "wb") as f:
        f.write(b"not an index" * 10)
    r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input="a:9\ne:10\n")
    assert r.returncode == 0, r.stderr
    assert b"is not a deduplication index kq wrote" in r.stderr and b"dropped 1 duplicate record" in r.stderr
    assert keys_of(run_kq, "t") == ["a", "b", "c", "d", "e"]


def test_two_concurrent_producers_with_overlapping_ids_write_each_id_once(run_kq, spawn_kq, tmp_path):
    run_kq("topic", "create", "t", "--partitions", "3")
    inputs = []
    for name, ids in (("one", range(0, 3000)), ("two", range(1500, 4500))):
        path = tmp_path / f"{name}.txt"
        path.write_text("".join(f"id{i}:{name}\n" for i in ids))
        inputs.append(str(path))
    procs = [
        spawn_kq("produce", "t", "-K", ":", "--dedup-window", "1h", "--file", path, stdout=subprocess.DEVNULL)
        for path in inputs
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    keys = keys_of(run_kq, "t")
    assert len(keys) == 4500 and set(keys) == {f"id{i}" for i in range(4500)}
    dropped = sum(int(e.split(b"dropped ")[1].split()[0].replace(b",", b"")) for e in errors if b"dropped" in e)
    assert dropped == 1500


def test_a_producer_killed_again_and_again_loses_no_record_and_writes_none_twice(run_kq, data_dir):
    """kill -9 at random moments of a deduplicating producer fed in small pieces, then its rerun.

    After each rerun every id sent so far is in the log exactly once: a kill
    between an append and its index write must not let the rerun write again.
    """
    run_kq("topic", "create", "t", "--partitions", "2")
    rng = random.Random(26)
    sent: list[str] = []
    killed_midway = behind = 0
    for iteration in range(KILL_ITERATIONS):
        ids = [f"i{iteration}-{n}" for n in range(3000)]
        proc = subprocess.Popen(
            KQ + ["--data-dir", data_dir, "produce", "t", "-K", ":", "--dedup-window", "1h"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None
        # A line at a time, about as fast as the producer takes them, so that it is busy appending
        # (and indexing) batches of a line or two when the kill lands, after its start-up.
        deadline = time.monotonic() + rng.uniform(0.3, 0.8)
        try:
            for record_id in ids:
                if time.monotonic() > deadline:
                    killed_midway += 1
                    break
                proc.stdin.write(f"{record_id}:v\n".encode())
                proc.stdin.flush()
                time.sleep(0.0002)
        except BrokenPipeError:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        # Killed between an append and its index write: the rerun must read those records back.
        behind += index_behind_log(run_kq, data_dir, "t")
        # The rerun: everything again, with some of the previous iteration's ids.
        again = "".join(f"{i}:v\n" for i in sent[-50:] + ids)
        r = run_kq("produce", "t", "-K", ":", "--dedup-window", "1h", input=again)
        assert r.returncode == 0, r.stderr
        sent += ids
        keys = keys_of(run_kq, "t")
        assert len(keys) == len(set(keys)), f"iteration {iteration}: an id was written twice"
        assert set(keys) == set(sent), f"iteration {iteration}: {len(set(sent) - set(keys))} id(s) lost"
    assert killed_midway, "no kill landed before the input ended"
    print(
        f"{KILL_ITERATIONS} kills, {killed_midway} before the input ended, {behind} between an append and its index write"
    )


def test_the_topic_setting_applies_to_plain_produce_and_shows_in_describe(run_kq):
    r = run_kq("topic", "create", "jobs", "--dedup-window", "1h")
    assert r.returncode == 0, r.stderr
    config = json.loads(run_kq("topic", "describe", "jobs", "--json").stdout)["config"]
    assert config["dedup_window_ms"] == 3_600_000 and config["dedup_header"] is None
    assert b"config\tdedup_window_ms\t3600000\n" in run_kq("topic", "describe", "jobs").stdout
    r = run_kq("produce", "jobs", "-K", ":", input="a:1\na:2\n")
    assert b"dropped 1 duplicate record (ids produced to 'jobs' within 1h)" in r.stderr, r.stderr
    # The header instead of the key, given on the topic; the producer may still choose its own window.
    run_kq("topic", "alter", "jobs", "--dedup-header", "id")
    r = run_kq("produce", "jobs", "-K", ":", "-H", "id=x", input="a:3\nb:4\n")
    assert b"dropped 1 duplicate record" in r.stderr, r.stderr
    r = run_kq("produce", "jobs", "-K", ":", "-H", "id=y", "--dedup-window", "2h", input="c:5\n")
    assert b"dropped" not in r.stderr
    assert run_kq("consume", "jobs").stdout == b"1\n3\n5\n"
    r = run_kq("topic", "alter", "jobs", "--dedup-window", "none")
    assert r.returncode == 0
    assert run_kq("produce", "jobs", "-K", ":", "-H", "id=y", input="c:6\n").returncode == 0
    assert run_kq("consume", "jobs").stdout == b"1\n3\n5\n6\n"


def test_bad_values_are_usage_errors(run_kq):
    run_kq("topic", "create", "t")
    for args, message in [
        (["produce", "t", "--dedup-window", "0"], b"longer than 0"),
        (["produce", "t", "--dedup-window", "soon"], b"bad duration 'soon'"),
        (["produce", "t", "--dedup-header", "id"], b"has no deduplication window"),
        (["produce", "t", "--dedup-window", "1h", "--dedup-header", ""], b"may not be empty"),
        (["topic", "create", "u", "--dedup-window", "0"], b"longer than 0"),
        (["topic", "alter", "t", "--dedup-window", "later"], b"bad duration"),
    ]:
        r = run_kq(*args, input="a\n")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith(b"kq: error:") and message in r.stderr, r.stderr
        assert b"Traceback" not in r.stderr
    assert run_kq("consume", "t").stdout == b""
    assert run_kq("topic", "describe", "u").returncode != 0
    assert json.loads(run_kq("topic", "describe", "t", "--json").stdout)["config"]["dedup_window_ms"] is None


def test_a_kafka_client_through_serve_gets_duplicates_acknowledged_without_being_stored(run_kq, data_dir):
    from serve_support import KqServer, kq_records, produce

    run_kq("topic", "create", "jobs", "--partitions", "2", "--dedup-window", "1h")
    server = KqServer(data_dir)
    try:
        first = [{"key": b"k1", "value": b"1"}, {"key": b"k2", "value": b"2"}, {"key": b"k1", "value": b"3"}]
        produce("confluent", server.bootstrap, "jobs", first)
        # A retry of everything (a client that never heard back): acknowledged, nothing stored.
        acked = produce("confluent", server.bootstrap, "jobs", first[:2] + [{"key": b"k3", "value": b"4"}])
        assert all(a is not None for a in acked)
    finally:
        assert server.stop() == 0
    stored = kq_records(run_kq, "jobs")
    assert sorted((r["key"], r["value"]) for r in stored) == [(b"k1", b"1"), (b"k2", b"2"), (b"k3", b"4")]
    # And the window is the one plain producers use.
    r = run_kq("produce", "jobs", "-K", ":", input="k3:5\n")
    assert b"dropped 1 duplicate record" in r.stderr


def test_the_readme_recipe_run_twice_enqueues_each_reminder_once_for_tomorrow(run_kq, data_dir, tmp_path):
    """README, "Recipe: a cron job that enqueues tomorrow's reminders": the script as printed there."""
    readme = open(os.path.join(REPO, "README.md")).read()
    [script] = [b for b in re.findall(r"^```sh\n(.*?)^```", readme, re.S | re.M) if "enqueue-reminders" in b]
    (tmp_path / "enqueue-reminders").write_text(script)
    (tmp_path / "list-reminders").write_text("#!/bin/sh\nprintf 'alice:dentist at 10\\nbob:call mum\\ncarol:rent\\n'\n")
    bin_dir = tmp_path / "bin"  # `kq` on PATH: this tree's
    bin_dir.mkdir()
    (bin_dir / "kq").write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m kq "$@"\n')
    for name in ("enqueue-reminders", "list-reminders", "bin/kq"):
        os.chmod(tmp_path / name, 0o755)
    env = {**os.environ, "KQ_DATA_DIR": data_dir, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(2):
        done = subprocess.run(["./enqueue-reminders"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    stored = [json.loads(line) for line in run_kq("consume", "reminders", "--json").stdout.splitlines()]
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
    assert [r["key"] for r in stored] == [f"{tomorrow}/alice", f"{tomorrow}/bob", f"{tomorrow}/carol"]
    due = calendar.timegm(time.strptime(f"{tomorrow}T09:00:00", "%Y-%m-%dT%H:%M:%S")) * 1000
    assert {tuple(h) for r in stored for h in r["headers"]} == {("kq.deliver-at", str(due))}
    # Scheduled: a share group hands none out today, and counts all three.
    assert run_kq("consume", "reminders", "--share", "mailer").stdout == b""
    [row] = json.loads(run_kq("group", "describe", "mailer", "--json").stdout)["partitions"]
    assert row["scheduled"] == 3 and row["next_due"] == due
