"""kq beside the stores people already use, every workload measured side by side in one run (issue 7).

    pip install -e '.[bench]'
    python benchmarks/suite.py              # full run, medians of 5 runs; writes docs/BENCHMARKS.md + PNG
    python benchmarks/suite.py --quick      # small sizes, one run, no docs: for development
    python benchmarks/suite.py --only 4,5   # some workloads (docs only with --write-doc)

Prints a table on stdout. kq is measured as the command users run (whole
process, interpreter start-up included); the peers have no command that
reads stdin, so workloads 1 and 2 drive them in-process, while the workloads
that need processes run them through the small worker in peers.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import measure
import peers
import report
from measure import LineCollector, percentile, run, stop
from report import Check, Row

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
KQ_SCRIPT = Path(sys.executable).with_name("kq")
# The installed console script is what users run; `python -m kq` is the fallback.
KQ = [str(KQ_SCRIPT)] if KQ_SCRIPT.exists() else [sys.executable, "-m", "kq"]
STORES = list(peers.STORES.values())
PEERS = [store.label for store in STORES]
TENFOLD_PEERS = [store.label for store in STORES if store is not peers.SqliteTable]
VALUE_BYTES = 100
UNIQUE_MESSAGES = 1_000_000  # larger inputs repeat this block: only workload 3 needs every line unique
ALPHABET = (string.ascii_letters + string.digits).encode()
FOLLOW_INTERVAL = 0.010
FLOOR = "import typer, msgpack, portalocker"


@dataclass(frozen=True)
class Sizes:
    messages: int = 1_000_000  # workloads 1-3
    topics: tuple[int, int] = (1_000_000, 10_000_000)  # workloads 6-7: 100 MB and 1 GB
    runs: int = 5
    invocations: int = 200
    follow_messages: int = 200  # per run
    idle_seconds: float = 5.0
    peer_seconds: float = 2.0  # time box for a peer's bulk produce or consume
    concurrent_seconds: float = 4.0  # what a peer's workload-3 size is meant to take at its workload-1 rate


FULL = Sizes()
QUICK = Sizes(
    messages=100_000,
    topics=(200_000, 1_000_000),
    runs=1,
    invocations=20,
    follow_messages=50,
    idle_seconds=1.0,
    peer_seconds=0.5,
    concurrent_seconds=1.0,
)


def short_count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def message_block(count: int, keyed: bool) -> bytes:
    """``count`` distinct 100-byte values, one per line; keyed lines start with ``userNNN:``."""
    rng = random.Random(7)
    tails = [bytes(rng.choices(ALPHABET, k=VALUE_BYTES - 10)) for _ in range(1000)]
    if keyed:
        return b"".join(b"user%03d:%010d%s\n" % (i % 1000, i, tails[i % 1000]) for i in range(count))
    return b"".join(b"%010d%s\n" % (i, tails[i % 1000]) for i in range(count))


class Bench:
    """One suite run: sizes, a scratch directory, and inputs and topics built once and shared."""

    def __init__(self, sizes: Sizes, work: Path):
        self.sizes = sizes
        self.work = work
        # From workload 1: what sizes workload 3 for the slow peers and says how long they would take to load 1 GB.
        self.peer_put_rates: dict[str, float] = {}
        self.peer_take_rates: dict[str, float] = {}
        self._inputs: dict[tuple, Path] = {}
        self._serial = 0

    def fresh_dir(self, name: str) -> Path:
        self._serial += 1
        return self.work / f"{name}-{self._serial}"

    def kq(self, data_dir: Path, *args: str) -> list[str]:
        return [*KQ, "--data-dir", str(data_dir), "-q", *args]

    def worker(self, *args) -> list[str]:
        # -m rather than a script path, so the worker runs from bytecode like an installed tool.
        return [sys.executable, "-m", "peers", *map(str, args)]

    def input_file(self, count: int, keyed: bool = False) -> Path:
        key = (count, keyed)
        if key not in self._inputs:
            path = self.work / f"input-{count}{'-keyed' if keyed else ''}.txt"
            block = message_block(min(count, UNIQUE_MESSAGES), keyed)
            line = len(block) // min(count, UNIQUE_MESSAGES)
            repeats, rest = divmod(count, UNIQUE_MESSAGES)
            with open(path, "wb") as f:
                for _ in range(repeats):
                    f.write(block)
                f.write(block[: rest * line])
            self._inputs[key] = path
        return self._inputs[key]

    def input_parts(self, count: int, parts: int) -> list[Path]:
        """The first ``count`` lines of the input, cut into ``parts`` files of distinct lines."""
        key = (count, "parts", parts)
        if key not in self._inputs:
            lines = self.input_file(count).read_bytes().splitlines(keepends=True)
            share = count // parts
            paths = []
            for n in range(parts):
                path = self.work / f"input-{count}-part{n}.txt"
                path.write_bytes(b"".join(lines[n * share : (n + 1) * share]))
                paths.append(path)
            self._inputs[key] = paths
        return self._inputs[key]

    def concurrent_count(self, label: str) -> int:
        """Messages for a peer in workload 3: what the slower of its workload-1 put and take rates
        gets through in concurrent_seconds.

        A multiple of 4 batches, at most kq's count; 10,000 msg/s is assumed if workload 1 did not run.
        """
        rate = min(self.peer_put_rates.get(label, 10_000), self.peer_take_rates.get(label, 10_000))
        unit = 4 * peers.BATCH
        return max(unit, min(self.sizes.messages, int(rate * self.sizes.concurrent_seconds) // unit * unit))


# ---------------------------------------------------------------- workloads 1 and 2: bulk, one process


def peer_produce(store, lines: list[bytes], partitions: int, seconds: float) -> tuple[int, float]:
    """Put lines in batches until done or ``seconds`` pass; keyed lines are routed by crc32 of their key."""
    start = time.perf_counter()
    deadline = start + seconds
    sent = 0
    if partitions == 1:
        for i in range(0, len(lines), peers.BATCH):
            batch = lines[i : i + peers.BATCH]
            store.put(0, batch)
            sent += len(batch)
            if time.perf_counter() > deadline:
                break
    else:
        # Buffer per partition so that every put is a full batch, as kq's batches are.
        buffers: list[list[bytes]] = [[] for _ in range(partitions)]
        for line in lines:
            partition = zlib.crc32(line[: line.index(b":")]) % partitions
            buffer = buffers[partition]
            buffer.append(line)
            if len(buffer) == peers.BATCH:
                store.put(partition, buffer)
                buffers[partition] = []
                sent += peers.BATCH
                if time.perf_counter() > deadline:
                    return sent, time.perf_counter() - start  # time is up: the partial buffers stay unsent
        for partition, buffer in enumerate(buffers):
            if buffer:
                store.put(partition, buffer)
                sent += len(buffer)
    return sent, time.perf_counter() - start


def peer_consume(store, expected: list[bytes], seconds: float) -> tuple[int, float]:
    start = time.perf_counter()
    deadline = start + seconds
    got: list[bytes] = []
    while len(got) < len(expected) and time.perf_counter() < deadline:
        values = store.take(0, peers.BATCH)
        if not values:
            break
        got.extend(values)
    elapsed = time.perf_counter() - start
    if got != expected[: len(got)]:
        raise RuntimeError(f"{store.label} returned other messages than were put")
    return len(got), elapsed


def kq_bulk_run(bench: Bench, path: Path, keyed: bool, verify: bool) -> tuple[float, float | None]:
    """Seconds of one whole-process produce from stdin, and of one consume to /dev/null (unkeyed)."""
    data = bench.fresh_dir("kq")
    produce_args = ["-K", ":", "--partitions", "8"] if keyed else []
    produce_s = run(bench.kq(data, "produce", "t", *produce_args), stdin=path).seconds
    consume_s = None if keyed else run(bench.kq(data, "consume", "t")).seconds
    if verify:
        fmt = ["-F", "%k:%s\\n"] if keyed else []
        out = run(bench.kq(data, "consume", "t", *fmt), capture=True).output
        expected = path.read_bytes()
        if (sorted(out.splitlines()) != sorted(expected.splitlines())) if keyed else out != expected:
            raise RuntimeError("kq consume did not return exactly the produced messages")
    shutil.rmtree(data)
    return produce_s, consume_s


def bulk(bench: Bench, keyed: bool) -> tuple[list[Row], list[Check]]:
    n = bench.sizes.messages
    path = bench.input_file(n, keyed)
    lines = path.read_bytes().splitlines()
    partitions = 8 if keyed else 1
    kq_rates: dict[str, list[float]] = defaultdict(list)
    peer_rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run_number in range(bench.sizes.runs):
        produce_s, consume_s = kq_bulk_run(bench, path, keyed, verify=run_number == 0)
        kq_rates["produce"].append(n / produce_s)
        if consume_s:
            kq_rates["consume"].append(n / consume_s)
        for store_class in STORES:
            directory = bench.fresh_dir("peer")
            store = store_class(str(directory), partitions)
            sent, seconds = peer_produce(store, lines, partitions, bench.sizes.peer_seconds)
            peer_rates[(store.label, "produce")].append(sent / seconds)
            if not keyed:
                got, seconds = peer_consume(store, lines[:sent], bench.sizes.peer_seconds)
                peer_rates[(store.label, "consume")].append(got / seconds)
            store.close()
            shutil.rmtree(directory)
    med = {key: statistics.median(v) for key, v in {**kq_rates, **peer_rates}.items()}
    if not keyed:
        bench.peer_put_rates = {label: med[(label, "produce")] for label in PEERS}
        bench.peer_take_rates = {label: med[(label, "consume")] for label in PEERS}

    def row(workload: str, action: str, short: str) -> Row:
        return Row(workload, "msg/s", med[action], {p: med[(p, action)] for p in PEERS}, tenfold=True, short=short)

    if keyed:
        return [row(f"2. keyed produce into 8 partitions, {short_count(n)} msgs", "produce", "2 keyed produce")], []
    rows = [
        row(f"1. bulk produce, {short_count(n)} msgs", "produce", "1 bulk produce"),
        row(f"1. bulk consume, {short_count(n)} msgs", "consume", "1 bulk consume"),
    ]
    checks = [
        Check(
            "1. bulk produce ≥ 2,000,000 msg/s (whole process)",
            f"{med['produce']:,.0f} msg/s ({med['produce'] / 2e6:.2f}× the target)",
            med["produce"] >= 2e6,
        ),
        Check(
            "1. bulk consume ≥ 3,000,000 msg/s (whole process)",
            f"{med['consume']:,.0f} msg/s ({med['consume'] / 3e6:.2f}× the target)",
            med["consume"] >= 3e6,
        ),
    ]
    return rows, checks


# ---------------------------------------------------------------- workload 3: 4 producers, 2 consumers


@dataclass
class Concurrent:
    rate: float
    lost: int
    duplicated: int


def run_concurrent(producers: list[list[str]], inputs: list[Path], consumers: list[list[str]]) -> Concurrent:
    """All processes at once; the clock stops when the consumers have written every message."""
    expected = [line for path in inputs for line in path.read_bytes().splitlines()]
    collector = LineCollector()
    started: list[subprocess.Popen] = []
    start = time.perf_counter()
    try:
        for cmd in consumers:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            started.append(proc)
            collector.attach(proc.stdout)
        writers = []
        for cmd, path in zip(producers, inputs):
            with open(path, "rb") as stdin:
                writers.append(subprocess.Popen(cmd, stdin=stdin))
        started += writers
        # Give up once the producers are done and nothing has arrived for a while: messages were lost.
        last_count, last_progress = 0, time.monotonic()
        while not collector.wait_for(len(expected), 0.5):
            if collector.count != last_count:
                last_count, last_progress = collector.count, time.monotonic()
            elif all(w.poll() is not None for w in writers) and time.monotonic() - last_progress > 10:
                break
        seconds = time.perf_counter() - start
        for proc in writers:
            if proc.wait(60) != 0:
                raise RuntimeError(f"{' '.join(proc.args)} exited {proc.returncode}")
    finally:
        for proc in started:
            stop(proc)
    collector.join()
    seen = collector.lines()
    distinct = set(seen)
    lost = len(set(expected) - distinct)
    return Concurrent((len(expected) - lost) / seconds, lost, len(seen) - len(distinct))


def concurrent(bench: Bench) -> tuple[list[Row], list[Check]]:
    n = bench.sizes.messages
    results: dict[str, list[Concurrent]] = defaultdict(list)
    for _ in range(bench.sizes.runs):
        data = bench.fresh_dir("kq")
        run(bench.kq(data, "topic", "create", "t", "--partitions", "4"))
        results["kq"].append(
            run_concurrent(
                [bench.kq(data, "produce", "t")] * 4,
                bench.input_parts(n, 4),
                [bench.kq(data, "consume", "t", "-g", "g", "-f")] * 2,
            )
        )
        shutil.rmtree(data)
        for name, store_class in peers.STORES.items():
            if hasattr(store_class, "several_processes"):
                continue
            directory = bench.fresh_dir("peer")
            store_class(str(directory), 2).close()  # create it before the processes race to
            results[store_class.label].append(
                run_concurrent(
                    [bench.worker("produce", name, directory, 2)] * 4,
                    bench.input_parts(bench.concurrent_count(store_class.label), 4),
                    [bench.worker("consume", name, directory, 2, member, 2, "follow") for member in (0, 1)],
                )
            )
            shutil.rmtree(directory)

    def cell(label: str) -> float | str:
        runs = results[label]
        rate = statistics.median(r.rate for r in runs)
        lost, duplicated = sum(r.lost for r in runs), sum(r.duplicated for r in runs)
        if lost or duplicated:
            return f"inexact: {report.figure(rate, 'msg/s')}, {lost} lost, {duplicated} duplicated"
        return rate

    peer_cells = {s.label: getattr(s, "several_processes", None) or cell(s.label) for s in STORES}
    row = Row(
        "3. 4 producer + 2 consumer processes (aggregate)",
        "msg/s",
        cell("kq"),
        peer_cells,
        tenfold=True,
        short="3 four producers\n+ two consumers",
    )
    kq_runs = results["kq"]
    lost, duplicated = sum(r.lost for r in kq_runs), sum(r.duplicated for r in kq_runs)
    exact = Check(
        "3. 4 producers + 2 group members: nothing lost or duplicated",
        f"{len(kq_runs)} runs of {n:,}: {lost} lost, {duplicated} duplicated",
        not lost and not duplicated,
    )
    if isinstance(row.kq, str):  # inexact: keep the figure out of the peer comparison
        row = replace(row, kq=statistics.median(r.rate for r in kq_runs))
    return [row], [exact]


# ---------------------------------------------------------------- workload 4: one message per process


def per_invocation(bench: Bench) -> tuple[list[Row], list[Check]]:
    """Each command once per round, round after round, so drift in the machine's load hits all alike."""
    data = bench.fresh_dir("kq")
    run(bench.kq(data, "topic", "create", "t"))
    commands = {
        "kq": bench.kq(data, "produce", "t"),
        "floor": [sys.executable, "-c", FLOOR],
        "bare": [sys.executable, "-c", "pass"],
    }
    for name, store_class in peers.STORES.items():
        directory = bench.fresh_dir("peer")
        store_class(str(directory), 1).close()
        commands[store_class.label] = bench.worker("produce", name, directory, 1)
    samples: dict[str, list[float]] = defaultdict(list)
    for i in range(bench.sizes.invocations):
        message = (b"%010d" % i).ljust(VALUE_BYTES, b"m") + b"\n"
        for label, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, input=message, check=True)
            samples[label].append((time.perf_counter() - start) * 1000)
    ms = {label: statistics.median(v) for label, v in samples.items()}
    startup = ms["kq"] - ms["floor"]
    row = Row(
        f"4. one message per process ({bench.sizes.invocations} runs)",
        "ms/msg",
        ms["kq"],
        {p: ms[p] for p in PEERS},
        higher_is_better=False,
        short="4 one message\nper process",
    )
    check = Check(
        f"4. kq start-up ≤ 25 ms above `python3 -c '{FLOOR}'`",
        f"{ms['kq']:.1f} ms − floor {ms['floor']:.1f} ms = {startup:.1f} ms (bare python: {ms['bare']:.1f} ms)",
        startup <= 25,
    )
    return [row], [check]


