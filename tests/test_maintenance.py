"""Retention, trim, compaction and `kq maintain`, with fabricated timestamps (no sleeping for days)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import KQ, wait_for

import kq

DAY = 86_400_000


def records(n, start=0, ts=None, key=None, size=200):
    """JSON envelope lines: values 'v<i>' padded to ``size`` bytes, optional timestamps/keys."""
    out = []
    for i in range(start, start + n):
        obj = {"value": f"v{i:06d}".ljust(size, ".")}
        if ts is not None:
            obj["timestamp"] = ts
        if key is not None:
            obj["key"] = key(i)
        out.append(json.dumps(obj))
    return "\n".join(out) + "\n"


def describe(run_kq, topic):
    return json.loads(run_kq("topic", "describe", topic, "--json").stdout)


def segments(data_dir, topic, p=0):
    return sorted(f for f in os.listdir(os.path.join(data_dir, "topics", topic, str(p))) if f.endswith(".log"))


def test_time_retention_deletes_old_closed_segments_only(run_kq, data_dir):
    now = int(time.time() * 1000)
    run_kq("topic", "create", "logs", "--segment-bytes", "4K")
    for _ in range(10):  # ten small produces of old records: several segments
        assert run_kq("produce", "logs", "--json", input=records(10, ts=now - 3 * DAY)).returncode == 0
    old_segments = segments(data_dir, "logs")
    assert len(old_segments) >= 3
    run_kq("produce", "logs", "--json", input=records(3, start=100, ts=now))
    run_kq("topic", "alter", "logs", "--retention", "2d")
    r = run_kq("maintain", "logs", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)[0]
    assert summary["segments_deleted"] >= 2 and summary["bytes_reclaimed"] > 0
    left = segments(data_dir, "logs")
    assert left[-1] == old_segments[-1] or int(left[-1][:20]) > int(old_segments[-1][:20])
    start = describe(run_kq, "logs")["partitions"][0]["start_offset"]
    assert start == summary["start_offset"] == int(left[0][:20])
    values = run_kq("consume", "logs").stdout.split()
    # Everything at or after the start offset is still there, the new records included.
    assert values[-3:] == [f"v{i:06d}".ljust(200, ".").encode() for i in (100, 101, 102)]
    assert len(values) == 103 - start
    # Idempotent: nothing more to do.
    again = json.loads(run_kq("maintain", "logs", "--json").stdout)[0]
    assert again["segments_deleted"] == 0 and again["start_offset"] == start


def test_the_active_segment_is_never_deleted(run_kq, data_dir):
    now = int(time.time() * 1000)
    run_kq("topic", "create", "t", "--retention", "1h")
    run_kq("produce", "t", "--json", input=records(5, ts=now - 10 * DAY))
    r = json.loads(run_kq("maintain", "--json").stdout)[0]
    assert r["segments_deleted"] == 0
    assert len(run_kq("consume", "t").stdout.split()) == 5


def test_size_retention_keeps_at_least_the_limit(run_kq, data_dir):
    run_kq("topic", "create", "t", "--segment-bytes", "4K", "--retention-bytes", "10K")
    for i in range(20):
        run_kq("produce", "t", "--json", input=records(5, start=i * 5))
    sizes = lambda: sum(p["size"] for p in describe(run_kq, "t")["partitions"])  # noqa: E731
    # Retention already ran as segments rolled during produce.
    assert 10 * 1024 <= sizes() < 10 * 1024 + 2 * 4096 + 1500
    start = describe(run_kq, "t")["partitions"][0]["start_offset"]
    assert start > 0
    run_kq("maintain")  # the full pass may take one more segment than the roll-time one
    assert 10 * 1024 <= sizes()
    assert json.loads(run_kq("maintain", "--json").stdout)[0]["segments_deleted"] == 0


def test_group_behind_the_start_offset_resumes_there_with_a_warning(run_kq, data_dir):
    now = int(time.time() * 1000)
    run_kq("topic", "create", "t", "--segment-bytes", "4K")
    run_kq("produce", "t", "--json", input=records(60, ts=now - 3 * DAY))
    run_kq("produce", "t", "--json", input=records(5, start=60, ts=now))
    run_kq("consume", "t", "-g", "slow", "-n", "2")
    run_kq("topic", "alter", "t", "--retention", "1d")
    run_kq("maintain")
    start = describe(run_kq, "t")["partitions"][0]["start_offset"]
    assert start > 2
    r = run_kq("consume", "t", "-g", "slow", "-n", "1")
    assert r.returncode == 0
    assert f"{start - 2} message(s) after its committed offset 2 were deleted".encode() in r.stderr
    assert b"kq: warning:" in r.stderr
    assert r.stdout.startswith(f"v{start:06d}".encode())
    # A plain consumer asking for an offset below the start gets the start.
    assert run_kq("consume", "t", "-o", "0", "-n", "1").stdout.startswith(f"v{start:06d}".encode())


def test_trim_before_an_offset_and_a_time(run_kq, data_dir):
    run_kq("topic", "create", "t", "--segment-bytes", "4K", "--partitions", "2")
    base = 1_700_000_000_000
    for i in range(10):
        run_kq("produce", "t", "-p", "0", "--json", input=records(5, start=i * 5, ts=base + i * 60_000))
        run_kq("produce", "t", "-p", "1", "--json", input=records(5, start=i * 5, ts=base + i * 60_000))
    before = len(segments(data_dir, "t", 0))
    r = run_kq("topic", "trim", "t", "--before", "23", "-p", "0", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["start_offset"] == 23 and row["segments_deleted"] >= 1
    assert len(segments(data_dir, "t", 0)) == before - row["segments_deleted"]
    assert run_kq("consume", "t", "-p", "0", "-n", "1").stdout.startswith(b"v000023")
    assert describe(run_kq, "t")["partitions"][1]["start_offset"] == 0  # -p 0 only
    # @T: before the first record of minute 4 (offsets 20..24) on partition 1.
    r = run_kq("topic", "trim", "t", "--before", f"@{base + 4 * 60_000}", "-p", "1", "--json")
    assert json.loads(r.stdout)[0]["start_offset"] == 20
    # Never backwards, never past the end.
    run_kq("topic", "trim", "t", "--before", "5", "-p", "0")
    assert describe(run_kq, "t")["partitions"][0]["start_offset"] == 23
    run_kq("topic", "trim", "t", "--before", "1000", "-p", "0")
    assert describe(run_kq, "t")["partitions"][0]["start_offset"] == 50
    assert run_kq("consume", "t", "-p", "0").stdout == b""
    r = run_kq("topic", "trim", "t", "--before", "end")
    assert r.returncode == 2


def produce_keyed(run_kq, topic, n, keys, start=0, ts=None):
    assert (
        run_kq(
            "produce", topic, "--json", input=records(n, start=start, ts=ts, key=lambda i: f"k{i % keys}", size=20)
        ).returncode
        == 0
    )


def latest_per_key(run_kq, topic):
    rows = [json.loads(line) for line in run_kq("consume", topic, "--json").stdout.splitlines()]
    latest = {}
    for r in rows:
        latest[r["key"]] = (r["offset"], r["value"])
    return rows, latest


def test_compaction_keeps_the_latest_per_key_with_original_offsets(run_kq, data_dir):
    run_kq("topic", "create", "users", "--cleanup", "compact", "--segment-bytes", "4K")
    for i in range(20):
        produce_keyed(run_kq, "users", 10, keys=7, start=i * 10)
    before_rows, expected = latest_per_key(run_kq, "users")
    r = json.loads(run_kq("maintain", "users", "--json").stdout)[0]
    assert r["records_removed"] > 100 and r["bytes_reclaimed"] > 0
    after_rows, latest = latest_per_key(run_kq, "users")
    assert latest == expected
    offsets = [row["offset"] for row in after_rows]
    assert offsets == sorted(set(offsets)) and len(offsets) < len(before_rows)
    original = {row["offset"]: row["value"] for row in before_rows}
    assert all(original[row["offset"]] == row["value"] for row in after_rows)
    # Closed segments now hold each key at most once.
    closed_keys = [row["key"] for row in after_rows if row["offset"] < int(segments(data_dir, "users")[-1][:20])]
    assert len(closed_keys) == len(set(closed_keys))
    # Offsets skip the gaps: seeking into a gap lands on the next survivor.
    gap = next(o for o in range(offsets[-1]) if o not in set(offsets))
    first = json.loads(run_kq("consume", "users", "-o", str(gap), "-n", "1", "--json").stdout)
    assert first["offset"] == min(o for o in offsets if o > gap)
    assert json.loads(run_kq("maintain", "users", "--json").stdout)[0]["records_removed"] == 0


def test_maintain_says_why_a_small_compacted_topic_is_not_compacted(run_kq, data_dir):
    # The README's steps on a small topic: everything is in the active segment.
    run_kq("topic", "create", "users", "--cleanup", "compact")
    run_kq("produce", "users", "-K", ":", input="alice:1\nbob:1\nalice:2\n")
    r = run_kq("maintain")
    assert r.returncode == 0, r.stderr
    assert b"0 superseded record(s)" in r.stderr
    assert (
        b"users: 3 records in active segments not compacted: like Kafka, compaction leaves each partition's "
        b"last segment alone until it rolls at 64M"
    ) in r.stderr, r.stderr
    assert b"kq topic alter users --segment-bytes 8M" in r.stderr  # smaller than what it has
    # With segments that roll, the older records are compacted and the note counts only the active segment.
    run_kq("topic", "create", "small", "--cleanup", "compact", "--segment-bytes", "4K")
    for start in range(0, 2000, 500):  # batches of more than 4K: each closes a segment
        produce_keyed(run_kq, "small", 500, 10, start=start)
    r = run_kq("maintain", "small")
    assert b" 0 superseded" not in r.stderr, r.stderr
    active = kq.DataDir(data_dir).topic("small").partition(0)
    in_active = active.end_offset() - active.segments()[-1]
    assert f"small: {in_active:,} records in active segments".encode() in r.stderr, r.stderr


def test_tombstones_delete_keys(run_kq, data_dir):
    run_kq("topic", "create", "users", "--cleanup", "compact", "--segment-bytes", "4K")
    produce_keyed(run_kq, "users", 100, keys=5)  # k0..k4
    assert run_kq("produce", "users", "--tombstone", "-k", "k2").returncode == 0
    assert run_kq("produce", "users", "--tombstone", input="k0\nk4\n").returncode == 0
    produce_keyed(run_kq, "users", 100, keys=1, start=1000)  # k0 is set again after its tombstone
    run_kq("produce", "users", "-k", "other", input="closes the segment\n")
    assert run_kq("maintain", "users").returncode == 0
    rows = [json.loads(line) for line in run_kq("consume", "users", "--json").stdout.splitlines()]
    by_key = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r["value"])
    # Deleted keys keep only their (recent) tombstone; a key set again keeps its new value.
    assert by_key["k2"] == [None] and by_key["k4"] == [None]
    assert by_key["k0"] == [f"v{1099:06d}".ljust(20, ".")]
    assert by_key["k1"] == [f"v{96:06d}".ljust(20, ".")] and by_key["k3"] == [f"v{98:06d}".ljust(20, ".")]
    # --tombstone refuses what it cannot mean.
    assert run_kq("produce", "users", "--tombstone", "--json", input="{}\n").returncode == 2


def test_old_tombstone_removed_recent_one_kept(run_kq, data_dir):
    run_kq("topic", "create", "t", "--cleanup", "compact", "--segment-bytes", "4K", "--tombstone-retention", "1h")
    now = int(time.time() * 1000)
    lines = [
        json.dumps({"key": "old", "value": "x", "timestamp": now - 2 * DAY}),
        json.dumps({"key": "old", "value": None, "timestamp": now - DAY}),
        json.dumps({"key": "new", "value": "y", "timestamp": now}),
        json.dumps({"key": "new", "value": None, "timestamp": now}),
    ]
    run_kq("produce", "t", "--json", input="\n".join(lines) + "\n")
    produce_keyed(run_kq, "t", 300, keys=4, start=100)  # other keys: the first segment fills up
    run_kq("produce", "t", input="closes the first segment\n")
    r = json.loads(run_kq("maintain", "--json").stdout)[0]
    assert r["tombstones_removed"] == 1
    rows = [json.loads(line) for line in run_kq("consume", "t", "--json").stdout.splitlines()]
    kept = [(row["key"], row["value"]) for row in rows if row["key"] in ("old", "new")]
    assert kept == [("new", None)]


COMPACT_MANY = """
import sys, kq
data = kq.DataDir(sys.argv[1])
t = data.topic("t")
p = t.partition(0)
for round_ in range(40):
    keys = [b"k%d" % (i % 50) for i in range(200)]
    p.append([b"r%d-%d" % (round_, i) for i in range(200)], keys=keys)
