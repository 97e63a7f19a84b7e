"""Transactions through kq serve: 1,000-record transactions against plain produce, in one run.

    python benchmarks/serve_transactions.py [--messages 200000] [--per-transaction 1000] [--runs 3] [--json]
                                            [--client confluent-kafka|kafka-python] [--broker kq|tansu]

For each run, on one kq serve over a fresh directory: a confluent-kafka
producer sends N messages of 100 bytes to a one-partition topic with its
default batching (acks=all), then a transactional producer sends N more to
another topic, committing every ``--per-transaction`` messages
(begin, produce, commit). Each phase runs in its own process. Printed: the
medians of both rates and their ratio (the issue's target: transactional at
least 50 % of plain), then each run's figures. ``--client kafka-python``
runs both phases with kafka-python's producer instead; ``--broker tansu``
runs them against Tansu (memory storage) instead of kq serve: what the same
client reaches against a broker that costs little.

Both producers are set up before the clock starts, the same way: connected
to the partition's leader, one message delivered (the transactional one
also has its producer id: init_transactions, then a transaction of that one
message). Setup is one-time and not throughput: with librdkafka it takes
20-150 ms (init_transactions, then about 40 ms before the first Produce
connection, which librdkafka's sparse connections hold back for half of
reconnect.backoff.ms), a large share of a 0.5 s run, and a plain producer
hides it behind its produce() calls while a transactional one cannot. Each
mode's setup time is printed too, and the rates with it counted.

Also printed: the CPU time each mode takes per 1,000 records over the timed
part, the producer process's and kq serve's (read from /proc). Plain produce
keeps both busy at once on two cores; a transactional producer waits for each
round trip, so the rate's ratio depends on how many cores are free (with one
core for both, it approaches the ratio of the CPU times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_support import KqServer, Tansu  # noqa: E402

# Each client defines warm_up() (the setup: connected, one message delivered, and for a
# transactional producer its producer id) and send_all() (the n messages, committing every
# ``per`` of them if per); the timing around them is the same for both (TIMING).
CONFLUENT_KAFKA = """
from confluent_kafka import Producer
settings = {"bootstrap.servers": bootstrap}
if per:
    settings["transactional.id"] = "bench-" + topic
p = Producer(settings)
errors = []
def done(err, msg):
    if err is not None:
        errors.append(err)
def send(i):
    while True:
        try:
            p.produce(topic, value, on_delivery=done, partition=0)
            return
        except BufferError:
            p.poll(0.001)
def warm_up():
    if per:
        p.init_transactions(30)
        p.begin_transaction()
        send(-1)
        p.commit_transaction(60)
    else:
        send(-1)
        assert p.flush(60) == 0
def send_all():
    if per:
        for first in range(0, n, per):
            p.begin_transaction()
            for i in range(first, min(first + per, n)):
                send(i)
            p.commit_transaction(60)
    else:
        for i in range(n):
            send(i)
            if i % 10000 == 0:
                p.poll(0)
        assert p.flush(120) == 0
    assert not errors, errors[:3]
"""

# kafka-python's producer (pure Python: the other client).
KAFKA_PYTHON = """
from kafka import KafkaProducer
settings = {"bootstrap_servers": bootstrap, "acks": "all"}
if per:
    settings["transactional_id"] = "bench-" + topic
p = KafkaProducer(**settings)
def warm_up():
    if per:
        p.init_transactions()
        p.begin_transaction()
        p.send(topic, value, partition=0)
        p.commit_transaction()
    else:
        p.send(topic, value, partition=0).get(60)
def send_all():
    if per:
        for first in range(0, n, per):
            p.begin_transaction()
            for i in range(first, min(first + per, n)):
                p.send(topic, value, partition=0)
            p.commit_transaction()
    else:
        futures = [p.send(topic, value, partition=0) for i in range(n)]
        p.flush(120)
        assert all(f.succeeded() for f in futures)
