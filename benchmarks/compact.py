"""`kq maintain` compacting 1,000,000 keyed records over 10,000 keys, beside producing them.

    python benchmarks/compact.py [--messages 1000000] [--keys 10000] [--runs 5]

Each run produces the records (`kq produce -K :`, whole process, from a file)
into a fresh compacted topic with 16 MiB segments, then times `kq maintain`
on it. Figures are medians; the ratio compact/produce is the one to compare,
since the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time

KQ = [sys.executable, "-m", "kq"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_input(path: str, messages: int, keys: int) -> None:
    rng = random.Random(7)
    alphabet = (string.ascii_letters + string.digits).encode()
    values = [bytes(rng.choices(alphabet, k=89)) for _ in range(1000)]
    with open(path, "wb") as f:
        for start in range(0, messages, 10_000):
            f.write(
                b"".join(
                    b"key%05d:%s\n" % (i % keys, values[i % 1000]) for i in range(start, min(start + 10_000, messages))
                )
            )


def timed(args: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(args, check=True, **kwargs)
    return time.perf_counter() - start, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "kq")], check=True)  # as pip does
    work = tempfile.mkdtemp(prefix="kq-bench-compact-")
    try:
        src = os.path.join(work, "input.txt")
        make_input(src, args.messages, args.keys)
        produce, compact, removed = [], [], []
        for run in range(args.runs):
            data = os.path.join(work, f"data{run}")
            kq = KQ + ["--data-dir", data, "-q"]
            subprocess.run(kq + ["topic", "create", "t", "--cleanup", "compact", "--segment-bytes", "16M"], check=True)
            with open(src, "rb") as f:
                seconds, _ = timed(kq + ["produce", "t", "-K", ":"], stdin=f)
            produce.append(seconds)
            seconds, done = timed(kq + ["maintain", "t", "--json"], capture_output=True)
            compact.append(seconds)
            removed.append(json.loads(done.stdout)[0]["records_removed"])
            survivors = subprocess.run(
                kq + ["consume", "t", "-F", "%k\n"], check=True, capture_output=True
            ).stdout.split()
            if set(survivors) != {b"key%05d" % k for k in range(min(args.keys, args.messages))}:
                sys.exit("compaction lost a key")
            shutil.rmtree(data)
        p, c = statistics.median(produce), statistics.median(compact)
        n = args.messages
        print(f"{n:,} records over {args.keys:,} keys, median of {args.runs} runs, {os.cpu_count()} CPUs")
        print(f"produce -K :   {p:8.3f} s  {n / p:>12,.0f} records/s")
        print(
            f"maintain       {c:8.3f} s  {n / c:>12,.0f} records/s  ({statistics.median(removed):,.0f} records removed)"
        )
        print(f"compaction takes {c / p:.2f}x the time of producing the same records")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
