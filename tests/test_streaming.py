"""Large inputs stream through in bounded memory; --sync works end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from conftest import KQ

# Peak RSS of a child, measured by a small intermediate process: a child forked
# straight from pytest inherits pytest's own high-water mark into ru_maxrss.
PEAK_RSS = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(usage.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def test_large_pipe_is_streamed_in_bounded_memory(data_dir):
    total_mb = 300
    block = (b"y" * 99 + b"\n") * 10_000  # 1 MB
    p = subprocess.Popen(
        [sys.executable, "-c", PEAK_RSS, *KQ, "--data-dir", data_dir, "-q", "produce", "big"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )

    def feed():
        for _ in range(total_mb):
            p.stdin.write(block)
        p.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    peak_kb = int(p.stdout.read())
    feeder.join()
    assert p.wait() == 0
    assert peak_kb / 1024 < 100, f"producing {total_mb} MB from a pipe peaked at {peak_kb / 1024:.0f} MB of memory"
    d = json.loads(
        subprocess.run(KQ + ["--data-dir", data_dir, "topic", "describe", "big", "--json"], capture_output=True).stdout
    )
    assert d["partitions"][0]["end_offset"] == total_mb * 10_000


def test_sync_topic_and_sync_flag(run_kq):
    assert run_kq("topic", "create", "durable", "--sync").returncode == 0
    assert json.loads(run_kq("topic", "describe", "durable", "--json").stdout)["config"]["sync"] is True
    assert run_kq("produce", "durable", input="a\nb\n").returncode == 0
    assert run_kq("produce", "plain", "--sync", input="c\n").returncode == 0
    assert run_kq("consume", "durable").stdout == b"a\nb\n"
    assert run_kq("consume", "plain").stdout == b"c\n"
