"""`kq replicate`: exact copies, incremental, crash-safe, divergence, verify, follow."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from conftest import KQ, wait_for


@pytest.fixture
def replica(tmp_path):
    return str(tmp_path / "replica")


def dump(run_kq, topic, data):
    r = run_kq("consume", topic, "--json", data=data)
    assert r.returncode == 0, r.stderr
    return r.stdout


def seed(run_kq, n=500, partitions=3):
    run_kq("topic", "create", "t", "--partitions", partitions, "--segment-bytes", "8K")
    lines = "".join(f"k{i % 7}:value {i}\n" for i in range(n))
    assert run_kq("produce", "t", "-K", ":", "-H", "origin=test", input=lines).returncode == 0


def test_summary_reads_like_the_progress_bar(run_kq, replica):
    run_kq("produce", "t", input="".join(f"{i}\n" for i in range(1500)))
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 0, r.stderr
    assert b"t/0: copied 1,500 records (" in r.stderr and b" KiB), offsets 0..1499" in r.stderr, r.stderr


def test_copy_is_identical_and_carries_group_offsets(run_kq, data_dir, replica):
    seed(run_kq)
    run_kq("produce", "t", "-p", "1", input=b"\xff\xfe binary\n")
    run_kq("consume", "t", "-g", "billing", "-n", "100")
    r = run_kq("replicate", "t", "--to", replica, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert sum(p["records"] for p in summary["partitions"]) == 501
    assert dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir)
    src = json.loads(run_kq("topic", "describe", "t", "--json").stdout)
    dst = json.loads(run_kq("topic", "describe", "t", "--json", data=replica).stdout)
    assert dst["config"] == src["config"]
    assert [p["end_offset"] for p in dst["partitions"]] == [p["end_offset"] for p in src["partitions"]]
    show = lambda d: json.loads(run_kq("offsets", "show", "t", "-g", "billing", "--json", data=d).stdout)  # noqa: E731
    assert show(replica) == show(data_dir)
    # Failover: the group resumes on the replica exactly where it committed.
    assert (
        run_kq("consume", "t", "-g", "billing", data=replica).stdout == run_kq("consume", "t", "-g", "billing").stdout
    )


def test_rerun_copies_only_what_is_new(run_kq, data_dir, replica):
    seed(run_kq, n=100, partitions=1)
    run_kq("replicate", "t", "--to", replica)
    again = json.loads(run_kq("replicate", "t", "--to", replica, "--json").stdout)
    assert [p["records"] for p in again["partitions"]] == [0]
    run_kq("produce", "t", input="new 1\nnew 2\n")
    more = json.loads(run_kq("replicate", "t", "--to", replica, "--json").stdout)
    assert [(p["records"], p["from_offset"], p["to_offset"]) for p in more["partitions"]] == [(2, 100, 102)]
    assert dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir)


def test_all_topics(run_kq, data_dir, replica):
    for name in ("a", "b", "c"):
        run_kq("produce", name, input=f"{name}\n")
    assert run_kq("replicate", "--all", "--to", replica).returncode == 0
    assert run_kq("topic", "list", data=replica).stdout == b"a\nb\nc\n"
    r = run_kq("replicate", "--to", replica)
    assert r.returncode == 2 and b"--all" in r.stderr
    r = run_kq("replicate", "nope", "--to", replica)
    assert r.returncode == 1 and b"topic 'nope' does not exist" in r.stderr
    r = run_kq("replicate", "a", "--to", data_dir)
    assert r.returncode == 1 and b"another data directory" in r.stderr


def test_kill_9_mid_copy_then_rerun_gives_an_identical_replica(run_kq, data_dir, tmp_path):
    run_kq("topic", "create", "big", "--partitions", "2", "--segment-bytes", "1M")
    line = "x" * 90
    run_kq("produce", "big", input="".join(f"{i:08d}{line}\n" for i in range(200_000)))
    expected = dump(run_kq, "big", data_dir)
    for attempt in range(4):
        target = str(tmp_path / f"replica{attempt}")
        copier = subprocess.Popen(KQ + ["--data-dir", data_dir, "replicate", "big", "--to", target])

        def copying():
            part = os.path.join(target, "topics", "big", str(attempt % 2))
            try:
                return sum(os.path.getsize(os.path.join(part, f)) for f in os.listdir(part)) > (attempt + 1) * 1_000_000
            except FileNotFoundError:
                return False

        wait_for(lambda: copying() or copier.poll() is not None, message="the copy to be under way")
        copier.send_signal(signal.SIGKILL)
        copier.wait()
        # The half-made replica is readable (a prefix), then a rerun completes it.
        partial = (
            dump(run_kq, "big", target) if os.path.exists(os.path.join(target, "topics", "big", "topic.json")) else b""
        )
        assert set(partial.splitlines()) <= set(expected.splitlines())
        assert run_kq("replicate", "big", "--to", target).returncode == 0
        assert dump(run_kq, "big", target) == expected
        assert run_kq("replicate", "--verify", "big", "--to", target).returncode == 0


def test_follow_keeps_the_replica_caught_up(run_kq, spawn_kq, data_dir, replica):
    run_kq("produce", "t", input="first\n")
    follower = spawn_kq("replicate", "t", "--to", replica, "--follow")
    wait_for(lambda: run_kq("consume", "t", data=replica).stdout == b"first\n", message="the first copy")
    writer = spawn_kq("produce", "t", stdin=subprocess.PIPE)
    for i in range(20):
        writer.stdin.write(f"line {i}\n".encode())
        writer.stdin.flush()
    writer.stdin.close()
    assert writer.wait(timeout=10) == 0
    wait_for(lambda: dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir), message="the replica to catch up")
    # A second replicate into the same replica fails clearly while the follower runs.
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 1 and b"another kq replicate is writing" in r.stderr
    follower.send_signal(signal.SIGTERM)
    assert follower.wait(timeout=10) == 0


def test_divergence_is_refused_then_repaired_with_truncate(run_kq, data_dir, replica):
    run_kq("produce", "t", input="".join(f"{i}\n" for i in range(10)))
    run_kq("replicate", "t", "--to", replica)
    run_kq("produce", "t", input="written to the replica directly\n", data=replica)
    run_kq("produce", "t", input="10\n11\n")
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 1
    assert b"diverges from the source in t/0 at offset 10" in r.stderr and b"--truncate" in r.stderr
    assert b"directly" in run_kq("consume", "t", data=replica).stdout  # refused: nothing changed
    v = run_kq("replicate", "--verify", "t", "--to", replica, "--json")
    assert v.returncode == 1 and json.loads(v.stdout)[0]["status"] == "mismatch"
    r = run_kq("replicate", "t", "--to", replica, "--truncate", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["partitions"][0]["truncated_at"] == 10
    assert dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir)


def test_a_source_topic_created_again_is_refused_whole_before_any_partition_is_copied(run_kq, data_dir, replica):
    run_kq("topic", "create", "t", "--partitions", "2")
    run_kq("produce", "t", input="".join(f"old {i}\n" for i in range(100)))
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    before = dump(run_kq, "t", replica)
    run_kq("topic", "delete", "t")
    run_kq("topic", "create", "t", "--partitions", "2")
    run_kq("produce", "t", input="".join(f"new {i}\n" for i in range(200)))
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 1 and b"was deleted and created again in the source" in r.stderr, r.stderr
    assert dump(run_kq, "t", replica) == before  # no partition got the new topic's records
    assert run_kq("topic", "delete", "t", data=replica).returncode == 0
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    assert dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir)


def test_replica_ahead_of_the_source_is_divergence(run_kq, data_dir, replica):
    run_kq("produce", "t", input="a\n")
    run_kq("replicate", "t", "--to", replica)
    run_kq("produce", "t", input="only in the replica\n", data=replica)
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 1 and b"at offset 1" in r.stderr
    assert run_kq("replicate", "t", "--to", replica, "--truncate").returncode == 0
    assert run_kq("consume", "t", data=replica).stdout == b"a\n"


@pytest.mark.parametrize("which", ["first", "last"])
def test_verify_detects_a_flipped_byte_in_the_replica(run_kq, data_dir, replica, which):
    for i in range(5):
        run_kq("produce", "t", input=f"batch {i}\n")
    run_kq("replicate", "t", "--to", replica)
    assert run_kq("replicate", "--verify", "t", "--to", replica).returncode == 0
    seg = os.path.join(replica, "topics", "t", "0", f"{0:020d}.log")
    data = bytearray(open(seg, "rb").read())
    data[50 if which == "first" else len(data) - 2] ^= 0x20
    open(seg, "wb").write(data)
    r = run_kq("replicate", "--verify", "t", "--to", replica, "--json")
    assert r.returncode == 1
    row = json.loads(r.stdout)[0]
    assert row["status"] == "mismatch" and row["ok"] is False


def test_verify_reports_lag_and_group_offsets(run_kq, data_dir, replica):
    run_kq("produce", "t", input="a\nb\n")
    run_kq("consume", "t", "-g", "g", "-n", "1")
    run_kq("replicate", "t", "--to", replica)
    run_kq("produce", "t", input="c\n")
    run_kq("consume", "t", "-g", "g", "-n", "1")
    r = run_kq("replicate", "--verify", "t", "--to", replica, "--json")
    assert r.returncode == 0  # a replica that lags is still an exact prefix
    row = json.loads(r.stdout)[0]
    assert (row["status"], row["source_end"], row["replica_end"]) == ("lagging", 3, 2)
    assert row["groups"] == [{"group": "g", "source": 2, "replica": 1, "status": "behind"}]
    plain = run_kq("replicate", "--verify", "t", "--to", replica).stdout.decode()
    assert "lagging" in plain and "g:behind" in plain


@pytest.mark.parametrize("damaged", [0, 1, 5], ids=["checked-by-the-writer", "checked-by-the-reader", "later"])
def test_damage_in_the_source_stops_the_copy_before_it_and_a_torn_tail_is_left_behind(
    run_kq, data_dir, replica, damaged
):
    # Batches of one segment, a checksum broken in batch `damaged` (framing
    # intact): the replica gets exactly the batches before it, and an error
    # names the source file. The replicate threads check the checksums of
    # different batches, so each index is tried.
    for i in range(8):
        assert run_kq("produce", "t", input="".join(f"b{i}-{j}\n" for j in range(50))).returncode == 0
    segment = os.path.join(data_dir, "topics", "t", "0", f"{0:020d}.log")
    data = open(segment, "rb").read()
    positions, pos = [], 0
    while pos < len(data):
        positions.append(pos)
        pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "big")
    with open(segment, "r+b") as f:
        f.seek(positions[damaged] + 60)
        f.write(bytes([data[positions[damaged] + 60] ^ 0xFF]))
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 1 and b"corrupt log" in r.stderr and segment.encode() in r.stderr, r.stderr
    copied = run_kq("consume", "t", data=replica).stdout.split()
    assert copied == [f"b{i}-{j}".encode() for i in range(damaged) for j in range(50)]
    # A torn tail (an append cut short) is not damage: the copy stops before it.
    with open(segment, "r+b") as f:
        f.seek(positions[damaged] + 60)
        f.write(bytes([data[positions[damaged] + 60]]))  # repaired
    with open(segment, "ab") as f:
        f.write(data[positions[1] : positions[2] - 7])  # most of a batch
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 0, r.stderr
    everything = [f"b{i}-{j}".encode() for i in range(8) for j in range(50)]
    assert run_kq("consume", "t", data=replica).stdout.split() == everything
    # A whole batch at the end whose checksum fails is damage, not a torn
    # write (docs/GUARANTEES.md): reported, and nothing after it is copied.
    with open(segment, "r+b") as f:
        f.truncate(len(data))
        f.seek(0, os.SEEK_END)
        garbled = bytearray(data[positions[1] : positions[2]])
        garbled[60] ^= 0xFF
        f.write(garbled)
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 1 and b"whole batch" in r.stderr and segment.encode() in r.stderr, r.stderr
    assert run_kq("consume", "t", data=replica).stdout.split() == everything


def test_a_replica_behind_the_sources_retention_goes_on_from_the_sources_start(run_kq, data_dir, replica):
    """Before: "diverges at offset 0" and a replica that never copied again (issue #12.1)."""
    run_kq("topic", "create", "t", "--segment-bytes", "16K", "--retention-bytes", "32K")
    value = "x" * 20_000
    for i in range(2):
        assert run_kq("produce", "t", input=f"{i}{value}\n").returncode == 0
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    for i in range(2, 8):
        assert run_kq("produce", "t", input=f"{i}{value}\n").returncode == 0
    source = json.loads(run_kq("topic", "describe", "t", "--json").stdout)["partitions"][0]
    assert source["start_offset"] > 2, "retention must have passed the replica's end for this test"
    r = run_kq("replicate", "t", "--to", replica, "--verify")
    assert r.returncode == 0 and b"behind the source's retention" in r.stdout, r.stdout + r.stderr
    r = run_kq("replicate", "t", "--to", replica)
    assert r.returncode == 0, r.stderr
    assert b"starts over at offset" in r.stderr
    assert dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir)
    copy = json.loads(run_kq("topic", "describe", "t", "--json", data=replica).stdout)["partitions"][0]
    assert (copy["start_offset"], copy["end_offset"]) == (source["start_offset"], source["end_offset"])
    r = run_kq("replicate", "t", "--to", replica, "--verify")
    assert r.returncode == 0 and b"identical" in r.stdout, r.stdout + r.stderr
    # And it keeps copying as the source's retention goes on.
    for i in range(8, 12):
        assert run_kq("produce", "t", input=f"{i}{value}\n").returncode == 0
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    assert dump(run_kq, "t", replica) == dump(run_kq, "t", data_dir)