# ---------------------------------------------------------------- workload 5: follow latency


@dataclass
class Follow:
    delays_ms: list[float]
    idle_percent: float | None


def stamped(prefix: bytes) -> bytes:
    return prefix.ljust(VALUE_BYTES, b"f") + b"\n"


def follow_session(bench: Bench, follower_cmd: list[str], producer_cmd: list[str], idle_seconds: float) -> Follow | str:
    """A producer fed one message every 10 ms; each message carries its send time, read back on arrival."""
    collector = LineCollector()
    follower = subprocess.Popen(follower_cmd, stdout=subprocess.PIPE)
    collector.attach(follower.stdout)
    producer = subprocess.Popen(producer_cmd, stdin=subprocess.PIPE)

    def send(line: bytes) -> None:
        producer.stdin.write(line)
        producer.stdin.flush()

    try:
        # Warm up until one message makes it through: both processes are then running.
        warmups, deadline = 0, time.monotonic() + 10
        while not collector.wait_for(1, 0.05):
            if time.monotonic() > deadline:
                return "no delivery in 10 s"
            send(stamped(b"warm-up"))
            warmups += 1
        start = time.monotonic()
        for i in range(bench.sizes.follow_messages):
            time.sleep(max(0.0, start + i * FOLLOW_INTERVAL - time.monotonic()))
            send(stamped(b"%019d" % time.time_ns()))
        if not collector.wait_for(warmups + bench.sizes.follow_messages, 10):
            sent = warmups + bench.sizes.follow_messages
            return f"{sent - collector.count} of {sent} msgs never arrived"
        delays = [
            (arrived - int(line[:19])) / 1e6
            for arrived, lines in collector.arrivals
            for line in lines
            if line[:1].isdigit()
        ]
        idle = None
        if idle_seconds:
            # An observation window, not a synchronisation: the follower is idle throughout.
            before = measure.cpu_seconds(follower.pid)
            time.sleep(idle_seconds)
            idle = (measure.cpu_seconds(follower.pid) - before) / idle_seconds * 100
        return Follow(delays, idle)
    finally:
        producer.stdin.close()
        stop(producer)
        stop(follower)
        collector.join()


