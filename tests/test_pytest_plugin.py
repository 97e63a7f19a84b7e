"""kq as the Kafka for tests: the pytest plugin and ``kq.testing.KafkaBroker``, as a user's suite sees them.

The user's suite (tests/user_project, no conftest.py) and a probe suite are
copied to a temporary directory and run by pytest in a subprocess, with
kq's plugin loaded as an installed kq loads it (the ``pytest11`` entry
point; ``-p`` where the installed kq predates it).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
from importlib.metadata import entry_points

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
USER_PROJECT = ROOT / "tests" / "user_project"
PLUGIN = "kq.testing.pytest_plugin"


def plugin_option() -> list[str]:
    """Nothing if the installed kq registers the plugin, else ``-p`` (an install older than the entry point)."""
    if any(ep.value == PLUGIN for ep in entry_points(group="pytest11")):
        return []
    return ["-p", PLUGIN]


def run_pytest(project: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """pytest on a user's project directory, as the user runs it there; its temp dir is project/../tmp."""
    temp = project.parent / "tmp"
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin_option(), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_user_project(tmp_path: pathlib.Path) -> pathlib.Path:
    project = tmp_path / "user_project"
    shutil.copytree(USER_PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (project / "conftest.py").exists()  # the fixtures come from the plugin alone
    return project


@pytest.mark.parametrize("args", [[], ["-n", "4"]], ids=["plain", "xdist"])
def test_a_users_suite_passes_with_all_three_clients_and_leaves_no_temp_dir(tmp_path, args):
    project = copy_user_project(tmp_path)
    out = run_pytest(project, "-q", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"\b10 passed\b", out.stdout), out.stdout
    assert "warning" not in out.stdout  # kafka-python's import-time DeprecationWarnings are kept out
    # Every broker's data directory was removed (xdist makes pytest's own base temp dir there).
    assert [name for name in os.listdir(tmp_path / "tmp") if not name.startswith("pytest-of-")] == []
    assert list((tmp_path / "tmp").rglob("kq-broker-*")) == []


PROBE = """
import os, socket, sys, threading

HEAVY = ("kafka", "confluent_kafka", "aiokafka", "kq.serve", "kq.testing.broker")
before = {}


def sockets():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the directory listing's own descriptor
            pass
    return count


def write(producer_settings, topic, records):
    from confluent_kafka import Producer

    producer = Producer(producer_settings)
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(10) == 0


def test_1_the_plugin_is_loaded_and_imported_nothing_heavy(request):
    plugins = [getattr(p, "__name__", "") for p in request.config.pluginmanager.get_plugins()]
    assert "kq.testing.pytest_plugin" in plugins
    heavy = sorted(m for m in sys.modules if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY)))
    assert heavy == [], heavy
    before.update(threads=set(threading.enumerate()), sockets=sockets())


def test_2_a_failing_test(kq_broker):
    before.update(data_dir=kq_broker.data_dir, port=kq_broker.port)
    kq_broker.create_topic("orders", partitions=2)
    kq_broker.create_topic("empty-topic")
    records = [(b"k%d" % n, b"order %d" % n) for n in range(60)]
    records[0] = (b"k0", b"line one\\nline two")
    records[1] = (None, b"x" * 500)
    write({"bootstrap.servers": kq_broker.bootstrap_servers}, "orders", records)
    assert len(list(kq_broker.records("orders"))) == 61, "deliberately failing"


def test_3_nothing_is_left_behind():
    assert not os.path.exists(before["data_dir"])
    assert set(threading.enumerate()) == before["threads"]
    assert sockets() == before["sockets"]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", before["port"])) != 0
"""


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> subprocess.CompletedProcess:
    project = tmp_path_factory.mktemp("probe") / "project"
    project.mkdir()
    (project / "test_probe.py").write_text(PROBE)
    return run_pytest(project, "-v")


def outcome(run: subprocess.CompletedProcess, test: str) -> str:
    found = re.search(rf"::{test} (PASSED|FAILED|ERROR)", run.stdout)
    assert found, run.stdout + run.stderr
    return found.group(1)


def test_loading_the_plugin_imports_no_kafka_library_no_client_and_no_server(probe_run):
    assert outcome(probe_run, "test_1_the_plugin_is_loaded_and_imported_nothing_heavy") == "PASSED"


def test_a_broker_leaves_no_thread_socket_port_or_directory_behind(probe_run):
    assert outcome(probe_run, "test_3_nothing_is_left_behind") == "PASSED"


def test_a_failing_test_reports_what_the_topics_held(probe_run):
    assert outcome(probe_run, "test_2_a_failing_test") == "FAILED"
    section = probe_run.stdout.split("kq topics (kq_broker, ", 1)[1].split("short test summary", 1)[0]
    lines = section.splitlines()[1:]
    shown = [line for line in lines if line.startswith("orders [")]
    assert len(shown) == 50  # capped
    assert "... 10 more records not shown (60 in all)" in section
    assert "empty-topic: empty" in section
    # One line a record, however long or many-lined its value.
    assert any(re.fullmatch(r"orders \[[01]\] @\d+ key='k0' value='line one\\nline two'", line) for line in lines)
    assert any(
        re.fullmatch(r"orders \[[01]\] @\d+ key=null value='x{100}'\.\.\. \(500 bytes\)", line) for line in lines
    )
    assert any(re.fullmatch(r"orders \[[01]\] @\d+ key='k5' value='order 5'", line) for line in lines)


def test_the_readmes_pytest_examples_pass(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Testing Kafka code", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(# (test_\w+\.py).*?)^```", section, re.S | re.M)
    assert len(blocks) == 3  # confluent-kafka, kafka-python, aiokafka
    project = tmp_path / "readme_project"
    project.mkdir()
    for code, name in blocks:
        (project / name).write_text(code)
    out = run_pytest(project, "-q")
    assert out.returncode == 0 and re.search(r"\b3 passed\b", out.stdout), out.stdout + out.stderr


# ---------------------------------------------------------------- KafkaBroker in this process


def produce_and_read(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "fetch.wait.max.ms": 5000})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    try:
        while len(got) < len(values):
            message = consumer.poll(10)
            assert message is not None, f"read {got} of {values}"
            got.append(message.value())
        # The consumer is left in a long poll (fetch.wait.max.ms) when the broker stops.
        consumer.poll(0.05)
        return got
    finally:
        consumer.close()


