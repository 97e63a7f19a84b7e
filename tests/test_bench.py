"""`kq bench`: a quick produce/consume measurement on a scratch topic."""

import json


def test_bench_reports_both_phases_and_leaves_no_topic(run_kq):
    run_kq("topic", "create", "mine")
    r = run_kq("bench", "-n", "30000", "--size", "50", "--json")
    assert r.returncode == 0, r.stderr
    phases = json.loads(r.stdout)
    assert [p["phase"] for p in phases] == ["produce", "consume"]
    for p in phases:
        assert p["messages"] == 30000 and p["bytes"] == 30000 * 50
        assert p["seconds"] > 0 and p["msg_per_s"] > 0 and p["mb_per_s"] > 0
    # The scratch topic is gone; the user's topics are untouched.
    assert run_kq("topic", "list").stdout.split() == [b"mine"]


def test_bench_with_keys_and_partitions_prints_a_plain_table_in_a_pipe(run_kq):
    r = run_kq("bench", "-n", "20000", "--partitions", "4", "--keys", "100")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split("\t") == ["phase", "messages", "bytes", "seconds", "msg_per_s", "mb_per_s"]
    assert [line.split("\t")[:2] for line in lines[1:]] == [["produce", "20000"], ["consume", "20000"]]
    assert run_kq("bench", "-n", "0").returncode == 2
