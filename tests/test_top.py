"""``kq top`` as a person uses it: in a terminal (tmux), keys pressed, the screen read; and into a pipe."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import KQ, wait_for
from tmux_support import TMUX, Tmux

needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (Debian's tmux package)")


def row(screen: str, *first_cells: str) -> list[str] | None:
    """The cells (words) of the screen's line that starts with ``first_cells``."""
    for line in screen.splitlines():
        cells = line.split()
        if cells[: len(first_cells)] == list(first_cells):
            return cells
    return None


def group_lag(screen: str, group: str, topic: str) -> int | None:
    cells = row(screen, group, topic)
    try:
        return None if cells is None else int(cells[3].replace(",", ""))
    except ValueError:  # a cell cut short ("1…"): not the figure
        return None


@pytest.fixture
def orders(run_kq):
    """orders: 100 records; billing has read 40 of them (lag 60), audit all (lag 0); payments: 5, no group."""
    for args, text in (
        (("produce", "orders"), "\n".join(map(str, range(100)))),
        (("produce", "payments"), "a\nb\nc\nd\ne"),
    ):
        assert run_kq("-q", *args, input=text + "\n").returncode == 0
    assert run_kq("consume", "orders", "-g", "billing", "-n", "40").returncode == 0
    assert run_kq("consume", "orders", "-g", "audit").returncode == 0


@pytest.fixture
def terminal(tmp_path):
    screen = Tmux(str(tmp_path), width=120, height=40)
    yield screen
    screen.close()


def ended(terminal) -> tuple[str, str]:
    """Wait for kq top to end; the shell's EXIT= and TTY: lines after it."""
    screen = terminal.wait_for(lambda s: "TTY:" in s, message="kq top to exit")
    lines = screen.splitlines()
    return next(x for x in lines if x.startswith("EXIT=")), next(x for x in lines if x.startswith("TTY:"))


@needs_tmux
def test_top_in_a_terminal_follows_lag_sorts_filters_and_quits_with_the_terminal_restored(
    orders, terminal, data_dir, run_kq
):
    terminal.start(KQ + ["--data-dir", data_dir, "top", "--interval", "0.2"])
    screen = terminal.wait_for(lambda s: group_lag(s, "billing", "orders") == 60, message="billing's lag of 60")
    assert group_lag(screen, "audit", "orders") == 0
    assert row(screen, "orders", "1", "100") is not None and row(screen, "payments", "1", "5") is not None

    # Another process produces: the lag grows on screen, and records/s in shows.
    assert run_kq("-q", "produce", "orders", input="\n".join(map(str, range(50))) + "\n").returncode == 0
    screen = terminal.wait_for(lambda s: group_lag(s, "billing", "orders") == 110, message="billing's lag of 110")
    assert group_lag(screen, "audit", "orders") == 50
    assert float(row(screen, "orders", "1", "150")[3]) > 0  # in/s
    lines = screen.splitlines()
    assert lines.index(next(line for line in lines if line.startswith("billing"))) < lines.index(
        next(line for line in lines if line.startswith("audit"))
    ), "sorted by lag, largest first"

    terminal.type("n")  # sort by name
    screen = terminal.wait_for(lambda s: "sort: name" in s, message="sort: name")
    lines = screen.splitlines()
    assert [line.split()[0] for line in lines if line.startswith(("audit", "billing"))] == ["audit", "billing"]

    terminal.type("/aud")
    terminal.wait_for(lambda s: "filter: aud" in s.splitlines()[-1] or "filter: aud█" in s, message="the prompt")
    terminal.send("Enter")
    screen = terminal.wait_for(lambda s: "filter: aud" in s.splitlines()[0], message="the filter applied")
    assert row(screen, "audit", "orders") is not None and row(screen, "billing", "orders") is None
    assert row(screen, "orders", "1", "150") is not None and row(screen, "payments", "1", "5") is None

    terminal.send("Escape")  # clears the filter
    screen = terminal.wait_for(lambda s: row(s, "billing", "orders") is not None, message="the filter cleared")
    assert "filter:" not in screen.splitlines()[0] and row(screen, "payments", "1", "5") is not None

    terminal.type("q")
    assert ended(terminal) == ("EXIT=0", "TTY: icanon echo"), "the terminal is back in canonical mode, echoing"


@needs_tmux
def test_ctrl_c_ends_top_with_exit_0_and_the_terminal_restored(terminal, data_dir, run_kq):
    assert run_kq("-q", "produce", "orders", input="x\n").returncode == 0
    terminal.start(KQ + ["--data-dir", data_dir, "top"])
    terminal.wait_for(lambda s: row(s, "orders", "1", "1") is not None, message="the orders row")
    terminal.send("C-c")
    assert ended(terminal) == ("EXIT=0", "TTY: icanon echo")
    assert "Traceback" not in terminal.screen()


