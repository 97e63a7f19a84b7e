"""Delayed records (`produce --delay/--at`, `--json` deliver_at): share groups hand them out from their time on, through real processes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from conftest import wait_for


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Lines:
    """A process's stdout lines, each with the wall-clock time (epoch ms) it was read at."""

    def __init__(self, proc):
        self.got: list[tuple[int, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.got.append((now_ms(), line.decode().rstrip("\n")))

    def value_at(self, value: str) -> int | None:
        return next((t for t, line in self.got if line.endswith("\t" + value)), None)


def share_rows(run_kq, share: str = "s") -> list[dict]:
    r = run_kq("group", "describe", share, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["partitions"]


def test_a_delayed_record_goes_out_at_its_time_and_the_records_behind_it_at_once(run_kq, spawn_kq):
    # A follower started first: it must wake for the delayed record on its own, no new record coming.
    assert run_kq("topic", "create", "jobs").returncode == 0
    follower = spawn_kq("consume", "jobs", "--share", "s", "-f")
    lines = Lines(follower)
    due = now_ms() + 3000
    assert run_kq("produce", "jobs", "--at", str(due), input="later\n").returncode == 0
    assert run_kq("produce", "jobs", input="now1\nnow2\n").returncode == 0
    wait_for(lambda: lines.value_at("now2"), timeout=due / 1000 - time.time() - 0.2, message="records behind")
    assert lines.value_at("later") is None
    wait_for(lambda: lines.value_at("later"), timeout=due / 1000 - time.time() + 3, message="the delayed record")
    handed = lines.value_at("later")
    assert due <= handed <= due + 1000, f"handed out {handed - due} ms from its time"
    assert [line.split("\t")[1] for _, line in lines.got] == ["now1", "now2", "later"]


def test_at_in_the_past_json_deliver_at_and_describe(run_kq):
    far = 4102444800000  # 2100-01-01T00:00:00Z
    assert run_kq("produce", "jobs", "--at", "2020-01-01T00:00:00Z", input="past\n").returncode == 0
    lines = [
        {"value": "json-far", "deliver_at": "2100-01-01T00:00:00Z"},
        {"value": "json-past", "deliver_at": 1},
        {"value": "json-later", "deliver_at": far + 5000},
        {"value": "plain"},
    ]
    r = run_kq("produce", "jobs", "--json", input="".join(json.dumps(x) + "\n" for x in lines))
    assert r.returncode == 0, r.stderr
    stored = run_kq("consume", "jobs", "--json").stdout.decode().splitlines()
    assert json.loads(stored[1])["headers"] == [["kq.deliver-at", str(far)]]
    got = run_kq("consume", "jobs", "--share", "s")
    assert got.returncode == 0, got.stderr
    assert [line.split("\t")[1] for line in got.stdout.decode().splitlines()] == ["past", "json-past", "plain"]
    [row] = share_rows(run_kq)
    assert (row["scheduled"], row["next_due"], row["acquired"], row["available"]) == (2, far, 3, 0)
    text = run_kq("group", "describe", "s").stdout.decode()
    assert "2100-01-01T00:00:00Z" in text and "scheduled" in text
    # Nothing more to hand out until then.
    again = run_kq("consume", "jobs", "--share", "s")
    assert again.returncode == 0 and again.stdout == b""


def test_a_compressed_batch_of_delayed_and_due_records_hands_out_the_due_ones_whole(run_kq):
    # One batch (one --json produce), stored compressed: the delivery times are read from its
    # headers, and the values of the records due are those produced, byte for byte.
    assert run_kq("topic", "create", "jobs", "--compression", "gzip").returncode == 0
    lines = [
        {"value": f"due-{i}" * 20} if i % 3 else {"value": f"later-{i}", "deliver_at": 4102444800000} for i in range(30)
    ]
    r = run_kq("produce", "jobs", "--json", input="".join(json.dumps(x) + "\n" for x in lines))
    assert r.returncode == 0, r.stderr
    got = run_kq("consume", "jobs", "--share", "s")
    assert got.returncode == 0, got.stderr
    assert [line.split("\t")[1] for line in got.stdout.decode().splitlines()] == [
        x["value"] for x in lines if "deliver_at" not in x
    ]
    [row] = share_rows(run_kq)
    assert (row["scheduled"], row["next_due"], row["acquired"]) == (10, 4102444800000, 20)


def test_describe_counts_delayed_records_no_worker_has_reached(run_kq):
    assert run_kq("produce", "jobs", input="first\n").returncode == 0
    assert run_kq("consume", "jobs", "--share", "s").stdout.endswith(b"\tfirst\n")
    due = now_ms() + 3_600_000
    assert run_kq("produce", "jobs", "--delay", "1h", input="a\nb\n").returncode == 0
    assert run_kq("produce", "jobs", input="c\n").returncode == 0
    [row] = share_rows(run_kq)
    assert (row["scheduled"], row["available"], row["acquired"], row["lag"]) == (2, 1, 1, 4)
    assert due - 2000 <= row["next_due"] <= due + 2000


def test_bad_delay_and_at_values_are_usage_errors(run_kq):
    for args in (
        ["--delay", "soon"],
        ["--delay", "-5m"],
        ["--at", "tomorrow"],
        ["--at", "99999-01-01"],
        ["--delay", "1m", "--at", "2030-01-01T00:00:00Z"],
    ):
        r = run_kq("produce", "jobs", *args, input="x\n")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.decode().startswith("kq: error: "), r.stderr
        assert "Traceback" not in r.stderr.decode()
    r = run_kq("produce", "jobs", "--json", input='{"value": "x", "deliver_at": "next week"}\n')
    assert r.returncode == 2 and b"kq: error: line 1: 'deliver_at'" in r.stderr, r.stderr
    assert run_kq("topic", "list").stdout.strip() == b""  # nothing was written, no topic made


def test_a_consumer_group_reads_delayed_records_in_order_and_warns_once(run_kq):
    assert run_kq("produce", "jobs", "--delay", "1h", input="a\nb\n").returncode == 0
    assert run_kq("produce", "jobs", input="c\n").returncode == 0
    assert run_kq("produce", "jobs", "--delay", "2h", input="d\n").returncode == 0
    r = run_kq("consume", "jobs", "-g", "g")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"a\nb\nc\nd\n"
    assert r.stderr.decode().count("kq: warning:") == 1, r.stderr
    assert "delayed" in r.stderr.decode() and "group 'g'" in r.stderr.decode()
    # Records whose time has passed are not delayed any more: no warning.
    assert run_kq("produce", "late", "--at", "2020-01-01T00:00:00Z", input="e\n").returncode == 0
    r = run_kq("consume", "late", "-g", "g")
    assert r.stdout == b"e\n" and b"warning" not in r.stderr
    for command in ("produce", "consume"):
        shown = run_kq(command, "--help", env={"COLUMNS": "2000"}).stdout.decode()
        assert "ignoring their time" in shown or "read them in order, at once" in shown


def test_a_replica_keeps_the_delay_and_the_share_groups_schedule(run_kq, tmp_path):
    assert run_kq("produce", "jobs", "--delay", "1h", input="later\n").returncode == 0
    assert run_kq("produce", "jobs", input="now\n").returncode == 0
    got = run_kq("consume", "jobs", "--share", "s").stdout.decode().splitlines()
    assert [line.split("\t")[1] for line in got] == ["now"]
    assert run_kq("ack", "jobs", "--share", "s", got[0].split("\t")[0]).returncode == 0
    replica = str(tmp_path / "replica")
    r = run_kq("replicate", "jobs", "--to", replica)
    assert r.returncode == 0, r.stderr
    # Failed over: the replica's workers neither hand the delayed record out nor forget it.
    again = run_kq("consume", "jobs", "--share", "s", data=replica)
    assert again.returncode == 0 and again.stdout == b"", again.stderr
    [row] = json.loads(run_kq("group", "describe", "s", "--json", data=replica).stdout)["partitions"]
    assert (row["scheduled"], row["acknowledged"], row["lag"]) == (1, 1, 1)


def test_a_kafka_client_through_serve_delays_a_record_with_the_header(run_kq, data_dir):
    from serve_support import KqServer, produce

    due = now_ms() + 3_600_000
    server = KqServer(data_dir)
    try:
        produce(
            "kafka-python",
            server.bootstrap,
            "jobs",
            [{"value": b"later", "headers": [("kq.deliver-at", str(due).encode())]}, {"value": b"now"}],
        )
    finally:
        server.stop()
    got = run_kq("consume", "jobs", "--share", "s")
    assert got.returncode == 0, got.stderr
    assert [line.split("\t")[1] for line in got.stdout.decode().splitlines()] == ["now"]
    [row] = share_rows(run_kq)
    assert (row["scheduled"], row["next_due"]) == (1, due)


def test_topic_describe_shows_each_share_groups_scheduled_records(run_kq):
    assert run_kq("produce", "jobs", "--at", "2100-01-01T00:00:00Z", input="later\n").returncode == 0
    assert run_kq("produce", "jobs", input="now\n").returncode == 0
    assert run_kq("consume", "jobs", "--share", "s").returncode == 0
    described = json.loads(run_kq("topic", "describe", "jobs", "--json").stdout)
    assert described["share_groups"] == [{"share_group": "s", "scheduled": 1, "next_due": 4102444800000}]
    text = run_kq("topic", "describe", "jobs").stdout.decode().splitlines()
    assert "share_group\ts\tscheduled\t1\t2100-01-01T00:00:00Z" in text


def test_a_long_running_produce_delays_each_message_from_when_it_was_read(run_kq, spawn_kq):
    producer = spawn_kq("produce", "jobs", "--delay", "1h", stdin=subprocess.PIPE)

    def stored() -> list[int]:
        r = run_kq("consume", "jobs", "--json")
        return [int(dict(json.loads(line)["headers"])["kq.deliver-at"]) for line in r.stdout.decode().splitlines()]

    producer.stdin.write(b"first\n")
    producer.stdin.flush()
    [first] = wait_for(stored, message="the first message")
    time.sleep(1.0)  # time passing is the point here, not a wait for something
    producer.stdin.write(b"second\n")
    producer.stdin.close()
    assert producer.wait(timeout=30) == 0
    assert stored()[1] - first >= 1000


def test_workers_killed_while_they_schedule_delayed_records_lose_none_and_hand_none_out_early(
    run_kq, spawn_kq, tmp_path
):
    # Delayed and undelayed records alternating one by one: each acquisition appends runs to the
    # schedule file and replaces the state, where a kill -9 may land at any point.
    import random
    import signal

    n = 3000
    due = now_ms() + 4500
    lines = [{"value": f"late{i}", "deliver_at": due} if i % 2 else {"value": f"now{i}"} for i in range(n)]
    r = run_kq("produce", "jobs", "--json", input="".join(json.dumps(x) + "\n" for x in lines))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    # Small batches and a command that takes a while: the kills land while records are being taken.
    args = ["consume", "jobs", "--share", "w", "--exec", f"sleep 0.01; cat >> {out}", "--batch", "20", "--lease", "1s"]
    rng = random.Random(26)

    def spawn():
        return spawn_kq(*args, "-f", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # Two workers at a time: each reads what the other appended to the schedule since it last looked.
    workers = [spawn(), spawn()]
    kills = 0
    while now_ms() < due - 1500:
        time.sleep(rng.uniform(0.05, 0.3))
        victim = rng.randrange(2)
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait()
        workers[victim] = spawn()
        kills += 1
    for w in workers:
        w.send_signal(signal.SIGKILL)
        w.wait()
    assert kills >= 5
    early = out.read_text().split() if out.exists() else []
    assert now_ms() < due and early and not [v for v in early if v.startswith("late")], "handed out early"
    assert run_kq("verify").returncode == 0

    def drained():
        r = run_kq("-q", *args, "--timeout", "1")
        assert r.returncode in (0, 3), r.stderr
        return sum(row["lag"] for row in share_rows(run_kq, "w")) == 0

    wait_for(drained, timeout=60, interval=0.1, message="the share group to settle every record")
    assert set(out.read_text().split()) == {x["value"] for x in lines}, "a record lost"
    [row] = share_rows(run_kq, "w")
    assert (row["scheduled"], row["acknowledged"]) == (0, n)
    assert run_kq("verify").returncode == 0


def test_verify_reports_a_damaged_schedule_and_repair_starts_the_partition_afresh(run_kq, data_dir):
    lines = [{"value": "later", "deliver_at": "2100-01-01T00:00:00Z"}, {"value": "now"}]
    assert run_kq("produce", "jobs", "--json", input="".join(json.dumps(x) + "\n" for x in lines)).returncode == 0
    got = run_kq("consume", "jobs", "--share", "s")
    assert got.stdout.decode().split("\t")[1] == "now\n"
    directory = os.path.join(data_dir, "shares", "s", "jobs")
    [name] = [n for n in os.listdir(directory) if n.endswith(".schedule")]
    with open(os.path.join(directory, name), "r+b") as f:
        f.truncate(20)
    r = run_kq("verify")
    assert r.returncode != 0 and name in r.stdout.decode() + r.stderr.decode()
    assert run_kq("produce", "jobs", input="more\n").returncode == 0  # (work: a worker takes the lock)
    worker = run_kq("consume", "jobs", "--share", "s")
    assert worker.returncode != 0 and b"Traceback" not in worker.stderr and name.encode() in worker.stderr
    assert run_kq("verify", "--repair").returncode in (0, 1)
    assert run_kq("verify").returncode == 0
    again = run_kq("consume", "jobs", "--share", "s")  # afresh: "now" again, "later" scheduled again
    assert again.returncode == 0
    assert [line.split("\t")[1] for line in again.stdout.decode().splitlines()] == ["now", "more"]
    [row] = share_rows(run_kq)
    assert row["scheduled"] == 1