def follow_latency(bench: Bench) -> tuple[list[Row], list[Check]]:
    delays: dict[str, list[float]] = defaultdict(list)
    idle: dict[str, float] = {}
    failed: dict[str, str] = {}
    for run_number in range(bench.sizes.runs):
        idle_seconds = bench.sizes.idle_seconds if run_number == bench.sizes.runs - 1 else 0
        sessions = {}
        data = bench.fresh_dir("kq")
        run(bench.kq(data, "topic", "create", "t"))
        sessions["kq"] = (bench.kq(data, "consume", "t", "-f"), bench.kq(data, "produce", "t"))
        for name, store_class in peers.STORES.items():
            directory = bench.fresh_dir("peer")
            store_class(str(directory), 1).close()
            sessions[store_class.label] = (
                bench.worker("consume", name, directory, 1, 0, 1, "follow"),
                bench.worker("produce", name, directory, 1),
            )
        for label, (follower, producer) in sessions.items():
            if label in failed:
                continue
            result = follow_session(bench, follower, producer, idle_seconds)
            if isinstance(result, str):
                failed[label] = result
                continue
            delays[label] += result.delays_ms
            if result.idle_percent is not None:
                idle[label] = result.idle_percent

    def stat(label: str, fn) -> float | str:
        return failed.get(label) or fn(label)

    p50 = {label: stat(label, lambda k: percentile(delays[k], 0.50)) for label in ["kq", *PEERS]}
    p99 = {label: stat(label, lambda k: percentile(delays[k], 0.99)) for label in ["kq", *PEERS]}
    cpu = {label: stat(label, lambda k: idle[k]) for label in ["kq", *PEERS]}
    rows = [
        Row("5. follow latency p50", "ms", p50.pop("kq"), p50, higher_is_better=False),
        Row("5. follow latency p99", "ms", p99.pop("kq"), p99, higher_is_better=False),
        Row(
            f"5. idle follower CPU ({bench.sizes.idle_seconds:g} s)",
            "% of a core",
            cpu.pop("kq"),
            cpu,
            higher_is_better=False,
        ),
    ]
    kq_p50, kq_p99, kq_cpu = (row.kq for row in rows)
    checks = [
        Check("5. follow latency p50 ≤ 10 ms", report.figure(kq_p50, "ms"), _at_most(kq_p50, 10)),
        Check("5. follow latency p99 ≤ 50 ms", report.figure(kq_p99, "ms"), _at_most(kq_p99, 50)),
        Check("5. idle follower < 2 % of a core", report.figure(kq_cpu, "% of a core"), _at_most(kq_cpu, 2)),
    ]
    return rows, checks


