"""Consumer groups, committed offsets, `kq offsets` and `kq group`, through real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import wait_for


def lines(r):
    return r.stdout.decode().split()


def show(run_kq, topic, group):
    r = run_kq("offsets", "show", topic, "-g", group, "--json")
    assert r.returncode == 0, r.stderr
    return {row["partition"]: row for row in json.loads(r.stdout)}


def test_group_resumes_where_it_left_off(run_kq):
    run_kq("produce", "t", input="".join(f"{i}\n" for i in range(10)))
    assert lines(run_kq("consume", "t", "-g", "g", "-n", "4")) == ["0", "1", "2", "3"]
    assert lines(run_kq("consume", "t", "-g", "g", "-n", "2")) == ["4", "5"]
    assert lines(run_kq("consume", "t", "-g", "g")) == ["6", "7", "8", "9"]
    assert lines(run_kq("consume", "t", "-g", "g")) == []
    run_kq("produce", "t", input="10\n11\n")
    assert lines(run_kq("consume", "t", "-g", "g")) == ["10", "11"]


def test_two_groups_are_independent(run_kq):
    run_kq("produce", "t", input="a\nb\nc\n")
    assert lines(run_kq("consume", "t", "-g", "one", "-n", "1")) == ["a"]
    assert lines(run_kq("consume", "t", "-g", "two")) == ["a", "b", "c"]
    assert lines(run_kq("consume", "t", "-g", "one")) == ["b", "c"]


def test_reset_latest_for_a_new_group_and_no_commit(run_kq):
    run_kq("produce", "t", input="old\n")
    assert lines(run_kq("consume", "t", "-g", "late", "--reset", "latest")) == []
    run_kq("produce", "t", input="new\n")
    assert lines(run_kq("consume", "t", "-g", "late", "--no-commit")) == ["new"]
    assert lines(run_kq("consume", "t", "-g", "late", "--no-commit")) == ["new"]
    assert lines(run_kq("consume", "t", "-g", "late")) == ["new"]
    assert lines(run_kq("consume", "t", "-g", "late")) == []


def test_offsets_show_lag(run_kq):
    run_kq("topic", "create", "t", "--partitions", "2")
    run_kq("produce", "t", "-p", "0", input="a\nb\nc\n")
    run_kq("produce", "t", "-p", "1", input="d\n")
    # No group yet: only the partitions' ranges.
    rows = json.loads(run_kq("offsets", "show", "t", "--json").stdout)
    assert rows == [
        {"topic": "t", "partition": 0, "start_offset": 0, "end_offset": 3},
        {"topic": "t", "partition": 1, "start_offset": 0, "end_offset": 1},
    ]
    run_kq("offsets", "reset", "t", "-g", "g", "--to", "1", "-p", "0")
    rows = show(run_kq, "t", "g")
    assert (rows[0]["committed"], rows[0]["lag"]) == (1, 2)
    assert (rows[1]["committed"], rows[1]["lag"]) == (None, 1)
    assert rows[1]["group"] == "g"
    # Without -g, every group of the topic is listed.
    run_kq("consume", "t", "-g", "h")
    all_rows = json.loads(run_kq("offsets", "show", "t", "--json").stdout)
    assert sorted({r["group"] for r in all_rows}) == ["g", "h"]
    assert all(r["lag"] == 0 for r in all_rows if r["group"] == "h")
    plain = run_kq("offsets", "show", "t", "-g", "g").stdout.decode().splitlines()
    assert plain[0].split("\t") == ["partition", "start_offset", "end_offset", "group", "committed", "lag"]
    assert plain[2].split("\t") == ["1", "0", "1", "g", "-", "1"]


def test_every_reset_form(run_kq):
    base = 1_700_000_000_000
    run_kq(
        "produce",
        "t",
        "--json",
        input="".join(json.dumps({"value": str(i), "timestamp": base + i * 1000}) + "\n" for i in range(10)),
    )
    committed = lambda: show(run_kq, "t", "g")[0]["committed"]  # noqa: E731

    def reset(spec, *extra):
        r = run_kq("offsets", "reset", "t", "-g", "g", "--to", spec, *extra)
        assert r.returncode == 0, r.stderr
        return r

    reset("4")
    assert committed() == 4
    reset("+3")
    assert committed() == 7
    reset("-5")
    assert committed() == 2
    reset("latest")
    assert committed() == 10
    reset("earliest")
    assert committed() == 0
    reset(f"@{base + 6000}")
    assert committed() == 6
    assert lines(run_kq("consume", "t", "-g", "g")) == ["6", "7", "8", "9"]
    # Clamping is reported and applied.
    r = reset("+100")
    assert committed() == 10 and b"clamped to 10" in r.stderr
    r = reset("-100")
    assert committed() == 0 and b"clamped to 0" in r.stderr
    # A dry run prints the plan and changes nothing.
    r = reset("7", "--dry-run", "--json")
    assert json.loads(r.stdout)[0] | {} == {
        "topic": "t",
        "partition": 0,
        "group": "g",
        "start_offset": 0,
        "end_offset": 10,
        "before": 0,
        "after": 7,
        "clamped": False,
    }
    assert committed() == 0
    r = run_kq("offsets", "reset", "t", "-g", "g", "--to", "sideways")
    assert r.returncode == 2 and b"bad offset" in r.stderr


def read_available(proc, sink):
    chunk = proc.stdout.read()
    if chunk:
        sink.append(chunk)
    return b"".join(sink).decode().split()


def test_two_members_split_four_partitions(run_kq, spawn_kq):
    run_kq("topic", "create", "t", "--partitions", "4")
    first = spawn_kq("consume", "t", "-g", "g", "-f", "-F", r"%p %s\n")
    wait_for(lambda: len(group_members(run_kq)) == 1, message="the first member to join")
    second = spawn_kq("consume", "t", "-g", "g", "-f", "-F", r"%p %s\n")

    def balanced():
        owners = json.loads(run_kq("group", "describe", "g", "--json").stdout)
        members = owners["members"]
        return len(members) == 2 and all(len(m["partitions"]) == 2 for m in members) and members

    members = wait_for(balanced, timeout=10, message="2 members to own 2 partitions each")
    shares = [set(m["partitions"]) for m in members]
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == {0, 1, 2, 3}

    for p in range(4):
        run_kq("produce", "t", "-p", p, input="".join(f"m{p}-{i}\n" for i in range(25)))
    outs = {first: [], second: []}
    for proc in outs:
        os.set_blocking(proc.stdout.fileno(), False)
    wait_for(lambda: sum(len(read_available(p, outs[p])) for p in outs) == 200, message="all 100 messages")
    got = {proc: read_available(proc, outs[proc]) for proc in outs}
    for proc in outs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    parts = {proc: {int(x) for x in words[0::2]} for proc, words in got.items()}
    assert parts[first] and parts[second] and parts[first].isdisjoint(parts[second])
    values = sorted(got[first][1::2] + got[second][1::2])
    assert values == sorted(f"m{p}-{i}" for p in range(4) for i in range(25))
    assert all(r["lag"] == 0 for r in show(run_kq, "t", "g").values())
    assert group_members(run_kq) == []


def pairs(words):
    """(partition, offset) pairs from the words of `-F '%p %o\\n'` output."""
    return set(zip(map(int, words[0::2]), map(int, words[1::2])))


def group_members(run_kq, group="g"):
    r = run_kq("group", "describe", group, "--json")
    return json.loads(r.stdout)["members"] if r.returncode == 0 else []


def test_killed_member_partitions_move_to_the_survivor_with_no_gap(run_kq, spawn_kq, data_dir):
    run_kq("topic", "create", "t", "--partitions", "4")
    victim = spawn_kq("consume", "t", "-g", "g", "-f", "-F", r"%p %o\n")
    wait_for(lambda: len(group_members(run_kq)) == 1, message="the first member")
    survivor = spawn_kq("consume", "t", "-g", "g", "-f", "-F", r"%p %o\n")
    wait_for(lambda: sorted(len(m["partitions"]) for m in group_members(run_kq)) == [2, 2], message="a balanced group")
    outs = {victim: [], survivor: []}
    for proc in outs:
        os.set_blocking(proc.stdout.fileno(), False)
    for p in range(4):
        run_kq("produce", "t", "-p", p, input="".join(f"{i}\n" for i in range(50)))
    wait_for(lambda: sum(len(read_available(p, outs[p])) for p in outs) == 400, message="the first 200 messages")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    committed_at_kill = {p: r["committed"] for p, r in show(run_kq, "t", "g").items()}
    for p in range(4):
        run_kq("produce", "t", "-p", p, input="".join(f"{i}\n" for i in range(50, 100)))
    everything = {(p, o) for p in range(4) for o in range(100)}
    wait_for(
        lambda: (
            pairs(read_available(survivor, outs[survivor])) | pairs(read_available(victim, outs[victim])) == everything
        ),
        timeout=15,
        message="the survivor to take over every partition",
    )
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=10) == 0
    v = pairs(read_available(victim, outs[victim]))
    s = pairs(read_available(survivor, outs[survivor]))
    # Redelivered only what the victim wrote after its last commit (the batch in flight).
    for p, o in v & s:
        assert o >= committed_at_kill[p], f"partition {p} offset {o} was committed yet delivered again"
    assert all(r["committed"] == 100 for r in show(run_kq, "t", "g").values())


def test_exec_commits_only_after_success(run_kq, tmp_path):
    run_kq("produce", "jobs", input="".join(f"job{i}\n" for i in range(5)))
    out = tmp_path / "done.txt"
    r = run_kq("consume", "jobs", "-g", "cron", "--exec", f"cat >> {out}; exit 7", "--batch", "2")
    assert r.returncode == 1
    assert b"exited with status 7" in r.stderr and b"not committed" in r.stderr
    assert show(run_kq, "jobs", "cron")[0]["committed"] == 0  # where it started, nothing more
    # The next run gets the same messages again, and succeeds.
    r = run_kq("consume", "jobs", "-g", "cron", "--exec", f"cat >> {out}", "--batch", "2")
    assert r.returncode == 0, r.stderr
    assert out.read_text().split() == ["job0", "job1"] + [f"job{i}" for i in range(5)]
    assert show(run_kq, "jobs", "cron")[0]["committed"] == 5
    assert run_kq("consume", "jobs", "-g", "cron", "--exec", "exit 9").returncode == 0  # nothing left to run


def test_exec_failure_mid_way_keeps_earlier_batches_committed(run_kq, tmp_path):
    run_kq("produce", "jobs", input="".join(f"job{i}\n" for i in range(6)))
    script = tmp_path / "fail-on-job3.sh"
    script.write_text("#!/bin/sh\n! grep -q job3\n")
    script.chmod(0o755)
    r = run_kq("consume", "jobs", "-g", "cron", "--exec", str(script), "--batch", "2")
    assert r.returncode == 1
    assert show(run_kq, "jobs", "cron")[0]["committed"] == 2


def test_reset_and_delete_refuse_while_a_member_lives(run_kq, spawn_kq):
    run_kq("produce", "t", input="x\n")
    member = spawn_kq("consume", "t", "-g", "g", "-f")
    wait_for(lambda: len(group_members(run_kq)) == 1, message="the member to join")
    r = run_kq("offsets", "reset", "t", "-g", "g", "--to", "earliest")
    assert r.returncode == 1 and b"live member" in r.stderr
    r = run_kq("group", "delete", "g")
    assert r.returncode == 1 and b"live member" in r.stderr
    member.send_signal(signal.SIGINT)
    assert member.wait(timeout=10) == 0
    assert run_kq("offsets", "reset", "t", "-g", "g", "--to", "earliest").returncode == 0


def test_group_list_describe_delete(run_kq):
    run_kq("produce", "a", input="1\n2\n")
    run_kq("produce", "b", input="1\n")
    run_kq("consume", "a", "-g", "g1")
    run_kq("consume", "b", "-g", "g1")
    run_kq("consume", "a", "-g", "g2", "-n", "1")
    assert run_kq("group", "list").stdout == b"g1\ng2\n"
    listed = json.loads(run_kq("group", "list", "--json").stdout)
    assert listed == [
        {"group": "g1", "type": "consumer", "topics": ["a", "b"], "members": 0},
        {"group": "g2", "type": "consumer", "topics": ["a"], "members": 0},
    ]
    d = json.loads(run_kq("group", "describe", "g2", "--json").stdout)
    assert d["members"] == []
    assert [(r["topic"], r["committed"], r["lag"], r["owner"]) for r in d["partitions"]] == [("a", 1, 1, None)]
    assert run_kq("group", "delete", "g2").returncode == 0
    assert run_kq("group", "list").stdout == b"g1\n"
    r = run_kq("group", "describe", "g2")
    assert r.returncode == 1 and b"group 'g2' does not exist" in r.stderr
    assert run_kq("group", "delete", "nope").returncode == 1
    r = run_kq("consume", "a", "-g", "bad/name")
    assert r.returncode == 2 and b"invalid group name" in r.stderr
    r = run_kq("consume", "a", "-g", "g1", "-o", "5")
    assert r.returncode == 2 and b"kq offsets reset" in r.stderr


def test_kill_9_during_commits_leaves_readable_offsets(run_kq, spawn_kq, data_dir):
    run_kq("produce", "t", input="seed\n")
    rng = random.Random(7)
    feeder = spawn_kq("produce", "t", stdin=subprocess.PIPE)
    for _ in range(15):
        member = spawn_kq("consume", "t", "-g", "g", "-f", stdout=subprocess.DEVNULL)
        for _ in range(20):  # keep commits coming while the member may die
            feeder.stdin.write(b"m\n")
            feeder.stdin.flush()
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.3))
        member.send_signal(signal.SIGKILL)
        member.wait()
        rows = show(run_kq, "t", "g")  # parses every offsets file
        assert rows[0]["committed"] is None or 0 <= rows[0]["committed"] <= rows[0]["end_offset"]
    feeder.stdin.close()
    assert feeder.wait(timeout=10) == 0
    # After the storm, a fresh member resumes and finishes cleanly.
    assert run_kq("consume", "t", "-g", "g").returncode == 0
    assert show(run_kq, "t", "g")[0]["lag"] == 0


COMMITTER = """
import sys, kq
from kq.groups.store import Groups
groups = Groups(kq.DataDir(sys.argv[1]))
me = int(sys.argv[2])
for i in range(300):
    groups.commit("g", "t", 0, me * 1000 + i)
