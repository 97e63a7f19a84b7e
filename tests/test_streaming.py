"""Large inputs stream through in bounded memory; --sync works end to end."""

from __future__ import annotations

import json
import os
import subprocess
import threading

from conftest import KQ


def test_large_pipe_is_streamed_in_bounded_memory(data_dir):
    total_mb = 300
    line = b"y" * 99 + b"\n"
    block = line * 10_000  # 1 MB
    p = subprocess.Popen(KQ + ["--data-dir", data_dir, "-q", "produce", "big"], stdin=subprocess.PIPE)

    def feed():
        for _ in range(total_mb):
            p.stdin.write(block)
        p.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    _, status, usage = os.wait4(p.pid, 0)
    feeder.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    assert p.returncode == 0
    peak_mb = usage.ru_maxrss / 1024
    assert peak_mb < 120, f"producing {total_mb} MB from a pipe peaked at {peak_mb:.0f} MB of memory"
    d = json.loads(subprocess.run(KQ + ["--data-dir", data_dir, "topic", "describe", "big", "--json"], capture_output=True).stdout)
    assert d["partitions"][0]["end_offset"] == total_mb * 10_000


def test_sync_topic_and_sync_flag(run_kq):
    assert run_kq("topic", "create", "durable", "--sync").returncode == 0
    assert json.loads(run_kq("topic", "describe", "durable", "--json").stdout)["config"]["sync"] is True
    assert run_kq("produce", "durable", input="a\nb\n").returncode == 0
    assert run_kq("produce", "plain", "--sync", input="c\n").returncode == 0
    assert run_kq("consume", "durable").stdout == b"a\nb\n"
    assert run_kq("consume", "plain").stdout == b"c\n"