def _at_most(value, limit: float) -> bool | None:
    return value <= limit if isinstance(value, float | int) else None


# ---------------------------------------------------------------- workloads 6 and 7: seek and memory


def data_size(count: int) -> str:
    size = count * (VALUE_BYTES + 1)
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def topic_label(count: int) -> str:
    return f"{short_count(count)} msgs ({data_size(count)})"


def seek_times(bench: Bench, read_at, middle: int) -> dict[str, list[float]]:
    """Seconds to read one message at offset 0, at ``middle``, and at the timestamp of ``middle``.

    ``read_at(how, value)`` runs one reading process and returns (Run, offset, timestamp).
    """
    times: dict[str, list[float]] = defaultdict(list)
    _, _, middle_stamp = read_at("offset", middle)
    reads = [
        ("offset 0", "offset", 0),
        ("middle offset", "offset", middle),
        ("middle timestamp", "timestamp", middle_stamp),
    ]
    for run_number in range(bench.sizes.runs):
        # Rotate the order from run to run, so that a drift in the machine's load favours no kind of read.
        shift = run_number % len(reads)
        for what, how, value in reads[shift:] + reads[:shift]:
            result, offset, _ = read_at(how, value)
            if how == "offset" and offset != value:
                raise RuntimeError(f"reading at offset {value} returned offset {offset}")
            times[what].append(result.seconds * 1000)
    return times


