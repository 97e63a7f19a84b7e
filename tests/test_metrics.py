"""kq metrics, kq serve --metrics, kq lag and group describe --check, as a monitoring system and cron see them.

Everything runs the real command; the Prometheus test starts Debian's
prometheus and asks its HTTP API for what it scraped from ``kq metrics --listen``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from conftest import KQ, wait_for
from serve_support import KqServer, _Lines, free_port, produce

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of an exposition text: (name, labels) -> value. Fails on a line that is not one."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = SAMPLE.match(line)
        assert found, f"not a sample line: {line!r}"
        name, labels, value = found.groups()
        pairs = {k: re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), v) for k, v in LABEL.findall(labels or "")}
        samples[(name, frozenset(pairs.items()))] = float(value)
    return samples


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))


@pytest.fixture(scope="module")
def busy_template(tmp_path_factory):
    """orders (2 partitions: 6 records in 0, 4 in 1), group billing at 4 of partition 0 and at the
    end of partition 1, and share group w on jobs (1 acquired, 1 retrying, 1 dead-lettered of 6)."""
    data = str(tmp_path_factory.mktemp("metrics") / "data")

    def kq(*args, input=None):
        done = subprocess.run(KQ + ["--data-dir", data, *args], input=input, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    kq("topic", "create", "orders", "--partitions", "2")
    kq("produce", "orders", "-p", "0", input=b"a\nb\nc\nd\ne\nf\n")
    kq("produce", "orders", "-p", "1", input=b"w\nx\ny\nz\n")
    kq("offsets", "reset", "orders", "-g", "billing", "--to", "latest", "-p", "1")
    kq("offsets", "reset", "orders", "-g", "billing", "--to", "4", "-p", "0")
    kq("produce", "jobs", input=b"1\n2\n3\n4\n5\n6\n")
    leased = kq("consume", "jobs", "--share", "w", "-n", "3", "--lease", "1h", "--retry-backoff", "1h")
    leases = [line.split("\t")[0] for line in leased.stdout.decode().splitlines()]
    kq("nack", "jobs", "--share", "w", leases[1])
    kq("nack", "jobs", "--share", "w", "--dead-letter", leases[2])
    return data


@pytest.fixture
def busy(busy_template, data_dir):
    """A copy of busy_template's directory for the test to change."""
    shutil.copytree(busy_template, data_dir, symlinks=True)


def expected_values(s) -> None:
    assert value(s, "kafka_topic_partitions", topic="orders") == 2
    assert value(s, "kafka_topic_partition_current_offset", topic="orders", partition=0) == 6
    assert value(s, "kafka_topic_partition_current_offset", topic="orders", partition=1) == 4
    assert value(s, "kafka_topic_partition_oldest_offset", topic="orders", partition=0) == 0
    assert value(s, "kq_topic_partition_bytes", topic="orders", partition=0) > 0
    assert value(s, "kafka_consumergroup_current_offset", consumergroup="billing", topic="orders", partition=0) == 4
    assert value(s, "kafka_consumergroup_lag", consumergroup="billing", topic="orders", partition=0) == 2
    assert value(s, "kafka_consumergroup_lag", consumergroup="billing", topic="orders", partition=1) == 0
    assert value(s, "kafka_consumergroup_lag_sum", consumergroup="billing", topic="orders") == 2
    assert value(s, "kafka_consumergroup_members", consumergroup="billing") == 0
    committed_at = value(
        s, "kq_consumergroup_last_commit_timestamp_seconds", consumergroup="billing", topic="orders", partition=0
    )
    assert committed_at is not None and abs(committed_at - time.time()) < 120
    share = {"sharegroup": "w", "topic": "jobs", "partition": 0}
    assert value(s, "kq_sharegroup_acquired", **share) == 1
    assert value(s, "kq_sharegroup_retrying", **share) == 1
    assert value(s, "kq_sharegroup_dead_lettered", **share) == 1
    assert value(s, "kq_sharegroup_available", **share) == 3
    assert value(s, "kq_sharegroup_members", sharegroup="w") == 0


def test_metrics_after_produce_and_consume(run_kq, busy):
    done = run_kq("metrics")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    expected_values(parse(text))
    # Each family once, typed, before its samples.
    assert text.count("# TYPE kafka_consumergroup_lag gauge\n") == 1
    assert text.index("# TYPE kafka_consumergroup_lag gauge") < text.index("kafka_consumergroup_lag{")
    # Limited to a topic: the others are left out.
    only = parse(run_kq("metrics", "jobs").stdout.decode())
    assert value(only, "kafka_topic_partitions", topic="jobs") == 1
    assert value(only, "kafka_topic_partitions", topic="orders") is None
    unknown = run_kq("metrics", "nosuch")
    assert unknown.returncode == 1 and unknown.stderr.decode() == "kq: error: topic 'nosuch' does not exist\n"


