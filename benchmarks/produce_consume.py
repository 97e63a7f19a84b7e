"""Whole-process `kq produce` from stdin and `kq consume` (with and without -g) to /dev/null, beside `cat`.

    python benchmarks/produce_consume.py [--messages 1000000] [--size 100] [--runs 5]

Each figure is the median of --runs runs; each run produces into a fresh data
directory; kq's bytecode is compiled first, as `pip install` does. `cat` of the same bytes is measured in the same run as a baseline,
because the machine is shared and noisy: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
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


def make_input(path: str, messages: int, size: int) -> None:
    rng = random.Random(42)
    alphabet = (string.ascii_letters + string.digits).encode()
    line_pool = [bytes(rng.choices(alphabet, k=size - 1)) + b"\n" for _ in range(1000)]
    with open(path, "wb") as f:
        for i in range(0, messages, 1000):
            f.write(b"".join(line_pool[: min(1000, messages - i)]))


def timed(cmd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100, help="bytes per message, newline included")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    # Run kq from bytecode, as after `pip install` (PYTHONDONTWRITEBYTECODE
    # would otherwise make every start compile kq from source).
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "kq")], check=True)
    work = tempfile.mkdtemp(prefix="kq-bench-")
    try:
        src = os.path.join(work, "input.txt")
        make_input(src, args.messages, args.size)
        kq = " ".join(KQ)
        results = {"cat | cat": [], "kq produce": [], "cat file": [], "kq consume": [], "kq consume -g": []}
        for run in range(args.runs):
            data = os.path.join(work, f"data{run}")
            results["cat | cat"].append(timed(f"cat {src} | cat > /dev/null"))
            results["kq produce"].append(timed(f"cat {src} | {kq} --data-dir {data} -q produce bench"))
            results["cat file"].append(timed(f"cat {src} > /dev/null"))
            results["kq consume"].append(timed(f"{kq} --data-dir {data} consume bench > /dev/null"))
            results["kq consume -g"].append(timed(f"{kq} --data-dir {data} consume bench -g bench > /dev/null"))
            out = subprocess.run(f"{kq} --data-dir {data} consume bench | cmp - {src}", shell=True)
            if out.returncode != 0:
                sys.exit("consume did not return exactly the produced bytes")
            shutil.rmtree(data)
        med = {k: statistics.median(v) for k, v in results.items()}
        n = args.messages
        print(f"{n:,} messages of {args.size} bytes, median of {args.runs} runs, {os.cpu_count()} CPUs")
        print(f"{'what':<14}{'seconds':>10}{'msg/s':>14}{'MB/s':>10}")
        for k, v in med.items():
            print(f"{k:<14}{v:>10.3f}{n / v:>14,.0f}{n * args.size / v / 1e6:>10.1f}")
        print(
            f"produce: {n / med['kq produce']:,.0f} msg/s, {med['kq produce'] / med['cat | cat']:.1f}x the time of cat | cat"
        )
        print(
            f"consume: {n / med['kq consume']:,.0f} msg/s, {med['kq consume'] / med['cat file']:.1f}x the time of cat"
        )
        print(
            f"consume -g (committing): {med['kq consume -g'] / med['kq consume']:.2f}x the time of consume without a group"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