def test_one_failing_topic_never_stops_the_others(run_kq, data_dir, replica, spawn_kq):
    """A diverged topic is reported and retried; `--all` copies (and `--follow` keeps copying) the rest."""
    for name in ("a", "b"):
        assert run_kq("produce", name, input="1\n2\n").returncode == 0
    assert run_kq("replicate", "--all", "--to", replica).returncode == 0
    assert run_kq("produce", "a", input="replica only\n", data=replica).returncode == 0  # a diverges
    assert run_kq("produce", "b", input="3\n").returncode == 0
    r = run_kq("replicate", "--all", "--to", replica)
    assert r.returncode == 1 and b"kq: error: a: replica" in r.stderr and b"diverges" in r.stderr, r.stderr
    assert run_kq("consume", "b", data=replica).stdout == b"1\n2\n3\n"
    follower = spawn_kq("replicate", "--all", "--to", replica, "--follow")
    assert run_kq("produce", "b", input="4\n").returncode == 0
    wait_for(lambda: run_kq("consume", "b", data=replica).stdout == b"1\n2\n3\n4\n", message="b copied while a fails")
    assert follower.poll() is None, "the follower must keep running"
    follower.send_signal(signal.SIGTERM)
    _, err = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert err.count(b"kq: error: a:") == 1, err  # reported once, not every round


