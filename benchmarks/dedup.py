"""`kq produce --dedup-window` with 1,000,000 distinct ids, beside the same produce without a window.

    python benchmarks/dedup.py [--messages 1000000] [--runs 3]

Each run, on fresh topics of one partition, from one file of keyed lines
(`id0000001:` and a 40-byte value, each key once), times whole processes:

- plain: `kq produce t -K :`, no window (the baseline, same run);
- first: `kq produce d -K : --dedup-window 1h`: every id is new, so every
  record is hashed, looked up, appended and indexed;
- again: the same command and file once more: every id is within the window
  (the index holds 1M ids and is read at start), so every record is dropped;
- more: the same command with 1M other ids: every id is new, with the 1M of
  the first pass in the window (read at start, looked up, kept).

It prints the medians (msg/s of wall time, and per CPU second, which a
loaded machine disturbs less), the ratios to plain, and the index's size on
disk per id after the first pass. The issue's target: >= 500k msg/s with 1M
distinct ids in the window, and an index under 64 bytes per id.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KQ = [sys.executable, "-m", "kq"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_input(path: str, messages: int, first_id: int = 0) -> None:
    value = b"v" * 40
    with open(path, "wb") as f:
        for start in range(first_id, first_id + messages, 100_000):
            stop = min(start + 100_000, first_id + messages)
            f.write(b"".join(b"id%07d:%s\n" % (i, value) for i in range(start, stop)))


def timed(data: str, args: list[str], source: str) -> tuple[float, str, float]:
    """(wall seconds, stderr, CPU seconds: user + system) of one kq process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(source, "rb") as stdin:
        start = time.perf_counter()
        done = subprocess.run(KQ + ["--data-dir", data, *args], stdin=stdin, capture_output=True, cwd=REPO)
        seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, done.stderr.decode(), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.messages
    work = tempfile.mkdtemp(prefix="kq-dedup-bench-")
    try:
        source = os.path.join(work, "input.txt")
        make_input(source, n)
        others = os.path.join(work, "others.txt")
        make_input(others, n, first_id=n)
        plain, first, again, more, per_id = [], [], [], [], []
        cpu: dict[str, list[float]] = {"plain": [], "first": [], "again": [], "more": []}
        for run in range(args.runs):
            data = os.path.join(work, f"data{run}")
            window = ["-K", ":", "--dedup-window", "1h"]
            seconds, _, used = timed(data, ["produce", "t", "-K", ":"], source)
            plain.append(seconds)
            cpu["plain"].append(used)
            seconds, _, used = timed(data, ["produce", "d", *window], source)
            first.append(seconds)
            cpu["first"].append(used)
            index = os.path.join(data, "topics", "d", "dedup.index")
            per_id.append(os.path.getsize(index) / n)
            seconds, said, used = timed(data, ["produce", "d", *window], source)
            cpu["again"].append(used)
            if f"dropped {n:,} duplicate records" not in said:
                raise RuntimeError(f"the second pass did not drop every record: {said}")
            again.append(seconds)
            seconds, said, used = timed(data, ["produce", "d", *window], others)
            if "dropped" in said:
                raise RuntimeError(f"the third pass dropped records: {said}")
            more.append(seconds)
            cpu["more"].append(used)
            print(
                f"run {run + 1}: plain {n / plain[-1]:,.0f} msg/s, first {n / first[-1]:,.0f} msg/s, "
                f"again {n / again[-1]:,.0f} msg/s, more {n / more[-1]:,.0f} msg/s, index {per_id[-1]:.1f} bytes/id",
                flush=True,
            )
            shutil.rmtree(data)
        med = {
            name: statistics.median(times)
            for name, times in (("plain", plain), ("first", first), ("again", again), ("more", more))
        }
        print(f"\n{n:,} distinct ids, medians of {args.runs} runs (whole processes, from a file):")
        print(f"  kq produce -K :                          {n / med['plain']:>12,.0f} msg/s")
        for name, what in (
            ("first", "every id new"),
            ("again", "every id a duplicate"),
            ("more", "new, 1M in the window"),
        ):
            print(
                f"  kq produce -K : --dedup-window 1h ({what:<21}) {n / med[name]:>12,.0f} msg/s "
                f"({med['plain'] / med[name]:.2f}x plain's rate)"
            )
        print("CPU time (user + system), which a busy shared machine disturbs less than wall time:")
        for name in ("plain", "first", "again", "more"):
            print(f"  {name:<6} {n / statistics.median(cpu[name]):>12,.0f} msg per CPU second")
        print(f"  index on disk: {statistics.median(per_id):.1f} bytes per id (target: under 64)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
