"""`kq replicate` of a 1,000,000-message topic (100 MB) beside `cp -r` of the same directory.

    python benchmarks/replicate.py [--messages 1000000] [--runs 5]

Each run copies into a fresh directory; figures are medians. The target is
that replicate runs at no less than half the speed of `cp -r` (ratio <= 2).
Two kq figures: the library's copy (`kq.Replicator`, what replication
itself costs) and the whole `kq replicate` process, which adds the Python
interpreter's and typer's start-up, a fixed cost whatever the size.
kq's bytecode is compiled first, as `pip install` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KQ = [sys.executable, "-m", "kq"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str]) -> float:
    os.sync()  # each copy starts with no dirty pages of the last one to write back
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def timed_library_copy(data: str, replica: str) -> float:
    sys.path.insert(0, REPO)
    import kq
    from kq.ops.replicate import Replicator

    os.sync()
    start = time.perf_counter()
    with Replicator(kq.DataDir(data), kq.DataDir(replica)) as replicator:
        replicator.replicate(["bench"])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "kq")], check=True)
    work = tempfile.mkdtemp(prefix="kq-bench-replicate-")
    try:
        data = os.path.join(work, "data")
        line = b"r" * 99 + b"\n"
        subprocess.run(KQ + ["--data-dir", data, "-q", "produce", "bench"], input=line * args.messages, check=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs)
        cp, library, whole = [], [], []
        for run in range(args.runs):
            cp_dest = os.path.join(work, f"cp{run}")
            copies = [os.path.join(work, f"library{run}"), os.path.join(work, f"replica{run}")]
            cp.append(timed(["cp", "-r", data, cp_dest]))
            library.append(timed_library_copy(data, copies[0]))
            whole.append(timed(KQ + ["--data-dir", data, "-q", "replicate", "bench", "--to", copies[1]]))
            for replica in copies:
                if (
                    subprocess.run(
                        KQ + ["--data-dir", data, "replicate", "--verify", "bench", "--to", replica],
                        capture_output=True,
                    ).returncode
                    != 0
                ):
                    sys.exit("the replica does not verify")
                shutil.rmtree(replica)
            shutil.rmtree(cp_dest)
        c, lib, k = statistics.median(cp), statistics.median(library), statistics.median(whole)
        print(f"{args.messages:,} messages, {size / 1e6:.0f} MB, median of {args.runs} runs, {os.cpu_count()} CPUs")
        print(f"cp -r                  {c:7.3f} s  {size / c / 1e6:8.1f} MB/s")
        print(f"kq.Replicator          {lib:7.3f} s  {size / lib / 1e6:8.1f} MB/s  {args.messages / lib:,.0f} msg/s")
        print(f"kq replicate (process) {k:7.3f} s  {size / k / 1e6:8.1f} MB/s  {args.messages / k:,.0f} msg/s")
        print(
            f"the copy takes {lib / c:.2f}x the time of cp -r (target: <= 2); "
            f"the whole process {k / c:.2f}x ({k - lib:.3f} s more than the copy: start-up)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
