"""Delayed records in a share group: acquiring a topic half of whose records are delayed, beside an undelayed one.

    python benchmarks/share_delay.py [--records 1000000] [--block 10000 --block 1000 --block 100]
                                     [--mixed 1000 --mixed 1] [--batch 1000] [--runs 3] [--base CHECKOUT]

The target (issue 26): a share group on a topic with half of --records
records delayed into the future (a `kq.deliver-at` header a day ahead, as
`produce --delay 1d` writes) acquires the other half at least 80 % as fast
(records acquired per second) as it acquires an undelayed topic of --records
records, today's path. Both through kq.share.consumer.ShareConsumer, as
benchmarks/share.py's library path: acquire --batch at a time, read each
value, acknowledge with the next acquisition.

The delayed records come in blocks of --block records alternating with
blocks of undelayed ones, each block appended on its own (as `produce
--delay` runs and plain ones write them: a batch is all delayed or not), or
in blocks of --mixed records written in batches of 10,000 records with each
record's own headers (as `produce --json` writes lines some of which have a
`deliver_at`). Each delayed block becomes one scheduled run of the share
group's schedule file (kq.share.schedule); --mixed 1 alternates record by
record, the most runs there can be. The undelayed topic is written in
batches of 10,000. Each figure is the median of
--runs runs, the topics measured in turn within each run; records per wall
second and per CPU second (the share state's fsyncs make wall time noisy on
a shared disk).

With --base CHECKOUT (a checkout of kq before delayed records, e.g. `git
worktree add /tmp/base 669570f`), each run also measures the undelayed topic
with that kq, in a child process ("undelayed, base kq"): the issue's "an
undelayed topic today" taken literally.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.environ.get("KQ_BENCH_REPO") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
VALUE = b"x" * 100
CHUNK = 10_000


def fill(path: str, records: int, block: int | None, mixed: bool = False) -> int:
    """A topic ``jobs`` of ``records`` records; with ``block``, every other block of that many is
    delayed a day (``mixed``: in batches of CHUNK, else a batch per block). Returns how many are not delayed."""
    import kq

    data = kq.DataDir(path)
    topic = data.create_topic("jobs", 1)
    part = topic.partition(0)
    if block is not None:  # (a base kq, from before delayed records, has no kq.delivery_time)
        from kq.delivery_time import deliver_at_header, now_ms

        later = [deliver_at_header(now_ms() + 86_400_000)]
    plain = 0
    written = 0
    while written < records:
        n = min(CHUNK, records - written)
        if block is None:
            part.append([VALUE] * n)
            plain += n
        elif not mixed:
            n = min(n, block - written % block)
            delayed = (written // block) % 2 == 0
            part.append([VALUE] * n, headers=[later] * n if delayed else None)
            plain += 0 if delayed else n
        else:
            # As a produce of mixed records writes them (`--json` lines, some with a deliver_at):
            # batches of CHUNK records, each record's headers its own.
            headers = [later if ((written + i) // block) % 2 == 0 else [] for i in range(n)]
            part.append([VALUE] * n, headers=headers)
            plain += headers.count([])
        written += n
    topic.close()
    return plain


def acquire_all(path: str, batch: int) -> tuple[int, float, float]:
    """(records acquired and acknowledged, wall seconds, CPU seconds) until an acquisition finds none."""
    import kq
    from kq.share.consumer import ShareConsumer

    data = kq.DataDir(path)
    topic = data.topic("jobs")
    worker = ShareConsumer(data, topic, "bench")
    start, cpu = time.perf_counter(), time.process_time()
    done = 0
    got = worker.acquire(batch)
    while got:
        for d in got:
            d.value  # noqa: B018 (a worker reads each record)
        got = worker.acquire(batch, ack=got)
        done += worker.last_ack.acked
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    worker.close()
    topic.close()
    return done, seconds, cpu


def measure_base(base: str, path: str, records: int, batch: int) -> tuple[int, float, float]:
    """fill + acquire_all of an undelayed topic, run by the kq checked out at ``base`` in a child process."""
    import json
    import subprocess

    code = (
        "import json, sys; sys.argv = ['x']; import share_delay as b; "
        f"b.fill({path!r}, {records}, None); print(json.dumps(b.acquire_all({path!r}, {batch})))"
    )
    env = {**os.environ, "KQ_BENCH_REPO": base, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    done, seconds, cpu = json.loads(out.splitlines()[-1])
    return done, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--block", type=int, action="append", help="delayed block size, a batch each (repeatable)")
    parser.add_argument("--mixed", type=int, action="append", help="delayed block size, mixed in batches (repeatable)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", metavar="CHECKOUT", help="also measure the undelayed topic with this kq")
    args = parser.parse_args()
    layouts = [(None, False)]
    if args.block or args.mixed:
        layouts += [(b, False) for b in args.block or []] + [(b, True) for b in args.mixed or []]
    else:
        layouts += [(10_000, False), (1_000, False), (100, False), (1_000, True), (1, True)]
    rates: dict[str, list[float]] = {}
    cpu_rates: dict[str, list[float]] = {}
    work = tempfile.mkdtemp(prefix="kq-bench-delay-")
    try:
        for run in range(args.runs):
            for block, mixed in layouts:
                if block is None:
                    name = "undelayed"
                else:
                    name = f"half delayed, {'mixed ' if mixed else ''}blocks of {block}"
                path = os.path.join(work, f"d{run}-{block}-{mixed}")
                plain = fill(path, args.records, block, mixed)
                done, seconds, cpu = acquire_all(path, args.batch)
                if done != plain:
                    print(f"{name}: acquired {done:,} of the {plain:,} undelayed records, then none", file=sys.stderr)
                rates.setdefault(name, []).append(done / seconds)
                cpu_rates.setdefault(name, []).append(done / cpu)
                print(f"run {run + 1} {name}: {done:,} records in {seconds:.2f} s ({cpu:.2f} s CPU)", file=sys.stderr)
                shutil.rmtree(path)
            if args.base:
                path = os.path.join(work, f"d{run}-base")
                done, seconds, cpu = measure_base(args.base, path, args.records, args.batch)
                rates.setdefault("undelayed, base kq", []).append(done / seconds)
                cpu_rates.setdefault("undelayed, base kq", []).append(done / cpu)
                print(
                    f"run {run + 1} undelayed, base kq: {done:,} records in {seconds:.2f} s ({cpu:.2f} s CPU)",
                    file=sys.stderr,
                )
                shutil.rmtree(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Wall time holds an fsync per acquisition (the same number per record acquired in each
    # case), which a shared disk makes noisy; CPU time shows the work of passing delayed records by.
    base, cpu_base = statistics.median(rates["undelayed"]), statistics.median(cpu_rates["undelayed"])
    print(f"{'topic':<40} {'records/s':>12} {'vs undelayed':>13} {'per CPU s':>12} {'vs undelayed':>13}")
    for name, values in rates.items():
        rate, cpu_rate = statistics.median(values), statistics.median(cpu_rates[name])
        print(f"{name:<40} {rate:>12,.0f} {rate / base:>12.0%} {cpu_rate:>12,.0f} {cpu_rate / cpu_base:>12.0%}")


if __name__ == "__main__":
    main()
