"""`consume --exec` as a cron job runs it: `--exec-timeout` bounds a hung command, and the exit status
says whether every record got through (`-g` and `--share`), through real kq processes."""

from __future__ import annotations

import json
import time


def produce(run_kq, topic: str, lines: list[str]) -> None:
    r = run_kq("produce", topic, input="".join(f"{line}\n" for line in lines))
    assert r.returncode == 0, r.stderr


def dead_letters(run_kq, topic: str) -> list[dict]:
    r = run_kq("consume", topic, "--json")
    assert r.returncode == 0, r.stderr
    return [{**json.loads(line), "h": dict(json.loads(line)["headers"])} for line in r.stdout.decode().splitlines()]


def test_exec_timeout_stops_a_hung_group_command_and_commits_nothing_of_its_batch(run_kq, tmp_path):
    produce(run_kq, "jobs", ["a", "b", "hang", "c"])
    cmd = 'v=$(cat); [ "$v" = hang ] && sleep 25; exit 0'
    began = time.monotonic()
    r = run_kq("consume", "jobs", "-g", "cron", "--batch", "1", "--exec", cmd, "--exec-timeout", "1s", "--timeout", "3")
    took = time.monotonic() - began
    assert r.returncode == 1, r.stderr
    assert took < 15, f"a hung command held the run for {took:.1f} s"
    err = r.stderr.decode()
    assert "ran longer than --exec-timeout (1 s) and was killed by signal 15 on jobs/0 offsets 2..2" in err
    # The batches before it were committed; the hung one and what follows come again.
    again = run_kq("consume", "jobs", "-g", "cron", "--exec", "cat")
    assert again.returncode == 0 and again.stdout == b"hang\nc\n"


def test_exec_timeout_is_a_duration_and_needs_exec(run_kq):
    produce(run_kq, "jobs", ["a"])
    r = run_kq("consume", "jobs", "-g", "g", "--exec-timeout", "1s")
    assert r.returncode == 2 and b"--exec-timeout needs --exec" in r.stderr
    r = run_kq("consume", "jobs", "-g", "g", "--exec", "cat", "--exec-timeout", "soon")
    assert r.returncode == 2 and b"bad duration 'soon'" in r.stderr


def test_exec_timeout_bounds_a_share_worker_whose_command_hangs(run_kq):
    # The cron line: without --exec-timeout the lease is extended while the command
    # runs, and `sleep 25` held the run 26 s whatever --timeout said.
    produce(run_kq, "hang", ["x"])
    began = time.monotonic()
    r = run_kq(
        "consume", "hang", "--share", "h", "--exec", "sleep 25", "--timeout", "3", "--lease", "2s",
        "--exec-timeout", "1s", "--max-attempts", "1",
    )  # fmt: skip
    took = time.monotonic() - began
    assert r.returncode == 1, r.stderr
    assert took < 12, f"a hung command held the run for {took:.1f} s"
    [dead] = dead_letters(run_kq, "hang.dlq")
    assert dead["h"]["kq.dlq.reason"] == "command ran longer than --exec-timeout (1 s) and was killed by signal 15"
    assert dead["h"]["kq.dlq.exit"] == "-15"


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(run_kq):
    produce(run_kq, "hang", ["x"])
    began = time.monotonic()
    r = run_kq(
        "consume", "hang", "--share", "h", "--exec", "trap '' TERM; sleep 25", "--exec-timeout", "500ms",
        "--max-attempts", "1",
    )  # fmt: skip
    took = time.monotonic() - began
    assert r.returncode == 1, r.stderr
    assert took < 15, f"a command ignoring SIGTERM held the run for {took:.1f} s"
    [dead] = dead_letters(run_kq, "hang.dlq")
    assert dead["h"]["kq.dlq.reason"] == "command ran longer than --exec-timeout (0.5 s) and was killed by signal 9"


def test_a_share_run_exits_1_when_a_failed_record_is_dead_lettered_or_waiting_0_once_a_retry_succeeded(run_kq):
    produce(run_kq, "jobs", ["good", "poison"])
    cmd = 'v=$(cat); [ "$v" != poison ]'
    # Dead-lettered at its last attempt: exit 1, as the README's table says of a failed --exec command.
    r = run_kq("consume", "jobs", "--share", "s", "--exec", cmd, "--max-attempts", "2", "--retry-backoff", "10ms",
               "--timeout", "2")  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert b"1 record(s) acknowledged, 2 command run(s) failed, 1 record(s) dead-lettered" in r.stderr
    assert b"kq: error: command 'v=$(cat); [ \"$v\" != poison ]' failed on 1 record(s)" in r.stderr
    assert b"(1 dead-lettered to 'jobs.dlq')" in r.stderr
    # Left waiting for a retry (a cron run without --timeout ends before the backoff): exit 1 too.
    produce(run_kq, "jobs", ["poison"])
    r = run_kq("consume", "jobs", "--share", "s", "--exec", cmd, "--max-attempts", "2", "--retry-backoff", "1m")
    assert r.returncode == 1, r.stderr
    assert b"(0 dead-lettered to 'jobs.dlq', 1 waiting for a retry)" in r.stderr

    # A record whose command failed, then succeeded on a retry within the run, got through: exit 0
    # (the failed run is still counted on stderr).
    produce(run_kq, "flaky", ["flaky"])
    cmd = 'cat >/dev/null; [ "$KQ_ATTEMPT" -ge 2 ]'
    r = run_kq("consume", "flaky", "--share", "s", "--exec", cmd, "--retry-backoff", "10ms", "--timeout", "2")
    assert r.returncode == 0, r.stderr
    assert b"1 record(s) acknowledged, 1 command run(s) failed" in r.stderr