def test_verify_explains_a_failure_and_group_differences_are_warnings(run_kq, data_dir, replica):
    """Before: exit 1 with nothing on stderr when only a group's offset differed (issue #11.16)."""
    assert run_kq("produce", "t", input="1\n2\n3\n").returncode == 0
    assert run_kq("replicate", "t", "--to", replica).returncode == 0
    assert run_kq("consume", "t", "-g", "g", data=replica).returncode == 0  # the replica's group moves ahead
    r = run_kq("replicate", "t", "--to", replica, "--verify")
    assert r.returncode == 0, r.stderr
    assert b"kq: warning: t/0: group 'g' committed 3 in the replica" in r.stderr, r.stderr
    assert run_kq("produce", "t", input="diverged\n", data=replica).returncode == 0
    r = run_kq("replicate", "t", "--to", replica, "--verify")
    assert r.returncode == 1 and b"kq: error: replica" in r.stderr and b"t/0: mismatch" in r.stderr, r.stderr


def test_a_topic_that_cannot_be_read_never_stops_maintain_or_replicate_all(run_kq, data_dir, replica):
    for name in ("a", "bad", "c"):
        assert run_kq("produce", name, input="1\n2\n").returncode == 0
    with open(os.path.join(data_dir, "topics", "bad", "topic.json"), "w") as f:
        f.write("[1, 2]")  # damaged metadata
    r = run_kq("maintain")
    assert r.returncode == 1 and b"kq: error: bad:" in r.stderr, r.stderr
    r = run_kq("replicate", "--all", "--to", replica)
    assert r.returncode == 1 and b"kq: error: bad:" in r.stderr, r.stderr
    assert run_kq("consume", "a", data=replica).stdout == b"1\n2\n"
    assert run_kq("consume", "c", data=replica).stdout == b"1\n2\n"
