"""kq metrics over a big directory, and what kq serve --metrics costs the produce path.

    python benchmarks/metrics.py [--topics 1000] [--groups 10] [--rounds 5] [--messages 200000]
    python benchmarks/metrics.py --no-serve --baseline /tmp/base   # and another checkout's, in turns

Part 1 builds a directory of TOPICS one-partition topics (20 records each)
and GROUPS consumer groups, each with a committed offset on every topic
(TOPICS x GROUPS offset files), then times in interleaved rounds, as whole
processes: `kq --version` (the start-up floor), `kq metrics`, `kq lag`; and
in-process, `kq.ops.observe.snapshot` alone. Target (issue 24): `kq metrics`
under 1 s.

Part 2 (needs the kafka extra): a confluent-kafka producer sends MESSAGES
records of 100 bytes through `kq serve` with and without `--metrics`
(request counting and timing on), alternating, ROUNDS//2+1 runs each. The
medians are compared.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

KQ = [sys.executable, "-m", "kq"]


def build(path: str, topics: int, groups: int) -> None:
    from kq.engine.datadir import DataDir
    from kq.groups.store import Groups
    from kq.producer import Producer

    data = DataDir(path)
    data.ensure()
    store = Groups(data)
    for i in range(topics):
        topic = data.create_topic(f"topic-{i:05d}", 1)
        producer = Producer(topic)
        producer.send_values([b"x" * 100] * 20)
        producer.close()
        for g in range(groups):
            store.commit(f"group-{g:02d}", topic, 0, 10 + g)
        topic.close()


def timed(cmd: list[str], cwd: Path = HERE.parent) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a process: on a shared machine its CPU time is
    the steadier figure (wall time includes waiting for a core)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd} exited {proc.returncode}")
    return took, usage.ru_utime + usage.ru_stime


def part1(topics: int, groups: int, rounds: int, baseline: str | None = None) -> None:
    from kq.backends.local import LocalBackend
    from kq.ops.observe import snapshot

    work = tempfile.mkdtemp(prefix="kq-metrics-bench-")
    try:
        data = os.path.join(work, "data")
        started = time.perf_counter()
        build(data, topics, groups)
        print(
            f"built {topics} topics x {groups} groups ({topics * groups} offset files) in {time.perf_counter() - started:.1f} s"
        )
        cases = {
            "kq --version (start-up floor)": KQ + ["--version"],
            "kq metrics": KQ + ["--data-dir", data, "metrics"],
            "kq lag --max 0 (a check)": KQ + ["--data-dir", data, "lag", "--max", "0"],
        }
        checkouts = {name: HERE.parent for name in cases}
        if baseline:  # the same commands run from another checkout (python -m kq imports the kq beside it)
            for name, cmd in list(cases.items()):
                cases[f"{name} [baseline]"] = cmd
                checkouts[f"{name} [baseline]"] = Path(baseline)
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        wall["snapshot() in-process"], cpu["snapshot() in-process"] = [], []
        for _ in range(rounds):
            for name, cmd in cases.items():
                took, used = timed(cmd, checkouts[name])
                wall[name].append(took)
                cpu[name].append(used)
            backend = LocalBackend(data)
            start, start_cpu = time.perf_counter(), time.process_time()
            snap = snapshot(backend)
            wall["snapshot() in-process"].append(time.perf_counter() - start)
            cpu["snapshot() in-process"].append(time.process_time() - start_cpu)
            assert len(snap.topics) == topics and len(snap.groups) == groups
        print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(
            f"\n| {topics} topics x {groups} groups, median of {rounds} | wall s | CPU s | CPU minus start-up floor |"
        )
        print("|---|---:|---:|---:|")
        floor = statistics.median(cpu["kq --version (start-up floor)"])
        for name in wall:
            used = statistics.median(cpu[name])
            extra = "" if "floor" in name or "in-process" in name else f"{used - floor:.3f}"
            print(f"| {name} | {statistics.median(wall[name]):.3f} | {used:.3f} | {extra} |")
        for name in [n for n in wall if n.endswith(" [baseline]")]:
            this = name[: -len(" [baseline]")]
            print(
                f"{this}: baseline / this = {statistics.median(cpu[name]) / statistics.median(cpu[this]):.2f}x CPU, "
                f"{statistics.median(wall[name]) / statistics.median(wall[this]):.2f}x wall"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def part2(messages: int, rounds: int) -> None:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("\n(part 2 skipped: confluent-kafka is not installed)")
        return
    from serve import PRODUCE, _create_topic, _run
    from serve_support import KqServer

    rates: dict[str, list[float]] = {"kq serve": [], "kq serve --metrics": []}
    for run in range(rounds // 2 + 1):
        for name in rates if run % 2 == 0 else reversed(list(rates)):
            work = tempfile.mkdtemp(prefix="kq-metrics-serve-")
            args = ["--metrics", "127.0.0.1:0"] if "--metrics" in name else []
            server = KqServer(os.path.join(work, "data"), *args)
            try:
                _create_topic(server.bootstrap, "bench")
                [seconds] = _run(PRODUCE, server.bootstrap, "bench", messages)
                rates[name].append(messages / seconds)
            finally:
                server.stop()
                shutil.rmtree(work, ignore_errors=True)
    import timeit

    from kq.ops.metrics import Histogram

    h = Histogram()
    per_call = min(timeit.repeat(lambda: h.observe("Produce", 0.0003), number=100_000, repeat=5)) / 100_000
    clock = min(timeit.repeat(time.perf_counter, number=100_000, repeat=5)) / 100_000
    print(
        f"\nper request with --metrics: Histogram.observe {per_call * 1e9:.0f} ns + 2 clock reads {2 * clock * 1e9:.0f} ns"
    )
    base = statistics.median(rates["kq serve"])
    print(f"\n| confluent-kafka producing {messages} x 100 B through | median msg/s | ratio |")
    print("|---|---:|---:|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):,.0f} | {statistics.median(values) / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--no-serve", action="store_true", help="Only part 1.")
    ap.add_argument("--baseline", metavar="CHECKOUT", help="Also time another checkout's commands (a git worktree).")
    args = ap.parse_args()
    part1(args.topics, args.groups, args.rounds, args.baseline)
    if not args.no_serve:
        part2(args.messages, args.rounds)


if __name__ == "__main__":
    main()
