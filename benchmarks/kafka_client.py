"""`kq -b` beside kcat, against kq serve and Tansu, in one run: produce a file, consume it back.

    python benchmarks/kafka_client.py [--messages 1000000] [--runs 3] [--json]

For each broker and run: kcat -P -l FILE and `kq -b … produce --file FILE`
send the same N messages of 100 bytes (one a line) to fresh one-partition
topics; then `kcat -C -e` and `kq -b … consume` read them back to a file.
Each is timed as a user sees it: the whole process, start-up included. The
outputs are checked (every message, once). Medians over the runs, and kq's
time over kcat's, are printed as a Markdown table (docs/BENCHMARKS.md).

kcat: Debian's kcat 1.7 is built against librdkafka 2.0.2, whose ApiVersions
request Tansu 0.6 cannot answer. kcat is run here with the librdkafka that
confluent-kafka's wheel bundles (2.16, the one `kq -b` uses), through
LD_LIBRARY_PATH, so both sides use the same client library.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_support import KqServer, Tansu  # noqa: E402

KQ = [sys.executable, "-m", "kq"]
VALUE_BYTES = 100


def librdkafka_of_confluent_kafka() -> str:
    """A directory holding confluent-kafka's bundled librdkafka as librdkafka.so.1 (for kcat)."""
    import confluent_kafka

    libs = glob.glob(
        os.path.join(os.path.dirname(confluent_kafka.__file__), "..", "confluent_kafka.libs", "librdkafka*")
    )
    if not libs:
        raise SystemExit("confluent-kafka's wheel bundles no librdkafka here: cannot run kcat against Tansu")
    where = tempfile.mkdtemp(prefix="kq-bench-lib-")
    os.symlink(os.path.realpath(libs[0]), os.path.join(where, "librdkafka.so.1"))
    return where


def timed(command: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=stdout, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.decode()}")
    return elapsed


def one_run(bootstrap: str, client: list[str], messages: str, n: int, run: int, work: str, kcat_env: dict) -> dict:
    kq = KQ + ["-q", "-b", bootstrap, *client]
    kcat = [shutil.which("kcat") or "kcat", "-b", bootstrap, "-q"]
    a, b = f"kcat-{run}-{time.monotonic_ns()}", f"kq-{run}-{time.monotonic_ns()}"
    for topic in (a, b):
        timed(kq + ["topic", "create", topic, "--partitions", "1"])
    out = {
        "kcat produce": timed(kcat + ["-t", a, "-P", "-l", messages], env=kcat_env),
        "kq produce": timed(kq + ["produce", b, "--file", messages]),
    }
    expected = n * (VALUE_BYTES + 1)
    for name, command, env in (
        ("kcat consume", kcat + ["-t", a, "-C", "-e", "-o", "beginning"], kcat_env),
        ("kq consume", kq + ["consume", b], None),
    ):
        target = os.path.join(work, "out")
        with open(target, "wb") as f:
            out[name] = timed(command, env=env, stdout=f)
        size = os.path.getsize(target)
        if size != expected:
            raise SystemExit(f"{name} wrote {size} bytes, not {expected}: messages lost or repeated")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("kcat") is None:
        raise SystemExit("kcat is not installed (Debian: apt-get install kcat)")
    work = tempfile.mkdtemp(prefix="kq-bench-")
    lib = librdkafka_of_confluent_kafka()
    kcat_env = {**os.environ, "LD_LIBRARY_PATH": lib}
    messages = os.path.join(work, "messages")
    line = b"x" * VALUE_BYTES + b"\n"
    with open(messages, "wb") as f:
        for i in range(0, args.messages, 10_000):
            f.write(line * min(10_000, args.messages - i))
    load = [os.getloadavg()[0]]
    results: dict[str, list[dict]] = {}
    server = KqServer(os.path.join(work, "serve-data"))
    tansu = Tansu()
    try:
        brokers = [
            ("kq serve", server.bootstrap, []),
            ("Tansu 0.6", tansu.bootstrap, ["-X", "session.timeout.ms=6000"]),
        ]
        for run in range(args.runs):
            for name, bootstrap, client in brokers:
                results.setdefault(name, []).append(
                    one_run(bootstrap, client, messages, args.messages, run, work, kcat_env)
                )
                load.append(os.getloadavg()[0])
    finally:
        server.kill()
        tansu.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(lib, ignore_errors=True)
    medians = {
        broker: {phase: statistics.median(r[phase] for r in runs) for phase in runs[0]}
        for broker, runs in results.items()
    }
    if args.json:
        print(json.dumps({"messages": args.messages, "runs": results, "medians": medians, "load": load}, indent=2))
        return
    print(
        f"{args.messages:,} messages of {VALUE_BYTES} B, medians of {args.runs} runs; load average {min(load):.1f}–{max(load):.1f}\n"
    )
    print("| broker | kcat produce | kq produce | kq / kcat | kcat consume | kq consume | kq / kcat |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for broker, m in medians.items():
        print(
            f"| {broker} | {m['kcat produce']:.2f} s | {m['kq produce']:.2f} s | {m['kq produce'] / m['kcat produce']:.2f} "
            f"| {m['kcat consume']:.2f} s | {m['kq consume']:.2f} s | {m['kq consume'] / m['kcat consume']:.2f} |"
        )
    print("\nEvery run (seconds):")
    for broker, runs in results.items():
        for r in runs:
            print(f"  {broker}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