"""

TIMING = """
setup_start = time.perf_counter()
warm_up()
setup = time.perf_counter() - setup_start
print("timed", flush=True)
sys.stdin.readline()  # the server's CPU time is read meanwhile
cpu_start = os.times()
start = time.perf_counter()
send_all()
end = time.perf_counter()
cpu_end = os.times()
cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
print(setup, end - start, cpu, flush=True)
sys.stdin.readline()
"""

ARGUMENTS = """
import os, sys, time
bootstrap, topic, n, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
value = b"x" * 100
"""

CLIENTS = {
    name: ARGUMENTS + code + TIMING
    for name, code in (("confluent-kafka", CONFLUENT_KAFKA), ("kafka-python", KAFKA_PYTHON))
}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (None where /proc does not tell)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _produce(
    bootstrap: str, topic: str, messages: int, per: int, server_pid: int, client: str = "confluent-kafka"
) -> dict:
    """Messages per second once set up, and counting the setup; CPU ms per 1,000 records of each process."""
    child = subprocess.Popen(
        [sys.executable, "-c", CLIENTS[client], bootstrap, topic, str(messages), str(per)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if child.stdout.readline().strip() != "timed":
            raise SystemExit(child.communicate(timeout=60)[1][-2000:])
        server_start = _cpu_seconds(server_pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        server_end = _cpu_seconds(server_pid)
        child.stdin.write("done\n")
        child.stdin.flush()
        _, err = child.communicate(timeout=600)
    finally:
        child.kill()
    if child.returncode or not line:
        raise SystemExit(err[-2000:])
    setup, elapsed, client_cpu = map(float, line.split())
    server_cpu = None if server_start is None or server_end is None else server_end - server_start
    thousands = messages / 1000
    return {
        "rate": messages / elapsed,
        "with_setup": messages / (setup + elapsed),
        "client_cpu_ms": client_cpu * 1000 / thousands,
        "server_cpu_ms": None if server_cpu is None else server_cpu * 1000 / thousands,
    }


def _start_broker(broker: str, tmp: str):
    """The broker under test, with one-partition topics ``plain`` and ``txn``: kq serve over a fresh
    directory, or Tansu (memory storage: the same client against a broker that costs little)."""
    if broker == "tansu":
        from confluent_kafka.admin import AdminClient, NewTopic

        server = Tansu()
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        for future in admin.create_topics([NewTopic(t, 1, 1) for t in ("plain", "txn")]).values():
            future.result(30)
        return server
    data = str(Path(tmp) / "data")
    for topic in ("plain", "txn"):
        subprocess.run(
            [sys.executable, "-m", "kq", "--data-dir", data, "topic", "create", topic],
            check=True,
            capture_output=True,
        )
    return KqServer(data)


def one_run(messages: int, per: int, run: int, broker: str = "kq", client: str = "confluent-kafka") -> dict:
    with tempfile.TemporaryDirectory(prefix="kq-bench-txn-") as tmp:
        server = _start_broker(broker, tmp)
        try:
            # Alternate which goes first, so that neither always meets a warmer machine.
            order = ["plain", "txn"] if run % 2 == 0 else ["txn", "plain"]
            rates = {}
            for name in order:
                got = _produce(server.bootstrap, name, messages, per if name == "txn" else 0, server.proc.pid, client)
                rates[name], rates[name + "_with_setup"] = got["rate"], got["with_setup"]
                rates[name + "_client_cpu_ms"], rates[name + "_server_cpu_ms"] = (
                    got["client_cpu_ms"],
                    got["server_cpu_ms"],
                )
        finally:
            server.kill()
    return rates


def _median_or_none(values: list) -> float | None:
    return None if None in values else statistics.median(values)


def _rounded(key: str, value):
    if value is None:
        return None
    return round(value, 3) if key.endswith("_cpu_ms") else round(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--per-transaction", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--broker",
        choices=["kq", "tansu"],
        default="kq",
        help="tansu: the same producers against Tansu (memory storage), the client's own floor",
    )
    ap.add_argument("--client", choices=sorted(CLIENTS), default="confluent-kafka", help="the producers' library")
    args = ap.parse_args()
    runs = [one_run(args.messages, args.per_transaction, i, args.broker, args.client) for i in range(args.runs)]
    plain = statistics.median(r["plain"] for r in runs)
    txn = statistics.median(r["txn"] for r in runs)
    ratios = [r["txn"] / r["plain"] for r in runs]
    plain_setup = statistics.median(r["plain_with_setup"] for r in runs)
    txn_setup = statistics.median(r["txn_with_setup"] for r in runs)
    cpu = {
        f"{mode}_{who}": _median_or_none([r[f"{mode}_{who}_cpu_ms"] for r in runs])
        for mode in ("plain", "txn")
        for who in ("client", "server")
    }
    result = {
        "messages": args.messages,
        "per_transaction": args.per_transaction,
        "plain_msgs_per_s": round(plain),
        "transactional_msgs_per_s": round(txn),
        "ratio_of_medians": round(txn / plain, 3),
        "median_ratio": round(statistics.median(ratios), 3),
        "with_setup": {
            "plain_msgs_per_s": round(plain_setup),
            "transactional_msgs_per_s": round(txn_setup),
            "ratio_of_medians": round(txn_setup / plain_setup, 3),
        },
        "cpu_ms_per_1000": cpu,
        "runs": [{k: _rounded(k, v) for k, v in r.items()} for r in runs],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    where = "kq serve" if args.broker == "kq" else "Tansu"
    print(f"| {args.client} producing through {where} ({args.messages:,} × 100 B) | msg/s (median of {args.runs}) |")
    print("|---|---:|")
    print(f"| plain (idempotent off, acks=all) | {plain:,.0f} |")
    print(f"| transactional, {args.per_transaction:,} records a transaction | {txn:,.0f} |")
    print(
        f"\nratio transactional / plain: {txn / plain:.2f} (median of per-run ratios {statistics.median(ratios):.2f})"
    )
    print(
        f"counting each producer's setup: plain {plain_setup:,.0f}, transactional {txn_setup:,.0f} msg/s"
        f" (ratio {txn_setup / plain_setup:.2f})"
    )
    if None not in cpu.values():
        plain_cpu, txn_cpu = cpu["plain_client"] + cpu["plain_server"], cpu["txn_client"] + cpu["txn_server"]
        print(
            f"CPU ms per 1,000 records (medians; producer + kq serve): plain {cpu['plain_client']:.2f} + "
            f"{cpu['plain_server']:.2f} = {plain_cpu:.2f}, transactional {cpu['txn_client']:.2f} + "
            f"{cpu['txn_server']:.2f} = {txn_cpu:.2f} (ratio {plain_cpu / txn_cpu:.2f})"
        )
    for i, r in enumerate(runs):
        print(
            f"run {i + 1}: plain {r['plain']:,.0f}, transactional {r['txn']:,.0f} msg/s"
            f" (with setup {r['plain_with_setup']:,.0f}, {r['txn_with_setup']:,.0f})"
        )


if __name__ == "__main__":
    main()