def seek_and_memory(bench: Bench) -> tuple[list[Row], list[Check]]:
    rows: list[Row] = []
    checks: list[Check] = []
    for count in bench.sizes.topics:
        path = bench.input_file(count)
        label = topic_label(count)
        middle = count // 2
        kq_dir, sqlite_dir = bench.fresh_dir("kq"), bench.fresh_dir("sqlite")
        rss = {
            ("kq", "produce"): run(bench.kq(kq_dir, "produce", "t"), stdin=path, peak_rss=True).peak_rss_mb,
            ("kq", "consume"): run(bench.kq(kq_dir, "consume", "t"), peak_rss=True).peak_rss_mb,
            ("sqlite", "produce"): run(
                bench.worker("produce", "sqlite", sqlite_dir, 1), stdin=path, peak_rss=True
            ).peak_rss_mb,
            ("sqlite", "consume"): run(bench.worker("consume", "sqlite", sqlite_dir, 1), peak_rss=True).peak_rss_mb,
        }

        def kq_read(how: str, value: int):
            spec = str(value) if how == "offset" else f"@{value}"
            result = run(bench.kq(kq_dir, "consume", "t", "-o", spec, "-n", "1", "-F", "%o\\t%T\\n"), capture=True)
            offset, stamp = map(int, result.output.split())
            return result, offset, stamp

        def sqlite_read(how: str, value: int):
            result = run(bench.worker("seek", "sqlite", sqlite_dir, how, value), capture=True)
            offset, stamp = map(int, result.output.split())
            return result, offset, stamp

        os.sync()  # the topics were just written: keep their writeback out of the timed reads
        kq_ms = {k: statistics.median(v) for k, v in seek_times(bench, kq_read, middle).items()}
        sqlite_ms = {k: statistics.median(v) for k, v in seek_times(bench, sqlite_read, middle).items()}
        not_a_log = "n/a: no offsets"
        for what in ("offset 0", "middle offset", "middle timestamp"):
            where = f"offset {middle:,}" if what == "middle offset" else what
            rows.append(
                Row(
                    f"6. read 1 msg at {where}, {label}",
                    "ms",
                    kq_ms[what],
                    {p: sqlite_ms[what] if p == peers.SqliteTable.label else not_a_log for p in PEERS},
                    higher_is_better=False,
                )
            )
        for what in ("middle offset", "middle timestamp"):
            above = kq_ms[what] - kq_ms["offset 0"]
            checks.append(
                Check(
                    f"6. seek to the {what} ≤ 30 ms above offset 0, {label}",
                    f"{kq_ms[what]:.1f} − {kq_ms['offset 0']:.1f} = {above:.1f} ms",
                    above <= 30,
                )
            )
        for action, what in (("produce", "producing it from stdin"), ("consume", "consuming it")):
            slow = {p: _too_slow_to_load(bench, p, max(bench.sizes.topics)) for p in TENFOLD_PEERS}
            rows.append(
                Row(
                    f"7. peak RSS {what}, {label}",
                    "MB",
                    rss[("kq", action)],
                    {peers.SqliteTable.label: rss[("sqlite", action)], **slow},
                    higher_is_better=False,
                )
            )
            checks.append(
                Check(
                    f"7. peak RSS ≤ 100 MB {what}, {label}", f"{rss[('kq', action)]:.0f} MB", rss[("kq", action)] <= 100
                )
            )
        shutil.rmtree(kq_dir)
        shutil.rmtree(sqlite_dir)
    return rows, checks