def test_brokers_are_isolated_and_stop_without_waiting_for_a_long_poll():
    import time

    from kq.testing import KafkaBroker

    threads = set(threading.enumerate())
    first, second = KafkaBroker().start(), KafkaBroker().start()
    try:
        assert first.port != second.port and first.data_dir != second.data_dir
        assert produce_and_read(first.bootstrap_servers, "t", [b"one"]) == [b"one"]
        assert produce_and_read(second.bootstrap_servers, "t", [b"two"]) == [b"two"]
        assert [r.value for r in first.records("t")] == [b"one"]
        assert [r.value for r in second.records("t")] == [b"two"]
    finally:
        first.stop()
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": second.bootstrap_servers, "group.id": "g", "fetch.wait.max.ms": 5000})
    consumer.assign([TopicPartition("t", 0, 1)])  # at the end: its fetches wait up to 5 s for records
    consumer.poll(0.2)
    started = time.monotonic()
    second.stop()
    stopping = time.monotonic() - started
    consumer.close()
    assert stopping < 2.5, f"stopping waited {stopping:.2f} s for a fetch's long poll"
    assert set(threading.enumerate()) == threads
    assert not os.path.exists(first.data_dir) and not os.path.exists(second.data_dir)


def test_a_broker_stops_at_once_while_a_member_waits_in_a_rebalance():
    import time

    from confluent_kafka import Consumer

    from kq.testing import KafkaBroker

    broker = KafkaBroker().start()
    from kafka import KafkaConsumer  # once the broker has imported it, with its import-time warnings silenced

    broker.create_topic("t", partitions=2)
    first = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id="g", enable_auto_commit=False)
    second = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "g"})
    try:
        # The topic's partitions known before joining: a kafka-python leader whose metadata lacks
        # them assigns nothing and waits for a metadata refresh (seen once in CI).
        assert first.partitions_for_topic("t") == {0, 1}
        first.subscribe(["t"])
        deadline = time.monotonic() + 10
        while not first.assignment() and time.monotonic() < deadline:
            first.poll(100)
        assert first.assignment()
        # The second member's JoinGroup waits for the first to rejoin, which it does only when polled.
        second.subscribe(["t"])
        for _ in range(3):
            second.poll(0.1)
        started = time.monotonic()
        broker.stop()
        stopping = time.monotonic() - started
    finally:
        broker.stop()
        second.close()
        first.close()
    assert stopping < 2.5, f"stopping waited {stopping:.2f} s for a rebalance"


def test_create_topic_takes_kafka_topic_configs_and_refuses_unknown_ones():
    from kq.testing import KafkaBroker

    with KafkaBroker() as broker:
        broker.create_topic("compacted", partitions=3, cleanup_policy="compact", retention_ms=60_000)
        topic = __import__("kq").DataDir(broker.data_dir).topic("compacted")
        assert topic.partition_count == 3
        assert topic.config["retention_ms"] == 60_000 and topic.config["cleanup"] == "compact"
        with pytest.raises(ValueError, match=r"no\.such\.thing"):
            broker.create_topic("other", no_such_thing=1)


def test_a_data_dir_given_is_kept(tmp_path):
    from kq.testing import KafkaBroker

    with KafkaBroker(data_dir=str(tmp_path / "kept")) as broker:
        broker.create_topic("t")
    assert (tmp_path / "kept" / "topics" / "t").is_dir()
    with KafkaBroker(data_dir=str(tmp_path / "kept")) as broker:
        assert broker.topics() == ["t"]


def test_the_port_is_closed_once_stopped():
    from kq.testing import KafkaBroker

    with KafkaBroker() as broker:
        port = broker.port
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    with pytest.raises(RuntimeError, match="not running"):
        _ = broker.bootstrap_servers