def test_what_cannot_be_read_is_named_and_the_rest_reported(run_kq, busy, data_dir):
    with open(os.path.join(data_dir, "topics", "jobs", "topic.json"), "w") as f:
        f.write("garbage")
    done = run_kq("metrics")
    assert done.returncode == 1
    assert "kq: warning: topic 'jobs': corrupt file" in done.stderr.decode()
    s = parse(done.stdout.decode())
    assert value(s, "kafka_topic_partition_current_offset", topic="orders", partition=0) == 6
    assert value(s, "kq_snapshot_problems") == 1
    # A check cannot vouch for what it could not read.
    check = run_kq("lag", "--max", "100")
    assert (check.returncode, check.stdout) == (1, b"")
    assert "topic 'jobs'" in check.stderr.decode()


def test_output_is_replaced_atomically(run_kq, busy, tmp_path):
    out = tmp_path / "textfile" / "kq.prom"
    out.parent.mkdir()
    out.write_text("old\n")
    seen, stop = [], threading.Event()

    def read_while_written():
        while not stop.is_set():
            seen.append(out.read_text())

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        for _ in range(3):
            done = run_kq("metrics", "--output", out)
            assert done.returncode == 0, done.stderr
            assert done.stdout == b""
    finally:
        stop.set()
        reader.join()
    final = out.read_text()
    expected_values(parse(final))
    # A reader saw the old file or a whole new one, never a part of one.
    assert all(
        text == "old\n" or text.rstrip("\n").splitlines()[-1].startswith("kq_snapshot_duration_seconds ")
        for text in seen
    )
    assert os.listdir(out.parent) == ["kq.prom"]  # no temporary file left behind

    missing = run_kq("metrics", "--output", tmp_path / "nowhere" / "kq.prom")
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("kq: error:") and "nowhere" in missing.stderr.decode()
    both = run_kq("metrics", "--output", out, "--listen", "127.0.0.1:0")
    assert both.returncode == 2 and b"--output and --listen" in both.stderr


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


def test_listen_serves_a_fresh_snapshot_per_scrape(run_kq, spawn_kq, busy):
    proc = spawn_kq("metrics", "--listen", "127.0.0.1:0")
    line = _Lines(proc.stderr).wait_for(lambda text: "metrics on http://" in text, timeout=20)
    url = line.split(" on ", 1)[1].strip()
    text, kind = scrape(url)
    assert kind.startswith("text/plain; version=0.0.4")
    expected_values(parse(text))
    assert run_kq("consume", "orders", "-g", "billing").returncode == 0
    again = parse(scrape(url)[0])
    assert value(again, "kafka_consumergroup_lag", consumergroup="billing", topic="orders", partition=0) == 0
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(url.replace("/metrics", "/other"))
    assert refused.value.code == 404
    taken = spawn_kq("metrics", "--listen", url.split("/")[2])
    assert taken.wait(20) == 1
    assert b"already in use" in taken.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_serve_metrics_beside_the_kafka_port(data_dir, run_kq):
    assert run_kq("topic", "create", "orders").returncode == 0
    server = KqServer(data_dir, "--metrics", "127.0.0.1:0")
    try:
        url = next(line for line in server.stderr.seen if "metrics on http://" in line).split(" on ", 1)[1].strip()
        produce("confluent", server.bootstrap, "orders", [{"value": b"v%d" % i} for i in range(5)])
        s = parse(scrape(url)[0])
        assert value(s, "kafka_topic_partition_current_offset", topic="orders", partition=0) == 5
        produced = value(s, "kq_serve_requests_total", api="Produce")
        assert produced is not None and produced >= 1
        assert value(s, "kq_serve_request_duration_seconds_count", api="Produce") == produced
        assert value(s, "kq_serve_request_duration_seconds_bucket", api="Produce", le="+Inf") == produced
        assert value(s, "kq_serve_requests_total", api="Metadata") >= 1
        # Kafka clients in a group are its members (not the one seat kq serve takes in kq's group for them).
        from confluent_kafka import Consumer

        consumers = [
            Consumer({"bootstrap.servers": server.bootstrap, "group.id": "cg", "auto.offset.reset": "earliest"})
            for _ in range(2)
        ]
        try:
            for c in consumers:
                c.subscribe(["orders"])

            def members_scraped():
                for c in consumers:
                    c.poll(0.1)
                return value(parse(scrape(url)[0]), "kafka_consumergroup_members", consumergroup="cg") == 2

            wait_for(members_scraped, timeout=30, message="2 members of cg in /metrics")
        finally:
            for c in consumers:
                c.close()
        # The same metrics of a cluster, through -b (its admin API): no sizes there.
        assert run_kq("-b", server.bootstrap, "offsets", "reset", "orders", "-g", "g", "--to", "2").returncode == 0
        cluster = run_kq("-b", server.bootstrap, "metrics")
        assert cluster.returncode == 0, cluster.stderr
        c = parse(cluster.stdout.decode())
        assert value(c, "kafka_topic_partition_current_offset", topic="orders", partition=0) == 5
        assert value(c, "kafka_consumergroup_lag", consumergroup="g", topic="orders", partition=0) == 3
        assert not any(name == "kq_topic_partition_bytes" for name, _ in c)
    finally:
        assert server.stop() == 0