def _too_slow_to_load(bench: Bench, label: str, count: int) -> str:
    """Why a queue peer is left out of workload 7: loading the largest topic would take this long."""
    rate = bench.peer_put_rates.get(label)
    if rate is None:
        return "not run"
    return f"not run: {data_size(count)} ≈ {count / rate / 60:,.0f} min to load"


# ---------------------------------------------------------------- the run


WORKLOADS = {
    1: lambda bench: bulk(bench, keyed=False),
    2: lambda bench: bulk(bench, keyed=True),
    3: concurrent,
    4: per_invocation,
    5: follow_latency,
    6: seek_and_memory,  # workload 7 (memory) shares 6's topics
}


def workload_number(text: str) -> int:
    return int(text.split(".", 1)[0])


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    libraries = ", ".join(f"{p} {version(p)}" for p in dict.fromkeys(s.package for s in STORES) if p != "sqlite3")
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU model": cpu,
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "SQLite": __import__("sqlite3").sqlite_version,
        "peers": libraries,
        "kq": f"{version('kq')} ({commit})",
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def method(sizes: Sizes) -> list[str]:
    n = short_count(sizes.messages)
    return [
        f"`python benchmarks/suite.py` runs every workload in one go; figures are medians of {sizes.runs} runs "
        "unless a line below says otherwise. The machine is shared, so absolute figures move from run to run; "
        "the ratios, measured side by side in the same run, move less.",
        "Before measuring, the suite runs `python -m compileall -q kq benchmarks`: the environment sets "
        "PYTHONDONTWRITEBYTECODE=1, and without the bytecode an editable kq would recompile itself on every "
        "start, which a pip-installed kq never does.",
        f"Messages are {VALUE_BYTES}-byte values, one per line; every store gets the same messages. "
        "kq is timed as users run it: the `kq` console script, whole process, interpreter start-up included.",
        "Peers: each one's best documented bulk form, in a fresh temporary directory: persist-queue's "
        "SQLiteQueue with `auto_commit=False` and one `task_done()` per 1,000 gets (its `put` commits on every "
        "call; there is no batched put), persist-queue's file `Queue` (one `task_done()` per 1,000 gets), "
        "litequeue with 1,000 puts per `transaction()` (a `pop` is its own transaction by design; the "
        "1,000 `done()` marks share one), diskcache `Deque.extend` and `popleft` inside one `transact()` per "
        "1,000, and a plain SQLite table in WAL mode (`synchronous=NORMAL`, as kq does not fsync unless "
        "asked) with 1,000-row `executemany` transactions.",
        f"1, 2: kq reads {n} messages from stdin (`kq produce t < file`, with `-K : --partitions 8` for "
        "workload 2) and writes them to /dev/null (`kq consume t`); the first run checks the output byte for "
        "byte. The peers have no command that reads stdin, so they are driven in-process (no start-up cost, "
        "messages already split into a list): they put batches of 1,000 and take them back in order, "
        f"time-boxed to {sizes.peer_seconds:g} s per phase because the slow ones would need minutes for "
        f"{n} (a smaller queue flatters a store whose cost grows with its length). For workload 2 peers split "
        "each line at `:` and route it by crc32 of its key to one of 8 partitions (a queue or table each), "
        "storing the whole line, in full batches per partition.",
        f"3: kq: a topic of 4 partitions, 4 `kq produce` processes ({n} distinct messages in all) and 2 "
        "`kq consume -g g -f` group members, all started at once; the clock runs from the first start until "
        "the consumers have written every message, and the run fails the exactness check if any message is "
        "missing or appears twice. Peers: the same, through the worker in `benchmarks/peers.py` (a process "
        "per producer and consumer, 2 partitions, each consumer owning one), with as many messages as the "
        f"slower of the peer's workload-1 put and take rates gets through in about "
        f"{sizes.concurrent_seconds:g} s (at least 4,000, at most {n}).",
        f"4: {sizes.invocations} rounds; each round runs, one after another, `kq produce t` with one message "
        f"on stdin, `python3 -c '{FLOOR}'` (the floor of any CLI built on kq's libraries), `python3 -c pass`, "
        "and each peer's one-message put through the worker (`python -m peers produce …`, which imports only "
        "that store). The figure is each command's median wall time, started from Python rather than a "
        "shell loop so that each invocation is timed alone.",
        f"5: a producer process (`kq produce t`, or the worker) fed one message every 10 ms; the message "
        "carries its send time (`time.time_ns()`), and a follower (`kq consume t -f`, or the worker "
        "polling every 5 ms, kq's own interval) prints it; the delay is taken when the line reaches the "
        f"suite through the follower's stdout. p50 and p99 pool {sizes.follow_messages} messages from each of "
        f"{sizes.runs} runs. Idle CPU: after the last run the follower is left idle for "
        f"{sizes.idle_seconds:g} s and its utime+stime is read from /proc/PID/stat.",
        "6: one-partition topics of "
        + " and ".join(topic_label(c) for c in sizes.topics)
        + ", built once per run of the suite (`kq produce t < file`; the SQLite table through the worker). "
        "Each figure is the whole process reading one message: `kq consume t -o N -n 1`, and `-o @T` where "
        "T is the timestamp of the middle message; the SQLite table is read by its primary key, and by a "
        "`timestamp >= T` scan (the table has no index on time, which would slow every insert).",
        "7: peak RSS (GNU `/usr/bin/time -f %M`, so that no fork of the large suite process inflates it) of building those topics from stdin and "
        "of consuming them to /dev/null, one run each: memory does not vary the way time does. The queue "
        "peers are not loaded with 1 GB: at their workload-1 put rates that would take the minutes shown.",
    ]


