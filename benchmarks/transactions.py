"""Transactions: `kq produce --transactional` beside a plain produce, read_committed beside
read_uncommitted (and, with --baseline TREE, beside the consume of another kq checkout), and the
exactly-once pipeline `kq consume -g G --exec cat --produce-to OUT`.

    python benchmarks/transactions.py [--messages 1000000] [--size 100] [--runs 3]
        [--pipeline-messages 200000] [--batch 1000] [--baseline /tmp/base-checkout]

Each figure is the median of --runs runs, each into a fresh data directory; the pairs compared
run in the same round, because the machine is shared: compare the ratios. Targets (issue 25):
transactional produce >= 80 % of plain, read_committed consume >= 90 % of today's, the pipeline
>= 100k records/s with a trivial command and batches of 1,000.
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
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from produce_consume import make_input  # noqa: E402

CPU: dict[str, list[float]] = {}  # CPU seconds (user + system) of each timed command, by name


def timed(cmd: list[str], stdin: str | None = None, env: dict | None = None, name: str = "") -> float:
    """Wall seconds of ``cmd``; its CPU seconds go to CPU[name] (steadier than wall time on a loaded machine)."""
    with open(stdin or os.devnull, "rb") as f:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, check=True, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(name, []).append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100, help="bytes per message, newline included")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pipeline-messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--baseline", help="another kq checkout whose plain consume is 'today's' (e.g. the base commit)")
    args = ap.parse_args()

    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "kq")], check=True)
    if args.baseline:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(args.baseline, "kq")], check=True)
    base_env = {**os.environ, "PYTHONPATH": args.baseline} if args.baseline else None
    work = tempfile.mkdtemp(prefix="kq-bench-txn-")
    try:
        src = os.path.join(work, "input.txt")
        make_input(src, args.messages, args.size)
        small = os.path.join(work, "pipeline.txt")
        make_input(small, args.pipeline_messages, args.size)
        results: dict[str, list[float]] = {}

        def note(name: str, seconds: float) -> None:
            results.setdefault(name, []).append(seconds)
            CPU.setdefault(name, []).extend(CPU.pop(""))

        for run in range(args.runs):
            plain, txn = os.path.join(work, f"plain{run}"), os.path.join(work, f"txn{run}")
            # Each pair in turns, first one then the other first: no side always gets the quieter moment.
            produces = [
                ("produce", KQ + ["--data-dir", plain, "-q", "produce", "t"], None),
                ("produce --transactional", KQ + ["--data-dir", txn, "-q", "produce", "t", "--transactional"], None),
            ]
            # The transactional topic holds one commit marker: nothing aborted.
            consumes = [
                ("consume (read_committed)", KQ + ["--data-dir", txn, "consume", "t"], None),
                (
                    "consume --isolation read_uncommitted",
                    KQ + ["--data-dir", txn, "consume", "t", "--isolation", "read_uncommitted"],
                    None,
                ),
            ]
            if base_env is not None:
                consumes.append(("baseline consume", KQ + ["--data-dir", plain, "consume", "t"], base_env))
            for group in (produces, consumes):
                for name, cmd, env in group if run % 2 == 0 else reversed(group):
                    note(name, timed(cmd, src if "produce" in cmd else None, env=env))
            pipe = os.path.join(work, f"pipe{run}")
            subprocess.run(KQ + ["--data-dir", pipe, "-q", "produce", "in"], stdin=open(small, "rb"), check=True)
            note(
                "pipeline",
                timed(
                    KQ
                    + ["--data-dir", pipe, "-q", "consume", "in", "-g", "g", "--exec", "cat", "--produce-to", "out"]
                    + ["--batch", str(args.batch)]
                ),
            )
            for d in (plain, txn, pipe):
                shutil.rmtree(d, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in results.items()}
        mb = args.messages * args.size / 1e6
        print(f"{args.messages:,} messages of {args.size} B ({mb:.0f} MB), median of {args.runs} runs")
        for name, seconds in med.items():
            n = args.pipeline_messages if name == "pipeline" else args.messages
            print(f"  {name:40s} {seconds:7.2f} s  {n / seconds / 1000:8.0f}k msg/s")
        cpu = {k: statistics.median(v) for k, v in CPU.items()}
        print("  CPU seconds (user + system), medians: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        ref = "baseline consume" if "baseline consume" in med else "consume --isolation read_uncommitted"
        for label, fast, slow, target in (
            ("transactional produce / plain produce", "produce", "produce --transactional", "80"),
            (f"read_committed consume / {ref}", ref, "consume (read_committed)", "90"),
        ):
            print(
                f"{label}: {med[fast] / med[slow]:.0%} by wall time, {cpu[fast] / cpu[slow]:.0%} by CPU time "
                f"(target >= {target} %)"
            )
        print(
            f"pipeline (cat, batches of {args.batch}): {args.pipeline_messages / med['pipeline'] / 1000:.0f}k records/s "
            "(target >= 100k)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