"""


def test_kill_9_during_compaction_never_loses_a_latest_value(run_kq, data_dir):
    rng = random.Random(3)
    run_kq("topic", "create", "t", "--cleanup", "compact", "--segment-bytes", "8K")
    subprocess.run([sys.executable, "-c", COMPACT_MANY, data_dir], check=True)
    _, expected = latest_per_key(run_kq, "t")
    pdir = os.path.join(data_dir, "topics", "t", "0")
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(KQ + ["--data-dir", data_dir, "maintain", "t"], stderr=subprocess.DEVNULL)
        # Kill while compacted files are being written or swapped in.
        wait_for(
            lambda: proc.poll() is not None or any(f.endswith(".compact") for f in os.listdir(pdir)),
            timeout=30,
            interval=0.001,
            message="compaction to start",
        )
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        rows, latest = latest_per_key(run_kq, "t")
        assert latest == expected, f"a key's latest value changed after kill {attempt}"
        offsets = [r["offset"] for r in rows]
        assert offsets == sorted(set(offsets)), "duplicated or reordered offsets"
        # More writes between attempts, so there is always something to compact.
        subprocess.run([sys.executable, "-c", COMPACT_MANY, data_dir], check=True)
        _, expected = latest_per_key(run_kq, "t")
    assert kills >= 1
    assert run_kq("maintain", "t").returncode == 0
    assert latest_per_key(run_kq, "t")[1] == expected
    assert not [f for f in os.listdir(pdir) if f.endswith(".compact")]


def test_a_reader_in_the_middle_of_old_segments_survives_compaction(data_dir):
    data = kq.DataDir(data_dir)
    t = data.create_topic("t", 1, {"segment_bytes": 8192, "cleanup": "compact"})
    p = t.partition(0)
    original = {}
    for round_ in range(30):
        values = [b"r%d-%d" % (round_, i) for i in range(100)]
        first, _ = p.append(values, keys=[b"k%d" % (i % 10) for i in range(100)])
        original.update({first + i: v for i, v in enumerate(values)})
    cursor = p.cursor(0)
    seen = [(r_off, v) for b in cursor.poll(max_bytes=1) for r_off, v in zip(b.offsets(), b.values)]
    from kq.engine.maintain import compact

    report = compact(p)
    assert report.records_removed > 0
    while True:
        batches = cursor.poll()
        if not batches:
            break
        seen += [(o, v) for b in batches for o, v in zip(b.offsets(), b.values)]
    cursor.close()
    offsets = [o for o, _ in seen]
    assert offsets == sorted(set(offsets)), "the reader saw an offset twice or out of order"
    assert all(original[o] == v for o, v in seen), "the reader saw a value that was never at that offset"
    assert offsets[-1] == max(original)  # it reached the end


def test_a_live_reader_overtaken_by_retention_is_told_what_it_missed(data_dir, spawn_kq):
    """A follower that falls behind while retention deletes the segments ahead of it
    warns with the count skipped, every time (issue #12.5); before, it skipped them silently."""
    data = kq.DataDir(data_dir)
    part = data.create_topic("t", 1, {"segment_bytes": 4096, "retention_bytes": 8192}).partition(0)
    part.append([b"first"])
    follower = spawn_kq("consume", "t", "-g", "g", "-f")  # its stdout is read later: it blocks when the pipe fills
    assert follower.stdout.readline() == b"first\n"  # it has joined and reads from offset 0
    total = 3000
    for i in range(1, total, 10):  # small batches, so segments roll and retention runs as they do
        part.append([b"%05d" % n + b"." * 200 for n in range(i, min(i + 10, total))])
    seen = []
    buffered = b""
    deadline = time.monotonic() + 60
    while not seen or seen[-1] != b"%05d" % (total - 1):
        assert time.monotonic() < deadline, f"the follower stopped at {seen[-1:]}"
        buffered += follower.stdout.read1(65536)
        *lines, buffered = buffered.split(b"\n")
        seen += [line[:5] for line in lines if line != b"first"]
    follower.send_signal(signal.SIGTERM)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    missed = total - 1 - len(seen)
    assert missed > 0, "retention never overtook the follower: the test needs a smaller pipe or more records"
    warned = [line for line in err.decode().splitlines() if "deleted by retention or trim" in line]
    assert warned and all(line.startswith("kq: warning: group 'g' on t/0: ") for line in warned), err
    assert sum(int(line.split(": ")[3].split()[0]) for line in warned) == missed, err


def test_a_deletion_cut_short_never_leaves_an_index_without_its_segment(data_dir, monkeypatch):
    """Before: the log went first, so `verify` could find "an index of a segment that
    does not exist (left by an interrupted deletion)" (issue #12.9)."""
    part = kq.DataDir(data_dir).create_topic("t", 1, {"segment_bytes": 4096}).partition(0)
    for i in range(100):
        part.append([b"%04d" % i + b"." * 500])
    first = part.segments()[0]
    open(part.index_path(first), "ab").close()  # make sure it has an index to lose
    real_unlink = os.unlink

    def dies_after_one_unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        raise KeyboardInterrupt  # the process is killed between the two deletions

    monkeypatch.setattr(os, "unlink", dies_after_one_unlink)
    with pytest.raises(KeyboardInterrupt):
        part.remove_segment(first)
    monkeypatch.undo()
    assert os.path.exists(part.log_path(first)) and not os.path.exists(part.index_path(first))
