"""Several real processes on one data directory: producers, a follower, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

from conftest import wait_for

PRODUCERS = 4
PER_PRODUCER = 5000


def feed(proc, producer_id, chunks=100):
    """Write a producer's lines in many small pieces so appends interleave."""
    per_chunk = PER_PRODUCER // chunks
    for c in range(chunks):
        lines = "".join(f"p{producer_id}-{c * per_chunk + i}\n" for i in range(per_chunk))
        proc.stdin.write(lines.encode())
        proc.stdin.flush()
    proc.stdin.close()


def test_concurrent_producers_lose_nothing_duplicate_nothing_keep_order(run_kq, spawn_kq):
    run_kq("topic", "create", "shared")
    follower = spawn_kq("consume", "shared", "-f", "--json")
    producers = [spawn_kq("produce", "shared", stdin=subprocess.PIPE) for _ in range(PRODUCERS)]
    feeders = [threading.Thread(target=feed, args=(p, i)) for i, p in enumerate(producers)]
    for t in feeders:
        t.start()
    for t in feeders:
        t.join()
    for p in producers:
        assert p.wait(timeout=60) == 0, p.stderr.read()

    records = [json.loads(line) for line in run_kq("consume", "shared", "--json").stdout.splitlines()]
    total = PRODUCERS * PER_PRODUCER
    assert [r["offset"] for r in records] == list(range(total)), "offsets are not dense"
    values = [r["value"] for r in records]
    assert len(set(values)) == total, "a message was duplicated or lost"
    for i in range(PRODUCERS):
        seqs = [int(v.split("-")[1]) for v in values if v.startswith(f"p{i}-")]
        assert seqs == list(range(PER_PRODUCER)), f"producer {i}'s order was not kept"

    # The follower, reading without a lock the whole time, saw exactly the same.
    seen = []
    os.set_blocking(follower.stdout.fileno(), False)

    def follower_caught_up():
        chunk = follower.stdout.read()
        if chunk:
            seen.append(chunk)
        return b"".join(seen).count(b"\n") >= total

    wait_for(follower_caught_up, timeout=30, message="the follower to see every message")
    follower.send_signal(signal.SIGTERM)
    assert follower.wait(timeout=10) == 0
    followed = [json.loads(line) for line in b"".join(seen).splitlines()]
    assert followed == records


def end_offset(run_kq, topic="t"):
    r = run_kq("topic", "describe", topic, "--json")
    return json.loads(r.stdout)["partitions"][0]["end_offset"] if r.returncode == 0 else 0


def test_kill_9_mid_stream_leaves_a_log_the_next_producer_continues(run_kq, spawn_kq, data_dir):
    for round_ in range(3):
        producer = spawn_kq("produce", "t", stdin=subprocess.PIPE)
        stop = threading.Event()

        def pump():
            # About 100,000 lines a second: the kill lands mid-stream, and the
            # log stays small enough to check line by line.
            i = 0
            try:
                while not stop.is_set():
                    producer.stdin.write(b"".join(b"r%d-%08d\n" % (round_, i + j) for j in range(1000)))
                    producer.stdin.flush()
                    i += 1000
                    stop.wait(0.01)
            except (BrokenPipeError, ValueError):
                pass

        pumper = threading.Thread(target=pump)
        pumper.start()
        before = end_offset(run_kq)
        wait_for(lambda: end_offset(run_kq) > before + 10_000, timeout=30, message="the producer to append")
        producer.send_signal(signal.SIGKILL)
        producer.wait()
        stop.set()
        pumper.join()
        assert run_kq("produce", "t", input=f"after-kill-{round_}\n").returncode == 0

    records = [json.loads(line) for line in run_kq("consume", "t", "--json").stdout.splitlines()]
    assert [r["offset"] for r in records] == list(range(len(records)))
    import re

    pattern = re.compile(r"r\d-\d{8}|after-kill-\d")
    assert all(pattern.fullmatch(r["value"]) for r in records), "garbage was served"
    assert [r["value"] for r in records if r["value"].startswith("after")] == [
        "after-kill-0",
        "after-kill-1",
        "after-kill-2",
    ]
    # Within a round, messages are whole and in order with no gaps (a prefix of what was sent).
    for round_ in range(3):
        seqs = [int(r["value"][3:]) for r in records if r["value"].startswith(f"r{round_}-")]
        assert seqs == list(range(len(seqs)))


def test_followers_never_mistake_a_batch_being_written_for_damage(run_kq, spawn_kq, tmp_path):
    # Big batches from several producers at once: a follower often finds a
    # batch half written, and by the time it looks further the writer may have
    # finished it and appended the next. That is progress, not corruption.
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"".join(b"%07d %s\n" % (i, b"x" * 200) for i in range(100_000)))
    run_kq("topic", "create", "big")
    followers = [spawn_kq("consume", "big", "-f", "-F", "%o\n") for _ in range(2)]
    producers = [spawn_kq("produce", "big", "--file", str(lines)) for _ in range(3)]
    for p in producers:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    total = 3 * 100_000
    for f in followers:
        os.set_blocking(f.stdout.fileno(), False)
        seen = [0]

        def caught_up(f=f, seen=seen):
            seen[0] += (f.stdout.read() or b"").count(b"\n")
            assert f.poll() is None, f"the follower died: {f.stderr.read().decode()}"
            return seen[0] == total

        wait_for(caught_up, timeout=60, interval=0.005, message="the follower to read everything")
        f.send_signal(signal.SIGTERM)
        assert f.wait(timeout=10) == 0
        assert b"error" not in f.stderr.read()