def test_once_into_a_pipe_prints_plain_tables_with_rates(orders, data_dir, run_kq):
    assert run_kq("-q", "produce", "jobs", input="1\n2\n3\n").returncode == 0
    assert run_kq("consume", "jobs", "--share", "mailer", "-n", "1").returncode == 0
    result = run_kq("top", "--once", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "\x1b" not in text
    sections = [block.splitlines() for block in text.strip().split("\n\n")]
    assert [lines[0].split("\t")[0] for lines in sections] == ["topic", "group", "share_group"]
    topics = {line.split("\t")[0]: line.split("\t") for line in sections[0][1:]}
    assert topics["orders"][:4] == ["orders", "1", "100", "0.0"]
    assert int(topics["orders"][4]) > 0  # bytes on disk
    groups = [line.split("\t") for line in sections[1][1:]]
    assert groups[0][:5] == ["billing", "orders", "0", "60", "0.0"], "largest lag first"
    assert groups[0][5:] == ["inf", "OK"]  # not reading: it never catches up at this rate
    assert groups[1][:4] == ["audit", "orders", "0", "0"] and groups[1][5] == "0"
    share = sections[2][1].split("\t")
    # One record leased to a worker (for `kq ack`), none retrying or dead, none of the 3 settled yet.
    assert share[:7] == ["mailer", "jobs", "0", "1", "0", "0", "3"]

    as_json = json.loads(run_kq("top", "--once", "--json", "--interval", "0.1", "--sort", "name").stdout)
    assert [(g["group"], g["lag"]) for g in as_json["groups"]] == [("audit", 0), ("billing", 60)]
    billing = as_json["groups"][1]
    assert billing["catch_up"] is None and billing["catches_up"] is False and billing["status"] == "OK"
    assert as_json["share_groups"][0]["group"] == "mailer"
    assert {t["topic"]: t["records"] for t in as_json["topics"]} == {"orders": 100, "payments": 5, "jobs": 3}

    # Nobody reads orders for billing and its offset has not moved for longer than --stalled-after: stopped.
    judged = json.loads(run_kq("top", "--once", "--json", "--interval", "0.1", "--stalled-after", "1ms").stdout)
    assert {g["group"]: g["status"] for g in judged["groups"]} == {"billing": "stopped", "audit": "OK"}


def test_bad_options_are_usage_errors_naming_the_option(run_kq):
    for option, value in (("--interval", "0"), ("--sort", "size"), ("--history", "-1s"), ("--stalled-after", "0")):
        result = run_kq("top", "--once", option, value)
        assert result.returncode == 2, option
        assert result.stderr.decode().startswith(f"kq: error: {option} ") or f"'{option}'" in result.stderr.decode()


def test_top_of_a_directory_kq_serve_writes_and_of_the_cluster_it_serves(data_dir, run_kq, spawn_kq):
    pytest.importorskip("confluent_kafka")
    from serve_support import KqServer, produce

    server = KqServer(data_dir)
    try:
        assert run_kq("-b", server.bootstrap, "topic", "create", "events", "--partitions", "2").returncode == 0
        # Watched in a pipe, a JSON line a sample, while Kafka clients write through kq serve.
        watcher = spawn_kq("top", "--json", "--interval", "0.1", stdout=subprocess.PIPE)
        first = json.loads(watcher.stdout.readline())
        assert [(t["topic"], t["records"]) for t in first["topics"]] == [("events", 0)]
        produce("confluent", server.bootstrap, "events", [{"value": b"v%d" % i} for i in range(30)])

        def events_seen():
            line = watcher.stdout.readline()
            frame = json.loads(line)
            events = [t for t in frame["topics"] if t["topic"] == "events"]
            return events and events[0]["records"] == 30 and events[0]["rate_in"] and events[0]

        events = wait_for(events_seen, timeout=20, message="30 records in events")
        assert events["partitions"] == 2
        watcher.terminate()
        assert watcher.wait(10) == 0

        consumed = run_kq("-b", server.bootstrap, "consume", "events", "-g", "readers", "-n", "12")
        assert consumed.returncode == 0, consumed.stderr
        through_cluster = json.loads(
            run_kq("-b", server.bootstrap, "top", "--once", "--json", "--interval", "0.1").stdout
        )
        on_disk = json.loads(run_kq("top", "--once", "--json", "--interval", "0.1").stdout)
        for frame in (through_cluster, on_disk):
            assert [(g["group"], g["topic"], g["lag"]) for g in frame["groups"]] == [("readers", "events", 18)]
            assert [(t["topic"], t["records"]) for t in frame["topics"]] == [("events", 30)]
        assert through_cluster["source"].startswith("Kafka cluster")
    finally:
        server.stop()