"""


def test_concurrent_commits_never_corrupt_the_offsets_store(run_kq, data_dir):
    run_kq("produce", "t", input="x\n")
    procs = [subprocess.Popen([sys.executable, "-c", COMMITTER, data_dir, str(i)]) for i in range(6)]
    seen = set()
    while any(p.poll() is None for p in procs):
        rows = show(run_kq, "t", "g")
        seen.add(rows[0]["committed"])
    assert all(p.wait() == 0 for p in procs)
    final = show(run_kq, "t", "g")[0]["committed"]
    assert final % 1000 == 299
    assert all(v is None or v % 1000 < 300 for v in seen)
    leftovers = [n for n in os.listdir(os.path.join(data_dir, "groups", "g", "t")) if ".tmp-" in n]
    assert leftovers == []


def test_sigterm_right_after_the_last_round_commits_everything_written(run_kq, spawn_kq, data_dir):
    # SIGTERM lands while a member is writing or committing its last rounds:
    # whatever it wrote out must be committed on the way out.
    for attempt in range(4):
        topic = f"t{attempt}"
        run_kq("produce", topic, "--partitions", "2", input="".join(f"{i}\n" for i in range(200_000)))
        member = spawn_kq("consume", topic, "-g", "g", "-f", stderr=subprocess.DEVNULL)
        os.set_blocking(member.stdout.fileno(), False)
        lines = [0]

        def everything_written():
            lines[0] += (member.stdout.read() or b"").count(b"\n")
            return lines[0] == 200_000

        wait_for(everything_written, timeout=30, interval=0.001, message="every message on stdout")
        member.send_signal(signal.SIGTERM)
        assert member.wait(timeout=10) == 0
        committed = {p: r["committed"] for p, r in show(run_kq, topic, "g").items()}
        ends = {p: r["end_offset"] for p, r in show(run_kq, topic, "g").items()}
        assert committed == ends, f"attempt {attempt}: written but not committed: {committed} of {ends}"


def test_a_deleted_and_recreated_topic_is_read_from_its_start_by_its_old_groups(run_kq, data_dir):
    """Before: the old group's offset 5 skipped the new topic's first records (issue #11.1)."""
    run_kq("produce", "t", input="1\n2\n3\n4\n5\n")
    assert lines(run_kq("consume", "t", "-g", "g1")) == ["1", "2", "3", "4", "5"]
    assert run_kq("topic", "delete", "t").returncode == 0
    assert not os.path.exists(os.path.join(data_dir, "groups", "g1", "t")), "its offsets go with the topic"
    run_kq("produce", "t", input="101\n102\n103\n")
    assert json.loads(run_kq("offsets", "show", "t", "--json").stdout)[0].get("group") is None
    r = run_kq("consume", "t", "-g", "g1")
    assert (r.returncode, lines(r)) == (0, ["101", "102", "103"]), r.stderr
    run_kq("produce", "t", input="104\n")
    assert lines(run_kq("consume", "t", "-g", "g1")) == ["104"]


def test_offsets_committed_for_an_earlier_topic_of_the_same_name_are_ignored(run_kq, data_dir):
    """A member of the deleted topic that commits after the deletion cannot steer the new topic."""
    run_kq("produce", "t", input="a\nb\nc\n")
    directory = os.path.join(data_dir, "groups", "g", "t")
    os.makedirs(directory)
    with open(os.path.join(directory, "0.offset"), "w") as f:
        json.dump({"format": 1, "offset": 2, "topic_id": "an-earlier-topic", "committed_at": 0}, f)
    r = run_kq("verify", "t")
    assert r.returncode == 0 and b"warning: group 'g' committed this offset for an earlier topic named 't'" in r.stdout
    assert lines(run_kq("consume", "t", "-g", "g")) == ["a", "b", "c"]


@pytest.mark.parametrize("reset, expected", [("earliest", ["a", "b", "c"]), ("latest", [])])
def test_a_committed_offset_past_the_end_resets_with_a_warning(run_kq, data_dir, reset, expected):
    run_kq("produce", "t", input="a\nb\nc\n")
    directory = os.path.join(data_dir, "groups", "g", "t")
    os.makedirs(directory)
    with open(os.path.join(directory, "0.offset"), "w") as f:
        json.dump({"format": 1, "offset": 100, "committed_at": 0}, f)  # an older kq wrote no topic id
    r = run_kq("consume", "t", "-g", "g", "--reset", reset)
    assert r.returncode == 0 and lines(r) == expected, r.stderr
    assert (
        f"kq: warning: group 'g' resumes t/0 at offset {3 if reset == 'latest' else 0} (reset: {reset}): "
        "its committed offset 100 lies past the partition's end offset 3"
    ).encode() in r.stderr, r.stderr
    run_kq("produce", "t", input="d\n")
    assert lines(run_kq("consume", "t", "-g", "g")) == ["d"]  # nothing skipped from here on


def test_a_dry_run_reset_reports_that_a_live_member_would_make_it_refuse(run_kq, spawn_kq):
    """Before: exit 0 and no word, while the real run refused (issue #11.11)."""
    run_kq("produce", "t", input="a\nb\n")
    member = spawn_kq("consume", "t", "-g", "g", "-f")
    assert member.stdout.readline() == b"a\n"
    r = run_kq("offsets", "reset", "t", "-g", "g", "--to", "earliest", "--dry-run")
    assert r.returncode == 1 and b"a real run would refuse" in r.stderr and b"live member" in r.stderr, r.stderr
    assert b"partition" in r.stdout  # the table is still shown
    r = run_kq("offsets", "reset", "t", "-g", "g", "--to", "earliest")
    assert r.returncode == 1 and b"live member" in r.stderr


def test_a_failing_exec_batch_stops_only_its_own_partition(run_kq):
    """Before: one failing batch stopped every partition of the member; partition 2 never advanced (issue #11.9)."""
    run_kq("topic", "create", "t", "--partitions", "4")
    for p in range(4):
        run_kq("produce", "t", "-p", p, input="".join(f"{p}-{i}\n" for i in range(20)))
    r = run_kq("consume", "t", "-g", "g", "--batch", "7", "--exec", 'test "$KQ_PARTITION" != 2 && cat >/dev/null')
    assert r.returncode == 1, r.stderr
    assert b"exited with status 1 on t/2 offsets 0..6" in r.stderr, r.stderr
    assert b"were not committed and the next run of group 'g' delivers them again" in r.stderr
    rows = show(run_kq, "t", "g")
    assert [rows[p]["lag"] for p in range(4)] == [0, 0, 20, 0]
    # The next run delivers partition 2 from where it stopped, and only that.
    r = run_kq("consume", "t", "-g", "g", "--exec", "cat")
    assert r.returncode == 0 and lines(r) == [f"2-{i}" for i in range(20)], r.stderr


def test_exec_without_a_group_says_what_happens_to_a_failed_batch(run_kq):
    """Before: "will be delivered again", though without a group nothing is (issue #11.10)."""
    run_kq("produce", "t", input="a\nb\n")
    r = run_kq("consume", "t", "--exec", "false")
    assert r.returncode == 1
    assert (
        b"exited with status 1 on t/0 offsets 0..1" in r.stderr and b"without a group nothing is committed" in r.stderr
    )
    assert b"delivered again" not in r.stderr


def test_a_frozen_member_is_flagged_with_its_pid(run_kq, spawn_kq):
    """A member stopped with SIGSTOP keeps its partitions (locks are by design), but
    `group describe` must show it stalled and how to recover (issue #12.8)."""
    run_kq("produce", "t", input="a\n")
    member = spawn_kq("consume", "t", "-g", "g", "-f")
    assert member.stdout.readline() == b"a\n"
    member.send_signal(signal.SIGSTOP)
    try:
        run_kq("produce", "t", input="b\nc\n")  # lag grows while it is frozen

        def stalled():
            r = run_kq("group", "describe", "g", "--json", "--stalled-after", "1")
            m = json.loads(r.stdout)["members"]
            return (m[0], r.stderr) if m and m[0]["stalled"] else None

        info, err = wait_for(stalled, timeout=20, message="the frozen member to be flagged")
        assert info["pid"] == member.pid and info["partitions"] == [0] and info["idle_seconds"] >= 1
        assert f"kill {member.pid}".encode() in err and b"kq: warning:" in err
        plain = run_kq("group", "describe", "g", "--stalled-after", "1").stdout.decode()
        assert [line.split("\t")[-1] for line in plain.splitlines() if line.startswith("member")] == ["stalled"]
    finally:
        member.send_signal(signal.SIGCONT)
    assert member.stdout.readline() == b"b\n"
    wait_for(lambda: stalled() is None, timeout=20, message="the member to be seen making progress again")