def test_check_exit_codes(run_kq, spawn_kq, busy):
    well = run_kq("lag", "--max", "100")
    assert (well.returncode, well.stdout) == (0, b""), well.stderr
    over = run_kq("lag", "--max", "1")
    assert over.returncode == 1
    assert over.stdout.decode() == "group 'billing': lag 2 over 1\n"
    # Within 5 minutes of its last commit, a group with lag is not stalled yet.
    assert run_kq("group", "describe", "billing", "--check").returncode == 0
    assert run_kq("lag", "--check").returncode == 0

    # No member, lag, and no commit for over a second: stopped.
    def checked():
        done = run_kq("lag", "--max-age", "1s")
        return done if done.returncode == 1 else None

    stopped = wait_for(checked, timeout=20, interval=0.3)
    assert re.fullmatch(
        r"group 'billing': stopped: committed offset 4 of orders/0 unchanged for \d+s with lag 2 and no members\n",
        stopped.stdout.decode(),
    ), stopped.stdout

    # A live member that makes no progress (its command never returns): stalled.
    stuck = spawn_kq("consume", "orders", "-g", "billing", "-f", "--exec", "sleep 60", start_new_session=True)
    try:

        def stalled():
            done = run_kq("lag", "--max-age", "1s")
            return done if b"stalled" in done.stdout else None

        found = wait_for(stalled, timeout=20, interval=0.3)
        assert found.returncode == 1
        assert found.stdout.decode().startswith("group 'billing': stalled: committed offset 4 of orders/0")
        listed = json.loads(run_kq("lag", "--json").stdout)
        assert [(r["group"], r["members"], r["lag"]) for r in listed] == [("billing", 1, 2)]
    finally:
        os.killpg(stuck.pid, signal.SIGKILL)  # its `sleep` too
        stuck.wait()

    bad = run_kq("group", "describe", "nobody", "--check")
    assert bad.returncode == 1 and bad.stderr.decode().startswith("kq: error:")


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install prometheus; .ci/run installs it)"
)
def test_prometheus_scrapes_kafka_consumergroup_lag(run_kq, spawn_kq, busy, tmp_path):
    port = free_port()
    kq = spawn_kq("metrics", "--listen", f"127.0.0.1:{port}")
    _Lines(kq.stderr).wait_for(lambda text: "metrics on http://" in text, timeout=20)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: kq\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    )
    web = free_port()
    with tempfile.TemporaryDirectory(prefix="kq-prometheus-") as storage:
        prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{web}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            query = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode(
                {"query": 'kafka_consumergroup_lag{consumergroup="billing",topic="orders",partition="0"}'}
            )

            def lag_in_prometheus():
                if prometheus.poll() is not None:
                    raise AssertionError(f"prometheus exited: {prometheus.stderr.read().decode()[-2000:]}")
                try:
                    with urllib.request.urlopen(query, timeout=5) as response:
                        result = json.load(response)["data"]["result"]
                except (urllib.error.URLError, ConnectionError):
                    return None
                return result[0]["value"][1] if result else None

            assert wait_for(lag_in_prometheus, timeout=30, interval=0.25) == "2"
            # The group reads the rest: Prometheus's next scrapes see its lag go to 0.
            assert run_kq("consume", "orders", "-g", "billing").returncode == 0
            wait_for(lambda: lag_in_prometheus() == "0", timeout=30, interval=0.25, message="lag 0 in prometheus")
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