NOT_MEASURED = [
    "Kafka with kcat: not measured: no Kafka broker on this machine (the suite may not download a JVM "
    "service), and no figures are borrowed from elsewhere.",
    "persist-queue's file Queue in workloads 3 and 5: by its documentation it is thread-safe, not "
    "process-safe (each instance caches the queue's head and tail): four producer processes would corrupt "
    "it, and a follower in another process never sees new items (workload 5 shows it delivering nothing).",
    "Seek (6) on the queue peers: a queue has no offsets or timestamps to seek to. Memory (7) on them: "
    "loading 1 GB at their workload-1 put rates would take the minutes shown.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one run, for development")
    parser.add_argument("--runs", type=int, help="runs per figure (default 5, or 1 with --quick)")
    parser.add_argument("--only", help="comma-separated workloads to run, e.g. 1,4 (7 runs with 6)")
    parser.add_argument(
        "--write-doc",
        action="store_true",
        help="write docs/ even with --quick or --only (a full run always writes them)",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = replace(sizes, runs=args.runs)
    chosen = sorted(WORKLOADS) if not args.only else sorted({min(int(w), 6) for w in args.only.split(",")})

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kq"), str(BENCH)], check=True)
    # Every child inherits this path, so `python -m peers` finds the worker (kq and the floor see it too: a
    # directory more on sys.path costs them nothing measurable, and it keeps all commands alike).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
    facts = machine()
    rows: list[Row] = []
    checks: list[Check] = []
    work = Path(tempfile.mkdtemp(prefix="kq-suite-"))
    started = time.monotonic()
    try:
        bench = Bench(sizes, work)
        for number in chosen:
            began = time.monotonic()
            new_rows, new_checks = WORKLOADS[number](bench)
            rows += new_rows
            checks += new_checks
            print(
                f"workload {number}{' and 7' if number == 6 else ''}: {time.monotonic() - began:.0f} s", file=sys.stderr
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    checks += report.peer_checks(rows, TENFOLD_PEERS)
    # Workloads 6 and 7 are measured topic by topic; list them workload by workload.
    rows.sort(key=lambda r: workload_number(r.workload))
    checks.sort(key=lambda c: workload_number(c.target))
    facts["suite run time"] = f"{time.monotonic() - started:.0f} s"
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report.console(rows, checks, PEERS))

    if args.write_doc or (not args.quick and not args.only):
        docs = REPO / "docs"
        title = "kq beside the stores people already use"
        report.chart(
            rows,
            PEERS,
            docs / "benchmarks.png",
            f"{title}: msg/s per workload, {facts['CPUs (nproc)']} CPUs (higher is better)",
        )
        intro = [
            "Generated by `python benchmarks/suite.py` (install the peers with `pip install -e '.[bench]'`); "
            "every figure below comes from one run of it on the machine described, kq and its peers side by "
            "side. Workload numbers follow issue 7."
        ]
        text = report.markdown(title, intro, facts, rows, checks, PEERS, "benchmarks.png", method(sizes), NOT_MEASURED)
        (docs / "BENCHMARKS.md").write_text(text)
        print(f"wrote {docs / 'BENCHMARKS.md'} and {docs / 'benchmarks.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
