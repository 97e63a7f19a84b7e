"""What `kq top` costs to keep on screen: CPU time of the process per second of refreshing.

A data directory of 1,000 topics and 10 consumer groups (each group with
committed offsets on --group-topics of the topics) is made once; `kq top`
then runs in a pseudo-terminal of 120x40 (the live view, as a person sees it,
refreshed every --interval) and its CPU time (user + system, /proc/PID/stat)
is read after a warm-up and again N seconds later: CPU seconds / N is the
share of a core it takes. Medians over the runs.

    python benchmarks/top.py                       # 1,000 topics x 10 groups, 10 s, 3 runs
    python benchmarks/top.py --seconds 20 --runs 5
    python benchmarks/top.py --writing             # while a producer appends to one topic
    python benchmarks/top.py --baseline /tmp/base  # and another checkout's kq top, taking turns: the ratio

The target (issue 24): under 10 % of a core.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

from measure import cpu_seconds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's kq, in this process and (cwd) in kq top's

TARGET = 0.10


def make_directory(path: str, topics: int, groups: int, group_topics: int, partitions: int) -> None:
    import kq
    from kq.groups.store import Groups

    data = kq.DataDir(path)
    store = Groups(data)
    names = [f"topic-{i:04d}" for i in range(topics)]
    for name in names:
        topic = data.create_topic(name, partitions)
        for p in range(partitions):
            topic.partition(p).append([b"x" * 100] * 10)
        topic.close()
    for g in range(groups):
        for name in names[:group_topics]:
            for p in range(partitions):
                store.commit(f"group-{g}", name, p, 5)


def drain(fd: int) -> None:
    """Read the terminal's output so that kq never blocks writing it."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def run_top(path: str, interval: str, warmup: float, seconds: float, checkout: str = REPO) -> float:
    """kq top in a 120x40 pseudo-terminal: CPU seconds per second over ``seconds`` after ``warmup``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kq", "--data-dir", path, "top", "--interval", interval],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color"},
        start_new_session=True,
        cwd=checkout,
    )
    os.close(slave)
    reader = threading.Thread(target=drain, args=(master,), daemon=True)
    reader.start()
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"kq top exited {proc.returncode}")
        before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        after = cpu_seconds(proc.pid)
        return (after - before) / seconds
    finally:
        os.write(master, b"q")
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)


def writer(path: str, stop: threading.Event) -> None:
    """One producer appending a small batch to topic-0000 every 10 ms, while kq top watches."""
    import kq

    data = kq.DataDir(path)
    partition = data.topic("topic-0000").partition(0)
    while not stop.is_set():
        partition.append([b"y" * 100] * 10)
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--group-topics", type=int, default=100, help="topics each group has committed offsets on")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--writing", action="store_true", help="a producer appends to one topic throughout")
    parser.add_argument("--data", metavar="DIR", help="use (and keep) this directory, made if it does not exist")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run this checkout's kq top (a git worktree), in turns with this one",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kq-top-bench-") as tmp:
        path = args.data or os.path.join(tmp, "data")
        if not os.path.exists(path):
            started = time.monotonic()
            make_directory(path, args.topics, args.groups, args.group_topics, args.partitions)
            print(
                f"{args.topics:,} topics x {args.partitions} partition(s), {args.groups} groups on "
                f"{args.group_topics:,} topics each: made in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
        stop = threading.Event()
        producing = threading.Thread(target=writer, args=(path, stop), daemon=True) if args.writing else None
        if producing:
            producing.start()
        shares, baseline = [], []
        try:
            for run in range(args.runs):
                if args.baseline:
                    baseline.append(run_top(path, args.interval, args.warmup, args.seconds, args.baseline))
                    print(f"run {run + 1}: baseline {baseline[-1]:.1%} of a core", file=sys.stderr)
                share = run_top(path, args.interval, args.warmup, args.seconds)
                shares.append(share)
                print(f"run {run + 1}: {share:.1%} of a core", file=sys.stderr)
        finally:
            stop.set()
        median = statistics.median(shares)
        if baseline:
            before = statistics.median(baseline)
            print(
                f"baseline {before:.1%} of a core (runs: {', '.join(f'{s:.1%}' for s in baseline)}); "
                f"this {median:.1%}: {before / median:.1f}x less"
            )
        verdict = "PASS" if median < TARGET else "MISS"
        print(
            f"| {args.topics:,} topics x {args.groups} groups ({args.group_topics:,} topics each)"
            f"{', a producer writing' if args.writing else ''} | every {args.interval} | "
            f"{median:.1%} of a core (runs: {', '.join(f'{s:.1%}' for s in shares)}) | {verdict} |"
        )


if __name__ == "__main__":
    main()
