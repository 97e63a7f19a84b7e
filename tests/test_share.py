"""Share groups (`consume --share`, `kq ack`, `kq nack`): a job queue over a topic, through real processes."""

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
from test_shell import complete_bash

from kq import DataDir
from kq.share.shares import Shares


def states(data_dir: str, share: str, topic: str) -> dict:
    data = DataDir(data_dir)
    return Shares(data).states(share, data.topic(topic))


def dead_letters(run_kq, topic: str = "jobs.dlq") -> list[dict]:
    r = run_kq("consume", topic, "--json")
    assert r.returncode == 0, r.stderr
    out = []
    for line in r.stdout.decode().splitlines():
        obj = json.loads(line)
        obj["h"] = dict(obj["headers"])
        out.append(obj)
    return out


def produce(run_kq, lines: list[str], topic: str = "jobs", partitions: int = 1) -> None:
    assert run_kq("topic", "create", topic, "--partitions", partitions).returncode == 0
    r = run_kq("produce", topic, input="".join(f"{line}\n" for line in lines))
    assert r.returncode == 0, r.stderr


def test_exec_runs_each_record_once_with_its_environment_and_acknowledges_it(run_kq, data_dir, tmp_path):
    run_kq("topic", "create", "jobs", "--partitions", "2")
    lines = [json.dumps({"value": f"job {i}", "key": f"k{i}", "headers": [["trace", f"t{i}"]]}) for i in range(6)]
    assert run_kq("produce", "jobs", "--json", input="\n".join(lines) + "\n").returncode == 0
    log = tmp_path / "ran"
    cmd = f'printf "%s|%s|%s|%s|%s|%s|%s\\n" "$(cat)" "$KQ_KEY" "$KQ_PARTITION" "$KQ_OFFSET" "$KQ_ATTEMPT" "$KQ_HEADERS" "$KQ_SHARE" >> {log}'
    r = run_kq("consume", "jobs", "--share", "mailer", "--exec", cmd)
    assert r.returncode == 0, r.stderr
    assert b"6 record(s) acknowledged" in r.stderr
    rows = sorted(line.split("|") for line in log.read_text().splitlines())
    assert [row[0] for row in rows] == [f"job {i}" for i in range(6)]
    for value, key, partition, offset, attempt, headers, share in rows:
        i = value.split()[1]
        assert key == f"k{i}" and attempt == "1" and share == "mailer"
        assert json.loads(headers) == [["trace", f"t{i}"]]
    # Each record where the topic keeps it: partition and offset as consume shows them.
    shown = {
        ln.split(" ", 2)[2]: ln.split(" ")[:2]
        for ln in run_kq("consume", "jobs", "-F", "%p %o %s\\n").stdout.decode().splitlines()
    }
    assert {row[0]: [row[2], row[3]] for row in rows} == shown
    # Everything is settled: a second run runs nothing.
    assert run_kq("consume", "jobs", "--share", "mailer", "--exec", cmd).returncode == 0
    assert len(log.read_text().splitlines()) == 6
    found = states(data_dir, "mailer", "jobs")
    assert sum(s.acked for s in found.values()) == 6
    assert all(s.start == s.next and not s.ranges for s in found.values())


def test_a_failing_record_is_retried_after_backoff_then_dead_lettered_with_headers_saying_why(run_kq, tmp_path):
    produce(run_kq, ["good", "poison", "fine"])
    attempts = tmp_path / "attempts"
    cmd = f'v=$(cat); echo "$v $KQ_ATTEMPT" >> {attempts}; if [ "$v" = poison ]; then echo "line one" >&2; echo "cannot send $v" >&2; exit 3; fi'
    r = run_kq(
        "consume",
        "jobs",
        "--share",
        "s",
        "--exec",
        cmd,
        "--max-attempts",
        "3",
        "--retry-backoff",
        "50ms",
        "--timeout",
        "1",
    )
    assert r.returncode == 1, r.stderr  # a record failed for good: cron hears of it
    assert b"cannot send poison" in r.stderr  # the command's stderr is passed through
    assert b"2 record(s) acknowledged, 3 command run(s) failed, 1 record(s) dead-lettered to 'jobs.dlq'" in r.stderr
    tried = attempts.read_text().split("\n")
    assert [t for t in tried if t.startswith("poison")] == ["poison 1", "poison 2", "poison 3"]
    [dead] = dead_letters(run_kq)
    assert dead["value"] == "poison" and dead["partition"] == 0
    h = dead["h"]
    assert (h["kq.dlq.topic"], h["kq.dlq.partition"], h["kq.dlq.offset"], h["kq.dlq.share"]) == ("jobs", "0", "1", "s")
    assert (h["kq.dlq.attempts"], h["kq.dlq.exit"]) == ("3", "3")
    assert h["kq.dlq.stderr"] == "line one\ncannot send poison"
    assert "exited with status 3" in h["kq.dlq.reason"]
    [state] = states(os.path.join(str(tmp_path), "data"), "s", "jobs").values()
    assert (state.start, state.acked, state.dead, state.ranges) == (3, 2, 1, [])


