"""Compression at rest: bytes on disk beside `zstd -3`, and produce/consume speed and peak memory per codec.

    python benchmarks/compression.py [--mb 100] [--messages 1000000] [--runs 3] [--base DIR]

Two inputs of about --mb MB each: JSON event lines (generated: ids, times,
paths, latencies, a random request id) and a real log (the machine's
/var/log/dpkg.log, else /var/log/apt/*.log, repeated to size). For each,
the bytes kq keeps on disk per codec (the topic's segment files) beside
`zstd -3` of the same input as one file, and `kq produce` / `kq consume`
times and peak RSS. Then --messages lines of 100 B (as
benchmarks/produce_consume.py makes them) produced and consumed with
`none` and `zstd`, median of --runs; with --base DIR (a checkout of
another kq, e.g. `git worktree add /tmp/kq-base 669570f`) that kq's
`none` too, in the same run. Figures go to docs/BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import run  # noqa: E402
from produce_consume import make_input  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODECS = ["none", "zstd", "lz4", "gzip", "snappy"]


def json_events(path: str, mb: int) -> None:
    rng = random.Random(7)
    pages = [f"/api/v1/{w}/{n}" for w in ("items", "users", "orders", "search", "cart") for n in range(40)]
    agents = [
        "Mozilla/5.0 (X11; Linux x86_64)",
        "curl/8.5.0",
        "okhttp/4.12",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1)",
    ]
    t = 1_760_000_000_000
    target = mb * 1_000_000
    with open(path, "w") as f:
        written = 0
        while written < target:
            lines = []
            for _ in range(1000):
                t += rng.randint(0, 40)
                event = {
                    "ts": t,
                    "event": rng.choice(("page_view", "click", "add_to_cart", "purchase", "search")),
                    "user_id": rng.randint(1, 50_000),
                    "session": f"{rng.getrandbits(64):016x}",
                    "path": rng.choice(pages),
                    "status": rng.choice((200, 200, 200, 200, 304, 404, 500)),
                    "latency_ms": round(rng.lognormvariate(3, 0.8), 1),
                    "agent": rng.choice(agents),
                }
                lines.append(json.dumps(event, separators=(",", ":")))
            chunk = "\n".join(lines) + "\n"
            f.write(chunk)
            written += len(chunk)


def real_log(path: str, mb: int) -> str:
    """The machine's own log grown to ``mb`` MB as a long log grows: runs of its lines in a random
    order, each line's leading time rewritten to rise.

    (Repeating the file whole would let `zstd -3` match each copy against the one before it, 360 KB
    back, as no real log allows, and no batch-at-a-time store can: see docs/BENCHMARKS.md.)
    """
    import datetime

    sources = [p for p in ["/var/log/dpkg.log", *sorted(glob.glob("/var/log/apt/*.log"))] if os.path.isfile(p)]
    if not sources:
        sys.exit("no readable log under /var/log to use as the real log")
    lines = Path(sources[0]).read_bytes().splitlines(keepends=True)
    rng = random.Random(11)
    clock = datetime.datetime(2026, 1, 1)
    target = mb * 1_000_000
    written = 0
    with open(path, "wb") as f:
        while written < target:
            out = []
            for _ in range(200):
                start = rng.randrange(len(lines))
                for line in lines[start : start + rng.randint(1, 30)]:
                    clock += datetime.timedelta(milliseconds=rng.randint(0, 900))
                    if line[:2] == b"20" and line[19:20] == b" ":  # dpkg.log: "YYYY-MM-DD HH:MM:SS ..."
                        line = clock.strftime("%Y-%m-%d %H:%M:%S").encode() + line[19:]
                    out.append(line)
            chunk = b"".join(out)
            f.write(chunk)
            written += len(chunk)
    return sources[0]


def repeated_log(path: str, mb: int, source: str) -> None:
    data = Path(source).read_bytes()
    with open(path, "wb") as f:
        for _ in range(mb * 1_000_000 // len(data) + 1):
            f.write(data)


def kq_cmd(kq_root: str, data: str, *args: str) -> list[str]:
    return ["env", f"PYTHONPATH={kq_root}", sys.executable, "-m", "kq", "--data-dir", data, "-q", *args]


def disk_bytes(data: str, topic: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(data, "topics", topic, "*", "*.log")))


def produce_consume(kq_root: str, work: str, src: str, codec: str | None, tag: str) -> dict:
    data = os.path.join(work, f"data-{tag}")
    shutil.rmtree(data, ignore_errors=True)
    if codec is not None and codec != "none":
        subprocess.run(kq_cmd(kq_root, data, "topic", "create", "t", "--compression", codec), check=True)
    produced = run(kq_cmd(kq_root, data, "produce", "t"), stdin=Path(src), peak_rss=True)
    consumed = run(kq_cmd(kq_root, data, "consume", "t"), peak_rss=True)
    size = disk_bytes(data, "t")
    shutil.rmtree(data)
    return {
        "produce_s": produced.seconds,
        "consume_s": consumed.seconds,
        "produce_rss": produced.peak_rss_mb,
        "consume_rss": consumed.peak_rss_mb,
        "disk": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="size of each text input in MB")
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", help="a checkout of another kq to run beside this one (its `none`)")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "kq")], check=True)
    if args.base:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(args.base, "kq")], check=True)
    work = tempfile.mkdtemp(prefix="kq-bench-compression-")
    try:
        inputs = {
            "JSON events": os.path.join(work, "events.jsonl"),
            "real log": os.path.join(work, "real.log"),
            "real log repeated whole": os.path.join(work, "repeated.log"),
        }
        json_events(inputs["JSON events"], args.mb)
        source = real_log(inputs["real log"], args.mb)
        repeated_log(inputs["real log repeated whole"], args.mb, source)
        print(f"inputs: {args.mb} MB each; the real log is {source}'s lines; {os.cpu_count()} CPUs")
        for name, src in inputs.items():
            raw = os.path.getsize(src)
            zstd = subprocess.run(f"zstd -3 -q -c {src} | wc -c", shell=True, capture_output=True, check=True)
            ref = int(zstd.stdout)
            print(f"\n{name}: {raw / 1e6:.1f} MB; zstd -3 of the file: {ref / 1e6:.2f} MB ({raw / ref:.1f}x)")
            print(f"{'codec':<8}{'on disk MB':>11}{'ratio':>7}{'vs zstd -3':>11}{'produce s':>11}{'consume s':>11}")
            for codec in CODECS:
                r = produce_consume(REPO, work, src, codec, codec)
                print(
                    f"{codec:<8}{r['disk'] / 1e6:>11.2f}{raw / r['disk']:>7.1f}{r['disk'] / ref:>10.2f}x"
                    f"{r['produce_s']:>11.2f}{r['consume_s']:>11.2f}"
                )
        src = os.path.join(work, "lines.txt")
        make_input(src, args.messages, 100)
        kinds = [("none", REPO, "none"), ("zstd", REPO, "zstd")]
        if args.base:
            kinds.insert(0, ("base none", args.base, None))
        results: dict[str, list[dict]] = {k: [] for k, _, _ in kinds}
        for i in range(args.runs):
            for label, root, codec in kinds:  # interleaved: each run sees the same machine
                results[label].append(produce_consume(root, work, src, codec, f"{label}-{i}".replace(" ", "-")))
        print(f"\n{args.messages:,} lines of 100 B, median of {args.runs} runs (peak RSS, MB)")
        print(f"{'what':<10}{'produce s':>10}{'consume s':>10}{'prod RSS':>10}{'cons RSS':>10}{'on disk MB':>11}")
        med = {}
        for label, rows in results.items():
            m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            med[label] = m
            print(
                f"{label:<10}{m['produce_s']:>10.2f}{m['consume_s']:>10.2f}{m['produce_rss']:>10.0f}"
                f"{m['consume_rss']:>10.0f}{m['disk'] / 1e6:>11.1f}"
            )
        print(
            f"zstd speed as a share of none: produce {med['none']['produce_s'] / med['zstd']['produce_s']:.0%}, "
            f"consume {med['none']['consume_s'] / med['zstd']['consume_s']:.0%}"
        )
        if args.base:
            b = med["base none"]
            print(
                f"none beside the base kq: produce {b['produce_s'] / med['none']['produce_s']:.0%}, "
                f"consume {b['consume_s'] / med['none']['consume_s']:.0%} of its speed"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