def test_the_backoff_grows_exponentially_up_to_its_cap(tmp_path):
    from kq.share.settings import ShareSettings

    s = ShareSettings("t.dlq", 10, 100, 1000)
    assert [s.backoff(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]


def test_without_exec_records_print_with_lease_ids_that_ack_and_nack_settle(run_kq, data_dir):
    produce(run_kq, ["a", "b", "c", "d"])
    r = run_kq("consume", "jobs", "--share", "s", "-n", "2")
    assert r.returncode == 0, r.stderr
    (l1, v1), (l2, v2) = [line.split("\t") for line in r.stdout.decode().splitlines()]
    assert (v1, v2) == ("a", "b")
    r = run_kq("consume", "jobs", "--share", "s", "-n", "2", "--json")
    got = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [(g["value"], g["attempt"], g["offset"]) for g in got] == [("c", 1, 2), ("d", 1, 3)]
    assert run_kq("consume", "jobs", "--share", "s", "-n", "1").stdout == b""  # all four are leased
    # ack by argument, and by stdin
    r = run_kq("ack", "jobs", "--share", "s", l1)
    assert r.returncode == 0 and b"acknowledged 1 record(s)" in r.stderr
    r = run_kq("ack", "jobs", "--share", "s", input=got[0]["lease"] + "\n")
    assert r.returncode == 0, r.stderr
    # A lease settled twice: exit 1, naming it; the other lease given with it is settled.
    r = run_kq("ack", "jobs", "--share", "s", l1, got[1]["lease"], "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"acknowledged": 1, "released": 0, "dead_lettered": 0, "not_held": [l1]}
    assert r.stderr.decode().startswith(f"kq: error: share group 's' does not hold 1 lease(s) ({l1})")
    # nack: delivered again (attempt 2) after the backoff; nack --dead-letter: to the DLQ at once
    assert run_kq("nack", "jobs", "--share", "s", l2).returncode == 0
    again = wait_for(lambda: run_kq("consume", "jobs", "--share", "s", "-n", "1", "--json").stdout, message="b again")
    again = json.loads(again)
    assert (again["value"], again["attempt"]) == ("b", 2)
    r = run_kq("nack", "jobs", "--share", "s", again["lease"], "--dead-letter", "--reason", "bad address")
    assert r.returncode == 0 and b"dead-lettered 1 record(s)" in r.stderr, r.stderr
    [dead] = dead_letters(run_kq)
    assert dead["value"] == "b" and dead["h"]["kq.dlq.reason"] == "bad address" and dead["h"]["kq.dlq.attempts"] == "2"
    [state] = states(data_dir, "s", "jobs").values()
    assert (state.start, state.acked, state.dead) == (4, 3, 1)


def test_records_given_back_in_neighbouring_batches_are_delivered_once_each(run_kq):
    # Three batches of two, each given back: their ranges lie side by side, and one acquire takes them all.
    produce(run_kq, [str(n) for n in range(6)])
    # All three are taken before any is given back: a backoff that passed while a slow machine
    # started the next command would hand the first batch out again instead of the next one.
    batches = []
    for _ in range(3):
        leases = [
            json.loads(line)["lease"]
            for line in run_kq("consume", "jobs", "--share", "s", "-n", "2", "--json").stdout.splitlines()
        ]
        assert len(leases) == 2
        batches.append(leases)
    for leases in batches:
        assert run_kq("nack", "jobs", "--share", "s", *leases).returncode == 0

    def all_due():
        [p] = json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"]
        return p["retrying"] == 0 and p["available"] == 6

    wait_for(all_due, message="the backoffs to pass")
    r = run_kq("consume", "jobs", "--share", "s", "-n", "10", "--json")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(g["offset"], g["attempt"]) for g in got] == [(n, 2) for n in range(6)]
    assert len({g["lease"] for g in got}) == 6


def test_records_a_reader_left_unread_are_given_back_at_once(run_kq, data_dir):
    # `kq consume jobs --share s | head -n 3`: the round being written when head left goes back at once.
    produce(run_kq, ["x" * 1000 + str(n) for n in range(2000)])  # a round (1,000 records) overfills a pipe
    p = subprocess.Popen(
        KQ + ["--data-dir", data_dir, "consume", "jobs", "--share", "s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = [p.stdout.readline() for _ in range(3)]
    p.stdout.close()
    assert (p.wait(timeout=30), p.stderr.read()) == (0, b"")
    assert [line.split(b"\t")[1].rstrip(b"\n")[-1:] for line in first] == [b"0", b"1", b"2"]
    [part] = json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"]
    assert (part["acquired"], part["available"]) == (0, 2000)
    # Given back uncounted: the next worker gets them at their first attempt (never dead-lettered for it).
    again = json.loads(run_kq("consume", "jobs", "--share", "s", "-n", "1", "--json").stdout)
    assert (again["offset"], again["attempt"]) == (0, 1)


def test_ack_takes_consumes_lines_as_they_are_and_an_empty_stdin_settles_nothing(run_kq):
    produce(run_kq, ["a", "b", "c"])
    printed = run_kq("consume", "jobs", "--share", "s", "-n", "2").stdout  # lease<TAB>value lines
    r = run_kq("ack", "jobs", "--share", "s", input=printed)
    assert (r.returncode, r.stderr) == (0, b"kq: acknowledged 2 record(s)\n")
    # `jq -r .lease batch.json | kq ack …` when the batch was empty: nothing to do, not a usage error.
    r = run_kq("ack", "jobs", "--share", "s", "--json", input="")
    assert r.returncode == 0 and json.loads(r.stdout)["acknowledged"] == 0
    left = run_kq("consume", "jobs", "--share", "s", "--json").stdout.splitlines()
    assert [json.loads(line)["value"] for line in left] == ["c"]


def test_bad_lease_ids_and_unknown_share_groups_are_clear_errors(run_kq):
    produce(run_kq, ["a"])
    r = run_kq("ack", "jobs", "--share", "s", "nonsense")
    assert r.returncode == 2 and b"is not a lease id" in r.stderr
    r = run_kq("ack", "jobs", "--share", "nobody", "0:0:abc")
    assert r.returncode == 1 and r.stderr == b"kq: error: share group 'nobody' does not exist\n"
    assert run_kq("consume", "jobs", "--share", "s", "-n", "1").returncode == 0
    r = run_kq("ack", "jobs", "--share", "s", "7:0:abc")
    assert r.returncode == 2 and b"partition 7 does not exist" in r.stderr
    for args, hint in (
        (["--share", "s", "-g", "g"], b"use either -g/--group"),
        (["--share", "s", "-o", "0"], b"no -o or -p"),
        (["--max-attempts", "3"], b"need(s) --share"),
        (["--parallel", "2"], b"--parallel needs --share and --exec"),
        (["--share", "s", "--lease", "soon"], b"bad duration"),
        (["--share", "s", "--dead-letter", "../x"], b"invalid topic name"),
    ):
        r = run_kq("consume", "jobs", *args)
        assert r.returncode == 2 and hint in r.stderr, (args, r.stderr)
        assert b"Traceback" not in r.stderr
    run_kq("consume", "jobs", "-g", "g")
    r = run_kq("consume", "jobs", "--share", "g", "-n", "1")
    assert r.returncode == 2 and b"is a consumer group" in r.stderr


def test_an_expired_lease_is_delivered_again_and_its_late_ack_is_refused_once_another_took_it(run_kq, data_dir):
    produce(run_kq, ["x"])
    first = json.loads(run_kq("consume", "jobs", "--share", "s", "-n", "1", "--lease", "200ms", "--json").stdout)
    assert first["attempt"] == 1
    again = wait_for(
        lambda: run_kq("consume", "jobs", "--share", "s", "-n", "1", "--json").stdout, message="the lease to expire"
    )
    again = json.loads(again)
    assert (again["offset"], again["attempt"]) == (0, 2) and again["lease"] != first["lease"]
    assert run_kq("ack", "jobs", "--share", "s", first["lease"]).returncode == 1
    assert run_kq("ack", "jobs", "--share", "s", again["lease"]).returncode == 0


def test_a_late_ack_is_taken_while_nobody_else_took_the_record(run_kq, data_dir):
    produce(run_kq, ["x"])
    first = json.loads(run_kq("consume", "jobs", "--share", "s", "-n", "1", "--lease", "100ms", "--json").stdout)
    wait_for(
        lambda: json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"][0]["acquired"] == 0,
        message="the lease to expire",
    )
    assert run_kq("ack", "jobs", "--share", "s", first["lease"]).returncode == 0
    assert run_kq("consume", "jobs", "--share", "s", "-n", "1").stdout == b""


def test_concurrent_acks_of_one_lease_settle_it_once(run_kq, data_dir):
    produce(run_kq, ["x", "y"])
    lease = run_kq("consume", "jobs", "--share", "s", "-n", "1").stdout.decode().split("\t")[0]
    procs = [
        subprocess.Popen(KQ + ["--data-dir", data_dir, "ack", "jobs", "--share", "s", lease], stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    codes = sorted(p.wait(timeout=60) for p in procs)
    for p in procs:
        p.stderr.close()
    assert codes == [0] + [1] * 7
    [state] = states(data_dir, "s", "jobs").values()
    assert (state.acked, state.start, state.next) == (1, 1, 1)


def kq_with_clock(data_dir: str, offset_seconds: float, *args) -> subprocess.CompletedProcess:
    """kq in a process whose wall clock (time.time, time.time_ns) is off by ``offset_seconds``."""
    shift = (
        "import sys, time; off = float(sys.argv.pop(1)); t, tn = time.time, time.time_ns; "
        "time.time = lambda: t() + off; time.time_ns = lambda: tn() + int(off * 1e9); "
        "from kq.cli import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", shift, str(offset_seconds), "--data-dir", data_dir, *map(str, args)],
        capture_output=True,
        timeout=60,
    )


def test_a_wall_clock_set_forward_or_back_moves_no_lease(run_kq, data_dir):
    produce(run_kq, ["held", "short"])
    held = run_kq("consume", "jobs", "--share", "s", "-n", "1", "--lease", "60s").stdout
    assert held.endswith(b"\theld\n")
    # Two hours ahead, a worker neither takes the held record nor thinks its lease ran out.
    r = kq_with_clock(data_dir, 7200, "consume", "jobs", "--share", "s", "-n", "2", "--lease", "200ms", "--json")
    assert r.returncode == 0, r.stderr
    [short] = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert short["value"] == "short"
    # An hour behind, a worker still sees the short lease run out when it does.
    again = wait_for(
        lambda: kq_with_clock(data_dir, -3600, "consume", "jobs", "--share", "s", "-n", "2", "--json").stdout,
        message="the short lease to expire for a worker whose clock is an hour behind",
    )
    [again] = [json.loads(line) for line in again.decode().splitlines()]
    assert (again["value"], again["attempt"]) == ("short", 2)
    [state] = states(data_dir, "s", "jobs").values()
    assert [(r.first, r.state, r.attempt) for r in state.ranges] == [(0, "acquired", 1), (1, "acquired", 2)]


def test_parallel_runs_commands_at_once(run_kq, tmp_path):
    produce(run_kq, ["1", "2", "3", "4"], partitions=2)
    started = tmp_path / "started"
    started.mkdir()
    # Each command waits until all four have started: only four at once can all succeed.
    cmd = (
        f"touch {started}/$KQ_PARTITION-$KQ_OFFSET; i=0; while [ $(ls {started} | wc -l) -lt 4 ]; do "
        "i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done"
    )
    r = run_kq("consume", "jobs", "--share", "s", "--exec", cmd, "--parallel", "4", "--retry-backoff", "1h")
    assert r.returncode == 0, r.stderr
    assert b"4 record(s) acknowledged" in r.stderr and b"failed" not in r.stderr


def test_a_batch_is_acknowledged_or_retried_as_a_whole(run_kq, tmp_path):
    produce(run_kq, [str(i) for i in range(7)])
    seen = tmp_path / "seen"
    cmd = f'tr "\\n" " " >> {seen}; echo "$KQ_ATTEMPT" >> {seen}; [ "$KQ_OFFSET" != 3 ] || [ "$KQ_ATTEMPT" = 2 ]'
    r = run_kq("consume", "jobs", "--share", "s", "--exec", cmd, "--batch", "3", "--retry-backoff", "0s")
    assert r.returncode == 0, r.stderr
    runs = seen.read_text().splitlines()
    assert sorted(runs) == ["0 1 2 1", "3 4 5 1", "3 4 5 2", "6 1"]
    assert runs.index("3 4 5 1") < runs.index("3 4 5 2")
    assert b"7 record(s) acknowledged, 1 command run(s) failed" in r.stderr


def test_cron_runs_with_timeout_drain_the_queue_and_never_run_a_record_twice(run_kq, spawn_kq, tmp_path):
    """Three cron-style workers, each command outliving the lease it started under (extended while it runs)."""
    produce(run_kq, [str(i) for i in range(12)], partitions=3)
    log = tmp_path / "log"
    cmd = f'echo "start $KQ_PARTITION/$KQ_OFFSET" >> {log}; sleep 0.6; echo "end $KQ_PARTITION/$KQ_OFFSET" >> {log}'
    workers = [
        spawn_kq(
            "consume", "jobs", "--share", "cron", "--exec", cmd, "--timeout", "1", "--lease", "300ms", "--parallel", "2"
        )
        for _ in range(3)
    ]
    for w in workers:
        _, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
        assert b"lost their lease" not in err
    lines = log.read_text().splitlines()
    starts = sorted(line.split()[1] for line in lines if line.startswith("start"))
    records = sorted(run_kq("consume", "jobs", "-F", "%p/%o\\n").stdout.decode().split())
    assert len(records) == 12 and starts == records, "each record ran exactly once"
    assert len(lines) == 24
    assert (
        run_kq("consume", "jobs", "--share", "cron", "--exec", cmd, "--timeout", "0.2").returncode == 3
    )  # nothing left


def test_workers_killed_with_sigkill_in_a_loop_lose_nothing_and_settle_every_record_once(
    run_kq, spawn_kq, data_dir, tmp_path
):
    """Workers with random failures, some records always failing, and kill -9 of random workers:
    every record ends acknowledged exactly once or dead-lettered, never both, and none is lost."""
    total, partitions = 300, 4
    produce(run_kq, [str(i) for i in range(total)], partitions=partitions)
    ok = tmp_path / "ok"
    cmd = (
        f'v=$(cat); case $v in *7) echo "poison $v" >&2; exit 3;; esac; '
        f'[ $(od -An -N1 -tu1 /dev/urandom) -ge 40 ] || exit 1; echo "$v" >> {ok}'
    )
    args = ["consume", "jobs", "--share", "w", "--exec", cmd, "--parallel", "2", "--lease", "1s"]
    args += ["--max-attempts", "4", "--retry-backoff", "10ms", "--retry-backoff-max", "50ms", "--timeout", "1"]
    rng = random.Random(16)
    workers = [spawn_kq(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(4)]
    kills = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, 0.4))
        victim = rng.choice([w for w in workers if w.poll() is None] or workers)
        if victim.poll() is None:
            victim.send_signal(signal.SIGKILL)
            kills += 1
        victim.wait()
        workers[workers.index(victim)] = spawn_kq(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for w in workers:
        w.wait(timeout=60)
    assert kills >= 10

    def drained():
        r = run_kq("-q", *args[:-1], "2")
        assert r.returncode in (0, 3), r.stderr
        rows = json.loads(run_kq("offsets", "show", "jobs", "-g", "w", "--json").stdout)
        return sum(row["lag"] for row in rows) == 0

    wait_for(drained, timeout=60, interval=0.1, message="the share group to settle every record")
    found = states(data_dir, "w", "jobs")
    ends = {p: DataDir(data_dir).topic("jobs").partition(p).end_offset() for p in range(partitions)}
    assert sum(ends.values()) == total
    for p, state in found.items():
        assert (state.start, state.next, state.ranges) == (ends[p], ends[p], [])
    dead = dead_letters(run_kq)
    dead_values = [d["value"] for d in dead]
    assert len(dead_values) == len(set(dead_values)), "a record dead-lettered twice"
    acked = sum(s.acked for s in found.values())
    assert sum(s.dead for s in found.values()) == len(dead)
    assert acked + len(dead) == total, "every record settled exactly once: acknowledged or dead-lettered"
    poison = {str(i) for i in range(total) if str(i).endswith("7")}
    assert poison <= set(dead_values)
    succeeded = set(ok.read_text().split())
    assert not poison & succeeded
    assert set(map(str, range(total))) - set(dead_values) <= succeeded, "an acknowledged record never ran to success"
    for d in dead:
        assert d["h"]["kq.dlq.share"] == "w" and int(d["h"]["kq.dlq.attempts"]) <= 4


def test_describe_list_offsets_and_delete_show_a_share_group(run_kq, data_dir):
    produce(run_kq, [str(i) for i in range(5)], partitions=1)
    run_kq("consume", "jobs", "--share", "s", "-n", "2", "--lease", "60s")
    lease = run_kq("consume", "jobs", "--share", "s", "-n", "1").stdout.decode().split("\t")[0]
    run_kq("nack", "jobs", "--share", "s", lease, "--dead-letter")
    # A backoff of an hour: the record is still retrying when it is described, however slow the machine.
    lease = run_kq("consume", "jobs", "--share", "s", "-n", "1", "--retry-backoff", "1h").stdout.decode()
    run_kq("nack", "jobs", "--share", "s", lease.split("\t")[0])
    d = json.loads(run_kq("group", "describe", "s", "--json").stdout)
    [row] = d["partitions"]
    assert {k: row[k] for k in ("acquired", "available", "retrying", "dead_lettered", "acknowledged", "lag")} == {
        "acquired": 2,
        "available": 1,
        "retrying": 1,
        "dead_lettered": 1,
        "acknowledged": 0,
        "lag": 4,
    }
    [worker] = [w for w in d["workers"] if w["leases"]]
    assert worker["leases"][0]["first"] == 0 and worker["leases"][0]["last"] == 1
    text = run_kq("group", "describe", "s").stdout.decode().splitlines()
    assert text[0].split("\t") == [
        "topic",
        "partition",
        "acquired",
        "available",
        "retrying",
        "scheduled",
        "next_due",
        "dead_lettered",
        "acknowledged",
        "lag",
    ]
    assert text[1].split("\t") == ["jobs", "0", "2", "1", "1", "0", "-", "1", "0", "4"]
    rows = json.loads(run_kq("offsets", "show", "jobs", "--json").stdout)
    assert [(r["group"], r["committed"], r["lag"]) for r in rows] == [("s", 0, 4)]
    run_kq("consume", "jobs", "-g", "plain")
    assert run_kq("group", "list").stdout.split() == [b"plain", b"s"]
    listed = json.loads(run_kq("group", "list", "--json").stdout)
    assert [(g["group"], g["type"]) for g in listed] == [("plain", "consumer"), ("s", "share")]
    # Completion offers share names for --share, and both kinds for group describe.
    assert complete_bash("kq consume jobs --share ", data=data_dir) == ["s"]
    assert complete_bash("kq group describe ", data=data_dir) == ["plain", "s"]
    assert run_kq("group", "delete", "s").returncode == 0
    assert run_kq("group", "list").stdout.split() == [b"plain"]
    assert run_kq("group", "describe", "s").returncode == 1


def test_a_live_worker_keeps_its_share_group_from_being_deleted(run_kq, spawn_kq, data_dir):
    produce(run_kq, ["a"])
    worker = spawn_kq("consume", "jobs", "--share", "s", "-f")
    wait_for(lambda: worker.stdout.readline(), message="the worker's first record")
    r = run_kq("group", "delete", "s")
    assert r.returncode == 1 and b"live member" in r.stderr
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert run_kq("group", "delete", "s").returncode == 0


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"[1, 2]", b"a JSON list, not an object"),
        (b"{" * 5000, b"not JSON"),
        (b'{"format": 1, "start": -1}', b"start is -1"),
        (
            b'{"format":1,"start":0,"next":5,"acked":0,"dead":0,"skipped":0,"boot":"","ranges":[{"first":3,"last":9}]}',
            b"ranges[0] is 3..9",
        ),
    ],
)
def test_a_damaged_share_state_is_a_one_line_error_naming_it(run_kq, data_dir, content, reason):
    produce(run_kq, ["a"])
    run_kq("consume", "jobs", "--share", "s", "-n", "1")
    path = os.path.join(data_dir, "shares", "s", "jobs", "0.share")
    with open(path, "wb") as f:
        f.write(content)
    for args in (["consume", "jobs", "--share", "s", "-n", "1"], ["group", "describe", "s"]):
        r = run_kq(*args)
        assert r.returncode == 1, r.stderr
        assert r.stderr.startswith(f"kq: error: corrupt file {path}: ".encode()) and reason in r.stderr
        assert r.stderr.count(b"\n") == 1


def test_a_fifo_where_the_share_state_belongs_is_an_error_not_a_hang(run_kq, data_dir):
    produce(run_kq, ["a"])
    run_kq("consume", "jobs", "--share", "s", "-n", "1")
    path = os.path.join(data_dir, "shares", "s", "jobs", "0.share")
    os.unlink(path)
    os.mkfifo(path)
    r = run_kq("consume", "jobs", "--share", "s", "-n", "1", timeout=20)
    assert r.returncode == 1 and b"named pipe (FIFO), not a regular file" in r.stderr


def test_verify_checks_share_state_and_repair_moves_a_damaged_one_aside(run_kq, data_dir):
    produce(run_kq, ["a", "b"])
    assert run_kq("consume", "jobs", "--share", "s", "--exec", "true", "-n", "1").returncode == 0
    r = run_kq("verify")
    assert r.returncode == 0, r.stdout + r.stderr
    path = os.path.join(data_dir, "shares", "s", "jobs", "0.share")
    with open(path, "w") as f:
        f.write('{"format": 1, "start": "zero"}')
    r = run_kq("verify")
    assert r.returncode == 1
    assert f"{path}: error: state of share group 's' unreadable: start is 'zero'".encode() in r.stdout
    r = run_kq("verify", "--repair")
    assert r.returncode == 0, r.stdout
    assert b"share group 's' will start partition 0 afresh" in r.stdout
    assert not os.path.exists(path) and os.path.exists(path + ".quarantine")
    # It starts afresh: from the earliest record, delivered again.
    assert run_kq("consume", "jobs", "--share", "s", "-n", "2").stdout.decode().split()[1::2] == ["a", "b"]
    lock = os.path.join(data_dir, "shares", "s", "jobs", "0.share.lock")
    os.unlink(lock)
    os.mkfifo(lock)
    r = run_kq("verify", timeout=20)
    assert r.returncode == 1 and b"lock file of share group 's' is a named pipe (FIFO)" in r.stdout


def test_replicate_carries_share_groups_so_a_failover_delivers_nothing_twice(run_kq, data_dir, tmp_path):
    produce(run_kq, [str(i) for i in range(6)])
    replica = str(tmp_path / "replica")
    run_kq("consume", "jobs", "--share", "s", "--exec", "true", "-n", "3", "--max-attempts", "2")
    leased = run_kq("consume", "jobs", "--share", "s", "-n", "1", "--lease", "1h").stdout.decode().split("\t")[0]
    assert run_kq("replicate", "jobs", "--to", replica).returncode == 0
    src = json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"]
    rep = json.loads(run_kq("group", "describe", "s", "--json", data=replica).stdout)["partitions"]
    assert src == rep and rep[0]["acknowledged"] == 3 and rep[0]["acquired"] == 1
    settings = os.path.join("shares", "s", "jobs", "share.json")
    assert open(os.path.join(replica, settings)).read() == open(os.path.join(data_dir, settings)).read()
    # On the replica the lease still holds, and what was acknowledged is not delivered again.
    r = run_kq("consume", "jobs", "--share", "s", "-n", "10", data=replica)
    assert [line.split("\t")[1] for line in r.stdout.decode().splitlines()] == ["4", "5"]
    assert run_kq("ack", "jobs", "--share", "s", leased, data=replica).returncode == 0
    # A second replicate changes nothing that is the same, and carries what changed.
    assert run_kq("ack", "jobs", "--share", "s", leased).returncode == 0
    assert run_kq("replicate", "jobs", "--to", replica).returncode == 0
    assert (
        json.loads(run_kq("group", "describe", "s", "--json", data=replica).stdout)["partitions"][0]["acknowledged"]
        == 4
    )


def test_a_compacted_topics_gaps_are_settled_and_every_survivor_delivered_once(run_kq, data_dir, tmp_path):
    run_kq("topic", "create", "users", "--cleanup", "compact", "--segment-bytes", "4K")
    for i in range(20):
        lines = "".join(f"user{(i * 10 + j) % 7}:v{i * 10 + j}{'.' * 200}\n" for j in range(10))
        assert run_kq("produce", "users", "-K", ":", input=lines).returncode == 0
    assert run_kq("maintain", "users").returncode == 0
    survivors = run_kq("consume", "users", "-F", "%o\\n").stdout.split()
    assert len(survivors) < 200
    log = tmp_path / "ran"
    r = run_kq("consume", "users", "--share", "s", "--exec", f'echo "$KQ_OFFSET" >> {log}', "--parallel", "4")
    assert r.returncode == 0, r.stderr
    assert sorted(log.read_text().split(), key=int) == [o.decode() for o in survivors]
    [state] = states(data_dir, "s", "users").values()
    assert (state.start, state.next, state.ranges, state.acked) == (200, 200, [], len(survivors))


def test_sigterm_stops_the_commands_and_gives_their_records_back_uncounted(run_kq, spawn_kq, tmp_path):
    produce(run_kq, ["slow", "quick"])
    started, quick = tmp_path / "started", tmp_path / "quick"
    # The slow command starts its long sleep only once the quick one is done (and has had time to exit).
    cmd = (
        f'v=$(cat); [ "$v" = quick ] && {{ touch {quick}; exit 0; }}; '
        f"while [ ! -e {quick} ]; do sleep 0.01; done; sleep 0.1; touch {started}; sleep 30"
    )
    worker = spawn_kq("consume", "jobs", "--share", "s", "--exec", cmd, "--parallel", "2", "-f")
    wait_for(started.exists, message="the slow command to start")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert b"1 record(s) acknowledged" in err
    # The slow record is available at once, and the interrupted delivery did not count as an attempt.
    again = json.loads(run_kq("consume", "jobs", "--share", "s", "-n", "2", "--json").stdout)
    assert (again["value"], again["attempt"]) == ("slow", 1)


def test_a_worker_that_lost_its_lease_stops_its_command_rather_than_run_it_beside_another(run_kq, spawn_kq, tmp_path):
    produce(run_kq, ["job"])
    started = tmp_path / "started"
    worker = spawn_kq("consume", "jobs", "--share", "s", "--exec", f"touch {started}; sleep 20", "--lease", "300ms")
    wait_for(started.exists, message="the command to start")
    worker.send_signal(signal.SIGSTOP)  # stalled past its lease: another worker takes the record
    try:
        taken = wait_for(
            lambda: run_kq("consume", "jobs", "--share", "s", "-n", "1", "--lease", "1h", "--json").stdout,
            message="the stalled worker's lease to run out",
        )
    finally:
        worker.send_signal(signal.SIGCONT)
    assert json.loads(taken)["attempt"] == 2
    began = time.monotonic()
    _, err = worker.communicate(timeout=30)
    assert time.monotonic() - began < 10, "the command was left to run beside the other worker's"
    assert b"1 record(s) lost their lease while their command ran" in err


@pytest.mark.parametrize("mode", [["--share", "s", "--parallel", "8"], ["-g", "g", "--batch", "1"]])
def test_sigterm_while_commands_start_runs_none_on_empty_input_and_leaves_no_lease_behind(
    run_kq, spawn_kq, tmp_path, mode
):
    # A signal landing inside Popen once left a command started with its stdin closed, untracked.
    produce(run_kq, [str(n) for n in range(100_000)])
    log = tmp_path / "runs"
    rng = random.Random(7)
    log.write_text("")
    for _ in range(10):
        before = log.stat().st_size
        worker = spawn_kq("consume", "jobs", *mode, "--exec", f'v=$(cat); echo "[$v]" >> {log}')
        wait_for(lambda: log.stat().st_size > before, message="a command to run")
        time.sleep(rng.uniform(0, 0.05))  # a moment into the stream of commands starting, not a synchronisation
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
        assert worker.returncode == 128 + signal.SIGTERM
    runs = log.read_text().splitlines()
    assert "[]" not in runs, f"{runs.count('[]')} of {len(runs)} commands ran on empty input"
    if mode[0] == "--share":
        [p] = json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"]
        assert p["acquired"] == 0, "records stayed leased to a worker that was gone"


def test_a_replayed_dead_letter_that_fails_again_carries_one_set_of_dlq_headers(run_kq):
    produce(run_kq, ["ok", "poison"])
    cmd = 'v=$(cat); [ "$v" != poison ] || { echo "still poison" >&2; exit 4; }'
    fail = ("consume", "jobs", "--share", "s", "--exec", cmd, "--max-attempts", "1")
    assert run_kq(*fail).returncode == 1
    [first] = dead_letters(run_kq)
    assert first["h"]["kq.dlq.offset"] == "1"
    # Replayed (the README's recipe), it fails again: its headers say where it was last, once,
    # and where it was first.
    replay = run_kq("consume", "jobs.dlq", "--json").stdout
    assert run_kq("produce", "jobs", "--json", input=replay).returncode == 0
    assert run_kq(*fail).returncode == 1
    second = dead_letters(run_kq)[1]
    names = [name for name, _ in second["headers"]]
    assert len(names) == len(set(names)), names
    h = second["h"]
    assert (h["kq.dlq.topic"], h["kq.dlq.offset"], h["kq.dlq.exit"], h["kq.dlq.stderr"]) == (
        "jobs",
        "2",
        "4",
        "still poison",
    )
    assert (h["kq.dlq.original-topic"], h["kq.dlq.original-partition"], h["kq.dlq.original-offset"]) == (
        "jobs",
        "0",
        "1",
    )


def test_nack_dead_letter_writes_no_empty_dlq_headers(run_kq):
    produce(run_kq, ["a"])
    [lease] = [
        json.loads(line)["lease"] for line in run_kq("consume", "jobs", "--share", "s", "--json").stdout.splitlines()
    ]
    assert run_kq("nack", "jobs", "--share", "s", "--dead-letter", lease).returncode == 0
    [dead] = dead_letters(run_kq)
    assert all(value != "" for _, value in dead["headers"]), dead["headers"]
    assert "kq.dlq.exit" not in dead["h"] and dead["h"]["kq.dlq.reason"] == "rejected by kq nack"


def craft_state(data_dir: str, change) -> None:
    """Rewrite partition 0's share state of group 's' on 'jobs' as ``change(body)`` leaves it."""
    path = os.path.join(data_dir, "shares", "s", "jobs", "0.share")
    with open(path) as f:
        body = json.load(f)
    change(body)
    with open(path, "w") as f:
        json.dump(body, f)


def test_a_crafted_dead_letter_target_is_not_followed_and_verify_names_it(run_kq, data_dir):
    produce(run_kq, [f"job{i}" for i in range(10)])
    assert len(run_kq("consume", "jobs", "--share", "s", "-n", "10").stdout.splitlines()) == 10

    def into_the_source_topic(body):
        [r] = body["ranges"]
        r.update(state="dead-lettering", dlq=["jobs", 0, 10], until=0)
        del r["lease"], r["owner"]
        r.pop("detached", None)

    craft_state(data_dir, into_the_source_topic)
    r = run_kq("verify")
    assert r.returncode == 1
    assert (
        "share group 's' dead-letters offsets 0..9 to the topic itself, not to its dead-letter topic 'jobs.dlq'"
        in (r.stdout + r.stderr).decode()
    )
    r = run_kq("consume", "jobs", "--share", "s", "--exec", "true")
    assert r.returncode == 0, r.stderr
    assert b"dead-letters offsets 0..9 to 'jobs', not to the group's dead-letter topic 'jobs.dlq'" in r.stderr
    # The source topic got nothing; the group's dead-letter topic got the ten, once each.
    assert run_kq("consume", "jobs").stdout.decode().split() == [f"job{i}" for i in range(10)]
    assert [d["value"] for d in dead_letters(run_kq)] == [f"job{i}" for i in range(10)]
    assert run_kq("verify").returncode == 0
    r = run_kq("consume", "jobs", "--share", "other", "--dead-letter", "jobs", "--exec", "true")
    assert r.returncode == 2 and b"the dead-letter topic must be another topic than 'jobs'" in r.stderr


def test_a_crafted_everlasting_lease_of_nobody_is_void_and_verify_names_it(run_kq, data_dir, tmp_path):
    produce(run_kq, [f"job{i}" for i in range(10)])
    assert run_kq("consume", "jobs", "--share", "s", "--exec", "true", "-n", "1").returncode == 0

    def everlasting(body):
        body["ranges"] = [
            {
                "first": 1,
                "last": 9,
                "state": "acquired",
                "attempt": 1,
                "lease": "abc123",
                "until": 2**63 - 1,
                "owner": "00000000000000000001-1-abcdef",
            }  # fmt: skip
        ]
        body["next"] = 10

    craft_state(data_dir, everlasting)
    r = run_kq("verify")
    assert r.returncode == 1
    assert "holds offsets 1..9 under a lease that ends in" in (r.stdout + r.stderr).decode()
    [row] = json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"]
    assert (row["acquired"], row["available"]) == (0, 9)
    log = tmp_path / "ran"
    r = run_kq("consume", "jobs", "--share", "s", "--exec", f'echo "$(cat) $KQ_ATTEMPT" >> {log}', "--timeout", "1")
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [f"job{i} 2" for i in range(1, 10)]
    assert run_kq("verify").returncode == 0
    r = run_kq("consume", "jobs", "--share", "s", "--lease", "25h")  # no lease kq grants is that long
    assert r.returncode == 2 and b"a lease lasts at most 24h" in r.stderr


def test_a_lease_ends_with_its_worker_not_with_its_deadline(run_kq, spawn_kq, tmp_path):
    # A worker killed with SIGKILL holds an hour's lease: the next worker takes its record at once.
    produce(run_kq, ["only"])
    pid_file = tmp_path / "pid"
    worker = spawn_kq("consume", "jobs", "--share", "s", "--lease", "1h", "--exec", f"echo $$ > {pid_file}; sleep 60")
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), message="the command to start")
    worker.kill()
    worker.wait()
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # kq cannot stop the command of a worker killed so
    log = tmp_path / "ran"
    r = run_kq("consume", "jobs", "--share", "s", "--exec", f'echo "$(cat) $KQ_ATTEMPT" >> {log}')
    assert r.returncode == 0, r.stderr
    assert log.read_text() == "only 2\n"
    # A lease printed for a script is the script's: it outlives the worker that printed it.
    produce(run_kq, ["printed"], topic="more")
    assert run_kq("consume", "more", "--share", "s", "--lease", "1h").stdout.decode().endswith("\tprinted\n")
    assert run_kq("consume", "more", "--share", "s", "--exec", "true").returncode == 0
    [row] = [
        p for p in json.loads(run_kq("group", "describe", "s", "--json").stdout)["partitions"] if p["topic"] == "more"
    ]
    assert (row["acquired"], row["acknowledged"]) == (1, 0)
